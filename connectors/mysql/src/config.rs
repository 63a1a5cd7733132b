//! Options of the MySQL/MariaDB source and sink.

use std::time::Duration;

use connector_api::{Error, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;

/// How the source reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// Whole tables in primary-key order (a query in the order of `key`), in chunks
    /// read inside one consistent snapshot per run; resumable mid-table; ends when read.
    #[default]
    Snapshot,
    /// New rows of one table or query by cursor columns, polled at `poll_interval`;
    /// runs until stopped.
    Incremental,
    /// A snapshot of one table, then every insert, update and delete from the
    /// row-based binlog from the snapshot's position; records carry `_op` (`r`
    /// snapshot read, `c`, `u`, `d`). Needs `log_bin`, `binlog_format = ROW`,
    /// `binlog_row_image = FULL` and the REPLICATION SLAVE and REPLICATION CLIENT
    /// (MariaDB: BINLOG MONITOR) privileges.
    Cdc,
}

/// What the source does with a zero date (`0000-00-00`, or a date with a zero month
/// or day), which no calendar holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ZeroDates {
    /// Stop with an error naming the column and the row's position.
    #[default]
    Error,
    /// Read it as NULL (what most MySQL clients do).
    Null,
}

/// The shape of `cdc` records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// The row's columns plus `_op` (`r`, `c`, `u`, `d`): what the sinks' upserts apply.
    #[default]
    Row,
    /// Debezium's envelope: `before`, `after`, `source` (Debezium's MySQL block:
    /// `server_id`, `gtid`, `file`, `pos`, `row`, `thread`, `ts_ms`, `db`, `table`),
    /// `op`, `ts_ms`, so existing Debezium consumers can read the records.
    Debezium,
}

/// Options of the `mysql` source (MySQL 5.7+/8, MariaDB 10.3+).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// Connection URL, e.g. `mysql://user:${env:MYSQL_PASSWORD}@127.0.0.1:3306/shop`;
    /// the path names the default database.
    pub url: Secret,
    /// Tables to read, in this order, as `table` (in the URL's database) or
    /// `database.table`; each is a split. `incremental` reads one.
    #[serde(default)]
    pub tables: Vec<String>,
    /// A query to read instead of tables, e.g. a join; read in the order of `key`
    /// (snapshot) or `cursor` (incremental), resumably.
    pub query: Option<String>,
    /// Columns of `query` that order its rows uniquely in `snapshot` mode (a restart
    /// resumes after the last delivered values), e.g. `["id"]`.
    #[serde(default)]
    pub key: Vec<String>,
    /// `snapshot`, `incremental` or `cdc`.
    #[serde(default)]
    pub mode: SourceMode,
    /// Cursor columns for `incremental`, compared as a tuple. Put a unique column
    /// last (`["updated_at", "id"]`): rows that share a cursor value are never split
    /// between two reads, so none is skipped.
    #[serde(default)]
    pub cursor: Vec<String>,
    /// `incremental`: read only rows whose first cursor column, a time, is at least
    /// this old by the server's clock (`"30s"`), so a row written with an earlier time
    /// by a transaction that commits late is still ahead of the cursor when it
    /// commits. Set it above the longest write transaction.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub lag: Option<Duration>,
    /// How often `incremental` polls for new rows.
    #[serde(default = "poll", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Zero dates (`0000-00-00`): `error` (the default) or `null`.
    #[serde(default)]
    pub zero_dates: ZeroDates,
    /// Shape of `cdc` records: `row` or `debezium`.
    #[serde(default)]
    pub envelope: Envelope,
    /// `cdc`: the server id the binlog is read as (a replica's id; unique among the
    /// server's replicas). Default: one derived from the pipeline's name.
    pub server_id: Option<u32>,
    /// `cdc`: when the binlog file of the stored position was purged from the server,
    /// read the table again from a new snapshot (true) instead of stopping (false, the
    /// default: the changes in between are lost, which someone should decide).
    #[serde(default)]
    pub snapshot_on_purge: bool,
}

fn poll() -> Duration {
    Duration::from_secs(1)
}

/// The `url` must be a MySQL URL (`mariadb://` is taken as a name for the same).
fn check_url(url: &Secret) -> Result<()> {
    let text = url.expose();
    if !(text.starts_with("mysql://") || text.starts_with("mariadb://")) {
        return Err(Error::config("url must start with mysql:// or mariadb://").with_field("url"));
    }
    Ok(())
}

impl MysqlSourceConfig {
    /// The server id `cdc` reads the binlog as: `server_id`, or one derived from the
    /// pipeline's name (in 0x50000000..0x60000000, away from usual small ids).
    pub fn server_id(&self, pipeline: &str) -> u32 {
        self.server_id.unwrap_or(
            0x5000_0000 | (connector_api::stable_hash(pipeline.as_bytes()) as u32 & 0x0fff_ffff),
        )
    }

    /// `query` as the source runs it: trimmed, without a trailing `;`.
    pub fn query_text(&self) -> Option<&str> {
        self.query
            .as_deref()
            .map(|q| q.trim().trim_end_matches(';').trim())
    }

    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        let incremental = self.mode == SourceMode::Incremental;
        match (self.query_text(), self.tables.len()) {
            (None, 0) => {
                return Err(
                    Error::config("tables must name at least one table (or give a query)")
                        .with_field("tables"),
                )
            }
            (Some(_), n) if n > 0 => {
                return Err(Error::config("give tables or a query, not both").with_field("query"))
            }
            (Some(""), _) => {
                return Err(Error::config("query must not be empty").with_field("query"))
            }
            (Some(_), _) if !incremental && self.key.is_empty() => {
                return Err(Error::config(
                    "a query is read in the order of its key columns, e.g. key = [\"id\"]",
                )
                .with_field("key"))
            }
            (None, _) if !self.key.is_empty() => {
                return Err(Error::config(
                    "key is for a query; tables are read in primary-key order",
                )
                .with_field("key"))
            }
            (None, n) if incremental && n > 1 => return Err(Error::config(
                "mode = \"incremental\" reads one table (or a query); run one pipeline per table",
            )
            .with_field("tables")),
            _ => {}
        }
        if self.mode == SourceMode::Cdc && (self.query.is_some() || self.tables.len() != 1) {
            return Err(Error::config(
                "mode = \"cdc\" reads one table (tables = [\"orders\"]); run one pipeline per table",
            )
            .with_field("tables"));
        }
        if self.envelope == Envelope::Debezium && self.mode != SourceMode::Cdc {
            return Err(
                Error::config("envelope = \"debezium\" is for mode = \"cdc\"")
                    .with_field("envelope"),
            );
        }
        if incremental && self.cursor.is_empty() {
            return Err(Error::config(
                "mode = \"incremental\" needs cursor columns, e.g. cursor = [\"updated_at\", \"id\"]",
            )
            .with_field("cursor"));
        }
        if !incremental && !self.cursor.is_empty() {
            return Err(Error::config("cursor is for mode = \"incremental\"").with_field("cursor"));
        }
        if self.lag.is_some() && !incremental {
            return Err(Error::config("lag is for mode = \"incremental\"").with_field("lag"));
        }
        if self.poll_interval.is_zero() {
            return Err(
                Error::config("poll_interval must be above zero").with_field("poll_interval")
            );
        }
        Ok(())
    }
}

/// How rows are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    /// Plain inserts; a row whose key is already there is an error.
    #[default]
    Insert,
    /// Insert, or update the row with the same `key` (`INSERT ... ON DUPLICATE KEY
    /// UPDATE`); the last record of a key in a batch wins. Change records are applied
    /// in order: deletes delete.
    Upsert,
}

/// Options of the `mysql` sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MysqlSinkConfig {
    /// Connection URL, e.g. `mysql://user:${env:MYSQL_PASSWORD}@127.0.0.1:3306/shop`;
    /// the path names the default database.
    pub url: Secret,
    /// Table to write, as `table` (in the URL's database) or `database.table`;
    /// created from the batch schema when missing.
    pub table: String,
    /// `insert` or `upsert`.
    #[serde(default)]
    pub mode: SinkMode,
    /// Key columns for `upsert` (the primary key of a created table).
    #[serde(default)]
    pub key: Vec<String>,
    /// How long `open` waits for another run of the same pipeline and sink to let go
    /// of its offsets (a named lock, `GET_LOCK`, held from before the offsets are read
    /// until the run stops; a killed run's ends with its session). Past this wait the
    /// run stops with an error; `"0s"` stops at once.
    #[serde(default = "lock_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock_timeout: Duration,
}

fn lock_timeout() -> Duration {
    Duration::from_secs(30)
}

impl MysqlSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        if self.table.is_empty() {
            return Err(Error::config("table must not be empty").with_field("table"));
        }
        if self.mode == SinkMode::Upsert && self.key.is_empty() {
            return Err(
                Error::config("mode = \"upsert\" needs key columns, e.g. key = [\"id\"]")
                    .with_field("key"),
            );
        }
        Ok(())
    }

    /// Change records (with `_op`) are applied only by `upsert`: `insert` would add
    /// deletes and updates as rows.
    pub fn accepts_changes(&self) -> Result<()> {
        if self.mode == SinkMode::Insert {
            return Err(connector_api::columns::changes_need_upsert(&self.table));
        }
        Ok(())
    }
}
