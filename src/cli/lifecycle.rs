//! Living with images for months: `tree`, `delete`, `share`/`unshare`,
//! `drift`, and image garbage collection (`gc` without `--orphans`). All
//! work on the ec2 target of the current account and region, through the
//! local cache's record of which image stands for which layer hash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;

use clap::Args;
use serde::Serialize;

use super::plan_cmd::{make_plan, prepare, Prepared};
use super::{BackendArgs, TextOrJson};
use crate::aws::ImageInfo;
use crate::backend::BackendKind;
use crate::cache::CacheEntry;
use crate::error::{Error, Result};
use crate::executor::plan::Reason;
use crate::report::human_seconds;

fn ec2() -> Result<Prepared> {
    prepare(&BackendArgs {
        backend: Some(BackendKind::Ec2),
        base_ami: None,
    })
}

fn aws_of(p: &Prepared) -> &crate::aws::Aws {
    match &p.live {
        super::plan_cmd::Live::Ec2 { aws, .. } => aws,
        _ => unreachable!("lifecycle commands prepare the ec2 backend"),
    }
}

/// Every cached layer of this account and region, by hash.
struct Entries {
    by_hash: HashMap<String, CacheEntry>,
}

impl Entries {
    fn load(p: &Prepared) -> Result<Entries> {
        let by_hash = p
            .cache
            .list(Some(&p.target))?
            .into_iter()
            .map(|(e, _)| (e.hash.to_string(), e))
            .collect();
        Ok(Entries { by_hash })
    }

    /// A template name (its current hash) or an AMI ID.
    fn resolve(&self, p: &Prepared, what: &str) -> Result<CacheEntry> {
        if what.starts_with("ami-") {
            return self
                .by_hash
                .values()
                .find(|e| e.image == what)
                .cloned()
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{what} is not an image amimake built in {}",
                        p.target
                    ))
                });
        }
        let i = p.project.find(what)?;
        let hash = p.hashes[i]
            .hash()
            .ok_or_else(|| Error::Usage(format!("`{what}` has no hash")))?;
        self.by_hash.get(hash.as_str()).cloned().ok_or_else(|| {
            Error::Usage(format!(
                "`{what}` is not built in {} (its current hash {}); `amimake build {what}` builds it",
                p.target,
                hash.short()
            ))
        })
    }

    /// Root first, ending with `e`.
    fn chain(&self, e: &CacheEntry) -> Vec<CacheEntry> {
        let mut out = vec![e.clone()];
        let mut seen = HashSet::new();
        while let Some(parent) = out.last().and_then(|l| l.parent_hash.clone()) {
            if !seen.insert(parent.clone()) {
                break;
            }
            match self.by_hash.get(&parent) {
                Some(p) => out.push(p.clone()),
                None => break,
            }
        }
        out.reverse();
        out
    }

    /// Everything built on `hash`, parents before children.
    fn dependents(&self, hash: &str) -> Vec<CacheEntry> {
        let mut out = Vec::new();
        let mut frontier = vec![hash.to_string()];
        while let Some(h) = frontier.pop() {
            let mut kids: Vec<&CacheEntry> = self
                .by_hash
                .values()
                .filter(|e| e.parent_hash.as_deref() == Some(h.as_str()))
                .collect();
            kids.sort_by(|a, b| a.template.cmp(&b.template));
            for k in kids {
                frontier.push(k.hash.to_string());
                out.push(k.clone());
            }
        }
        out
    }
}

fn describe(p: &Prepared, entries: &[CacheEntry]) -> Result<HashMap<String, ImageInfo>> {
    let ids: Vec<String> = entries.iter().map(|e| e.image.clone()).collect();
    let found = p
        .runtime
        .block_on(aws_of(p).describe_images(&ids))
        .map_err(|e| Error::BuildFailed(e.to_string()))?;
    Ok(found.into_iter().map(|i| (i.id.clone(), i)).collect())
}

// --- tree ---

#[derive(Debug, Args)]
pub struct TreeArgs {
    /// A template name or an AMI ID.
    pub what: String,
    /// Show what is built on it instead of what it is built on.
    #[arg(long)]
    pub dependents: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
}

#[derive(Serialize)]
struct TreeLayer {
    name: String,
    hash: String,
    image: String,
    parent_hash: Option<String>,
    snapshot_gb: Option<u64>,
    build_seconds: Option<f64>,
}

pub fn tree(args: TreeArgs) -> Result<i32> {
    let p = ec2()?;
    let entries = Entries::load(&p)?;
    let me = entries.resolve(&p, &args.what)?;
    let layers = if args.dependents {
        let mut v = vec![me.clone()];
        v.extend(entries.dependents(me.hash.as_str()));
        v
    } else {
        entries.chain(&me)
    };
    let info = describe(&p, &layers)?;
    let rows: Vec<TreeLayer> = layers
        .iter()
        .map(|e| TreeLayer {
            name: e.template.clone(),
            hash: e.hash.to_string(),
            image: e.image.clone(),
            parent_hash: e.parent_hash.clone(),
            snapshot_gb: info.get(&e.image).map(|i| i.size_gb),
            build_seconds: e.build_seconds,
        })
        .collect();
    let saved: f64 = rows.iter().filter_map(|r| r.build_seconds).sum();
    if args.format == TextOrJson::Json {
        #[derive(Serialize)]
        struct Out {
            schema_version: u32,
            target: String,
            layers: Vec<TreeLayer>,
            saved_seconds: f64,
        }
        super::print_json(&Out {
            schema_version: 1,
            target: p.target.clone(),
            layers: rows,
            saved_seconds: saved,
        })?;
        return Ok(0);
    }
    let depth: HashMap<&str, usize> = {
        let mut d = HashMap::new();
        for r in &rows {
            let parent = r.parent_hash.as_deref().and_then(|h| d.get(h).copied());
            d.insert(r.hash.as_str(), parent.map(|x: usize| x + 1).unwrap_or(0));
        }
        d
    };
    for r in &rows {
        let indent = "  ".repeat(depth[r.hash.as_str()]);
        let size = r
            .snapshot_gb
            .map(|g| format!("{g} GiB"))
            .unwrap_or_else(|| "image gone".into());
        let built = r
            .build_seconds
            .map(human_seconds)
            .unwrap_or_else(|| "unknown".into());
        println!(
            "{indent}{}  {}  {}  {size}  built in {built}",
            r.name,
            r.image,
            &r.hash[..12]
        );
    }
    println!(
        "{} layer{}; reusing {} saves {} of building",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        if args.dependents {
            "them"
        } else {
            "this chain"
        },
        human_seconds(saved)
    );
    Ok(0)
}

// --- delete ---

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// A template name or an AMI ID.
    pub what: String,
    /// Delete even though other layers were built on it.
    #[arg(long)]
    pub force: bool,
}

/// Deregisters `e`'s image, deletes its snapshots, and drops it from both caches.
fn remove_image(p: &Prepared, e: &CacheEntry, info: Option<&ImageInfo>) -> Result<()> {
    let snapshots = info.map(|i| i.snapshots.clone()).unwrap_or_default();
    p.runtime
        .block_on(aws_of(p).delete_image(&e.image, &snapshots))
        .map_err(|err| Error::BuildFailed(err.to_string()))?;
    p.cache.remove(&e.hash, &e.target)?;
    if let Some(shared) = &p.shared {
        if let Err(err) = p.runtime.block_on(shared.delete(&e.hash, &e.target)) {
            tracing::warn!(
                "could not remove {} from the shared cache: {err}",
                e.hash.short()
            );
        }
    }
    Ok(())
}

pub fn delete(args: DeleteArgs) -> Result<i32> {
    let p = ec2()?;
    let entries = Entries::load(&p)?;
    let me = entries.resolve(&p, &args.what)?;
    let deps = entries.dependents(me.hash.as_str());
    if !deps.is_empty() && !args.force {
        let list: Vec<String> = deps
            .iter()
            .map(|d| format!("{} ({})", d.template, d.image))
            .collect();
        return Err(Error::Usage(format!(
            "{} ({}) has {} dependent image{}: {}; delete those first, or pass --force to delete it anyway",
            me.template,
            me.image,
            deps.len(),
            if deps.len() == 1 { "" } else { "s" },
            list.join(", ")
        )));
    }
    let info = describe(&p, std::slice::from_ref(&me))?;
    remove_image(&p, &me, info.get(&me.image))?;
    println!("deleted {} ({}) and its snapshots", me.template, me.image);
    Ok(0)
}

// --- share / unshare ---

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// A template name or an AMI ID.
    pub what: String,
    /// Account IDs to share with (comma separated).
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["org", "public"])]
    pub accounts: Vec<String>,
    /// An AWS Organizations ARN (launch permission only; snapshots cannot be
    /// shared with an organization).
    #[arg(long)]
    pub org: Option<String>,
    /// Everyone.
    #[arg(long)]
    pub public: bool,
    /// Also the images the layer is built on.
    #[arg(long)]
    pub chain: bool,
    /// Do not ask before making images public.
    #[arg(long)]
    pub yes: bool,
}

pub fn share(args: ShareArgs, remove: bool) -> Result<i32> {
    let p = ec2()?;
    let entries = Entries::load(&p)?;
    let me = entries.resolve(&p, &args.what)?;
    let targets = if args.chain {
        entries.chain(&me)
    } else {
        vec![me]
    };
    if args.public && !remove {
        eprintln!(
            "warning: making {} image{} and {} snapshots PUBLIC: anyone can launch them and read everything they contain",
            targets.len(),
            if targets.len() == 1 { "" } else { "s" },
            if targets.len() == 1 { "its" } else { "their" }
        );
        if !args.yes {
            if !std::io::stdin().is_terminal() {
                return Err(Error::Usage(
                    "refusing to make images public without --yes".into(),
                ));
            }
            eprint!("continue? [y/N] ");
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                return Err(Error::Usage("nothing shared".into()));
            }
        }
    }
    let info = describe(&p, &targets)?;
    for e in &targets {
        let snapshots = info
            .get(&e.image)
            .map(|i| i.snapshots.clone())
            .unwrap_or_default();
        p.runtime
            .block_on(aws_of(&p).set_sharing(
                &e.image,
                &snapshots,
                &args.accounts,
                args.org.as_deref(),
                args.public,
                remove,
            ))
            .map_err(|err| Error::BuildFailed(err.to_string()))?;
        let whom = if args.public {
            "everyone".to_string()
        } else {
            let mut w = args.accounts.join(", ");
            if let Some(org) = &args.org {
                if !w.is_empty() {
                    w.push_str(", ");
                }
                w.push_str(org);
            }
            w
        };
        println!(
            "{} {} ({}) {} {whom}",
            if remove { "unshared" } else { "shared" },
            e.template,
            e.image,
            if remove { "from" } else { "with" }
        );
    }
    Ok(0)
}

// --- drift ---

#[derive(Debug, Args)]
pub struct DriftArgs {
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
}

pub fn drift(args: DriftArgs) -> Result<i32> {
    let p = ec2()?;
    let plan = make_plan(&p, &[], false, false)?;
    #[derive(Serialize)]
    struct Drifted {
        root: String,
        changes: Vec<String>,
        invalidated: Vec<String>,
    }
    let mut out = Vec::new();
    for l in plan
        .layers
        .iter()
        .filter(|l| l.reason == Some(Reason::Drift))
    {
        let invalidated: Vec<String> = p
            .project
            .descendants(l.index)
            .into_iter()
            .map(|i| p.project.layers[i].name().to_string())
            .collect();
        out.push(Drifted {
            root: p.project.layers[l.index].name().to_string(),
            changes: l.changes.iter().map(|c| c.to_string()).collect(),
            invalidated,
        });
    }
    if args.format == TextOrJson::Json {
        #[derive(Serialize)]
        struct Out {
            schema_version: u32,
            target: String,
            drifted: Vec<Drifted>,
        }
        super::print_json(&Out {
            schema_version: 1,
            target: p.target.clone(),
            drifted: out,
        })?;
        return Ok(0);
    }
    if out.is_empty() {
        println!("no drift: every root's source resolves to the image its layers were built from");
    }
    for d in &out {
        println!("{}: {}", d.root, d.changes.join("; "));
        println!(
            "  a build would rebuild {} layer{}: {}",
            d.invalidated.len(),
            if d.invalidated.len() == 1 { "" } else { "s" },
            d.invalidated.join(", ")
        );
    }
    Ok(0)
}

// --- gc of images ---

/// What `gc` removes: images of hashes no current template produces, older
/// than `older_than` seconds, beyond the newest `keep` per template, and
/// never one that a kept image is built on.
pub fn gc_candidates(
    entries: &[CacheEntry],
    current: &HashSet<String>,
    now: i64,
    older_than: i64,
    keep: usize,
) -> Vec<CacheEntry> {
    let mut by_template: BTreeMap<&str, Vec<&CacheEntry>> = BTreeMap::new();
    for e in entries {
        by_template.entry(e.template.as_str()).or_default().push(e);
    }
    let mut kept_newest: HashSet<String> = HashSet::new();
    for list in by_template.values_mut() {
        list.sort_by_key(|e| std::cmp::Reverse(e.created_at));
        kept_newest.extend(list.iter().take(keep).map(|e| e.hash.to_string()));
    }
    let mut candidates: HashSet<String> = entries
        .iter()
        .filter(|e| !current.contains(e.hash.as_str()))
        .filter(|e| now - e.created_at >= older_than)
        .filter(|e| !kept_newest.contains(e.hash.as_str()))
        .map(|e| e.hash.to_string())
        .collect();
    // An image with a live (kept) descendant is never a candidate.
    let by_hash: HashMap<&str, &CacheEntry> =
        entries.iter().map(|e| (e.hash.as_str(), e)).collect();
    let live: Vec<&CacheEntry> = entries
        .iter()
        .filter(|e| !candidates.contains(e.hash.as_str()))
        .collect();
    for e in live {
        let mut parent = e.parent_hash.as_deref();
        let mut steps = 0;
        while let Some(ph) = parent {
            candidates.remove(ph);
            parent = by_hash.get(ph).and_then(|p| p.parent_hash.as_deref());
            steps += 1;
            if steps > 64 {
                break;
            }
        }
    }
    let mut out: Vec<CacheEntry> = entries
        .iter()
        .filter(|e| candidates.contains(e.hash.as_str()))
        .cloned()
        .collect();
    out.sort_by(|a, b| {
        a.template
            .cmp(&b.template)
            .then(a.created_at.cmp(&b.created_at))
    });
    out
}

pub fn gc_images(dry_run: bool, older_than: Option<&str>, keep: usize) -> Result<i32> {
    let p = ec2()?;
    let older_than = match older_than {
        Some(d) => crate::template::load::parse_duration(d)
            .map_err(Error::Usage)?
            .as_secs() as i64,
        None => 0,
    };
    let current: HashSet<String> = p
        .hashes
        .iter()
        .filter_map(|h| h.hash())
        .map(|h| h.to_string())
        .collect();
    let entries: Vec<CacheEntry> = p
        .cache
        .list(Some(&p.target))?
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let candidates = gc_candidates(
        &entries,
        &current,
        crate::cache::now_unix(),
        older_than,
        keep,
    );
    let info = describe(&p, &candidates)?;
    let price = p
        .project
        .config
        .gc
        .snapshot_price_per_gb_month
        .unwrap_or(DEFAULT_SNAPSHOT_PRICE);
    let mut gb = 0u64;
    for e in &candidates {
        let i = info.get(&e.image);
        let size = i.map(|i| i.size_gb).unwrap_or(0);
        gb += size;
        println!(
            "{} {} ({}, {}, {size} GiB, built {} ago)",
            if dry_run { "would delete" } else { "deleting" },
            e.image,
            e.template,
            e.hash.short(),
            human_seconds((crate::cache::now_unix() - e.created_at).max(0) as f64)
        );
        if !dry_run {
            match i {
                Some(i) => remove_image(&p, e, Some(i))?,
                None => p.cache.remove(&e.hash, &e.target)?,
            }
        }
    }
    println!(
        "{} image{} {}; {gb} GiB of snapshots, about ${:.2} a month at ${price}/GB-month",
        candidates.len(),
        if candidates.len() == 1 { "" } else { "s" },
        if dry_run { "to delete" } else { "deleted" },
        gb as f64 * price
    );
    Ok(0)
}

/// EBS snapshot storage, standard tier, us-east-1 ($/GB-month).
pub const DEFAULT_SNAPSHOT_PRICE: f64 = 0.05;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::LayerHash;

    fn e(n: u8, template: &str, parent: Option<u8>, created: i64) -> CacheEntry {
        CacheEntry {
            hash: LayerHash::parse(&format!("{n:064x}")).unwrap(),
            target: "ec2/1/r".into(),
            image: format!("ami-{n:017x}"),
            parent_hash: parent.map(|p| format!("{p:064x}")),
            template: template.into(),
            created_at: created,
            build_seconds: None,
            build_id: None,
        }
    }

    #[test]
    fn gc_keeps_current_newest_and_anything_under_a_live_image() {
        // root v1 (1) <- app v1 (2); root v2 (3) <- app v2 (4); old (5) under root v1.
        let entries = vec![
            e(1, "root", None, 100),
            e(2, "app", Some(1), 110),
            e(3, "root", None, 200),
            e(4, "app", Some(3), 210),
            e(5, "tool", Some(1), 120),
        ];
        let current: HashSet<String> = [3u8, 4, 5].iter().map(|n| format!("{n:064x}")).collect();
        let names = |v: Vec<CacheEntry>| v.into_iter().map(|e| e.image).collect::<Vec<_>>();
        // tool (5) is current and built on root v1: root v1 is protected.
        assert_eq!(
            names(gc_candidates(&entries, &current, 1000, 0, 0)),
            vec![format!("ami-{:017x}", 2)]
        );
        // keep 2 per template keeps app v1 too.
        assert!(gc_candidates(&entries, &current, 1000, 0, 2).is_empty());
        // Too young to collect.
        assert!(gc_candidates(&entries, &current, 1000, 10_000, 0).is_empty());
        // Without the tool, root v1 and app v1 both go.
        let current: HashSet<String> = [3u8, 4].iter().map(|n| format!("{n:064x}")).collect();
        let entries: Vec<CacheEntry> = entries
            .into_iter()
            .filter(|x| x.template != "tool")
            .collect();
        assert_eq!(
            names(gc_candidates(&entries, &current, 1000, 0, 0)).len(),
            2
        );
    }
}
