//! The shared S3 cache against moto: hits across separate local caches,
//! signed records, refusal of tampered, foreign and vanished entries, remote
//! outages, and the single-builder guarantee of build leases.

use std::time::Duration;

use crate::ec2::amimake;
use crate::moto::{Moto, BUCKET};
use crate::support::*;

const SHARED: &str = "s3://amimake-artifacts/team-cache";

/// The seed project with a shared cache (and optional extra config).
fn seed_shared(extra: &str) -> Project {
    let p = Project::seed();
    p.file(
        "amimake.yaml",
        &format!("region: us-east-1\ncache:\n  s3: {SHARED}\n{extra}"),
    );
    p
}

/// A second developer: same templates, own local cache.
fn colleague(p: &Project) -> Project {
    let q = Project::new();
    for rel in [
        "amimake.yaml",
        "templates/foundation.yaml",
        "templates/gromacs.yaml",
        "templates/namd.yaml",
        "files/modules.sh",
        "scripts/install-spack.sh",
        "scripts/build-gromacs.sh",
    ] {
        q.file(rel, &p.read(rel));
    }
    q
}

fn plan_tiers(p: &Project, moto: &Moto, backend: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["plan", "--format", "json"];
    args.extend_from_slice(backend);
    let r = amimake(p, moto, &args);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    r.json()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let what = match (l["action"].as_str().unwrap(), l["cache"].as_str()) {
                ("reuse", Some(tier)) => format!("reuse {tier}"),
                (_, _) => l["reason"].as_str().unwrap().to_string(),
            };
            (l["name"].as_str().unwrap().to_string(), what)
        })
        .collect()
}

fn object(moto: &Moto, key: &str) -> Option<Vec<u8>> {
    let out = moto
        .rt
        .block_on(moto.s3.get_object().bucket(BUCKET).key(key).send())
        .ok()?;
    Some(
        moto.rt
            .block_on(out.body.collect())
            .unwrap()
            .into_bytes()
            .to_vec(),
    )
}

fn put_object(moto: &Moto, key: &str, body: Vec<u8>) {
    moto.rt
        .block_on(
            moto.s3
                .put_object()
                .bucket(BUCKET)
                .key(key)
                .body(body.into())
                .send(),
        )
        .unwrap();
}

fn record_key(hash: &str, target: &str) -> String {
    format!("team-cache/v1/layers/{hash}/{target}.json")
}

#[test]
fn a_colleagues_build_is_a_hit_and_round_trips_byte_exact() {
    let moto = Moto::start();
    let alice = seed_shared("");
    let r = amimake(&alice, &moto, &["build", "--backend", "simulate"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let hashes = alice.hashes_for("simulate");
    let key = record_key(&hashes["gromacs"], "simulate");
    let bytes = object(&moto, &key).expect("record published");
    let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(record["schema_version"], 1);
    assert_eq!(record["hash"], hashes["gromacs"].as_str());
    assert_eq!(record["target"], "simulate");
    assert_eq!(record["template"], "gromacs");
    assert_eq!(record["parent_hash"], hashes["foundation"].as_str());
    assert!(record["image"].as_str().unwrap().starts_with("sim-"));
    // Byte-exact: what amimake reads back is what it wrote.
    let parsed: amimake::cache::shared::RemoteRecord = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(serde_json::to_vec_pretty(&parsed).unwrap(), bytes);

    let bob = colleague(&alice);
    assert_eq!(
        plan_tiers(&bob, &moto, &["--backend", "simulate"]),
        [
            ("foundation".into(), "reuse remote".into()),
            ("gromacs".into(), "reuse remote".into()),
            ("namd".into(), "reuse remote".into())
        ]
    );
    // Remote hits are written back: next time they are local.
    assert_eq!(
        plan_tiers(&bob, &moto, &["--backend", "simulate"]),
        [
            ("foundation".into(), "reuse local".into()),
            ("gromacs".into(), "reuse local".into()),
            ("namd".into(), "reuse local".into())
        ]
    );
    let r = amimake(&bob, &moto, &["build", "--backend", "simulate"]);
    assert!(r.stderr().contains("0 built, 3 reused"), "{}", r.stderr());
}

#[test]
fn signed_records_are_verified_and_tampering_is_refused() {
    let moto = Moto::start();
    let keydir = tempfile::tempdir().unwrap();
    let keyfile = keydir.path().join("k");
    let gen = amimake(
        &Project::new(),
        &moto,
        &["key", "generate", "--out", keyfile.to_str().unwrap()],
    );
    assert_eq!(gen.code(), 0, "{}", gen.stderr());
    let public = gen.stdout().trim().to_string();
    assert!(public.starts_with("ed25519:"), "{public}");
    let alice = seed_shared(&format!("  trusted_keys: [\"{public}\"]\n"));
    let mut c = alice.cmd(&["build", "--backend", "simulate"]);
    moto.env(&mut c);
    c.env("AMIMAKE_SIGNING_KEY_FILE", &keyfile);
    let r = Run(c.output().unwrap());
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let hashes = alice.hashes_for("simulate");

    let bob = colleague(&alice);
    assert_eq!(
        plan_tiers(&bob, &moto, &["--backend", "simulate"])[1],
        ("gromacs".into(), "reuse remote".into())
    );

    // Tamper with gromacs: point it at another image.
    let key = record_key(&hashes["gromacs"], "simulate");
    let mut rec: serde_json::Value = serde_json::from_slice(&object(&moto, &key).unwrap()).unwrap();
    assert!(rec["signature"].is_string());
    rec["image"] = "sim-evil".into();
    put_object(&moto, &key, serde_json::to_vec_pretty(&rec).unwrap());
    // Replay namd's record under foundation's hash.
    let namd = object(&moto, &record_key(&hashes["namd"], "simulate")).unwrap();
    put_object(&moto, &record_key(&hashes["foundation"], "simulate"), namd);

    let carol = colleague(&alice);
    let r = amimake(
        &carol,
        &moto,
        &["plan", "--backend", "simulate", "--format", "json"],
    );
    assert!(
        r.stderr().contains("not signed by a trusted key"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("names another layer"), "{}", r.stderr());
    let tiers = plan_tiers(&carol, &moto, &["--backend", "simulate"]);
    assert_eq!(tiers[0], ("foundation".into(), "new".into()));
    assert_eq!(tiers[1], ("gromacs".into(), "new".into()));
    assert_eq!(tiers[2].0, "namd");
    assert_ne!(
        tiers[2].1, "reuse remote",
        "namd sits on a rebuilt foundation"
    );

    // Unsigned records are refused when trusted keys are set.
    let dave = colleague(&alice);
    let unsigned = seed_shared("");
    let r = amimake(
        &unsigned,
        &moto,
        &["build", "--backend", "simulate", "--rebuild"],
    );
    assert_eq!(r.code(), 0);
    let r = amimake(&dave, &moto, &["plan", "--backend", "simulate"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("is unsigned"), "{}", r.stderr());
    let tiers = plan_tiers(&dave, &moto, &["--backend", "simulate"]);
    assert!(
        tiers.iter().all(|(_, t)| !t.starts_with("reuse")),
        "{tiers:?}"
    );
}

#[test]
fn the_remote_going_away_mid_build_is_a_warning() {
    let moto = Moto::start();
    let s3only = Moto::start();
    let p = seed_shared("");
    let mut c = p.cmd(&[
        "build",
        "--backend",
        "simulate",
        "--simulate-duration",
        "foundation=1.5",
        "--simulate-duration",
        "gromacs=0.5",
        "--simulate-duration",
        "namd=0.5",
    ]);
    moto.env(&mut c);
    c.env("AWS_ENDPOINT_URL_S3", &s3only.endpoint);
    let child = c.stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    drop(s3only); // the S3 server stops mid-build
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("3 built"), "{err}");
    assert!(
        err.to_lowercase().contains("warn"),
        "a warning says the shared cache failed:\n{err}"
    );
}

#[test]
fn an_unreachable_shared_cache_is_a_miss_not_a_failure() {
    let moto = Moto::start();
    let p = Project::seed();
    p.file(
        "amimake.yaml",
        "region: us-east-1\ncache:\n  s3: s3://amimake-artifacts/x\n",
    );
    let mut c = p.cmd(&["build", "--backend", "simulate"]);
    moto.env(&mut c);
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9"); // nothing listens there
    let r = Run(c.output().unwrap());
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("3 built"), "{}", r.stderr());
}

/// A one-layer ec2 project sharing the cache.
fn ec2_root(moto: &Moto) -> Project {
    let base = moto.base_image();
    let p = Project::new();
    p.file(
        "amimake.yaml",
        &format!("region: us-east-1\nbuilder:\n  artifacts_bucket: {BUCKET}\n  poll_interval: 100ms\ncache:\n  s3: {SHARED}\n"),
    );
    p.file(
        "templates/root.yaml",
        &format!("source: {{ami: {base}}}\nprovision: [{{shell: 'sleep 1'}}]\n"),
    );
    p
}

fn copy_project(p: &Project) -> Project {
    let q = Project::new();
    q.file("amimake.yaml", &p.read("amimake.yaml"));
    q.file("templates/root.yaml", &p.read("templates/root.yaml"));
    q
}

#[test]
fn four_developers_building_one_layer_launch_one_instance() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let first = ec2_root(&moto);
    let devs: Vec<Project> = (0..4).map(|_| copy_project(&first)).collect();
    let children: Vec<_> = devs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let summary = d.cache.path().join(format!("s{i}.json"));
            let mut c = d.cmd(&["build", "--summary", summary.to_str().unwrap()]);
            moto.env(&mut c);
            (
                c.stderr(std::process::Stdio::piped()).spawn().unwrap(),
                summary,
            )
        })
        .collect();
    let mut images = Vec::new();
    for (child, summary) in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
        images.push(s["layers"][0]["image"].as_str().unwrap().to_string());
    }
    assert_eq!(
        moto.instances().len(),
        1,
        "exactly one RunInstances: {:?}",
        moto.instances()
    );
    assert!(images.iter().all(|i| *i == images[0]), "{images:?}");
    assert!(moto.live_instances().is_empty());
}

#[test]
fn foreign_and_vanished_images_are_refused_and_rebuilt() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let alice = ec2_root(&moto);
    let r = amimake(&alice, &moto, &["build"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let hash = alice.hashes()["root"].clone().unwrap();
    let target = "ec2/123456789012/us-east-1";
    let key = record_key(&hash, target);
    let good: serde_json::Value = serde_json::from_slice(&object(&moto, &key).unwrap()).unwrap();

    // An image in another account, public and carrying the right tag.
    let foreign = moto
        .rt
        .block_on(
            moto.ec2
                .register_image()
                .name("foreign")
                .root_device_name("/dev/sda1")
                .customize()
                .mutate_request(|req| {
                    req.headers_mut()
                        .insert("x-moto-account-id", "111111111111");
                })
                .send(),
        )
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    moto.rt
        .block_on(
            moto.ec2
                .create_tags()
                .resources(&foreign)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("amimake:layer-hash")
                        .value(&hash)
                        .build(),
                )
                .customize()
                .mutate_request(|req| {
                    req.headers_mut()
                        .insert("x-moto-account-id", "111111111111");
                })
                .send(),
        )
        .unwrap();
    // moto keeps each account's images apart: ours cannot see it, as with
    // a private image of another account on EC2.
    assert!(moto.image(&foreign).is_none());

    let mut forged = good.clone();
    forged["image"] = foreign.clone().into();
    forged["generation"] = 99.into();
    put_object(&moto, &key, serde_json::to_vec_pretty(&forged).unwrap());
    let bob = copy_project(&alice);
    assert_eq!(
        plan_tiers(&bob, &moto, &[]),
        [("root".into(), "stale".into())]
    );
    let r = amimake(&bob, &moto, &["build"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("1 built"), "{}", r.stderr());

    // A record whose image was deregistered is stale and rebuilt.
    let mut vanished = good.clone();
    let gone = moto.base_image();
    moto.deregister(&gone);
    vanished["image"] = gone.into();
    put_object(&moto, &key, serde_json::to_vec_pretty(&vanished).unwrap());
    let dave = copy_project(&alice);
    assert_eq!(
        plan_tiers(&dave, &moto, &[]),
        [("root".into(), "stale".into())]
    );
    let r = amimake(&dave, &moto, &["build"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("1 built"), "{}", r.stderr());
}
