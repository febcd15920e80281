//! amimake: incremental, content-addressed AMI builds from layered YAML
//! templates.
//!
//! A template repository becomes a DAG of layers ([`template`]); each layer
//! has a content hash ([`hash`]); caches map hashes to images ([`cache`]);
//! the executor plans and builds only the invalidated suffix of the DAG
//! ([`executor`]) with a [`builder`] backend; [`report`] renders progress and
//! versioned JSON summaries; [`cli`] is the command line.

pub mod aws;
pub mod backend;
pub mod builder;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod executor;
pub mod hash;
pub mod report;
pub mod template;
pub mod testgen;
pub mod yaml;
