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
    let project = super::load_project()?;
    let cache = super::open_cache(&project)?;
    match args.command {
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
            let s = cache.stats()?;
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
                }
            }
        }
    }
    Ok(0)
}
