//! # sluice-sqlite
//!
//! Reads and writes SQLite database files.
//!
//! - The source reads a table (in rowid order, resumable) or a query, optionally
//!   incrementally by cursor columns (`cursor = ["updated_at", "id"]`), polling for new
//!   rows when `poll_interval` is set.
//! - The sink creates the table from the Arrow schema, inserts (or upserts by key) in
//!   one transaction per flush, and stores the pipeline's offsets in the same
//!   transaction (table `_sluice_offsets`): exactly-once.
//!
//! Types: see [`types`] for the mapping between Arrow and SQLite declared types.

mod config;
mod conn;
mod error;
mod sink;
mod source;
pub mod types;

pub use config::{SinkMode, SqliteSinkConfig, SqliteSourceConfig};
pub use sink::SqliteSink;
pub use source::SqliteSource;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "sqlite";

/// The `sqlite` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sqlite;

#[connector_api::async_trait]
impl SourceConnector for Sqlite {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "SQLite tables or queries, whole or incremental by cursor columns";
    type Config = SqliteSourceConfig;

    fn validate(&self, config: &SqliteSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: SqliteSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(SqliteSource::new(config)))
    }

    async fn check(&self, config: &SqliteSourceConfig) -> Result<()> {
        source::discover(config).await.map(|_| ())
    }

    async fn discover(&self, config: &SqliteSourceConfig) -> Result<Option<SchemaRef>> {
        source::discover(config).await.map(Some)
    }
}

#[connector_api::async_trait]
impl SinkConnector for Sqlite {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "SQLite tables, created from the schema; exactly-once (offsets stored with the data)";
    type Config = SqliteSinkConfig;

    fn validate(&self, config: &SqliteSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: SqliteSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(SqliteSink::new(config)))
    }

    async fn check(&self, config: &SqliteSinkConfig) -> Result<()> {
        sink::check(config).await
    }

    fn accepts_changes(&self, config: &SqliteSinkConfig) -> Result<()> {
        config.accepts_changes()
    }
}
