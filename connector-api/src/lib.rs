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
//! | after `flush`, before checkpoint | data is durable, checkpoint is old: replay; a transactional sink reports newer offsets so nothing repeats (beside a sink that stores none, only from a source that replays in order or keeps record positions, see the next row), others may repeat (at-least-once) |
//! | between two sinks' flushes      | the sinks that flushed hold newer offsets than the rest: a source whose records [keep their positions](Source::covered_below) resumes each split from the oldest, and each sink is handed none of the records below its own offsets, record by record; a source that [replays in order](Source::replays_in_order) resumes from the oldest, and each sink is handed none of the records its own offsets say it has, once the run reaches that position at that count (else it gets them again); otherwise the pipeline resumes from the checkpoint and the sinks ahead may repeat records |
//! | after checkpoint, before `commit` | restart resumes from the checkpoint; the source commits again |
//! | after `commit`                 | nothing to do                                             |
//! | restart while the previous run's commit is in flight | the server may still be committing the killed run's last flush when the new run opens; each sink makes `open` see that flush whole or not at all before it reports offsets (below) |
//!
//! A killed process can leave a write in flight on a server, and a supervisor may start
//! the next run before it lands. How each sink that keeps offsets outside the process
//! stays exact:
//!
//! - **PostgreSQL**: the sink holds a session advisory lock keyed by its offsets row
//!   (pipeline, sink) for the whole run, taken on the connection that writes the data
//!   before it reads the offsets. A killed run's backend keeps the lock until its commit
//!   in flight has finished or aborted, then ends and releases it; the new run waits for
//!   it (`lock_timeout`), so it reads the offsets that commit stored. A second run of a
//!   live pipeline fails with [`ErrorKind::Conflict`] naming the holder's backend.
//! - **SQLite**: the write happens inside the process; its death ends it, and the next
//!   open rolls back a hot journal. Nothing can land later.
//! - **File**: publishing is a rename, complete when the syscall returns.
//! - **S3**: object names derive from the first offset they hold, and the intent object
//!   names the uploads of a flush before they complete; a request the killed run left in
//!   flight can only complete an upload the next run rolls forward anyway, or write the
//!   same state, so a late request changes nothing the new run relies on.
//! - **Iceberg**: every commit goes through a catalog whose table load first checks
//!   that the table still holds this run's last offsets under the sink's key; the
//!   append requires the snapshot it was checked on, and the catalog's compare-and-set
//!   on the metadata location makes check and commit one step. A killed run's commit
//!   landing late fails the new run's swap, and the next attempt's check stops the
//!   flush ([`ErrorKind::Conflict`]); the restart reads the newer offsets.
//! - **Kafka** (`exactly_once`): `init_transactions` bumps the `transactional.id` epoch,
//!   which makes the coordinator finish or abort the earlier producer's transaction and
//!   fences that producer from writing again.
//!
//! A new sink that stores offsets with its data must give the same guarantee from its
//! first release: fence or wait out an earlier run's writes before `open` reads offsets.
//!
//! Nothing is ever committed to a source before every sink has flushed it.
//!
//! Sources whose server keeps the position (a PostgreSQL replication slot, a Kafka
//! group) are told only what the checkpoint holds; where the server's state can change
//! under a stopped pipeline, the source checks it at `open` and fails rather than read
//! on from a position that no longer means what it meant:
//!
//! - **PostgreSQL CDC**: the slot's confirmed position moves on `commit` (the end of
//!   the last whole transaction the checkpoint holds) and, while idle and flushed, to
//!   the keepalive position, but never past the WAL position of the last check that the
//!   publication covers the table. A crash inside a transaction resumes inside it: the
//!   offset counts the changes of that transaction already returned, and they are
//!   skipped. A slot that is gone or invalidated, a table dropped or created again (its
//!   OID), or a publication that lost the table is an error at `open` (and, for the
//!   table and the publication, within a second while streaming): the changes in
//!   between were never decoded.

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

pub use batch::{columns, Batch, Positions, Reject};
pub use config::{config_schema, parse_config, redacted_url, Secret};
pub use error::{Error, ErrorKind, Result};
pub use offsets::{stable_hash, Offsets, PositionNames};
pub use plugin::{DynSinkConnector, DynSourceConnector, SinkConnector, SourceConnector};
pub use rows::{RowBuilder, Value};
pub use schema::DriftPolicy;
pub use sink::{Sink, SinkContext, SinkState};
pub use source::{Lag, ListedSplit, Progress, ProgressUnit, Source, SourceContext, SplitList};
pub use task::blocking;
pub use types::{parse_type, schema_from_specs, type_name, FieldSpec};

/// Re-exported Arrow crates, so connectors and the runtime agree on one version.
pub use arrow_array;
/// Re-exported Arrow schema crate.
pub use arrow_schema;
/// Re-exported so connectors implement the traits with the same macro version.
pub use async_trait::async_trait;
