//! The SQLite source: a table in rowid order, or a table or query by cursor columns.

use std::sync::Arc;
use std::time::Duration;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use connector_api::{Batch, Error, Offsets, Result, RowBuilder, Source, SourceContext, Value};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, SqlitePool, TypeInfo};

use crate::config::SqliteSourceConfig;
use crate::conn::{connect, quote, table_schema};
use crate::error::sql_error;
use crate::types::{arrow_type, read_value};

/// Hidden column carrying the rowid in table reads.
const ROWID: &str = "__sluice_rowid";

/// Offset of the single split (the table or query). Exclusive: the position of the
/// last delivered row; reading resumes strictly after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum SqliteOffset {
    /// Table order: the rowid of the last delivered row.
    Rowid {
        /// Last delivered rowid.
        rowid: i64,
    },
    /// Cursor order: the cursor values of the last delivered row.
    Cursor {
        /// Last delivered cursor values, in `cursor` order.
        values: Vec<serde_json::Value>,
    },
    /// A query without cursor: rows delivered so far.
    Rows {
        /// Rows delivered.
        rows: u64,
    },
}

/// Reads a table or query.
pub struct SqliteSource {
    config: SqliteSourceConfig,
    pool: Option<SqlitePool>,
    schema: Option<SchemaRef>,
    position: Option<SqliteOffset>,
    batch_size: usize,
    idle_timeout: Duration,
    split: String,
}

impl SqliteSource {
    /// A source for `config` (validated).
    pub fn new(config: SqliteSourceConfig) -> Self {
        let split = match (&config.table, &config.query) {
            (Some(t), _) => format!("table:{t}"),
            (None, Some(_)) => "query".to_string(),
            (None, None) => String::new(),
        };
        SqliteSource {
            config,
            pool: None,
            schema: None,
            position: None,
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            split,
        }
    }

    fn relation(&self) -> String {
        match (&self.config.table, &self.config.query) {
            (Some(t), _) => quote(t),
            (None, Some(q)) => format!("({q})"),
            (None, None) => String::new(),
        }
    }

    /// With `lag`: the condition that the first cursor column's time is old enough.
    fn aged(&self) -> Option<String> {
        let lag = self.config.lag?;
        let first = quote(self.config.cursor.first()?);
        Some(format!(
            "unixepoch({first}, 'subsec') <= unixepoch('now', 'subsec') - {}",
            lag.as_secs_f64()
        ))
    }

    fn select(&self) -> (String, Vec<serde_json::Value>) {
        let rel = self.relation();
        let limit = self.batch_size;
        if !self.config.cursor.is_empty() {
            let cols: Vec<String> = self.config.cursor.iter().map(|c| quote(c)).collect();
            let order = cols.join(", ");
            let mut conditions: Vec<String> = self.aged().into_iter().collect();
            let mut params = Vec::new();
            if let Some(SqliteOffset::Cursor { values }) = &self.position {
                let marks = vec!["?"; values.len()].join(", ");
                conditions.push(format!("({order}) > ({marks})"));
                params = values.clone();
            }
            let filter = match conditions.is_empty() {
                true => String::new(),
                false => format!(" WHERE {}", conditions.join(" AND ")),
            };
            (
                format!("SELECT * FROM {rel}{filter} ORDER BY {order} LIMIT {limit}"),
                params,
            )
        } else if self.config.table.is_some() {
            let after = match &self.position {
                Some(SqliteOffset::Rowid { rowid }) => *rowid,
                _ => i64::MIN,
            };
            (
                format!("SELECT rowid AS {ROWID}, * FROM {rel} WHERE rowid > ? ORDER BY rowid LIMIT {limit}"),
                vec![serde_json::json!(after)],
            )
        } else {
            let done = match &self.position {
                Some(SqliteOffset::Rows { rows }) => *rows,
                _ => 0,
            };
            (
                format!("SELECT * FROM {rel} LIMIT {limit} OFFSET {done}"),
                vec![],
            )
        }
    }
}

impl SqliteSource {
    /// The cursor values of `row`; an error naming the column when one is NULL (no
    /// position comes after it, so the row could never be read in turn).
    fn cursor_of(&self, row: &SqliteRow) -> Result<Vec<serde_json::Value>> {
        self.config
            .cursor
            .iter()
            .map(|c| {
                let i = row
                    .columns()
                    .iter()
                    .position(|col| col.name() == c)
                    .ok_or_else(|| {
                        Error::internal(format!("cursor column \"{c}\" not in the rows"))
                    })?;
                match json_of(&read_value(row, i)?) {
                    serde_json::Value::Null => {
                        Err(null_cursor(&self.split, std::slice::from_ref(c)))
                    }
                    v => Ok(v),
                }
            })
            .collect()
    }

    /// An error naming the cursor columns when a row has NULL in one of them.
    async fn check_nulls(&self, pool: &SqlitePool) -> Result<()> {
        let any: Vec<String> = self
            .config
            .cursor
            .iter()
            .map(|c| format!("{} IS NULL", quote(c)))
            .collect();
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {})",
            self.relation(),
            any.join(" OR ")
        );
        let found: bool = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .map_err(|e| sql_error(format!("reading {}", self.split), e))?;
        if found {
            return Err(null_cursor(&self.split, &self.config.cursor));
        }
        let (Some(_), Some(first)) = (self.config.lag, self.config.cursor.first()) else {
            return Ok(());
        };
        // a value that is no time never passes the lag's condition: looked for ahead
        // of the cursor only (one read before lag was set is no longer waited for)
        let mut sql = format!(
            "SELECT CAST({0} AS TEXT) FROM {1} WHERE unixepoch({0}, 'subsec') IS NULL",
            quote(first),
            self.relation(),
        );
        let mut after = Vec::new();
        if let Some(SqliteOffset::Cursor { values }) = &self.position {
            let cols: Vec<String> = self.config.cursor.iter().map(|c| quote(c)).collect();
            let marks = vec!["?"; values.len()].join(", ");
            sql.push_str(&format!(" AND ({}) > ({marks})", cols.join(", ")));
            after = values.clone();
        }
        sql.push_str(" LIMIT 1");
        let rows = fetch(pool, &sql, &after, &self.split).await?;
        let stuck: Option<String> = match rows.first() {
            Some(row) => Some(row.try_get(0).map_err(|e| sql_error("a cursor value", e))?),
            None => None,
        };
        match stuck {
            None => Ok(()),
            Some(value) => Err(Error::data(format!(
                "{}: cursor column \"{first}\" holds \"{value}\", which SQLite does not read as a time, \
                 so lag would hold the row back for ever",
                self.split
            ))
            .with_field("lag")),
        }
    }

    /// A read by cursor that filled its limit may end inside a run of rows with equal
    /// cursors, and the next read (after that value) would skip the rest of the run:
    /// the run is left to the next read, or, when the whole read is one run, read
    /// whole here.
    async fn whole_runs(
        &self,
        pool: &SqlitePool,
        mut rows: Vec<SqliteRow>,
    ) -> Result<Vec<SqliteRow>> {
        let mut cursors = rows
            .iter()
            .map(|r| self.cursor_of(r))
            .collect::<Result<Vec<_>>>()?;
        if rows.len() < self.batch_size {
            // caught up: a row no cursor position reaches (a NULL cursor) is an error,
            // looked for apart so that the reads keep the cursor's index
            self.check_nulls(pool).await?;
            return Ok(rows);
        }
        let last = cursors.pop().unwrap_or_default();
        let kept = cursors
            .iter()
            .rposition(|c| *c != last)
            .map_or(0, |i| i + 1);
        if kept > 0 {
            rows.truncate(kept);
            return Ok(rows);
        }
        let cols: Vec<String> = self.config.cursor.iter().map(|c| quote(c)).collect();
        let marks = vec!["?"; last.len()].join(", ");
        let sql = format!(
            "SELECT * FROM {} WHERE ({}) = ({marks})",
            self.relation(),
            cols.join(", ")
        );
        fetch(pool, &sql, &last, &self.split).await
    }
}

/// The error of a row of `split` with NULL in one of the cursor `columns`.
fn null_cursor(split: &str, columns: &[String]) -> Error {
    let names: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    Error::data(format!(
        "{split}: a row has NULL in the cursor column {}; no cursor position comes after NULL, so it would never be read. \
         Fill the column and make it NOT NULL, or read a query that gives it a value (coalesce)",
        names.join(" or ")
    ))
    .with_field("cursor")
}

/// The rows of `sql` with `params` bound.
async fn fetch(
    pool: &SqlitePool,
    sql: &str,
    params: &[serde_json::Value],
    split: &str,
) -> Result<Vec<SqliteRow>> {
    let mut q = sqlx::query(sql);
    for p in params {
        q = match p {
            serde_json::Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
            serde_json::Value::Number(n) => q.bind(n.as_f64()),
            serde_json::Value::String(s) => q.bind(s.clone()),
            serde_json::Value::Bool(b) => q.bind(*b),
            serde_json::Value::Null => q.bind(None::<i64>),
            other => q.bind(other.to_string()),
        };
    }
    q.fetch_all(pool)
        .await
        .map_err(|e| sql_error(format!("reading {split}"), e))
}

fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::json!(b),
        Value::Int(i) => serde_json::json!(i),
        Value::UInt(i) => serde_json::json!(i),
        Value::Float(f) => serde_json::json!(f),
        Value::Str(s) => serde_json::json!(s),
        Value::Bytes(b) => serde_json::json!(b),
    }
}

async fn schema_of(pool: &SqlitePool, config: &SqliteSourceConfig) -> Result<SchemaRef> {
    if !config.schema.is_empty() {
        return connector_api::schema_from_specs(&config.schema);
    }
    if let Some(table) = &config.table {
        return table_schema(pool, table).await?.ok_or_else(|| {
            Error::not_found(format!(
                "table \"{table}\" does not exist in \"{}\"",
                config.path
            ))
            .with_field("table")
        });
    }
    let query = config.query.clone().unwrap_or_default();
    let described = sqlx::Executor::describe(pool, &format!("SELECT * FROM ({query})"))
        .await
        .map_err(|e| sql_error("query", e).with_field("query"))?;
    let mut fields = Vec::new();
    for col in described.columns() {
        let name = col.name().to_string();
        let decl = col.type_info().name().to_string();
        let dt = match decl.as_str() {
            "NUMERIC" | "NULL" => None,
            other => arrow_type(other),
        }
        .ok_or_else(|| {
            Error::schema(format!(
                "query column \"{name}\" has type \"{decl}\", which does not say its Arrow type; declare it in `schema`"
            ))
            .with_field("schema")
        })?;
        fields.push(Field::new(name, dt, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// `sluice schema` / `sluice check`: the schema the source will produce.
pub async fn discover(config: &SqliteSourceConfig) -> Result<SchemaRef> {
    if !std::path::Path::new(&config.path).exists() {
        return Err(
            Error::not_found(format!("database \"{}\" does not exist", config.path))
                .with_field("path"),
        );
    }
    let pool = connect(&config.path, false).await?;
    let result = schema_of(&pool, config).await;
    pool.close().await;
    result
}

#[connector_api::async_trait]
impl Source for SqliteSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        self.position = committed.get_typed(&self.split)?;
        if let (Some(q), Some(SqliteOffset::Rows { rows })) = (&self.config.query, &self.position) {
            // a query without cursor resumes by position: only its own order makes the
            // first rows the same ones as before
            let words = q.split_whitespace().collect::<Vec<_>>().join(" ");
            if *rows > 0 && !words.to_ascii_lowercase().contains("order by") {
                return Err(Error::config(format!(
                    "the query has no ORDER BY, so the {rows} rows read before cannot be skipped exactly on resume; \
                     add ORDER BY on columns that only grow, or set cursor columns"
                ))
                .with_field("query"));
            }
        }
        if !std::path::Path::new(&self.config.path).exists() {
            return Err(Error::not_found(format!(
                "database \"{}\" does not exist",
                self.config.path
            ))
            .with_field("path"));
        }
        let pool = connect(&self.config.path, false).await?;
        let schema = schema_of(&pool, &self.config).await?;
        for c in &self.config.cursor {
            if schema.field_with_name(c).is_err() {
                return Err(Error::config(format!(
                    "cursor column \"{c}\" is not in the source's columns"
                ))
                .with_field("cursor"));
            }
        }
        if let (Some(_), Some(first)) = (self.config.lag, self.config.cursor.first()) {
            let dt = schema.field_with_name(first).map(|f| f.data_type().clone());
            if !matches!(dt, Ok(DataType::Timestamp(..) | DataType::Date32)) {
                return Err(Error::config(format!(
                    "lag compares the first cursor column with the clock, but \"{first}\" is not a time ({})",
                    dt.map_or_else(|_| "missing".to_string(), |t| t.to_string())
                ))
                .with_field("lag"));
            }
        }
        self.schema = Some(schema);
        self.pool = Some(pool);
        Ok(())
    }

    /// Rowid or cursor order.
    fn replays_in_order(&self) -> bool {
        true
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let started = std::time::Instant::now();
        loop {
            let pool = self
                .pool
                .as_ref()
                .ok_or_else(|| Error::internal("source is not open"))?;
            let schema = self
                .schema
                .clone()
                .ok_or_else(|| Error::internal("source is not open"))?;
            let (sql, params) = self.select();
            let mut rows = fetch(pool, &sql, &params, &self.split).await?;
            if !self.config.cursor.is_empty() {
                rows = match rows.is_empty() {
                    true => {
                        self.check_nulls(pool).await?;
                        rows
                    }
                    false => self.whole_runs(pool, rows).await?,
                };
            }
            if rows.is_empty() {
                match self.config.poll_interval {
                    None => return Ok(None),
                    Some(interval) => {
                        if started.elapsed() >= self.idle_timeout {
                            return Ok(Some(Batch::idle()));
                        }
                        tokio::time::sleep(interval.min(self.idle_timeout)).await;
                        continue;
                    }
                }
            }
            let table_order = self.config.cursor.is_empty() && self.config.table.is_some();
            let skip = usize::from(table_order);
            let names: Vec<String> = rows[0]
                .columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect();
            let mut index = Vec::with_capacity(schema.fields().len());
            for f in schema.fields() {
                let i = names
                    .iter()
                    .skip(skip)
                    .position(|n| n == f.name())
                    .ok_or_else(|| {
                        Error::schema(format!(
                            "column \"{}\" is missing from the rows of {}",
                            f.name(),
                            self.split
                        ))
                    })?;
                index.push(i + skip);
            }
            let mut builder = RowBuilder::new(schema.clone());
            let floats: Vec<bool> = schema
                .fields()
                .iter()
                .map(|f| f.data_type().is_floating())
                .collect();
            for row in &rows {
                let values = index
                    .iter()
                    .zip(&floats)
                    .map(|(&i, &float)| match read_value(row, i)? {
                        // the sqlite sink's `nan = "text"`
                        Value::Str(s) if float && s == "NaN" => Ok(Value::Float(f64::NAN)),
                        v => Ok(v),
                    })
                    .collect::<Result<Vec<_>>>()?;
                builder.push_row(values)?;
            }
            let records = builder.finish().map_err(|e| e.context(&self.split))?;
            let last = &rows[rows.len() - 1];
            let next = if table_order {
                SqliteOffset::Rowid {
                    rowid: last
                        .try_get::<i64, _>(0)
                        .map_err(|e| sql_error("rowid", e))?,
                }
            } else if !self.config.cursor.is_empty() {
                let mut values = Vec::new();
                for c in &self.config.cursor {
                    let i = names
                        .iter()
                        .position(|n| n == c)
                        .ok_or_else(|| Error::internal("cursor column"))?;
                    values.push(json_of(&read_value(last, i)?));
                }
                SqliteOffset::Cursor { values }
            } else {
                let before = match &self.position {
                    Some(SqliteOffset::Rows { rows }) => *rows,
                    _ => 0,
                };
                SqliteOffset::Rows {
                    rows: before + rows.len() as u64,
                }
            };
            let mut offsets = Offsets::new();
            offsets.set_typed(self.split.clone(), &next)?;
            self.position = Some(next);
            return Ok(Some(Batch::new(records, offsets)));
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        Ok(())
    }
}
