//! The PostgreSQL source: whole tables in primary-key order or in physical order
//! (`snapshot`), or new rows by cursor columns (`incremental`), then changes (`cdc`).
//! Table rows are read with binary COPY and decoded straight into Arrow with the
//! table's types (`crate::binary`), so `numeric(p,s)` arrives as Decimal128(p,s) and
//! `timestamptz` as Timestamp(µs, UTC). In key order each chunk is one
//! `COPY (SELECT ... ORDER BY key LIMIT n)`, the next read ahead while one decodes; in
//! physical order (`snapshot_order = "physical"`) one `COPY (SELECT ..., ctid)` streams
//! the table, as `COPY table TO` does, and a restart resumes after the last `ctid`.
//! Measured on 1M rows (integration-tests/bench/postgres.sh): rows as `row_to_json`
//! text through a query reached 0.21-0.27x of `psql \copy ... TO`; binary COPY in key
//! order 0.6-0.7x; the physical stream 0.7x and above (the suite's figures are in
//! BENCHMARKS.md). Changes (`cdc`) arrive as pgoutput text and go through JSON.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{Batch, Error, Offsets, Reject, Result, Source, SourceContext};
use serde::{Deserialize, Serialize};
use sluice_formats::JsonDecoder;
use sqlx::postgres::PgPool;

use crate::config::{PostgresSourceConfig, SnapshotOrder, SourceMode};
use crate::conn::{connect_url, quote};
use crate::error::pg_error;
use crate::types::source_type;

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
    /// `snapshot_order = "physical"`: the `ctid` of the last delivered row, as text
    /// (`(block,line)`); reading resumes strictly after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctid: Option<String>,
    /// `snapshot_order = "physical"`: the table's file (`relfilenode`) that `ctid`
    /// points into; a table rewritten since is read again from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filenode: Option<u32>,
}

/// A row's physical position: block and line pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tid {
    block: u32,
    line: u16,
}

impl Tid {
    /// `(block,line)`, as PostgreSQL writes a `tid`.
    fn parse(text: &str) -> Result<Tid> {
        let tid = || {
            let (block, line) = text.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
            Some(Tid {
                block: block.parse().ok()?,
                line: line.parse().ok()?,
            })
        };
        tid().ok_or_else(|| Error::internal(format!("ctid \"{text}\" is not a tid")))
    }

    fn text(self) -> String {
        format!("({},{})", self.block, self.line)
    }
}

/// The state of a `cdc` source.
struct Cdc {
    slot: String,
    publication: String,
    /// Column names of the relation as the stream last described it.
    columns: Vec<String>,
    /// Where the slot was last advanced to.
    advanced: u64,
    /// Changes asked for per peek (widened when a peek returns only delivered ones).
    limit: usize,
    /// The last change the sinks have flushed: the checkpoint resumed from, then each
    /// commit.
    flushed: u64,
    /// When the slot was last moved while the tables had no changes.
    heartbeat: Instant,
}

struct Column {
    name: String,
    pg: String,
}

struct Table {
    split: String,
    relation: String,
    columns: Vec<Column>,
    /// Indices (into `columns`) of the order key.
    key: Vec<usize>,
    /// Decodes `cdc` changes (as JSON) into the records this source emits.
    decoder: JsonDecoder,
    /// The table's columns as Arrow fields.
    table_schema: SchemaRef,
    /// The row's columns (plus `_op` in `cdc`): how values are typed.
    row_schema: SchemaRef,
    /// `cdc` records in Debezium's envelope.
    debezium: bool,
    offset: TableOffset,
    /// `cdc`: rows carry `_op`.
    op: bool,
    /// `snapshot_order = "physical"`: read in `ctid` order by one streaming COPY.
    physical: bool,
}

/// What one split of the source reads.
#[derive(Clone, Copy)]
enum Read<'a> {
    /// A table of the configured schema.
    Table(&'a str),
    /// The configured query.
    Query(&'a str),
}

/// Rows per COPY of a snapshot at least (measured, 1M rows to Parquet: 16,384 per
/// query 2.04 s, 65,536 1.60-1.69 s).
const COPY_ROWS: usize = 65_536;

/// A COPY read ahead: the table's index and the task reading it.
struct Prefetch {
    table: usize,
    task: tokio::task::JoinHandle<std::result::Result<Vec<u8>, sqlx::Error>>,
}

/// A physical-order read: one COPY of the table's remaining rows, cut by a task into
/// chunks of whole tuples (each a binary COPY stream of its own), one chunk ahead. An
/// empty chunk ends the table; a channel closed without one, or an error, ends the
/// stream, and the next read starts a new one after the last decoded row.
struct CopyStream {
    table: usize,
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
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
    /// The table being read in physical order.
    stream: Option<CopyStream>,
    /// Parts decoded in parallel per fetch.
    parts: usize,
    batch_size: usize,
    idle_timeout: Duration,
}

impl PostgresSource {
    /// A source for `config` (validated).
    pub fn new(config: PostgresSourceConfig) -> Self {
        PostgresSource {
            config,
            pool: None,
            tables: Vec::new(),
            current: 0,
            cdc: None,
            ready: VecDeque::new(),
            prefetch: None,
            stream: None,
            parts: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
        }
    }
}

/// The columns, Arrow schema and primary key of a table; an error names any column
/// whose type has no Arrow mapping.
async fn describe(
    pool: &PgPool,
    schema: &str,
    table: &str,
) -> Result<(Vec<Column>, SchemaRef, Vec<usize>)> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| pg_error(format!("table \"{schema}\".\"{table}\""), e))?;
    let what = format!("table \"{schema}\".\"{table}\"");
    describe_on(&mut conn, schema, table, &what).await
}

/// The columns and Arrow schema of the rows of `query` (a temporary view, dropped with
/// the transaction, tells their types).
async fn describe_query(
    pool: &PgPool,
    query: &str,
) -> Result<(Vec<Column>, SchemaRef, Vec<usize>)> {
    let failed = |e| pg_error("query", e).with_field("query");
    let mut tx = pool.begin().await.map_err(failed)?;
    sqlx::query(&format!("CREATE TEMP VIEW sluice_query AS {query}"))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    let (temp,): (String,) =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE oid = pg_my_temp_schema()")
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
    let described = describe_on(&mut tx, &temp, "sluice_query", "query").await;
    let _ = tx.rollback().await;
    described
}

async fn describe_on(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    table: &str,
    what: &str,
) -> Result<(Vec<Column>, SchemaRef, Vec<usize>)> {
    let rows: Vec<(String, String, bool, String, Option<i32>)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, t.typtype::text, \
                (SELECT array_position(i.indkey::int2[], a.attnum)::int4 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| pg_error(what, e))?;
    if rows.is_empty() {
        return Err(Error::not_found(format!("{what} does not exist")).with_field("tables"));
    }
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    let mut pk: Vec<(i32, usize)> = Vec::new();
    for (i, (name, pg, notnull, typtype, pkpos)) in rows.into_iter().enumerate() {
        let dt = source_type(&pg, &typtype).ok_or_else(|| {
            Error::schema(format!(
                "{what}: column \"{name}\" has type \"{pg}\", which has no Arrow mapping"
            ))
        })?;
        fields.push(Field::new(&name, dt, !notnull));
        if let Some(p) = pkpos {
            pk.push((p, i));
        }
        columns.push(Column { name, pg });
    }
    pk.sort();
    Ok((
        columns,
        Arc::new(Schema::new(fields)),
        pk.into_iter().map(|(_, i)| i).collect(),
    ))
}

/// A text value as an SQL literal, whatever `standard_conforming_strings` says.
fn literal(v: &str) -> String {
    if v.contains('\\') {
        format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// The whole output of a `COPY ... TO STDOUT`.
async fn read_copy(pool: &PgPool, sql: &str) -> std::result::Result<Vec<u8>, sqlx::Error> {
    use futures::StreamExt;
    use sqlx::postgres::PgPoolCopyExt;
    let mut stream = pool.copy_out_raw(sql).await?;
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf)
}

impl CopyStream {
    /// Starts reading `sql`, a binary COPY, in chunks of at least `rows` tuples.
    fn start(pool: PgPool, sql: String, rows: usize, split: String, table: usize) -> CopyStream {
        let (tx, chunks) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            if let Err(e) = stream_copy(&pool, &sql, rows, &tx).await {
                let _ = tx.send(Err(e.context(format!("reading {split}")))).await;
            }
        });
        CopyStream {
            table,
            chunks,
            task,
        }
    }
}

/// Reads the binary COPY `sql` to its end and sends it on as chunks of at least
/// `rows` whole tuples, each with the stream's header and a trailer. Synchronized and
/// parallel scans are turned off for it (in its own transaction): either would hand
/// rows out of block order.
async fn stream_copy(
    pool: &PgPool,
    sql: &str,
    rows: usize,
    sender: &tokio::sync::mpsc::Sender<Result<Vec<u8>>>,
) -> Result<()> {
    use crate::binary::{header_len, next_tuple, Next, TRAILER};
    use futures::StreamExt;
    let failed = |e| pg_error("physical-order COPY", e);
    let mut tx = pool.begin().await.map_err(failed)?;
    sqlx::query(
        "SELECT set_config('synchronize_seqscans', 'off', true), \
                set_config('max_parallel_workers_per_gather', '0', true)",
    )
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    let mut copy = tx.copy_out_raw(sql).await.map_err(failed)?;
    // `chunk` holds the header, then whole tuples up to `scanned`, then a part of one
    let mut chunk = Vec::new();
    let mut header = None;
    let mut scanned = 0;
    let mut count = 0;
    while let Some(data) = copy.next().await {
        chunk.extend_from_slice(&data.map_err(failed)?);
        let header_end = match header {
            Some(n) => n,
            None => match header_len(&chunk)? {
                Some(n) => {
                    header = Some(n);
                    scanned = n;
                    n
                }
                None => continue,
            },
        };
        while let Some(Next::Tuple(end)) = next_tuple(&chunk, scanned) {
            scanned = end;
            count += 1;
        }
        if count >= rows {
            let mut next = Vec::with_capacity(chunk.len() + chunk.len() / 8);
            next.extend_from_slice(&chunk[..header_end]);
            next.extend_from_slice(&chunk[scanned..]);
            chunk.truncate(scanned);
            chunk.extend_from_slice(&TRAILER);
            if sender
                .send(Ok(std::mem::replace(&mut chunk, next)))
                .await
                .is_err()
            {
                return Ok(()); // the source stopped reading
            }
            scanned = header_end;
            count = 0;
        }
    }
    drop(copy);
    tx.commit().await.map_err(failed)?;
    // the server's trailer ends the last chunk; an empty one ends the table
    if count > 0 && sender.send(Ok(chunk)).await.is_err() {
        return Ok(());
    }
    let _ = sender.send(Ok(Vec::new())).await;
    Ok(())
}

/// A table without a primary key cannot be read in key order, nor by `cdc` (which
/// needs one to apply updates and deletes): an error naming the table and the way out.
fn need_primary_key(config: &PostgresSourceConfig, what: &str, pk: &[usize]) -> Result<()> {
    if !pk.is_empty() {
        return Ok(());
    }
    let why = match (config.mode, config.snapshot_order) {
        (SourceMode::Cdc, _) => "mode = \"cdc\" needs one to apply updates and deletes",
        (SourceMode::Snapshot, SnapshotOrder::Key) => {
            "a resumable snapshot reads in key order, or in physical order with \
             snapshot_order = \"physical\""
        }
        _ => return Ok(()),
    };
    Err(Error::schema(format!("{what} has no primary key; {why}")).with_field("tables"))
}

/// A snapshot left part-way goes on in the order it was read in: an offset of the
/// other order is an error naming the way out.
fn same_order(offset: &TableOffset, physical: bool, what: &str) -> Result<()> {
    let (read_in, up_to) = match (&offset.after, &offset.ctid) {
        _ if offset.done => return Ok(()),
        (Some(key), _) if physical => ("key", format!("key ({})", key.join(", "))),
        (_, Some(ctid)) if !physical => ("physical", format!("ctid {ctid}")),
        _ => return Ok(()),
    };
    Err(Error::config(format!(
        "{what} was being read in {read_in} order (up to {up_to}); finish it with \
         snapshot_order = \"{read_in}\", or run `sluice offsets reset` and start over"
    ))
    .with_field("snapshot_order"))
}

/// Where a physical-order snapshot of `relation` starts: after the stored `ctid`, or
/// from the first block if the table was rewritten since (its rows have moved).
async fn open_physical(pool: &PgPool, relation: &str, offset: &mut TableOffset) -> Result<()> {
    let file = filenode(pool, relation).await?;
    if offset.ctid.is_some() && !offset.done && offset.filenode != Some(file) {
        tracing::warn!(table = %relation, "the table was rewritten since the last run (VACUUM FULL, CLUSTER or a rewriting ALTER TABLE): its rows have moved, so its snapshot starts again from the first block");
        offset.ctid = None;
    }
    offset.filenode = Some(file);
    Ok(())
}

/// The table's file (`relfilenode`): rewriting the table gives it a new one.
async fn filenode(pool: &PgPool, relation: &str) -> Result<u32> {
    let (filenode,): (i64,) =
        sqlx::query_as("SELECT relfilenode::int8 FROM pg_class WHERE oid = $1::regclass")
            .bind(relation)
            .fetch_one(pool)
            .await
            .map_err(|e| pg_error(format!("file of {relation}"), e))?;
    Ok(u32::try_from(filenode).unwrap_or(0))
}

impl Table {
    /// The table's columns as a binary COPY reads them.
    fn select_list(&self) -> String {
        let exprs: Vec<String> = self
            .columns
            .iter()
            .zip(self.table_schema.fields())
            .map(|(c, f)| crate::binary::select_expr(&c.name, &c.pg, f.data_type()))
            .collect();
        exprs.join(", ")
    }

    /// The columns after the table's columns in each COPY tuple: the order key as
    /// text, or the `ctid` in physical order.
    fn key_columns(&self) -> (usize, crate::binary::KeyForm) {
        if self.physical {
            (1, crate::binary::KeyForm::Tid)
        } else {
            (self.key.len(), crate::binary::KeyForm::Text)
        }
    }

    /// The rows after `after` (None: all), in physical order, as a binary COPY: the
    /// table's columns, then the `ctid` (for the offset). A bound on `ctid`
    /// makes it a TID range scan.
    fn copy_physical(&self, after: Option<Tid>) -> String {
        let filter = match after {
            Some(t) => format!("WHERE __sluice_t.ctid > '{}'::tid", t.text()),
            None => String::new(),
        };
        format!(
            "COPY (SELECT {}, __sluice_t.ctid AS __sluice_k0 FROM {} AS __sluice_t {filter}) TO STDOUT (FORMAT binary)",
            self.select_list(),
            self.relation
        )
    }

    /// The next `limit` rows after the key values `after` (None: from the start), in
    /// key order, as a binary COPY: the table's columns, then the key columns as text
    /// (for the offset). COPY takes no bind parameters, so the key values are inlined
    /// as quoted literals.
    fn copy(&self, after: Option<&[String]>, limit: usize) -> String {
        // qualified, so that ORDER BY never means an output column cast to text
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|&i| format!("__sluice_t.{}", quote(&self.columns[i].name)))
            .collect();
        let key_text: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| format!("{k}::text AS __sluice_k{n}"))
            .collect();
        let order = keys.join(", ");
        let filter = match after {
            Some(values) => {
                let marks: Vec<String> = self
                    .key
                    .iter()
                    .zip(values)
                    .map(|(&i, v)| format!("{}::{}", literal(v), self.columns[i].pg))
                    .collect();
                format!("WHERE ({order}) > ({})", marks.join(", "))
            }
            None => String::new(),
        };
        format!(
            "COPY (SELECT {}, {} FROM {} AS __sluice_t {filter} ORDER BY {order} LIMIT {limit}) TO STDOUT (FORMAT binary)",
            self.select_list(),
            key_text.join(", "),
            self.relation
        )
    }

    /// Moves the physical-order offset to the row at `ctid` (the last of a part). Rows
    /// come in block order from the scan; one that does not is an error, never a
    /// silently wrong resume point.
    fn advance_ctid(&mut self, ctid: &[String]) -> Result<()> {
        let text = ctid.first().map(String::as_str).unwrap_or_default();
        let tid = Tid::parse(text)?;
        if let Some(previous) = self.offset.ctid.as_deref().map(Tid::parse).transpose()? {
            if tid <= previous {
                return Err(Error::internal(format!(
                    "{}: rows arrived out of physical order (ctid {} after {})",
                    self.split,
                    tid.text(),
                    previous.text()
                )));
            }
        }
        self.offset.ctid = Some(text.to_owned());
        Ok(())
    }

    /// `rows` of the table as the records this source emits: plus `_op` = `r` in
    /// `cdc`, or inside Debezium's envelope.
    fn records(&self, rows: RecordBatch, now_ms: i64) -> Result<RecordBatch> {
        use arrow_array::{Int64Array, StringArray, StructArray};
        if !self.op {
            return Ok(rows);
        }
        let n = rows.num_rows();
        let schema = record_schema(&self.table_schema, true, self.debezium);
        let arrow = |e| Error::internal("snapshot records").with_source(e);
        if !self.debezium {
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec!["r"; n])));
            return RecordBatch::try_new(schema, columns).map_err(arrow);
        }
        let struct_fields = |name: &str| match schema.field_with_name(name).map(|f| f.data_type()) {
            Ok(arrow_schema::DataType::Struct(f)) => Ok(f.clone()),
            _ => Err(Error::internal(format!("envelope has no {name} struct"))),
        };
        let after = StructArray::try_new(struct_fields("after")?, rows.columns().to_vec(), None)
            .map_err(arrow)?;
        let before = arrow_array::new_null_array(schema.field(0).data_type(), n);
        let (schema_name, table) = self.split.split_once('.').unwrap_or(("", &self.split));
        let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let nulls = Arc::new(Int64Array::from(vec![None; n])) as ArrayRef;
        let source = StructArray::try_new(
            struct_fields("source")?,
            vec![
                text("postgresql"),
                text(schema_name),
                text(table),
                nulls.clone(),
                nulls,
                Arc::new(Int64Array::from(vec![now_ms; n])),
                text("true"),
            ],
            None,
        )
        .map_err(arrow)?;
        RecordBatch::try_new(
            schema,
            vec![
                before,
                Arc::new(after),
                Arc::new(source),
                text("r"),
                Arc::new(Int64Array::from(vec![now_ms; n])),
            ],
        )
        .map_err(arrow)
    }
}

#[connector_api::async_trait]
impl Source for PostgresSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        let pool = connect_url(&self.config.url).await?;
        // the tables, or the query, each read as one split
        let reads: Vec<Read> = match self.config.query_text() {
            Some(q) => vec![Read::Query(q)],
            None => self.config.tables.iter().map(|t| Read::Table(t)).collect(),
        };
        for read in reads {
            let schema_name = &self.config.schema;
            let (split, relation, what, (columns, schema, pk)) = match read {
                Read::Table(name) => (
                    format!("{schema_name}.{name}"),
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
                && matches!(read, Read::Table(_))
                && self.config.mode != SourceMode::Incremental;
            if matches!(read, Read::Table(_)) {
                need_primary_key(&self.config, &what, &pk)?;
            }
            let key = match self.config.mode {
                SourceMode::Snapshot if matches!(read, Read::Query(_)) => {
                    position(&self.config.key, "key")?
                }
                SourceMode::Snapshot | SourceMode::Cdc => pk,
                SourceMode::Incremental => position(&self.config.cursor, "cursor")?,
            };
            let mut offset = committed
                .get_typed::<TableOffset>(&split)?
                .unwrap_or_default();
            same_order(&offset, physical, &what)?;
            if physical {
                open_physical(&pool, &relation, &mut offset).await?;
            }
            let op = self.config.mode == SourceMode::Cdc;
            let debezium = op && self.config.envelope == crate::config::Envelope::Debezium;
            self.tables.push(Table {
                relation,
                split,
                columns,
                key,
                decoder: JsonDecoder::new(Some(record_schema(&schema, op, debezium))),
                table_schema: schema.clone(),
                row_schema: if op { with_op(&schema) } else { schema.clone() },
                debezium,
                offset,
                op,
                physical,
            });
        }
        if self.config.mode == SourceMode::Cdc {
            self.cdc = Some(self.open_cdc(&pool, &ctx.pipeline).await?);
        }
        self.pool = Some(pool);
        Ok(())
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let (Some(cdc), Some(pool), Some(table)) =
            (self.cdc.as_mut(), self.pool.as_ref(), self.tables.first())
        else {
            return Ok(());
        };
        let Some(lsn) = offsets
            .get_typed::<TableOffset>(&table.split)?
            .and_then(|o| o.lsn)
        else {
            return Ok(());
        };
        cdc.flushed = cdc.flushed.max(lsn);
        if lsn > cdc.advanced {
            crate::cdc::advance(pool, &cdc.slot, lsn).await?;
            cdc.advanced = lsn;
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        if let Some(b) = self.ready.pop_front() {
            return Ok(Some(b));
        }
        if self.cdc.is_some() && self.tables.first().is_some_and(|t| t.offset.done) {
            return self.stream().await;
        }
        let started = Instant::now();
        let mut empty_pass = 0;
        loop {
            if self.tables.is_empty() {
                return Ok(None);
            }
            if self.current >= self.tables.len() {
                self.current = 0;
                if self.config.mode == SourceMode::Snapshot {
                    return Ok(None);
                }
                if empty_pass >= self.tables.len() {
                    if started.elapsed() >= self.idle_timeout {
                        return Ok(Some(Batch::idle()));
                    }
                    tokio::time::sleep(self.config.poll_interval.min(self.idle_timeout)).await;
                    empty_pass = 0;
                }
            }
            let pool = self
                .pool
                .clone()
                .ok_or_else(|| Error::internal("source is not open"))?;
            let table = &mut self.tables[self.current];
            if table.offset.done {
                self.current += 1;
                continue;
            }
            // whole-table reads in chunks of at least COPY_ROWS: each chunk is one query
            // with its own start-up through the key index
            let limit = match self.config.mode {
                SourceMode::Incremental => self.batch_size * self.parts,
                _ => (self.batch_size * self.parts).max(COPY_ROWS),
            };
            let physical = table.physical;
            let buf = if physical {
                // one COPY streams the table's remaining rows
                if self.stream.as_ref().is_none_or(|s| s.table != self.current) {
                    if let Some(s) = self.stream.take() {
                        s.task.abort();
                    }
                    let after = table.offset.ctid.as_deref().map(Tid::parse).transpose()?;
                    self.stream = Some(CopyStream::start(
                        pool.clone(),
                        table.copy_physical(after),
                        limit,
                        table.split.clone(),
                        self.current,
                    ));
                }
                let next = match self.stream.as_mut() {
                    Some(s) => s.chunks.recv().await,
                    None => None,
                };
                match next {
                    Some(Ok(chunk)) => chunk,
                    // a retried read starts over after the last decoded row
                    Some(Err(e)) => {
                        self.stream = None;
                        return Err(e);
                    }
                    None => {
                        self.stream = None;
                        return Err(Error::transient(format!(
                            "the COPY of {} stopped before the end of the table",
                            table.split
                        )));
                    }
                }
            } else {
                let read = match self.prefetch.take() {
                    Some(p) if p.table == self.current => p
                        .task
                        .await
                        .map_err(|e| Error::internal("COPY read-ahead task").with_source(e))?,
                    other => {
                        if let Some(p) = other {
                            p.task.abort();
                        }
                        read_copy(&pool, &table.copy(table.offset.after.as_deref(), limit)).await
                    }
                };
                read.map_err(|e| pg_error(format!("reading {}", table.split), e))?
            };
            // an empty read: the table has no more rows
            let starts = if buf.is_empty() {
                self.stream = None;
                Vec::new()
            } else {
                crate::binary::tuples(&buf)?
            };
            // a full chunk in key order: read the next one while this one decodes (the
            // server and the decoding threads then work at the same time)
            if !physical && self.config.mode != SourceMode::Incremental && starts.len() >= limit {
                if let Some(&last) = starts.last() {
                    let after = crate::binary::key_of(&buf, last, table.columns.len())?;
                    let sql = table.copy(Some(&after), limit);
                    let pool = pool.clone();
                    self.prefetch = Some(Prefetch {
                        table: self.current,
                        task: tokio::spawn(async move { read_copy(&pool, &sql).await }),
                    });
                }
            }
            if starts.is_empty() {
                self.current += 1;
                empty_pass += 1;
                if self.config.mode != SourceMode::Incremental {
                    table.offset.done = true;
                    let mut offsets = Offsets::new();
                    offsets.set_typed(table.split.clone(), &table.offset)?;
                    return Ok(Some(Batch::new(
                        RecordBatch::new_empty(Arc::new(Schema::empty())),
                        offsets,
                    )));
                }
                continue;
            }
            // decode on every core: parts of one batch each, as many at a time as cores,
            // each its own batch and offset
            let parts: Vec<&[usize]> = starts.chunks(self.batch_size).collect();
            let schema = &table.table_schema;
            let keys = table.key_columns();
            let pg_types: Vec<&str> = table.columns.iter().map(|c| c.pg.as_str()).collect();
            let pg_types = &pg_types[..];
            let waves = self.parts.max(1);
            // CPU-heavy: off the runtime's queue, so the sink's task runs meanwhile
            let decoded = connector_api::blocking(|| {
                let mut decoded: Vec<Result<crate::binary::Decoded>> =
                    Vec::with_capacity(parts.len());
                for wave in parts.chunks(waves) {
                    if let [part] = wave {
                        decoded.push(crate::binary::decode(&buf, part, schema, pg_types, keys));
                        continue;
                    }
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = wave
                            .iter()
                            .map(|part| {
                                let buf = &buf;
                                scope.spawn(move || {
                                    crate::binary::decode(buf, part, schema, pg_types, keys)
                                })
                            })
                            .collect();
                        decoded.extend(handles.into_iter().map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(Error::internal("binary COPY decoder panicked"))
                            })
                        }));
                    });
                }
                decoded
            });
            let now_ms = now_millis();
            for part in decoded {
                let part = part?;
                if physical {
                    table.advance_ctid(&part.last_key)?;
                } else {
                    table.offset.after = Some(part.last_key);
                }
                let mut offsets = Offsets::new();
                offsets.set_typed(table.split.clone(), &table.offset)?;
                let mut batch = Batch::new(table.records(part.batch, now_ms)?, offsets);
                batch.rejects = part
                    .rejects
                    .into_iter()
                    .map(|(key, why)| Reject {
                        split: table.split.clone(),
                        position: if physical {
                            format!("table {} ctid {}", table.split, key.join(", "))
                        } else {
                            format!("table {} key ({})", table.split, key.join(", "))
                        },
                        raw: key.join(", "),
                        error: Error::data(why),
                    })
                    .collect();
                self.ready.push_back(batch);
            }
            return Ok(self.ready.pop_front());
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(p) = self.prefetch.take() {
            p.task.abort();
        }
        if let Some(s) = self.stream.take() {
            s.task.abort();
        }
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        Ok(())
    }
}

/// Milliseconds since 1970.
fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Debezium's `source` block.
fn source_json(
    split: &str,
    lsn: Option<u64>,
    xid: Option<u32>,
    ts_ms: i64,
    snapshot: bool,
) -> serde_json::Value {
    let (schema, table) = split.split_once('.').unwrap_or(("", split));
    serde_json::json!({
        "connector": "postgresql",
        "schema": schema,
        "table": table,
        "lsn": lsn,
        "txId": xid,
        "ts_ms": ts_ms,
        "snapshot": if snapshot { "true" } else { "false" },
    })
}

/// What the source emits for a table of `schema`: the row (plus `_op` in `cdc`), or
/// Debezium's envelope around it.
fn record_schema(schema: &SchemaRef, op: bool, debezium: bool) -> SchemaRef {
    use arrow_schema::DataType;
    if !debezium {
        return if op { with_op(schema) } else { schema.clone() };
    }
    let row = DataType::Struct(
        schema
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect(),
    );
    let source = DataType::Struct(
        vec![
            Field::new("connector", DataType::Utf8, true),
            Field::new("schema", DataType::Utf8, true),
            Field::new("table", DataType::Utf8, true),
            Field::new("lsn", DataType::Int64, true),
            Field::new("txId", DataType::Int64, true),
            Field::new("ts_ms", DataType::Int64, true),
            Field::new("snapshot", DataType::Utf8, true),
        ]
        .into(),
    );
    Arc::new(Schema::new(vec![
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("source", source, true),
        Field::new("op", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
    ]))
}

/// `schema` plus the `_op` column of change records. Every column is nullable: a
/// delete carries only the key, a truncate no value at all.
fn with_op(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(
        connector_api::columns::OP,
        arrow_schema::DataType::Utf8,
        false,
    ));
    Arc::new(Schema::new(fields))
}

impl PostgresSource {
    /// Checks `wal_level`, makes the publication, and finds or creates the slot: a
    /// slot that a stored position expects but is gone is a loud error, never a
    /// silent new slot (changes in between would be lost).
    async fn open_cdc(&mut self, pool: &PgPool, pipeline: &str) -> Result<Cdc> {
        crate::cdc::check_wal_level(pool).await?;
        let table = self
            .tables
            .first()
            .ok_or_else(|| Error::config("no table").with_field("tables"))?;
        let slot = self
            .config
            .slot
            .clone()
            .unwrap_or_else(|| crate::cdc::slot_name(pipeline));
        let publication = self
            .config
            .publication
            .clone()
            .unwrap_or_else(|| crate::cdc::slot_name(pipeline));
        crate::cdc::ensure_publication(pool, &publication, &table.relation).await?;
        let started = table.offset.after.is_some()
            || table.offset.ctid.is_some()
            || table.offset.done
            || table.offset.lsn.is_some();
        let advanced = match (crate::cdc::slot_position(pool, &slot).await?, started) {
            (Some(lsn), true) => lsn,
            (None, true) => {
                return Err(Error::not_found(format!(
                    "replication slot \"{slot}\" is gone, but this pipeline has read from it (up to LSN {}); \
                     changes since then cannot be read. Run `sluice offsets reset` and clear the target to start \
                     over with a new snapshot",
                    crate::cdc::lsn_text(table.offset.lsn.unwrap_or(0))
                ))
                .with_field("slot"))
            }
            // a first run: the slot comes before the snapshot, so no change falls between
            (_, false) => crate::cdc::create_slot(pool, &slot).await?,
        };
        Ok(Cdc {
            slot,
            publication,
            columns: Vec::new(),
            advanced,
            limit: self.batch_size.max(1024),
            flushed: self.tables.first().and_then(|t| t.offset.lsn).unwrap_or(0),
            heartbeat: Instant::now(),
        })
    }

    /// The next batch of changes, or an idle batch after `idle_timeout`.
    async fn stream(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        let pool = self
            .pool
            .clone()
            .ok_or_else(|| Error::internal("source is not open"))?;
        loop {
            let (Some(cdc), Some(table)) = (self.cdc.as_mut(), self.tables.first_mut()) else {
                return Ok(None);
            };
            let delivered = table.offset.lsn.unwrap_or(0);
            let schema = table.row_schema.clone();
            // heartbeat: the WAL position before the peek; if the peek then finds no
            // change, every commit before it is behind the slot's consumer
            let wal_before = if cdc.heartbeat.elapsed() >= self.config.heartbeat_interval {
                Some(crate::cdc::current_lsn(&pool).await?)
            } else {
                None
            };
            let args = crate::cdc::PeekArgs {
                slot: &cdc.slot,
                publication: &cdc.publication,
                limit: cdc.limit,
                delivered,
                max_changes: self.batch_size,
            };
            let peeked = crate::cdc::peek(&pool, args, &mut cdc.columns, &schema).await?;
            if peeked.relation_changed {
                // ALTER TABLE: read the new columns, then read the changes again with them
                let (name, rel) = (self.config.tables[0].clone(), self.config.schema.clone());
                let (columns, new_schema, _) = describe(&pool, &rel, &name).await?;
                table.columns = columns;
                table.decoder =
                    JsonDecoder::new(Some(record_schema(&new_schema, true, table.debezium)));
                table.row_schema = with_op(&new_schema);
                table.table_schema = new_schema;
                tracing::info!(table = %table.split, "table changed in the stream; new columns picked up");
                continue;
            }
            if peeked.changes.is_empty() {
                if peeked.returned >= cdc.limit {
                    cdc.limit = cdc.limit.saturating_mul(2);
                    continue;
                }
                if let Some(wal) = wal_before {
                    cdc.heartbeat = Instant::now();
                    // only once the sinks have flushed everything read so far
                    if delivered <= cdc.flushed && wal > cdc.advanced {
                        crate::cdc::advance(&pool, &cdc.slot, wal).await?;
                        tracing::debug!(slot = %cdc.slot, lsn = %crate::cdc::lsn_text(wal), "no changes; replication slot moved to the current WAL position");
                        cdc.advanced = wal;
                    }
                }
                if started.elapsed() >= self.idle_timeout {
                    return Ok(Some(Batch::idle()));
                }
                tokio::time::sleep(self.config.poll_interval.min(self.idle_timeout)).await;
                continue;
            }
            let mut buf = Vec::new();
            let n = peeked.changes.len();
            for mut change in peeked.changes {
                let record = if table.debezium {
                    let after = if change.op == "d" || change.op == "t" {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::Object(change.row)
                    };
                    serde_json::json!({
                        "before": change.before.map(serde_json::Value::Object),
                        "after": after,
                        "op": change.op,
                        "ts_ms": change.ts_ms,
                        "source": source_json(&table.split, Some(change.lsn), Some(change.xid), change.ts_ms, false),
                    })
                } else {
                    change.row.insert(
                        connector_api::columns::OP.to_string(),
                        serde_json::Value::String(change.op.to_string()),
                    );
                    serde_json::Value::Object(change.row)
                };
                serde_json::to_writer(&mut buf, &record)
                    .map_err(|e| Error::internal("change").with_source(e))?;
                buf.push(b'\n');
            }
            let decoded = table.decoder.decode(&buf, n, true)?;
            table.offset.lsn = Some(peeked.end_lsn);
            let mut offsets = Offsets::new();
            offsets.set_typed(table.split.clone(), &table.offset)?;
            let records = decoded
                .batch
                .unwrap_or_else(|| arrow_array::RecordBatch::new_empty(schema.clone()));
            let mut batch = Batch::new(records, offsets);
            batch.rejects = decoded
                .bad
                .into_iter()
                .map(|b| Reject {
                    split: table.split.clone(),
                    position: format!(
                        "table {} change before LSN {}",
                        table.split,
                        crate::cdc::lsn_text(peeked.end_lsn)
                    ),
                    raw: b.raw,
                    error: b.error,
                })
                .collect();
            return Ok(Some(batch));
        }
    }
}

/// `sluice schema` / `check`: the schema of the first table (all tables are checked).
pub async fn discover(config: &PostgresSourceConfig) -> Result<SchemaRef> {
    let pool = connect_url(&config.url).await?;
    if let Some(q) = config.query_text() {
        let described = describe_query(&pool, q).await;
        pool.close().await;
        return described.map(|(_, schema, _)| schema);
    }
    let mut first = None;
    for t in &config.tables {
        let (_, schema, pk) = describe(&pool, &config.schema, t).await?;
        need_primary_key(config, &format!("table \"{}\".\"{t}\"", config.schema), &pk)?;
        first.get_or_insert(schema);
    }
    pool.close().await;
    first.ok_or_else(|| Error::config("no table").with_field("tables"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_left_part_way_goes_on_in_its_own_order() {
        let keyed = TableOffset {
            after: Some(vec!["42".into()]),
            ..TableOffset::default()
        };
        let physical = TableOffset {
            ctid: Some("(7,3)".into()),
            ..TableOffset::default()
        };
        assert!(same_order(&keyed, false, "table t").is_ok());
        assert!(same_order(&physical, true, "table t").is_ok());
        let e = same_order(&keyed, true, "table t").unwrap_err();
        assert_eq!(e.field(), Some("snapshot_order"));
        assert!(
            e.message().contains("read in key order (up to key (42))"),
            "{e}"
        );
        let e = same_order(&physical, false, "table t").unwrap_err();
        assert!(
            e.message()
                .contains("read in physical order (up to ctid (7,3))"),
            "{e}"
        );
        let done = TableOffset {
            done: true,
            ..keyed
        };
        assert!(same_order(&done, true, "table t").is_ok());
    }

    #[test]
    fn a_tid_reads_as_postgres_writes_it_and_orders_by_block_then_line() {
        let t = Tid::parse("(12,5)").unwrap();
        assert_eq!((t.block, t.line), (12, 5));
        assert_eq!(t.text(), "(12,5)");
        assert!(Tid::parse("(12,6)").unwrap() > t && Tid::parse("(13,1)").unwrap() > t);
        assert!(Tid::parse("12,5").is_err() && Tid::parse("(12,x)").is_err());
    }
}
