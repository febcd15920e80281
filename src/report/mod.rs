//! Events in, rendering out. The executor emits [`Event`]s; a [`Reporter`]
//! renders them: spinners on a terminal ([`TerminalReporter`]), plain
//! timestamped lines otherwise ([`PlainReporter`]). The versioned JSON
//! summary written by `build --summary` is [`BuildSummary`].

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

/// What happened to one layer in a build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerResult {
    Reused,
    Built,
    Failed,
    Cancelled,
    Skipped,
}

impl LayerResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerResult::Reused => "reused",
            LayerResult::Built => "built",
            LayerResult::Failed => "failed",
            LayerResult::Cancelled => "cancelled",
            LayerResult::Skipped => "skipped",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Event {
    Reused {
        name: String,
        image: String,
    },
    /// `doing`: e.g. `building (changed)` or `copying ami-… from us-west-2`.
    Started {
        name: String,
        doing: String,
    },
    Built {
        name: String,
        image: String,
        seconds: f64,
    },
    Failed {
        name: String,
        message: String,
        log_tail: Vec<String>,
        seconds: f64,
    },
    Skipped {
        name: String,
        because: String,
    },
    Cancelled {
        name: String,
    },
    Interrupted,
}

pub trait Reporter: Send {
    fn event(&mut self, event: &Event);
    /// Called once at the end, before the final summary line.
    fn finish(&mut self) {}
}

/// Picks the terminal or the plain reporter for stderr.
pub fn reporter_for_stderr() -> Box<dyn Reporter> {
    if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
        Box::new(TerminalReporter::new())
    } else {
        Box::<PlainReporter>::default()
    }
}

fn failure_lines(name: &str, message: &str, log_tail: &[String]) -> String {
    let mut s = format!("{name}: {message}");
    if !log_tail.is_empty() {
        s.push_str(&format!("\n  last {} line(s) of the log:", log_tail.len()));
        for line in log_tail {
            s.push_str(&format!("\n  | {line}"));
        }
    }
    s
}

/// One timestamped line per event, for logs and CI. `reused` lines (a
/// burst of them when a plan starts) are written together with the next
/// other event, in one write.
#[derive(Default)]
pub struct PlainReporter {
    pending: String,
}

impl Drop for PlainReporter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Reporter for PlainReporter {
    fn finish(&mut self) {
        if !self.pending.is_empty() {
            let _ = std::io::stderr().lock().write_all(self.pending.as_bytes());
            self.pending.clear();
        }
    }

    fn event(&mut self, event: &Event) {
        let ts = humantime::format_rfc3339_seconds(SystemTime::now());
        let line = match event {
            Event::Reused { name, image } => format!("{name}: reused {image}"),
            Event::Started { name, doing } => format!("{name}: {doing}"),
            Event::Built {
                name,
                image,
                seconds,
            } => format!("{name}: built {image} in {seconds:.1}s"),
            Event::Failed {
                name,
                message,
                log_tail,
                seconds,
            } => {
                format!(
                    "{} (after {seconds:.1}s)",
                    failure_lines(name, message, log_tail)
                )
            }
            Event::Skipped { name, because } => format!("{name}: skipped ({because})"),
            Event::Cancelled { name } => format!("{name}: cancelled"),
            Event::Interrupted => {
                "interrupted: stopping running layers and cleaning up".to_string()
            }
        };
        self.pending.push_str(&format!("[{ts}] {line}\n"));
        if !matches!(event, Event::Reused { .. }) {
            self.finish();
        }
    }
}

/// A spinner per running layer; finished layers print a line above.
pub struct TerminalReporter {
    multi: MultiProgress,
    bars: Vec<(String, ProgressBar)>,
}

impl TerminalReporter {
    pub fn new() -> Self {
        TerminalReporter {
            multi: MultiProgress::new(),
            bars: Vec::new(),
        }
    }

    fn take_bar(&mut self, name: &str) -> Option<ProgressBar> {
        let pos = self.bars.iter().position(|(n, _)| n == name)?;
        Some(self.bars.remove(pos).1)
    }

    fn line(&self, text: String) {
        let _ = self.multi.println(text);
    }
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for TerminalReporter {
    fn event(&mut self, event: &Event) {
        match event {
            Event::Reused { name, image } => self.line(format!("   reused  {name} {image}")),
            Event::Started { name, doing } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(format!("{name}: {doing}"));
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bars.push((name.clone(), bar));
            }
            Event::Built {
                name,
                image,
                seconds,
            } => {
                if let Some(bar) = self.take_bar(name) {
                    bar.finish_and_clear();
                }
                self.line(format!("    built  {name} {image} in {seconds:.1}s"));
            }
            Event::Failed {
                name,
                message,
                log_tail,
                ..
            } => {
                if let Some(bar) = self.take_bar(name) {
                    bar.finish_and_clear();
                }
                self.line(format!(
                    "   FAILED  {}",
                    failure_lines(name, message, log_tail)
                ));
            }
            Event::Skipped { name, because } => self.line(format!("  skipped  {name} ({because})")),
            Event::Cancelled { name } => {
                if let Some(bar) = self.take_bar(name) {
                    bar.finish_and_clear();
                }
                self.line(format!("cancelled  {name}"));
            }
            Event::Interrupted => {
                self.line("interrupted: stopping running layers and cleaning up".into())
            }
        }
    }

    fn finish(&mut self) {
        for (_, bar) in self.bars.drain(..) {
            bar.finish_and_clear();
        }
    }
}

/// `build --summary FILE`, schema version 1.
#[derive(Clone, Debug, Serialize)]
pub struct BuildSummary {
    pub schema_version: u32,
    pub build_id: String,
    pub target: String,
    pub started_at: String,
    pub finished_at: String,
    pub wall_seconds: f64,
    pub layers: Vec<SummaryLayer>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SummaryLayer {
    pub name: String,
    pub hash: String,
    pub result: LayerResult,
    pub image: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub seconds: Option<f64>,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Formats seconds for people: `42s`, `12m 5s`, `1h 03m`.
pub fn human_seconds(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{secs:.1}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    }
}
