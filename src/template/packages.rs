//! Package managers and how each spells a pinned version, for the
//! "same package at two versions in one chain" check.
//!
//! | manager | pinned form            | name is                                  |
//! |---------|------------------------|------------------------------------------|
//! | apt     | `name=version`         | text before `=` (an `:arch` suffix kept)  |
//! | dnf     | `name-version`         | text before the first `-` + digit         |
//! | spack   | `name@version+variant` | text before any of `@ + ~ ^ %` or space    |
//! | pip     | `name==version`        | PEP 503 normalized, extras dropped        |
//!
//! An unpinned package never conflicts with a pinned one: only two different
//! pins of one package do.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Apt,
    Dnf,
    Spack,
    Pip,
}

impl Manager {
    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Spack => "spack",
            Manager::Pip => "pip",
        }
    }

    /// Splits a package spec into (comparable name, pinned version).
    pub fn parse(self, spec: &str) -> (String, Option<String>) {
        let spec = spec.trim();
        match self {
            Manager::Apt => match spec.split_once('=') {
                Some((name, ver)) => (name.trim().to_string(), Some(ver.trim().to_string())),
                None => (spec.to_string(), None),
            },
            Manager::Dnf => {
                let bytes = spec.as_bytes();
                let split = (0..bytes.len().saturating_sub(1))
                    .find(|&i| bytes[i] == b'-' && bytes[i + 1].is_ascii_digit() && i > 0);
                match split {
                    Some(i) => (spec[..i].to_string(), Some(spec[i + 1..].to_string())),
                    None => (spec.to_string(), None),
                }
            }
            Manager::Spack => {
                let end = spec
                    .find(|c: char| matches!(c, '@' | '+' | '~' | '^' | '%') || c.is_whitespace())
                    .unwrap_or(spec.len());
                let name = spec[..end].to_string();
                // Only the root spec: `^dep@ver` pins a dependency.
                let root = &spec[..spec
                    .find(|c: char| c == '^' || c.is_whitespace())
                    .unwrap_or(spec.len())];
                let version = root.find('@').map(|at| {
                    let rest = &root[at + 1..];
                    let stop = rest
                        .find(|c: char| matches!(c, '+' | '~' | '^' | '%') || c.is_whitespace())
                        .unwrap_or(rest.len());
                    rest[..stop].to_string()
                });
                (name, version.filter(|v| !v.is_empty()))
            }
            Manager::Pip => {
                let (name, version) = match spec.split_once("==") {
                    Some((n, v)) => (n, Some(v.trim().to_string())),
                    None => {
                        let end = spec
                            .find(['<', '>', '!', '~', '=', ';', ' '])
                            .unwrap_or(spec.len());
                        (&spec[..end], None)
                    }
                };
                let name = name.split('[').next().unwrap_or(name).trim();
                let normalized: String = name
                    .chars()
                    .map(|c| match c {
                        '_' | '.' => '-',
                        c => c.to_ascii_lowercase(),
                    })
                    .collect();
                (normalized, version)
            }
        }
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Manager::*;

    fn p(m: super::Manager, s: &str) -> (String, Option<String>) {
        m.parse(s)
    }

    #[test]
    fn versions_per_manager() {
        assert_eq!(
            p(Spack, "gcc@13.2.0"),
            ("gcc".into(), Some("13.2.0".into()))
        );
        assert_eq!(
            p(Spack, "gromacs@2024.3+mpi"),
            ("gromacs".into(), Some("2024.3".into()))
        );
        assert_eq!(p(Spack, "openmpi"), ("openmpi".into(), None));
        assert_eq!(p(Spack, "hdf5+mpi ^openmpi@4"), ("hdf5".into(), None));
        assert_eq!(
            p(Apt, "cmake=3.28.3-1"),
            ("cmake".into(), Some("3.28.3-1".into()))
        );
        assert_eq!(p(Apt, "git"), ("git".into(), None));
        assert_eq!(
            p(Pip, "NumPy==1.26.4"),
            ("numpy".into(), Some("1.26.4".into()))
        );
        assert_eq!(p(Pip, "my_pkg[extra]>=2"), ("my-pkg".into(), None));
        assert_eq!(
            p(Dnf, "python3-devel-3.9.18"),
            ("python3-devel".into(), Some("3.9.18".into()))
        );
        assert_eq!(p(Dnf, "gcc-c++"), ("gcc-c++".into(), None));
    }
}
