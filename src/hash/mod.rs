//! The layer hash: what goes into it, what never does, and why.
//!
//! ```text
//! hash(layer) = blake3( "amimake-layer\0" ‖ HASH_SCHEMA_VERSION (u32 LE)
//!                       ‖ canonical_json(inputs) ‖ "\0" ‖ parent )
//! ```
//!
//! `canonical_json` is `serde_json` over [`LayerInputs`]: fixed field order,
//! maps as sorted `BTreeMap`s, so key order and formatting of the YAML never
//! matter. The hash is printed as 64 lowercase hex digits.
//!
//! # Inputs
//!
//! | input | taken as | why |
//! |-------|----------|-----|
//! | `build.instance_type` (effective) | string | compilers tune to the CPU the layer is built on |
//! | `build.architecture` (effective) | string | the image's architecture |
//! | `build.volume_size_gb` (effective) | string | the image's root volume size |
//! | `build.volume_type` (effective) | string | the image's block device mapping |
//! | `variables` (effective, merged along the chain) | sorted map | exported to every step |
//! | `software.<manager>` (this layer's own delta) | list, in written order | what this layer installs |
//! | `files[]` | `dest`, `mode`, `owner`, blake3 of the content (a directory: its sorted relative paths, exec bits and contents) | what lands in the image |
//! | `provision[]` | inline `shell:` text, or blake3 of the `script:` file's bytes | what runs, in order |
//! | `parent` | the parent layer's hash; for a root, the source identity (below) | a layer is only as fixed as what it stands on |
//!
//! The root's source identity depends on the backend, so one template has
//! different hashes per backend:
//!
//! | backend | source identity |
//! |---------|-----------------|
//! | `ec2` | `ec2:<resolved AMI ID>`: `source.ami`, the image an `ami_filter` resolved to (live in `plan`/`build`, last recorded elsewhere), or `--base-ami` |
//! | `local` | `local:` + canonical JSON of `source.local`, plus blake3 of a `rootfs` tarball |
//! | `simulate` | `simulate:` + canonical JSON of `source` as written (nothing is resolved), or `--base-ami` |
//!
//! # Deliberately excluded
//!
//! None of these can change what is inside the image, so none causes a rebuild:
//!
//! | excluded | why |
//! |----------|-----|
//! | template name, `name:`, file path, directory layout | renaming or moving a file does not change the image; names are labels |
//! | `description`, `tags`, `rebuild`, `regions` | metadata and policy about the image, not its content |
//! | `build.timeout`, `subnet`, `security_groups`, `instance_profile` | where and how long the builder runs, not what it produces |
//! | comments, formatting, YAML key order, quoting style | the YAML is parsed into typed values first |
//! | mtimes, absolute paths, the user, credentials, the machine | a hash must be the same on every machine; we can't ever hash an absolute path |
//! | inherited `files`/`provision` | they are inside the parent image, which the parent hash covers |
//! | script paths | only script content counts; moving a script changes nothing |
//!
//! Change [`HASH_SCHEMA_VERSION`] whenever the inputs or their encoding
//! change: every layer is then rebuilt once, which is what such a change needs.

pub mod diff;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::template::resolve::{Layer, Project, ResolvedStep};

/// Mixed into every hash; bump when [`LayerInputs`] or its encoding changes.
pub const HASH_SCHEMA_VERSION: u32 = 1;

/// A layer's content hash: 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LayerHash(String);

impl LayerHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
    /// Accepts 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<LayerHash> {
        (s.len() == 64
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
        .then(|| LayerHash(s.to_string()))
    }
}

impl fmt::Display for LayerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The canonical, hashed inputs of one layer (see the module table).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInputs {
    pub build: BTreeMap<String, String>,
    pub variables: BTreeMap<String, String>,
    pub software: BTreeMap<String, Vec<String>>,
    pub files: Vec<FileInput>,
    pub provision: Vec<StepInput>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInput {
    pub dest: String,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepInput {
    Shell(String),
    Script(String),
}

/// Human labels for inputs (script and file paths), stored beside the
/// inputs so `explain` can name what changed. Never hashed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputLabels {
    /// Per file, its source path.
    pub files: Vec<String>,
    /// Per step, the script path or `shell`.
    pub provision: Vec<String>,
}

/// What a layer was (or would be) built from: inputs, labels and the parent
/// component of the hash. This is what the local cache keeps for `explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub inputs: LayerInputs,
    pub labels: InputLabels,
    /// Parent layer's hash, or the root's source identity.
    pub parent: String,
    /// Parent template name (roots: none).
    pub parent_name: Option<String>,
}

impl LayerRecord {
    pub fn hash(&self) -> LayerHash {
        layer_hash(&canonical_json(&self.inputs), &self.parent)
    }
}

/// `canonical_json(inputs)` of the module table.
pub fn canonical_json(inputs: &LayerInputs) -> String {
    serde_json::to_string(inputs).expect("inputs serialize")
}

/// The hash of a layer whose inputs encode as `inputs_json` and whose
/// parent component is `parent`.
fn layer_hash(inputs_json: &str, parent: &str) -> LayerHash {
    let mut h = blake3::Hasher::new();
    h.update(b"amimake-layer\0");
    h.update(&HASH_SCHEMA_VERSION.to_le_bytes());
    h.update(inputs_json.as_bytes());
    h.update(b"\0");
    h.update(parent.as_bytes());
    LayerHash(h.finalize().to_hex().to_string())
}

/// Layer `index`'s full record, given its parent component (from
/// [`HashState::Known`]). Built only for layers that are built or
/// explained; a reused layer needs just its hash.
pub fn layer_record(project: &Project, index: usize, parent: &str) -> LayerRecord {
    let layer = &project.layers[index];
    let (inputs, labels) = layer_inputs(layer);
    LayerRecord {
        inputs,
        labels,
        parent: parent.to_string(),
        parent_name: layer.parent.map(|p| project.layers[p].name().to_string()),
    }
}

/// The inputs of `layer` (everything but the parent component).
pub fn layer_inputs(layer: &Layer) -> (LayerInputs, InputLabels) {
    let b = &layer.build;
    let mut build = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            build.insert(k.to_string(), v);
        }
    };
    put("instance_type", b.instance_type.clone());
    put(
        "architecture",
        b.architecture.as_ref().map(|a| a.value.clone()),
    );
    put("volume_size_gb", b.volume_size_gb.map(|v| v.to_string()));
    put("volume_type", b.volume_type.clone());
    let software = layer
        .own_software
        .iter()
        .map(|(m, l)| (m.as_str().to_string(), l.clone()))
        .collect();
    let files = layer
        .files
        .iter()
        .map(|f| FileInput {
            dest: f.dest.clone(),
            mode: f.mode.clone(),
            owner: f.owner.clone(),
            content: f.content_hash.clone(),
        })
        .collect();
    let provision = layer
        .steps
        .iter()
        .map(|s| match s {
            ResolvedStep::Shell(text) => StepInput::Shell(text.clone()),
            ResolvedStep::Script { content_hash, .. } => StepInput::Script(content_hash.clone()),
        })
        .collect();
    let labels = InputLabels {
        files: layer.files.iter().map(|f| f.src.clone()).collect(),
        provision: layer
            .steps
            .iter()
            .map(|s| match s {
                ResolvedStep::Shell(_) => "shell".to_string(),
                ResolvedStep::Script { path, .. } => path.clone(),
            })
            .collect(),
    };
    (
        LayerInputs {
            build,
            variables: layer.variables.clone(),
            software,
            files,
            provision,
        },
        labels,
    )
}

/// A root's source as the hash sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSource {
    /// The source identity string of the module table, and the image ID
    /// where there is one (ec2).
    Resolved {
        identity: String,
        image: Option<String>,
    },
    /// Cannot be hashed without the network (or at all on this backend).
    Unresolved(String),
}

/// A layer's hash, or why it has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashState {
    /// The hash and its parent component: the parent layer's hash, or the
    /// root's source identity ([`layer_record`] builds the full record).
    Known(LayerHash, String),
    Unresolved(String),
}

impl HashState {
    pub fn hash(&self) -> Option<&LayerHash> {
        match self {
            HashState::Known(h, _) => Some(h),
            HashState::Unresolved(_) => None,
        }
    }
}

/// Hashes every layer of `project`, roots resolved by `root_source`.
/// A layer below an unresolved root is unresolved too.
pub fn hash_all(project: &Project, root_source: impl Fn(&Layer) -> RootSource) -> Vec<HashState> {
    let mut out: Vec<HashState> = Vec::with_capacity(project.layers.len());
    for layer in &project.layers {
        let parent = match layer.parent {
            None => match root_source(layer) {
                RootSource::Resolved { identity, .. } => Ok(identity),
                RootSource::Unresolved(why) => Err(why),
            },
            Some(p) => match &out[p] {
                HashState::Known(h, _) => Ok(h.to_string()),
                HashState::Unresolved(_) => Err(format!(
                    "parent `{}` is unresolved",
                    project.layers[p].name()
                )),
            },
        };
        out.push(match parent {
            Ok(parent) => HashState::Known(layer_hash(&layer.inputs_json, &parent), parent),
            Err(why) => HashState::Unresolved(why),
        });
    }
    out
}

/// blake3 of a file's bytes; for a directory, of its sorted entries
/// (relative path, kind, executable bit, content). Returns (is_dir, hex).
pub fn content_hash(path: &Path) -> std::io::Result<(bool, String)> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok((false, file_hash(path)?.to_hex().to_string()));
    }
    let mut h = blake3::Hasher::new();
    h.update(b"amimake-dir\0");
    for entry in walkdir::WalkDir::new(path).sort_by_file_name().min_depth(1) {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry.path().strip_prefix(path).unwrap_or(entry.path());
        let rel = rel.to_string_lossy();
        let ft = entry.file_type();
        if ft.is_dir() {
            h.update(b"d\0");
            h.update(rel.as_bytes());
            h.update(b"\0");
        } else if ft.is_file() {
            h.update(
                if is_executable(&entry.metadata().map_err(std::io::Error::other)?) {
                    b"x\0"
                } else {
                    b"f\0"
                },
            );
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(file_hash(entry.path())?.as_bytes());
        } else if ft.is_symlink() {
            h.update(b"l\0");
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(
                std::fs::read_link(entry.path())?
                    .to_string_lossy()
                    .as_bytes(),
            );
        }
    }
    Ok((true, h.finalize().to_hex().to_string()))
}

fn file_hash(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len <= 1024 * 1024 {
        // Scripts and config files: one read, no zeroed buffer per file.
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)?;
        return Ok(blake3::hash(&bytes));
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hash_all` hashes the canonical inputs stored on each layer; the
    /// record built later (for the cache and `explain`) must hash the same.
    #[test]
    fn records_hash_like_hash_all() {
        let dir = tempfile::tempdir().unwrap();
        crate::testgen::generate_repo(dir.path(), 40).unwrap();
        let project = Project::load(dir.path()).unwrap();
        let hashes = hash_all(&project, |layer| RootSource::Resolved {
            identity: format!("test:{}", layer.name()),
            image: None,
        });
        for (i, state) in hashes.iter().enumerate() {
            let HashState::Known(hash, parent) = state else {
                panic!("layer {i} unresolved");
            };
            assert_eq!(&layer_record(&project, i, parent).hash(), hash, "layer {i}");
        }
    }
}
