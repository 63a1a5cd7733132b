//! Options of the SQLite source and sink.

use std::time::Duration;

use connector_api::{Error, FieldSpec, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// Options of the `sqlite` source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceConfig {
    /// Database file.
    pub path: String,
    /// Table to read (one of `table` or `query`).
    pub table: Option<String>,
    /// Query to read (one of `table` or `query`); with `cursor`, it is wrapped as a
    /// subquery and filtered on the cursor columns.
    pub query: Option<String>,
    /// Cursor columns for incremental reads, compared as a tuple, e.g.
    /// `["updated_at", "id"]` (add a unique column last so no row is skipped when many
    /// share a timestamp). Absent: tables are read in rowid order.
    #[serde(default)]
    pub cursor: Vec<String>,
    /// With `cursor`: read only rows whose first cursor column, a time, is at least
    /// this old by the clock (`"30s"`), so that a row written with an earlier time by a
    /// transaction that commits after a later one's is still ahead of the cursor when
    /// it commits (Kafka Connect's `timestamp.delay.interval.ms`). Set it above the
    /// longest write transaction. A time without a zone is taken as UTC. The column's
    /// text must sort as its times do (one format and one offset, as the `sqlite` sink
    /// writes them): the cursor moves in text order.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub lag: Option<Duration>,
    /// Keep polling for new rows at this interval (`"5s"`); absent = stop at the end.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub poll_interval: Option<Duration>,
    /// Declared columns, overriding the declared types of the table or query.
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
}

impl SqliteSourceConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        match (&self.table, &self.query) {
            (Some(_), Some(_)) => Err(Error::config("set one of table or query, not both").with_field("query")),
            (None, None) => Err(Error::config("set table or query").with_field("table")),
            (None, Some(_)) if self.cursor.is_empty() && self.poll_interval.is_some() => Err(Error::config(
                "poll_interval with a query needs cursor columns, or every poll would read it all again",
            )
            .with_field("poll_interval")),
            _ if self.lag.is_some() && self.cursor.is_empty() => Err(Error::config(
                "lag holds back rows by their cursor's time: it needs cursor columns, the first a time",
            )
            .with_field("lag")),
            _ => {
                if !self.schema.is_empty() {
                    connector_api::schema_from_specs(&self.schema)?;
                }
                Ok(())
            }
        }
    }
}

/// How rows are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    /// Plain inserts.
    #[default]
    Insert,
    /// Insert or update by the `key` columns.
    Upsert,
}

/// Options of the `sqlite` sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// Database file; created when missing.
    pub path: String,
    /// Table to write; created from the schema when missing.
    pub table: String,
    /// `insert` or `upsert`.
    #[serde(default)]
    pub mode: SinkMode,
    /// Key columns for `upsert` (the primary key of a created table).
    #[serde(default)]
    pub key: Vec<String>,
    /// NaN in a float column, which SQLite itself stores as NULL: `error` (the
    /// default: the row is refused, a dead letter under `errors.tolerance = "all"`)
    /// or `text` (stored as the text `NaN`, which the `sqlite` source reads back as
    /// NaN; other readers find text in a REAL column). -0.0 is refused either way:
    /// SQLite keeps no sign of zero, in a REAL column or in numeric text.
    #[serde(default)]
    pub nan: NanPolicy,
}

/// How the `sqlite` sink stores NaN (`nan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// The row is refused, naming the column.
    #[default]
    Error,
    /// Stored as the text `NaN`.
    Text,
}

impl SqliteSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
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

    /// Change records (with `_op`) are applied only by `upsert`: `validate` refuses a
    /// change source into `insert`, which would add deletes and updates as rows.
    /// Records with an `_op` column from another source (a change log read back from
    /// files) are inserted as they are.
    pub fn accepts_changes(&self) -> Result<()> {
        if self.mode == SinkMode::Insert {
            return Err(connector_api::columns::changes_need_upsert(&self.table));
        }
        Ok(())
    }
}
