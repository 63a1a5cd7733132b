//! # runtime
//!
//! The `sluice` binary as a library: command line ([`cli`]), pipeline files
//! ([`config`]), the connector registry ([`registry`]), the engine ([`pipeline`]),
//! the checkpoint store ([`checkpoint`]), the pipelines of a run and their control and
//! reload ([`service`]), what they report ([`telemetry`]) and the HTTP API ([`http`]),
//! transforms, retries, progress and shutdown.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod describe;
pub mod http;
pub mod interpolate;
pub mod lock;
pub mod pipeline;
pub mod plugin;
pub mod progress;
pub mod registry;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod transform;
