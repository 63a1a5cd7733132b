//! Options of the PostgreSQL sink.

use connector_api::{Error, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;

/// How rows are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    /// COPY into the table.
    #[default]
    Insert,
    /// COPY into a temporary table, then `INSERT ... ON CONFLICT (key) DO UPDATE`; the
    /// last record of a key in a batch wins.
    Upsert,
}

/// Options of the `postgres` sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection URL, e.g. `postgres://user:${env:PGPASSWORD}@127.0.0.1:5432/db`.
    pub url: Secret,
    /// Schema of the table.
    #[serde(default = "public")]
    pub schema: String,
    /// Table to write; created from the batch schema when missing.
    pub table: String,
    /// `insert` or `upsert`.
    #[serde(default)]
    pub mode: SinkMode,
    /// Key columns for `upsert` (the primary key of a created table).
    #[serde(default)]
    pub key: Vec<String>,
    /// How long `open` waits for another run of the same pipeline and sink to let go
    /// of the table's offsets. A run holds them (a session advisory lock) from before
    /// it reads them until it stops; a killed run's hold ends with its connection, once
    /// the server has finished the commit it was in. Past this wait the run stops with
    /// an error naming the holder; `"0s"` stops at once.
    #[serde(default = "lock_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock_timeout: std::time::Duration,
}

fn lock_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn public() -> String {
    "public".into()
}

impl PostgresSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        if !self.url.expose().starts_with("postgres://")
            && !self.url.expose().starts_with("postgresql://")
        {
            return Err(
                Error::config("url must start with postgres:// or postgresql://").with_field("url"),
            );
        }
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

/// How the source reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// Whole tables in primary-key order (or physical order, `snapshot_order`),
    /// resumable mid-table; ends when read.
    #[default]
    Snapshot,
    /// New rows by cursor columns, polled at `poll_interval`; runs until stopped.
    Incremental,
    /// A snapshot, then every insert, update and delete from the write-ahead log
    /// (logical decoding with `pgoutput`); records carry `_op` (`r` snapshot read, `c`,
    /// `u`, `d`). Needs `wal_level = logical` and one table.
    Cdc,
}

/// The order in which a `snapshot` (also the snapshot that starts `cdc`) reads a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotOrder {
    /// Primary-key order, in chunks through the key's index. A restart resumes after
    /// the last delivered key. A row updated while the snapshot runs is read once.
    #[default]
    Key,
    /// The table's physical order (`ctid`), in block ranges read by a TID range scan:
    /// the work `COPY table TO` does, with no index. Tables without a primary key can
    /// be read. A restart resumes after the last delivered `ctid`: a row updated
    /// between the runs may have moved to a block read before (it is missed) or to one
    /// not read yet (it comes twice), so a table written to while it is read takes
    /// `key` order, or `cdc`, whose changes carry every update. A table rewritten
    /// between a crash and the restart (`VACUUM FULL`, `CLUSTER`) is read again from
    /// the start.
    Physical,
}

/// The shape of `cdc` records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// The row's columns plus `_op` (`r`, `c`, `u`, `d`): what the postgres sink applies.
    #[default]
    Row,
    /// Debezium's envelope: `before`, `after`, `source`, `op`, `ts_ms`, so existing
    /// Debezium consumers can read the records.
    Debezium,
}

/// Options of the `postgres` source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Connection URL, e.g. `postgres://user:${env:PGPASSWORD}@127.0.0.1:5432/db`.
    pub url: Secret,
    /// Schema of the tables.
    #[serde(default = "public")]
    pub schema: String,
    /// Tables to read, in this order; each is a split.
    #[serde(default)]
    pub tables: Vec<String>,
    /// A query to read instead of tables (`snapshot` or `incremental`), e.g. a join:
    /// `SELECT o.id, o.total, c.country FROM orders o JOIN customers c USING (customer_id)`.
    /// Read in the order of `key` (snapshot) or `cursor` (incremental), resumably.
    pub query: Option<String>,
    /// Columns of `query` that order its rows uniquely in `snapshot` mode (a restart
    /// resumes after the last delivered values), e.g. `["id"]`.
    #[serde(default)]
    pub key: Vec<String>,
    /// `snapshot`, `incremental` or `cdc`.
    #[serde(default)]
    pub mode: SourceMode,
    /// How tables are read by `snapshot` and by the snapshot that starts `cdc`: `key`
    /// (primary-key order) or `physical` (`ctid` order, faster, no key needed).
    #[serde(default)]
    pub snapshot_order: SnapshotOrder,
    /// `snapshot_order = "physical"`: how many COPY streams read at once. When its
    /// snapshot starts, a table is cut into up to this many block ranges of at least
    /// 1 MiB, and the ranges of all tables are read this many at a time, each on a
    /// connection of its own, all in one snapshot (in `cdc` the slot's, in `snapshot`
    /// one exported for the run, as `pg_dump -j` does). The ranges are kept in the
    /// offset: a restart resumes each after its last delivered row, whatever this says
    /// then.
    #[serde(default = "one")]
    pub snapshot_readers: usize,
    /// `snapshot` shared by several runtimes (`[checkpoint] store = "postgres"`): a
    /// table with a single integer primary key is cut into key ranges this wide
    /// (bounds at multiples of it), each a split another runtime may read, so one
    /// large table is read in parallel. None: each table is one split. One runtime
    /// alone reads each table whole, whatever this says.
    pub split_key_width: Option<i64>,
    /// Cursor columns for `incremental`, compared as a tuple (put a unique column last,
    /// e.g. `["updated_at", "id"]`, so rows sharing a timestamp are never skipped).
    #[serde(default)]
    pub cursor: Vec<String>,
    /// Replication slot of `cdc` (default `sluice_<pipeline>`); created on the first run.
    /// Lowercase letters, digits and underscores, as PostgreSQL requires.
    pub slot: Option<String>,
    /// Publication of `cdc` (default `sluice_<pipeline>`); created when missing. The
    /// default one gains the table on a first run; one named here is never changed.
    pub publication: Option<String>,
    /// Shape of `cdc` records: `row` or `debezium`.
    #[serde(default)]
    pub envelope: Envelope,
    /// How often `incremental` polls for new rows (`cdc` streams; it ignores this).
    #[serde(default = "poll", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: std::time::Duration,
    /// `cdc`: how often the position the server may release WAL up to is reported
    /// (at most every 10 s). While the table has no changes and everything read was
    /// flushed, the server's keepalive position is confirmed too, so WAL written for
    /// other tables and databases is released instead of piling up behind the slot.
    #[serde(default = "heartbeat", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub heartbeat_interval: std::time::Duration,
}

fn heartbeat() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn one() -> usize {
    1
}

fn poll() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

impl PostgresSourceConfig {
    /// `query` as the source runs it: trimmed, without a trailing `;`.
    pub fn query_text(&self) -> Option<&str> {
        self.query
            .as_deref()
            .map(|q| q.trim().trim_end_matches(';').trim())
    }

    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        if !self.url.expose().starts_with("postgres://")
            && !self.url.expose().starts_with("postgresql://")
        {
            return Err(
                Error::config("url must start with postgres:// or postgresql://").with_field("url"),
            );
        }
        match (&self.query, self.tables.is_empty()) {
            (None, true) => {
                return Err(
                    Error::config("tables must name at least one table (or give a query)")
                        .with_field("tables"),
                )
            }
            (Some(_), false) => {
                return Err(Error::config("give tables or a query, not both").with_field("query"))
            }
            (Some(_), true) if self.query_text().is_some_and(str::is_empty) => {
                return Err(Error::config("query must not be empty").with_field("query"))
            }
            (Some(_), true) if self.mode == SourceMode::Cdc => {
                return Err(
                    Error::config("mode = \"cdc\" reads a table, not a query").with_field("query")
                )
            }
            (Some(_), true) if self.mode == SourceMode::Snapshot && self.key.is_empty() => {
                return Err(Error::config(
                    "a query is read in the order of its key columns, e.g. key = [\"id\"]",
                )
                .with_field("key"))
            }
            (None, false) if !self.key.is_empty() => {
                return Err(Error::config(
                    "key is for a query; tables are read in primary-key order",
                )
                .with_field("key"))
            }
            _ => {}
        }
        if let Some(width) = self.split_key_width {
            if width < 1 {
                return Err(Error::config("split_key_width must be at least 1")
                    .with_field("split_key_width"));
            }
            if self.mode != SourceMode::Snapshot
                || self.query.is_some()
                || self.snapshot_order == SnapshotOrder::Physical
            {
                return Err(Error::config(
                    "split_key_width cuts tables read by mode = \"snapshot\" in key order",
                )
                .with_field("split_key_width"));
            }
        }
        if self.snapshot_order == SnapshotOrder::Physical {
            if self.query.is_some() {
                return Err(Error::config(
                    "snapshot_order = \"physical\" reads tables; a query is read in key order",
                )
                .with_field("snapshot_order"));
            }
            if self.mode == SourceMode::Incremental {
                return Err(Error::config(
                    "snapshot_order is for mode = \"snapshot\" or \"cdc\"; incremental reads by cursor",
                )
                .with_field("snapshot_order"));
            }
        }
        if !(1..=64).contains(&self.snapshot_readers) {
            return Err(Error::config("must be 1 to 64").with_field("snapshot_readers"));
        }
        if self.snapshot_readers > 1 && self.snapshot_order != SnapshotOrder::Physical {
            return Err(Error::config(
                "snapshot_readers reads block ranges at once; it needs snapshot_order = \"physical\"",
            )
            .with_field("snapshot_readers"));
        }
        if self.mode == SourceMode::Cdc && self.tables.len() != 1 {
            return Err(
                Error::config("mode = \"cdc\" reads one table per pipeline").with_field("tables")
            );
        }
        if self.heartbeat_interval < std::time::Duration::from_secs(1) {
            return Err(Error::config("must be at least 1s").with_field("heartbeat_interval"));
        }
        if let Some(slot) = &self.slot {
            let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
            if slot.is_empty() || slot.len() > 63 || !slot.chars().all(valid) {
                return Err(Error::config(format!(
                    "slot \"{slot}\": a replication slot name has 1 to 63 lowercase letters, digits and underscores"
                ))
                .with_field("slot"));
            }
        }
        if self.mode == SourceMode::Incremental && self.cursor.is_empty() {
            return Err(Error::config("mode = \"incremental\" needs cursor columns, e.g. cursor = [\"updated_at\", \"id\"]").with_field("cursor"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(extra: serde_json::Value) -> PostgresSourceConfig {
        let mut config = serde_json::json!({ "url": "postgres://u@h/db" });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(config).unwrap()
    }

    fn field_of(config: PostgresSourceConfig) -> Option<String> {
        config
            .validate()
            .err()
            .and_then(|e| e.field().map(str::to_string))
    }

    #[test]
    fn a_slot_name_is_what_postgres_accepts() {
        let cdc = |slot: &str| {
            source(serde_json::json!({ "tables": ["t"], "mode": "cdc", "slot": slot }))
        };
        assert!(cdc("orders_2").validate().is_ok());
        assert_eq!(field_of(cdc("Orders")).as_deref(), Some("slot"));
        assert_eq!(field_of(cdc("a;b")).as_deref(), Some("slot"));
    }

    #[test]
    fn a_query_needs_a_key_and_excludes_tables_and_cdc() {
        let ok = source(serde_json::json!({ "query": "SELECT 1 AS id;", "key": ["id"] }));
        assert!(ok.validate().is_ok());
        let both =
            source(serde_json::json!({ "query": "SELECT 1", "key": ["id"], "tables": ["t"] }));
        assert_eq!(field_of(both).as_deref(), Some("query"));
        let no_key = source(serde_json::json!({ "query": "SELECT 1" }));
        assert_eq!(field_of(no_key).as_deref(), Some("key"));
        let cdc = source(serde_json::json!({ "query": "SELECT 1", "mode": "cdc" }));
        assert_eq!(field_of(cdc).as_deref(), Some("query"));
        let incremental = source(
            serde_json::json!({ "query": "SELECT 1", "mode": "incremental", "cursor": ["id"] }),
        );
        assert!(incremental.validate().is_ok());
        let neither = source(serde_json::json!({}));
        assert_eq!(field_of(neither).as_deref(), Some("tables"));
        let key_for_tables = source(serde_json::json!({ "tables": ["t"], "key": ["id"] }));
        assert_eq!(field_of(key_for_tables).as_deref(), Some("key"));
    }

    #[test]
    fn physical_order_is_for_table_snapshots() {
        let ok = source(serde_json::json!({ "tables": ["t"], "snapshot_order": "physical" }));
        assert!(ok.validate().is_ok());
        let query = source(
            serde_json::json!({ "query": "SELECT 1 AS id", "key": ["id"], "snapshot_order": "physical" }),
        );
        assert_eq!(field_of(query).as_deref(), Some("snapshot_order"));
        let incremental = source(serde_json::json!({
            "tables": ["t"], "mode": "incremental", "cursor": ["id"], "snapshot_order": "physical"
        }));
        assert_eq!(field_of(incremental).as_deref(), Some("snapshot_order"));
    }

    #[test]
    fn several_readers_are_for_physical_order() {
        let ok = source(serde_json::json!({
            "tables": ["t"], "snapshot_order": "physical", "snapshot_readers": 4
        }));
        assert!(ok.validate().is_ok());
        let keyed = source(serde_json::json!({ "tables": ["t"], "snapshot_readers": 2 }));
        assert_eq!(field_of(keyed).as_deref(), Some("snapshot_readers"));
        let none = source(serde_json::json!({
            "tables": ["t"], "snapshot_order": "physical", "snapshot_readers": 0
        }));
        assert_eq!(field_of(none).as_deref(), Some("snapshot_readers"));
    }
}
