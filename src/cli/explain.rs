//! `amimake explain <t>`: why a template would be rebuilt (or reused), with
//! the field-level changes against the inputs it was last built with.

use clap::Args;
use serde::Serialize;

use super::{BackendArgs, TextOrJson};
use crate::cache::now_unix;
use crate::error::Result;
use crate::executor::plan::{explain_plan, Action};
use crate::report::human_seconds;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The template to explain.
    pub template: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Serialize)]
struct ExplainJson<'a> {
    schema_version: u32,
    name: &'a str,
    target: &'a str,
    hash: &'a str,
    action: Action,
    reason: Option<crate::executor::plan::Reason>,
    changes: Vec<String>,
    last_built_hash: Option<String>,
    image: Option<&'a str>,
}

pub fn run(args: ExplainArgs) -> Result<i32> {
    let p = super::plan_cmd::prepare(&args.backend)?;
    let plan = explain_plan(
        &p.project,
        &p.hashes,
        &p.cache,
        &p.target,
        &args.template,
        now_unix(),
    )?;
    let me = plan
        .layers
        .last()
        .expect("the plan includes the template itself");
    let layer = &p.project.layers[me.index];
    let last = p
        .cache
        .last_built(layer.name(), &p.target)?
        .map(|(h, _)| h.to_string());
    let image = (me.action == Action::Reuse)
        .then(|| me.entry.as_ref().map(|e| e.image.as_str()))
        .flatten();
    if args.format == TextOrJson::Json {
        super::print_json(&ExplainJson {
            schema_version: 1,
            name: layer.name(),
            target: &p.target,
            hash: me.hash.as_str(),
            action: me.action,
            reason: me.reason,
            changes: me.changes.iter().map(|c| c.to_string()).collect(),
            last_built_hash: last,
            image,
        })?;
        return Ok(0);
    }
    match (me.action, me.reason) {
        (Action::Reuse, _) => {
            let entry = me.entry.as_ref().expect("reuse has an entry");
            let age = human_seconds((now_unix() - entry.created_at).max(0) as f64);
            println!(
                "{} is up to date on {}: {} (built {age} ago)",
                layer.name(),
                p.target,
                entry.image
            );
        }
        (Action::Copy, _) => {
            let (region, image) = me.copy_from.clone().unwrap_or_default();
            println!(
                "{} would be copied to {} from {image} in {region}: the same layer hash is built there",
                layer.name(),
                p.target
            );
        }
        (Action::Build, reason) => {
            let reason = reason.expect("a build has a reason");
            println!(
                "{} would be rebuilt on {}: {reason} — {}",
                layer.name(),
                p.target,
                reason.describe()
            );
            for c in &me.changes {
                println!("  {c}");
            }
        }
    }
    println!("  hash       {}", me.hash);
    if let Some(last) = last.filter(|l| l != me.hash.as_str()) {
        println!("  last built {last}");
    }
    for l in &plan.layers[..plan.layers.len() - 1] {
        let a = &p.project.layers[l.index];
        let what = match l.action {
            Action::Reuse => format!(
                "reuse {}",
                l.entry.as_ref().map(|e| e.image.as_str()).unwrap_or("")
            ),
            Action::Build => format!("build ({})", l.reason.map(|r| r.as_str()).unwrap_or("")),
            Action::Copy => "copy from another region".to_string(),
        };
        println!("  ancestor   {}: {what}", a.name());
    }
    Ok(0)
}
