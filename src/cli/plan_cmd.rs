//! `amimake plan`: what a build would do, why, and how long it would take.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::{BackendArgs, TextOrJson};
use crate::aws::Aws;
use crate::backend::BackendKind;
use crate::cache::shared::SharedCache;
use crate::cache::{now_unix, CacheEntry, LayerCache, LocalCache, Tier, Tiered};
use crate::error::{Error, Result};
use crate::executor::plan::{plan, Action, Hits, Plan, PlanOptions, Reason};
use crate::hash::{HashState, LayerHash, RootSource};
use crate::report::human_seconds;
use crate::template::resolve::Project;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Templates to plan for (default: all); their ancestors are included.
    pub templates: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
    /// Force the named layers (and so their descendants) to rebuild.
    #[arg(long)]
    pub rebuild: bool,
    /// Force the named layers and all their ancestors to rebuild.
    #[arg(long)]
    pub rebuild_base: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// A loaded project with its hashes and cache hits, ready to plan.
pub(crate) struct Prepared {
    pub project: Project,
    pub hashes: Vec<HashState>,
    pub cache: Arc<LocalCache>,
    pub shared: Option<SharedCache>,
    /// Local and shared-cache hits (not yet verified).
    pub hits: Hits,
    pub target: String,
    pub runtime: tokio::runtime::Runtime,
    pub live: Live,
}

/// What a backend learned online while preparing.
// One value per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Live {
    Simulate,
    Local {
        /// `<cache dir>/local/<arch>`.
        store: std::path::PathBuf,
        sandbox: crate::builder::local::Sandbox,
    },
    Ec2 {
        aws: Aws,
        account: String,
        /// Each root's source image, by layer index.
        root_images: Vec<Option<String>>,
        /// Roots whose source comes from an `ami_filter`.
        drift_roots: Vec<usize>,
        /// Layers missing here but built in another region: (region, image).
        copy_sources: HashMap<LayerHash, (String, String)>,
        /// Roots whose source image is not in this region, with the error
        /// to report if one of them has to be built.
        missing_sources: Vec<(usize, String)>,
        /// Images of cache hits that exist and are available: their owner
        /// and `amimake:layer-hash` tag.
        existing: HashMap<String, (Option<String>, Option<String>)>,
    },
}

pub(crate) fn prepare(backend_args: &BackendArgs) -> Result<Prepared> {
    let project = super::load_project()?;
    let backend = super::backend_of(&project, backend_args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    let base_ami = backend_args.base_ami.as_deref();
    let (target, hashes, mut live) = match backend {
        BackendKind::Simulate => (
            crate::builder::simulate::TARGET.to_string(),
            super::offline_hashes(&project, backend, base_ami)?,
            Live::Simulate,
        ),
        BackendKind::Ec2 => runtime.block_on(prepare_ec2(&project, base_ami))?,
        BackendKind::Local => {
            let sandbox = crate::builder::local::Sandbox::detect().map_err(Error::Usage)?;
            (
                crate::builder::local::target(),
                super::offline_hashes(&project, backend, base_ami)?,
                Live::Local {
                    store: crate::builder::local::store_dir(&super::local_cache_dir(&project)),
                    sandbox,
                },
            )
        }
    };
    let cache = Arc::new(super::open_cache(&project)?);
    let shared = match &live {
        Live::Ec2 { aws, .. } => super::shared_cache(&project, Some(aws.clone()), &runtime)?,
        Live::Simulate | Live::Local { .. } => super::shared_cache(&project, None, &runtime)?,
    };
    let keys: Vec<LayerHash> = hashes.iter().filter_map(|h| h.hash()).cloned().collect();
    let tiered = Tiered {
        local: &*cache,
        remote: shared.as_ref().map(|s| s as &dyn LayerCache),
    };
    let found = runtime.block_on(tiered.lookup_many(&keys, &target))?;
    let hits: Hits = keys
        .into_iter()
        .zip(found)
        .filter_map(|(h, hit)| Some((h, hit?)))
        .collect();
    if let Live::Ec2 { aws, existing, .. } = &mut live {
        // Every hit is verified before use (one batched call).
        let images: Vec<String> = hits.values().map(|(e, _)| e.image.clone()).collect();
        let found = runtime
            .block_on(aws.describe_images(&images))
            .map_err(|e| Error::BuildFailed(format!("cannot check cached images: {e}")))?;
        *existing = found
            .into_iter()
            .filter(|i| i.state == "available")
            .map(|i| (i.id, (i.owner, i.tags.get("amimake:layer-hash").cloned())))
            .collect();
    }
    if let Live::Ec2 {
        aws,
        account,
        copy_sources,
        ..
    } = &mut live
    {
        // Misses built in another region of this account are copied, not rebuilt.
        let prefix = format!("ec2/{account}/");
        let mut candidates: HashMap<String, Vec<(LayerHash, String)>> = HashMap::new();
        for h in hashes
            .iter()
            .filter_map(|h| h.hash())
            .filter(|h| !hits.contains_key(*h))
        {
            for e in cache.entries_for_hash(h, &prefix)? {
                let region = e.target[prefix.len()..].to_string();
                if region != aws.region {
                    candidates
                        .entry(region)
                        .or_default()
                        .push((h.clone(), e.image));
                }
            }
        }
        for (region, list) in candidates {
            let regional = aws.in_region(&region);
            let ids: Vec<String> = list.iter().map(|(_, i)| i.clone()).collect();
            let Ok(found) = runtime.block_on(regional.describe_images(&ids)) else {
                continue;
            };
            for (hash, image) in list {
                let ok = found.iter().any(|i| {
                    i.id == image
                        && i.state == "available"
                        && i.tags.get("amimake:layer-hash") == Some(&hash.to_string())
                });
                if ok {
                    copy_sources.entry(hash).or_insert((region.clone(), image));
                }
            }
        }
    }
    Ok(Prepared {
        project,
        hashes,
        cache,
        shared,
        hits,
        target,
        runtime,
        live,
    })
}

/// An existing, available image may stand for a layer when it is owned by
/// this account or one listed in `cache.owners`, and carries the layer's
/// `amimake:layer-hash` tag.
pub(crate) fn image_usable(
    owner: Option<&str>,
    tag: Option<&str>,
    account: &str,
    owners: &[String],
    hash: &str,
) -> bool {
    let owner_ok = owner.is_some_and(|o| o == account || owners.iter().any(|a| a == o));
    owner_ok && tag == Some(hash)
}

impl Prepared {
    /// Whether a cached entry's image may be used: it exists, is available,
    /// is owned by an allowed account and carries the layer-hash tag.
    pub fn verified(&self, e: &CacheEntry) -> bool {
        match &self.live {
            Live::Simulate => true,
            Live::Local { store, .. } => {
                crate::builder::local::tree(store, e.hash.as_str()).is_dir()
            }
            Live::Ec2 {
                existing, account, ..
            } => match existing.get(&e.image) {
                Some((owner, tag)) => image_usable(
                    owner.as_deref(),
                    tag.as_deref(),
                    account,
                    &self.project.config.cache.owners,
                    e.hash.as_str(),
                ),
                None => false,
            },
        }
    }

    /// After planning: reused remote hits are written back locally; with
    /// `evict`, entries that failed verification are dropped from the local
    /// cache and (when writable) the shared one.
    pub fn settle(&self, plan: &Plan, evict: bool) -> Result<()> {
        let reused_remote: Vec<CacheEntry> = plan
            .layers
            .iter()
            .filter(|l| l.action == Action::Reuse && l.tier == Some(Tier::Remote))
            .filter_map(|l| l.entry.clone())
            .collect();
        for e in &reused_remote {
            self.cache.put_entry(e)?;
        }
        if evict {
            for l in plan
                .layers
                .iter()
                .filter(|l| l.reason == Some(Reason::Stale))
            {
                self.cache.remove(&l.hash, &plan.target)?;
                if let Some(shared) = &self.shared {
                    if let Err(e) = self.runtime.block_on(shared.delete(&l.hash, &plan.target)) {
                        tracing::warn!(
                            "could not evict {} from the shared cache: {e}",
                            l.hash.short()
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Connects to AWS, resolves every root's source live (recording
/// `ami_filter` resolutions for offline commands) and hashes.
async fn prepare_ec2(
    project: &Project,
    base_ami: Option<&str>,
) -> Result<(String, Vec<HashState>, Live)> {
    let aws = Aws::connect(project.config.region.as_deref())
        .await
        .map_err(Error::Usage)?;
    let account = aws.account().await.map_err(|e| {
        Error::Usage(format!(
            "cannot use AWS credentials ({e}); check AWS_PROFILE / aws sso login"
        ))
    })?;
    let target = format!("ec2/{account}/{}", aws.region);
    let recorder = super::open_cache(project)?;
    let mut root_images: Vec<Option<String>> = vec![None; project.layers.len()];
    let mut drift_roots = Vec::new();
    let mut missing_sources = Vec::new();
    for (i, layer) in project.layers.iter().enumerate() {
        if layer.parent.is_some() {
            continue;
        }
        let where_ = format!("`{}` ({})", layer.name(), layer.file());
        let source = layer.source();
        let image = if let Some(ami) = base_ami {
            ami.to_string()
        } else if let Some(ami) = source.and_then(|s| s.ami.as_ref()) {
            ami.value.clone()
        } else if let Some(filter) = source.and_then(|s| s.ami_filter.as_ref()) {
            let found = aws
                .resolve_filter(filter)
                .await
                .map_err(|e| Error::BuildFailed(format!("resolving the source of {where_}: {e}")))?
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "no available image in {} matches the ami_filter of {where_} (name `{}`, owners {})",
                        aws.region,
                        filter.name,
                        filter.owners.join(", ")
                    ))
                })?;
            recorder
                .record_resolution(&crate::backend::filter_key(&aws.region, filter), &found.id)?;
            drift_roots.push(i);
            found.id
        } else {
            return Err(Error::Usage(format!(
                "{where_} has no ec2 source: give `source.ami` or `source.ami_filter`, or pass --base-ami"
            )));
        };
        let info = aws
            .describe_images(std::slice::from_ref(&image))
            .await
            .map_err(|e| Error::BuildFailed(format!("checking the source of {where_}: {e}")))?;
        match info.first() {
            Some(img) if img.state == "available" => {}
            Some(img) => {
                return Err(Error::Usage(format!(
                    "source image {image} of {where_} is `{}`, not available",
                    img.state
                )))
            }
            None => {
                // Only an error if the root must be built here (it may be
                // copied from another region instead): see `make_plan`.
                missing_sources.push((
                    i,
                    format!(
                        "source image {image} of {where_} does not exist in {} (or is not visible to account {account})",
                        aws.region
                    ),
                ));
            }
        }
        root_images[i] = Some(image);
    }
    let hashes = crate::hash::hash_all(project, |layer| {
        let i = project.get(layer.name()).unwrap_or(0);
        match &root_images[i] {
            Some(image) => RootSource::Resolved {
                identity: format!("ec2:{image}"),
                image: Some(image.clone()),
            },
            None => RootSource::Unresolved("unresolved".into()),
        }
    });
    Ok((
        target,
        hashes,
        Live::Ec2 {
            aws,
            account,
            root_images,
            drift_roots,
            copy_sources: HashMap::new(),
            missing_sources,
            existing: HashMap::new(),
        },
    ))
}

pub(crate) fn make_plan(
    p: &Prepared,
    targets: &[String],
    rebuild: bool,
    rebuild_base: bool,
) -> Result<Plan> {
    let drift_roots = match &p.live {
        Live::Ec2 { drift_roots, .. } => drift_roots.clone(),
        Live::Simulate | Live::Local { .. } => Vec::new(),
    };
    let opts = PlanOptions {
        targets: targets.to_vec(),
        rebuild,
        rebuild_base,
        now: now_unix(),
        drift_roots,
        copy_sources: match &p.live {
            Live::Ec2 { copy_sources, .. } => copy_sources.clone(),
            _ => HashMap::new(),
        },
    };
    let plan = plan(
        &p.project,
        &p.hashes,
        &p.cache,
        &p.hits,
        &p.target,
        &opts,
        &|e| p.verified(e),
    )?;
    if let Live::Ec2 {
        missing_sources, ..
    } = &p.live
    {
        for l in plan.layers.iter().filter(|l| l.action == Action::Build) {
            if let Some((_, msg)) = missing_sources.iter().find(|(i, _)| *i == l.index) {
                return Err(Error::Usage(msg.clone()));
            }
        }
    }
    Ok(plan)
}

#[derive(Serialize)]
pub(crate) struct PlanJson<'a> {
    schema_version: u32,
    target: &'a str,
    layers: Vec<PlanLayerJson<'a>>,
    totals: Totals,
}

#[derive(Serialize)]
struct PlanLayerJson<'a> {
    name: &'a str,
    file: &'a str,
    parent: Option<&'a str>,
    hash: &'a str,
    action: Action,
    reason: Option<crate::executor::plan::Reason>,
    changes: Vec<String>,
    image: Option<&'a str>,
    cache: Option<crate::cache::Tier>,
    estimate_seconds: Option<f64>,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct Totals {
    pub build: usize,
    pub reuse: usize,
    /// Layers copied from another region instead of rebuilt (an extension
    /// of the DESIGN contract; 0 unless multi-region is in use).
    pub copy: usize,
    pub estimate_seconds: Option<f64>,
    pub saved_seconds: Option<f64>,
}

/// Build time of the layers to build (None if any is unknown) and the time
/// reuse saves (None if any reused layer's build time is unknown).
pub(crate) fn totals(plan: &Plan) -> Totals {
    let mut t = Totals {
        build: 0,
        reuse: 0,
        copy: 0,
        estimate_seconds: Some(0.0),
        saved_seconds: Some(0.0),
    };
    for l in &plan.layers {
        match l.action {
            Action::Build => {
                t.build += 1;
                t.estimate_seconds = t
                    .estimate_seconds
                    .zip(l.estimate_seconds)
                    .map(|(a, b)| a + b);
            }
            Action::Reuse => {
                t.reuse += 1;
                let known = l
                    .estimate_seconds
                    .or(l.entry.as_ref().and_then(|e| e.build_seconds));
                t.saved_seconds = t.saved_seconds.zip(known).map(|(a, b)| a + b);
            }
            Action::Copy => t.copy += 1,
        }
    }
    t
}

pub(crate) fn plan_json<'a>(project: &'a Project, plan: &'a Plan) -> PlanJson<'a> {
    let layers = plan
        .layers
        .iter()
        .map(|l| {
            let layer = &project.layers[l.index];
            let reuse = l.action == Action::Reuse;
            PlanLayerJson {
                name: layer.name(),
                file: layer.file(),
                parent: layer.parent.map(|p| project.layers[p].name()),
                hash: l.hash.as_str(),
                action: l.action,
                reason: l.reason,
                changes: l.changes.iter().map(|c| c.to_string()).collect(),
                image: if reuse {
                    l.entry.as_ref().map(|e| e.image.as_str())
                } else {
                    None
                },
                cache: if reuse { l.tier } else { None },
                estimate_seconds: l.estimate_seconds,
            }
        })
        .collect();
    PlanJson {
        schema_version: 1,
        target: &plan.target,
        layers,
        totals: totals(plan),
    }
}

pub(crate) fn print_plan_text(project: &Project, plan: &Plan) {
    let mut out = super::stdout();
    let _ = writeln!(out, "plan for target {}:", plan.target);
    let width = plan
        .layers
        .iter()
        .map(|l| {
            project.layers[l.index].name().len() + 2 * (project.layers[l.index].chain.len() - 1)
        })
        .max()
        .unwrap_or(0);
    for l in &plan.layers {
        let layer = &project.layers[l.index];
        let indent = "  ".repeat(layer.chain.len() - 1);
        let label = format!("{indent}{}", layer.name());
        let estimate = l
            .estimate_seconds
            .map(human_seconds)
            .unwrap_or_else(|| "unknown".into());
        match l.action {
            Action::Reuse => {
                let image = l.entry.as_ref().map(|e| e.image.as_str()).unwrap_or("");
                let tier = l
                    .tier
                    .map(|t| {
                        if t == crate::cache::Tier::Local {
                            "local"
                        } else {
                            "remote"
                        }
                    })
                    .unwrap_or("");
                let _ = writeln!(
                    out,
                    "  {label:width$}  reuse  {image} ({tier} cache)  {}",
                    l.hash.short()
                );
            }
            Action::Copy => {
                let (region, image) = l.copy_from.clone().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {label:width$}  COPY   from {image} in {region}  {}",
                    l.hash.short()
                );
            }
            Action::Build => {
                let reason = l.reason.map(|r| r.as_str()).unwrap_or("");
                let _ = writeln!(
                    out,
                    "  {label:width$}  BUILD  {reason:8} est. {estimate}  {}",
                    l.hash.short()
                );
                for c in &l.changes {
                    let _ = writeln!(out, "  {:width$}         - {c}", "");
                }
            }
        }
    }
    let t = totals(plan);
    let est = t
        .estimate_seconds
        .map(human_seconds)
        .unwrap_or_else(|| "unknown (no build history yet)".into());
    let saved = t
        .saved_seconds
        .map(human_seconds)
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(
        out,
        "{} to build, {} to reuse; estimated build time {est}; reuse saves {saved}",
        t.build, t.reuse
    );
}

pub fn run(args: PlanArgs) -> Result<i32> {
    let prepared = prepare(&args.backend)?;
    let plan = make_plan(&prepared, &args.templates, args.rebuild, args.rebuild_base)?;
    prepared.settle(&plan, false)?;
    match args.format {
        TextOrJson::Json => super::print_json(&plan_json(&prepared.project, &plan))?,
        TextOrJson::Text => print_plan_text(&prepared.project, &plan),
    }
    prepared.project.save_memo_later();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::image_usable;

    #[test]
    fn only_allowed_owners_and_matching_tags() {
        let owners = vec!["222222222222".to_string()];
        assert!(image_usable(
            Some("111111111111"),
            Some("h"),
            "111111111111",
            &[],
            "h"
        ));
        assert!(image_usable(
            Some("222222222222"),
            Some("h"),
            "111111111111",
            &owners,
            "h"
        ));
        assert!(
            !image_usable(
                Some("333333333333"),
                Some("h"),
                "111111111111",
                &owners,
                "h"
            ),
            "foreign owner"
        );
        assert!(
            !image_usable(
                Some("111111111111"),
                Some("other"),
                "111111111111",
                &owners,
                "h"
            ),
            "wrong tag"
        );
        assert!(
            !image_usable(Some("111111111111"), None, "111111111111", &owners, "h"),
            "untagged"
        );
        assert!(
            !image_usable(None, Some("h"), "111111111111", &owners, "h"),
            "unknown owner"
        );
    }
}
