//! Field-level differences between two [`LayerRecord`]s: the typed changes
//! that `explain` and `plan` render, e.g. `software.spack: +gromacs@2024.3`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::hash::{LayerRecord, StepInput};

/// One difference between what a layer was last built from and now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Build {
        key: String,
        old: Option<String>,
        new: Option<String>,
    },
    Variable {
        key: String,
        old: Option<String>,
        new: Option<String>,
    },
    PackageAdded {
        manager: String,
        spec: String,
    },
    PackageRemoved {
        manager: String,
        spec: String,
    },
    PackagesReordered {
        manager: String,
    },
    FileAdded {
        dest: String,
    },
    FileRemoved {
        dest: String,
    },
    FileChanged {
        dest: String,
        what: String,
    },
    StepAdded {
        index: usize,
        label: String,
    },
    StepRemoved {
        index: usize,
        label: String,
    },
    StepChanged {
        index: usize,
        label: String,
        what: String,
    },
    Source {
        old: String,
        new: String,
    },
    /// The parent layer's hash changed (its own inputs changed).
    ParentChanged {
        parent: String,
    },
    /// The parent layer is rebuilt in this run.
    ParentRebuilt {
        parent: String,
    },
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(unset)")
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Build { key, old, new } => {
                write!(f, "build.{key}: {} → {}", opt(old), opt(new))
            }
            Change::Variable {
                key,
                old: None,
                new: Some(n),
            } => write!(f, "variables.{key}: + {n}"),
            Change::Variable {
                key,
                old: Some(o),
                new: None,
            } => write!(f, "variables.{key}: - {o}"),
            Change::Variable { key, old, new } => {
                write!(f, "variables.{key}: {} → {}", opt(old), opt(new))
            }
            Change::PackageAdded { manager, spec } => write!(f, "software.{manager}: +{spec}"),
            Change::PackageRemoved { manager, spec } => write!(f, "software.{manager}: -{spec}"),
            Change::PackagesReordered { manager } => write!(f, "software.{manager}: order changed"),
            Change::FileAdded { dest } => write!(f, "files[{dest}]: added"),
            Change::FileRemoved { dest } => write!(f, "files[{dest}]: removed"),
            Change::FileChanged { dest, what } => write!(f, "files[{dest}]: {what}"),
            Change::StepAdded { index, label } => write!(f, "provision[{index}]: added ({label})"),
            Change::StepRemoved { index, label } => {
                write!(f, "provision[{index}]: removed ({label})")
            }
            Change::StepChanged { index, label, what } => {
                write!(f, "provision[{index}]: {label} {what}")
            }
            Change::Source { old, new } => write!(f, "source: {old} → {new}"),
            Change::ParentChanged { parent } => write!(f, "parent {parent} changed"),
            Change::ParentRebuilt { parent } => write!(f, "parent {parent} will be rebuilt"),
        }
    }
}

fn diff_maps(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    make: impl Fn(String, Option<String>, Option<String>) -> Change,
    out: &mut Vec<Change>,
) {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (o, n) = (old.get(k), new.get(k));
        if o != n {
            out.push(make(k.clone(), o.cloned(), n.cloned()));
        }
    }
}

/// The layer's own changes from `old` to `new` (parent-hash changes are
/// reported as [`Change::ParentChanged`] for children, [`Change::Source`]
/// for roots).
pub fn diff(old: &LayerRecord, new: &LayerRecord) -> Vec<Change> {
    let mut out = Vec::new();
    let (oi, ni) = (&old.inputs, &new.inputs);
    diff_maps(
        &oi.build,
        &ni.build,
        |key, old, new| Change::Build { key, old, new },
        &mut out,
    );
    diff_maps(
        &oi.variables,
        &ni.variables,
        |key, old, new| Change::Variable { key, old, new },
        &mut out,
    );

    let managers: BTreeSet<&String> = oi.software.keys().chain(ni.software.keys()).collect();
    for m in managers {
        let empty = Vec::new();
        let o = oi.software.get(m).unwrap_or(&empty);
        let n = ni.software.get(m).unwrap_or(&empty);
        let before = out.len();
        for spec in n.iter().filter(|s| !o.contains(s)) {
            out.push(Change::PackageAdded {
                manager: m.clone(),
                spec: spec.clone(),
            });
        }
        for spec in o.iter().filter(|s| !n.contains(s)) {
            out.push(Change::PackageRemoved {
                manager: m.clone(),
                spec: spec.clone(),
            });
        }
        if out.len() == before && o != n {
            out.push(Change::PackagesReordered { manager: m.clone() });
        }
    }

    for nf in &ni.files {
        match oi.files.iter().find(|f| f.dest == nf.dest) {
            None => out.push(Change::FileAdded {
                dest: nf.dest.clone(),
            }),
            Some(of) => {
                if of.content != nf.content {
                    out.push(Change::FileChanged {
                        dest: nf.dest.clone(),
                        what: "content changed".into(),
                    });
                }
                if of.mode != nf.mode {
                    out.push(Change::FileChanged {
                        dest: nf.dest.clone(),
                        what: format!("mode {} → {}", opt(&of.mode), opt(&nf.mode)),
                    });
                }
                if of.owner != nf.owner {
                    out.push(Change::FileChanged {
                        dest: nf.dest.clone(),
                        what: format!("owner {} → {}", opt(&of.owner), opt(&nf.owner)),
                    });
                }
            }
        }
    }
    for of in oi
        .files
        .iter()
        .filter(|of| !ni.files.iter().any(|f| f.dest == of.dest))
    {
        out.push(Change::FileRemoved {
            dest: of.dest.clone(),
        });
    }

    let label = |r: &LayerRecord, i: usize| {
        r.labels
            .provision
            .get(i)
            .cloned()
            .unwrap_or_else(|| "step".into())
    };
    for i in 0..oi.provision.len().max(ni.provision.len()) {
        match (oi.provision.get(i), ni.provision.get(i)) {
            (Some(o), Some(n)) if o != n => {
                let what = match (o, n) {
                    (StepInput::Script(_), StepInput::Script(_))
                        if label(old, i) == label(new, i) =>
                    {
                        "content changed".to_string()
                    }
                    (StepInput::Shell(_), StepInput::Shell(_)) => "command changed".to_string(),
                    _ => format!("replaces {}", label(old, i)),
                };
                out.push(Change::StepChanged {
                    index: i,
                    label: label(new, i),
                    what,
                });
            }
            (None, Some(_)) => out.push(Change::StepAdded {
                index: i,
                label: label(new, i),
            }),
            (Some(_), None) => out.push(Change::StepRemoved {
                index: i,
                label: label(old, i),
            }),
            _ => {}
        }
    }

    if old.parent != new.parent {
        match &new.parent_name {
            None => out.push(Change::Source {
                old: old.parent.clone(),
                new: new.parent.clone(),
            }),
            Some(p) => out.push(Change::ParentChanged { parent: p.clone() }),
        }
    }
    out
}
