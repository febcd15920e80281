//! The command line: clap definitions (doc comments become `--help`) and
//! one module per subcommand.

mod build;
mod cache_cmd;
mod explain;
mod export;
mod gc;
mod graph;
mod hash_cmd;
mod key;
mod lifecycle;
mod plan_cmd;
mod show;
mod validate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::BackendKind;
use crate::cache::{sqlite::cache_dir, LocalCache};
use crate::config::find_root;
use crate::error::{Error, Result};
use crate::hash::{hash_all, HashState};
use crate::template::resolve::Project;

/// Incremental, content-addressed AMI builds from layered YAML templates.
///
/// Each template is one layer built on its parent's image; each layer has a
/// content hash, and caches map hashes to images, so a build rebuilds only
/// what changed and everything below it.
///
/// Start with `amimake graph`, `amimake plan` and `amimake explain <t>`.
#[derive(Debug, Parser)]
#[command(name = "amimake", version, max_term_width = 100)]
pub struct Cli {
    /// Change to DIR before doing anything (the project root is found by
    /// walking up from there to `amimake.yaml`).
    #[arg(short = 'C', value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every template and amimake.yaml; report every error (exit 2).
    Validate,
    /// Print a template as written, or resolved along its chain.
    Show(show::ShowArgs),
    /// Print layer hashes (offline; unresolved sources give no hash).
    Hash(hash_cmd::HashArgs),
    /// Print the layer DAG, a chain, or a template's dependents.
    Graph(graph::GraphArgs),
    /// Show what a build would do and why, with time estimates.
    Plan(plan_cmd::PlanArgs),
    /// Build the targets' missing layers (ancestors first), reusing the rest.
    Build(build::BuildArgs),
    /// Explain, field by field, why a template would be rebuilt.
    Explain(explain::ExplainArgs),
    /// Inspect and manage the local layer cache.
    Cache(cache_cmd::CacheArgs),
    /// Export a local layer as a tar, raw or qcow2 image.
    Export(export::ExportArgs),
    /// Delete images no template needs any more; with `--orphans`/`--local`,
    /// what killed builds left behind.
    Gc(gc::GcArgs),
    /// Signing keys for shared-cache records.
    Key(key::KeyArgs),
    /// A layer's chain (or dependents) with images, sizes and build time saved.
    Tree(lifecycle::TreeArgs),
    /// Deregister a layer's image; refused while layers are built on it.
    Delete(lifecycle::DeleteArgs),
    /// Share an image (and its snapshots) with accounts, an organization or everyone.
    Share(lifecycle::ShareArgs),
    /// Take back what `share` granted.
    Unshare(lifecycle::ShareArgs),
    /// What a source-image update would invalidate, without building.
    Drift(lifecycle::DriftArgs),
}

/// Output formats shared by several commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

/// Backend selection shared by plan, build, hash and show.
#[derive(Clone, Debug, Args)]
pub struct BackendArgs {
    /// Backend whose targets and hashes to use (default: `backend:` in
    /// amimake.yaml, else ec2).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Use this image instead of every root's `source` (ec2, simulate).
    #[arg(long, value_name = "AMI")]
    pub base_ami: Option<String>,
}

pub fn run(cli: Cli) -> Result<i32> {
    if let Some(dir) = &cli.dir {
        std::env::set_current_dir(dir).map_err(|e| {
            Error::Usage(format!("cannot change to directory {}: {e}", dir.display()))
        })?;
    }
    match cli.command {
        Command::Validate => validate::run(),
        Command::Show(a) => show::run(a),
        Command::Hash(a) => hash_cmd::run(a),
        Command::Graph(a) => graph::run(a),
        Command::Plan(a) => plan_cmd::run(a),
        Command::Build(a) => build::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Cache(a) => cache_cmd::run(a),
        Command::Export(a) => export::run_export(a),
        Command::Gc(a) => gc::run(a),
        Command::Key(a) => key::run(a),
        Command::Tree(a) => lifecycle::tree(a),
        Command::Delete(a) => lifecycle::delete(a),
        Command::Share(a) => lifecycle::share(a, false),
        Command::Unshare(a) => lifecycle::share(a, true),
        Command::Drift(a) => lifecycle::drift(a),
    }
}

/// Finds the project root from the working directory and loads it.
pub(crate) fn load_project() -> Result<Project> {
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let root = find_root(&cwd)?;
    Project::load_memoized(&root)
}

pub(crate) fn backend_of(project: &Project, args: &BackendArgs) -> Result<BackendKind> {
    if let Some(b) = args.backend {
        return Ok(b);
    }
    match &project.config.backend {
        None => Ok(BackendKind::Ec2),
        Some(name) => BackendKind::parse(name).ok_or_else(|| {
            Error::Usage(format!(
                "amimake.yaml: unknown backend `{name}`; use ec2, local or simulate"
            ))
        }),
    }
}

pub(crate) fn local_cache_dir(project: &Project) -> PathBuf {
    cache_dir(project.config.cache.dir.as_deref(), &project.root)
}

/// Opens the local cache for writing.
pub(crate) fn open_cache(project: &Project) -> Result<LocalCache> {
    LocalCache::open(&local_cache_dir(project))
}

/// Offline hashes for `backend` (recorded resolutions, never the network).
pub(crate) fn offline_hashes(
    project: &Project,
    backend: BackendKind,
    base_ami: Option<&str>,
) -> Result<Vec<HashState>> {
    let needs_recorded = backend == BackendKind::Ec2
        && base_ami.is_none()
        && project.layers.iter().any(|l| {
            l.source()
                .is_some_and(|s| s.ami.is_none() && s.ami_filter.is_some())
        });
    let recorded = if needs_recorded {
        LocalCache::open_existing(&local_cache_dir(project))?
    } else {
        None
    };
    let region = crate::backend::region(project.config.region.as_deref());
    Ok(hash_all(project, |layer| {
        crate::backend::offline_root_source(backend, layer, base_ami, &region, recorded.as_ref())
    }))
}

/// Standard output, buffered: commands that print a line per layer write
/// once, not once per line. Flushed when dropped.
pub(crate) fn stdout() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock())
}

/// Writes JSON to stdout with a trailing newline.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Usage(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// The shared S3 cache of `cache.s3` in amimake.yaml, if configured.
pub(crate) fn shared_cache(
    project: &Project,
    aws: Option<crate::aws::Aws>,
    runtime: &tokio::runtime::Runtime,
) -> Result<Option<crate::cache::shared::SharedCache>> {
    use crate::cache::shared::{
        parse_public_key, parse_s3_url, parse_signing_key, Mode, SharedCache,
    };
    let c = &project.config.cache;
    let Some(url) = &c.s3 else { return Ok(None) };
    let (bucket, prefix) = parse_s3_url(url).ok_or_else(|| {
        Error::Usage(format!(
            "amimake.yaml: cache.s3 `{url}` is not an s3://bucket/prefix URL"
        ))
    })?;
    let mode = match c.mode.as_deref() {
        None | Some("read-write") => Mode::ReadWrite,
        Some("read-only") => Mode::ReadOnly,
        Some(other) => {
            return Err(Error::Usage(format!(
                "amimake.yaml: cache.mode `{other}` is not `read-write` or `read-only`"
            )))
        }
    };
    let trusted = c
        .trusted_keys
        .iter()
        .map(|k| {
            parse_public_key(k)
                .map_err(|e| Error::Usage(format!("amimake.yaml: cache.trusted_keys: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let signer = match (
        std::env::var("AMIMAKE_SIGNING_KEY"),
        std::env::var_os("AMIMAKE_SIGNING_KEY_FILE"),
    ) {
        (Ok(k), _) if !k.trim().is_empty() => Some(
            parse_signing_key(&k).map_err(|e| Error::Usage(format!("AMIMAKE_SIGNING_KEY: {e}")))?,
        ),
        (_, Some(path)) => {
            let text =
                std::fs::read_to_string(&path).map_err(|e| Error::io(PathBuf::from(&path), e))?;
            Some(
                parse_signing_key(&text)
                    .map_err(|e| Error::Usage(format!("AMIMAKE_SIGNING_KEY_FILE: {e}")))?,
            )
        }
        _ => None,
    };
    let aws = match aws {
        Some(a) => a,
        None => runtime
            .block_on(crate::aws::Aws::connect(project.config.region.as_deref()))
            .map_err(Error::Usage)?,
    };
    Ok(Some(SharedCache {
        aws,
        bucket,
        prefix,
        mode,
        signer,
        trusted,
        concurrency: 32,
        disabled: Default::default(),
    }))
}
