//! Errors and the exit codes they map to.
//!
//! Every failure amimake reports is an [`Error`]; [`Error::exit_code`] is the
//! one place that maps an error kind to the documented exit codes:
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success |
//! | 1    | a layer failed, or a runtime failure (cache, I/O) |
//! | 2    | usage, configuration or template error |
//! | 130  | interrupted (Ctrl-C or SIGTERM) |
//!
//! Template and configuration problems are [`Diagnostic`]s: a location
//! (`file:line:col`, relative to the project root), a lowercase message and
//! notes that name the other files involved or say what to do.

use std::fmt;
use std::path::PathBuf;

/// A position in a file of the user's project.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Loc {
    /// Path relative to the project root where possible, `/` separated.
    pub file: String,
    pub line: u64,
    pub col: u64,
}

impl Loc {
    pub fn new(file: impl Into<String>, line: u64, col: u64) -> Self {
        Loc {
            file: file.into(),
            line,
            col,
        }
    }

    /// The start of a file, for problems that concern the file as a whole.
    pub fn file_start(file: impl Into<String>) -> Self {
        Loc::new(file, 1, 1)
    }

    pub fn from_yaml(file: &str, location: &serde_saphyr::Location) -> Self {
        Loc::new(file, location.line().max(1), location.column().max(1))
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One located problem in the user's templates or configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Loc,
    pub message: String,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn new(loc: Loc, message: impl Into<String>) -> Self {
        Diagnostic {
            loc,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.loc, self.message)?;
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}

/// Renders a list of diagnostics, one block each, sorted by location.
pub fn render_diagnostics(diags: &[Diagnostic]) -> String {
    let mut sorted: Vec<&Diagnostic> = diags.iter().collect();
    sorted.sort_by(|a, b| a.loc.cmp(&b.loc));
    sorted.dedup();
    let mut out = String::new();
    for d in sorted {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    let n = diags.len();
    out.push_str(&format!("{n} error{} found", if n == 1 { "" } else { "s" }));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Problems in templates or `amimake.yaml`, all of them, located.
    #[error("{}", render_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
    /// Bad command-line usage or project setup (no `amimake.yaml`, unknown
    /// template name on the command line, ...).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache: {0}")]
    Cache(String),
    /// One or more layers failed to build; details were already reported.
    #[error("{0}")]
    BuildFailed(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::Usage(_) => 2,
            Error::Io { .. } | Error::Cache(_) | Error::BuildFailed(_) => 1,
            Error::Interrupted => 130,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Cache(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
