//! Linking templates into the layer DAG and merging along each chain.
//!
//! Merge rules (root first): `build`, `variables` and `tags` merge key by key
//! with the child winning; `software.<manager>` lists concatenate parent
//! first with exact duplicates dropped, and two different pinned versions of
//! one package anywhere in a chain are an error; `files` and `provision` are
//! each layer's own and never inherited. A layer installs only its own
//! software delta (its entries not already in an ancestor).

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, Config};
use crate::error::{Diagnostic, Error, Loc, Result};
use crate::template::load::{discover, display_path, parse_duration, parse_template, Template};
use crate::template::memo::{self, Memo};
use crate::template::model::{BuildSettings, RebuildPolicy, Source};
use crate::template::packages::Manager;

/// A package in a layer's accumulated software, with the layer it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Package {
    pub spec: String,
    pub from: String,
}

/// A `files:` entry with its source resolved and hashed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolvedFile {
    /// Source path relative to the project root.
    pub src: String,
    pub src_path: PathBuf,
    pub is_dir: bool,
    pub dest: String,
    pub mode: Option<String>,
    pub owner: Option<String>,
    /// blake3 of the file, or of a directory's sorted entries.
    pub content_hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ResolvedStep {
    Script {
        /// Script path relative to the project root.
        path: String,
        abs: PathBuf,
        content_hash: String,
    },
    Shell(String),
}

/// One template, linked and merged: a layer of the DAG. Plain data: the
/// parsed document (with its source locations) is dropped after linking,
/// and `show` re-reads the file when it needs the template as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    /// Path relative to the project root, `/` separated.
    pub file: String,
    /// Absolute, canonical path of the template file.
    pub path: PathBuf,
    pub description: Option<String>,
    /// The base image (roots only).
    #[serde(with = "memo::self_describing")]
    pub source: Option<Box<Source>>,
    /// Regions to copy the image to after a build.
    pub regions: Vec<String>,
    #[serde(with = "memo::self_describing")]
    pub rebuild: Option<Box<RebuildPolicy>>,
    /// Variables this template sets itself, so `explain` can tell its own
    /// changes from inherited ones.
    pub own_variables: Vec<String>,
    /// The `build:` block as written in this template.
    #[serde(with = "memo::self_describing")]
    pub own_build: Box<BuildSettings>,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// Indices from the root to this layer, inclusive.
    pub chain: Vec<usize>,
    /// Effective settings (boxed, like the other large, rarely used parts:
    /// a layer stays small in memory).
    #[serde(with = "memo::self_describing")]
    pub build: Box<BuildSettings>,
    pub variables: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// What this layer itself installs: its entries not already in an ancestor.
    pub own_software: BTreeMap<Manager, Vec<String>>,
    pub files: Vec<ResolvedFile>,
    pub steps: Vec<ResolvedStep>,
    pub max_age: Option<Duration>,
    pub timeout: Option<Duration>,
    /// The canonical JSON of this layer's hashed inputs
    /// ([`crate::hash::canonical_json`]), computed once when linking.
    pub inputs_json: String,
}

impl Layer {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn file(&self) -> &str {
        &self.file
    }
    pub fn source(&self) -> Option<&Source> {
        self.source.as_deref()
    }
    /// The directory holding the template file (paths in it are relative to it).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// The whole template repository as a DAG of layers, in topological order
/// (parents first, ties broken by name).
#[derive(Clone, Debug)]
pub struct Project {
    pub root: PathBuf,
    pub config: Config,
    pub layers: Vec<Layer>,
    by_name: HashMap<String, usize>,
    /// The load memo was not saved because inputs had just been written:
    /// when they settle (see [`Project::save_memo_later`]).
    memo_pending: Option<i64>,
}

impl Project {
    /// Loads and checks every template under `root`. All problems found are
    /// returned together as [`Error::Invalid`].
    pub fn load(root: &Path) -> Result<Project> {
        Project::load_with_memo(root, false)
    }

    /// [`Project::load`] through the load memo in the local cache directory
    /// (see [`crate::template::memo`]), which `AMIMAKE_LOAD_MEMO=off`
    /// turns off.
    pub fn load_memoized(root: &Path) -> Result<Project> {
        Project::load_with_memo(root, !memo::disabled())
    }

    fn load_with_memo(root: &Path, use_memo: bool) -> Result<Project> {
        let start_ns = memo::now_ns();
        let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        let config = config::load_config(&root).map_err(|d| Error::Invalid(vec![d]))?;
        let memo = use_memo.then(|| {
            let cache = crate::cache::sqlite::cache_dir(config.cache.dir.as_deref(), &root);
            Memo::new(&cache.join("memo"), &root, start_ns)
        });
        if let Some(layers) = memo.as_ref().and_then(Memo::load) {
            tracing::debug!("{} layers loaded from the load memo", layers.len());
            return Ok(Project::from_layers(root, config, layers));
        }
        let dir = root.join(config.templates_dir());
        let mut reads = vec![root.join(config::CONFIG_FILE)];
        let paths = discover(&root, &dir, &mut reads).map_err(|d| Error::Invalid(vec![d]))?;
        reads.extend(paths.iter().cloned());
        let mut diags = Vec::new();
        let mut templates = Vec::new();
        for parsed in parse_all(&root, &paths) {
            match parsed {
                Ok(t) => templates.push(t),
                Err(mut d) => diags.append(&mut d),
            }
        }
        let project = link(root, config, templates, &mut diags, &mut reads);
        if !diags.is_empty() {
            return Err(Error::Invalid(diags));
        }
        let mut project = project;
        if let Some(memo) = memo {
            project.memo_pending = memo.save(&reads, &project.layers).err();
        }
        Ok(project)
    }

    /// For long commands (`build`, `plan`): when the memo was not saved
    /// because inputs had been written moments before loading (a repository
    /// just generated or checked out), load once more now that they have
    /// settled, so the next command can use it. Best effort.
    pub fn save_memo_later(&self) {
        if self.memo_pending.is_some_and(|at| at <= memo::now_ns()) {
            if let Err(e) = Project::load_memoized(&self.root) {
                tracing::debug!("load memo not refreshed: {e}");
            }
        }
    }

    fn from_layers(root: PathBuf, config: Config, layers: Vec<Layer>) -> Project {
        let by_name = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        Project {
            root,
            config,
            layers,
            by_name,
            memo_pending: None,
        }
    }

    pub fn get(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Looks up a template named on the command line, with a suggestion.
    pub fn find(&self, name: &str) -> Result<usize> {
        self.get(name).ok_or_else(|| {
            let mut msg = format!("no template named `{name}`");
            if let Some(s) = did_you_mean(name, self.by_name.keys().map(String::as_str)) {
                msg.push_str(&format!("; did you mean `{s}`?"));
            }
            msg.push_str(" (`amimake graph` lists them)");
            Error::Usage(msg)
        })
    }

    /// Indices of `targets` (all layers when empty), sorted topologically.
    pub fn select(&self, targets: &[String]) -> Result<Vec<usize>> {
        if targets.is_empty() {
            return Ok((0..self.layers.len()).collect());
        }
        let mut out: Vec<usize> = targets
            .iter()
            .map(|t| self.find(t))
            .collect::<Result<_>>()?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// `targets` plus all their ancestors, topologically sorted.
    pub fn with_ancestors(&self, targets: &[usize]) -> Vec<usize> {
        let mut keep = vec![false; self.layers.len()];
        for &t in targets {
            for &i in &self.layers[t].chain {
                keep[i] = true;
            }
        }
        (0..self.layers.len()).filter(|&i| keep[i]).collect()
    }

    /// Layer `index`'s software accumulated along its chain, per manager.
    pub fn software(&self, index: usize) -> BTreeMap<Manager, Vec<Package>> {
        accumulated_software(&self.layers, &self.layers[index].chain)
    }

    /// `target` and everything below it, topologically sorted.
    pub fn descendants(&self, target: usize) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.layers[i].chain.contains(&target))
            .collect()
    }
}

/// Parses files on all cores; results keep the input order.
fn parse_all(root: &Path, paths: &[PathBuf]) -> Vec<Result<Template, Vec<Diagnostic>>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if paths.len() < 64 || threads < 2 {
        return paths.iter().map(|p| parse_template(root, p)).collect();
    }
    let chunk = paths.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| parse_template(root, p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

pub fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(2))
        .min()
        .map(|(_, c)| c)
}

/// Lexically normalizes `p` (resolving `.` and `..`) without touching disk.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Links and merges `templates`; every path read (scripts, files, a root's
/// tarball) is appended to `reads`.
fn link(
    root: PathBuf,
    config: Config,
    templates: Vec<Template>,
    diags: &mut Vec<Diagnostic>,
    reads: &mut Vec<PathBuf>,
) -> Project {
    // Names must be unique.
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut unique = Vec::with_capacity(templates.len());
    for t in templates {
        if let Some(&first) = by_name.get(&t.name) {
            let first: &Template = &unique[first];
            diags.push(
                Diagnostic::new(
                    t.name_loc.clone(),
                    format!("two templates are named `{}`", t.name),
                )
                .note(format!("the other is {}", first.file))
                .note("rename one file, or set `name:` in one of them"),
            );
            continue;
        }
        by_name.insert(t.name.clone(), unique.len());
        unique.push(t);
    }
    let templates = unique;
    let by_path: HashMap<&Path, usize> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| (t.path.as_path(), i))
        .collect();

    // Parents.
    let mut parent: Vec<Option<usize>> = vec![None; templates.len()];
    let mut broken = vec![false; templates.len()];
    for (i, t) in templates.iter().enumerate() {
        let Some(ext) = &t.doc.extends else { continue };
        let target = ext.value.trim();
        let loc = t.loc(&ext.referenced);
        let looks_like_path =
            target.contains('/') || target.ends_with(".yaml") || target.ends_with(".yml");
        let found = if looks_like_path {
            let joined = normalize(&t.dir().join(target));
            if !joined.starts_with(&root) {
                diags.push(Diagnostic::new(
                    loc,
                    format!("`extends: {target}` leaves the project root"),
                ));
                broken[i] = true;
                continue;
            }
            joined
                .canonicalize()
                .ok()
                .and_then(|p| by_path.get(p.as_path()).copied())
        } else {
            by_name.get(target).copied()
        };
        match found {
            Some(p) => parent[i] = Some(p),
            None => {
                let mut d = Diagnostic::new(
                    loc,
                    format!("`{}` extends `{target}`, which is not a template", t.name),
                );
                let stem = Path::new(target)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| target.to_string());
                if let Some(s) = did_you_mean(&stem, by_name.keys().map(String::as_str)) {
                    d = d.note(format!(
                        "did you mean `{s}` ({})?",
                        templates[by_name[s]].file
                    ));
                }
                diags.push(d);
                broken[i] = true;
            }
        }
    }

    // Cycles and chains.
    let max_depth = config.max_depth();
    let mut chains: Vec<Option<Vec<usize>>> = vec![None; templates.len()];
    let mut reported_cycles: Vec<Vec<usize>> = Vec::new();
    for i in 0..templates.len() {
        let mut chain = vec![i];
        let mut cur = i;
        let mut bad = broken[i];
        while let Some(p) = parent[cur] {
            if let Some(pos) = chain.iter().position(|&c| c == p) {
                let mut cycle: Vec<usize> = chain[pos..].to_vec();
                let mut key = cycle.clone();
                key.sort_unstable();
                if !reported_cycles.contains(&key) {
                    reported_cycles.push(key);
                    // Report in extends order starting at the smallest name.
                    let start = (0..cycle.len())
                        .min_by_key(|&k| &templates[cycle[k]].name)
                        .unwrap_or(0);
                    cycle.rotate_left(start);
                    let names: Vec<&str> = cycle
                        .iter()
                        .chain(std::iter::once(&cycle[0]))
                        .map(|&k| templates[k].name.as_str())
                        .collect();
                    let first = &templates[cycle[0]];
                    let ext = first.doc.extends.as_ref().map(|e| first.loc(&e.referenced));
                    let mut d = Diagnostic::new(
                        ext.unwrap_or_else(|| Loc::file_start(&first.file)),
                        format!("inheritance cycle: {}", names.join(" -> ")),
                    );
                    for &k in &cycle {
                        let t = &templates[k];
                        if let Some(e) = &t.doc.extends {
                            d = d.note(format!(
                                "{} extends `{}` at {}",
                                t.name,
                                e.value,
                                t.loc(&e.referenced)
                            ));
                        }
                    }
                    diags.push(d);
                }
                bad = true;
                break;
            }
            chain.push(p);
            if broken[p] {
                bad = true;
            }
            cur = p;
        }
        if bad {
            broken[i] = true;
            continue;
        }
        chain.reverse();
        chains[i] = Some(chain);
    }
    for i in 0..templates.len() {
        let Some(chain) = &chains[i] else { continue };
        if chain.len() == max_depth + 1 {
            let t = &templates[i];
            let names: Vec<&str> = chain.iter().map(|&k| templates[k].name.as_str()).collect();
            let loc = t
                .doc
                .extends
                .as_ref()
                .map(|e| t.loc(&e.referenced))
                .unwrap_or_else(|| Loc::file_start(&t.file));
            diags.push(
                Diagnostic::new(
                    loc,
                    format!(
                        "inheritance depth {} exceeds max_depth {max_depth}: {}",
                        chain.len(),
                        names.join(" -> ")
                    ),
                )
                .note(format!(
                    "flatten the chain, or raise `max_depth` in {}",
                    config::CONFIG_FILE
                )),
            );
        }
        if chain.len() > max_depth {
            broken[i] = true;
        }
    }

    // Topological order: Kahn's algorithm, ties by name.
    let mut order: Vec<usize> = Vec::with_capacity(templates.len());
    {
        let mut kids: Vec<Vec<usize>> = vec![Vec::new(); templates.len()];
        let mut ready = std::collections::BinaryHeap::new();
        for i in 0..templates.len() {
            if broken[i] {
                continue;
            }
            match parent[i] {
                Some(p) => kids[p].push(i),
                None => ready.push(std::cmp::Reverse((templates[i].name.clone(), i))),
            }
        }
        while let Some(std::cmp::Reverse((_, i))) = ready.pop() {
            order.push(i);
            for &k in &kids[i] {
                ready.push(std::cmp::Reverse((templates[k].name.clone(), k)));
            }
        }
    }

    // Merge along chains, in topological order.
    let mut new_index = vec![usize::MAX; templates.len()];
    for (pos, &old) in order.iter().enumerate() {
        new_index[old] = pos;
    }
    let mut templates: Vec<Option<Template>> = templates.into_iter().map(Some).collect();
    let mut layers: Vec<Layer> = Vec::with_capacity(order.len());
    // The documents of `layers`, for locating an ancestor's package spec.
    let mut placed: Vec<Template> = Vec::with_capacity(order.len());
    let canonical_root = root.clone();
    // `builder:` defaults in amimake.yaml apply under every root (and so
    // are hashed like the template's own settings).
    let defaults = BuildSettings {
        instance_type: config.builder.instance_type.clone(),
        volume_size_gb: config.builder.volume_size_gb,
        ..BuildSettings::default()
    };
    for &old in &order {
        let t = templates[old].take().expect("each template is placed once");
        let parent_new = parent[old].map(|p| new_index[p]);
        let mut layer = merge_layer(
            &canonical_root,
            &defaults,
            &t,
            parent_new,
            (&layers, &placed),
            diags,
            reads,
        );
        layer.inputs_json = crate::hash::canonical_json(&crate::hash::layer_inputs(&layer).0);
        if let Some(p) = parent_new {
            let idx = layers.len();
            layers[p].children.push(idx);
        }
        layers.push(layer);
        placed.push(t);
    }
    Project::from_layers(root, config, layers)
}

fn merge_layer(
    root: &Path,
    defaults: &BuildSettings,
    t: &Template,
    parent: Option<usize>,
    (layers, placed): (&[Layer], &[Template]),
    diags: &mut Vec<Diagnostic>,
    reads: &mut Vec<PathBuf>,
) -> Layer {
    let parent_layer = parent.map(|p| &layers[p]);
    let mut chain = parent_layer.map(|p| p.chain.clone()).unwrap_or_default();
    chain.push(layers.len());
    let doc = &t.doc;
    let build = match parent_layer {
        Some(p) => p.build.merged_with(&doc.build),
        None => defaults.merged_with(&doc.build),
    };
    let mut variables = parent_layer
        .map(|p| p.variables.clone())
        .unwrap_or_default();
    variables.extend(doc.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut tags = parent_layer.map(|p| p.tags.clone()).unwrap_or_default();
    tags.extend(doc.tags.iter().map(|(k, v)| (k.clone(), v.clone())));

    let mut software = parent_layer
        .map(|p| accumulated_software(layers, &p.chain))
        .unwrap_or_default();
    let mut own_software: BTreeMap<Manager, Vec<String>> = BTreeMap::new();
    for (manager, list) in doc.software.lists() {
        for spec in list {
            let value = spec.value.trim().to_string();
            let acc = software.entry(manager).or_default();
            if acc.iter().any(|p| p.spec == value) {
                continue;
            }
            let (name, version) = manager.parse(&value);
            if let Some(version) = &version {
                let clash = acc.iter().find(|p| {
                    let (n, v) = manager.parse(&p.spec);
                    n == name && v.as_ref().is_some_and(|v| v != version)
                });
                if let Some(other) = clash {
                    let where_other =
                        package_location(placed, t, &other.from, manager, &other.spec);
                    diags.push(
                        Diagnostic::new(
                            t.loc(&spec.referenced),
                            format!(
                                "{manager} package `{name}` is pinned at two versions in one chain: `{}` here and `{}` in template `{}`",
                                value, other.spec, other.from
                            ),
                        )
                        .note(format!("`{}` is at {where_other}", other.spec))
                        .note("keep one version; a layer cannot downgrade or replace what an ancestor installed"),
                    );
                    continue;
                }
            }
            acc.push(Package {
                spec: value.clone(),
                from: t.name.clone(),
            });
            own_software.entry(manager).or_default().push(value);
        }
    }
    software.retain(|_, v| !v.is_empty());

    let mut files = Vec::new();
    for f in &doc.files {
        if let Some((path, is_dir, content_hash)) = resolve_input(root, t, &f.src, diags, reads) {
            files.push(ResolvedFile {
                src: display_path(root, &path),
                src_path: path,
                is_dir,
                dest: f.dest.value.clone(),
                // "644", "0644" and "00644" are the same bits.
                mode: f.mode.as_ref().map(|m| {
                    u32::from_str_radix(&m.value, 8)
                        .map(|bits| format!("{bits:04o}"))
                        .unwrap_or_else(|_| m.value.clone())
                }),
                owner: f.owner.clone(),
                content_hash,
            });
        }
    }
    let mut steps = Vec::new();
    for s in &doc.provision {
        if let Some(script) = &s.script {
            if let Some((path, is_dir, content_hash)) = resolve_input(root, t, script, diags, reads)
            {
                if is_dir {
                    diags.push(Diagnostic::new(
                        t.loc(&script.referenced),
                        format!(
                            "`script: {}` is a directory; name a script file",
                            script.value
                        ),
                    ));
                    continue;
                }
                steps.push(ResolvedStep::Script {
                    path: display_path(root, &path),
                    abs: path,
                    content_hash,
                });
            }
        } else if let Some(shell) = &s.shell {
            steps.push(ResolvedStep::Shell(shell.value.clone()));
        }
    }
    let max_age = doc
        .rebuild
        .as_ref()
        .and_then(|r| r.max_age.as_ref())
        .and_then(|d| parse_duration(&d.value).ok());
    let timeout = build
        .timeout
        .as_ref()
        .and_then(|d| parse_duration(&d.value).ok());
    if parent.is_none() {
        if let Some(rootfs) = doc
            .source
            .as_ref()
            .and_then(|s| s.value.local.as_ref())
            .and_then(|l| l.rootfs.as_ref())
        {
            // Checked here so a missing tarball is reported by `validate`.
            resolve_input(root, t, rootfs, diags, reads);
        }
    }
    Layer {
        name: t.name.clone(),
        file: t.file.clone(),
        path: t.path.clone(),
        description: doc.description.clone(),
        source: doc.source.as_ref().map(|s| Box::new(s.value.clone())),
        regions: doc.regions.clone(),
        rebuild: doc.rebuild.clone().map(Box::new),
        own_variables: doc.variables.keys().cloned().collect(),
        own_build: Box::new(doc.build.clone()),
        parent,
        children: Vec::new(),
        chain,
        build: Box::new(build),
        variables,
        tags,
        own_software,
        files,
        steps,
        max_age,
        timeout,
        inputs_json: String::new(),
    }
}

/// The software lists accumulated along `chain` (root first): each
/// layer's own delta, in chain order, with the layer it came from.
fn accumulated_software(layers: &[Layer], chain: &[usize]) -> BTreeMap<Manager, Vec<Package>> {
    let mut out: BTreeMap<Manager, Vec<Package>> = BTreeMap::new();
    for &i in chain {
        for (manager, list) in &layers[i].own_software {
            out.entry(*manager)
                .or_default()
                .extend(list.iter().map(|spec| Package {
                    spec: spec.clone(),
                    from: layers[i].name.clone(),
                }));
        }
    }
    out
}

/// Where `spec` was written in the template named `from` (an ancestor).
fn package_location(
    placed: &[Template],
    current: &Template,
    from: &str,
    manager: Manager,
    spec: &str,
) -> Loc {
    let t = placed
        .iter()
        .chain(std::iter::once(current))
        .find(|t| t.name == from);
    let Some(t) = t else {
        return Loc::file_start(from);
    };
    t.doc
        .software
        .lists()
        .iter()
        .filter(|(m, _)| *m == manager)
        .flat_map(|(_, l)| l.iter())
        .find(|s| s.value.trim() == spec)
        .map(|s| t.loc(&s.referenced))
        .unwrap_or_else(|| Loc::file_start(&t.file))
}

/// Resolves a path written in template `t` and hashes its content; the
/// path as written (before links are resolved) is appended to `reads`.
fn resolve_input(
    root: &Path,
    t: &Template,
    written: &serde_saphyr::Spanned<String>,
    diags: &mut Vec<Diagnostic>,
    reads: &mut Vec<PathBuf>,
) -> Option<(PathBuf, bool, String)> {
    let loc = t.loc(&written.referenced);
    let rel = written.value.trim();
    if rel.is_empty() {
        diags.push(Diagnostic::new(loc, "empty path"));
        return None;
    }
    let joined = normalize(&t.dir().join(rel));
    let leaves = |p: &Path| !p.starts_with(root);
    if leaves(&joined) {
        diags.push(Diagnostic::new(
            loc,
            format!(
                "`{rel}` leaves the project root; keep scripts and files inside the repository"
            ),
        ));
        return None;
    }
    reads.push(joined.clone());
    let canonical = match joined.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            diags.push(Diagnostic::new(
                loc,
                format!(
                    "`{rel}` not found (looked for {})",
                    display_path(root, &joined)
                ),
            ));
            return None;
        }
    };
    if leaves(&canonical) {
        diags.push(Diagnostic::new(
            loc,
            format!("`{rel}` is a link that leaves the project root"),
        ));
        return None;
    }
    match crate::hash::content_hash(&canonical) {
        Ok((is_dir, hash)) => Some((canonical, is_dir, hash)),
        Err(e) => {
            diags.push(Diagnostic::new(loc, format!("cannot read `{rel}`: {e}")));
            None
        }
    }
}
