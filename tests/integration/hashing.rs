//! The layer hash contract (DESIGN.md §3): which edits change which layers'
//! hashes, which edits change none, and the shape of `hash --format json`.
//!
//! Every test runs the real binary on a scratch repository and compares
//! `hash --format json` before and after one kind of edit.

use std::collections::BTreeMap;

use crate::support::*;

type Hashes = BTreeMap<String, Option<String>>;

/// Golden hashes of `Project::seed()` with the default (ec2) backend. They
/// must not depend on where the project lives, the user or the machine: the
/// seed is written to a fresh temp dir on every run.
const SEED_EC2: [(&str, &str); 3] = [
    (
        "foundation",
        "518532ca06c799d35138a472e17e94623b25634517f3870599893a9dc1fae7d9",
    ),
    (
        "gromacs",
        "5143c5138faf3d88103f727853fd5ca7567f394c1efca2a852849e90df05c396",
    ),
    (
        "namd",
        "4211983e27ca741611e17647e26adc022cac8f89068a3037a6ba209dd50481ff",
    ),
];

/// The same, with `--backend simulate` (the source is hashed as written).
const SEED_SIMULATE: [(&str, &str); 3] = [
    (
        "foundation",
        "48979ff405b55e6b76e435ca2ab80de69489cdeaba2b40555215f29a2fa50e5b",
    ),
    (
        "gromacs",
        "b25ce2f5e68936071a3f307947f7ce228f78efc894c58f160e1f2de60959ed5f",
    ),
    (
        "namd",
        "26a949dcd2561ea17490d6d01298f8acda359297a3cb32b86d7f1457f8241c4d",
    ),
];

/// The seed plus `plumed` below `gromacs`: a 3-level chain
/// foundation -> gromacs -> plumed, and `namd`, a sibling of `gromacs`.
fn chain_project() -> Project {
    let p = Project::seed();
    p.file(
        "templates/plumed.yaml",
        "extends: gromacs\nprovision: [{shell: echo plumed}]\n",
    );
    p
}

const ALL: &[&str] = &["foundation", "gromacs", "namd", "plumed"];

/// Replaces the one occurrence of `from` in file `rel` with `to`.
fn edit(p: &Project, rel: &str, from: &str, to: &str) {
    let text = p.read(rel);
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` should occur exactly once in {rel}:\n{text}"
    );
    p.file(rel, &text.replacen(from, to, 1));
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Re-hashes `p` and asserts exactly `expected` layers changed since
/// `before` (which is then updated), and that every layer has a hash.
#[track_caller]
fn expect_changed(p: &Project, before: &mut Hashes, expected: &[&str], what: &str) {
    let after = p.hashes();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "{what}: the set of layers changed"
    );
    for (name, h) in &after {
        let h = h
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: `{name}` has no hash"));
        assert!(
            is_hex64(h),
            "{what}: `{name}` hash {h:?} is not 64 lowercase hex"
        );
    }
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        changed(before, &after),
        expected,
        "{what}: wrong set of layers changed"
    );
    *before = after;
}

#[track_caller]
fn expect_unchanged(p: &Project, before: &mut Hashes, what: &str) {
    expect_changed(p, before, &[], what);
}

// ---------------------------------------------------------------- golden

#[test]
fn golden_seed_hashes_ec2() {
    let p = Project::seed();
    let got = p.hashes();
    let want: Hashes = SEED_EC2
        .iter()
        .map(|(n, h)| (n.to_string(), Some(h.to_string())))
        .collect();
    assert_eq!(
        got, want,
        "seed hashes changed: bump HASH_SCHEMA_VERSION if intended"
    );
    // The text format prints the same hashes.
    let text = p.ok(&["hash"]).stdout();
    for (name, hash) in SEED_EC2 {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.trim_end().ends_with(hash)),
            "text output lacks `{name}  {hash}`:\n{text}"
        );
    }
}

#[test]
fn golden_seed_hashes_simulate() {
    let p = Project::seed();
    let v = p
        .ok(&["hash", "--format", "json", "--backend", "simulate"])
        .json();
    let got: Vec<(String, String)> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["hash"]
                    .as_str()
                    .expect("simulate hashes every layer")
                    .to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = SEED_SIMULATE
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
    assert_eq!(got, want);
    // Per backend: the simulate hashes differ from the ec2 ones.
    for ((_, sim), (_, ec2)) in SEED_SIMULATE.iter().zip(SEED_EC2.iter()) {
        assert_ne!(sim, ec2);
    }
}

#[test]
fn hashes_do_not_depend_on_location_or_working_directory() {
    let a = Project::seed();
    let b = Project::seed();
    assert_ne!(a.root(), b.root());
    assert_eq!(a.hashes(), b.hashes());
    // From a subdirectory, and with -C from elsewhere.
    let from_sub = Run(a
        .cmd(&["hash", "--format", "json"])
        .current_dir(a.path("scripts"))
        .output()
        .unwrap());
    assert_eq!(from_sub.code(), 0, "{}", from_sub.stderr());
    assert_eq!(
        from_sub.stdout(),
        a.ok(&["hash", "--format", "json"]).stdout()
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let root = a.root().to_str().unwrap().to_string();
    let with_c = Run(a
        .cmd(&["-C", &root, "hash", "--format", "json"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap());
    assert_eq!(with_c.code(), 0, "{}", with_c.stderr());
    assert_eq!(
        with_c.stdout(),
        a.ok(&["hash", "--format", "json"]).stdout()
    );
    // No absolute path leaks into the output.
    assert!(!with_c.stdout().contains(&root), "{}", with_c.stdout());
}

// ------------------------------------------------- inputs that change hashes

#[test]
fn instance_type_is_an_effective_input() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/foundation.yaml",
        "c6i.2xlarge",
        "c7i.2xlarge",
    );
    expect_changed(&p, &mut h, ALL, "root instance_type");
    // A mid-chain override changes that subtree only.
    edit(
        &p,
        "templates/gromacs.yaml",
        "extends: foundation\n",
        "extends: foundation\nbuild: {instance_type: c7i.8xlarge}\n",
    );
    expect_changed(&p, &mut h, &["gromacs", "plumed"], "mid instance_type");
    // Restating the inherited value changes nothing: the effective value counts.
    edit(
        &p,
        "templates/namd.yaml",
        "extends: foundation\n",
        "extends: foundation\nbuild: {instance_type: c7i.2xlarge}\n",
    );
    expect_unchanged(&p, &mut h, "leaf restates the inherited instance_type");
    // A leaf override changes only the leaf.
    edit(&p, "templates/namd.yaml", "c7i.2xlarge", "m7i.large");
    expect_changed(&p, &mut h, &["namd"], "leaf instance_type");
}

#[test]
fn architecture_is_an_effective_input() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/foundation.yaml",
        "volume_size_gb: 40",
        "architecture: x86_64, volume_size_gb: 40",
    );
    expect_changed(&p, &mut h, ALL, "root architecture set");
    edit(
        &p,
        "templates/foundation.yaml",
        "architecture: x86_64",
        "architecture: arm64",
    );
    expect_changed(&p, &mut h, ALL, "root architecture changed");
    edit(
        &p,
        "templates/plumed.yaml",
        "extends: gromacs\n",
        "extends: gromacs\nbuild: {architecture: x86_64}\n",
    );
    expect_changed(&p, &mut h, &["plumed"], "leaf architecture");
}

#[test]
fn volume_size_is_an_effective_input() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/foundation.yaml",
        "volume_size_gb: 40",
        "volume_size_gb: 80",
    );
    expect_changed(&p, &mut h, ALL, "root volume_size_gb");
    edit(
        &p,
        "templates/gromacs.yaml",
        "extends: foundation\n",
        "extends: foundation\nbuild:\n  volume_size_gb: 100\n",
    );
    expect_changed(&p, &mut h, &["gromacs", "plumed"], "mid volume_size_gb");
    edit(
        &p,
        "templates/namd.yaml",
        "extends: foundation\n",
        "extends: foundation\nbuild:\n  volume_size_gb: 80\n",
    );
    expect_unchanged(&p, &mut h, "leaf restates the inherited volume size");
}

#[test]
fn volume_type_is_an_effective_input() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/foundation.yaml",
        "timeout: 90m",
        "timeout: 90m, volume_type: gp3",
    );
    expect_changed(&p, &mut h, ALL, "root volume_type set");
    edit(
        &p,
        "templates/foundation.yaml",
        "volume_type: gp3",
        "volume_type: io2",
    );
    expect_changed(&p, &mut h, ALL, "root volume_type changed");
    edit(
        &p,
        "templates/namd.yaml",
        "extends: foundation\n",
        "extends: foundation\nbuild: {volume_type: gp2}\n",
    );
    expect_changed(&p, &mut h, &["namd"], "leaf volume_type");
}

#[test]
fn variables_are_effective_inputs() {
    let p = chain_project();
    let mut h = p.hashes();
    // Root variable: everything.
    edit(&p, "templates/foundation.yaml", "\"0.22.2\"", "\"0.23.0\"");
    expect_changed(&p, &mut h, ALL, "root variable changed");
    edit(
        &p,
        "templates/foundation.yaml",
        "spack_root: /opt/spack}",
        "spack_root: /opt/spack, arch_flags: -O2}",
    );
    expect_changed(&p, &mut h, ALL, "root variable added");
    // Mid-chain variable: that subtree only (not the sibling, not the root).
    edit(
        &p,
        "templates/gromacs.yaml",
        "extends: foundation\n",
        "extends: foundation\nvariables: {gmx_simd: AVX2_256}\n",
    );
    expect_changed(&p, &mut h, &["gromacs", "plumed"], "mid variable added");
    edit(&p, "templates/gromacs.yaml", "AVX2_256", "AVX_512");
    expect_changed(&p, &mut h, &["gromacs", "plumed"], "mid variable changed");
    // A mid-chain override of a root variable: that subtree only.
    edit(
        &p,
        "templates/gromacs.yaml",
        "gmx_simd: AVX_512}",
        "gmx_simd: AVX_512, arch_flags: -O3}",
    );
    expect_changed(
        &p,
        &mut h,
        &["gromacs", "plumed"],
        "mid overrides a root variable",
    );
    // Leaf restating the effective value: nothing.
    edit(
        &p,
        "templates/plumed.yaml",
        "extends: gromacs\n",
        "extends: gromacs\nvariables: {arch_flags: \"-O3\"}\n",
    );
    expect_unchanged(&p, &mut h, "leaf restates the effective variable");
    // Leaf variable: only the leaf.
    edit(
        &p,
        "templates/plumed.yaml",
        "arch_flags: \"-O3\"",
        "plumed_mode: runtime",
    );
    expect_changed(&p, &mut h, &["plumed"], "leaf variable");
}

#[test]
fn software_delta_is_an_input() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/gromacs.yaml",
        "\"gromacs@2024.3+mpi\"",
        "\"gromacs@2024.4+mpi\"",
    );
    expect_changed(
        &p,
        &mut h,
        &["gromacs", "plumed"],
        "mid spack package version",
    );
    edit(
        &p,
        "templates/namd.yaml",
        "software: {spack: [\"namd@3.0\"]}",
        "software: {spack: [\"namd@3.0\"], pip: [numpy]}",
    );
    expect_changed(&p, &mut h, &["namd"], "leaf pip package added");
    edit(
        &p,
        "templates/namd.yaml",
        "pip: [numpy]",
        "pip: [numpy], dnf: [fftw-devel]",
    );
    expect_changed(&p, &mut h, &["namd"], "leaf dnf package added");
    edit(
        &p,
        "templates/foundation.yaml",
        "cmake, git]",
        "cmake, git, ninja-build]",
    );
    expect_changed(&p, &mut h, ALL, "root apt package added");
    // An exact duplicate of an inherited package is dropped from the delta.
    edit(
        &p,
        "templates/plumed.yaml",
        "extends: gromacs\n",
        "extends: gromacs\nsoftware: {apt: [git], spack: [gcc@13.2.0]}\n",
    );
    expect_unchanged(&p, &mut h, "leaf repeats inherited packages");
}

#[test]
fn root_file_content_mode_and_dest_change_everything() {
    let p = chain_project();
    let mut h = p.hashes();
    p.file(
        "files/modules.sh",
        "export MODULEPATH=/opt/modules:/usr/share/modules\n",
    );
    expect_changed(&p, &mut h, ALL, "root file content");
    edit(
        &p,
        "templates/foundation.yaml",
        "mode: \"0644\"",
        "mode: \"0755\"",
    );
    expect_changed(&p, &mut h, ALL, "root file mode");
    edit(
        &p,
        "templates/foundation.yaml",
        "/etc/profile.d/modules.sh",
        "/etc/profile.d/zz-modules.sh",
    );
    expect_changed(&p, &mut h, ALL, "root file dest");
}

#[test]
fn leaf_file_content_mode_and_dest_change_only_that_leaf() {
    let p = chain_project();
    p.file("files/namd.conf", "cores 8\n");
    edit(
        &p,
        "templates/namd.yaml",
        "provision:",
        "files: [{src: ../files/namd.conf, dest: /etc/namd.conf, mode: \"0644\"}]\nprovision:",
    );
    let mut h = p.hashes();
    p.file("files/namd.conf", "cores 16\n");
    expect_changed(&p, &mut h, &["namd"], "leaf file content");
    edit(&p, "templates/namd.yaml", "\"0644\"", "\"0600\"");
    expect_changed(&p, &mut h, &["namd"], "leaf file mode");
    edit(
        &p,
        "templates/namd.yaml",
        "dest: /etc/namd.conf",
        "dest: /opt/namd/namd.conf",
    );
    expect_changed(&p, &mut h, &["namd"], "leaf file dest");
    // A file's mtime is not an input.
    let f = std::fs::File::options()
        .write(true)
        .open(p.path("files/namd.conf"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    expect_unchanged(&p, &mut h, "mtime of a file");
}

#[test]
fn provision_shell_text_is_an_input() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(&p, "templates/namd.yaml", "echo namd", "echo namd 3.0");
    expect_changed(&p, &mut h, &["namd"], "leaf shell step");
    edit(
        &p,
        "templates/gromacs.yaml",
        "provision: [{script: ../scripts/build-gromacs.sh}]",
        "provision: [{script: ../scripts/build-gromacs.sh}, {shell: gmx --version}]",
    );
    expect_changed(&p, &mut h, &["gromacs", "plumed"], "mid shell step added");
    edit(
        &p,
        "templates/foundation.yaml",
        "spack compiler find",
        "spack compiler find --scope site",
    );
    expect_changed(&p, &mut h, ALL, "root shell step");
}

#[test]
fn leaf_script_content_changes_only_that_leaf() {
    let p = chain_project();
    let mut h = p.hashes();
    p.file(
        "scripts/build-gromacs.sh",
        "#!/bin/sh\nset -eu\nspack load gromacs\n# tuned\n",
    );
    // gromacs is mid-chain here: it and plumed below it.
    expect_changed(&p, &mut h, &["gromacs", "plumed"], "gromacs script content");
    // In the plain seed, gromacs is a leaf: exactly one layer.
    let s = Project::seed();
    let mut h = s.hashes();
    s.file(
        "scripts/build-gromacs.sh",
        "#!/bin/sh\nset -eu\nspack load gromacs@2024.3\n",
    );
    expect_changed(&s, &mut h, &["gromacs"], "leaf script content");
}

#[test]
fn root_script_content_changes_every_layer() {
    let p = chain_project();
    let mut h = p.hashes();
    p.file(
        "scripts/install-spack.sh",
        "#!/bin/sh\nset -eu\ngit clone --depth 1 spack \"$spack_root\"\n",
    );
    expect_changed(&p, &mut h, ALL, "root script content");
    // A comment inside a script is content too.
    p.file(
        "scripts/install-spack.sh",
        "#!/bin/sh\n# comment\nset -eu\ngit clone --depth 1 spack \"$spack_root\"\n",
    );
    expect_changed(&p, &mut h, ALL, "comment inside the root script");
}

#[test]
fn source_ami_is_an_input() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/foundation.yaml",
        "ami-0123456789abcdef0",
        "ami-0fedcba9876543210",
    );
    expect_changed(&p, &mut h, ALL, "root source ami");
    // --base-ami overrides the root's source.
    let base = p
        .ok(&[
            "hash",
            "--format",
            "json",
            "--base-ami",
            "ami-0fedcba9876543210",
        ])
        .json();
    let current = p.ok(&["hash", "--format", "json"]).json();
    assert_eq!(
        base, current,
        "--base-ami equal to the source gives the same hashes"
    );
    let other = p
        .ok(&[
            "hash",
            "--format",
            "json",
            "--base-ami",
            "ami-00000000000000000",
        ])
        .json();
    for (a, b) in other["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(current["layers"].as_array().unwrap())
    {
        assert_ne!(a["hash"], b["hash"], "--base-ami must change {}", a["name"]);
    }
}

// ---------------------------------------------------- edits that change none

const FOUNDATION_COMMENTED: &str = "# The foundation layer.\n\
# Everything else builds on it.\n\
description: Compilers, MPI and Python   # what it is\n\
source:\n  # pinned\n  ami: ami-0123456789abcdef0 # noble\n\
build: {instance_type: c6i.2xlarge, volume_size_gb: 40, timeout: 90m}  # builder\n\
\n\
variables: {spack_version: \"0.22.2\", spack_root: /opt/spack}\n\
software:\n  # system packages\n  apt: [build-essential, gfortran, python3, cmake, git]\n  spack: [gcc@13.2.0, openmpi@4.1.6] # compilers\n\
files:\n  - {src: ../files/modules.sh, dest: /etc/profile.d/modules.sh, mode: \"0644\"}\n\
provision:\n  - script: ../scripts/install-spack.sh   # spack itself\n  - shell: spack compiler find\n\
tags: {team: hpc}\n\
# end\n";

#[test]
fn comments_and_blank_lines_do_not_change_hashes() {
    let p = chain_project();
    let mut h = p.hashes();
    p.file("templates/foundation.yaml", FOUNDATION_COMMENTED);
    p.file(
        "templates/gromacs.yaml",
        "---\n# gromacs\nextends: foundation  # parent\n\n\nsoftware: {spack: [\"gromacs@2024.3+mpi\"]}\n# steps\nprovision: [{script: ../scripts/build-gromacs.sh}]\n",
    );
    expect_unchanged(&p, &mut h, "comments");
}

#[test]
fn key_order_does_not_change_hashes() {
    let p = chain_project();
    let mut h = p.hashes();
    p.file(
        "templates/foundation.yaml",
        "tags: {team: hpc}\n\
         provision:\n  - script: ../scripts/install-spack.sh\n  - shell: spack compiler find\n\
         files:\n  - {mode: \"0644\", dest: /etc/profile.d/modules.sh, src: ../files/modules.sh}\n\
         software:\n  spack: [gcc@13.2.0, openmpi@4.1.6]\n  apt: [build-essential, gfortran, python3, cmake, git]\n\
         variables: {spack_root: /opt/spack, spack_version: \"0.22.2\"}\n\
         build: {timeout: 90m, volume_size_gb: 40, instance_type: c6i.2xlarge}\n\
         source:\n  ami: ami-0123456789abcdef0\n\
         description: Compilers, MPI and Python\n",
    );
    p.file(
        "templates/gromacs.yaml",
        "provision: [{script: ../scripts/build-gromacs.sh}]\nsoftware: {spack: [\"gromacs@2024.3+mpi\"]}\nextends: foundation\n",
    );
    expect_unchanged(&p, &mut h, "key order");
}

#[test]
fn flow_and_block_styles_hash_the_same() {
    let p = chain_project();
    let mut h = p.hashes();
    p.file(
        "templates/foundation.yaml",
        "description: Compilers, MPI and Python\n\
         source:\n  ami: ami-0123456789abcdef0\n\
         build:\n  instance_type: c6i.2xlarge\n  volume_size_gb: 40\n  timeout: 90m\n\
         variables:\n  spack_version: \"0.22.2\"\n  spack_root: /opt/spack\n\
         software:\n  apt:\n    - build-essential\n    - gfortran\n    - python3\n    - cmake\n    - git\n  spack:\n  - gcc@13.2.0\n  - openmpi@4.1.6\n\
         files:\n- src: ../files/modules.sh\n  dest: /etc/profile.d/modules.sh\n  mode: \"0644\"\n\
         provision:\n- script: ../scripts/install-spack.sh\n- shell: spack compiler find\n\
         tags:\n  team: hpc\n",
    );
    p.file(
        "templates/gromacs.yaml",
        "extends: foundation\nsoftware:\n  spack:\n    - gromacs@2024.3+mpi\nprovision:\n  - script: ../scripts/build-gromacs.sh\n",
    );
    p.file(
        "templates/namd.yaml",
        "{extends: foundation, software: {spack: [namd@3.0]}, provision: [{shell: echo namd}]}\n",
    );
    expect_unchanged(&p, &mut h, "flow vs block");
}

#[test]
fn quoting_style_does_not_change_hashes() {
    let p = chain_project();
    let mut h = p.hashes();
    p.file(
        "templates/foundation.yaml",
        "\"description\": 'Compilers, MPI and Python'\n\
         source:\n  ami: \"ami-0123456789abcdef0\"\n\
         build: {'instance_type': \"c6i.2xlarge\", volume_size_gb: 40, timeout: '90m'}\n\
         variables: {spack_version: '0.22.2', \"spack_root\": \"/opt/spack\"}\n\
         software:\n  apt: ['build-essential', \"gfortran\", python3, 'cmake', \"git\"]\n  spack: [\"gcc@13.2.0\", 'openmpi@4.1.6']\n\
         files:\n  - {src: '../files/modules.sh', dest: \"/etc/profile.d/modules.sh\", mode: '0644'}\n\
         provision:\n  - script: \"../scripts/install-spack.sh\"\n  - shell: 'spack compiler find'\n\
         tags: {team: 'hpc'}\n",
    );
    p.file(
        "templates/namd.yaml",
        "extends: 'foundation'\nsoftware: {spack: ['namd@3.0']}\nprovision: [{shell: \"echo namd\"}]\n",
    );
    expect_unchanged(&p, &mut h, "quoting style");
}

#[test]
fn description_tags_and_metadata_do_not_change_hashes() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/foundation.yaml",
        "Compilers, MPI and Python",
        "Compilers, MPI, Python (reworded)",
    );
    expect_unchanged(&p, &mut h, "root description");
    edit(
        &p,
        "templates/gromacs.yaml",
        "extends: foundation\n",
        "description: GROMACS\nextends: foundation\n",
    );
    expect_unchanged(&p, &mut h, "child description added");
    edit(
        &p,
        "templates/foundation.yaml",
        "tags: {team: hpc}",
        "tags: {team: md, cost-center: \"42\"}",
    );
    expect_unchanged(&p, &mut h, "root tags");
    edit(
        &p,
        "templates/namd.yaml",
        "extends: foundation\n",
        "extends: foundation\ntags: {app: namd}\n",
    );
    expect_unchanged(&p, &mut h, "leaf tags");
    edit(
        &p,
        "templates/plumed.yaml",
        "extends: gromacs\n",
        "extends: gromacs\nrebuild: {max_age: 7d}\n",
    );
    expect_unchanged(&p, &mut h, "leaf rebuild.max_age added");
    edit(&p, "templates/plumed.yaml", "max_age: 7d", "max_age: 30d");
    expect_unchanged(&p, &mut h, "leaf rebuild.max_age changed");
    edit(
        &p,
        "templates/foundation.yaml",
        "tags: {",
        "rebuild: {max_age: 1d}\ntags: {",
    );
    expect_unchanged(&p, &mut h, "root rebuild.max_age");
    edit(
        &p,
        "templates/foundation.yaml",
        "tags: {",
        "regions: [eu-west-1]\ntags: {",
    );
    expect_unchanged(&p, &mut h, "root regions");
}

#[test]
fn builder_placement_settings_do_not_change_hashes() {
    let p = chain_project();
    let mut h = p.hashes();
    edit(
        &p,
        "templates/foundation.yaml",
        "timeout: 90m",
        "timeout: 3h",
    );
    expect_unchanged(&p, &mut h, "root timeout");
    edit(
        &p,
        "templates/foundation.yaml",
        "timeout: 3h}",
        "timeout: 3h, subnet: subnet-0abc, security_groups: [sg-1, sg-2], instance_profile: builder}",
    );
    expect_unchanged(
        &p,
        &mut h,
        "root subnet / security_groups / instance_profile",
    );
    edit(
        &p,
        "templates/foundation.yaml",
        "subnet: subnet-0abc",
        "subnet: subnet-0def",
    );
    edit(&p, "templates/foundation.yaml", "[sg-1, sg-2]", "[sg-3]");
    edit(
        &p,
        "templates/foundation.yaml",
        "instance_profile: builder",
        "instance_profile: other",
    );
    expect_unchanged(&p, &mut h, "root placement values changed");
    edit(
        &p,
        "templates/gromacs.yaml",
        "extends: foundation\n",
        "extends: foundation\nbuild: {timeout: 4h, subnet: subnet-1, security_groups: [sg-9], instance_profile: gmx}\n",
    );
    expect_unchanged(&p, &mut h, "child placement overrides");
}

#[test]
fn renaming_a_template_changes_no_hash() {
    let p = chain_project();
    let before = p.ok(&["hash", "--format", "json"]).json();
    std::fs::rename(
        p.path("templates/foundation.yaml"),
        p.path("templates/base.yaml"),
    )
    .unwrap();
    edit(
        &p,
        "templates/gromacs.yaml",
        "extends: foundation",
        "extends: base",
    );
    edit(
        &p,
        "templates/namd.yaml",
        "extends: foundation",
        "extends: base",
    );
    let after = p.ok(&["hash", "--format", "json"]).json();
    let by_name = |v: &serde_json::Value| -> BTreeMap<String, (String, Option<String>, String)> {
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    (
                        l["file"].as_str().unwrap().to_string(),
                        l["parent"].as_str().map(String::from),
                        l["hash"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    };
    let (b, a) = (by_name(&before), by_name(&after));
    assert!(!a.contains_key("foundation"), "{after:#}");
    assert_eq!(a["base"].0, "templates/base.yaml");
    assert_eq!(
        a["base"].2, b["foundation"].2,
        "the renamed root keeps its hash"
    );
    for child in ["gromacs", "namd"] {
        assert_eq!(a[child].1.as_deref(), Some("base"));
        assert_eq!(a[child].2, b[child].2, "{child} keeps its hash");
    }
    assert_eq!(a["plumed"].2, b["plumed"].2);

    // Renaming with `name:` (file stays) changes no hash either.
    edit(
        &p,
        "templates/base.yaml",
        "description:",
        "name: core\ndescription:",
    );
    edit(
        &p,
        "templates/gromacs.yaml",
        "extends: base",
        "extends: core",
    );
    edit(&p, "templates/namd.yaml", "extends: base", "extends: core");
    let named = by_name(&p.ok(&["hash", "--format", "json"]).json());
    assert_eq!(named["core"].0, "templates/base.yaml");
    assert_eq!(named["core"].2, b["foundation"].2);
    assert_eq!(named["gromacs"].2, b["gromacs"].2);
}

#[test]
fn moving_a_template_into_a_subdirectory_changes_no_hash() {
    let p = chain_project();
    let mut h = p.hashes();
    std::fs::create_dir_all(p.path("templates/apps/md")).unwrap();
    std::fs::rename(
        p.path("templates/gromacs.yaml"),
        p.path("templates/apps/md/gromacs.yaml"),
    )
    .unwrap();
    edit(
        &p,
        "templates/apps/md/gromacs.yaml",
        "../scripts/",
        "../../../scripts/",
    );
    std::fs::rename(
        p.path("templates/namd.yaml"),
        p.path("templates/apps/namd.yaml"),
    )
    .unwrap();
    expect_unchanged(&p, &mut h, "templates moved into subdirectories");
    let v = p.ok(&["hash", "--format", "json"]).json();
    let files: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["file"].as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"templates/apps/md/gromacs.yaml"),
        "{files:?}"
    );
    assert!(files.contains(&"templates/apps/namd.yaml"), "{files:?}");
}

#[test]
fn moving_a_script_or_file_changes_no_hash() {
    let p = chain_project();
    let mut h = p.hashes();
    std::fs::create_dir_all(p.path("scripts/gromacs")).unwrap();
    std::fs::rename(
        p.path("scripts/build-gromacs.sh"),
        p.path("scripts/gromacs/build.sh"),
    )
    .unwrap();
    edit(
        &p,
        "templates/gromacs.yaml",
        "../scripts/build-gromacs.sh",
        "../scripts/gromacs/build.sh",
    );
    expect_unchanged(&p, &mut h, "leaf script moved");
    std::fs::rename(
        p.path("scripts/install-spack.sh"),
        p.path("templates/install-spack.sh"),
    )
    .unwrap();
    edit(
        &p,
        "templates/foundation.yaml",
        "../scripts/install-spack.sh",
        "./install-spack.sh",
    );
    expect_unchanged(&p, &mut h, "root script moved next to the template");
    std::fs::rename(
        p.path("files/modules.sh"),
        p.path("files/profile-modules.sh"),
    )
    .unwrap();
    edit(
        &p,
        "templates/foundation.yaml",
        "../files/modules.sh",
        "../files/profile-modules.sh",
    );
    expect_unchanged(&p, &mut h, "root file source moved");
}

// ------------------------------------------------------------- JSON shape

#[test]
fn hash_json_shape() {
    let p = Project::seed();
    let v = p.ok(&["hash", "--format", "json"]).json();
    assert_eq!(v["schema_version"], 1);
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["schema_version", "layers"]);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    let expect = [
        ("foundation", "templates/foundation.yaml", None),
        ("gromacs", "templates/gromacs.yaml", Some("foundation")),
        ("namd", "templates/namd.yaml", Some("foundation")),
    ];
    for (l, (name, file, parent)) in layers.iter().zip(expect) {
        let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "file", "parent", "hash"], "{l}");
        assert_eq!(l["name"], name);
        assert_eq!(l["file"], file);
        assert_eq!(l["parent"].as_str(), parent);
        assert!(is_hex64(l["hash"].as_str().unwrap()), "{l}");
    }
    // Selecting templates keeps the topological order.
    let sel = p
        .ok(&["hash", "--format", "json", "namd", "foundation"])
        .json();
    let names: Vec<&str> = sel["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["foundation", "namd"]);
}

#[test]
fn hash_json_is_in_topological_order_with_ties_by_name() {
    let p = Project::new();
    // Names chosen so that alphabetical order is not topological order.
    p.file(
        "templates/zroot.yaml",
        "source: {ami: ami-0123456789abcdef0}\n",
    );
    p.file(
        "templates/broot.yaml",
        "source: {ami: ami-0123456789abcdef1}\n",
    );
    p.file("templates/a-child.yaml", "extends: zroot\n");
    p.file("templates/y-child.yaml", "extends: zroot\n");
    p.file("templates/c-child.yaml", "extends: broot\n");
    p.file("templates/0-grand.yaml", "extends: c-child\n");
    p.file("templates/sub/aa-grand.yaml", "extends: a-child\n");
    let v = p.ok(&["hash", "--format", "json"]).json();
    let layers = v["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    // Parents first: every parent precedes its children.
    for (i, l) in layers.iter().enumerate() {
        if let Some(parent) = l["parent"].as_str() {
            let pi = names
                .iter()
                .position(|n| *n == parent)
                .expect("parent listed");
            assert!(pi < i, "{parent} must precede {}: {names:?}", names[i]);
        }
    }
    // Ties by name: among the layers whose parent is already listed, the
    // smallest name comes next.
    assert_eq!(
        names,
        ["broot", "c-child", "0-grand", "zroot", "a-child", "aa-grand", "y-child"]
    );
    // graph --format json uses the same order.
    let g = p.ok(&["graph", "--format", "json"]).json();
    let gnames: Vec<&str> = g["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(gnames, names);
}

#[test]
fn ami_filter_root_is_unresolved_offline_and_ami_root_is_hashed() {
    let p = Project::seed();
    p.file(
        "templates/ubuntu.yaml",
        "source:\n  ami_filter: {owners: [\"099720109477\"], name: \"ubuntu/images/*noble*amd64-server-*\"}\n",
    );
    p.file(
        "templates/ubuntu-dev.yaml",
        "extends: ubuntu\nsoftware: {apt: [git]}\n",
    );
    p.file(
        "templates/ubuntu-dev-gpu.yaml",
        "extends: ubuntu-dev\nsoftware: {apt: [nvidia-driver-550]}\n",
    );
    let v = p.ok(&["hash", "--format", "json"]).json();
    assert_eq!(v["schema_version"], 1);
    let layers = v["layers"].as_array().unwrap();
    let get = |n: &str| {
        layers
            .iter()
            .find(|l| l["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {v:#}"))
    };
    for n in ["ubuntu", "ubuntu-dev", "ubuntu-dev-gpu"] {
        let l = get(n);
        assert!(l.as_object().unwrap().contains_key("hash"), "{l}");
        assert!(l["hash"].is_null(), "{n} must be unresolved: {l}");
    }
    for (n, h) in SEED_EC2 {
        assert_eq!(
            get(n)["hash"],
            h,
            "the ami: root and its children are hashed"
        );
    }
    // The text format says so instead of printing a hash.
    let text = p.ok(&["hash"]).stdout();
    let line = text
        .lines()
        .find(|l| l.starts_with("ubuntu-dev-gpu"))
        .unwrap();
    assert!(line.contains("unresolved"), "{text}");

    // The simulate backend hashes the source as written: every layer.
    let sim = p
        .ok(&["hash", "--format", "json", "--backend", "simulate"])
        .json();
    let hashes: Vec<&str> = sim["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["hash"]
                .as_str()
                .unwrap_or_else(|| panic!("simulate left {l} unresolved"))
        })
        .collect();
    assert_eq!(hashes.len(), 6);
    assert!(hashes.iter().all(|h| is_hex64(h)));
    // ... and a change of the filter is a change of the source.
    edit(&p, "templates/ubuntu.yaml", "noble", "jammy");
    let sim2 = p
        .ok(&["hash", "--format", "json", "--backend", "simulate"])
        .json();
    let changed_names: Vec<&str> = sim["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(sim2["layers"].as_array().unwrap())
        .filter(|(a, b)| a["hash"] != b["hash"])
        .map(|(a, _)| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(changed_names, ["ubuntu", "ubuntu-dev", "ubuntu-dev-gpu"]);
    // --base-ami resolves it offline.
    let based = p
        .ok(&[
            "hash",
            "--format",
            "json",
            "--base-ami",
            "ami-0123456789abcdef0",
        ])
        .json();
    assert!(
        based["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["hash"].is_string()),
        "{based:#}"
    );
}
