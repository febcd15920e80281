//! Planning, a pure step: the layer DAG, its hashes and the cache in; for
//! every layer that a build of the targets needs, an action (`build` or
//! `reuse`) with a typed reason and field-level changes out.
//!
//! Rules:
//! - The layers considered are the targets plus their ancestors.
//! - `--rebuild` forces the targets; `--rebuild-base` forces the targets and
//!   every ancestor.
//! - A cache hit is reused unless forced, older than `rebuild.max_age`
//!   (`expired`), or its image is gone (`stale`).
//! - Whenever a layer is built, every considered descendant is built too
//!   (reason `parent` unless it has its own): a child image is always baked
//!   on its parent's current image.
//! - A miss is `new` when the template was never built for this target (or
//!   was built from exactly these inputs and then forgotten), `changed` when
//!   its own inputs differ from the last build, `parent` when only the parent
//!   differs, and `drift` when only a root's resolved `ami_filter` moved.

use std::fmt;

use serde::Serialize;

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{CacheEntry, LocalCache, Tier};
use crate::error::{Error, Result};
use crate::hash::diff::{diff, Change};
use crate::hash::{HashState, LayerHash, LayerRecord};
use crate::template::resolve::Project;

/// Why a layer is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    New,
    Changed,
    Parent,
    Forced,
    Expired,
    Stale,
    Drift,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Changed => "changed",
            Reason::Parent => "parent",
            Reason::Forced => "forced",
            Reason::Expired => "expired",
            Reason::Stale => "stale",
            Reason::Drift => "drift",
        }
    }

    /// A sentence for `explain`.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::New => "no image has been built from these inputs for this target",
            Reason::Changed => "its own inputs changed since it was last built",
            Reason::Parent => "its parent is rebuilt or changed",
            Reason::Forced => "forced by --rebuild or --rebuild-base",
            Reason::Expired => "its cached image is older than rebuild.max_age",
            Reason::Stale => "its cached image no longer exists",
            Reason::Drift => "its source image filter now resolves to a newer image",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Build,
    Reuse,
    /// The layer's image exists in another region of the account: CopyImage
    /// instead of a rebuild.
    Copy,
}

/// One layer's decision.
#[derive(Clone, Debug)]
pub struct PlannedLayer {
    /// Index into `Project::layers`.
    pub index: usize,
    pub hash: LayerHash,
    /// What the layer is built from; `None` for reused layers.
    pub record: Option<Arc<LayerRecord>>,
    pub action: Action,
    pub reason: Option<Reason>,
    pub changes: Vec<Change>,
    /// The cached entry when there is a hit (also for forced rebuilds).
    pub entry: Option<CacheEntry>,
    pub tier: Option<Tier>,
    pub estimate_seconds: Option<f64>,
    /// For `Copy`: the (region, image) to copy from.
    pub copy_from: Option<(String, String)>,
}

impl PlannedLayer {
    /// The record of a layer that is built or copied (never `None` then).
    pub fn built_record(&self) -> Arc<LayerRecord> {
        self.record
            .clone()
            .expect("a plan keeps the record of every layer it does not reuse")
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub target: String,
    /// Topological order.
    pub layers: Vec<PlannedLayer>,
}

impl Plan {
    pub fn position(&self, index: usize) -> Option<usize> {
        self.layers.iter().position(|l| l.index == index)
    }
}

#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    pub targets: Vec<String>,
    pub rebuild: bool,
    pub rebuild_base: bool,
    /// Unix seconds "now", for expiry.
    pub now: i64,
    /// The backend resolves roots from a filter (ec2 `ami_filter`), so a
    /// moved resolution is `drift` rather than `changed`.
    pub drift_roots: Vec<usize>,
    /// Images of these hashes exist in another region: (region, image).
    pub copy_sources: HashMap<LayerHash, (String, String)>,
}

/// How many recent builds an estimate is the median of.
const ESTIMATE_WINDOW: usize = 5;

/// Cache hits by layer hash, with the tier that answered.
pub type Hits = HashMap<LayerHash, (CacheEntry, Tier)>;

/// The local cache's hits for every known hash.
pub fn local_hits(local: &LocalCache, hashes: &[HashState], target: &str) -> Result<Hits> {
    let keys: Vec<(&LayerHash, &str)> = hashes
        .iter()
        .filter_map(|h| h.hash())
        .map(|h| (h, target))
        .collect();
    let found = local.get_many(&keys)?;
    Ok(keys
        .iter()
        .zip(found)
        .filter_map(|((h, _), e)| Some(((*h).clone(), (e?, Tier::Local))))
        .collect())
}

/// Decides what to build. `exists` checks that a cached image still exists.
pub fn plan(
    project: &Project,
    hashes: &[HashState],
    local: &LocalCache,
    hits: &Hits,
    target: &str,
    opts: &PlanOptions,
    exists: &dyn Fn(&CacheEntry) -> bool,
) -> Result<Plan> {
    let selected = project.select(&opts.targets)?;
    let considered = project.with_ancestors(&selected);
    let mut forced = vec![false; project.layers.len()];
    if opts.rebuild || opts.rebuild_base {
        for &t in &selected {
            if opts.rebuild_base {
                for &a in &project.layers[t].chain {
                    forced[a] = true;
                }
            }
            forced[t] = true;
        }
    }

    let mut known = Vec::with_capacity(considered.len());
    for &i in &considered {
        match &hashes[i] {
            HashState::Known(h, parent) => known.push((i, h.clone(), parent)),
            HashState::Unresolved(why) => {
                return Err(Error::Usage(format!(
                    "cannot plan `{}`: {why}",
                    project.layers[i].name()
                )))
            }
        }
    }
    let estimates = local.estimates(target, ESTIMATE_WINDOW)?;
    let mut out: Vec<PlannedLayer> = Vec::with_capacity(known.len());
    let mut building = vec![false; project.layers.len()];
    for (i, hash, parent) in known {
        let layer = &project.layers[i];
        let mut record: Option<Arc<LayerRecord>> = None;
        let record_of = || Arc::new(crate::hash::layer_record(project, i, parent));
        let hit = hits.get(&hash).cloned();
        let parent_rebuilt = layer.parent.filter(|&p| building[p]);
        let parent_note = |changes: &mut Vec<Change>| {
            if let Some(p) = parent_rebuilt {
                let name = project.layers[p].name().to_string();
                changes.retain(|c| !matches!(c, Change::ParentChanged { .. }));
                changes.push(Change::ParentRebuilt { parent: name });
            }
        };
        let mut changes = Vec::new();
        let mut copy_from = None;
        let (action, reason) = if forced[i] {
            (Action::Build, Some(Reason::Forced))
        } else if let Some((entry, _)) = &hit {
            let age = opts.now - entry.created_at;
            if layer.max_age.is_some_and(|m| age > m.as_secs() as i64) {
                (Action::Build, Some(Reason::Expired))
            } else if !exists(entry) {
                (Action::Build, Some(Reason::Stale))
            } else if parent_rebuilt.is_some() {
                parent_note(&mut changes);
                (Action::Build, Some(Reason::Parent))
            } else {
                (Action::Reuse, None)
            }
        } else if let Some(src) = opts
            .copy_sources
            .get(&hash)
            .filter(|_| parent_rebuilt.is_none())
        {
            copy_from = Some(src.clone());
            (Action::Copy, None)
        } else {
            let reason = match local.last_built(layer.name(), target)? {
                Some((old_hash, Some(old))) if old_hash != hash => {
                    let record = record.get_or_insert_with(record_of);
                    changes = diff(&old, record);
                    // Effective build settings and variables inherited
                    // unchanged-in-this-file are the parent's change.
                    if layer.parent.is_some() {
                        changes.retain(|c| match c {
                            Change::Variable { key, .. } => layer.own_variables.contains(key),
                            Change::Build { key, .. } => own_build_key(&layer.own_build, key),
                            _ => true,
                        });
                        if !changes
                            .iter()
                            .any(|c| matches!(c, Change::ParentChanged { .. }))
                            && old.parent != record.parent
                        {
                            changes.push(Change::ParentChanged {
                                parent: project.layers[layer.parent.unwrap_or(0)]
                                    .name()
                                    .to_string(),
                            });
                        }
                    }
                    let own = changes.iter().any(|c| {
                        !matches!(c, Change::ParentChanged { .. } | Change::Source { .. })
                    });
                    let source_moved = changes.iter().any(|c| matches!(c, Change::Source { .. }));
                    if own {
                        Reason::Changed
                    } else if source_moved && opts.drift_roots.contains(&i) {
                        Reason::Drift
                    } else if source_moved {
                        Reason::Changed
                    } else if parent_rebuilt.is_some() || !changes.is_empty() {
                        Reason::Parent
                    } else {
                        Reason::New
                    }
                }
                // Never built for this target, or built from exactly these
                // inputs and then forgotten.
                _ => Reason::New,
            };
            if reason != Reason::New {
                parent_note(&mut changes);
            }
            (Action::Build, Some(reason))
        };
        if action == Action::Build {
            building[i] = true;
        }
        if action != Action::Reuse {
            record.get_or_insert_with(record_of);
        }
        let estimate_seconds = estimates.get(layer.name()).copied();
        let (entry, tier) = match hit {
            Some((e, t)) => (Some(e), Some(t)),
            None => (None, None),
        };
        out.push(PlannedLayer {
            index: i,
            hash,
            record,
            action,
            reason,
            changes,
            entry,
            tier,
            estimate_seconds,
            copy_from,
        });
    }
    Ok(Plan {
        target: target.to_string(),
        layers: out,
    })
}

/// Whether the template itself sets build key `key`.
fn own_build_key(b: &crate::template::model::BuildSettings, key: &str) -> bool {
    match key {
        "instance_type" => b.instance_type.is_some(),
        "architecture" => b.architecture.is_some(),
        "volume_size_gb" => b.volume_size_gb.is_some(),
        "volume_type" => b.volume_type.is_some(),
        _ => true,
    }
}

/// `explain`: the plan of one template's chain, as `build` would see it.
pub fn explain_plan(
    project: &Project,
    hashes: &[HashState],
    local: &LocalCache,
    target: &str,
    template: &str,
    now: i64,
) -> Result<Plan> {
    let hits = local_hits(local, hashes, target)?;
    let opts = PlanOptions {
        targets: vec![template.to_string()],
        now,
        ..Default::default()
    };
    plan(project, hashes, local, &hits, target, &opts, &|_| true)
}
