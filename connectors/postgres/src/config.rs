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
}
