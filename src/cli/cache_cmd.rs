//! `amimake cache ls|forget|stats`: the local layer cache.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::TextOrJson;
use crate::cache::now_unix;
use crate::error::Result;
use crate::report::human_seconds;

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Publish local entries to the shared cache (`cache.s3`).
    Push {
        /// Only entries for this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Prefetch from the shared cache what the templates need.
    Pull {
        /// Templates to pull (default: all) with their ancestors.
        templates: Vec<String>,
        #[command(flatten)]
        backend: super::BackendArgs,
    },
    /// Check cached ec2 entries against EC2: the image exists, is available
    /// and carries its layer-hash tag.
    Verify {
        /// Drop stale entries (locally, and from the shared cache when writable).
        #[arg(long)]
        evict: bool,
    },
    /// List cached layers (hash, target, image, template, age).
    Ls {
        /// Only entries for this target (e.g. `simulate`).
        #[arg(long)]
        target: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: TextOrJson,
    },
    /// Forget the entries of a template, or of a hash (at least 8 hex digits).
    Forget {
        /// Template name or layer hash (prefix).
        what: String,
        #[arg(long)]
        target: Option<String>,
    },
    /// Entry counts, build history totals and the database size.
    Stats {
        #[arg(long, value_enum, default_value = "text")]
        format: TextOrJson,
    },
}

#[derive(Serialize)]
struct LsJson {
    schema_version: u32,
    entries: Vec<LsEntry>,
}

#[derive(Serialize)]
struct LsEntry {
    #[serde(flatten)]
    entry: crate::cache::CacheEntry,
    last_used_at: i64,
}

pub fn run(args: CacheArgs) -> Result<i32> {
    if let CacheCommand::Pull { templates, backend } = &args.command {
        return pull(templates, backend);
    }
    let project = super::load_project()?;
    let cache = super::open_cache(&project)?;
    match args.command {
        CacheCommand::Pull { .. } => unreachable!("handled above"),
        CacheCommand::Push { target } => push(&project, &cache, target.as_deref())?,
        CacheCommand::Verify { evict } => verify(&project, &cache, evict)?,
        CacheCommand::Ls { target, format } => {
            let rows = cache.list(target.as_deref())?;
            match format {
                TextOrJson::Json => super::print_json(&LsJson {
                    schema_version: 1,
                    entries: rows
                        .into_iter()
                        .map(|(entry, last_used_at)| LsEntry {
                            entry,
                            last_used_at,
                        })
                        .collect(),
                })?,
                TextOrJson::Text => {
                    if rows.is_empty() {
                        println!("the cache at {} is empty", cache.path().display());
                    }
                    let now = now_unix();
                    for (e, _) in rows {
                        let age = human_seconds((now - e.created_at).max(0) as f64);
                        println!(
                            "{}  {:10}  {:24}  {}  ({age} old)",
                            e.hash.short(),
                            e.target,
                            e.image,
                            e.template
                        );
                    }
                }
            }
        }
        CacheCommand::Forget { what, target } => {
            let n = cache.forget(&what, target.as_deref())?;
            println!("forgot {n} entr{}", if n == 1 { "y" } else { "ies" });
        }
        CacheCommand::Stats { format } => {
            let mut s = cache.stats()?;
            let store = crate::builder::local::store_dir(&super::local_cache_dir(&project));
            s.local_tree_bytes = store
                .join("layers")
                .is_dir()
                .then(|| crate::builder::local::disk_usage(&store));
            match format {
                TextOrJson::Json => super::print_json(&s)?,
                TextOrJson::Text => {
                    println!("cache       {}", cache.path().display());
                    println!("entries     {} ({} templates)", s.entries, s.templates);
                    for (t, n) in &s.targets {
                        println!("  {t:10} {n}");
                    }
                    println!(
                        "builds      {} ({} failed), {} of building recorded",
                        s.builds,
                        s.builds_failed,
                        human_seconds(s.build_seconds_total)
                    );
                    println!("size        {} KiB", s.database_bytes / 1024);
                    if let Some(bytes) = s.local_tree_bytes {
                        println!(
                            "local trees {} MiB in {}",
                            bytes / (1024 * 1024),
                            store.display()
                        );
                    }
                }
            }
        }
    }
    Ok(0)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::error::Error::Usage(format!("cannot start the async runtime: {e}")))
}

fn no_shared() -> crate::error::Error {
    crate::error::Error::Usage(
        "no shared cache: set `cache.s3: s3://bucket/prefix` in amimake.yaml".into(),
    )
}

fn push(
    project: &crate::template::Project,
    cache: &crate::cache::LocalCache,
    target: Option<&str>,
) -> Result<()> {
    use crate::cache::LayerCache;
    let rt = runtime()?;
    let shared = super::shared_cache(project, None, &rt)?.ok_or_else(no_shared)?;
    if shared.mode == crate::cache::shared::Mode::ReadOnly {
        return Err(crate::error::Error::Usage(
            "cache.mode is read-only: nothing can be pushed".into(),
        ));
    }
    let entries = cache.list(target)?;
    let mut pushed = 0;
    for (entry, _) in &entries {
        let exists = rt
            .block_on(shared.get_unverified(&entry.hash, &entry.target))
            .map_err(|e| crate::error::Error::Cache(e.to_string()))?;
        if exists.is_none() {
            rt.block_on(LayerCache::put(&shared, entry))?;
            pushed += 1;
        }
    }
    println!(
        "pushed {pushed} of {} entr{} to {}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        shared.url()
    );
    Ok(())
}

fn pull(templates: &[String], backend: &super::BackendArgs) -> Result<i32> {
    let p = super::plan_cmd::prepare(backend)?;
    if p.shared.is_none() {
        return Err(no_shared());
    }
    let plan = super::plan_cmd::make_plan(&p, templates, false, false)?;
    let mut pulled = 0;
    for l in &plan.layers {
        if l.tier == Some(crate::cache::Tier::Remote)
            && l.action == crate::executor::plan::Action::Reuse
        {
            if let Some(e) = &l.entry {
                p.cache.put_entry(e)?;
                pulled += 1;
            }
        }
    }
    let local = plan
        .layers
        .iter()
        .filter(|l| l.tier == Some(crate::cache::Tier::Local))
        .count();
    let missing = plan.layers.len() - pulled - local;
    println!(
        "pulled {pulled} entr{}; {local} already local; {missing} not in the shared cache",
        if pulled == 1 { "y" } else { "ies" }
    );
    Ok(0)
}

fn verify(
    project: &crate::template::Project,
    cache: &crate::cache::LocalCache,
    evict: bool,
) -> Result<()> {
    let rt = runtime()?;
    let aws = rt
        .block_on(crate::aws::Aws::connect(project.config.region.as_deref()))
        .map_err(crate::error::Error::Usage)?;
    let account = rt
        .block_on(aws.account())
        .map_err(|e| crate::error::Error::Usage(e.to_string()))?;
    let target = format!("ec2/{account}/{}", aws.region);
    let entries = cache.list(Some(&target))?;
    let images: Vec<String> = entries.iter().map(|(e, _)| e.image.clone()).collect();
    let found = rt
        .block_on(aws.describe_images(&images))
        .map_err(|e| crate::error::Error::Cache(e.to_string()))?;
    let shared = super::shared_cache(project, Some(aws.clone()), &rt)?;
    let mut stale = 0;
    for (e, _) in &entries {
        let img = found.iter().find(|i| i.id == e.image);
        let problem = match img {
            None => Some("image does not exist".to_string()),
            Some(i) if i.state != "available" => Some(format!("image is {}", i.state)),
            Some(i)
                if i.tags.get("amimake:layer-hash").map(String::as_str)
                    != Some(e.hash.as_str()) =>
            {
                Some("image lacks the matching amimake:layer-hash tag".to_string())
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            stale += 1;
            println!(
                "stale  {}  {}  {}: {problem}",
                e.hash.short(),
                e.template,
                e.image
            );
            if evict {
                cache.remove(&e.hash, &e.target)?;
                if let Some(s) = &shared {
                    if let Err(err) = rt.block_on(s.delete(&e.hash, &e.target)) {
                        tracing::warn!(
                            "could not evict {} from the shared cache: {err}",
                            e.hash.short()
                        );
                    }
                }
            }
        }
    }
    println!(
        "{} entr{} checked on {target}; {stale} stale{}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        if stale > 0 && !evict {
            " (run with --evict to drop them)"
        } else if stale > 0 {
            ", evicted"
        } else {
            ""
        }
    );
    Ok(())
}
