//! Finding and parsing template files: every `*.yaml`/`*.yml` below the
//! templates directory, named by file stem or `name:`, with the checks that
//! need only one file (exactly one of `extends`/`source`, well-formed
//! durations, modes, destinations, steps and variable names).

use std::path::{Path, PathBuf};

use crate::error::{Diagnostic, Loc};
use crate::template::model::{Source, TemplateDoc};
use crate::yaml::read_yaml_file;

/// A parsed template file, not yet linked to its parent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Template {
    pub name: String,
    /// Where the name was given (`name:`) or the file start.
    pub name_loc: Loc,
    /// Path relative to the project root, `/` separated.
    pub file: String,
    /// Absolute, canonical path.
    pub path: PathBuf,
    /// Boxed: templates move between collections while loading, the
    /// document stays put.
    pub doc: Box<TemplateDoc>,
}

impl Template {
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    pub fn loc(&self, location: &serde_saphyr::Location) -> Loc {
        Loc::from_yaml(&self.file, location)
    }
}

/// `path` relative to `root`, `/` separated, for messages and JSON.
pub fn display_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// All template files below `dir`, sorted by path; every directory walked
/// is appended to `dirs`.
pub fn discover(
    root: &Path,
    dir: &Path,
    dirs: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, Diagnostic> {
    if !dir.is_dir() {
        return Err(Diagnostic::new(
            Loc::file_start(crate::config::CONFIG_FILE),
            format!(
                "templates directory `{}` does not exist; create it or set `templates:` in {}",
                display_path(root, dir),
                crate::config::CONFIG_FILE
            ),
        ));
    }
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = entry.map_err(|e| {
            Diagnostic::new(
                Loc::file_start(display_path(root, e.path().unwrap_or(dir))),
                format!("cannot read templates directory: {e}"),
            )
        })?;
        let is_yaml = entry
            .path()
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if entry.file_type().is_dir() {
            dirs.push(entry.into_path());
        } else if entry.file_type().is_file() && is_yaml {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}

/// Parses one template file and runs the single-file checks.
pub fn parse_template(root: &Path, path: &Path) -> Result<Template, Vec<Diagnostic>> {
    let file = display_path(root, path);
    let doc: TemplateDoc = read_yaml_file(path, &file).map_err(|d| vec![d])?;
    let (name, name_loc) = match &doc.name {
        Some(n) => (n.value.clone(), Loc::from_yaml(&file, &n.referenced)),
        None => (
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Loc::file_start(&file),
        ),
    };
    let template = Template {
        name,
        name_loc,
        file,
        path: path.to_path_buf(),
        doc: Box::new(doc),
    };
    let diags = check_template(&template);
    if diags.is_empty() {
        Ok(template)
    } else {
        Err(diags)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses a duration like `90m`, `7d`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration `{text}` ({e}); write e.g. `90m`, `2h` or `7d`"))
}

fn check_template(t: &Template) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let doc = &t.doc;
    let at = |l: &serde_saphyr::Location| t.loc(l);
    if !valid_name(&t.name) {
        diags.push(Diagnostic::new(
            t.name_loc.clone(),
            format!(
                "invalid template name `{}`: use letters, digits, `-`, `_` and `.`",
                t.name
            ),
        ));
    }
    match (&doc.extends, &doc.source) {
        (Some(ext), Some(src)) => diags.push(
            Diagnostic::new(
                at(&src.referenced),
                "a template has either `extends:` (a child layer) or `source:` (a root layer), not both",
            )
            .note(format!("`extends: {}` is at {}", ext.value, at(&ext.referenced))),
        ),
        (None, None) => diags.push(Diagnostic::new(
            Loc::file_start(&t.file),
            "template has neither `extends:` nor `source:`; a root layer needs `source:`, a child layer `extends: <parent>`",
        )),
        (Some(ext), None) if ext.value.trim().is_empty() => diags.push(Diagnostic::new(
            at(&ext.referenced),
            "`extends:` is empty; name the parent template",
        )),
        _ => {}
    }
    if let Some(src) = &doc.source {
        check_source(t, &src.value, &src.referenced, &mut diags);
    }
    if let Some(arch) = &doc.build.architecture {
        if !matches!(arch.value.as_str(), "x86_64" | "arm64") {
            diags.push(Diagnostic::new(
                at(&arch.referenced),
                format!(
                    "unknown architecture `{}`; use `x86_64` or `arm64`",
                    arch.value
                ),
            ));
        }
    }
    let durations = [
        doc.build.timeout.as_ref(),
        doc.rebuild.as_ref().and_then(|r| r.max_age.as_ref()),
    ];
    for d in durations.into_iter().flatten() {
        if let Err(msg) = parse_duration(&d.value) {
            diags.push(Diagnostic::new(at(&d.referenced), msg));
        }
    }
    for name in doc.variables.keys() {
        if !valid_env_name(name) {
            diags.push(Diagnostic::new(
                Loc::file_start(&t.file),
                format!("variable name `{name}` is not a valid environment variable name"),
            ));
        }
    }
    for (manager, list) in doc.software.lists() {
        for spec in list {
            if spec.value.trim().is_empty() || spec.value.contains('\n') {
                diags.push(Diagnostic::new(
                    at(&spec.referenced),
                    format!("invalid {manager} package `{}`", spec.value),
                ));
            }
        }
    }
    for f in &doc.files {
        if !f.dest.value.starts_with('/') {
            diags.push(Diagnostic::new(
                at(&f.dest.referenced),
                format!(
                    "`dest: {}` must be an absolute path in the image",
                    f.dest.value
                ),
            ));
        }
        if let Some(mode) = &f.mode {
            let ok = !mode.value.is_empty()
                && mode.value.len() <= 4
                && mode.value.chars().all(|c| ('0'..='7').contains(&c));
            if !ok {
                diags.push(Diagnostic::new(
                    at(&mode.referenced),
                    format!(
                        "invalid mode `{}`; write octal bits as a string, e.g. \"0644\"",
                        mode.value
                    ),
                ));
            }
        }
    }
    for (i, step) in doc.provision.iter().enumerate() {
        match (&step.script, &step.shell) {
            (Some(_), None) | (None, Some(_)) => {}
            (Some(s), Some(_)) => diags.push(Diagnostic::new(
                at(&s.referenced),
                format!("provision[{i}] has both `script:` and `shell:`; use one per step"),
            )),
            (None, None) => diags.push(Diagnostic::new(
                Loc::file_start(&t.file),
                format!("provision[{i}] is empty; give it `script: <path>` or `shell: <command>`"),
            )),
        }
    }
    diags
}

fn check_source(
    t: &Template,
    src: &Source,
    loc: &serde_saphyr::Location,
    diags: &mut Vec<Diagnostic>,
) {
    let at = |l: &serde_saphyr::Location| t.loc(l);
    if src.ami.is_some() && src.ami_filter.is_some() {
        diags.push(Diagnostic::new(
            at(loc),
            "`source:` has both `ami:` and `ami_filter:`; give exactly one",
        ));
    }
    if src.ami.is_none() && src.ami_filter.is_none() && src.local.is_none() {
        diags.push(Diagnostic::new(
            at(loc),
            "`source:` is empty; give `ami:`, `ami_filter:` or `local:`",
        ));
    }
    if let Some(ami) = &src.ami {
        let id = ami.value.as_str();
        let ok = id.strip_prefix("ami-").is_some_and(|hex| {
            (8..=17).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            diags.push(Diagnostic::new(
                at(&ami.referenced),
                format!("`{id}` is not an AMI ID (ami- followed by 8 to 17 hex digits)"),
            ));
        }
    }
    if let Some(filter) = &src.ami_filter {
        if filter.owners.is_empty() {
            diags.push(Diagnostic::new(
                at(loc),
                "`ami_filter:` needs `owners:` (account IDs or aliases such as `amazon`); without it anyone's image could match",
            ));
        }
    }
    if let Some(local) = &src.local {
        if local.mmdebstrap.is_some() == local.rootfs.is_some() {
            diags.push(Diagnostic::new(
                at(loc),
                "`source.local:` takes exactly one of `mmdebstrap:` or `rootfs:`",
            ));
        }
    }
}
