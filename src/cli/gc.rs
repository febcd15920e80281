//! `amimake gc --orphans`: find and remove cloud resources left behind by
//! builds that are no longer running (after `kill -9`, a crash or a lost
//! connection), by the local record of every resource created and by the
//! `amimake:build-id` tag on instances.

use std::collections::HashSet;

use clap::Args;

use crate::aws::Aws;
use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove builder instances and half-made images of builds that are no
    /// longer running.
    #[arg(long)]
    pub orphans: bool,
    /// Remove local-backend layer trees that no cache entry references,
    /// and staging directories of builds that are no longer running.
    #[arg(long)]
    pub local: bool,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Images: only those built longer ago than this (e.g. `30d`).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// Images: always keep the newest N of each template.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep: usize,
}

/// Tagged instances of builds unknown here are only orphans this old.
const FOREIGN_ORPHAN_AGE_SECS: i64 = 24 * 3600;

fn pid_alive(pid: i64) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn run(args: GcArgs) -> Result<i32> {
    if !args.orphans && !args.local {
        return super::lifecycle::gc_images(args.dry_run, args.older_than.as_deref(), args.keep);
    }
    if args.local {
        gc_local(args.dry_run)?;
    }
    if !args.orphans {
        return Ok(0);
    }
    let project = super::load_project()?;
    let cache = super::open_cache(&project)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let aws = Aws::connect(project.config.region.as_deref())
            .await
            .map_err(Error::Usage)?;
        let aws_err = |e: crate::aws::AwsError| Error::BuildFailed(e.to_string());
        let records = cache.resources()?;
        let running: HashSet<&str> = records
            .iter()
            .filter(|r| r.pid != std::process::id() as i64 && pid_alive(r.pid))
            .map(|r| r.build_id.as_str())
            .collect();
        let known: HashSet<String> = records
            .iter()
            .map(|r| r.build_id.clone())
            .chain(cache.build_ids()?)
            .collect();
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removing"
        };
        let mut removed = 0usize;

        // By record.
        let mut instances: Vec<(String, Option<String>)> = Vec::new(); // (instance, record id)
        for r in records
            .iter()
            .filter(|r| !running.contains(r.build_id.as_str()))
        {
            if r.region.as_deref().is_some_and(|reg| reg != aws.region) {
                continue;
            }
            match r.kind.as_str() {
                "instance" => {
                    if let Some(token) = r.id.strip_prefix("pending:") {
                        for i in aws
                            .instances_by_token(&r.build_id, token)
                            .await
                            .map_err(aws_err)?
                        {
                            instances.push((i, Some(r.id.clone())));
                        }
                        if !args.dry_run {
                            cache.forget_resource(&r.id)?;
                        }
                    } else {
                        instances.push((r.id.clone(), Some(r.id.clone())));
                    }
                }
                "image" => {
                    let ids: Vec<String> = match r.id.strip_prefix("pending-image:") {
                        Some(name) => aws.images_named(name).await.map_err(aws_err)?,
                        None => vec![r.id.clone()],
                    };
                    for image in ids {
                        let info = aws
                            .describe_images(std::slice::from_ref(&image))
                            .await
                            .map_err(aws_err)?;
                        let snapshots = info
                            .first()
                            .map(|i| i.snapshots.clone())
                            .unwrap_or_default();
                        println!(
                            "{verb} image {image} (layer {}, build {}) and {} snapshot(s)",
                            r.layer,
                            r.build_id,
                            snapshots.len()
                        );
                        removed += 1;
                        if !args.dry_run {
                            aws.delete_image(&image, &snapshots)
                                .await
                                .map_err(aws_err)?;
                        }
                    }
                    if !args.dry_run {
                        cache.forget_resource(&r.id)?;
                    }
                }
                _ => {}
            }
        }

        // By tag.
        let now = crate::cache::now_unix();
        for (id, build, launched) in aws.tagged_instances().await.map_err(aws_err)? {
            if running.contains(build.as_str()) || instances.iter().any(|(i, _)| *i == id) {
                continue;
            }
            let old = launched.is_some_and(|t| now - t > FOREIGN_ORPHAN_AGE_SECS);
            if known.contains(&build) || old {
                instances.push((id, None));
            }
        }
        let states = aws
            .instance_states(&instances.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>())
            .await
            .map_err(aws_err)?;
        let mut to_terminate = Vec::new();
        for (id, record) in &instances {
            match states.get(id).map(String::as_str) {
                None | Some("terminated") | Some("shutting-down") => {}
                Some(state) => {
                    println!("{verb} instance {id} ({state})");
                    to_terminate.push(id.clone());
                }
            }
            if let (false, Some(rec)) = (args.dry_run, record) {
                cache.forget_resource(rec)?;
            }
        }
        removed += to_terminate.len();
        if !args.dry_run {
            aws.terminate(&to_terminate).await.map_err(aws_err)?;
        }
        if removed == 0 {
            println!("no orphans found");
        } else if args.dry_run {
            println!("{removed} orphan(s) found; run without --dry-run to remove them");
        } else {
            println!("removed {removed} orphan(s)");
        }
        Ok(0)
    })
}

/// Removes local trees without a cache entry, and stale staging directories.
fn gc_local(dry_run: bool) -> Result<()> {
    use crate::builder::local;
    let project = super::load_project()?;
    let cache = super::open_cache(&project)?;
    let store = local::store_dir(&super::local_cache_dir(&project));
    let target = local::target();
    let referenced: HashSet<String> = cache
        .list(Some(&target))?
        .into_iter()
        .map(|(e, _)| e.hash.to_string())
        .collect();
    let verb = if dry_run { "would remove" } else { "removing" };
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut remove = |path: &std::path::Path, why: &str| -> Result<()> {
        let size = local::disk_usage(path);
        println!(
            "{verb} {} ({why}, {} MiB)",
            path.display(),
            size / (1024 * 1024)
        );
        count += 1;
        bytes += size;
        if !dry_run {
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    };
    if let Ok(dirs) = std::fs::read_dir(store.join("layers")) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) {
                remove(&d.path(), "no cache entry")?;
            }
        }
    }
    if let Ok(dirs) = std::fs::read_dir(store.join("staging")) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let pid: Option<i64> = name.split('-').nth(1).and_then(|p| p.parse().ok());
            if !pid.is_some_and(pid_alive) {
                remove(&d.path(), "unfinished build")?;
            }
        }
    }
    println!(
        "{} local tree{} {}, {} MiB",
        count,
        if count == 1 { "" } else { "s" },
        if dry_run { "to remove" } else { "removed" },
        bytes / (1024 * 1024)
    );
    Ok(())
}
