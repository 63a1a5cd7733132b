//! # runtime
//!
//! The `sluice` binary as a library: command line ([`cli`]), pipeline files
//! ([`config`]), the connector registry ([`registry`]), the engine ([`pipeline`]),
//! the checkpoint store ([`checkpoint`]), transforms, retries, progress and shutdown.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod describe;
pub mod interpolate;
pub mod pipeline;
pub mod plugin;
pub mod progress;
pub mod registry;
pub mod retry;
pub mod shutdown;
pub mod transform;
