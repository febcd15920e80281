//! `amimake graph`: the layer DAG as a tree, DOT, Mermaid or JSON. With a
//! template: its chain from the root; with `--dependents`: the template and
//! everything built on it.

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::error::Result;
use crate::template::resolve::Project;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
    Json,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Show only this template's chain (or, with --dependents, its subtree).
    pub template: Option<String>,
    /// Show the template and every layer built on it.
    #[arg(long, requires = "template")]
    pub dependents: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: GraphFormat,
}

#[derive(Serialize)]
struct GraphJson<'a> {
    schema_version: u32,
    layers: Vec<GraphNode<'a>>,
}

#[derive(Serialize)]
struct GraphNode<'a> {
    name: &'a str,
    file: &'a str,
    parent: Option<&'a str>,
    children: Vec<&'a str>,
}

pub fn run(args: GraphArgs) -> Result<i32> {
    let project = super::load_project()?;
    let shown: Vec<usize> = match &args.template {
        None => (0..project.layers.len()).collect(),
        Some(t) => {
            let i = project.find(t)?;
            if args.dependents {
                project.descendants(i)
            } else {
                project.layers[i].chain.clone()
            }
        }
    };
    let mut keep = vec![false; project.layers.len()];
    for &i in &shown {
        keep[i] = true;
    }
    let name = |i: usize| project.layers[i].name();
    let kids = |i: usize| {
        project.layers[i]
            .children
            .iter()
            .copied()
            .filter(|&c| keep[c])
    };
    match args.format {
        GraphFormat::Json => {
            let layers = shown
                .iter()
                .map(|&i| GraphNode {
                    name: name(i),
                    file: project.layers[i].file(),
                    parent: project.layers[i].parent.filter(|&p| keep[p]).map(name),
                    children: kids(i).map(name).collect(),
                })
                .collect();
            super::print_json(&GraphJson {
                schema_version: 1,
                layers,
            })?;
        }
        GraphFormat::Dot => {
            println!("digraph amimake {{\n  rankdir=TB;\n  node [shape=box];");
            for &i in &shown {
                println!("  \"{}\";", name(i));
            }
            for &i in &shown {
                for c in kids(i) {
                    println!("  \"{}\" -> \"{}\";", name(i), name(c));
                }
            }
            println!("}}");
        }
        GraphFormat::Mermaid => {
            println!("graph TD");
            for &i in &shown {
                println!("  n{i}[\"{}\"]", name(i));
            }
            for &i in &shown {
                for c in kids(i) {
                    println!("  n{i} --> n{c}");
                }
            }
        }
        GraphFormat::Text => {
            let tops: Vec<usize> = shown
                .iter()
                .copied()
                .filter(|&i| !project.layers[i].parent.is_some_and(|p| keep[p]))
                .collect();
            let mut out = String::new();
            for t in tops {
                tree(&project, &keep, t, "", None, &mut out);
            }
            print!("{out}");
        }
    }
    Ok(0)
}

fn tree(
    project: &Project,
    keep: &[bool],
    i: usize,
    prefix: &str,
    last: Option<bool>,
    out: &mut String,
) {
    let l = &project.layers[i];
    let (branch, child_prefix) = match last {
        None => (String::new(), String::new()),
        Some(true) => (format!("{prefix}└── "), format!("{prefix}    ")),
        Some(false) => (format!("{prefix}├── "), format!("{prefix}│   ")),
    };
    out.push_str(&format!("{branch}{}  ({})\n", l.name(), l.file()));
    let kids: Vec<usize> = l.children.iter().copied().filter(|&c| keep[c]).collect();
    for (k, &c) in kids.iter().enumerate() {
        tree(
            project,
            keep,
            c,
            &child_prefix,
            Some(k + 1 == kids.len()),
            out,
        );
    }
}
