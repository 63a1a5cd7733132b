//! The unit of data: an Arrow `RecordBatch` plus the offsets it advances.

use arrow_array::RecordBatch;

use crate::error::Error;
use crate::offsets::Offsets;

/// Reserved names of the metadata columns that event-stream sources add when asked and
/// sinks consume when configured. Use these constants, never the literals.
pub mod columns {
    /// Message key (binary or utf8).
    pub const KEY: &str = "_key";
    /// Message headers (map of utf8 to binary).
    pub const HEADERS: &str = "_headers";
    /// Event timestamp (Timestamp(ms or µs, UTC)).
    pub const TIMESTAMP: &str = "_timestamp";
    /// Topic or stream name.
    pub const TOPIC: &str = "_topic";
    /// Partition number.
    pub const PARTITION: &str = "_partition";
    /// Offset within the partition.
    pub const OFFSET: &str = "_offset";
    /// Change operation of a CDC record: `c`, `u`, `d`, `t` (create, update, delete, truncate).
    pub const OP: &str = "_op";
    /// Source position of a record in human form (file and line, table and key).
    pub const POSITION: &str = "_position";
    /// Log position of a CDC record (PostgreSQL LSN as text).
    pub const LSN: &str = "_lsn";
    /// A message's id in its stream, as text (a Redis stream entry id).
    pub const ID: &str = "_id";

    /// The error of change records (with [`OP`]) a table sink in insert mode would add
    /// as rows: deletes and updates apply only by key, in `upsert` mode.
    pub fn changes_need_upsert(table: &str) -> crate::Error {
        crate::Error::config(format!(
            "table \"{table}\": change records (with {OP}) need mode = \"upsert\" and key columns, so updates and deletes apply"
        ))
        .with_field("mode")
    }

    /// True for the reserved metadata column names above. The drift policy never
    /// applies to them: they travel to the sink, which consumes them or ignores them.
    pub fn is_reserved(name: &str) -> bool {
        [
            KEY, HEADERS, TIMESTAMP, TOPIC, PARTITION, OFFSET, OP, POSITION, LSN, ID,
        ]
        .contains(&name)
    }
}

/// A record that a source could not read, kept whole so it can go to the dead-letter sink.
#[derive(Debug)]
pub struct Reject {
    /// The split the record came from.
    pub split: String,
    /// Where it was, in human form: `file "in/a.jsonl" line 17`.
    pub position: String,
    /// The record as read, lossily decoded as UTF-8.
    pub raw: String,
    /// Why it could not be read (usually [`crate::ErrorKind::Data`]).
    pub error: Error,
    /// The record's bytes exactly as read, where `raw` may not hold all of them (a
    /// message's payload, a line that is not UTF-8): the dead letter keeps them.
    pub bytes: Option<Vec<u8>>,
    /// The message's key as read (event streams).
    pub key: Option<Vec<u8>>,
    /// The message's headers as read (event streams): names and values (a value may
    /// be null).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Reject {
    /// A reject of the record at `position` in `split`, read as `raw`, for `error`;
    /// no bytes, key or headers kept beyond `raw`.
    pub fn new(
        split: impl Into<String>,
        position: impl Into<String>,
        raw: impl Into<String>,
        error: Error,
    ) -> Self {
        Reject {
            split: split.into(),
            position: position.into(),
            raw: raw.into(),
            error,
            bytes: None,
            key: None,
            headers: Vec::new(),
        }
    }
}

/// Records with one schema and the source positions they advance.
///
/// `offsets` holds, per split, the position *after* the last record of this batch; a
/// batch may have zero rows and still advance offsets (e.g. only rejected records, or a
/// finished file). `rejects` holds records the source could not decode, in the same
/// position range; the runtime handles them per `errors.tolerance`.
#[derive(Debug)]
pub struct Batch {
    /// The records.
    pub records: RecordBatch,
    /// Per split, the position after this batch.
    pub offsets: Offsets,
    /// Records that could not be read.
    pub rejects: Vec<Reject>,
    /// Checkpoint soon after this batch instead of at the interval: the source holds
    /// as many unacknowledged messages as its broker lets it (a prefetch, a receive
    /// maximum) and reads no further until a commit acknowledges them. Not carried
    /// across the plugin boundary yet.
    pub checkpoint: bool,
    /// Where each record lies in its split, from a source whose records keep their
    /// positions for good ([`crate::Source::covered_below`]). Not carried across the
    /// plugin boundary yet.
    pub positions: Option<Positions>,
}

impl Batch {
    /// A batch of `records` advancing `offsets`, with no rejects.
    pub fn new(records: RecordBatch, offsets: Offsets) -> Self {
        Batch {
            records,
            offsets,
            rejects: Vec::new(),
            checkpoint: false,
            positions: None,
        }
    }

    /// A batch with no records that advances nothing: what a waiting source returns
    /// after `idle_timeout` so the runtime can deliver commits.
    pub fn idle() -> Self {
        Batch::new(
            RecordBatch::new_empty(std::sync::Arc::new(arrow_schema::Schema::empty())),
            Offsets::new(),
        )
    }

    /// True for a batch that carries no records, no rejects and no offsets.
    pub fn is_idle(&self) -> bool {
        self.records.num_rows() == 0 && self.rejects.is_empty() && self.offsets.is_empty()
    }

    /// Number of records.
    pub fn num_rows(&self) -> usize {
        self.records.num_rows()
    }

    /// Memory held by the record columns, in bytes (what the in-flight limit counts).
    pub fn byte_size(&self) -> usize {
        self.records.get_array_memory_size()
    }
}

/// Where each record of a batch lies in its split: the split, and the record's position
/// in it (a Kafka partition's offset; a WAL change's commit position and its place in
/// the transaction, as one number). Only for a source whose positions never name
/// another record ([`crate::Source::covered_below`]): after a crash between two sinks'
/// flushes, the runtime hands a sink that was ahead none of the records below its own
/// offsets, record by record, however the splits interleave in the read again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Positions {
    splits: Vec<String>,
    /// Per record in row order: its split (an index into `splits`) and its position.
    records: Vec<(u32, u128)>,
}

impl Positions {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of `split` among this batch's splits, added when new: what
    /// [`Positions::push_at`] takes, so a source need not name the split per record.
    pub fn split(&mut self, split: &str) -> u32 {
        match self.splits.iter().position(|s| s == split) {
            Some(i) => i as u32,
            None => {
                self.splits.push(split.to_string());
                (self.splits.len() - 1) as u32
            }
        }
    }

    /// The next record lies at `position` in `split`.
    pub fn push(&mut self, split: &str, position: u128) {
        let at = self.split(split);
        self.records.push((at, position));
    }

    /// The next record lies at `position` in the split of index `split` (from
    /// [`Positions::split`]).
    pub fn push_at(&mut self, split: u32, position: u128) {
        self.records.push((split, position));
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no record is placed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Record `row`'s split and position.
    pub fn get(&self, row: usize) -> Option<(&str, u128)> {
        let &(split, position) = self.records.get(row)?;
        Some((self.splits.get(split as usize)?.as_str(), position))
    }

    /// Every record's split and position, in row order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u128)> + '_ {
        self.records
            .iter()
            .filter_map(|&(s, p)| Some((self.splits.get(s as usize)?.as_str(), p)))
    }
}
