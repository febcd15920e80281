//! Builders turn one layer miss into an image. [`Builder`] is the trait the
//! executor drives; [`simulate`] is the first-class test backend.
//!
//! Invariants every builder keeps:
//! - `build` returns only when nothing it started is left running: on
//!   success, on failure and when `cancel` turns true (Ctrl-C, SIGTERM, or a
//!   sibling's failure without `--keep-going` does *not* cancel running
//!   layers; only interrupts do).
//! - A failed build says why in [`LayerError::message`] and gives the tail
//!   of the layer's log, which the reporter shows.

pub mod bootstrap;
pub mod ec2;
pub mod leased;
pub mod local;
pub mod simulate;

use std::future::Future;
use std::pin::Pin;

use crate::hash::{LayerHash, LayerRecord};
use crate::template::resolve::Layer;

/// Everything a builder needs to build one layer.
#[derive(Clone, Debug)]
pub struct LayerJob {
    pub build_id: String,
    pub layer: Layer,
    pub hash: LayerHash,
    pub record: std::sync::Arc<LayerRecord>,
    /// The parent layer's image; for a root, its source image when known.
    pub parent_image: Option<String>,
    pub parent_hash: Option<LayerHash>,
    /// Copy this (region, image) instead of building (ec2 multi-region).
    pub copy_from: Option<(String, String)>,
    /// The cached image the plan saw for this layer (a forced, expired or
    /// stale rebuild replaces it); None for a miss.
    pub planned_over: Option<String>,
}

impl LayerJob {
    pub fn name(&self) -> &str {
        self.layer.name()
    }
}

/// A finished layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    pub image: String,
    /// Snapshot IDs behind the image, where the backend knows them.
    pub snapshots: Vec<String>,
    /// Another amimake process built it (under a shared-cache lease) and
    /// this one adopted its image instead of baking the layer again.
    pub adopted: bool,
}

impl BuiltImage {
    pub fn new(image: impl Into<String>) -> Self {
        BuiltImage {
            image: image.into(),
            snapshots: Vec::new(),
            adopted: false,
        }
    }
}

/// Why a layer did not produce an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerError {
    pub message: String,
    pub log_tail: Vec<String>,
    /// The build was stopped by an interrupt rather than failing.
    pub cancelled: bool,
}

impl LayerError {
    pub fn failed(message: impl Into<String>) -> Self {
        LayerError {
            message: message.into(),
            log_tail: Vec::new(),
            cancelled: false,
        }
    }

    pub fn cancelled() -> Self {
        LayerError {
            message: "cancelled".into(),
            log_tail: Vec::new(),
            cancelled: true,
        }
    }
}

pub type BuildFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BuiltImage, LayerError>> + Send + 'a>>;

/// A backend that builds layers.
pub trait Builder: Send + Sync {
    /// The cache target this builder's images belong to, e.g. `simulate`.
    fn target(&self) -> &str;

    /// Builds `job` on its parent image. Must stop promptly, cleaning up,
    /// once `cancel` becomes true.
    fn build(&self, job: LayerJob, cancel: tokio::sync::watch::Receiver<bool>) -> BuildFuture<'_>;
}

/// Resolves when `cancel` turns true (or its sender is dropped).
pub async fn cancelled(mut cancel: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
