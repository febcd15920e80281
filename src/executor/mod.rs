//! The executor: [`plan`] decides (pure: graph, hashes and cache in; actions
//! and reasons out), [`run`] schedules the builds on tokio.

pub mod plan;
pub mod run;
