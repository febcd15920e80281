//! Scratch projects and a runner for the real executable.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary template repository with its own cache directory.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

impl Project {
    /// An empty project: `amimake.yaml` and a `templates/` directory.
    pub fn new() -> Project {
        let p = Project {
            dir: tempfile::tempdir().expect("tempdir"),
            cache: tempfile::tempdir().expect("tempdir"),
        };
        p.file("amimake.yaml", "# test project\n");
        std::fs::create_dir_all(p.root().join("templates")).unwrap();
        p
    }

    /// The seed scenario: foundation, gromacs and namd, with scripts.
    pub fn seed() -> Project {
        let p = Project::new();
        p.file(
            "templates/foundation.yaml",
            "description: Compilers, MPI and Python\n\
             source:\n  ami: ami-0123456789abcdef0\n\
             build: {instance_type: c6i.2xlarge, volume_size_gb: 40, timeout: 90m}\n\
             variables: {spack_version: \"0.22.2\", spack_root: /opt/spack}\n\
             software:\n  apt: [build-essential, gfortran, python3, cmake, git]\n  spack: [gcc@13.2.0, openmpi@4.1.6]\n\
             files:\n  - {src: ../files/modules.sh, dest: /etc/profile.d/modules.sh, mode: \"0644\"}\n\
             provision:\n  - script: ../scripts/install-spack.sh\n  - shell: spack compiler find\n\
             tags: {team: hpc}\n",
        );
        p.file(
            "templates/gromacs.yaml",
            "extends: foundation\nsoftware: {spack: [\"gromacs@2024.3+mpi\"]}\nprovision: [{script: ../scripts/build-gromacs.sh}]\n",
        );
        p.file(
            "templates/namd.yaml",
            "extends: foundation\nsoftware: {spack: [\"namd@3.0\"]}\nprovision: [{shell: echo namd}]\n",
        );
        p.file("files/modules.sh", "export MODULEPATH=/opt/modules\n");
        p.file(
            "scripts/install-spack.sh",
            "#!/bin/sh\nset -eu\ngit clone spack \"$spack_root\"\n",
        );
        p.file(
            "scripts/build-gromacs.sh",
            "#!/bin/sh\nset -eu\nspack load gromacs\n",
        );
        p
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Writes a file (creating directories).
    pub fn file(&self, rel: &str, content: &str) -> &Project {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap();
    }

    /// A command for the real binary, run in the project root.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_amimake"));
        c.args(args)
            .current_dir(self.root())
            .env("AMIMAKE_CACHE_DIR", self.cache.path())
            .env_remove("AMIMAKE_LOG")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run(self.cmd(args).output().expect("amimake runs"))
    }

    /// Runs and expects exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code(), 0, "amimake {args:?} failed:\n{}", r.stderr());
        r
    }

    /// `hash --format json` as name -> hash (None when unresolved).
    pub fn hashes(&self) -> std::collections::BTreeMap<String, Option<String>> {
        let v = self.ok(&["hash", "--format", "json"]).json();
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    l["hash"].as_str().map(String::from),
                )
            })
            .collect()
    }
}

pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout()))
    }
}

/// Names of layers whose hash differs between two `hashes()` maps.
pub fn changed(
    a: &std::collections::BTreeMap<String, Option<String>>,
    b: &std::collections::BTreeMap<String, Option<String>>,
) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

impl Project {
    /// `hash --format json --backend B` as name -> hash (resolved only).
    pub fn hashes_for(&self, backend: &str) -> std::collections::BTreeMap<String, String> {
        let v = self
            .ok(&["hash", "--format", "json", "--backend", backend])
            .json();
        by_name(&v, "hash")
    }

    /// `build --backend B --summary FILE EXTRA...`: the run and the summary.
    pub fn build_summary(&self, backend: &str, extra: &[&str]) -> (Run, serde_json::Value) {
        let summary = self
            .cache
            .path()
            .join(format!("summary-{backend}-{}.json", std::process::id()));
        let mut args = vec![
            "build",
            "--backend",
            backend,
            "--summary",
            summary.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        let json = serde_json::from_str(
            &std::fs::read_to_string(&summary)
                .unwrap_or_else(|_| panic!("no summary:\n{}", run.stderr())),
        )
        .unwrap();
        (run, json)
    }
}

/// name -> `field` (a string) of each entry of `json["layers"]` that has one.
pub fn by_name(
    json: &serde_json::Value,
    field: &str,
) -> std::collections::BTreeMap<String, String> {
    json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| {
            Some((
                l["name"].as_str()?.to_string(),
                l[field].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Owned, sorted pairs, to compare with [`by_name`] maps turned to vectors.
pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    out.sort();
    out
}
