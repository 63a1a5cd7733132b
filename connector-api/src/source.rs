//! The source side of the contract.

use std::time::Duration;

use async_trait::async_trait;

use crate::batch::Batch;
use crate::error::Result;
use crate::offsets::Offsets;

/// What the runtime tells a source when it opens it.
#[derive(Clone, Debug)]
pub struct SourceContext {
    /// Name of the pipeline (for logs and connector-side state).
    pub pipeline: String,
    /// Preferred number of records per batch (`[batch] max_records`).
    pub batch_size: usize,
    /// A source with no data ready returns an empty batch after at most this long, so
    /// the runtime can deliver commits and checkpoints between calls.
    pub idle_timeout: Duration,
    /// The splits to read, when several runtimes share the pipeline's work: only
    /// these, each to its end as it is now (a watched directory is not watched), then
    /// `Ok(None)`. Split ids as the source names them in its offsets and in
    /// [`SourceConnector::splits`](crate::SourceConnector::splits). `None`: every split
    /// the config covers.
    pub splits: Option<Vec<String>>,
    /// The columns the pipeline reads, when it reads fewer than the records have (the
    /// first transform is a query that names only these): a source may leave the
    /// others out of its batches, unread and unchecked, keeping the record schema's
    /// order. `None`: every column. A source may ignore it and send every column.
    pub columns: Option<Vec<String>>,
}

impl SourceContext {
    /// A context for tests and tools: pipeline `name`, 8,192 records, 1 s idle timeout,
    /// every split, every column.
    pub fn for_pipeline(name: impl Into<String>) -> Self {
        SourceContext {
            pipeline: name.into(),
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            splits: None,
            columns: None,
        }
    }
}

/// The splits a read covers now ([`SourceConnector::splits`](crate::SourceConnector::splits)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitList {
    /// The splits.
    pub splits: Vec<ListedSplit>,
    /// More splits may come later (a watched directory): runtimes that share the
    /// work keep listing, and never end by themselves.
    pub growing: bool,
    /// How the splits are cut, when a setting decides it (`split_key_width = 1000`);
    /// None: one split per table, file or object, as a read without splits goes. A
    /// store that recorded another cut for the pipeline refuses the listing: its
    /// splits would overlap those read before. (A store that holds splits listed
    /// before it recorded cuts takes the first cut it is given.)
    pub cut: Option<String>,
}

/// One split of a [`SplitList`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedSplit {
    /// The split id, as the source's offsets name it.
    pub id: String,
    /// What the split holds now, when it can change (a file's inode and size, an
    /// object's ETag): a split read to its end is read again, from its checkpoint,
    /// once it is listed with another version. None: it does not change.
    pub version: Option<String>,
}

/// How far a bounded read has come, for the progress bar and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Units read so far (whether delivered yet or not).
    pub done: u64,
    /// Units in the whole read, as far as the source knows (an estimate for some
    /// sources: `done` may pass it).
    pub total: u64,
    /// What is counted.
    pub unit: ProgressUnit,
}

/// What a [`Progress`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressUnit {
    /// Records.
    Records,
    /// Bytes of input (files, objects).
    Bytes,
}

impl ProgressUnit {
    /// The lowercase name used in metric labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ProgressUnit::Records => "records",
            ProgressUnit::Bytes => "bytes",
        }
    }
}

/// How far one split of a source is behind the end of its input, in whichever measures
/// the source can tell: a Kafka partition's last stable offset against the position
/// read (records); a PostgreSQL replication stream's WAL position against the last
/// change read (bytes) and that change's commit time (seconds); the files or objects
/// that a file or S3 source has found and not read to their end (files, bytes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lag {
    /// The split, as named in the offsets (`topic/partition` for Kafka).
    pub split: String,
    /// Records (or offsets) not read yet.
    pub records: Option<u64>,
    /// Bytes of the input not read yet (PostgreSQL CDC: WAL).
    pub bytes: Option<u64>,
    /// How old the input at the read position is: 0 when caught up.
    pub seconds: Option<f64>,
    /// Files or objects with data not read yet (file and S3 sources).
    pub files: Option<u64>,
}

/// Reads records, one batch at a time. The runtime owns the loop; one task owns one
/// instance, so methods take `&mut self`.
///
/// Calls come in this order: `open` once, then `next_batch` and `commit` interleaved
/// (never concurrently), then `close`. `commit` is called only for positions that every
/// sink has made durable and the checkpoint store has recorded.
#[async_trait]
pub trait Source: Send {
    /// Connects and positions the reader just after `committed` (empty = from the start
    /// or wherever the config says). A split absent from `committed` starts fresh.
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()>;

    /// The next batch; `Ok(None)` when a bounded source has read everything.
    ///
    /// Waits without spinning when no data is ready, but returns an empty batch after
    /// `ctx.idle_timeout` so that commits are not held back. A retryable error must leave
    /// the source able to retry the same call without losing or repeating records. The
    /// runtime may drop the returned future only when it is shutting down.
    async fn next_batch(&mut self) -> Result<Option<Batch>>;

    /// Data up to `offsets` is durable downstream: the source may release it (commit to
    /// Kafka, advance a replication slot, delete a processed file). Default: nothing.
    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let _ = offsets;
        Ok(())
    }

    /// Releases connections and handles. Default: nothing.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// How far a bounded read has come, when the source knows its total (datagen's
    /// `count`, the bytes of the files or objects a glob matched). Called after each batch; must
    /// be cheap (no I/O). Default: unknown.
    fn progress(&self) -> Option<Progress> {
        None
    }

    /// How far each split is behind the end of its input, for splits the source can
    /// tell about. Called after each batch (also an idle one) and every second while the
    /// pipeline is paused; must be cheap (no I/O). Default: nothing known.
    fn lag(&self) -> Vec<Lag> {
        Vec::new()
    }

    /// True when a read from a checkpoint returns the records after it in the order
    /// they came the first time, as long as the input did not change (a table in key
    /// order, files in name order, a log read by sequence). A pipeline with several
    /// sinks that stored different positions (a crash between two sinks' flushes)
    /// then resumes from the oldest, and each sink that was ahead is handed none of
    /// the records up to its own position, counted, once the run is confirmed to reach
    /// that position at that count; otherwise it gets them again (at least once, never
    /// fewer). Known before `open`, from the config alone. Default: false (partitions
    /// interleaved as they arrive, messages a broker redelivers): such a pipeline
    /// resumes from the checkpoint store, and a sink that was ahead may receive
    /// records again.
    fn replays_in_order(&self) -> bool {
        false
    }

    /// For a source whose records keep their positions for good (a Kafka partition's
    /// offsets: the same offset is the same message in every read) and whose batches
    /// say where each record lies ([`Batch::positions`]): the position of the first
    /// record of `split` that `offset`, an offset this source gave for that split, does
    /// not cover (every record of the split below it, it covers). A pipeline with
    /// several sinks that stored different offsets (a crash between two sinks'
    /// flushes) then resumes each split from the oldest sink's offset, and hands each
    /// sink none of the records below its own, record by record, whatever order the
    /// splits interleave in: exactly once for every sink that stores offsets. Known
    /// before `open`, from the offsets alone; asked for every offset of one resume, it
    /// may answer None for one it cannot compare with those asked before (MySQL:
    /// another server's binlog), which sends that resume back to
    /// [`Source::replays_in_order`]. Default: None (records carry no
    /// positions; [`Source::replays_in_order`] decides). Not asked across the plugin
    /// boundary yet.
    fn covered_below(&self, split: &str, offset: &serde_json::Value) -> Option<u128> {
        let _ = (split, offset);
        None
    }
}
