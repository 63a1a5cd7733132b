//! The PostgreSQL source: whole tables in primary-key order (`snapshot`), or new rows
//! by cursor columns (`incremental`). Rows are read as JSON built by the server
//! (`row_to_json`, exact numeric digits, timestamps with offsets) and decoded to Arrow
//! with the table's declared types, so `numeric(p,s)` arrives as Decimal128(p,s) and
//! `timestamptz` as Timestamp(µs, UTC).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{Batch, Error, Offsets, Reject, Result, Source, SourceContext};
use serde::{Deserialize, Serialize};
use sluice_formats::JsonDecoder;
use sqlx::postgres::PgPool;

use crate::config::{PostgresSourceConfig, SourceMode};
use crate::sink::{connect_url, pg_error, quote};
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
    decoder: JsonDecoder,
    /// The row's columns (plus `_op` in `cdc`): how values are typed.
    row_schema: SchemaRef,
    /// `cdc` records in Debezium's envelope.
    debezium: bool,
    offset: TableOffset,
    /// `cdc`: rows carry `_op`.
    op: bool,
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
    let rows: Vec<(String, String, bool, String, Option<i32>)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, t.typtype::text, \
                (SELECT array_position(i.indkey::int2[], a.attnum)::int4 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| pg_error(format!("table \"{schema}\".\"{table}\""), e))?;
    if rows.is_empty() {
        return Err(
            Error::not_found(format!("table \"{schema}\".\"{table}\" does not exist"))
                .with_field("tables"),
        );
    }
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    let mut pk: Vec<(i32, usize)> = Vec::new();
    for (i, (name, pg, notnull, typtype, pkpos)) in rows.into_iter().enumerate() {
        let dt = source_type(&pg, &typtype).ok_or_else(|| {
            Error::schema(format!(
                "table \"{schema}\".\"{table}\": column \"{name}\" has type \"{pg}\", which has no Arrow mapping"
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

/// The expression that puts a column into the row's JSON so arrow-json reads it back.
fn json_expr(c: &Column) -> String {
    let q = quote(&c.name);
    match c.pg.as_str() {
        "bytea" => format!("encode({q}, 'hex') AS {q}"),
        "json" | "jsonb" | "interval" | "money" => format!("{q}::text AS {q}"),
        _ => q,
    }
}

impl Table {
    fn select(&self, limit: usize) -> (String, Vec<String>) {
        let mut exprs: Vec<String> = self.columns.iter().map(json_expr).collect();
        if self.op {
            exprs.push(format!("'r' AS {}", quote(connector_api::columns::OP)));
        }
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|&i| quote(&self.columns[i].name))
            .collect();
        let key_out: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} AS __sluice_k{n}", quote(&self.columns[i].name)))
            .collect();
        let order = keys.join(", ");
        let (filter, params) = match &self.offset.after {
            Some(values) => {
                let marks: Vec<String> = self
                    .key
                    .iter()
                    .enumerate()
                    .map(|(n, &i)| format!("${}::{}", n + 1, self.columns[i].pg))
                    .collect();
                (
                    format!("WHERE ({order}) > ({})", marks.join(", ")),
                    values.clone(),
                )
            }
            None => (String::new(), Vec::new()),
        };
        let k: Vec<String> = (0..self.key.len())
            .map(|n| format!("sub.__sluice_k{n}"))
            .collect();
        (
            format!(
                "SELECT row_to_json(sub)::text, json_build_array({})::text FROM \
                 (SELECT {}, {} FROM {} {filter} ORDER BY {order} LIMIT {limit}) sub",
                k.join(", "),
                exprs.join(", "),
                key_out.join(", "),
                self.relation
            ),
            params,
        )
    }
}

fn key_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[connector_api::async_trait]
impl Source for PostgresSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        let pool = connect_url(&self.config.url).await?;
        for name in &self.config.tables {
            let (columns, schema, pk) = describe(&pool, &self.config.schema, name).await?;
            let key = match self.config.mode {
                SourceMode::Snapshot | SourceMode::Cdc if pk.is_empty() => {
                    return Err(Error::schema(format!(
                        "table \"{}\".\"{name}\" has no primary key; a resumable snapshot reads in key order",
                        self.config.schema
                    ))
                    .with_field("tables"))
                }
                SourceMode::Snapshot | SourceMode::Cdc => pk,
                SourceMode::Incremental => self
                    .config
                    .cursor
                    .iter()
                    .map(|c| {
                        columns.iter().position(|col| &col.name == c).ok_or_else(|| {
                            Error::config(format!("cursor column \"{c}\" is not in table \"{name}\"")).with_field("cursor")
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let split = format!("{}.{}", self.config.schema, name);
            let offset = committed
                .get_typed::<TableOffset>(&split)?
                .unwrap_or_default();
            let op = self.config.mode == SourceMode::Cdc;
            let debezium = op && self.config.envelope == crate::config::Envelope::Debezium;
            self.tables.push(Table {
                relation: format!("{}.{}", quote(&self.config.schema), quote(name)),
                split,
                columns,
                key,
                decoder: JsonDecoder::new(Some(record_schema(&schema, op, debezium))),
                row_schema: if op { with_op(&schema) } else { schema.clone() },
                debezium,
                offset,
                op,
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
            let (sql, params) = table.select(self.batch_size * self.parts);
            let mut q = sqlx::query_as::<_, (String, String)>(&sql);
            for p in &params {
                q = q.bind(p);
            }
            let rows = q
                .fetch_all(&pool)
                .await
                .map_err(|e| pg_error(format!("reading {}", table.split), e))?;
            if rows.is_empty() {
                self.current += 1;
                empty_pass += 1;
                if self.config.mode != SourceMode::Incremental {
                    table.offset.done = true;
                    let mut offsets = Offsets::new();
                    offsets.set_typed(table.split.clone(), &table.offset)?;
                    return Ok(Some(Batch::new(
                        arrow_array::RecordBatch::new_empty(Arc::new(Schema::empty())),
                        offsets,
                    )));
                }
                continue;
            }
            let mut buf = Vec::with_capacity(rows.iter().map(|r| r.0.len() + 1).sum());
            let now_ms = now_millis();
            for (json, _) in &rows {
                if table.debezium {
                    let source = source_json(&table.split, None, None, now_ms, true).to_string();
                    buf.extend_from_slice(b"{\"before\":null,\"after\":");
                    buf.extend_from_slice(json.as_bytes());
                    buf.extend_from_slice(
                        format!(",\"op\":\"r\",\"ts_ms\":{now_ms},\"source\":{source}}}")
                            .as_bytes(),
                    );
                } else {
                    buf.extend_from_slice(json.as_bytes());
                }
                buf.push(b'\n');
            }
            // decode on every core: one part per core, each its own batch and offset
            let per_part = self.batch_size;
            let parts = table
                .decoder
                .decode_parts(&buf, per_part, self.parts, true)?;
            let mut first_row = 0usize;
            for decoded in parts {
                let lines = decoded.lines as usize;
                if lines == 0 {
                    continue;
                }
                let last_row = (first_row + lines - 1).min(rows.len() - 1);
                let last: Vec<serde_json::Value> = serde_json::from_str(&rows[last_row].1)
                    .map_err(|e| Error::internal("key values").with_source(e))?;
                table.offset.after = Some(last.iter().map(key_text).collect());
                let mut offsets = Offsets::new();
                offsets.set_typed(table.split.clone(), &table.offset)?;
                let records = match decoded.batch {
                    Some(b) => b,
                    None => arrow_array::RecordBatch::new_empty(
                        table
                            .decoder
                            .schema()
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Schema::empty())),
                    ),
                };
                let mut batch = Batch::new(records, offsets);
                batch.rejects = decoded
                    .bad
                    .into_iter()
                    .map(|b| Reject {
                        split: table.split.clone(),
                        position: format!("table {} row {}", table.split, first_row + b.index + 1),
                        raw: b.raw,
                        error: b.error,
                    })
                    .collect();
                self.ready.push_back(batch);
                first_row += lines;
            }
            return Ok(self.ready.pop_front());
        }
    }

    async fn close(&mut self) -> Result<()> {
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

/// `schema` plus the `_op` column of change records.
fn with_op(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
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
        let started =
            table.offset.after.is_some() || table.offset.done || table.offset.lsn.is_some();
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
                tracing::info!(table = %table.split, "table changed in the stream; new columns picked up");
                continue;
            }
            if peeked.changes.is_empty() {
                if peeked.returned >= cdc.limit {
                    cdc.limit = cdc.limit.saturating_mul(2);
                    continue;
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
                    let after = if change.op == "d" {
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
    let mut first = None;
    for t in &config.tables {
        let (_, schema, _) = describe(&pool, &config.schema, t).await?;
        first.get_or_insert(schema);
    }
    pool.close().await;
    first.ok_or_else(|| Error::config("no table").with_field("tables"))
}
