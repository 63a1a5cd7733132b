//! The SQLite sink: one transaction per flush, offsets in the same transaction; change
//! records applied in `upsert` mode ([`crate::changes`]).

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use connector_api::{Batch, Error, Offsets, Result, Sink, SinkContext, SinkState};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::config::{NanPolicy, SinkMode, SqliteSinkConfig};
use crate::conn::{connect, quote, table_schema};
use crate::error::sql_error;
use crate::types::{column_values, declared_type, SqlValue};
use sluice_formats::changes::{Apply, Run};

/// SQLite's limit on bound parameters in one statement.
const MAX_PARAMS: usize = 32_766;
/// Rows per INSERT statement at most.
const MAX_ROWS_PER_STATEMENT: usize = 500;
/// Table holding the offsets stored with the data.
pub const OFFSETS_TABLE: &str = "_sluice_offsets";

/// Writes batches into one table.
pub struct SqliteSink {
    config: SqliteSinkConfig,
    pool: Option<SqlitePool>,
    tx: Option<Transaction<'static, Sqlite>>,
    schema: Option<SchemaRef>,
    pipeline: String,
    sink: String,
}

impl SqliteSink {
    /// A sink for `config` (validated).
    pub fn new(config: SqliteSinkConfig) -> Self {
        SqliteSink {
            config,
            pool: None,
            tx: None,
            schema: None,
            pipeline: String::new(),
            sink: String::new(),
        }
    }

    async fn tx(&mut self) -> Result<&mut Transaction<'static, Sqlite>> {
        if self.tx.is_none() {
            let pool = self
                .pool
                .as_ref()
                .ok_or_else(|| Error::internal("sink is not open"))?;
            self.tx = Some(
                pool.begin()
                    .await
                    .map_err(|e| sql_error("begin transaction", e))?,
            );
        }
        self.tx
            .as_mut()
            .ok_or_else(|| Error::internal("no transaction"))
    }

    /// Creates the table, or adds the batch's new columns to it.
    async fn prepare_table(&mut self, schema: &SchemaRef) -> Result<()> {
        let table = quote(&self.config.table);
        let mut ddl = Vec::new();
        match &self.schema {
            None => {
                let cols = self.column_defs(schema)?;
                ddl.push(format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({})",
                    cols.join(", ")
                ));
            }
            Some(known) if known.as_ref() != schema.as_ref() => {
                // only a change of the declared type needs it (Utf8 and LargeUtf8 are
                // both TEXT)
                let declared = |f: &arrow_schema::Field| declared_type(f.name(), f.data_type());
                let mut widened = false;
                for f in schema.fields() {
                    if let Ok(k) = known.field_with_name(f.name()) {
                        widened |= declared(k)? != declared(f)?;
                    }
                }
                if widened {
                    // SQLite cannot change a column's declared type, and the declared
                    // type is what reads it back (INT is int32): the table is built
                    // again with the wider types
                    let known = known.clone();
                    self.rebuild(&known, schema).await?;
                    self.schema = Some(schema.clone());
                    return Ok(());
                }
                for f in schema.fields() {
                    if known.field_with_name(f.name()).is_err() {
                        ddl.push(format!(
                            "ALTER TABLE {table} ADD COLUMN {} {}",
                            quote(f.name()),
                            declared_type(f.name(), f.data_type())?
                        ));
                    }
                }
            }
            Some(_) => return Ok(()),
        }
        let name = self.config.table.clone();
        let tx = self.tx().await?;
        for stmt in ddl {
            sqlx::query(&stmt)
                .execute(&mut **tx)
                .await
                .map_err(|e| sql_error(format!("table \"{name}\": {stmt}"), e))?;
        }
        self.schema = Some(schema.clone());
        Ok(())
    }

    /// The column definitions of a table of `schema`, with the key.
    fn column_defs(&self, schema: &SchemaRef) -> Result<Vec<String>> {
        let mut cols = Vec::new();
        for f in schema.fields() {
            let null = if f.is_nullable() { "" } else { " NOT NULL" };
            cols.push(format!(
                "{} {}{null}",
                quote(f.name()),
                declared_type(f.name(), f.data_type())?
            ));
        }
        if !self.config.key.is_empty() {
            let key: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
            cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
        }
        Ok(cols)
    }

    /// Builds the table again with `schema`'s columns (a column widened under
    /// `evolve`), as SQLite's documented procedure does: a new table, the rows copied
    /// with their rowids, the old one dropped, the new one renamed, its indexes and
    /// triggers made again; all in the flush's transaction. The new table has the
    /// columns, NOT NULL and key the sink declares: other constraints a user added
    /// (CHECK, UNIQUE, DEFAULT, foreign keys) are not carried over.
    async fn rebuild(&mut self, known: &SchemaRef, schema: &SchemaRef) -> Result<()> {
        let name = self.config.table.clone();
        let table = quote(&name);
        let fresh = quote(&format!("{name}__sluice_rebuild"));
        let cols = self.column_defs(schema)?;
        let old: Vec<String> = known.fields().iter().map(|f| quote(f.name())).collect();
        let old = old.join(", ");
        let tx = self.tx().await?;
        let failed = |stmt: &str, e| sql_error(format!("table \"{name}\": {stmt}"), e);
        let extras: Vec<(String,)> = sqlx::query_as(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL",
        )
        .bind(&name)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| failed("its indexes", e))?;
        let mut steps = vec![
            format!("CREATE TABLE {fresh} ({})", cols.join(", ")),
            format!("INSERT INTO {fresh} (rowid, {old}) SELECT rowid, {old} FROM {table}"),
            format!("DROP TABLE {table}"),
            format!("ALTER TABLE {fresh} RENAME TO {table}"),
        ];
        steps.extend(extras.into_iter().map(|(sql,)| sql));
        for stmt in steps {
            sqlx::query(&stmt)
                .execute(&mut **tx)
                .await
                .map_err(|e| failed(&stmt, e))?;
        }
        tracing::info!(table = %name, "table built again with wider column types (drift = \"evolve\")");
        Ok(())
    }

    fn insert_sql(&self, schema: &Schema, rows: usize) -> String {
        let cols: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
        let one = format!("({})", vec!["?"; cols.len()].join(","));
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            quote(&self.config.table),
            cols.join(", "),
            vec![one; rows].join(",")
        );
        if self.config.mode == SinkMode::Upsert {
            let key: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
            let set: Vec<String> = schema
                .fields()
                .iter()
                .filter(|f| !self.config.key.contains(f.name()))
                .map(|f| format!("{0} = excluded.{0}", quote(f.name())))
                .collect();
            if set.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", key.join(", ")));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    key.join(", "),
                    set.join(", ")
                ));
            }
        }
        sql
    }

    async fn insert(&mut self, records: &RecordBatch) -> Result<()> {
        let schema = records.schema();
        let mut columns: Vec<Vec<SqlValue>> = schema
            .fields()
            .iter()
            .zip(records.columns())
            .map(|(f, c)| column_values(f.name(), c))
            .collect::<Result<_>>()?;
        if self.config.nan == NanPolicy::Text {
            for v in columns.iter_mut().flatten() {
                if matches!(v, SqlValue::Real(x) if x.is_nan()) {
                    *v = SqlValue::Text("NaN".into());
                }
            }
        }
        let ncols = columns.len().max(1);
        let per_stmt = (MAX_PARAMS / ncols).clamp(1, MAX_ROWS_PER_STATEMENT);
        let total = records.num_rows();
        let full_sql = self.insert_sql(&schema, per_stmt);
        let table = self.config.table.clone();
        let tail_sql = self.insert_sql(&schema, total % per_stmt);
        let tx = self.tx().await?;
        let mut start = 0;
        while start < total {
            let n = per_stmt.min(total - start);
            let sql = if n == per_stmt { &full_sql } else { &tail_sql };
            let mut q = sqlx::query(sql);
            for r in start..start + n {
                for col in &columns {
                    q = bind(q, &col[r]);
                }
            }
            q.execute(&mut **tx).await.map_err(|e| {
                sql_error(
                    format!("table \"{table}\": insert of rows {start}..{}", start + n),
                    e,
                )
            })?;
            start += n;
        }
        Ok(())
    }

    /// Applies change records in order (`data` without `_op`, cut into `runs`).
    async fn apply(&mut self, data: &RecordBatch, runs: &[Run]) -> Result<()> {
        let table = self.config.table.clone();
        for run in runs {
            let part = data.slice(run.start, run.len);
            match run.apply {
                Apply::Upsert => self.insert(&part).await?,
                Apply::Delete => self.delete(&part).await?,
                Apply::Truncate => {
                    let tx = self.tx().await?;
                    sqlx::query(&format!("DELETE FROM {}", quote(&table)))
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| sql_error(format!("table \"{table}\": truncate"), e))?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the rows with the keys of `keys`.
    async fn delete(&mut self, keys: &RecordBatch) -> Result<()> {
        let table = self.config.table.clone();
        let values: Vec<Vec<SqlValue>> = self
            .config
            .key
            .iter()
            .map(|k| {
                let column = keys.column_by_name(k).ok_or_else(|| {
                    Error::schema(format!(
                        "table \"{table}\": a delete without key column \"{k}\""
                    ))
                })?;
                column_values(k, column)
            })
            .collect::<Result<_>>()?;
        let matches: Vec<String> = self
            .config
            .key
            .iter()
            .map(|k| format!("{} IS ?", quote(k)))
            .collect();
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            quote(&table),
            matches.join(" AND ")
        );
        let tx = self.tx().await?;
        for r in 0..keys.num_rows() {
            let mut q = sqlx::query(&sql);
            for col in &values {
                q = bind(q, &col[r]);
            }
            q.execute(&mut **tx)
                .await
                .map_err(|e| sql_error(format!("table \"{table}\": delete of row {r}"), e))?;
        }
        Ok(())
    }
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

fn bind<'q>(q: Query<'q>, value: &'q SqlValue) -> Query<'q> {
    match value {
        SqlValue::Null => q.bind(None::<i64>),
        SqlValue::Int(v) => q.bind(*v),
        SqlValue::Real(v) => q.bind(*v),
        SqlValue::Text(v) => q.bind(v.as_str()),
        SqlValue::Blob(v) => q.bind(v.as_slice()),
    }
}

/// The rows with a float SQLite would change: it stores NaN as NULL (unless `nan`
/// stores it as text) and -0.0 as 0.0.
fn refusals(
    records: &arrow_array::RecordBatch,
    table: &str,
    nan: NanPolicy,
) -> Result<Vec<(usize, connector_api::Reject)>> {
    use sluice_formats::scan;
    let nan_refused = nan == NanPolicy::Error;
    let changed: fn(f64) -> bool = match nan_refused {
        true => |v| v.is_nan() || (v == 0.0 && v.is_sign_negative()),
        false => |v| v == 0.0 && v.is_sign_negative(),
    };
    let found = scan::rows_where(records, &|a| scan::floats_where(a, changed));
    let place = format!("table \"{table}\"");
    scan::refusals(
        records,
        found,
        &place,
        &|row| format!("{place} row {row} of the write"),
        &|column| {
            match nan_refused {
            true => format!(
                "column \"{column}\": NaN or -0.0, which SQLite would store as NULL or 0.0 (nan = \"text\" stores NaN as text)"
            ),
            false => format!("column \"{column}\": -0.0, which SQLite would store as 0.0"),
        }
        },
    )
}

#[connector_api::async_trait]
impl Sink for SqliteSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.pipeline = ctx.pipeline.clone();
        self.sink = ctx.sink.clone();
        let pool = connect(&self.config.path, true).await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (pipeline TEXT NOT NULL, sink TEXT NOT NULL, offsets TEXT NOT NULL, \
             updated_at TEXT NOT NULL, PRIMARY KEY (pipeline, sink))",
            quote(OFFSETS_TABLE)
        ))
        .execute(&pool)
        .await
        .map_err(|e| sql_error("create offsets table", e))?;
        let stored: Option<(String,)> = sqlx::query_as(&format!(
            "SELECT offsets FROM {} WHERE pipeline = ? AND sink = ?",
            quote(OFFSETS_TABLE)
        ))
        .bind(&self.pipeline)
        .bind(&self.sink)
        .fetch_optional(&pool)
        .await
        .map_err(|e| sql_error("read stored offsets", e))?;
        let offsets = stored.map(|(s,)| Offsets::from_envelope(&s)).transpose()?;
        self.schema = table_schema(&pool, &self.config.table).await?;
        if let Some(schema) = &self.schema {
            for k in &self.config.key {
                if schema.field_with_name(k).is_err() {
                    return Err(Error::config(format!(
                        "key column \"{k}\" is not in table \"{}\"",
                        self.config.table
                    ))
                    .with_field("key"));
                }
            }
        }
        self.pool = Some(pool);
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
        let refused = refusals(&batch.records, &self.config.table, self.config.nan)?;
        if !refused.is_empty() {
            return Err(Error::refused(refused));
        }
        // upsert applies change records; insert keeps `_op` as a column, a log
        let changes = match self.config.mode {
            SinkMode::Upsert => sluice_formats::changes::split(&batch.records)?,
            SinkMode::Insert => None,
        };
        let data = changes.as_ref().map_or(&batch.records, |(data, _)| data);
        self.prepare_table(&data.schema()).await?;
        // a savepoint makes a failed write leave the transaction as it was, so a retry
        // cannot insert rows twice
        let tx = self.tx().await?;
        sqlx::query("SAVEPOINT sluice_write")
            .execute(&mut **tx)
            .await
            .map_err(|e| sql_error("savepoint", e))?;
        let result = match &changes {
            None => self.insert(&batch.records).await,
            Some((data, runs)) => self.apply(data, runs).await,
        };
        let tx = self.tx().await?;
        let end = if result.is_ok() {
            "RELEASE sluice_write"
        } else {
            "ROLLBACK TO sluice_write"
        };
        sqlx::query(end)
            .execute(&mut **tx)
            .await
            .map_err(|e| sql_error("savepoint", e))?;
        result
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let tx = self.tx().await?;
        sqlx::query(&format!(
            "INSERT INTO {} (pipeline, sink, offsets, updated_at) VALUES (?, ?, ?, datetime('now')) \
             ON CONFLICT (pipeline, sink) DO UPDATE SET offsets = excluded.offsets, updated_at = excluded.updated_at",
            quote(OFFSETS_TABLE)
        ))
        .bind(&pipeline)
        .bind(&sink)
        .bind(offsets.to_envelope())
        .execute(&mut **tx)
        .await
        .map_err(|e| sql_error("store offsets", e))?;
        let tx = self
            .tx
            .take()
            .ok_or_else(|| Error::internal("no transaction"))?;
        tx.commit()
            .await
            .map_err(|e| sql_error(format!("table \"{}\": commit", self.config.table), e))
    }

    async fn close(&mut self) -> Result<()> {
        self.tx = None;
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        Ok(())
    }
}

/// `sluice check`: the database opens (or can be created) and the table, if present, maps.
pub async fn check(config: &SqliteSinkConfig) -> Result<()> {
    let pool = connect(&config.path, true).await?;
    let result = table_schema(&pool, &config.table).await.map(|_| ());
    pool.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sqlite;

    #[tokio::test]
    async fn passes_the_sink_and_source_contracts_on_one_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db").display().to_string();
        let state = connector_api::testkit::sink_contract(
            &Sqlite,
            serde_json::json!({"path": db, "table": "t"}),
            connector_api::testkit::id_batches(9, 4),
        )
        .await;
        assert!(
            state.offsets.is_some(),
            "the sqlite sink stores offsets with the data"
        );
        assert_eq!(state.schema.unwrap().field(0).name(), "id");
        connector_api::testkit::source_contract(
            &Sqlite,
            serde_json::json!({"path": db, "table": "t"}),
        )
        .await;
        connector_api::testkit::source_contract(
            &Sqlite,
            serde_json::json!({"path": db, "table": "t", "cursor": ["id"]}),
        )
        .await;
    }

    #[tokio::test]
    async fn changes_in_one_batch_apply_in_their_order() {
        use arrow_array::{Int64Array, StringArray};
        use connector_api::columns::OP;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db").display().to_string();
        let config: SqliteSinkConfig = serde_json::from_value(
            serde_json::json!({"path": db, "table": "t", "mode": "upsert", "key": ["id"]}),
        )
        .unwrap();
        let mut sink = SqliteSink::new(config);
        sink.open(&SinkContext::for_pipeline("p")).await.unwrap();
        // 1: created, deleted, created again; 2: updated then deleted; 3: before a
        // truncate (gone); 4: after it (kept); a delete's v is null (key only)
        let records = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2, 1, 2, 1, 3, 2, 4])) as _,
            ),
            (
                "v",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    None,
                    Some("b2"),
                    Some("a2"),
                    Some("c"),
                    None,
                    Some("d"),
                ])) as _,
            ),
            (
                OP,
                Arc::new(StringArray::from(vec![
                    "c", "c", "d", "u", "c", "c", "d", "c",
                ])) as _,
            ),
        ])
        .unwrap();
        sink.write(&Batch::new(records.clone(), Offsets::new()))
            .await
            .unwrap();
        sink.flush(&Offsets::new()).await.unwrap();
        let pool = connect(&db, false).await.unwrap();
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, v FROM t ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, "a2".to_string()),
                (3, "c".to_string()),
                (4, "d".to_string())
            ]
        );
        // a truncate in the middle of a batch empties what came before it only
        let truncate = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![5, 0, 6])) as _),
            (
                "v",
                Arc::new(StringArray::from(vec![Some("e"), None, Some("f")])) as _,
            ),
            (OP, Arc::new(StringArray::from(vec!["c", "t", "c"])) as _),
        ])
        .unwrap();
        sink.write(&Batch::new(truncate, Offsets::new()))
            .await
            .unwrap();
        sink.flush(&Offsets::new()).await.unwrap();
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, v FROM t ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows, [(6, "f".to_string())]);
        let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_table_info('t')")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(names.iter().all(|(c,)| c != OP), "{names:?}");
    }

    #[tokio::test]
    async fn names_with_quotes_cannot_inject_sql() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db").display().to_string();
        let table = "x\"; DROP TABLE y; --";
        connector_api::testkit::sink_contract(
            &Sqlite,
            serde_json::json!({"path": db, "table": table}),
            connector_api::testkit::id_batches(3, 3),
        )
        .await;
        let pool = connect(&db, false).await.unwrap();
        let schema = table_schema(&pool, table).await.unwrap().unwrap();
        assert_eq!(schema.fields().len(), 1);
    }
}
