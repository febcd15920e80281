//! Nightly-rebuild lifecycle against moto: expiry, drift, image gc, tree,
//! delete and sharing.

use std::time::Duration;

use crate::ec2::{amimake, chain, images_by_layer, tag};
use crate::moto::Moto;
use crate::support::*;

fn build(p: &Project, moto: &Moto) -> std::collections::BTreeMap<String, String> {
    let summary = p.cache.path().join("lc.json");
    let r = amimake(p, moto, &["build", "--summary", summary.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    images_by_layer(&serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap())
}

fn reasons(p: &Project, moto: &Moto) -> Vec<(String, String)> {
    let r = amimake(p, moto, &["plan", "--format", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    r.json()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["reason"].as_str().unwrap_or("reuse").to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn launch_permissions(moto: &Moto, image: &str) -> Vec<String> {
    let out = moto
        .rt
        .block_on(
            moto.ec2
                .describe_image_attribute()
                .image_id(image)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send(),
        )
        .unwrap();
    out.launch_permissions()
        .iter()
        .map(|p| {
            p.user_id()
                .map(str::to_string)
                .or_else(|| p.group().map(|g| g.as_str().to_string()))
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn expired_layers_and_their_descendants_are_rebuilt() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    p.file(
        "templates/mid.yaml",
        &(p.read("templates/mid.yaml") + "rebuild: {max_age: 1s}\n"),
    );
    let first = build(&p, &moto);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        reasons(&p, &moto),
        pairs(&[("root", "reuse"), ("mid", "expired"), ("leaf", "parent")])
    );
    let second = build(&p, &moto);
    assert_eq!(first["root"], second["root"]);
    assert_ne!(first["mid"], second["mid"]);
    assert_ne!(first["leaf"], second["leaf"]);
}

#[test]
fn a_newer_source_image_is_drift() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, base) = chain(&moto);
    // The root follows the newest image named test-base*.
    p.file(
        "templates/root.yaml",
        &p.read("templates/root.yaml").replace(
            &format!("source: {{ami: {base}}}"),
            "source: {ami_filter: {owners: [\"123456789012\"], name: \"test-base*\"}}",
        ),
    );
    build(&p, &moto);
    assert_eq!(
        reasons(&p, &moto),
        pairs(&[("root", "reuse"), ("mid", "reuse"), ("leaf", "reuse")])
    );
    let offline = p.hashes();
    assert!(
        offline["root"].is_some(),
        "the resolution was recorded for offline hashing"
    );
    let drift = amimake(&p, &moto, &["drift"]);
    assert!(drift.stdout().contains("no drift"), "{}", drift.stdout());

    std::thread::sleep(Duration::from_millis(1100)); // a later CreationDate
    let newer = moto.base_image();
    assert_eq!(
        reasons(&p, &moto),
        pairs(&[("root", "drift"), ("mid", "parent"), ("leaf", "parent")])
    );
    let d = amimake(&p, &moto, &["drift", "--format", "json"]).json();
    assert_eq!(d["drifted"][0]["root"], "root");
    assert_eq!(
        d["drifted"][0]["invalidated"],
        serde_json::json!(["root", "mid", "leaf"])
    );
    assert!(
        d["drifted"][0]["changes"][0]
            .as_str()
            .unwrap()
            .contains(&newer),
        "{d}"
    );
    let before = moto.instances().len();
    let _ = amimake(&p, &moto, &["drift"]);
    assert_eq!(moto.instances().len(), before, "drift builds nothing");
}

#[test]
fn gc_deletes_only_images_no_template_needs() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    let v1 = build(&p, &moto);
    p.file(
        "templates/leaf.yaml",
        &p.read("templates/leaf.yaml")
            .replace("leaf-done", "leaf-done-v2"),
    );
    let v2 = build(&p, &moto);
    assert_eq!(v1["mid"], v2["mid"]);
    assert_ne!(v1["leaf"], v2["leaf"]);

    let dry = amimake(&p, &moto, &["gc", "--dry-run"]);
    assert_eq!(dry.code(), 0, "{}", dry.stderr());
    assert!(
        dry.stdout()
            .contains(&format!("would delete {}", v1["leaf"])),
        "{}",
        dry.stdout()
    );
    assert!(
        !dry.stdout().contains(&v2["leaf"]) && !dry.stdout().contains(&v2["mid"]),
        "{}",
        dry.stdout()
    );
    assert!(
        dry.stdout().contains("1 image to delete"),
        "{}",
        dry.stdout()
    );
    assert!(moto.image(&v1["leaf"]).is_some(), "dry run deletes nothing");

    let young = amimake(&p, &moto, &["gc", "--older-than", "30d"]);
    assert!(
        young.stdout().contains("0 images deleted"),
        "{}",
        young.stdout()
    );
    let kept = amimake(&p, &moto, &["gc", "--keep", "2"]);
    assert!(
        kept.stdout().contains("0 images deleted"),
        "{}",
        kept.stdout()
    );

    let gc = amimake(&p, &moto, &["gc"]);
    assert_eq!(gc.code(), 0, "{}", gc.stderr());
    assert!(
        gc.stdout().contains("GiB of snapshots, about $"),
        "{}",
        gc.stdout()
    );
    assert!(moto.image(&v1["leaf"]).is_none(), "old leaf deregistered");
    for layer in ["root", "mid", "leaf"] {
        assert!(moto.image(&v2[layer]).is_some(), "{layer} is still needed");
    }
    assert_eq!(
        reasons(&p, &moto),
        pairs(&[("root", "reuse"), ("mid", "reuse"), ("leaf", "reuse")])
    );
}

#[test]
fn tree_delete_and_sharing() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    let images = build(&p, &moto);

    let t = amimake(&p, &moto, &["tree", "leaf", "--format", "json"]).json();
    let names: Vec<&str> = t["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "mid", "leaf"]);
    assert_eq!(t["layers"][2]["image"], images["leaf"].as_str());
    assert!(t["layers"][0]["snapshot_gb"].as_u64().is_some());
    let deps = amimake(&p, &moto, &["tree", &images["root"], "--dependents"]);
    assert!(
        deps.stdout().contains("mid") && deps.stdout().contains("leaf"),
        "{}",
        deps.stdout()
    );

    let refused = amimake(&p, &moto, &["delete", "mid"]);
    assert_eq!(refused.code(), 2, "{}", refused.stderr());
    assert!(
        refused.stderr().contains("leaf") && refused.stderr().contains(&images["leaf"]),
        "{}",
        refused.stderr()
    );
    assert!(moto.image(&images["mid"]).is_some());

    let shared = amimake(
        &p,
        &moto,
        &[
            "share",
            "leaf",
            "--accounts",
            "111111111111,222222222222",
            "--chain",
        ],
    );
    assert_eq!(shared.code(), 0, "{}", shared.stderr());
    for layer in ["root", "mid", "leaf"] {
        let perms = launch_permissions(&moto, &images[layer]);
        assert!(
            perms.contains(&"111111111111".to_string()),
            "{layer}: {perms:?}"
        );
    }
    let public = amimake(&p, &moto, &["share", "leaf", "--public"]);
    assert_eq!(
        public.code(),
        2,
        "public needs --yes without a terminal: {}",
        public.stderr()
    );
    assert!(public.stderr().contains("PUBLIC"), "{}", public.stderr());
    assert!(!launch_permissions(&moto, &images["leaf"]).contains(&"all".to_string()));
    assert_eq!(
        amimake(&p, &moto, &["share", "leaf", "--public", "--yes"]).code(),
        0
    );
    assert!(launch_permissions(&moto, &images["leaf"]).contains(&"all".to_string()));
    assert_eq!(
        amimake(
            &p,
            &moto,
            &["unshare", "leaf", "--public", "--accounts", "111111111111"]
        )
        .code(),
        0
    );
    let perms = launch_permissions(&moto, &images["leaf"]);
    assert!(
        !perms.contains(&"all".to_string()) && !perms.contains(&"111111111111".to_string()),
        "{perms:?}"
    );
    assert!(perms.contains(&"222222222222".to_string()), "{perms:?}");

    let deleted = amimake(&p, &moto, &["delete", "leaf"]);
    assert_eq!(deleted.code(), 0, "{}", deleted.stderr());
    assert!(moto.image(&images["leaf"]).is_none());
    assert_eq!(
        amimake(&p, &moto, &["delete", "mid"]).code(),
        0,
        "no dependents left"
    );
}

fn regional_image(moto: &Moto, region: &str, id: &str) -> Option<aws_sdk_ec2::types::Image> {
    let client = aws_sdk_ec2::Client::from_conf(
        moto.ec2
            .config()
            .to_builder()
            .region(aws_sdk_ec2::config::Region::new(region.to_string()))
            .build(),
    );
    let out = moto
        .rt
        .block_on(
            client
                .describe_images()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("image-id")
                        .values(id)
                        .build(),
                )
                .send(),
        )
        .unwrap();
    out.images().first().cloned()
}

#[test]
fn images_are_copied_to_other_regions_and_a_hit_elsewhere_is_a_copy() {
    let moto = Moto::start();
    let _runner = moto.runner();
    let (p, _) = chain(&moto);
    p.file(
        "amimake.yaml",
        &(p.read("amimake.yaml") + "regions: [us-west-2]\n"),
    );
    let images = build(&p, &moto);
    let hashes = p.hashes();
    let ls = amimake(
        &p,
        &moto,
        &[
            "cache",
            "ls",
            "--format",
            "json",
            "--target",
            "ec2/123456789012/us-west-2",
        ],
    )
    .json();
    let copies = ls["entries"].as_array().unwrap();
    assert_eq!(copies.len(), 3, "one cache entry per region: {ls}");
    for c in copies {
        let layer = c["template"].as_str().unwrap();
        let img = regional_image(&moto, "us-west-2", c["image"].as_str().unwrap())
            .expect("the copy exists in us-west-2");
        assert_eq!(tag(&img, "amimake:layer-hash"), hashes[layer].as_deref());
        assert_eq!(
            tag(&img, "amimake:copied-from"),
            Some(format!("us-east-1/{}", images[layer]).as_str())
        );
    }
    // Nothing to copy the second time.
    let r = amimake(&p, &moto, &["build"]);
    assert!(!r.stderr().contains("copying"), "{}", r.stderr());

    // The same layers wanted in eu-west-1 as the primary region: copies, not rebuilds.
    let instances = moto.instances().len();
    p.file(
        "amimake.yaml",
        &p.read("amimake.yaml")
            .replace("region: us-east-1", "region: eu-west-1")
            .replace("regions: [us-west-2]\n", ""),
    );
    let r = amimake(&p, &moto, &["plan", "--format", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let plan = r.json();
    let actions: Vec<&str> = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["copy", "copy", "copy"], "{plan}");
    assert_eq!(plan["totals"]["copy"], 3);
    let summary = p.cache.path().join("eu.json");
    let r = amimake(
        &p,
        &moto,
        &["build", "--summary", summary.to_str().unwrap()],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stderr().contains("copying"), "{}", r.stderr());
    assert_eq!(
        moto.instances().len(),
        instances,
        "no builder instance for a copy"
    );
    let eu =
        images_by_layer(&serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap());
    for layer in ["root", "mid", "leaf"] {
        assert!(
            regional_image(&moto, "eu-west-1", &eu[layer]).is_some(),
            "{layer} in eu-west-1"
        );
    }
    let plan = amimake(&p, &moto, &["plan", "--format", "json"]).json();
    assert_eq!(plan["totals"]["reuse"], 3);
}
