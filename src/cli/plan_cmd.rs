//! `amimake plan`: what a build would do, why, and how long it would take.

use clap::Args;
use serde::Serialize;

use super::{BackendArgs, TextOrJson};
use crate::backend::BackendKind;
use crate::cache::{now_unix, LocalCache, Tiered};
use crate::error::{Error, Result};
use crate::executor::plan::{plan, Action, Plan, PlanOptions};
use crate::hash::HashState;
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

/// A loaded project with its hashes and cache, ready to plan.
pub(crate) struct Prepared {
    pub project: Project,
    pub hashes: Vec<HashState>,
    pub cache: LocalCache,
    pub target: String,
}

pub(crate) fn prepare(backend_args: &BackendArgs) -> Result<Prepared> {
    let project = super::load_project()?;
    let backend = super::backend_of(&project, backend_args)?;
    let target = match backend {
        BackendKind::Simulate => crate::builder::simulate::TARGET.to_string(),
        other => {
            return Err(Error::Usage(format!(
                "the {other} backend is not available in this version of amimake yet; use --backend simulate"
            )))
        }
    };
    let hashes = super::offline_hashes(&project, backend, backend_args.base_ami.as_deref())?;
    let cache = super::open_cache(&project)?;
    Ok(Prepared {
        project,
        hashes,
        cache,
        target,
    })
}

pub(crate) fn make_plan(
    p: &Prepared,
    targets: &[String],
    rebuild: bool,
    rebuild_base: bool,
) -> Result<Plan> {
    let tiered = Tiered::new(&p.cache, None);
    let opts = PlanOptions {
        targets: targets.to_vec(),
        rebuild,
        rebuild_base,
        now: now_unix(),
        drift_roots: Vec::new(),
    };
    plan(&p.project, &p.hashes, &tiered, &p.target, &opts, &|_| true)
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
    pub estimate_seconds: Option<f64>,
    pub saved_seconds: Option<f64>,
}

/// Build time of the layers to build (None if any is unknown) and the time
/// reuse saves (None if any reused layer's build time is unknown).
pub(crate) fn totals(plan: &Plan) -> Totals {
    let mut t = Totals {
        build: 0,
        reuse: 0,
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
    println!("plan for target {}:", plan.target);
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
                println!(
                    "  {label:width$}  reuse  {image} ({tier} cache)  {}",
                    l.hash.short()
                );
            }
            Action::Build => {
                let reason = l.reason.map(|r| r.as_str()).unwrap_or("");
                println!(
                    "  {label:width$}  BUILD  {reason:8} est. {estimate}  {}",
                    l.hash.short()
                );
                for c in &l.changes {
                    println!("  {:width$}         - {c}", "");
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
    println!(
        "{} to build, {} to reuse; estimated build time {est}; reuse saves {saved}",
        t.build, t.reuse
    );
}

pub fn run(args: PlanArgs) -> Result<i32> {
    let prepared = prepare(&args.backend)?;
    let plan = make_plan(&prepared, &args.templates, args.rebuild, args.rebuild_base)?;
    match args.format {
        TextOrJson::Json => super::print_json(&plan_json(&prepared.project, &plan))?,
        TextOrJson::Text => print_plan_text(&prepared.project, &plan),
    }
    Ok(0)
}
