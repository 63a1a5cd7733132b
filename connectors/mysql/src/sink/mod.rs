//! The MySQL/MariaDB sink: one transaction per flush, `LOAD DATA LOCAL INFILE` per
//! write (from a stream in memory, no file) under a savepoint, offsets in the same
//! transaction, all on one connection that holds the run lock ([`crate::lock`]).
//!
//! `LOCAL` makes the server turn a bad value or a duplicate key into a warning and go
//! on, so every load checks its warnings and fails (rolling back to the savepoint) on
//! the first, naming it. Where the server refuses `LOCAL INFILE`, rows go in as
//! multi-row `INSERT`s instead, and the reason is logged once.
//!
//! DDL commits the open transaction in MySQL, so a table or column is created before
//! the transaction begins; a new column in the middle of one first commits what was
//! written, with the offsets it reached.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use connector_api::{
    columns, Batch, Error, ErrorKind, Offsets, Result, Sink, SinkContext, SinkState,
};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice_formats::changes::{self, Apply};

use crate::config::{MysqlSinkConfig, SinkMode};
use crate::conn::{connect, database_of, primary_key, quote, split_table};
use crate::encode::Column;
use crate::error::my_error;
use crate::lock;

mod load;
mod table;

/// Table holding the offsets stored with the data, in the table's database.
pub const OFFSETS_TABLE: &str = "sluice_offsets";
/// Temporary table an upsert loads into before it merges.
const STAGING: &str = "sluice_staging";

/// Writes batches into one table.
pub struct MysqlSink {
    config: MysqlSinkConfig,
    conn: Option<Conn>,
    /// The table's database and name, and both quoted.
    db: String,
    target: String,
    /// The table's columns as Arrow sees them (None until it exists).
    schema: Option<SchemaRef>,
    /// A transaction is open on `conn`.
    in_tx: bool,
    /// The staging table exists in this session.
    staging: bool,
    /// The open transaction died with uncommitted rows in it.
    lost: bool,
    /// `LOAD DATA LOCAL INFILE` is allowed (false after the server refused it).
    infile: bool,
    /// The position the rows written so far reach: the stored offsets, merged with
    /// each batch written since.
    reached: Offsets,
    pipeline: String,
    sink: String,
}

impl MysqlSink {
    /// A sink for `config` (validated).
    pub fn new(config: MysqlSinkConfig) -> Self {
        MysqlSink {
            config,
            conn: None,
            db: String::new(),
            target: String::new(),
            schema: None,
            in_tx: false,
            staging: false,
            lost: false,
            infile: true,
            reached: Offsets::new(),
            pipeline: String::new(),
            sink: String::new(),
        }
    }

    fn conn(&mut self) -> Result<&mut Conn> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::internal("sink is not open"))
    }

    fn offsets_table(&self) -> String {
        format!("{}.{}", quote(&self.db), quote(OFFSETS_TABLE))
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        let target = self.target.clone();
        self.conn()?
            .query_drop(sql)
            .await
            .map_err(|e| my_error(format!("table {target}: {}", short(sql)), e))
    }

    /// Begins the flush's transaction when none is open.
    async fn begin(&mut self) -> Result<()> {
        if !self.in_tx {
            self.exec("START TRANSACTION").await?;
            self.in_tx = true;
        }
        Ok(())
    }

    /// After a failure inside the transaction: if the connection is gone, so is every
    /// row written since the last flush, and retrying would skip them. That becomes
    /// `Aborted`, which restarts the pipeline from its last checkpoint.
    fn after_failure(&mut self, err: Error) -> Error {
        if err.kind() == ErrorKind::Connect || self.lost {
            self.lost = true;
            self.in_tx = false;
            self.conn = None;
            return Error::new(
                ErrorKind::Aborted,
                format!(
                    "table {}: the connection was lost with rows not yet committed",
                    self.target
                ),
            )
            .with_source(err);
        }
        err
    }

    async fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        if self.lost {
            return Err(Error::new(ErrorKind::Aborted, "the transaction was lost"));
        }
        self.prepare_table(&batch.records.schema()).await?;
        self.begin().await?;
        self.exec("SAVEPOINT sluice_write").await?;
        let result = self.apply(&batch.records).await;
        if let Err(e) = &result {
            // a deadlock rolls back the server's whole transaction, savepoint and all
            if crate::error::code_of(e) == Some(1213) {
                self.lost = true;
            }
        }
        if self.lost {
            return result;
        }
        let end = match result {
            Ok(()) => "RELEASE SAVEPOINT sluice_write",
            Err(_) => "ROLLBACK TO SAVEPOINT sluice_write",
        };
        if let Err(undo) = self.exec(end).await {
            // the transaction is gone with what it held
            self.lost = true;
            return Err(result.err().unwrap_or(undo));
        }
        result?;
        self.reached.merge(&batch.offsets);
        self.reached.add_records(batch.num_rows() as u64);
        Ok(())
    }

    /// Inserts, or upserts and deletes in the order of the records.
    async fn apply(&mut self, records: &RecordBatch) -> Result<()> {
        let target = self.target.clone();
        if self.config.mode == SinkMode::Insert {
            if records.schema().field_with_name(columns::OP).is_ok() {
                self.config.accepts_changes()?;
            }
            return self.load(&target, records, false).await;
        }
        let (data, runs) = changes::runs(records)?;
        for run in runs {
            let rows = data.slice(run.start, run.len);
            match run.apply {
                Apply::Upsert => self.upsert(&rows).await?,
                Apply::Delete => self.delete(&rows).await?,
                Apply::Truncate => {
                    // TRUNCATE would commit the transaction
                    self.exec(&format!("DELETE FROM {target}")).await?;
                    tracing::info!(table = %target, "truncate in the source: every row deleted");
                }
            }
        }
        Ok(())
    }

    /// Loads into the staging table (the last record of a key wins there), then merges
    /// it into the table.
    async fn upsert(&mut self, rows: &RecordBatch) -> Result<()> {
        let staging = format!("{}.{}", quote(&self.db), quote(STAGING));
        if !self.staging {
            self.exec(&format!(
                "CREATE TEMPORARY TABLE IF NOT EXISTS {staging} LIKE {}",
                self.target
            ))
            .await?;
            self.staging = true;
        }
        self.load(&staging, rows, true).await?;
        let names: Vec<String> = rows
            .schema()
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect();
        // the staged row by its alias, not VALUES(), which MySQL 8.0.20 deprecates
        // with a warning
        let set: Vec<String> = rows
            .schema()
            .fields()
            .iter()
            .filter(|f| !self.config.key.contains(f.name()))
            .map(|f| format!("{0} = s.{0}", quote(f.name())))
            .collect();
        let update = match set.is_empty() {
            true => {
                let k = quote(&self.config.key[0]);
                format!("{k} = {k}")
            }
            false => set.join(", "),
        };
        let cols = names.join(", ");
        self.exec_rows(&format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {staging} AS s ON DUPLICATE KEY UPDATE {update}",
            self.target
        ))
        .await?;
        self.exec(&format!("DELETE FROM {staging}")).await
    }

    /// Deletes the rows with the keys of `rows`.
    async fn delete(&mut self, rows: &RecordBatch) -> Result<()> {
        let schema = rows.schema();
        let mut keys = Vec::new();
        for k in &self.config.key {
            let i = schema
                .index_of(k)
                .map_err(|_| Error::schema(format!("a delete record has no key column \"{k}\"")))?;
            let into = self
                .schema
                .as_ref()
                .and_then(|t| t.field_with_name(k).ok())
                .map(|f| f.data_type().clone());
            keys.push(Column::new(k, rows.column(i), into.as_ref())?);
        }
        let names: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
        let head = format!(
            "DELETE FROM {} WHERE ({}) IN (",
            self.target,
            names.join(", ")
        );
        self.exec_tuples(&head, ")", &keys, rows.num_rows()).await
    }

    async fn commit_with(&mut self, offsets: &Offsets) -> Result<()> {
        if self.lost {
            return Err(Error::new(ErrorKind::Aborted, "the transaction was lost"));
        }
        self.begin().await?;
        let table = self.offsets_table();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let stored = self
            .conn()?
            .exec_drop(
                format!(
                    "INSERT INTO {table} (pipeline, sink, offsets, updated_at) VALUES (?, ?, ?, UTC_TIMESTAMP(6)) \
                     ON DUPLICATE KEY UPDATE offsets = VALUES(offsets), updated_at = VALUES(updated_at)"
                ),
                (pipeline, sink, offsets.to_envelope()),
            )
            .await
            .map_err(|e| my_error("store offsets", e));
        let committed = match stored {
            Ok(()) => self.exec("COMMIT").await,
            Err(e) => Err(e),
        };
        match committed {
            // the transaction is over (or can only roll back) and took its rows with
            // it: retrying the flush would store the offsets without them
            Err(e) => {
                self.lost = true;
                Err(e)
            }
            Ok(()) => {
                self.in_tx = false;
                self.reached = offsets.clone();
                Ok(())
            }
        }
    }
}

/// The first line of a statement, shortened, for messages.
fn short(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or_default();
    match line.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

#[connector_api::async_trait]
impl Sink for MysqlSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.pipeline = ctx.pipeline.clone();
        self.sink = ctx.sink.clone();
        (self.in_tx, self.lost, self.staging) = (false, false, false);
        let mut conn = connect(&self.config.url).await?;
        self.db = database_of(&mut conn, &self.config.table).await?;
        let bare = split_table(&self.config.table).1.to_string();
        self.target = format!("{}.{}", quote(&self.db), quote(&bare));
        self.conn = Some(conn);
        let table = self.offsets_table();
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (pipeline VARCHAR(255) NOT NULL, sink VARCHAR(255) NOT NULL, \
             offsets LONGTEXT NOT NULL, updated_at DATETIME(6) NOT NULL, PRIMARY KEY (pipeline, sink)) \
             DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        ))
        .await?;
        // before the offsets are read: an earlier run's commit still in flight
        // finishes first, and a run still going keeps this one out
        let what = format!(
            "pipeline \"{}\" sink \"{}\" (its offsets in {table})",
            self.pipeline, self.sink
        );
        let name = lock::name(&self.db, &self.pipeline, &self.sink);
        let wait = self.config.lock_timeout;
        lock::acquire(self.conn()?, &name, wait, &what).await?;
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let stored: Option<String> = self
            .conn()?
            .exec_first(
                format!("SELECT offsets FROM {table} WHERE pipeline = ? AND sink = ?"),
                (pipeline, sink),
            )
            .await
            .map_err(|e| my_error("read stored offsets", e))?;
        let offsets = stored.map(|s| Offsets::from_envelope(&s)).transpose()?;
        self.schema = self.read_schema().await?;
        if self.schema.is_some() && self.config.mode == SinkMode::Upsert {
            let db = self.db.clone();
            let pk = primary_key(self.conn()?, &db, &bare).await?;
            if pk != self.config.key {
                return Err(Error::config(format!(
                    "table {} has primary key {pk:?}, but key is {:?}; an upsert matches rows by the primary key",
                    self.target, self.config.key
                ))
                .with_field("key"));
            }
        }
        self.reached = offsets.clone().unwrap_or_default();
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
        let result = self.write_batch(batch).await;
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
            if let Err(e) = conn.disconnect().await {
                tracing::debug!(error = %e, table = %self.target, "closing the connection failed");
            }
        }
        Ok(())
    }
}

/// `sluice check`: connects, and finds the table's database.
pub async fn check(config: &MysqlSinkConfig) -> Result<()> {
    let mut conn = connect(&config.url).await?;
    let result = database_of(&mut conn, &config.table).await.map(|_| ());
    let _ = conn.disconnect().await;
    result
}
