//! The local backend end to end: a real mmdebstrap root, apt packages in
//! the right layers, reuse, exactly the invalidated suffix rebuilt, a failed
//! layer that leaves nothing behind, and an exported disk image.

use std::path::PathBuf;

use crate::support::*;

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

fn tree(p: &Project, hash: &str) -> PathBuf {
    p.cache
        .path()
        .join("local")
        .join(arch())
        .join("layers")
        .join(hash)
        .join("rootfs")
}

/// A local build: the run and each layer's result, sorted by name.
fn results(p: &Project, extra: &[&str]) -> (Run, Vec<(String, String)>) {
    let (r, summary) = p.build_summary("local", extra);
    (r, by_name(&summary, "result").into_iter().collect())
}

#[test]
fn builds_real_layers_and_rebuilds_only_the_invalidated_suffix() {
    let p = Project::new();
    p.file(
        "templates/base.yaml",
        "source:\n  local: {mmdebstrap: {suite: bookworm, variant: minbase}}\nprovision: [{shell: 'echo base > /etc/amimake-base'}]\n",
    );
    p.file(
        "templates/tools.yaml",
        "extends: base\nsoftware: {apt: [hello]}\n",
    );
    p.file(
        "templates/app.yaml",
        "extends: tools\nfiles: [{src: ../scripts/app.sh, dest: /opt/app/run.sh, mode: \"0755\"}]\nprovision: [{script: ../scripts/app.sh}]\n",
    );
    p.file(
        "scripts/app.sh",
        "#!/bin/sh\nset -eu\nhello > /opt/app-greeting\n",
    );

    let (r, res) = results(&p, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        res,
        pairs(&[("base", "built"), ("tools", "built"), ("app", "built")])
    );
    let h = p.hashes_for("local");
    let (base, tools, app) = (
        tree(&p, &h["base"]),
        tree(&p, &h["tools"]),
        tree(&p, &h["app"]),
    );
    assert!(
        tools.join("usr/bin/hello").is_file(),
        "the package is in the child"
    );
    assert!(
        !base.join("usr/bin/hello").exists(),
        "and not in the parent"
    );
    assert_eq!(
        std::fs::read_to_string(base.join("etc/amimake-base")).unwrap(),
        "base\n"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("opt/app-greeting")).unwrap(),
        "Hello, world!\n"
    );
    assert!(app.join("opt/app/run.sh").is_file());
    assert!(
        !app.join("run/amimake").exists(),
        "the bootstrap leaves nothing in the image"
    );

    // Everything is reused.
    let (r, res) = results(&p, &[]);
    assert_eq!(r.code(), 0);
    assert_eq!(
        res,
        pairs(&[("base", "reused"), ("tools", "reused"), ("app", "reused")])
    );

    // Editing the leaf rebuilds only the leaf.
    p.file(
        "scripts/app.sh",
        "#!/bin/sh\nset -eu\nhello -g 'Hi there' > /opt/app-greeting\n",
    );
    let (r, res) = results(&p, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        res,
        pairs(&[("base", "reused"), ("tools", "reused"), ("app", "built")])
    );
    let app2 = tree(&p, &p.hashes_for("local")["app"]);
    assert_eq!(
        std::fs::read_to_string(app2.join("opt/app-greeting")).unwrap(),
        "Hi there\n"
    );

    // A failing step fails its layer, shows the log tail, leaves the cache clean.
    p.file(
        "templates/broken.yaml",
        "extends: tools\nprovision: [{shell: 'echo local-boom-marker; exit 7'}]\n",
    );
    let (r, res) = results(&p, &["broken"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(
        res,
        pairs(&[
            ("base", "reused"),
            ("tools", "reused"),
            ("broken", "failed")
        ])
    );
    assert!(r.stderr().contains("| local-boom-marker"), "{}", r.stderr());
    assert!(
        r.stderr().contains("provision[0] shell failed (exit 7)"),
        "{}",
        r.stderr()
    );
    let broken_hash = p.hashes_for("local")["broken"].clone();
    assert!(!tree(&p, &broken_hash).exists());
    let staging = p.cache.path().join("local").join(arch()).join("staging");
    assert_eq!(
        std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0),
        0,
        "no half-written tree"
    );
    let ls = p.ok(&["cache", "ls", "--format", "json"]).json();
    assert!(ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["template"] != "broken"));

    // An exported raw image holds the child's files.
    let raw = p.cache.path().join("app.raw");
    p.ok(&[
        "export",
        "app",
        "--format",
        "raw",
        "-o",
        raw.to_str().unwrap(),
    ]);
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /opt/app-greeting"])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hi there\n");
    let tar = p.cache.path().join("tools.tar");
    p.ok(&[
        "export",
        "tools",
        "--format",
        "tar",
        "-o",
        tar.to_str().unwrap(),
    ]);
    let list = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l == "./usr/bin/hello"));

    // gc --local keeps referenced trees and removes forgotten ones.
    p.ok(&["cache", "forget", "app"]);
    let gc = p.ok(&["gc", "--local"]);
    assert!(
        gc.stdout().contains("2 local trees removed"),
        "both versions of app: {}",
        gc.stdout()
    );
    assert!(!app2.exists() && tools.exists());
}

#[test]
fn a_root_without_source_local_is_a_clear_error() {
    let p = Project::new();
    p.file(
        "templates/base.yaml",
        "source: {ami: ami-0123456789abcdef0}\n",
    );
    let r = p.run(&["build", "--backend", "local"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("source.local"), "{}", r.stderr());
}
