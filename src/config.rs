//! The project: finding its root (the directory holding `amimake.yaml`,
//! searched upwards from the working directory like `Cargo.toml`) and the
//! project configuration in that file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Diagnostic, Error, Result};

pub const CONFIG_FILE: &str = "amimake.yaml";
pub const DEFAULT_MAX_DEPTH: usize = 5;

/// `amimake.yaml`; every key is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding the templates, relative to the project root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<String>,
    /// Longest allowed chain, counted in layers (a root alone is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Default backend: `ec2`, `local` or `simulate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub cache: CacheConfig,
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub builder: BuilderConfig,
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub gc: GcConfig,
    /// Default `-j` for builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Local cache directory (overridden by `AMIMAKE_CACHE_DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Shared cache, `s3://bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<String>,
    /// `read-write` (default) or `read-only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Accounts whose images a remote hit may point at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Snapshot storage price for `gc`'s saving estimate (default 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_price_per_gb_month: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size_gb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<String>,
}

impl Config {
    pub fn max_depth(&self) -> usize {
        self.max_depth.unwrap_or(DEFAULT_MAX_DEPTH)
    }

    pub fn templates_dir(&self) -> &str {
        self.templates.as_deref().unwrap_or("templates")
    }
}

/// Walks up from `start` to the first directory containing `amimake.yaml`.
pub fn find_root(start: &Path) -> Result<PathBuf> {
    let start = start
        .canonicalize()
        .map_err(|e| Error::io(start.to_path_buf(), e))?;
    for dir in start.ancestors() {
        if dir.join(CONFIG_FILE).is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    Err(Error::Usage(format!(
        "no {CONFIG_FILE} found in {} or any parent directory; create one (it may be empty) at your template repository's root, or pass -C DIR",
        start.display()
    )))
}

/// Reads `amimake.yaml` at `root`; an empty file is a valid, default config.
pub fn load_config(root: &Path) -> std::result::Result<Config, Diagnostic> {
    let path = root.join(CONFIG_FILE);
    let text = crate::yaml::read_text(&path, CONFIG_FILE)?;
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Ok(Config::default());
    }
    let config: Config = crate::yaml::parse_yaml_str(&text, CONFIG_FILE)?;
    if config.max_depth == Some(0) {
        return Err(Diagnostic::new(
            crate::error::Loc::file_start(CONFIG_FILE),
            "max_depth must be at least 1",
        ));
    }
    Ok(config)
}
