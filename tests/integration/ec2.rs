//! The ec2 backend end to end against a real moto server, with the
//! instance runner executing each builder's real user-data.

use std::time::{Duration, Instant};

use crate::moto::{Moto, BUCKET};
use crate::support::*;

/// A three-layer chain on `base`: root -> mid -> leaf.
pub(crate) fn chain(moto: &Moto) -> (Project, String) {
    let base = moto.base_image();
    let p = Project::new();
    p.file(
        "amimake.yaml",
        &format!("region: us-east-1\nbuilder:\n  artifacts_bucket: {BUCKET}\n  poll_interval: 100ms\n  max_wait: 2m\n"),
    );
    p.file(
        "templates/root.yaml",
        &format!(
            "source: {{ami: {base}}}\nbuild: {{instance_type: t3.small, volume_size_gb: 12}}\n\
             variables: {{greeting: hello}}\nsoftware: {{apt: [cmake, git]}}\n\
             files: [{{src: ../files/motd, dest: /etc/motd, mode: \"0600\"}}]\n\
             provision: [{{shell: 'echo \"$greeting\" > \"$AMIMAKE_ROOT/greeting\"'}}]\ntags: {{team: hpc}}\n"
        ),
    );
    p.file(
        "templates/mid.yaml",
        "extends: root\nsoftware: {spack: [\"gcc@13.2.0\"]}\nprovision: [{script: ../scripts/mid.sh}]\n",
    );
    p.file("templates/leaf.yaml", "extends: mid\nsoftware: {pip: [numpy==1.26.4]}\nprovision: [{shell: 'touch \"$AMIMAKE_ROOT/leaf-done\"'}]\n");
    p.file("files/motd", "welcome\n");
    p.file(
        "scripts/mid.sh",
        "#!/bin/sh\nset -eu\necho \"mid ran with $greeting\" > \"$AMIMAKE_ROOT/mid\"\n",
    );
    (p, base)
}

pub(crate) fn amimake(p: &Project, moto: &Moto, args: &[&str]) -> Run {
    let mut c = p.cmd(args);
    moto.env(&mut c);
    Run(c.output().unwrap())
}

pub(crate) fn images_by_layer(
    summary: &serde_json::Value,
) -> std::collections::BTreeMap<String, String> {
    by_name(summary, "image")
}

pub(crate) fn tag<'a>(img: &'a aws_sdk_ec2::types::Image, key: &str) -> Option<&'a str> {
    img.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

#[test]
fn builds_a_tagged_chain_and_reuses_it() {
    let moto = Moto::start();
    let runner = moto.runner();
    let (p, base) = chain(&moto);
    let summary = p.cache.path().join("s1.json");
    let r = amimake(
        &p,
        &moto,
        &["build", "--summary", summary.to_str().unwrap()],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["target"], "ec2/123456789012/us-east-1");
    let images = images_by_layer(&s);
    assert_eq!(images.len(), 3);
    let hashes = p.hashes();
    // Each image: available, tagged, on the right parent.
    for (layer, parent_layer, parent_image) in [
        ("root", None, base.clone()),
        ("mid", Some("root"), images["root"].clone()),
        ("leaf", Some("mid"), images["mid"].clone()),
    ] {
        let img = moto
            .image(&images[layer])
            .unwrap_or_else(|| panic!("{layer} image exists"));
        assert_eq!(img.state().map(|s| s.as_str()), Some("available"));
        assert_eq!(tag(&img, "amimake:layer"), Some(layer));
        assert_eq!(tag(&img, "amimake:layer-hash"), hashes[layer].as_deref());
        assert_eq!(
            tag(&img, "amimake:parent-image"),
            Some(parent_image.as_str())
        );
        assert_eq!(tag(&img, "amimake:parent-layer"), parent_layer);
        assert!(tag(&img, "amimake:build-id").is_some_and(|b| s["build_id"] == b));
        assert!(tag(&img, "Name").is_some_and(|n| n.starts_with(&format!("{layer}-"))));
        assert_eq!(
            tag(&img, "team"),
            Some("hpc"),
            "template tags are inherited onto images"
        );
        assert!(img.name().unwrap().starts_with(&format!(
            "{layer}-{}",
            &hashes[layer].as_deref().unwrap()[..12]
        )));
    }
    // Every builder instance is gone.
    assert!(
        moto.live_instances().is_empty(),
        "{:?}",
        moto.live_instances()
    );
    // The bootstrap really ran: files, software delta, steps, variables.
    let played = runner.played.lock().unwrap().clone();
    assert_eq!(played.len(), 3);
    let mut saw = (false, false, false);
    for (id, pl) in &played {
        let pk = runner.packages(id);
        let root = pl.dir.join("root");
        if root.join("etc/motd").exists() {
            saw.0 = true;
            assert_eq!(
                std::fs::read_to_string(root.join("etc/motd")).unwrap(),
                "welcome\n"
            );
            assert_eq!(
                std::fs::read_to_string(root.join("greeting")).unwrap(),
                "hello\n"
            );
            assert!(
                pk.contains("apt-get install -y --no-install-recommends cmake git"),
                "{pk}"
            );
            assert!(
                !pk.contains("spack"),
                "root installs only its own delta: {pk}"
            );
        }
        if root.join("mid").exists() {
            saw.1 = true;
            assert_eq!(
                std::fs::read_to_string(root.join("mid")).unwrap(),
                "mid ran with hello\n"
            );
            assert!(pk.contains("spack install gcc@13.2.0"), "{pk}");
            assert!(
                !pk.contains("apt-get"),
                "mid installs only its own delta: {pk}"
            );
        }
        if root.join("leaf-done").exists() {
            saw.2 = true;
            assert!(pk.contains("pip install numpy==1.26.4"), "{pk}");
        }
    }
    assert_eq!(saw, (true, true, true));

    // A second build launches nothing.
    let before = moto.instances().len();
    let r = amimake(&p, &moto, &["build"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        moto.instances().len(),
        before,
        "zero RunInstances on a null build"
    );
    assert!(r.stderr().contains("0 built, 3 reused"), "{}", r.stderr());

    // Offline commands now know the ec2 hashes.
    let plan = amimake(&p, &moto, &["plan", "--format", "json"]).json();
    assert_eq!(plan["totals"]["reuse"], 3);
}

#[test]
fn a_failing_step_reports_its_log_and_leaves_nothing_running() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    p.file(
        "templates/leaf.yaml",
        "extends: mid\nprovision: [{shell: 'echo boom-marker-line; exit 3'}]\n",
    );
    let r = amimake(&p, &moto, &["build"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("leaf: provision[0] shell failed (exit 3)"),
        "{err}"
    );
    assert!(err.contains("| boom-marker-line"), "log tail shown:\n{err}");
    assert!(
        moto.live_instances().is_empty(),
        "{:?}",
        moto.live_instances()
    );
    // The two good layers were kept.
    let ls = amimake(&p, &moto, &["cache", "ls", "--format", "json"]).json();
    assert_eq!(ls["entries"].as_array().unwrap().len(), 2);
}

#[test]
fn a_deregistered_image_is_stale_and_rebuilt() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    let summary = p.cache.path().join("s.json");
    assert_eq!(
        amimake(
            &p,
            &moto,
            &["build", "--summary", summary.to_str().unwrap()]
        )
        .code(),
        0
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let images = images_by_layer(&s);
    moto.deregister(&images["leaf"]);
    let plan = amimake(&p, &moto, &["plan", "--format", "json"]).json();
    let reasons: Vec<(String, String)> = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().into(),
                l["reason"].as_str().unwrap_or("reuse").into(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("root".into(), "reuse".into()),
            ("mid".into(), "reuse".into()),
            ("leaf".into(), "stale".into())
        ]
    );
    let r = amimake(
        &p,
        &moto,
        &["build", "--summary", summary.to_str().unwrap()],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let new = images_by_layer(&s);
    assert_ne!(new["leaf"], images["leaf"]);
    assert_eq!(new["mid"], images["mid"]);
    assert!(moto.image(&new["leaf"]).is_some());
}

#[test]
fn kill_9_then_gc_orphans_leaves_no_instance_and_a_rerun_succeeds() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    let slow = p.path("slow");
    std::fs::write(&slow, "").unwrap();
    p.file(
        "templates/root.yaml",
        &p.read("templates/root.yaml").replace(
            "provision: [",
            &format!(
                "provision: [{{shell: 'if [ -e {} ]; then sleep 60; fi'}}, ",
                slow.display()
            ),
        ),
    );
    let mut c = p.cmd(&["build"]);
    moto.env(&mut c);
    let mut child = c.stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while moto.live_instances().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no instance started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        moto.live_instances().len(),
        1,
        "the instance outlives amimake"
    );

    let dry = amimake(&p, &moto, &["gc", "--orphans", "--dry-run"]);
    assert_eq!(dry.code(), 0, "{}", dry.stderr());
    assert!(
        dry.stdout().contains("would remove instance"),
        "{}",
        dry.stdout()
    );
    assert_eq!(moto.live_instances().len(), 1, "dry run removes nothing");
    let gc = amimake(&p, &moto, &["gc", "--orphans"]);
    assert_eq!(gc.code(), 0, "{}", gc.stderr());
    assert!(
        moto.live_instances().is_empty(),
        "{:?}",
        moto.live_instances()
    );
    let again = amimake(&p, &moto, &["gc", "--orphans"]);
    assert!(
        again.stdout().contains("no orphans found"),
        "{}",
        again.stdout()
    );

    std::fs::remove_file(&slow).unwrap();
    let r = amimake(&p, &moto, &["build"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(moto.live_instances().is_empty());
}

#[test]
fn config_errors_name_the_missing_key() {
    let moto = Moto::start();
    let (p, _) = chain(&moto);
    p.file("amimake.yaml", "region: us-east-1\n");
    let r = amimake(&p, &moto, &["build"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("builder.artifacts_bucket"),
        "{}",
        r.stderr()
    );
    assert!(moto.instances().is_empty());
}

#[test]
fn a_missing_source_image_is_a_clear_error() {
    let moto = Moto::start();
    let (p, base) = chain(&moto);
    p.file(
        "templates/root.yaml",
        &p.read("templates/root.yaml")
            .replace(&base, "ami-0123456789abcdef0"),
    );
    let r = amimake(&p, &moto, &["plan"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("does not exist"), "{}", r.stderr());
}

#[test]
fn sigterm_terminates_the_builder_instance() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    p.file(
        "templates/root.yaml",
        &p.read("templates/root.yaml")
            .replace("provision: [", "provision: [{shell: 'sleep 60'}, "),
    );
    let mut c = p.cmd(&["build"]);
    moto.env(&mut c);
    let child = c.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while moto.live_instances().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no instance started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        moto.live_instances().is_empty(),
        "{:?}",
        moto.live_instances()
    );
    let gc = amimake(&p, &moto, &["gc", "--orphans"]);
    assert!(
        gc.stdout().contains("no orphans found"),
        "nothing left to clean: {}",
        gc.stdout()
    );
}
