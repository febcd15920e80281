//! `amimake hash`: layer hashes, offline.

use std::io::Write;

use clap::Args;
use serde::Serialize;

use super::{BackendArgs, TextOrJson};
use crate::error::Result;
use crate::hash::HashState;

#[derive(Debug, Args)]
pub struct HashArgs {
    /// Templates to hash (default: all).
    pub templates: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Serialize)]
struct HashJson<'a> {
    schema_version: u32,
    layers: Vec<HashLayer<'a>>,
}

#[derive(Serialize)]
struct HashLayer<'a> {
    name: &'a str,
    file: &'a str,
    parent: Option<&'a str>,
    hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unresolved: Option<&'a str>,
}

pub fn run(args: HashArgs) -> Result<i32> {
    let project = super::load_project()?;
    let backend = super::backend_of(&project, &args.backend)?;
    let selected = project.select(&args.templates)?;
    let hashes = super::offline_hashes(&project, backend, args.backend.base_ami.as_deref())?;
    let layers: Vec<HashLayer> = selected
        .iter()
        .map(|&i| {
            let l = &project.layers[i];
            HashLayer {
                name: l.name(),
                file: l.file(),
                parent: l.parent.map(|p| project.layers[p].name()),
                hash: hashes[i].hash().map(|h| h.as_str()),
                unresolved: match &hashes[i] {
                    HashState::Unresolved(why) => Some(why.as_str()),
                    HashState::Known(..) => None,
                },
            }
        })
        .collect();
    match args.format {
        TextOrJson::Json => super::print_json(&HashJson {
            schema_version: 1,
            layers,
        })?,
        TextOrJson::Text => {
            let width = layers.iter().map(|l| l.name.len()).max().unwrap_or(0);
            let mut out = super::stdout();
            for l in &layers {
                let _ = match (l.hash, l.unresolved) {
                    (Some(h), _) => writeln!(out, "{:width$}  {h}", l.name),
                    (None, why) => {
                        writeln!(out, "{:width$}  unresolved: {}", l.name, why.unwrap_or(""))
                    }
                };
            }
        }
    }
    Ok(0)
}
