//! The template language and the read-only commands (DESIGN.md §1, §2, §4):
//! `validate` accepts good repositories and rejects each kind of bad input
//! with exit 2, a `file:line:col` message and no output on stdout; `show`
//! and `graph` present the merged DAG.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// Runs `args`, expects exit 2 and nothing on stdout; returns stderr.
#[track_caller]
fn fails(p: &Project, args: &[&str]) -> String {
    let r = p.run(args);
    let err = r.stderr();
    assert_eq!(
        r.code(),
        2,
        "amimake {args:?} should exit 2; stderr:\n{err}\nstdout:\n{}",
        r.stdout()
    );
    assert_eq!(
        r.stdout(),
        "",
        "amimake {args:?} printed partial output on error"
    );
    assert!(
        !err.contains("panicked"),
        "amimake {args:?} panicked:\n{err}"
    );
    err
}

/// `validate` fails; returns stderr.
#[track_caller]
fn invalid(p: &Project) -> String {
    fails(p, &["validate"])
}

/// The error lines (`file:line:col: error: ...`) of a diagnostic output.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(": error: ")).collect()
}

/// Asserts that one error line starts with `prefix` (e.g.
/// `templates/x.yaml:2:1: error:`) and contains every one of `words`;
/// returns that line.
#[track_caller]
fn has_error<'a>(stderr: &'a str, prefix: &str, words: &[&str]) -> &'a str {
    let line = error_lines(stderr)
        .into_iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no error at `{prefix}` in:\n{stderr}"));
    for w in words {
        assert!(
            line.contains(w),
            "error line lacks `{w}`: {line}\nfull stderr:\n{stderr}"
        );
    }
    line
}

fn replace_once(p: &Project, rel: &str, from: &str, to: &str) {
    let text = p.read(rel);
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` should occur once in {rel}:\n{text}"
    );
    p.file(rel, &text.replacen(from, to, 1));
}

fn names(v: &Value) -> Vec<String> {
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

// ------------------------------------------------------------ valid input

#[test]
fn validate_accepts_the_seed() {
    let p = Project::seed();
    let out = p.ok(&["validate"]).stdout();
    assert!(out.starts_with("ok: 3 templates"), "{out}");
}

#[test]
fn validate_accepts_chain_at_exactly_max_depth() {
    // Default max_depth 5: a chain of five layers is fine.
    let p = Project::seed();
    p.file("templates/l3.yaml", "extends: gromacs\n");
    p.file("templates/l4.yaml", "extends: l3\n");
    p.file("templates/l5.yaml", "extends: l4\n");
    p.ok(&["validate"]);
    // Configured max_depth 2: root and child are fine.
    let q = Project::seed();
    q.file("amimake.yaml", "max_depth: 2\n");
    q.ok(&["validate"]);
}

#[test]
fn extends_by_relative_path() {
    let p = Project::seed();
    std::fs::create_dir_all(p.path("templates/base")).unwrap();
    std::fs::create_dir_all(p.path("templates/apps")).unwrap();
    let foundation = p.read("templates/foundation.yaml").replace("../", "../../");
    p.remove("templates/foundation.yaml");
    p.file("templates/base/foundation.yaml", &foundation);
    p.remove("templates/gromacs.yaml");
    p.file(
        "templates/apps/gromacs.yaml",
        "extends: ../base/foundation.yaml\nsoftware: {spack: [\"gromacs@2024.3+mpi\"]}\nprovision: [{script: ../../scripts/build-gromacs.sh}]\n",
    );
    replace_once(
        &p,
        "templates/namd.yaml",
        "extends: foundation",
        "extends: ./base/foundation.yml",
    );
    // `.yml` does not exist: a located error with a suggestion.
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:1:10: error:",
        &["./base/foundation.yml"],
    );
    assert!(err.contains("did you mean `foundation`"), "{err}");
    replace_once(
        &p,
        "templates/namd.yaml",
        "foundation.yml",
        "foundation.yaml",
    );
    p.ok(&["validate"]);
    let g = p.ok(&["graph", "--format", "json"]).json();
    assert_eq!(
        g["layers"],
        json!([
            {"name": "foundation", "file": "templates/base/foundation.yaml", "parent": null, "children": ["gromacs", "namd"]},
            {"name": "gromacs", "file": "templates/apps/gromacs.yaml", "parent": "foundation", "children": []},
            {"name": "namd", "file": "templates/namd.yaml", "parent": "foundation", "children": []},
        ])
    );
    let s = p
        .ok(&["show", "gromacs", "--resolved", "--format", "json"])
        .json();
    assert_eq!(
        s["chain"],
        json!([
            {"name": "foundation", "file": "templates/base/foundation.yaml"},
            {"name": "gromacs", "file": "templates/apps/gromacs.yaml"},
        ])
    );
    // A path that leaves the project root is refused.
    replace_once(
        &p,
        "templates/namd.yaml",
        "./base/foundation.yaml",
        "../../elsewhere/foundation.yaml",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:1:10: error:",
        &["leaves the project root"],
    );
}

#[test]
fn templates_dir_is_configurable() {
    let p = Project::seed();
    std::fs::rename(p.path("templates"), p.path("layers")).unwrap();
    let err = fails(&p, &["validate"]);
    assert!(err.contains("templates"), "{err}");
    p.file("amimake.yaml", "templates: layers\n");
    let v = p.ok(&["hash", "--format", "json"]).json();
    assert_eq!(v["layers"][0]["file"], "layers/foundation.yaml");
}

// ------------------------------------------------- each kind of bad input

#[test]
fn unknown_key_at_top_level() {
    let p = Project::seed();
    p.file("templates/namd.yaml", "extends: foundation\ninstanse: 1\n");
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:2:1: error:", &["instanse"]);
}

#[test]
fn unknown_key_nested() {
    let p = Project::seed();
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nbuild: {instanse_type: x}\n",
    );
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:2:9: error:", &["instanse_type"]);

    p.file(
        "templates/namd.yaml",
        "extends: foundation\nbuild:\n  instanse_type: x\n",
    );
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:3:3: error:", &["instanse_type"]);

    p.file(
        "templates/namd.yaml",
        "extends: foundation\nprovision:\n  - shell: echo\n  - scirpt: ../scripts/x.sh\n",
    );
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:4:5: error:", &["scirpt"]);

    // In amimake.yaml too.
    let q = Project::seed();
    q.file("amimake.yaml", "# config\nmax_dept: 3\n");
    let err = invalid(&q);
    has_error(&err, "amimake.yaml:2:1: error:", &["max_dept"]);
}

#[test]
fn duplicate_key() {
    let p = Project::seed();
    p.file(
        "templates/namd.yaml",
        "extends: foundation\ntags: {a: b}\ntags: {c: d}\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:3:1: error:",
        &["duplicate", "tags"],
    );

    p.file(
        "templates/namd.yaml",
        "extends: foundation\nvariables:\n  a: \"1\"\n  a: \"2\"\n",
    );
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:4:3: error:", &["duplicate", "a"]);
}

#[test]
fn malformed_yaml() {
    let cases = [
        (
            "extends: foundation\ndescription: \"abc\n",
            "templates/namd.yaml:2:14: error:",
        ),
        (
            "extends: foundation\nsoftware: {spack: [a, b}\n",
            "templates/namd.yaml:2:19: error:",
        ),
        (
            "extends: foundation\nsoftware:\n  spack:\n    - a\n   - b\n",
            "templates/namd.yaml:5:4: error:",
        ),
        (
            "extends: foundation\nsoftware:\n\tspack: [x]\n",
            "templates/namd.yaml:3:2: error:",
        ),
    ];
    for (text, prefix) in cases {
        let p = Project::seed();
        p.file("templates/namd.yaml", text);
        let err = invalid(&p);
        has_error(&err, prefix, &[]);
    }
}

#[test]
fn cycle_lists_the_whole_chain() {
    let p = Project::seed();
    p.file("templates/a.yaml", "extends: b\n");
    p.file("templates/b.yaml", "extends: c\n");
    p.file("templates/c.yaml", "extends: a\n");
    p.file("templates/d.yaml", "extends: a\n"); // hangs off the cycle
    let err = invalid(&p);
    // Reported once, at a's `extends:`, in extends order: a extends b,
    // b extends c, c extends a.
    let line = has_error(&err, "templates/a.yaml:1:10: error:", &["cycle"]);
    assert!(
        line.contains("a -> b -> c -> a"),
        "cycle not in `extends` order: {line}"
    );
    for f in [
        "templates/a.yaml:1:10",
        "templates/b.yaml:1:10",
        "templates/c.yaml:1:10",
    ] {
        assert!(err.contains(f), "the message should name {f}:\n{err}");
    }
    assert_eq!(error_lines(&err).len(), 1, "{err}");
}

#[test]
fn self_cycle() {
    let p = Project::seed();
    p.file("templates/namd.yaml", "extends: namd\n");
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:1:10: error:",
        &["cycle", "namd -> namd"],
    );
}

#[test]
fn missing_parent_suggests_a_name() {
    let p = Project::seed();
    p.file("templates/namd.yaml", "extends: foundaton\n");
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:1:10: error:", &["foundaton"]);
    assert!(err.contains("did you mean `foundation`"), "{err}");
    assert!(err.contains("templates/foundation.yaml"), "{err}");
    // Nothing close: no suggestion.
    p.file("templates/namd.yaml", "extends: zzzzzzzzzzzz\n");
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:1:10: error:", &["zzzzzzzzzzzz"]);
    assert!(!err.contains("did you mean"), "{err}");
}

#[test]
fn depth_over_default_max_depth() {
    let p = Project::seed();
    p.file("templates/l3.yaml", "extends: gromacs\n");
    p.file("templates/l4.yaml", "extends: l3\n");
    p.file("templates/l5.yaml", "extends: l4\n");
    p.file("templates/l6.yaml", "extends: l5\n");
    let err = invalid(&p);
    has_error(
        &err,
        "templates/l6.yaml:1:10: error:",
        &[
            "max_depth 5",
            "foundation -> gromacs -> l3 -> l4 -> l5 -> l6",
        ],
    );
}

#[test]
fn depth_over_configured_max_depth() {
    let p = Project::seed();
    p.file("amimake.yaml", "max_depth: 2\n");
    p.file("templates/plumed.yaml", "extends: gromacs\n");
    let err = invalid(&p);
    has_error(
        &err,
        "templates/plumed.yaml:1:10: error:",
        &["max_depth 2", "foundation -> gromacs -> plumed"],
    );
    assert_eq!(error_lines(&err).len(), 1, "{err}");
}

#[test]
fn extends_and_source_together() {
    let p = Project::seed();
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nsource: {ami: ami-0123456789abcdef0}\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:2:9: error:",
        &["extends", "source"],
    );
    assert!(
        err.contains("templates/namd.yaml:1:10"),
        "the note points at extends:\n{err}"
    );
}

#[test]
fn neither_extends_nor_source() {
    let p = Project::seed();
    p.file(
        "templates/namd.yaml",
        "description: orphan\nsoftware: {apt: [x]}\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:1:1: error:",
        &["extends", "source"],
    );
}

#[test]
fn two_templates_with_the_same_name_name_both_files() {
    let p = Project::seed();
    p.file("templates/sub/namd.yaml", "extends: foundation\n");
    let err = invalid(&p);
    has_error(&err, "templates/sub/namd.yaml:1:1: error:", &["namd"]);
    assert!(
        err.contains("templates/namd.yaml"),
        "the other file is named:\n{err}"
    );

    // Same through `name:`.
    let q = Project::seed();
    q.file("templates/other.yaml", "name: namd\nextends: foundation\n");
    let err = invalid(&q);
    has_error(&err, "templates/other.yaml:1:7: error:", &["namd"]);
    assert!(
        err.contains("templates/namd.yaml"),
        "the other file is named:\n{err}"
    );
}

#[test]
fn paths_leaving_the_project_root() {
    let p = Project::seed();
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nfiles:\n  - {src: ../../etc/passwd, dest: /x}\nprovision:\n  - script: ../../etc/passwd\n  - script: /etc/passwd\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:3:11: error:",
        &["../../etc/passwd", "leaves the project root"],
    );
    has_error(
        &err,
        "templates/namd.yaml:5:13: error:",
        &["../../etc/passwd", "leaves the project root"],
    );
    has_error(
        &err,
        "templates/namd.yaml:6:13: error:",
        &["/etc/passwd", "leaves the project root"],
    );
    assert!(err.contains("3 errors found"), "{err}");
}

#[cfg(unix)]
#[test]
fn symlink_leaving_the_project_root() {
    let p = Project::seed();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "x").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), p.path("files/link")).unwrap();
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nfiles: [{src: ../files/link, dest: /etc/x}]\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:2:15: error:",
        &["leaves the project root"],
    );
}

#[test]
fn missing_script_and_file() {
    let p = Project::seed();
    p.remove("scripts/build-gromacs.sh");
    let err = invalid(&p);
    has_error(
        &err,
        "templates/gromacs.yaml:3:22: error:",
        &["../scripts/build-gromacs.sh", "not found"],
    );
    let q = Project::seed();
    q.remove("files/modules.sh");
    let err = invalid(&q);
    has_error(
        &err,
        "templates/foundation.yaml:10:11: error:",
        &["../files/modules.sh", "not found"],
    );
}

#[test]
fn non_utf8_template_is_named() {
    let p = Project::seed();
    std::fs::write(
        p.path("templates/namd.yaml"),
        b"extends: foundation\ndescription: caf\xe9\n",
    )
    .unwrap();
    let err = invalid(&p);
    has_error(&err, "templates/namd.yaml:1:1: error:", &["UTF-8"]);
}

#[test]
fn non_utf8_config_is_named() {
    let p = Project::seed();
    std::fs::write(p.path("amimake.yaml"), b"region: caf\xe9\n").unwrap();
    let err = invalid(&p);
    has_error(&err, "amimake.yaml:1:1: error:", &["UTF-8"]);
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let p = Project::seed();
    let mut doc = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(",");
        doc.push_str(&format!("{cur}: &{cur} [{refs}]\n"));
    }
    p.file("templates/bomb.yaml", &doc);
    let start = Instant::now();
    let err = invalid(&p);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    has_error(&err, "templates/bomb.yaml:", &[]);

    // Many aliases of a large scalar inside a field that accepts them:
    // 100 KB x 100,000 = 10 GB if expanded.
    let q = Project::seed();
    let big = "x".repeat(100_000);
    let refs = vec!["*a"; 100_000].join(",");
    q.file(
        "templates/namd.yaml",
        &format!("extends: foundation\ndescription: &a \"{big}\"\nregions: [{refs}]\n"),
    );
    let start = Instant::now();
    let err = invalid(&q);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    has_error(&err, "templates/namd.yaml:3:", &[]);
}

#[test]
fn deeply_nested_document_is_refused() {
    for text in [
        format!(
            "extends: foundation\nvariables: {}{}\n",
            "[".repeat(20_000),
            "]".repeat(20_000)
        ),
        format!("{}{}\n", "[".repeat(50_000), "]".repeat(50_000)),
        format!(
            "extends: foundation\nbuild: {}x: 1{}\n",
            "{a: ".repeat(5_000),
            "}".repeat(5_000)
        ),
    ] {
        let p = Project::seed();
        p.file("templates/namd.yaml", &text);
        let start = Instant::now();
        let err = invalid(&p);
        assert!(start.elapsed() < Duration::from_secs(5));
        has_error(&err, "templates/namd.yaml:", &[]);
    }
}

#[test]
fn same_package_at_two_versions_in_a_chain() {
    // spack: gcc@13.2.0 in foundation, gcc@12 in a child.
    let p = Project::seed();
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nsoftware:\n  spack: [gcc@12.1.0]\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:3:11: error:",
        &["gcc@12.1.0", "gcc@13.2.0", "foundation"],
    );
    assert!(
        err.contains("templates/foundation.yaml:8:11"),
        "the other line is named:\n{err}"
    );

    // apt: pkg=1 in the root, pkg=2 two levels down.
    let p = Project::seed();
    replace_once(
        &p,
        "templates/foundation.yaml",
        "apt: [build-essential",
        "apt: [pkg=1, build-essential",
    );
    p.file(
        "templates/plumed.yaml",
        "extends: gromacs\nsoftware:\n  apt:\n    - git\n    - pkg=2\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/plumed.yaml:5:7: error:",
        &["pkg=2", "pkg=1", "foundation"],
    );
    assert!(err.contains("templates/foundation.yaml:7:9"), "{err}");

    // pip: x==1 in a mid layer, X==2 (same normalized name) below it.
    let p = Project::seed();
    p.file(
        "templates/gromacs.yaml",
        "extends: foundation\nsoftware:\n  pip: [\"x==1\"]\n",
    );
    p.file(
        "templates/plumed.yaml",
        "extends: gromacs\nsoftware:\n  pip: [\"X==2\"]\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/plumed.yaml:3:9: error:",
        &["X==2", "x==1", "gromacs"],
    );
    assert!(err.contains("templates/gromacs.yaml:3:9"), "{err}");

    // Within one template.
    let p = Project::seed();
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nsoftware:\n  spack: [fftw@3.3.10, fftw@3.3.9]\n",
    );
    let err = invalid(&p);
    has_error(
        &err,
        "templates/namd.yaml:3:24: error:",
        &["fftw@3.3.9", "fftw@3.3.10"],
    );
}

#[test]
fn same_package_at_two_versions_in_sibling_layers_is_fine() {
    let p = Project::seed();
    p.file(
        "templates/gromacs.yaml",
        "extends: foundation\nsoftware:\n  pip: [\"x==1\"]\n  spack: [fftw@3.3.10]\n",
    );
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nsoftware:\n  pip: [\"x==2\"]\n  spack: [fftw@3.3.9]\n",
    );
    p.ok(&["validate"]);
    // An unpinned package never conflicts with a pinned one.
    p.file(
        "templates/namd.yaml",
        "extends: foundation\nsoftware:\n  spack: [gcc, openmpi+cuda]\n",
    );
    p.ok(&["validate"]);
}

#[test]
fn several_errors_in_different_files_are_reported_in_one_run() {
    let p = Project::seed();
    p.file("templates/namd.yaml", "extends: foundation\nbogus: 1\n");
    p.file("templates/gromacs.yaml", "extends: foundaton\n");
    p.file(
        "templates/zeta.yaml",
        "extends: foundation\nprovision: [{script: ../scripts/none.sh}]\n",
    );
    p.file(
        "templates/dup.yaml",
        "source: {ami: ami-0123456789abcdef0}\nvariables: {a: \"1\", a: \"2\"}\n",
    );
    let err = invalid(&p);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 4, "{err}");
    has_error(&err, "templates/dup.yaml:2:", &["duplicate"]);
    has_error(&err, "templates/gromacs.yaml:1:10: error:", &["foundaton"]);
    has_error(&err, "templates/namd.yaml:2:1: error:", &["bogus"]);
    has_error(&err, "templates/zeta.yaml:2:22: error:", &["none.sh"]);
    assert!(err.trim_end().ends_with("4 errors found"), "{err}");
}

#[test]
fn no_partial_output_on_error() {
    let p = Project::seed();
    p.file("templates/zeta.yaml", "extends: namd\nbogus: 1\n");
    for args in [
        &["validate"][..],
        &["hash"],
        &["hash", "--format", "json"],
        &["hash", "foundation", "--format", "json"],
        &["show", "foundation"],
        &["show", "foundation", "--format", "json"],
        &["show", "gromacs", "--resolved", "--format", "json"],
        &["graph"],
        &["graph", "--format", "json"],
    ] {
        let err = fails(&p, args);
        has_error(&err, "templates/zeta.yaml:2:1: error:", &["bogus"]);
    }
}

#[test]
fn unknown_template_on_the_command_line() {
    let p = Project::seed();
    for args in [
        &["show", "gromac"][..],
        &["hash", "gromac"],
        &["graph", "gromac"],
    ] {
        let err = fails(&p, args);
        assert!(
            err.contains("gromac") && err.contains("did you mean `gromacs`"),
            "{err}"
        );
    }
}

// ------------------------------------------------------------------- show

#[test]
fn show_as_written_yaml_and_json() {
    let p = Project::seed();
    let j = p.ok(&["show", "gromacs", "--format", "json"]).json();
    assert_eq!(
        j,
        json!({
            "extends": "foundation",
            "software": {"spack": ["gromacs@2024.3+mpi"]},
            "provision": [{"script": "../scripts/build-gromacs.sh"}],
        })
    );
    // YAML is the default and says the same.
    let y = p.ok(&["show", "gromacs"]).stdout();
    let parsed: Value =
        serde_saphyr::from_str(&y).unwrap_or_else(|e| panic!("not YAML ({e}):\n{y}"));
    assert_eq!(parsed, j);
    assert_eq!(p.ok(&["show", "gromacs", "--format", "yaml"]).stdout(), y);

    // The root as written: only its own keys; nothing resolved.
    let f = p.ok(&["show", "foundation", "--format", "json"]).json();
    assert_eq!(f["source"], json!({"ami": "ami-0123456789abcdef0"}));
    assert_eq!(
        f["build"],
        json!({"instance_type": "c6i.2xlarge", "volume_size_gb": 40, "timeout": "90m"})
    );
    assert_eq!(f["files"][0]["src"], "../files/modules.sh");
    assert_eq!(f["tags"], json!({"team": "hpc"}));
    let yf: Value = serde_saphyr::from_str(&p.ok(&["show", "foundation"]).stdout()).unwrap();
    assert_eq!(yf, f);
}

/// The seed with a gromacs that overrides, repeats and adds.
fn override_project() -> Project {
    let p = Project::seed();
    p.file("files/gmx.conf", "nt 8\n");
    p.file(
        "templates/gromacs.yaml",
        "extends: foundation\n\
         description: GROMACS\n\
         build: {instance_type: c7i.4xlarge}\n\
         variables: {spack_version: \"0.23.0\", gmx_simd: AVX_512}\n\
         tags: {team: md, app: gromacs}\n\
         software:\n  apt: [git, libfftw3-dev]\n  spack: [gcc@13.2.0, \"gromacs@2024.3+mpi\"]\n\
         files: [{src: ../files/gmx.conf, dest: /etc/gmx.conf}]\n\
         provision: [{script: ../scripts/build-gromacs.sh}, {shell: gmx --version}]\n",
    );
    p.file(
        "templates/plumed.yaml",
        "extends: gromacs\nsoftware: {pip: [plumed]}\n",
    );
    p
}

#[test]
fn show_resolved_merges_along_the_chain() {
    let p = override_project();
    let v = p
        .ok(&["show", "gromacs", "--resolved", "--format", "json"])
        .json();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["name"], "gromacs");
    assert_eq!(v["file"], "templates/gromacs.yaml");
    assert_eq!(v["parent"], "foundation");
    assert_eq!(
        v["chain"],
        json!([
            {"name": "foundation", "file": "templates/foundation.yaml"},
            {"name": "gromacs", "file": "templates/gromacs.yaml"},
        ])
    );
    // Maps merged key by key, the child wins.
    assert_eq!(v["build"]["instance_type"], "c7i.4xlarge");
    assert_eq!(v["build"]["volume_size_gb"], 40);
    assert_eq!(v["build"]["timeout"], "90m");
    assert_eq!(
        v["variables"],
        json!({"gmx_simd": "AVX_512", "spack_root": "/opt/spack", "spack_version": "0.23.0"})
    );
    assert_eq!(v["tags"], json!({"app": "gromacs", "team": "md"}));
    // Accumulated software with its origin; exact duplicates dropped.
    let pkg = |spec: &str, from: &str| json!({"spec": spec, "from": from});
    assert_eq!(
        v["software"]["apt"],
        json!([
            pkg("build-essential", "foundation"),
            pkg("gfortran", "foundation"),
            pkg("python3", "foundation"),
            pkg("cmake", "foundation"),
            pkg("git", "foundation"),
            pkg("libfftw3-dev", "gromacs"),
        ])
    );
    assert_eq!(
        v["software"]["spack"],
        json!([
            pkg("gcc@13.2.0", "foundation"),
            pkg("openmpi@4.1.6", "foundation"),
            pkg("gromacs@2024.3+mpi", "gromacs"),
        ])
    );
    assert_eq!(
        v["own_software"],
        json!({"apt": ["libfftw3-dev"], "spack": ["gromacs@2024.3+mpi"]})
    );
    // Own files and steps only: the parent's are inside the parent image.
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{v:#}");
    assert_eq!(files[0]["src"], "files/gmx.conf");
    assert_eq!(files[0]["dest"], "/etc/gmx.conf");
    let steps = v["provision"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{v:#}");
    assert_eq!(steps[0]["script"]["path"], "scripts/build-gromacs.sh");
    assert!(steps[0]["script"]["content_hash"].as_str().unwrap().len() == 64);
    assert_eq!(steps[1], json!({"shell": "gmx --version"}));
    // The root's source, and the same hash as `hash`.
    assert_eq!(v["source"], json!({"ami": "ami-0123456789abcdef0"}));
    let hashes = p.hashes();
    assert_eq!(v["hash"].as_str(), hashes["gromacs"].as_deref());
    // No absolute paths.
    let text = p
        .ok(&["show", "gromacs", "--resolved", "--format", "json"])
        .stdout();
    assert!(!text.contains(p.root().to_str().unwrap()), "{text}");

    // One level further down: accumulated from both ancestors.
    let l = p
        .ok(&["show", "plumed", "--resolved", "--format", "json"])
        .json();
    assert_eq!(names_of_chain(&l), ["foundation", "gromacs", "plumed"]);
    assert_eq!(l["build"]["instance_type"], "c7i.4xlarge");
    assert_eq!(l["variables"]["gmx_simd"], "AVX_512");
    assert_eq!(l["software"]["pip"], json!([pkg("plumed", "plumed")]));
    assert_eq!(l["software"]["spack"].as_array().unwrap().len(), 3);
    assert_eq!(l["own_software"], json!({"pip": ["plumed"]}));
    assert_eq!(l["files"], json!([]));
    assert_eq!(l["provision"], json!([]));

    // The root: its own files and steps.
    let f = p
        .ok(&["show", "foundation", "--resolved", "--format", "json"])
        .json();
    assert_eq!(f["parent"], Value::Null);
    assert_eq!(f["files"][0]["src"], "files/modules.sh");
    assert_eq!(f["files"][0]["mode"], "0644");
    assert_eq!(f["provision"].as_array().unwrap().len(), 2);
    assert_eq!(f["tags"], json!({"team": "hpc"}));
}

fn names_of_chain(v: &Value) -> Vec<String> {
    v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn show_resolved_yaml_matches_json() {
    let p = override_project();
    let j = p
        .ok(&["show", "gromacs", "--resolved", "--format", "json"])
        .json();
    let y = p.ok(&["show", "gromacs", "--resolved"]).stdout();
    let parsed: Value =
        serde_saphyr::from_str(&y).unwrap_or_else(|e| panic!("not YAML ({e}):\n{y}"));
    assert_eq!(parsed, j);
}

#[test]
fn show_resolved_of_an_unresolved_root() {
    let p = Project::seed();
    replace_once(
        &p,
        "templates/foundation.yaml",
        "  ami: ami-0123456789abcdef0\n",
        "  ami_filter: {owners: [amazon], name: \"al2023-ami-*\"}\n",
    );
    let v = p
        .ok(&["show", "gromacs", "--resolved", "--format", "json"])
        .json();
    assert!(v["hash"].is_null(), "{v:#}");
    let s = p
        .ok(&[
            "show",
            "gromacs",
            "--resolved",
            "--format",
            "json",
            "--backend",
            "simulate",
        ])
        .json();
    assert_eq!(s["hash"].as_str().map(str::len), Some(64), "{s:#}");
}

// ------------------------------------------------------------------ graph

fn graph_project() -> Project {
    let p = Project::seed();
    p.file("templates/plumed.yaml", "extends: gromacs\n");
    p.file(
        "templates/solo.yaml",
        "source: {ami: ami-0123456789abcdef0}\n",
    );
    p
}

#[test]
fn graph_text() {
    let p = graph_project();
    assert_eq!(
        p.ok(&["graph"]).stdout(),
        "foundation  (templates/foundation.yaml)\n\
         ├── gromacs  (templates/gromacs.yaml)\n\
         │   └── plumed  (templates/plumed.yaml)\n\
         └── namd  (templates/namd.yaml)\n\
         solo  (templates/solo.yaml)\n"
    );
    assert_eq!(
        p.ok(&["graph", "--format", "text"]).stdout(),
        p.ok(&["graph"]).stdout()
    );
}

#[test]
fn graph_dot() {
    let p = graph_project();
    let out = p.ok(&["graph", "--format", "dot"]).stdout();
    assert!(out.starts_with("digraph"), "{out}");
    assert!(out.trim_end().ends_with('}'), "{out}");
    let mut edges: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("->"))
        .collect();
    edges.sort();
    assert_eq!(
        edges,
        [
            "\"foundation\" -> \"gromacs\";",
            "\"foundation\" -> \"namd\";",
            "\"gromacs\" -> \"plumed\";",
        ]
    );
    assert!(
        out.contains("\"solo\""),
        "isolated nodes are listed:\n{out}"
    );
}

/// Parses Mermaid `graph TD` output into (node labels, edges by label).
/// Accepts nodes declared inline (`a["a"] --> b["b"]`) or on their own line
/// (`n0["a"]` then `n0 --> n1`).
fn parse_mermaid(out: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut lines = out.lines();
    assert_eq!(lines.next().map(str::trim), Some("graph TD"), "{out}");
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut raw_edges: Vec<(String, String)> = Vec::new();
    let node = |text: &str, labels: &mut Vec<(String, String)>| -> String {
        let text = text.trim();
        match text.split_once("[\"") {
            Some((id, rest)) => {
                let label = rest
                    .strip_suffix("\"]")
                    .unwrap_or_else(|| panic!("bad node `{text}`"));
                if !labels.iter().any(|(i, _)| i == id) {
                    labels.push((id.to_string(), label.to_string()));
                }
                id.to_string()
            }
            None => text.to_string(),
        }
    };
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once("-->") {
            Some((a, b)) => {
                let a = node(a, &mut labels);
                let b = node(b, &mut labels);
                raw_edges.push((a, b));
            }
            None => {
                node(line, &mut labels);
            }
        }
    }
    let label = |id: &str| {
        labels
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let mut edges: Vec<(String, String)> = raw_edges
        .iter()
        .map(|(a, b)| (label(a), label(b)))
        .collect();
    edges.sort();
    let mut nodes: Vec<String> = labels.into_iter().map(|(_, l)| l).collect();
    nodes.sort();
    (nodes, edges)
}

#[test]
fn graph_mermaid() {
    let p = graph_project();
    let out = p.ok(&["graph", "--format", "mermaid"]).stdout();
    let (nodes, edges) = parse_mermaid(&out);
    assert_eq!(
        nodes,
        ["foundation", "gromacs", "namd", "plumed", "solo"],
        "{out}"
    );
    let e = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        edges,
        [
            e("foundation", "gromacs"),
            e("foundation", "namd"),
            e("gromacs", "plumed")
        ],
        "{out}"
    );
    // A chain.
    let out = p.ok(&["graph", "plumed", "--format", "mermaid"]).stdout();
    let (nodes, edges) = parse_mermaid(&out);
    assert_eq!(nodes, ["foundation", "gromacs", "plumed"], "{out}");
    assert_eq!(
        edges,
        [e("foundation", "gromacs"), e("gromacs", "plumed")],
        "{out}"
    );
}

#[test]
fn graph_json() {
    let p = graph_project();
    let v = p.ok(&["graph", "--format", "json"]).json();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(
        v["layers"],
        json!([
            {"name": "foundation", "file": "templates/foundation.yaml", "parent": null, "children": ["gromacs", "namd"]},
            {"name": "gromacs", "file": "templates/gromacs.yaml", "parent": "foundation", "children": ["plumed"]},
            {"name": "namd", "file": "templates/namd.yaml", "parent": "foundation", "children": []},
            {"name": "plumed", "file": "templates/plumed.yaml", "parent": "gromacs", "children": []},
            {"name": "solo", "file": "templates/solo.yaml", "parent": null, "children": []},
        ])
    );
}

#[test]
fn graph_of_one_template_shows_its_chain() {
    let p = graph_project();
    assert_eq!(
        p.ok(&["graph", "plumed"]).stdout(),
        "foundation  (templates/foundation.yaml)\n\
         └── gromacs  (templates/gromacs.yaml)\n\
         \u{20}   └── plumed  (templates/plumed.yaml)\n"
    );
    let v = p.ok(&["graph", "plumed", "--format", "json"]).json();
    assert_eq!(names(&v), ["foundation", "gromacs", "plumed"]);
    assert_eq!(
        v["layers"][0]["children"],
        json!(["gromacs"]),
        "namd is not in the chain"
    );
    let root = p.ok(&["graph", "solo", "--format", "json"]).json();
    assert_eq!(names(&root), ["solo"]);
}

#[test]
fn graph_dependents() {
    let p = graph_project();
    assert_eq!(
        p.ok(&["graph", "gromacs", "--dependents"]).stdout(),
        "gromacs  (templates/gromacs.yaml)\n└── plumed  (templates/plumed.yaml)\n"
    );
    let v = p
        .ok(&["graph", "foundation", "--dependents", "--format", "json"])
        .json();
    assert_eq!(names(&v), ["foundation", "gromacs", "namd", "plumed"]);
    let leaf = p
        .ok(&["graph", "namd", "--dependents", "--format", "json"])
        .json();
    assert_eq!(names(&leaf), ["namd"]);
    let dot = p
        .ok(&["graph", "gromacs", "--dependents", "--format", "dot"])
        .stdout();
    assert!(dot.contains("\"gromacs\" -> \"plumed\";"), "{dot}");
    assert!(!dot.contains("foundation"), "{dot}");
    // --dependents needs a template.
    fails(&p, &["graph", "--dependents"]);
}

// ------------------------------------------------- finding the project root

#[test]
fn dash_c_and_walking_up_find_the_root() {
    let p = Project::seed();
    let expected = p.ok(&["hash", "--format", "json"]).stdout();
    let elsewhere = tempfile::tempdir().unwrap();
    let root = p.root().to_str().unwrap().to_string();
    let run_in =
        |dir: &std::path::Path, args: &[&str]| Run(p.cmd(args).current_dir(dir).output().unwrap());

    // -C DIR from elsewhere.
    let r = run_in(elsewhere.path(), &["-C", &root, "hash", "--format", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.stdout(), expected);
    let r = run_in(elsewhere.path(), &["-C", &root, "validate"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    // -C into a subdirectory: the root is found by walking up from there.
    let sub = format!("{root}/templates");
    let r = run_in(elsewhere.path(), &["graph", "-C", &sub, "--format", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(names(&r.json()), ["foundation", "gromacs", "namd"]);
    // Walking up from a nested subdirectory without -C.
    std::fs::create_dir_all(p.path("scripts/a/b")).unwrap();
    let r = run_in(&p.path("scripts/a/b"), &["hash", "--format", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.stdout(), expected);
    // Outside any project: exit 2, nothing on stdout.
    let r = run_in(elsewhere.path(), &["validate"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert_eq!(r.stdout(), "");
    assert!(r.stderr().contains("amimake.yaml"), "{}", r.stderr());
    // -C to a directory that does not exist.
    let r = run_in(
        elsewhere.path(),
        &["-C", "/nonexistent/amimake-test", "validate"],
    );
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert_eq!(r.stdout(), "");
}
