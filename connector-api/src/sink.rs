//! The sink side of the contract.

use arrow_schema::SchemaRef;
use async_trait::async_trait;

use crate::batch::Batch;
use crate::error::Result;
use crate::offsets::Offsets;

/// What the runtime tells a sink when it opens it.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// Name of the pipeline; transactional sinks key their stored offsets by it.
    pub pipeline: String,
    /// Name of this sink within the pipeline (`sink` or the `[sinks.NAME]` key).
    pub sink: String,
}

impl SinkContext {
    /// A context for tests and tools.
    pub fn for_pipeline(name: impl Into<String>) -> Self {
        SinkContext {
            pipeline: name.into(),
            sink: "sink".into(),
        }
    }
}

/// What a sink found when it opened.
#[derive(Clone, Debug, Default)]
pub struct SinkState {
    /// Offsets stored together with the data by a transactional sink: `Some` with what
    /// is stored, and `Some` of empty offsets when nothing is (a new or emptied
    /// destination); `None` from a sink that does not store offsets. The runtime
    /// resumes the source from the oldest of these (empty: from the start, even when
    /// the checkpoint store has a position, since the data it stands for is gone), and a
    /// sink whose offsets are further on skips the records up to them; with no sink
    /// reporting `Some`, from the checkpoint store (see the crate's delivery contract).
    pub offsets: Option<Offsets>,
    /// The schema the destination already has (an existing table), so the runtime can
    /// apply the drift policy to the first batch too. `None` = no fixed schema yet.
    pub schema: Option<SchemaRef>,
}

/// Writes batches. The runtime owns the loop; one task owns one instance.
///
/// Calls come in this order: `open` once, then `write` and `flush` interleaved, then
/// `close`. Every batch a sink sees has already been conformed to the sink's schema by
/// the drift policy; a batch whose schema gained nullable columns is an `evolve` step
/// the sink applies (add the column, roll to a new file).
#[async_trait]
pub trait Sink: Send {
    /// Connects, creates what is missing, and reports what is already there.
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState>;

    /// The position this sink's records resume from, told after `open` and before the
    /// first `write`: where the run starts (the oldest sink's offsets, or the
    /// checkpoint; empty: the start), or this sink's own offsets when it was ahead and
    /// catches up (if the run cannot confirm that the records read again are those it
    /// has, it gets them after all, from where the run started). Records then come in
    /// the order they came after that position before, for a source that reads in
    /// order, so a sink whose writes are made idempotent by position (message ids a
    /// broker de-duplicates) derives them from it. Default: nothing. Not called across
    /// the plugin boundary yet.
    async fn resume(&mut self, from: &Offsets) -> Result<()> {
        let _ = from;
        Ok(())
    }

    /// The least time this sink wants between flushes, where each flush costs its
    /// readers something (a table commit: a snapshot and a metadata file each). The
    /// runtime then checkpoints the whole pipeline no more often than this, except
    /// when the source asks for a checkpoint, on pause and stop, and at the end.
    /// Default: none, the pipeline's `checkpoint.interval`. Not asked across the
    /// plugin boundary yet.
    fn flush_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Accepts a batch. Need not be durable until `flush`. Records the destination
    /// cannot take (a message over the broker's size limit, an object key too long)
    /// are found before any of the batch is written and returned as
    /// [`crate::Error::refused`]: the runtime dead-letters them or stops, and writes
    /// the rest again.
    async fn write(&mut self, batch: &Batch) -> Result<()>;

    /// Makes everything written so far durable; when it returns, the runtime records
    /// `offsets` (the positions after the last written batch) in the checkpoint store.
    /// A transactional sink stores `offsets` atomically with the data.
    async fn flush(&mut self, offsets: &Offsets) -> Result<()>;

    /// Releases connections and handles, discarding anything not flushed.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
