//! The PostgreSQL sink: one transaction per flush, COPY per write (under a savepoint,
//! so a retried write never inserts twice), offsets in the same transaction, all on one
//! connection that holds the run lock ([`crate::lock`]) from before the offsets are
//! read until the sink closes.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{
    columns, Batch, Error, ErrorKind, Offsets, Result, Sink, SinkContext, SinkState,
};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use crate::config::{PostgresSinkConfig, SinkMode};
use crate::conn::{connect_one, quote};
use crate::copy::copy_text;
use crate::error::pg_error;
use crate::lock;
use crate::types::{arrow_type, pg_type, widened};

/// Table holding the offsets stored with the data, in the sink's schema.
pub const OFFSETS_TABLE: &str = "sluice_offsets";
/// Column of the staging table that keeps the order of records (last one wins).
const SEQ: &str = "_sluice_seq";
/// Rows per piece of a COPY: the next piece is encoded while the server takes in one.
const COPY_CHUNK_ROWS: usize = 2048;
/// Bytes of the binary COPY header (signature, flags, extension length).
const BINARY_HEADER: usize = 19;

/// Rows in the binary COPY format (true) when every column has one, else as text.
fn encode(records: &RecordBatch, types: &[String]) -> Result<(Vec<u8>, bool)> {
    match crate::copy::copy_binary(records, types)? {
        Some(data) => Ok((data, true)),
        None => Ok((copy_text(records)?, false)),
    }
}

/// The Arrow schema of an existing table (None when it does not exist).
async fn table_schema(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Option<SchemaRef>> {
    Ok(table_columns(conn, schema, table).await?.map(|(s, _)| s))
}

/// The Arrow schema of an existing table and each column's PostgreSQL type.
async fn table_columns(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Option<(SchemaRef, std::collections::HashMap<String, String>)>> {
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(conn)
    .await
    .map_err(|e| pg_error(format!("table \"{schema}\".\"{table}\""), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let types = rows
        .iter()
        .map(|(n, t, _)| (n.clone(), t.clone()))
        .collect();
    let fields: Vec<Field> = rows
        .into_iter()
        .map(|(n, t, notnull)| Field::new(n, arrow_type(&t), !notnull))
        .collect();
    Ok(Some((Arc::new(Schema::new(fields)), types)))
}

/// Rows of change records that are truncates (`_op` = `t`), when there are any.
fn truncates(records: &RecordBatch) -> Option<Vec<usize>> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    let ops = records
        .column(records.schema().index_of(columns::OP).ok()?)
        .as_string_opt::<i32>()?;
    let rows: Vec<usize> = (0..ops.len())
        .filter(|&i| ops.is_valid(i) && ops.value(i) == "t")
        .collect();
    (!rows.is_empty()).then_some(rows)
}

/// Writes batches into one table.
pub struct PostgresSink {
    config: PostgresSinkConfig,
    /// The one connection: it holds the run lock, so it is never swapped for another.
    conn: Option<PgConnection>,
    /// A transaction is open on `conn` (begun at the first write after a flush).
    in_tx: bool,
    staging: bool,
    schema: Option<SchemaRef>,
    pipeline: String,
    sink: String,
    /// The open transaction died with uncommitted rows in it.
    lost: bool,
    /// PostgreSQL type of each column of the table (for the binary COPY format).
    pg_types: std::collections::HashMap<String, String>,
}

impl PostgresSink {
    /// A sink for `config` (validated).
    pub fn new(config: PostgresSinkConfig) -> Self {
        PostgresSink {
            config,
            conn: None,
            in_tx: false,
            staging: false,
            schema: None,
            pipeline: String::new(),
            sink: String::new(),
            lost: false,
            pg_types: std::collections::HashMap::new(),
        }
    }

    /// After a failure inside the transaction: if the connection is gone, so is every
    /// row written since the last flush, and retrying this call would skip them. Turn
    /// that into `Aborted`, which restarts the pipeline from its last checkpoint.
    fn after_failure(&mut self, err: Error) -> Error {
        if err.kind() == ErrorKind::Connect || self.lost {
            self.lost = true;
            self.in_tx = false;
            self.conn = None;
            return Error::new(
                ErrorKind::Aborted,
                format!(
                    "table {}: the connection was lost with rows not yet committed",
                    self.target()
                ),
            )
            .with_source(err);
        }
        err
    }

    fn target(&self) -> String {
        format!(
            "{}.{}",
            quote(&self.config.schema),
            quote(&self.config.table)
        )
    }

    /// The connection, inside the flush's transaction (begun here when none is open).
    async fn tx(&mut self) -> Result<&mut PgConnection> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::internal("sink is not open"))?;
        if !self.in_tx {
            conn.execute("BEGIN")
                .await
                .map_err(|e| pg_error("begin transaction", e))?;
            self.in_tx = true;
            self.staging = false;
        }
        Ok(conn)
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        let table = self.target();
        let tx = self.tx().await?;
        sqlx::query(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error(format!("table {table}: {sql}"), e))?;
        Ok(())
    }

    /// Creates the table, or adds the batch's new columns to it. Another writer doing the
    /// same at the same moment makes `IF NOT EXISTS` fail on the catalog's unique index:
    /// that is retried (the next attempt sees the table), never a stop.
    async fn prepare_table(&mut self, schema: &SchemaRef) -> Result<()> {
        let target = self.target();
        let mut ddl = Vec::new();
        match &self.schema {
            None => {
                let mut cols = Vec::new();
                for f in schema.fields().iter().filter(|f| f.name() != columns::OP) {
                    let null = if f.is_nullable() { "" } else { " NOT NULL" };
                    cols.push(format!(
                        "{} {}{null}",
                        quote(f.name()),
                        pg_type(f.name(), f.data_type())?
                    ));
                }
                if !self.config.key.is_empty() {
                    let key: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
                    cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
                }
                ddl.push(format!(
                    "CREATE TABLE IF NOT EXISTS {target} ({})",
                    cols.join(", ")
                ));
            }
            Some(known) => {
                for f in schema.fields() {
                    match known.field_with_name(f.name()) {
                        Err(_) if f.name() != columns::OP => ddl.push(format!(
                            "ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {} {}",
                            quote(f.name()),
                            pg_type(f.name(), f.data_type())?
                        )),
                        // a column widened upstream (the engine widened the sink's
                        // schema under `evolve`): the table's column too (other
                        // changes are left to COPY, which names a value that does not
                        // fit)
                        Ok(k) if k.data_type() != f.data_type() => {
                            let current = self.pg_types.get(f.name()).map(String::as_str);
                            if let Some(wider) = widened(current, f.name(), f.data_type()) {
                                tracing::info!(table = %target, column = %f.name(), from = ?current, to = %wider, "column widened");
                                ddl.push(format!(
                                    "ALTER TABLE {target} ALTER COLUMN {} TYPE {wider}",
                                    quote(f.name())
                                ));
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {}
                    }
                }
            }
        }
        if ddl.is_empty() {
            return Ok(());
        }
        for stmt in ddl {
            self.exec(&stmt).await.map_err(|e| raced(e, &target))?;
        }
        self.schema = Some(schema.clone());
        self.refresh_types().await?;
        // a staging table made for the old columns no longer fits
        if self.staging {
            self.exec("DROP TABLE IF EXISTS pg_temp.sluice_staging")
                .await?;
            self.staging = false;
        }
        Ok(())
    }

    /// Reads the column types of the table as this transaction sees them.
    async fn refresh_types(&mut self) -> Result<()> {
        let (schema, table) = (self.config.schema.clone(), self.config.table.clone());
        let tx = self.tx().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| pg_error(format!("table \"{schema}\".\"{table}\""), e))?;
        self.pg_types = rows.into_iter().collect();
        Ok(())
    }

    /// The PostgreSQL type of each column of `records` (`_op` is text).
    fn copy_types(&self, records: &RecordBatch) -> Vec<String> {
        records
            .schema()
            .fields()
            .iter()
            .map(|f| {
                if f.name() == columns::OP {
                    "text".to_string()
                } else {
                    self.pg_types.get(f.name()).cloned().unwrap_or_default()
                }
            })
            .collect()
    }

    /// COPYs `records` into `into`, encoding the next chunk of rows while the server
    /// takes in the one sent before it (encoding the whole batch first left the server
    /// idle meanwhile).
    async fn copy(&mut self, into: &str, columns: &str, records: &RecordBatch) -> Result<()> {
        let rows = records.num_rows();
        let chunks: Vec<(usize, usize)> = (0..rows.max(1))
            .step_by(COPY_CHUNK_ROWS)
            .map(|start| (start, COPY_CHUNK_ROWS.min(rows - start)))
            .collect();
        let types = self.copy_types(records);
        let (mut first, binary) =
            connector_api::blocking(|| encode(&records.slice(chunks[0].0, chunks[0].1), &types))?;
        let format = if binary { " WITH (FORMAT binary)" } else { "" };
        let table = self.target();
        let copy_error = |e| pg_error(format!("table {table}: COPY"), e);
        let last = chunks.len() - 1;
        let tx = self.tx().await?;
        let mut copy = tx
            .copy_in_raw(&format!("COPY {into} ({columns}) FROM STDIN{format}"))
            .await
            .map_err(copy_error)?;
        for (i, &(start, len)) in chunks.iter().enumerate() {
            let data = match i {
                0 => std::mem::take(&mut first),
                _ => {
                    match connector_api::blocking(|| encode(&records.slice(start, len), &types))? {
                        (d, b) if b == binary => d,
                        _ => return Err(Error::internal("COPY format changed within a batch")),
                    }
                }
            };
            // one binary COPY stream: the header once, the trailer once
            let from = if binary && i > 0 { BINARY_HEADER } else { 0 };
            let to = if binary && i < last {
                data.len() - 2
            } else {
                data.len()
            };
            copy.send(&data[from..to]).await.map_err(copy_error)?;
        }
        copy.finish().await.map_err(copy_error)?;
        Ok(())
    }

    async fn insert(&mut self, batch: &Batch) -> Result<()> {
        // every column: the data, the metadata the source was asked for (`_key`,
        // `_offset`, ...: stored as columns, never dropped), `_op` of change records
        let records = batch.records.clone();
        if self.config.mode == SinkMode::Upsert {
            if let Some(truncates) = truncates(&records) {
                // a truncate in the source: what came before it, then every row goes,
                // then what came after, in order
                let mut start = 0;
                for t in truncates {
                    if t > start {
                        self.write_records(records.slice(start, t - start)).await?;
                    }
                    self.exec(&format!("DELETE FROM {}", self.target())).await?;
                    tracing::info!(table = %self.target(), "truncate in the source: every row deleted");
                    start = t + 1;
                }
                if start < records.num_rows() {
                    self.write_records(records.slice(start, records.num_rows() - start))
                        .await?;
                }
                return Ok(());
            }
        }
        self.write_records(records).await
    }

    /// Writes records (data columns, plus `_op` for change records).
    async fn write_records(&mut self, records: RecordBatch) -> Result<()> {
        let schema = records.schema();
        let changes = schema.field_with_name(columns::OP).is_ok();
        let data_fields: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != columns::OP)
            .map(|f| quote(f.name()))
            .collect();
        let all_fields: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
        if self.config.mode == SinkMode::Insert {
            if changes {
                self.config.accepts_changes()?;
            }
            return self
                .copy(&self.target(), &all_fields.join(", "), &records)
                .await;
        }
        if !self.staging {
            // CREATE TABLE AS copies no NOT NULL constraint: delete records carry only keys
            self.exec(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS sluice_staging ON COMMIT DROP AS SELECT * FROM {} WITH NO DATA",
                self.target()
            ))
            .await?;
            self.exec(&format!(
                "ALTER TABLE pg_temp.sluice_staging ADD COLUMN IF NOT EXISTS {} text, ADD COLUMN IF NOT EXISTS {SEQ} bigserial",
                quote(columns::OP)
            ))
            .await?;
            self.staging = true;
        }
        self.copy("pg_temp.sluice_staging", &all_fields.join(", "), &records)
            .await?;
        let keys = self
            .config
            .key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        let last = format!(
            "(SELECT DISTINCT ON ({keys}) * FROM pg_temp.sluice_staging ORDER BY {keys}, {SEQ} DESC) last"
        );
        let op = quote(columns::OP);
        if changes {
            // the last record of a key decides: a delete deletes
            let on: Vec<String> = self
                .config
                .key
                .iter()
                .map(|k| format!("t.{0} = last.{0}", quote(k)))
                .collect();
            self.exec(&format!(
                "DELETE FROM {} t USING {last} WHERE last.{op} = 'd' AND {}",
                self.target(),
                on.join(" AND ")
            ))
            .await?;
        }
        let set: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| !self.config.key.contains(f.name()) && f.name() != columns::OP)
            .map(|f| format!("{0} = excluded.{0}", quote(f.name())))
            .collect();
        let action = if set.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", set.join(", "))
        };
        let data_columns = data_fields.join(", ");
        let picked: Vec<String> = data_fields.iter().map(|c| format!("last.{c}")).collect();
        self.exec(&format!(
            "INSERT INTO {} ({data_columns}) SELECT {} FROM {last} WHERE last.{op} IS DISTINCT FROM 'd' \
             ON CONFLICT ({keys}) DO {action}",
            self.target(),
            picked.join(", ")
        ))
        .await?;
        self.exec("TRUNCATE pg_temp.sluice_staging").await
    }
}

#[connector_api::async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.pipeline = ctx.pipeline.clone();
        self.sink = ctx.sink.clone();
        (self.in_tx, self.lost, self.staging) = (false, false, false);
        let mut conn = connect_one(
            &self.config.url,
            &format!("sluice {}/{}", self.pipeline, self.sink),
        )
        .await?;
        let offsets_table = format!("{}.{}", quote(&self.config.schema), quote(OFFSETS_TABLE));
        let created = sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {offsets_table} (pipeline text NOT NULL, sink text NOT NULL, \
             offsets text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, sink))"
        ))
        .execute(&mut conn)
        .await;
        match created {
            Ok(_) => {}
            // another runtime created it at the same moment (CREATE ... IF NOT EXISTS races)
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("23505") | Some("42P07")) => {}
            Err(e) => return Err(pg_error(format!("create {offsets_table}"), e)),
        }
        // before the offsets are read: an earlier run's commit still in flight finishes
        // (or aborts) first, and a run still going keeps this one out
        let what = format!(
            "pipeline \"{}\" sink \"{}\" (its offsets in {offsets_table})",
            self.pipeline, self.sink
        );
        let key = lock::key(&self.config.schema, &self.pipeline, &self.sink);
        lock::acquire(&mut conn, key, self.config.lock_timeout, &what).await?;
        let stored: Option<(String,)> = sqlx::query_as(&format!(
            "SELECT offsets FROM {offsets_table} WHERE pipeline = $1 AND sink = $2"
        ))
        .bind(&self.pipeline)
        .bind(&self.sink)
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| pg_error("read stored offsets", e))?;
        let offsets = stored.map(|(s,)| Offsets::from_envelope(&s)).transpose()?;
        let found = table_columns(&mut conn, &self.config.schema, &self.config.table).await?;
        self.pg_types = found.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
        self.schema = found.map(|(s, _)| s);
        if let Some(schema) = &self.schema {
            for k in &self.config.key {
                if schema.field_with_name(k).is_err() {
                    return Err(Error::config(format!(
                        "key column \"{k}\" is not in table {}",
                        self.target()
                    ))
                    .with_field("key"));
                }
            }
        }
        self.conn = Some(conn);
        Ok(SinkState {
            // stored with the data: none stored means the data is gone too (or never
            // was), and the pipeline starts over, whatever the checkpoint store says
            offsets: Some(offsets.unwrap_or_default()),
            schema: self.schema.clone(),
        })
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let refused = crate::nul::refused(&batch.records, &self.target())?;
        if !refused.is_empty() {
            return Err(Error::refused(refused));
        }
        let result = self.write_in_savepoint(batch).await;
        result.map_err(|e| self.after_failure(e))
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        let result = self.commit_with(offsets).await;
        result.map_err(|e| self.after_failure(e))
    }

    async fn close(&mut self) -> Result<()> {
        // closing the session rolls back a transaction still open and ends the run lock
        self.in_tx = false;
        if let Some(conn) = self.conn.take() {
            if let Err(e) = conn.close().await {
                tracing::debug!(error = %e, table = %self.target(), "closing the connection failed");
            }
        }
        Ok(())
    }
}

impl PostgresSink {
    async fn write_in_savepoint(&mut self, batch: &Batch) -> Result<()> {
        if self.lost {
            return Err(Error::new(ErrorKind::Aborted, "the transaction was lost"));
        }
        // the table's DDL too: a failed one (another writer creating the table at the
        // same moment) is undone alone, and the transaction goes on
        self.exec("SAVEPOINT sluice_write").await?;
        let result = match self.prepare_table(&batch.records.schema()).await {
            Ok(()) => self.insert(batch).await,
            Err(e) => Err(e),
        };
        let end = if result.is_ok() {
            "RELEASE SAVEPOINT sluice_write"
        } else {
            "ROLLBACK TO SAVEPOINT sluice_write"
        };
        self.exec(end).await?;
        result
    }

    async fn commit_with(&mut self, offsets: &Offsets) -> Result<()> {
        if self.lost {
            return Err(Error::new(ErrorKind::Aborted, "the transaction was lost"));
        }
        let offsets_table = format!("{}.{}", quote(&self.config.schema), quote(OFFSETS_TABLE));
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let tx = self.tx().await?;
        let stored = sqlx::query(&format!(
            "INSERT INTO {offsets_table} (pipeline, sink, offsets, updated_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (pipeline, sink) DO UPDATE SET offsets = excluded.offsets, updated_at = excluded.updated_at"
        ))
        .bind(&pipeline)
        .bind(&sink)
        .bind(offsets.to_envelope())
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error("store offsets", e));
        let committed = match stored {
            // COMMIT is never sent for a transaction that an error has already aborted
            Ok(_) => tx
                .execute("COMMIT")
                .await
                .map(|_| ())
                .map_err(|e| pg_error(format!("table {}: commit", self.target()), e)),
            Err(e) => Err(e),
        };
        self.staging = false;
        if committed.is_err() {
            // the transaction is over (or can only roll back) and took its rows with it:
            // retrying the flush would store the offsets without them
            self.lost = true;
        } else {
            self.in_tx = false;
        }
        committed
    }
}

/// `sluice check`: connects, and reads the table's schema if it exists.
pub async fn check(config: &PostgresSinkConfig) -> Result<()> {
    let mut conn = connect_one(&config.url, "sluice check").await?;
    let result = table_schema(&mut conn, &config.schema, &config.table)
        .await
        .map(|_| ());
    let _ = conn.close().await;
    result
}

/// A DDL error caused by another writer creating the same table or column at once
/// (`23505` on the catalog, `42P07`, `42701`): transient, with what happened.
fn raced(e: Error, target: &str) -> Error {
    let race = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<sqlx::Error>())
        .and_then(crate::error::sqlstate)
        .is_some_and(|c| matches!(c.as_str(), "23505" | "42P07" | "42701"));
    if race {
        return Error::transient(format!(
            "table {target}: another writer changed it at the same moment; retrying"
        ))
        .with_source(e);
    }
    e
}
