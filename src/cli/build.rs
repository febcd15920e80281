//! `amimake build`: plan, then build the missing layers on the backend,
//! recording each as it finishes, and optionally write a JSON summary.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::plan_cmd::Live;
use super::BackendArgs;
use crate::builder::ec2::{Ec2Builder, Ec2Settings, Poller};
use crate::builder::leased::LeasedBuilder;
use crate::builder::local::LocalBuilder;
use crate::builder::simulate::SimulateBuilder;
use crate::builder::Builder;
use crate::error::{Error, Result};
use crate::executor::plan::Action;
use crate::executor::run::{run as run_plan, RunOptions};
use crate::report::{reporter_for_stderr, rfc3339, BuildSummary, LayerResult};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Templates to build (default: all); missing ancestors are built first.
    pub templates: Vec<String>,
    /// How many layers to build at once (default: `jobs` in amimake.yaml, else 8).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// Force the named layers (and so their descendants) to rebuild.
    #[arg(long)]
    pub rebuild: bool,
    /// Force the named layers and all their ancestors to rebuild.
    #[arg(long)]
    pub rebuild_base: bool,
    /// After a failure, keep building layers that do not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Write a JSON summary of the build to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// ec2: also copy the images to these regions (comma separated), besides
    /// `regions:` in amimake.yaml and the templates.
    #[arg(long, value_delimiter = ',', value_name = "REGION")]
    pub regions: Vec<String>,
    /// simulate backend: sleep SECONDS when building NAME (repeatable).
    #[arg(long = "simulate-duration", value_name = "NAME=SECONDS", value_parser = parse_duration_arg)]
    pub simulate_duration: Vec<(String, Duration)>,
    /// simulate backend: make layer NAME fail (repeatable).
    #[arg(long = "simulate-fail", value_name = "NAME")]
    pub simulate_fail: Vec<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

fn parse_duration_arg(s: &str) -> std::result::Result<(String, Duration), String> {
    let (name, secs) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=SECONDS, got `{s}`"))?;
    let secs: f64 = secs
        .trim()
        .parse()
        .map_err(|_| format!("`{secs}` is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{secs} seconds is out of range (0 to 86400)"));
    }
    Ok((name.trim().to_string(), Duration::from_secs_f64(secs)))
}

/// A build id: UTC time plus a random suffix, e.g. `20261126T051500-3f9a1c`.
pub fn new_build_id() -> String {
    let now = std::time::SystemTime::now();
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    let mut h = blake3::Hasher::new();
    h.update(format!("{:?}{}", now, std::process::id()).as_bytes());
    format!("{compact}-{}", &h.finalize().to_hex()[..6])
}

pub fn run(args: BuildArgs) -> Result<i32> {
    let prepared = super::plan_cmd::prepare(&args.backend)?;
    let project = &prepared.project;
    for name in args
        .simulate_duration
        .iter()
        .map(|(n, _)| n)
        .chain(&args.simulate_fail)
    {
        project.find(name)?;
    }
    let plan =
        super::plan_cmd::make_plan(&prepared, &args.templates, args.rebuild, args.rebuild_base)?;
    let jobs = args.jobs.or(project.config.jobs).unwrap_or(8).max(1);
    let build_id = new_build_id();
    let mut root_images = vec![None; project.layers.len()];
    let builder: Arc<dyn Builder> = match &prepared.live {
        Live::Simulate => Arc::new(SimulateBuilder {
            durations: args
                .simulate_duration
                .iter()
                .cloned()
                .collect::<HashMap<_, _>>(),
            fail: args.simulate_fail.iter().cloned().collect::<HashSet<_>>(),
        }),
        Live::Local { store, sandbox } => Arc::new(LocalBuilder {
            store: store.clone(),
            target: prepared.target.clone(),
            sandbox: *sandbox,
        }),
        Live::Ec2 {
            aws,
            root_images: roots,
            ..
        } => {
            root_images = roots.clone();
            let settings = ec2_settings(&project.config)?;
            let poller = Poller::new(aws.clone(), settings.poll_interval);
            prepared.runtime.spawn(poller.clone().run());
            Arc::new(Ec2Builder {
                aws: aws.clone(),
                target: prepared.target.clone(),
                settings,
                cache: prepared.cache.clone(),
                poller,
            })
        }
    };
    // Remote hits are kept locally; entries whose image failed
    // verification are dropped and the layer is rebuilt (`stale`).
    prepared.settle(&plan, true)?;
    let builder: Arc<dyn Builder> = match &prepared.shared {
        Some(shared) => Arc::new(LeasedBuilder {
            inner: builder,
            shared: shared.clone(),
            lease_ttl: Duration::from_secs(120),
            poll: match &prepared.live {
                Live::Ec2 { .. } => ec2_settings(&project.config)?.poll_interval,
                Live::Simulate | Live::Local { .. } => Duration::from_millis(200),
            },
        }),
        None => builder,
    };
    for l in &plan.layers {
        if l.action == Action::Build {
            let layer = &project.layers[l.index];
            if layer.parent.is_none() {
                if let Some(image) = &root_images[l.index] {
                    eprintln!("{}: source image {image}", layer.name());
                }
            }
        }
    }
    let opts = RunOptions {
        build_id: build_id.clone(),
        jobs,
        keep_going: args.keep_going,
        root_images,
    };
    let mut reporter = reporter_for_stderr();
    let outcome = prepared.runtime.block_on(run_plan(
        project,
        &plan,
        builder,
        &prepared.cache,
        &opts,
        reporter.as_mut(),
    ))?;

    if !outcome.interrupted {
        project.save_memo_later();
    }
    let mut copy_failures = 0;
    if let (Live::Ec2 { aws, account, .. }, false) = (&prepared.live, outcome.interrupted) {
        let replicas: Vec<crate::builder::ec2::Replica> = plan
            .layers
            .iter()
            .zip(&outcome.layers)
            .filter_map(|(l, done)| {
                let regions = layer_regions(project, l.index, &args.regions);
                if regions.is_empty() {
                    return None;
                }
                Some(crate::builder::ec2::Replica {
                    layer: done.name.clone(),
                    hash: l.hash.clone(),
                    parent_hash: project.layers[l.index]
                        .parent
                        .and_then(|p| prepared.hashes[p].hash())
                        .map(|h| h.to_string()),
                    image: done.image.clone()?,
                    regions,
                })
            })
            .collect();
        if !replicas.is_empty() {
            let settings = ec2_settings(&project.config)?;
            copy_failures = prepared.runtime.block_on(crate::builder::ec2::replicate(
                aws,
                account,
                prepared.cache.clone(),
                &build_id,
                replicas,
                &settings,
            ));
        }
    }
    if let Some(path) = &args.summary {
        let summary = BuildSummary {
            schema_version: 1,
            build_id: build_id.clone(),
            target: plan.target.clone(),
            started_at: rfc3339(outcome.started_at),
            finished_at: rfc3339(outcome.finished_at),
            wall_seconds: outcome.wall_seconds,
            layers: outcome.layers.clone(),
        };
        let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
        std::fs::write(path, json + "\n").map_err(|e| Error::io(path, e))?;
    }
    let (built, reused, failed, skipped, cancelled) = (
        outcome.count(LayerResult::Built),
        outcome.count(LayerResult::Reused),
        outcome.count(LayerResult::Failed),
        outcome.count(LayerResult::Skipped),
        outcome.count(LayerResult::Cancelled),
    );
    let mut line = format!(
        "{built} built, {reused} reused, {failed} failed, {skipped} skipped in {:.2}s (build {build_id}, target {})",
        outcome.wall_seconds, plan.target
    );
    if cancelled > 0 {
        line.push_str(&format!(", {cancelled} cancelled"));
    }
    eprintln!("{line}");
    if outcome.interrupted {
        return Err(Error::Interrupted);
    }
    if copy_failures > 0 {
        return Err(Error::BuildFailed(format!(
            "{copy_failures} region cop{} failed",
            if copy_failures == 1 { "y" } else { "ies" }
        )));
    }
    if failed > 0 {
        return Err(Error::BuildFailed(format!(
            "{failed} layer{} failed",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(0)
}

/// The ec2 builder's settings from `amimake.yaml`; a missing bucket is a
/// configuration error naming the key.
fn ec2_settings(config: &crate::config::Config) -> Result<Ec2Settings> {
    let b = &config.builder;
    let bucket = b.artifacts_bucket.clone().ok_or_else(|| {
        Error::Usage(
            "an ec2 build needs `builder.artifacts_bucket` in amimake.yaml: an S3 bucket in the build region where amimake uploads layer bundles and builders upload their logs".into(),
        )
    })?;
    let duration = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(text) => crate::template::load::parse_duration(text)
                .map_err(|e| Error::Usage(format!("amimake.yaml: builder.{key}: {e}"))),
        }
    };
    Ok(Ec2Settings {
        artifacts_bucket: bucket,
        artifacts_prefix: b
            .artifacts_prefix
            .clone()
            .unwrap_or_else(|| "amimake".into()),
        subnet: b.subnet.clone(),
        security_groups: b.security_groups.clone(),
        instance_profile: b.instance_profile.clone(),
        poll_interval: duration("poll_interval", &b.poll_interval, Duration::from_secs(5))?,
        max_wait: duration("max_wait", &b.max_wait, Duration::from_secs(2 * 3600))?,
    })
}

/// The regions a layer's image should also be in: `regions:` of
/// amimake.yaml, of the templates along its chain, and `--regions`.
pub(crate) fn layer_regions(
    project: &crate::template::Project,
    index: usize,
    extra: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = project.config.regions.clone();
    for &i in &project.layers[index].chain {
        out.extend(project.layers[i].regions.iter().cloned());
    }
    out.extend(extra.iter().cloned());
    out.sort();
    out.dedup();
    out
}
