//! # connector-api
//!
//! What a Sluice connector author depends on: the [`Source`] and [`Sink`] traits, the
//! typed [`SourceConnector`] / [`SinkConnector`] traits and their erased forms, the
//! [`Batch`] (an Arrow `RecordBatch` plus the [`Offsets`] it advances), the [`Error`]
//! model, the schema drift policy, a row-wise builder, and (feature `testkit`) an
//! in-memory source and sink with failure injection and contract suites.
//!
//! ## The delivery contract
//!
//! The runtime drives every pipeline in one fixed order:
//!
//! 1. `source.next_batch()` returns records and the offsets they advance;
//! 2. each sink `write`s the batch;
//! 3. each sink `flush`es: everything written is durable when it returns (a
//!    transactional sink stores the offsets in the same transaction as the data);
//! 4. the runtime stores the offsets in the checkpoint store (a durable transaction);
//! 5. the runtime calls `source.commit(offsets)`: only now may the source release data.
//!
//! At-least-once is the floor. A sink that stores offsets with its data (SQLite,
//! PostgreSQL) and reports them from `open` gives exactly-once; a sink that writes
//! objects named from their first offset and publishes them atomically gives
//! exactly-once by idempotence.
//!
//! | crash point                    | what recovery does                                        |
//! |--------------------------------|-----------------------------------------------------------|
//! | before or during `write`       | nothing was durable; restart replays from the last checkpoint |
//! | during `flush`                 | the sink's transaction or rename did not happen or did whole; restart replays from the last checkpoint (or the sink's stored offsets) |
//! | after `flush`, before checkpoint | data is durable, checkpoint is old: replay; a transactional sink reports newer offsets so nothing repeats, others may repeat (at-least-once) |
//! | after checkpoint, before `commit` | restart resumes from the checkpoint; the source commits again |
//! | after `commit`                 | nothing to do                                             |
//!
//! Nothing is ever committed to a source before every sink has flushed it.

#![warn(missing_docs)]

#[doc = include_str!("../AUTHORING.md")]
pub mod authoring {}

#[cfg(feature = "plugin")]
pub mod abi;
pub mod batch;
pub mod config;
pub mod error;
pub mod offsets;
pub mod plugin;
pub mod rows;
pub mod schema;
pub mod sink;
pub mod source;
pub mod task;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod types;

pub use batch::{columns, Batch, Reject};
pub use config::{config_schema, parse_config, Secret};
pub use error::{Error, ErrorKind, Result};
pub use offsets::{stable_hash, Offsets};
pub use plugin::{DynSinkConnector, DynSourceConnector, SinkConnector, SourceConnector};
pub use rows::{RowBuilder, Value};
pub use schema::{conform, Conformed, DriftPolicy};
pub use sink::{Sink, SinkContext, SinkState};
pub use source::{Source, SourceContext};
pub use task::blocking;
pub use types::{parse_type, schema_from_specs, type_name, FieldSpec};

/// Re-exported Arrow crates, so connectors and the runtime agree on one version.
pub use arrow_array;
/// Re-exported Arrow schema crate.
pub use arrow_schema;
/// Re-exported so connectors implement the traits with the same macro version.
pub use async_trait::async_trait;
