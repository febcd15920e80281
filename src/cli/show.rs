//! `amimake show <t> [--resolved]`: a template as written, or its merged
//! view along the chain (effective maps, accumulated software with the layer
//! each package came from, this layer's own files and steps, its hash).

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::BackendArgs;
use crate::error::{Error, Result};
use crate::template::resolve::{Package, ResolvedStep};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum YamlOrJson {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The template to show.
    pub template: String,
    /// Show the merged view along the `extends` chain.
    #[arg(long)]
    pub resolved: bool,
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: YamlOrJson,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Serialize)]
struct ChainLink<'a> {
    name: &'a str,
    file: &'a str,
}

#[derive(Serialize)]
struct FileView<'a> {
    src: &'a str,
    dest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    content_hash: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum StepView<'a> {
    Script {
        path: &'a str,
        content_hash: &'a str,
    },
    Shell(&'a str),
}

#[derive(Serialize)]
struct Resolved<'a> {
    schema_version: u32,
    name: &'a str,
    file: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parent: Option<&'a str>,
    chain: Vec<ChainLink<'a>>,
    hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unresolved: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a crate::template::model::Source>,
    build: &'a crate::template::model::BuildSettings,
    variables: &'a BTreeMap<String, String>,
    tags: &'a BTreeMap<String, String>,
    software: BTreeMap<&'a str, &'a Vec<Package>>,
    own_software: BTreeMap<&'a str, &'a Vec<String>>,
    files: Vec<FileView<'a>>,
    provision: Vec<StepView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rebuild: Option<&'a crate::template::model::RebuildPolicy>,
}

fn emit<T: Serialize>(value: &T, format: YamlOrJson) -> Result<()> {
    match format {
        YamlOrJson::Json => super::print_json(value),
        YamlOrJson::Yaml => {
            let text = serde_saphyr::to_string(value).map_err(|e| Error::Usage(e.to_string()))?;
            print!("{text}");
            Ok(())
        }
    }
}

pub fn run(args: ShowArgs) -> Result<i32> {
    let project = super::load_project()?;
    let i = project.find(&args.template)?;
    let layer = &project.layers[i];
    if !args.resolved {
        // As written: the file itself, parsed again (layers keep only
        // what building needs).
        let template = crate::template::load::parse_template(&project.root, &layer.path)
            .map_err(Error::Invalid)?;
        emit(&template.doc, args.format)?;
        return Ok(0);
    }
    let backend = super::backend_of(&project, &args.backend)?;
    let hashes = super::offline_hashes(&project, backend, args.backend.base_ami.as_deref())?;
    let root = &project.layers[layer.chain[0]];
    let software = project.software(i);
    let view = Resolved {
        schema_version: 1,
        name: layer.name(),
        file: layer.file(),
        description: layer.description.as_deref(),
        parent: layer.parent.map(|p| project.layers[p].name()),
        chain: layer
            .chain
            .iter()
            .map(|&c| ChainLink {
                name: project.layers[c].name(),
                file: project.layers[c].file(),
            })
            .collect(),
        hash: hashes[i].hash().map(|h| h.as_str()),
        unresolved: match &hashes[i] {
            crate::hash::HashState::Unresolved(why) => Some(why),
            _ => None,
        },
        source: root.source(),
        build: &layer.build,
        variables: &layer.variables,
        tags: &layer.tags,
        software: software.iter().map(|(m, l)| (m.as_str(), l)).collect(),
        own_software: layer
            .own_software
            .iter()
            .map(|(m, l)| (m.as_str(), l))
            .collect(),
        files: layer
            .files
            .iter()
            .map(|f| FileView {
                src: &f.src,
                dest: &f.dest,
                mode: f.mode.as_deref(),
                owner: f.owner.as_deref(),
                content_hash: &f.content_hash,
            })
            .collect(),
        provision: layer
            .steps
            .iter()
            .map(|s| match s {
                ResolvedStep::Script {
                    path, content_hash, ..
                } => StepView::Script { path, content_hash },
                ResolvedStep::Shell(text) => StepView::Shell(text),
            })
            .collect(),
        rebuild: layer.rebuild.as_deref(),
    };
    emit(&view, args.format)?;
    Ok(0)
}
