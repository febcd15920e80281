//! The simulate backend: image IDs `sim-<hash prefix>`, a configurable sleep
//! per layer (`--simulate-duration NAME=SECONDS`), and layers that fail on
//! request (`--simulate-fail NAME`). Its cache entries use the target
//! `simulate`, apart from real ones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::builder::{cancelled, BuildFuture, Builder, BuiltImage, LayerError, LayerJob};

pub const TARGET: &str = "simulate";

#[derive(Clone, Debug, Default)]
pub struct SimulateBuilder {
    pub durations: HashMap<String, Duration>,
    pub fail: HashSet<String>,
}

impl Builder for SimulateBuilder {
    fn target(&self) -> &str {
        TARGET
    }

    fn build(&self, job: LayerJob, cancel: tokio::sync::watch::Receiver<bool>) -> BuildFuture<'_> {
        Box::pin(async move {
            let name = job.name().to_string();
            let sleep = self.durations.get(&name).copied().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = cancelled(cancel) => return Err(LayerError::cancelled()),
            }
            if self.fail.contains(&name) {
                let steps = job.record.labels.provision.len();
                return Err(LayerError {
                    message: format!("simulated failure of `{name}` (--simulate-fail)"),
                    log_tail: vec![
                        format!(
                            "+ simulate: {name} on {}",
                            job.parent_image.as_deref().unwrap_or("its source")
                        ),
                        format!("+ simulate: {steps} provision step(s)"),
                        "simulate: exit status 1".to_string(),
                    ],
                    cancelled: false,
                });
            }
            Ok(BuiltImage::new(format!("sim-{}", &job.hash.as_str()[..17])))
        })
    }
}
