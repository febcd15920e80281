//! plan, build, explain and cache commands with the simulate backend.

use std::collections::BTreeMap;

use crate::support::*;

/// name -> (result, image) from a build summary.
type Results = BTreeMap<String, (String, Option<String>)>;

/// Builds with `--summary` and returns the run, results and summary JSON.
fn build(p: &Project, extra: &[&str]) -> (Run, Results, serde_json::Value) {
    let (run, json) = p.build_summary("simulate", extra);
    let results = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                (
                    l["result"].as_str().unwrap().to_string(),
                    l["image"].as_str().map(String::from),
                ),
            )
        })
        .collect();
    (run, results, json)
}

fn results(map: &Results) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, (r, _))| (k.clone(), r.clone()))
        .collect()
}

fn plan(p: &Project, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["plan", "--backend", "simulate", "--format", "json"];
    args.extend_from_slice(extra);
    p.ok(&args).json()
}

fn reasons(plan: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let what = match l["action"].as_str().unwrap() {
                "reuse" => "reuse".to_string(),
                _ => l["reason"].as_str().unwrap().to_string(),
            };
            (l["name"].as_str().unwrap().to_string(), what)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn first_build_builds_all_then_second_reuses_all() {
    let p = Project::seed();
    let (run, first, summary) = build(&p, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        results(&first),
        pairs(&[
            ("foundation", "built"),
            ("gromacs", "built"),
            ("namd", "built")
        ])
    );
    assert_eq!(summary["schema_version"], 1);
    assert_eq!(summary["target"], "simulate");
    for (name, (_, image)) in &first {
        let image = image
            .as_deref()
            .unwrap_or_else(|| panic!("{name} has no image"));
        assert!(image.starts_with("sim-"), "{image}");
    }
    let (run, second, _) = build(&p, &[]);
    assert_eq!(run.code(), 0);
    assert_eq!(
        results(&second),
        pairs(&[
            ("foundation", "reused"),
            ("gromacs", "reused"),
            ("namd", "reused")
        ])
    );
    for name in ["foundation", "gromacs", "namd"] {
        assert_eq!(first[name].1, second[name].1, "{name} image changed");
    }
    assert!(
        !run.stderr().contains("building"),
        "a null build builds nothing:\n{}",
        run.stderr()
    );
}

#[test]
fn plan_json_follows_the_contract() {
    let p = Project::seed();
    let v = plan(&p, &[]);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["target"], "simulate");
    let names: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["foundation", "gromacs", "namd"],
        "topological order, ties by name"
    );
    let g = &v["layers"][1];
    assert_eq!(g["file"], "templates/gromacs.yaml");
    assert_eq!(g["parent"], "foundation");
    assert_eq!(g["action"], "build");
    assert_eq!(g["reason"], "new");
    assert!(g["image"].is_null() && g["cache"].is_null());
    assert!(
        g["estimate_seconds"].is_null(),
        "no history: unknown, not made up"
    );
    assert_eq!(g["hash"].as_str().unwrap().len(), 64);
    assert_eq!(v["totals"]["build"], 3);
    assert_eq!(v["totals"]["reuse"], 0);

    build(&p, &["--simulate-duration", "foundation=0.2"]);
    p.file(
        "templates/gromacs.yaml",
        &p.read("templates/gromacs.yaml")
            .replace("gromacs@2024.3+mpi", "gromacs@2024.4+mpi"),
    );
    let v = plan(&p, &[]);
    let g = &v["layers"][1];
    assert_eq!(
        (g["action"].as_str(), g["reason"].as_str()),
        (Some("build"), Some("changed"))
    );
    let changes: Vec<&str> = g["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        changes.contains(&"software.spack: +gromacs@2024.4+mpi"),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"software.spack: -gromacs@2024.3+mpi"),
        "{changes:?}"
    );
    let f = &v["layers"][0];
    assert_eq!(
        (f["action"].as_str(), f["cache"].as_str()),
        (Some("reuse"), Some("local"))
    );
    assert!(f["image"].as_str().unwrap().starts_with("sim-"));
    assert!(f["reason"].is_null());
    assert_eq!(v["totals"]["build"], 1);
    assert_eq!(v["totals"]["reuse"], 2);
    let saved = v["totals"]["saved_seconds"].as_f64().unwrap();
    assert!(
        saved >= 0.2,
        "reusing foundation saves its build time, got {saved}"
    );
    assert!(
        g["estimate_seconds"].as_f64().is_some(),
        "gromacs has build history now"
    );
}

#[test]
fn editing_a_leaf_rebuilds_only_that_leaf() {
    let p = Project::seed();
    build(&p, &[]);
    p.file(
        "scripts/build-gromacs.sh",
        "#!/bin/sh\nset -eu\nspack load gromacs\necho changed\n",
    );
    assert_eq!(
        reasons(&plan(&p, &[])),
        pairs(&[
            ("foundation", "reuse"),
            ("gromacs", "changed"),
            ("namd", "reuse")
        ])
    );
    let (run, r, _) = build(&p, &[]);
    assert_eq!(run.code(), 0);
    assert_eq!(
        results(&r),
        pairs(&[
            ("foundation", "reused"),
            ("gromacs", "built"),
            ("namd", "reused")
        ])
    );
}

#[test]
fn editing_the_root_rebuilds_everything_with_parent_reasons() {
    let p = Project::seed();
    build(&p, &[]);
    p.file("files/modules.sh", "export MODULEPATH=/srv/modules\n");
    let v = plan(&p, &[]);
    assert_eq!(
        reasons(&v),
        pairs(&[
            ("foundation", "changed"),
            ("gromacs", "parent"),
            ("namd", "parent")
        ])
    );
    let changes = v["layers"][1]["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c == "parent foundation will be rebuilt"),
        "{changes:?}"
    );
    let fchanges = v["layers"][0]["changes"].as_array().unwrap();
    assert!(
        fchanges
            .iter()
            .any(|c| c == "files[/etc/profile.d/modules.sh]: content changed"),
        "{fchanges:?}"
    );
}

#[test]
fn explain_names_field_level_changes() {
    let p = Project::seed();
    build(&p, &[]);
    let f = p
        .read("templates/foundation.yaml")
        .replace("spack_root: /opt/spack", "spack_root: /srv/spack");
    p.file("templates/foundation.yaml", &f);
    p.file("scripts/install-spack.sh", "#!/bin/sh\nset -eu\necho new\n");
    let out = p
        .ok(&["explain", "foundation", "--backend", "simulate"])
        .stdout();
    assert!(
        out.contains("foundation would be rebuilt on simulate: changed"),
        "{out}"
    );
    assert!(
        out.contains("variables.spack_root: /opt/spack → /srv/spack"),
        "{out}"
    );
    assert!(
        out.contains("provision[0]: scripts/install-spack.sh content changed"),
        "{out}"
    );
    let out = p.ok(&["explain", "namd", "--backend", "simulate"]).stdout();
    assert!(
        out.contains("namd would be rebuilt on simulate: parent"),
        "{out}"
    );
    assert!(out.contains("parent foundation will be rebuilt"), "{out}");
    let v = p
        .ok(&[
            "explain",
            "namd",
            "--backend",
            "simulate",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(v["reason"], "parent");
}

#[test]
fn explain_says_up_to_date_and_new() {
    let p = Project::seed();
    let out = p
        .ok(&["explain", "gromacs", "--backend", "simulate"])
        .stdout();
    assert!(
        out.contains("gromacs would be rebuilt on simulate: new"),
        "{out}"
    );
    build(&p, &[]);
    let out = p
        .ok(&["explain", "gromacs", "--backend", "simulate"])
        .stdout();
    assert!(
        out.contains("gromacs is up to date on simulate: sim-"),
        "{out}"
    );
}

#[test]
fn rebuild_forces_exactly_the_named_layers() {
    let p = Project::seed();
    build(&p, &[]);
    let v = plan(&p, &["--rebuild", "foundation"]);
    assert_eq!(reasons(&v), pairs(&[("foundation", "forced")]));
    let v = plan(&p, &["--rebuild", "foundation", "namd"]);
    assert_eq!(
        reasons(&v),
        pairs(&[("foundation", "forced"), ("namd", "forced")])
    );
    let v = plan(&p, &["--rebuild"]);
    assert_eq!(
        reasons(&v),
        pairs(&[
            ("foundation", "forced"),
            ("gromacs", "forced"),
            ("namd", "forced")
        ])
    );
    let v = plan(&p, &["--rebuild", "gromacs"]);
    assert_eq!(
        reasons(&v),
        pairs(&[("foundation", "reuse"), ("gromacs", "forced")])
    );
    let (_, r, _) = build(&p, &["--rebuild", "gromacs"]);
    assert_eq!(
        results(&r),
        pairs(&[("foundation", "reused"), ("gromacs", "built")])
    );
}

#[test]
fn rebuild_base_forces_the_whole_chain_under_the_target() {
    let p = Project::seed();
    p.file(
        "templates/extra.yaml",
        "extends: gromacs\nprovision: [{shell: echo extra}]\n",
    );
    build(&p, &[]);
    let v = plan(&p, &["--rebuild-base", "gromacs"]);
    assert_eq!(
        reasons(&v),
        pairs(&[("foundation", "forced"), ("gromacs", "forced")])
    );
    let (_, r, _) = build(&p, &["--rebuild-base", "extra"]);
    assert_eq!(
        results(&r),
        pairs(&[
            ("foundation", "built"),
            ("gromacs", "built"),
            ("extra", "built")
        ])
    );
}

#[test]
fn building_a_target_builds_missing_ancestors_only() {
    let p = Project::seed();
    let (_, r, _) = build(&p, &["namd"]);
    assert_eq!(
        results(&r),
        pairs(&[("foundation", "built"), ("namd", "built")])
    );
    let (_, r, _) = build(&p, &["gromacs"]);
    assert_eq!(
        results(&r),
        pairs(&[("foundation", "reused"), ("gromacs", "built")])
    );
}

#[test]
fn a_failure_skips_descendants_and_stops_new_work() {
    let p = Project::seed();
    p.file(
        "templates/solo.yaml",
        "source: {ami: ami-0fedcba9876543210}\n",
    );
    let (run, r, _) = build(&p, &["-j", "1", "--simulate-fail", "foundation"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_eq!(r["foundation"].0, "failed");
    assert_eq!(r["gromacs"].0, "skipped");
    assert_eq!(r["namd"].0, "skipped");
    // solo sorts after foundation: with -j 1 it had not started, so it is not started at all.
    assert_eq!(r["solo"].0, "skipped");
    assert!(
        run.stderr().contains("simulated failure of `foundation`"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("| simulate: exit status 1"),
        "log tail shown:\n{}",
        run.stderr()
    );
    // Nothing of the failed layer was cached.
    let ls = p.ok(&["cache", "ls", "--format", "json"]).json();
    assert_eq!(ls["entries"].as_array().unwrap().len(), 0);
}

#[test]
fn keep_going_builds_independent_layers() {
    let p = Project::seed();
    p.file(
        "templates/solo.yaml",
        "source: {ami: ami-0fedcba9876543210}\n",
    );
    let (run, r, _) = build(
        &p,
        &["-j", "1", "--keep-going", "--simulate-fail", "gromacs"],
    );
    assert_eq!(run.code(), 1);
    assert_eq!(
        results(&r),
        pairs(&[
            ("foundation", "built"),
            ("gromacs", "failed"),
            ("namd", "built"),
            ("solo", "built")
        ])
    );
    // The failed layer is rebuilt next time, the rest reused.
    let v = plan(&p, &[]);
    assert_eq!(
        reasons(&v),
        pairs(&[
            ("foundation", "reuse"),
            ("gromacs", "new"),
            ("namd", "reuse"),
            ("solo", "reuse")
        ])
    );
}

#[test]
fn a_template_error_builds_nothing() {
    let p = Project::seed();
    p.file("templates/broken.yaml", "extends: foundation\nbogus: 1\n");
    let run = p.run(&["build", "--backend", "simulate"]);
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("templates/broken.yaml:2:1"),
        "{}",
        run.stderr()
    );
    assert!(
        !p.cache.path().join("cache.db").exists(),
        "no cache touched"
    );
}

#[test]
fn unknown_target_is_a_usage_error_with_suggestion() {
    let p = Project::seed();
    let run = p.run(&["build", "--backend", "simulate", "gromac"]);
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("did you mean `gromacs`"),
        "{}",
        run.stderr()
    );
}

#[test]
fn independent_layers_run_in_parallel() {
    let p = Project::seed();
    let (run, _, s) = build(
        &p,
        &[
            "--simulate-duration",
            "foundation=0.6",
            "--simulate-duration",
            "gromacs=0.6",
            "--simulate-duration",
            "namd=0.6",
        ],
    );
    assert_eq!(run.code(), 0);
    let wall = s["wall_seconds"].as_f64().unwrap();
    // Sequential would be 1.8 s; the DAG's critical path is 1.2 s.
    assert!((1.2..1.7).contains(&wall), "wall {wall}");
    let starts: Vec<&str> = s["layers"].as_array().unwrap()[1..]
        .iter()
        .map(|l| l["started_at"].as_str().unwrap())
        .collect();
    assert_eq!(starts.len(), 2);
}

#[test]
fn jobs_one_serializes() {
    let p = Project::seed();
    let (_, _, s) = build(
        &p,
        &[
            "-j",
            "1",
            "--simulate-duration",
            "gromacs=0.4",
            "--simulate-duration",
            "namd=0.4",
        ],
    );
    let wall = s["wall_seconds"].as_f64().unwrap();
    assert!(wall >= 0.8, "-j 1 runs one layer at a time, wall {wall}");
}

#[test]
fn cache_ls_forget_stats() {
    let p = Project::seed();
    build(&p, &[]);
    let ls = p.ok(&["cache", "ls", "--format", "json"]).json();
    let entries = ls["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e["target"] == "simulate"));
    let text = p.ok(&["cache", "ls"]).stdout();
    assert!(text.contains("gromacs"), "{text}");
    let stats = p.ok(&["cache", "stats", "--format", "json"]).json();
    assert_eq!(stats["entries"], 3);
    assert_eq!(stats["builds"], 3);
    let out = p.ok(&["cache", "forget", "gromacs"]).stdout();
    assert!(out.contains("forgot 1 entry"), "{out}");
    assert_eq!(
        reasons(&plan(&p, &[])),
        pairs(&[
            ("foundation", "reuse"),
            ("gromacs", "new"),
            ("namd", "reuse")
        ])
    );
    let hash = p.hashes_for("simulate")["namd"].clone();
    p.ok(&["cache", "forget", &hash[..12]]);
    assert_eq!(
        reasons(&plan(&p, &[])),
        pairs(&[("foundation", "reuse"), ("gromacs", "new"), ("namd", "new")])
    );
}

#[test]
fn expired_layers_are_rebuilt_with_descendants() {
    let p = Project::seed();
    build(&p, &[]);
    let f = p.read("templates/foundation.yaml") + "rebuild: {max_age: 1s}\n";
    p.file("templates/foundation.yaml", &f);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(
        reasons(&plan(&p, &[])),
        pairs(&[
            ("foundation", "expired"),
            ("gromacs", "parent"),
            ("namd", "parent")
        ])
    );
}

#[test]
fn sigterm_cancels_cleanly_with_exit_130() {
    let p = Project::seed();
    let summary = p.cache.path().join("int.json");
    let child = p
        .cmd(&[
            "build",
            "--backend",
            "simulate",
            "--simulate-duration",
            "foundation=30",
            "--summary",
            summary.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed().as_secs() < 10, "cancellation is prompt");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let r: Vec<&str> = s["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["result"].as_str().unwrap())
        .collect();
    assert_eq!(r, ["cancelled", "cancelled", "cancelled"]);
}

#[test]
fn eight_processes_share_one_cache() {
    let p = Project::seed();
    for i in 0..12 {
        p.file(
            &format!("templates/leaf{i}.yaml"),
            &format!("extends: foundation\nprovision: [{{shell: echo {i}}}]\n"),
        );
    }
    let children: Vec<_> = (0..8)
        .map(|_| {
            p.cmd(&["build", "--backend", "simulate"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(!err.contains("locked") && !err.contains("busy"), "{err}");
    }
    let db = rusqlite::Connection::open(p.cache.path().join("cache.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let n: i64 = db
        .query_row("SELECT count(*) FROM layers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 15);
    let v = plan(&p, &[]);
    assert_eq!(v["totals"]["reuse"], 15);
}
