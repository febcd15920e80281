//! The load memo: an unchanged repository loads from it, and every kind of
//! edit is seen exactly as a load without the memo sees it.

use std::time::Duration;

use crate::support::*;

/// Longer than the memo's racy margin (100 ms): inputs this old are trusted.
const SETTLE: Duration = Duration::from_millis(250);

/// `hash --format json` output, loaded through the memo (`memo: true`) or
/// from scratch, plus whether the memo was used.
fn hash_json(p: &Project, memo: bool) -> (serde_json::Value, bool) {
    let mut cmd = p.cmd(&["hash", "--format", "json", "--backend", "simulate"]);
    cmd.env("AMIMAKE_LOG", "debug");
    if !memo {
        cmd.env("AMIMAKE_LOAD_MEMO", "off");
    }
    let out = cmd.output().expect("amimake runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "hash failed:\n{stderr}");
    let json = serde_json::from_slice(&out.stdout).expect("hash prints JSON");
    (json, stderr.contains("loaded from the load memo"))
}

fn memo_files(p: &Project) -> usize {
    std::fs::read_dir(p.cache.path().join("memo"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// After `edit`, the memo-backed load agrees with a fresh load (and the
/// stale memo was not used); once the files settle, the memo is saved
/// again and used.
#[track_caller]
fn check_edit(p: &Project, what: &str, edit: impl FnOnce(&Project)) -> serde_json::Value {
    edit(p);
    let (with_memo, used) = hash_json(p, true);
    let (fresh, _) = hash_json(p, false);
    assert_eq!(with_memo, fresh, "{what}: memo-backed load differs");
    assert!(!used, "{what}: a stale memo was used");
    std::thread::sleep(SETTLE);
    let (saved, _) = hash_json(p, true);
    assert_eq!(saved, fresh, "{what}: load after settling differs");
    let (again, used) = hash_json(p, true);
    assert!(
        used,
        "{what}: the memo was not used for an unchanged repository"
    );
    assert_eq!(again, fresh, "{what}: memo-backed load differs");
    fresh
}

fn hash_of(json: &serde_json::Value, name: &str) -> String {
    by_name(json, "hash").remove(name).unwrap_or_default()
}

#[test]
fn unchanged_repository_loads_from_the_memo_and_every_edit_invalidates_it() {
    let p = Project::seed();
    p.file("files/conf.d/a.conf", "a=1\n");
    p.file(
        "templates/tools.yaml",
        "extends: foundation\nfiles: [{src: ../files/conf.d, dest: /etc/conf.d}]\n",
    );
    p.file(
        "templates/foundation.yaml",
        &(p.read("templates/foundation.yaml") + "rebuild: {max_age: 7d}\nregions: [eu-west-1]\n"),
    );
    std::thread::sleep(SETTLE);
    let mut last = check_edit(&p, "first load", |_| {});
    assert_eq!(memo_files(&p), 1);
    // Everything a layer holds survives the memo: the resolved view of
    // every template is the same with and without it.
    for name in ["foundation", "gromacs", "namd", "tools"] {
        let args = [
            "show",
            name,
            "--resolved",
            "--format",
            "json",
            "--backend",
            "simulate",
        ];
        let from_memo = p.cmd(&args).output().unwrap();
        let fresh = p
            .cmd(&args)
            .env("AMIMAKE_LOAD_MEMO", "off")
            .output()
            .unwrap();
        assert!(fresh.status.success());
        assert_eq!(
            String::from_utf8_lossy(&from_memo.stdout),
            String::from_utf8_lossy(&fresh.stdout),
            "show --resolved {name} differs through the memo"
        );
    }

    // Same size, same second: only content differs.
    let next = check_edit(&p, "script edited in place", |p| {
        let text = p.read("scripts/build-gromacs.sh");
        p.file("scripts/build-gromacs.sh", &text.replace("load", "lOad"));
    });
    assert_ne!(hash_of(&next, "gromacs"), hash_of(&last, "gromacs"));
    assert_eq!(hash_of(&next, "namd"), hash_of(&last, "namd"));
    last = next;

    let next = check_edit(&p, "file added inside a directory input", |p| {
        p.file("files/conf.d/b.conf", "b=2\n");
    });
    assert_ne!(hash_of(&next, "tools"), hash_of(&last, "tools"));
    last = next;

    let next = check_edit(&p, "file replaced by a symlink", |p| {
        p.file("files/other.sh", "export MODULEPATH=/srv/modules\n");
        p.remove("files/modules.sh");
        std::os::unix::fs::symlink(p.path("files/other.sh"), p.path("files/modules.sh")).unwrap();
    });
    assert_ne!(hash_of(&next, "foundation"), hash_of(&last, "foundation"));
    last = next;

    let next = check_edit(&p, "symlink target edited", |p| {
        p.file("files/other.sh", "export MODULEPATH=/srv/mod\n");
    });
    assert_ne!(hash_of(&next, "foundation"), hash_of(&last, "foundation"));

    let next = check_edit(&p, "template added in a new subdirectory", |p| {
        p.file(
            "templates/md/lammps.yaml",
            "extends: foundation\nprovision: [{shell: echo lammps}]\n",
        );
    });
    assert_eq!(next["layers"].as_array().unwrap().len(), 5);

    let next = check_edit(&p, "template removed", |p| p.remove("templates/namd.yaml"));
    assert_eq!(next["layers"].as_array().unwrap().len(), 4);
    assert_eq!(hash_of(&next, "namd"), "");

    check_edit(&p, "configuration changed", |p| {
        p.file(
            "amimake.yaml",
            "builder: {instance_type: c7i.large}\n# changed\n",
        );
    });
}

#[test]
fn errors_are_reported_even_when_a_memo_exists() {
    let p = Project::seed();
    std::thread::sleep(SETTLE);
    hash_json(&p, true);
    std::thread::sleep(SETTLE);
    let (_, used) = hash_json(&p, true);
    assert!(used, "the memo was not used");
    p.file(
        "templates/namd.yaml",
        "extends: foundatoin\nprovision: [{shell: echo namd}]\n",
    );
    let r = p.run(&["validate"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("templates/namd.yaml:1:"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_racy_memo_is_not_saved_and_a_corrupt_one_is_ignored() {
    let p = Project::seed();
    // Files written moments ago: not trusted yet.
    hash_json(&p, true);
    assert_eq!(memo_files(&p), 0, "a memo was saved for racy inputs");
    std::thread::sleep(SETTLE);
    let (fresh, _) = hash_json(&p, true);
    assert_eq!(memo_files(&p), 1);
    let file = std::fs::read_dir(p.cache.path().join("memo"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    bytes.truncate(len / 2);
    std::fs::write(&file, &bytes).unwrap();
    let (after, used) = hash_json(&p, true);
    assert!(!used, "a truncated memo was used");
    assert_eq!(after, fresh);
}

#[test]
fn a_build_of_a_just_written_repository_saves_the_memo_when_it_ends() {
    let p = Project::seed();
    // Loaded moments after the files were written: racy, so not saved at
    // load time; the build outlasts the margin and saves it at its end.
    let r = p
        .cmd(&[
            "build",
            "--backend",
            "simulate",
            "--simulate-duration",
            "foundation=0.3",
        ])
        .env("AMIMAKE_LOG", "debug")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("load memo not saved: Racy"),
        "the load was not racy"
    );
    assert_eq!(memo_files(&p), 1, "no memo after the build");
    let r = p
        .cmd(&["build", "--backend", "simulate"])
        .env("AMIMAKE_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("loaded from the load memo"), "{stderr}");
    assert!(stderr.contains("0 built, 3 reused"), "{stderr}");
}
