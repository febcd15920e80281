//! Running a plan: a tokio scheduler over the DAG. A layer starts when its
//! parent's image is known and one of `-j` slots is free; independent
//! branches run in parallel. After a failure, without `--keep-going` no new
//! layer starts (running ones finish and are recorded); with it, only the
//! failed layer's descendants are skipped. Ctrl-C and SIGTERM cancel running
//! layers through the builder (which cleans up) and end with exit 130.
//! Every finished layer is recorded in the local cache as it finishes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::task::JoinSet;

use crate::builder::{Builder, BuiltImage, LayerError, LayerJob};
use crate::cache::sqlite::HistoryRow;
use crate::cache::{now_unix, CacheEntry, LocalCache};
use crate::error::Result;
use crate::executor::plan::{Action, Plan};
use crate::report::{rfc3339, Event, LayerResult, Reporter, SummaryLayer};
use crate::template::resolve::Project;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub build_id: String,
    pub jobs: usize,
    pub keep_going: bool,
    /// A root's source image when known (ec2), by layer index.
    pub root_images: Vec<Option<String>>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub layers: Vec<SummaryLayer>,
    pub interrupted: bool,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
    pub wall_seconds: f64,
}

impl RunOutcome {
    pub fn count(&self, result: LayerResult) -> usize {
        self.layers.iter().filter(|l| l.result == result).count()
    }
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting,
    Running,
    Done(String),
    Over(LayerResult),
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupt() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

type Finished = (usize, Result<BuiltImage, LayerError>, SystemTime, Instant);

pub async fn run(
    project: &Project,
    plan: &Plan,
    builder: Arc<dyn Builder>,
    local: &LocalCache,
    opts: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let n = plan.layers.len();
    let mut state = vec![State::Waiting; n];
    let mut times: Vec<Option<(SystemTime, SystemTime, f64)>> = vec![None; n];
    let mut adopted = vec![false; n];
    // Plan positions of each layer's parent and children, computed once.
    let pos_by_index: std::collections::HashMap<usize, usize> = plan
        .layers
        .iter()
        .enumerate()
        .map(|(p, l)| (l.index, p))
        .collect();
    let parents: Vec<Option<usize>> = plan
        .layers
        .iter()
        .map(|l| {
            project.layers[l.index]
                .parent
                .and_then(|i| pos_by_index.get(&i).copied())
        })
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (p, parent) in parents.iter().enumerate() {
        if let Some(pp) = parent {
            children[*pp].push(p);
        }
    }
    let parent_pos = |p: usize| parents[p];

    // Reused layers are done from the start.
    let mut touched = Vec::new();
    for (p, l) in plan.layers.iter().enumerate() {
        if l.action == Action::Reuse {
            let image = l
                .entry
                .as_ref()
                .map(|e| e.image.clone())
                .unwrap_or_default();
            reporter.event(&Event::Reused {
                name: project.layers[l.index].name().to_string(),
                image: image.clone(),
            });
            touched.push((&l.hash, plan.target.as_str()));
            state[p] = State::Done(image);
        }
    }
    local.touch(&touched)?;
    // Layers whose parent image is known: roots and children of reused layers.
    let mut ready: BTreeSet<usize> = (0..n)
        .filter(|&p| state[p] == State::Waiting)
        .filter(|&p| parents[p].is_none_or(|pp| matches!(state[pp], State::Done(_))))
        .collect();

    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut stop = false;
    let mut interrupted = false;
    let interrupt_fut = interrupt();
    tokio::pin!(interrupt_fut);

    loop {
        // Start what can start.
        if !stop {
            while running.len() < opts.jobs.max(1) {
                let Some(p) = ready.pop_first() else { break };
                if state[p] != State::Waiting {
                    continue;
                }
                let l = &plan.layers[p];
                let layer = &project.layers[l.index];
                let parent_image = match parent_pos(p) {
                    Some(pp) => match &state[pp] {
                        State::Done(img) => Some(img.clone()),
                        _ => None,
                    },
                    None => opts.root_images.get(l.index).cloned().flatten(),
                };
                let job = LayerJob {
                    build_id: opts.build_id.clone(),
                    layer: layer.clone(),
                    hash: l.hash.clone(),
                    record: l.built_record(),
                    parent_image,
                    parent_hash: parent_pos(p).map(|pp| plan.layers[pp].hash.clone()),
                    copy_from: l.copy_from.clone(),
                    planned_over: l.entry.as_ref().map(|e| e.image.clone()),
                };
                reporter.event(&Event::Started {
                    name: layer.name().to_string(),
                    doing: match (&l.copy_from, l.reason) {
                        (Some((region, image)), _) => format!("copying {image} from {region}"),
                        (None, reason) => format!(
                            "building ({})",
                            reason.unwrap_or(crate::executor::plan::Reason::New)
                        ),
                    },
                });
                state[p] = State::Running;
                let builder = builder.clone();
                let cancel = cancel_rx.clone();
                let wall_start = SystemTime::now();
                let mono_start = Instant::now();
                running.spawn(async move {
                    let result = builder.build(job, cancel).await;
                    (p, result, wall_start, mono_start)
                });
            }
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            joined = running.join_next() => joined,
            _ = &mut interrupt_fut, if !interrupted => {
                interrupted = true;
                stop = true;
                reporter.event(&Event::Interrupted);
                let _ = cancel_tx.send(true);
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (p, result, wall_start, mono_start) = match joined {
            Ok(done) => done,
            Err(e) => {
                // A panicking builder task: treat as a failure of unknown layer.
                tracing::error!("builder task failed: {e}");
                stop = true;
                continue;
            }
        };
        let seconds = mono_start.elapsed().as_secs_f64();
        let finished = SystemTime::now();
        times[p] = Some((wall_start, finished, seconds));
        let l = &plan.layers[p];
        let layer = &project.layers[l.index];
        let name = layer.name().to_string();
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let mut history = HistoryRow {
            build_id: opts.build_id.clone(),
            template: name.clone(),
            hash: l.hash.to_string(),
            target: plan.target.clone(),
            started_at: unix(wall_start),
            finished_at: unix(finished),
            seconds,
            result: String::new(),
        };
        match result {
            Ok(built) => {
                history.result = if built.adopted { "adopted" } else { "built" }.into();
                let entry = CacheEntry {
                    hash: l.hash.clone(),
                    target: plan.target.clone(),
                    image: built.image.clone(),
                    parent_hash: parent_pos(p).map(|pp| plan.layers[pp].hash.to_string()),
                    template: name.clone(),
                    created_at: now_unix(),
                    build_seconds: Some(seconds),
                    build_id: Some(opts.build_id.clone()),
                };
                local.record_build(Some(&entry), &history, Some(&l.built_record()))?;
                if built.adopted {
                    adopted[p] = true;
                    reporter.event(&Event::Reused {
                        name,
                        image: built.image.clone(),
                    });
                } else {
                    reporter.event(&Event::Built {
                        name,
                        image: built.image.clone(),
                        seconds,
                    });
                }
                state[p] = State::Done(built.image);
                ready.extend(
                    children[p]
                        .iter()
                        .copied()
                        .filter(|&c| state[c] == State::Waiting),
                );
            }
            Err(err) if err.cancelled => {
                history.result = "cancelled".into();
                local.record_build(None, &history, None)?;
                reporter.event(&Event::Cancelled { name });
                state[p] = State::Over(LayerResult::Cancelled);
            }
            Err(err) => {
                history.result = "failed".into();
                local.record_build(None, &history, None)?;
                reporter.event(&Event::Failed {
                    name: name.clone(),
                    message: err.message,
                    log_tail: err.log_tail,
                    seconds,
                });
                state[p] = State::Over(LayerResult::Failed);
                for (d, s) in state.iter_mut().enumerate() {
                    let chain = &project.layers[plan.layers[d].index].chain;
                    if d != p && chain.contains(&l.index) && *s == State::Waiting {
                        reporter.event(&Event::Skipped {
                            name: project.layers[plan.layers[d].index].name().to_string(),
                            because: format!("{name} failed"),
                        });
                        *s = State::Over(LayerResult::Skipped);
                    }
                }
                if !opts.keep_going {
                    stop = true;
                }
            }
        }
    }

    // What never started.
    for (p, s) in state.iter_mut().enumerate() {
        if *s == State::Waiting {
            let name = project.layers[plan.layers[p].index].name().to_string();
            if interrupted {
                reporter.event(&Event::Cancelled { name });
                *s = State::Over(LayerResult::Cancelled);
            } else {
                reporter.event(&Event::Skipped {
                    name,
                    because:
                        "an earlier layer failed (use --keep-going to continue independent layers)"
                            .into(),
                });
                *s = State::Over(LayerResult::Skipped);
            }
        }
    }
    reporter.finish();

    let layers = plan
        .layers
        .iter()
        .enumerate()
        .map(|(p, l)| {
            let (result, image) = match &state[p] {
                State::Done(img) if l.action == Action::Reuse => {
                    (LayerResult::Reused, Some(img.clone()))
                }
                State::Done(img) => (LayerResult::Built, Some(img.clone())),
                State::Over(r) => (*r, None),
                State::Waiting | State::Running => (LayerResult::Cancelled, None),
            };
            let (s, f, secs) = match times[p] {
                Some((s, f, secs)) => (Some(rfc3339(s)), Some(rfc3339(f)), Some(secs)),
                None => (None, None, None),
            };
            SummaryLayer {
                name: project.layers[l.index].name().to_string(),
                hash: l.hash.to_string(),
                result,
                image,
                started_at: s,
                finished_at: f,
                seconds: secs,
            }
        })
        .collect();
    Ok(RunOutcome {
        layers,
        interrupted,
        started_at,
        finished_at: SystemTime::now(),
        wall_seconds: clock.elapsed().as_secs_f64(),
    })
}
