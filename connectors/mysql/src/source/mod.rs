//! The MySQL/MariaDB source: tables in primary-key order (a query in `key` order)
//! inside one consistent snapshot per run, or one table or query by cursor columns.
//!
//! Rows are read in chunks of the batch size through prepared statements (the binary
//! protocol: integers, dates and times arrive as numbers, not text), each chunk after
//! the last delivered position, so a restart resumes exactly after it.

mod binlog;
mod capture;
mod cdc;
mod debezium;
mod gtid;
mod incremental;
mod order;
mod position;

use std::time::{Duration, Instant};

use std::sync::Arc;

use arrow_array::{ArrayRef, StringArray};
use arrow_schema::SchemaRef;
use connector_api::{Batch, Error, Offsets, Result, Source, SourceContext};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Row, Value};
use serde::{Deserialize, Serialize};

use crate::config::{MysqlSourceConfig, SourceMode};
use crate::conn::{
    connect, database_of, primary_key, quote, quote_table, split_table, table_exists,
};
use crate::decode::Decoder;
use crate::error::my_error;
use crate::types::describe;
pub use order::Key;
pub use position::BinlogOffset;

/// Position of one split (a table, or the query). Exclusive: reading resumes strictly
/// after the row it names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum MysqlOffset {
    /// Key order (`snapshot`): the key of the last delivered row.
    Key {
        /// Its values, in key order.
        after: Vec<Key>,
    },
    /// The split was read to its end (`snapshot`).
    Done,
    /// Cursor order (`incremental`): the cursor of the last delivered row.
    Cursor {
        /// Its values, in cursor order.
        after: Vec<Key>,
    },
}

/// One table or the query, read in its order.
struct Split {
    /// The offset's key: `table:NAME` or `query`.
    name: String,
    /// What `FROM` reads.
    relation: String,
    /// The columns rows are read in the order of (key or cursor).
    order: Vec<String>,
    /// Their placeholders in the conditions that read after a position.
    marks: Vec<String>,
    position: Option<MysqlOffset>,
    decoder: Option<Decoder>,
}

/// Reads tables or a query.
pub struct MysqlSource {
    config: MysqlSourceConfig,
    conn: Option<Conn>,
    splits: Vec<Split>,
    batch_size: usize,
    idle_timeout: Duration,
    /// `cdc`: where the binlog is read from once the snapshot is done.
    binlog_from: Option<BinlogOffset>,
    /// `cdc`: the binlog reader, after the snapshot.
    changes: Option<cdc::Changes>,
    /// The server is MariaDB.
    mariadb: bool,
    /// `cdc`: the replica server id.
    server_id: u32,
    /// `cdc`: the table (database, name) and its columns, until the stream starts.
    captured: Option<Vec<binlog::TableColumn>>,
    /// `cdc`: the table's database and name.
    cdc_table: (String, String),
    /// The pipeline's name.
    pipeline: String,
    /// `incremental`: when rows with a NULL cursor were last looked for.
    nulls_checked: Option<Instant>,
    /// `cdc`: the server and binlog name of the first binlog offset placed
    /// ([`Source::covered_below`]): offsets of others do not compare with it, so the
    /// plan that asks about both goes by the count.
    space: std::cell::RefCell<Option<(u32, String)>>,
    /// `cdc`: the stored binlog position was purged and the table is read again:
    /// the changes after it carry no places.
    resnapshot: bool,
}

impl MysqlSource {
    /// A source for `config` (validated).
    pub fn new(config: MysqlSourceConfig) -> Self {
        MysqlSource {
            config,
            conn: None,
            splits: Vec::new(),
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            binlog_from: None,
            changes: None,
            mariadb: false,
            server_id: 0,
            captured: None,
            cdc_table: (String::new(), String::new()),
            pipeline: String::new(),
            nulls_checked: None,
            space: std::cell::RefCell::new(None),
            resnapshot: false,
        }
    }

    fn conn(&mut self) -> Result<&mut Conn> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::internal("source is not open"))
    }

    /// The splits of the configuration, with their order columns and positions.
    async fn plan(&mut self, committed: &Offsets) -> Result<Vec<Split>> {
        let incremental = self.config.mode == SourceMode::Incremental;
        let mut splits = Vec::new();
        if let Some(query) = self.config.query_text() {
            let order = match incremental {
                true => self.config.cursor.clone(),
                false => self.config.key.clone(),
            };
            splits.push(Split {
                name: "query".into(),
                relation: format!("({query}) AS q"),
                order,
                marks: Vec::new(),
                position: None,
                decoder: None,
            });
        }
        let (tables, cursor) = (self.config.tables.clone(), self.config.cursor.clone());
        let conn = self.conn()?;
        for table in tables {
            let db = database_of(conn, &table).await?;
            let bare = split_table(&table).1;
            if !table_exists(conn, &db, bare).await? {
                return Err(
                    Error::not_found(format!("table {db}.{bare} does not exist"))
                        .with_field("tables"),
                );
            }
            let order = match incremental {
                true => cursor.clone(),
                false => primary_key(conn, &db, bare).await?,
            };
            if order.is_empty() {
                return Err(Error::config(format!(
                    "table {db}.{bare} has no primary key, so a restart could not resume inside it; \
                     read it with a query and key columns that order its rows uniquely"
                ))
                .with_field("tables"));
            }
            splits.push(Split {
                name: format!("table:{table}"),
                relation: quote_table(&table),
                order,
                marks: Vec::new(),
                position: None,
                decoder: None,
            });
        }
        for split in &mut splits {
            split.marks = marks(self.conn.as_mut(), split).await?;
            split.position = committed.get_typed(&split.name)?;
            let fits = matches!(
                (&split.position, incremental),
                (None, _)
                    | (Some(MysqlOffset::Cursor { .. }), true)
                    | (Some(MysqlOffset::Key { .. } | MysqlOffset::Done), false)
            );
            if !fits {
                return Err(Error::config(format!(
                    "{}: the stored offset was written in another mode than {:?}; reset the pipeline's offsets to read it this way",
                    split.name, self.config.mode
                ))
                .with_field("mode"));
            }
        }
        Ok(splits)
    }

    /// Reads the next chunk of split `at` after its position.
    async fn chunk(&mut self, at: usize) -> Result<Chunk> {
        let limit = self.batch_size;
        let lag = self.lag_condition(at);
        let split = &self.splits[at];
        let mut conds = Vec::new();
        let mut params = Vec::new();
        if let Some(MysqlOffset::Key { after } | MysqlOffset::Cursor { after }) = &split.position {
            let (cond, p) = order::after(&split.order, &split.marks, after);
            conds.push(cond);
            params = p;
        }
        conds.extend(lag);
        let filter = match conds.is_empty() {
            true => String::new(),
            false => format!(" WHERE {}", conds.join(" AND ")),
        };
        let sql = format!(
            "SELECT * FROM {}{filter} ORDER BY {} LIMIT {limit}",
            split.relation,
            order::order_by(&split.order)
        );
        let name = split.name.clone();
        let conn = self.conn()?;
        let stmt = conn
            .prep(&sql)
            .await
            .map_err(|e| my_error(format!("{name}: prepare {sql}"), e))?;
        let rows: Vec<Row> = conn
            .exec(&stmt, Params::Positional(params))
            .await
            .map_err(|e| my_error(format!("{name}: read"), e))?;
        Ok(Chunk {
            full: rows.len() >= limit,
            rows,
            columns: stmt.columns(),
        })
    }

    /// With `lag`: the condition that the first cursor column is old enough.
    fn lag_condition(&self, at: usize) -> Option<String> {
        let lag = self.config.lag?;
        let first = self.splits[at].order.first()?;
        Some(format!(
            "{} <= NOW(6) - INTERVAL {} MICROSECOND",
            quote(first),
            lag.as_micros()
        ))
    }

    /// The decoder of split `at`, made from the first statement's columns.
    fn decoder(&mut self, at: usize, columns: &[mysql_async::Column]) -> Result<&mut Decoder> {
        if self.splits[at].decoder.is_none() {
            let described = describe(columns)?;
            for c in &self.splits[at].order {
                if !described.iter().any(|(n, ..)| n == c) {
                    return Err(Error::config(format!(
                        "{}: column \"{c}\" is not among the columns read",
                        self.splits[at].name
                    ))
                    .with_field(match self.config.mode {
                        SourceMode::Incremental => "cursor",
                        SourceMode::Snapshot | SourceMode::Cdc => "key",
                    }));
                }
            }
            self.splits[at].decoder = Some(Decoder::new(&described, self.config.zero_dates));
        }
        self.splits[at]
            .decoder
            .as_mut()
            .ok_or_else(|| Error::internal("decoder"))
    }

    /// Decodes `rows` (read with `columns`) into a batch of split `at`, which then
    /// stands at `next`.
    fn batch(
        &mut self,
        at: usize,
        columns: &[mysql_async::Column],
        rows: Vec<Row>,
        next: MysqlOffset,
    ) -> Result<Batch> {
        let name = self.splits[at].name.clone();
        let from = self.splits[at].position.clone();
        let decoder = self.decoder(at, columns)?;
        for (i, row) in rows.into_iter().enumerate() {
            let at = || format!("{name}: row {} after {}", i + 1, position_text(&from));
            decoder.push(row.unwrap(), &at)?;
        }
        let mut records = decoder.finish()?;
        let mut offsets = Offsets::new();
        offsets.set_typed(name, &next)?;
        if let Some(from) = &self.binlog_from {
            // snapshot reads of `cdc`: the stream starts where the snapshot was taken
            records = match self.place() {
                Some(place) => debezium::snapshot(records, &from.file, from.pos, &place)?,
                None => {
                    let reads: ArrayRef =
                        Arc::new(StringArray::from(vec!["r"; records.num_rows()]));
                    position::with_op(records, reads)?
                }
            };
            offsets.set_typed(position::SPLIT, from)?;
        }
        self.splits[at].position = Some(next);
        Ok(Batch::new(records, offsets))
    }

    /// The values of the order columns in `row`; an error naming them when one is NULL.
    fn order_of(&self, at: usize, row: &Row) -> Result<Vec<Key>> {
        let split = &self.splits[at];
        split
            .order
            .iter()
            .map(|c| {
                let i = row
                    .columns_ref()
                    .iter()
                    .position(|col| col.name_str() == c.as_str())
                    .ok_or_else(|| {
                        Error::config(format!("{}: column \"{c}\" is not read", split.name))
                    })?;
                let value = row.as_ref(i).unwrap_or(&Value::NULL);
                Key::of(value).ok_or_else(|| null_order(&split.name, c))
            })
            .collect()
    }

    async fn next_snapshot(&mut self) -> Result<Option<Batch>> {
        let Some(at) = self
            .splits
            .iter()
            .position(|s| s.position != Some(MysqlOffset::Done))
        else {
            return Ok(None);
        };
        let Chunk {
            rows,
            columns,
            full,
        } = self.chunk(at).await?;
        let next = match (full, rows.last()) {
            (true, Some(last)) => MysqlOffset::Key {
                after: self.order_of(at, last)?,
            },
            _ => MysqlOffset::Done,
        };
        self.batch(at, &columns, rows, next).map(Some)
    }
}

/// The placeholders of `split`'s order columns, from the metadata of its rows.
async fn marks(conn: Option<&mut Conn>, split: &Split) -> Result<Vec<String>> {
    let conn = conn.ok_or_else(|| Error::internal("source is not open"))?;
    let stmt = conn
        .prep(format!("SELECT * FROM {} LIMIT 0", split.relation))
        .await
        .map_err(|e| my_error(format!("{}: read its columns", split.name), e))?;
    let columns = stmt.columns();
    split
        .order
        .iter()
        .map(|c| {
            let column = columns
                .iter()
                .find(|col| col.name_str() == c.as_str())
                .ok_or_else(|| {
                    Error::config(format!(
                        "{}: column \"{c}\" is not among the columns read",
                        split.name
                    ))
                })?;
            order::mark(column).map_err(|e| e.context(&split.name))
        })
        .collect()
}

/// A chunk as read.
struct Chunk {
    rows: Vec<Row>,
    columns: std::sync::Arc<[mysql_async::Column]>,
    /// The read filled its limit: more rows may follow.
    full: bool,
}

fn position_text(position: &Option<MysqlOffset>) -> String {
    match position {
        None => "the start".into(),
        Some(p) => serde_json::to_string(p).unwrap_or_default(),
    }
}

/// The error of a row of `split` with NULL in an order column.
fn null_order(split: &str, column: &str) -> Error {
    Error::data(format!(
        "{split}: a row has NULL in \"{column}\", which orders the reads; no position comes after NULL, \
         so the row would never be read. Fill the column and make it NOT NULL, or read a query that gives it a value (COALESCE)"
    ))
}

/// `sluice schema` / `sluice check`: the schema the source will produce (of the first
/// table, or the query).
pub async fn discover(config: &MysqlSourceConfig) -> Result<SchemaRef> {
    let mut conn = connect(&config.url).await?;
    let relation = match (config.query_text(), config.tables.first()) {
        (Some(q), _) => format!("({q}) AS q"),
        (None, Some(t)) => {
            let db = database_of(&mut conn, t).await?;
            let bare = split_table(t).1;
            if !table_exists(&mut conn, &db, bare).await? {
                return Err(
                    Error::not_found(format!("table {db}.{bare} does not exist"))
                        .with_field("tables"),
                );
            }
            quote_table(t)
        }
        (None, None) => return Err(Error::config("no table or query").with_field("tables")),
    };
    let stmt = conn
        .prep(format!("SELECT * FROM {relation}"))
        .await
        .map_err(|e| my_error("describe the source", e).with_field("query"))?;
    let described = describe(&stmt.columns())?;
    let _ = conn.disconnect().await;
    Ok(Decoder::new(&described, config.zero_dates).schema().clone())
}

#[connector_api::async_trait]
impl Source for MysqlSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        self.pipeline = ctx.pipeline.clone();
        self.conn = Some(connect(&self.config.url).await?);
        let version: Option<String> = self
            .conn()?
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| my_error("read the server version", e))?;
        self.mariadb = version.unwrap_or_default().contains("MariaDB");
        self.splits = self.plan(committed).await?;
        if self.config.mode != SourceMode::Incremental {
            self.conn()?
                .query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await
                .map_err(|e| my_error("set the isolation level", e))?;
        }
        if self.config.mode == SourceMode::Cdc {
            self.server_id = self.config.server_id(&ctx.pipeline);
            return self.open_cdc(committed).await;
        }
        if self.config.mode == SourceMode::Snapshot {
            // every chunk of this run reads one snapshot (a restart takes a new one
            // and resumes after the last delivered key)
            let conn = self.conn()?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(|e| my_error("start the snapshot", e))?;
        }
        Ok(())
    }

    /// Key order, cursor order and the binlog.
    fn replays_in_order(&self) -> bool {
        true
    }

    /// `cdc`: a change's place is its transaction's start in the binlog and its row
    /// in it ([`position::place`]), the same in every read of one server's binlog;
    /// other tables' transactions move the offset without a change of the table,
    /// which a count cannot confirm on a read again but a place can. A finished
    /// snapshot covers no change of the stream; one in progress, an offset that is not
    /// one cut of the binlog, and offsets of two servers or binlog names are left to
    /// the count.
    fn covered_below(&self, split: &str, offset: &serde_json::Value) -> Option<u128> {
        if self.config.mode != SourceMode::Cdc {
            return None;
        }
        if split != position::SPLIT {
            return match MysqlOffset::deserialize(offset).ok()? {
                MysqlOffset::Done => Some(0),
                _ => None,
            };
        }
        let at = BinlogOffset::deserialize(offset).ok()?;
        let (server, name) = at.space()?;
        let mut first = self.space.borrow_mut();
        let (s, n) = first.get_or_insert_with(|| (server, name.to_string()));
        if (*s, n.as_str()) != (server, name) {
            return None;
        }
        at.covered_below()
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        match self.config.mode {
            SourceMode::Snapshot => self.next_snapshot().await,
            SourceMode::Incremental => self.next_incremental().await,
            SourceMode::Cdc => self.next_change().await.map(Some),
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(mut changes) = self.changes.take() {
            changes.close().await;
        }
        if let Some(conn) = self.conn.take() {
            if let Err(e) = conn.disconnect().await {
                tracing::debug!(error = %e, "closing the MySQL connection failed");
            }
        }
        Ok(())
    }
}
