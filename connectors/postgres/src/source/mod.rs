//! The PostgreSQL source: whole tables in primary-key order or in physical order
//! (`snapshot`), or new rows by cursor columns (`incremental`), then changes (`cdc`).
//! Table rows are read with binary COPY and decoded straight into Arrow with the
//! table's types (`crate::binary`), so `numeric(p,s)` arrives as Decimal128(p,s) and
//! `timestamptz` as Timestamp(µs, UTC). In key order each chunk is one
//! `COPY (SELECT ... ORDER BY key LIMIT n)`, the next read ahead while one decodes; in
//! physical order (`snapshot_order = "physical"`) one `COPY (SELECT ..., ctid)` per
//! block range streams the table, as `COPY table TO` does, `snapshot_readers` ranges
//! at once, and a restart resumes each range after its last `ctid`. Measured on 1M
//! rows (integration-tests/bench/postgres.sh): rows as `row_to_json` text through a
//! query reached 0.21-0.27x of `psql \copy ... TO`; binary COPY in key order
//! 0.6-0.7x; the physical stream 0.7x and above (the suite's figures are in
//! BENCHMARKS.md). Changes (`cdc`) arrive as pgoutput text, decoded straight into
//! Arrow too (`crate::value::text`).

mod cdc;
mod change;
mod cursor;
mod decode;
mod describe;
mod envelope;
mod estimate;
mod physical;
mod rows;
mod shares;
mod snapshot;
mod table;

use std::collections::VecDeque;
use std::time::Duration;

use connector_api::{Batch, Error, Offsets, Result, Source, SourceContext};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;

use crate::config::{PostgresSourceConfig, SnapshotOrder, SourceMode};
use crate::conn::{connect_pool, quote};

use self::cdc::Cdc;
pub use self::cdc::TxnOffset;
pub use self::describe::discover;
use self::describe::{describe, describe_query, need_primary_key};
use self::physical::{CopyStream, Exported};
pub use self::shares::splits;
use self::snapshot::Prefetch;
use self::table::{open_physical, same_order, Table};

/// Offset of a table split. Exclusive: the key (primary key or cursor) values of the
/// last delivered row; reading resumes strictly after them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TableOffset {
    /// Key values of the last delivered row, as text (cast back to the column types).
    pub after: Option<Vec<String>>,
    /// The snapshot of this table is complete.
    #[serde(default)]
    pub done: bool,
    /// `cdc`: end LSN of the last delivered transaction (exclusive start of the next).
    #[serde(default)]
    pub lsn: Option<u64>,
    /// `snapshot_order = "physical"` as offsets from before block ranges stored it:
    /// the `ctid` of the last delivered row; read as one range from block 0 after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctid: Option<String>,
    /// `snapshot_order = "physical"`: the block ranges the table's snapshot reads,
    /// planned when it starts; each resumes after its own last delivered row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<BlockRange>,
    /// `snapshot_order = "physical"`: the table's file (`relfilenode`) that the ranges
    /// point into; a table rewritten since is read again from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filenode: Option<u32>,
    /// `cdc`: the table's OID; a table dropped and created again has another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relid: Option<u32>,
    /// `cdc`: how far the transaction after `lsn` was returned, when a batch ended
    /// inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<TxnOffset>,
}

impl TableOffset {
    /// Some of the table was delivered (planned ranges alone are not a start).
    pub fn started(&self) -> bool {
        self.after.is_some()
            || self.ctid.is_some()
            || self.done
            || self.lsn.is_some()
            || self.ranges.iter().any(|r| r.ctid.is_some() || r.done)
    }
}

/// Blocks `from..to` of a table read in physical order, and how far they were
/// delivered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockRange {
    /// The range's first block.
    pub from: u32,
    /// The block after the range; none: to the table's end, so rows stored in blocks
    /// added since the range was planned are read too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    /// The `ctid` of the range's last delivered row, as text (`(block,line)`);
    /// reading resumes strictly after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctid: Option<String>,
    /// Every row of the range was delivered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

/// What one split of the source reads.
#[derive(Clone, Copy)]
enum Read<'a> {
    /// A table of the configured schema, or a key range of it.
    Table(&'a str, Option<shares::Bounds>),
    /// The configured query.
    Query(&'a str),
}

/// Reads tables.
pub struct PostgresSource {
    config: PostgresSourceConfig,
    pool: Option<PgPool>,
    tables: Vec<Table>,
    current: usize,
    cdc: Option<Cdc>,
    /// Batches decoded together and not yet returned.
    ready: VecDeque<Batch>,
    /// The next chunk of a table being read while the current one decodes.
    prefetch: Option<Prefetch>,
    /// The block ranges being read in physical order, at most `readers`.
    streams: Vec<CopyStream>,
    /// Block ranges read at once in physical order.
    readers: usize,
    /// The snapshot a `snapshot` run's block ranges read in, with several readers.
    exported: Option<Exported>,
    /// The name the source's sessions carry (`application_name`).
    session: String,
    /// The stream whose chunk is taken first next time, so that none waits behind
    /// the others.
    turn: usize,
    /// Parts decoded in parallel per fetch.
    parts: usize,
    batch_size: usize,
    idle_timeout: Duration,
    /// `snapshot`: the estimated rows in all and read before this run, for progress.
    estimate: Option<(u64, u64)>,
    /// Rows returned by this run.
    rows: u64,
}

impl PostgresSource {
    /// A source for `config` (validated).
    pub fn new(config: PostgresSourceConfig) -> Self {
        let readers = config.snapshot_readers;
        PostgresSource {
            config,
            pool: None,
            tables: Vec::new(),
            current: 0,
            cdc: None,
            ready: VecDeque::new(),
            prefetch: None,
            streams: Vec::new(),
            readers,
            exported: None,
            session: String::new(),
            turn: 0,
            parts: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            estimate: None,
            rows: 0,
        }
    }
}

#[connector_api::async_trait]
impl Source for PostgresSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        // a connection for each block range read at once, and one for the rest
        let size = u32::try_from(self.readers + 1).unwrap_or(u32::MAX);
        self.session = format!("sluice {} source", ctx.pipeline);
        let pool = connect_pool(&self.config.url, size, &self.session).await?;
        // the tables, or the query, each read as one split
        let schema_name = &self.config.schema;
        let reads: Vec<Read> = match (self.config.query_text(), &ctx.splits) {
            (Some(q), _) => vec![Read::Query(q)],
            // the tables and key ranges the runtime gave this source
            (None, Some(splits)) => splits
                .iter()
                .map(|id| {
                    let (split, bounds) = shares::parse(id);
                    split
                        .strip_prefix(schema_name.as_str())
                        .and_then(|t| t.strip_prefix('.'))
                        .and_then(|t| self.config.tables.iter().find(|c| *c == t))
                        .map(|t| Read::Table(t, bounds))
                        .ok_or_else(|| {
                            Error::config(format!(
                                "split \"{id}\" is none of the tables of schema \"{schema_name}\" this source reads: was `tables` changed while runtimes shared it?"
                            ))
                            .with_field("tables")
                        })
                })
                .collect::<Result<_>>()?,
            (None, None) => self
                .config
                .tables
                .iter()
                .map(|t| Read::Table(t, None))
                .collect(),
        };
        for read in reads {
            let (split, relation, what, (columns, schema, pk)) = match read {
                Read::Table(name, bounds) => (
                    shares::id(&format!("{schema_name}.{name}"), bounds),
                    format!("{}.{}", quote(schema_name), quote(name)),
                    format!("table \"{schema_name}\".\"{name}\""),
                    describe(&pool, schema_name, name).await?,
                ),
                Read::Query(q) => (
                    "query".to_string(),
                    format!("({q})"),
                    "the query".to_string(),
                    describe_query(&pool, q).await?,
                ),
            };
            let position = |names: &[String], field: &'static str| -> Result<Vec<usize>> {
                names
                    .iter()
                    .map(|c| {
                        columns
                            .iter()
                            .position(|col| &col.name == c)
                            .ok_or_else(|| {
                                Error::config(format!("{field} column \"{c}\" is not in {what}"))
                                    .with_field(field)
                            })
                    })
                    .collect()
            };
            let physical = self.config.snapshot_order == SnapshotOrder::Physical
                && matches!(read, Read::Table(..))
                && self.config.mode != SourceMode::Incremental;
            if matches!(read, Read::Table(..)) {
                need_primary_key(&self.config, &what, &pk)?;
            }
            if matches!(read, Read::Table(_, Some(_)))
                && shares::integer_key(&columns, &pk).is_none()
            {
                return Err(Error::schema(format!(
                    "split \"{split}\" is a key range, but the primary key of {what} is no longer one integer column"
                )));
            }
            let key = match self.config.mode {
                SourceMode::Snapshot if matches!(read, Read::Query(_)) => {
                    position(&self.config.key, "key")?
                }
                SourceMode::Snapshot | SourceMode::Cdc => pk,
                SourceMode::Incremental => {
                    // the primary key after the cursor breaks its ties: each position
                    // is one row, so a restart repeats and skips none
                    let mut key = position(&self.config.cursor, "cursor")?;
                    let extra: Vec<usize> =
                        pk.iter().filter(|i| !key.contains(i)).copied().collect();
                    key.extend(extra);
                    key
                }
            };
            let mut offset = committed
                .get_typed::<TableOffset>(&split)?
                .unwrap_or_default();
            same_order(&offset, physical, &what)?;
            if physical {
                open_physical(&pool, &relation, &mut offset, self.readers).await?;
            }
            let cursor = match self.config.mode {
                SourceMode::Incremental => Some(
                    cursor::Cursor::open(
                        &pool,
                        &relation,
                        matches!(read, Read::Table(..)),
                        &schema,
                        &key,
                    )
                    .await?,
                ),
                _ => None,
            };
            let op = self.config.mode == SourceMode::Cdc;
            let debezium = op && self.config.envelope == crate::config::Envelope::Debezium;
            self.tables.push(Table {
                relation,
                split,
                columns,
                key,
                table_schema: schema.clone(),
                debezium,
                offset,
                op,
                physical,
                cursor,
                bounds: match read {
                    Read::Table(_, bounds) => bounds,
                    Read::Query(_) => None,
                },
            });
        }
        if self.config.mode == SourceMode::Cdc {
            self.cdc = Some(self.open_cdc(&pool, &ctx.pipeline).await?);
        }
        if self.config.mode == SourceMode::Snapshot {
            // only for the progress bar: a failure costs the bar, not the run
            self.estimate = estimate::estimate(&pool, &self.tables)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "no row estimate for progress"))
                .ok();
        }
        self.pool = Some(pool);
        Ok(())
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let Some(table) = self.tables.first().filter(|_| self.cdc.is_some()) else {
            return Ok(());
        };
        if let Some(at) = offsets.get_typed::<TableOffset>(&table.split)? {
            if let Some(lsn) = at.lsn {
                self.commit_cdc(lsn, at.txn);
            }
        }
        Ok(())
    }

    /// Key order and the WAL are read in order again; physical order is not (rows
    /// updated meanwhile move, and several streams interleave as they arrive).
    fn replays_in_order(&self) -> bool {
        self.config.snapshot_order != SnapshotOrder::Physical
    }

    /// `cdc` once the snapshot is done: a change's position is its transaction's
    /// commit LSN and its place in it, the same in every read, and the offset covers
    /// every transaction that commits before `lsn` and the first `txn.changes` of the
    /// one it ended inside; other transactions in the stream move `lsn` without a
    /// change of the table, which a count cannot confirm on a read again but a
    /// position can.
    fn covered_below(&self, _: &str, offset: &serde_json::Value) -> Option<u128> {
        if self.config.mode != SourceMode::Cdc {
            return None;
        }
        cdc::covered_below(&TableOffset::deserialize(offset).ok()?)
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let batch = match self.ready.pop_front() {
            Some(b) => Some(b),
            None if self.cdc.is_some() && self.tables.first().is_some_and(|t| t.offset.done) => {
                return self.stream().await;
            }
            None if self.tables.first().is_some_and(|t| t.physical) => self.read_physical().await?,
            None => self.read_tables().await?,
        };
        if let Some(b) = &batch {
            self.rows += (b.num_rows() + b.rejects.len()) as u64;
        }
        Ok(batch)
    }

    /// `snapshot`: rows read against the planner's estimate of the tables' rows.
    fn progress(&self) -> Option<connector_api::Progress> {
        let (total, before) = self.estimate?;
        Some(connector_api::Progress {
            done: before + self.rows,
            total,
            unit: connector_api::ProgressUnit::Records,
        })
    }

    fn lag(&self) -> Vec<connector_api::Lag> {
        match (&self.cdc, self.tables.first()) {
            (Some(cdc), Some(table)) if table.offset.done => vec![cdc.lag(&table.split)],
            _ => Vec::new(),
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(p) = self.prefetch.take() {
            p.task.abort();
        }
        for s in self.streams.drain(..) {
            s.task.abort();
        }
        self.exported = None;
        self.close_cdc().await;
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        Ok(())
    }
}

impl PostgresSource {
    /// The open connection pool.
    pub(super) fn pool(&self) -> Result<PgPool> {
        self.pool
            .clone()
            .ok_or_else(|| Error::internal("source is not open"))
    }

    /// The snapshot a first `cdc` run reads in: the one its slot exported.
    pub(super) fn exported_snapshot(&self) -> Option<String> {
        self.cdc
            .as_ref()
            .and_then(|c| c.snapshot())
            .map(str::to_owned)
    }
}

/// Milliseconds since 1970.
fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
