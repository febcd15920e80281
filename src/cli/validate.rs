//! `amimake validate`: load and check every template; all errors at once.

use crate::error::Result;

pub fn run() -> Result<i32> {
    let project = super::load_project()?;
    let roots = project.layers.iter().filter(|l| l.parent.is_none()).count();
    let max_chain = project
        .layers
        .iter()
        .map(|l| l.chain.len())
        .max()
        .unwrap_or(0);
    println!(
        "ok: {} template{} ({} root{}, longest chain {} of max_depth {})",
        project.layers.len(),
        if project.layers.len() == 1 { "" } else { "s" },
        roots,
        if roots == 1 { "" } else { "s" },
        max_chain,
        project.config.max_depth()
    );
    Ok(0)
}
