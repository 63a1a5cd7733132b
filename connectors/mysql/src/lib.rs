//! # sluice-mysql
//!
//! MySQL and MariaDB connectors on mysql_async (one crate, both servers).
//!
//! - Source: tables in primary-key order (or a query in the order of its `key`
//!   columns), chunk by chunk inside one consistent snapshot, resumable after the last
//!   delivered key; one table or query by cursor columns (`incremental`), tie-safe;
//!   or one table's snapshot and then its changes from the row-based binlog (`cdc`).
//! - Sink: a table created from the Arrow schema (or an existing one), `insert` or
//!   `upsert` by key with change records applied in order, rows loaded by `LOAD DATA
//!   LOCAL INFILE` from memory, and the pipeline's offsets stored in `sluice_offsets`
//!   in the same transaction: exactly-once.
//!
//! Types: see [`types`]. Every connection reads and writes times in UTC, in utf8mb4,
//! in strict mode.

mod config;
mod conn;
mod decode;
mod encode;
mod error;
mod lock;
mod sink;
mod source;
pub mod types;

pub use config::{Envelope, MysqlSinkConfig, MysqlSourceConfig, SinkMode, SourceMode, ZeroDates};
pub use sink::MysqlSink;
pub use source::{BinlogOffset, Key, MysqlOffset, MysqlSource};

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "mysql";

/// The `mysql` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mysql;

#[connector_api::async_trait]
impl SourceConnector for Mysql {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "MySQL or MariaDB tables or a query: snapshot in key order in one consistent snapshot, incremental by cursor columns, or cdc (snapshot, then the row-based binlog)";
    type Config = MysqlSourceConfig;

    fn validate(&self, config: &MysqlSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: MysqlSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(MysqlSource::new(config)))
    }

    async fn check(&self, config: &MysqlSourceConfig) -> Result<()> {
        source::discover(config).await.map(|_| ())
    }

    async fn discover(&self, config: &MysqlSourceConfig) -> Result<Option<SchemaRef>> {
        source::discover(config).await.map(Some)
    }

    fn emits_changes(&self, config: &MysqlSourceConfig) -> bool {
        config.mode == SourceMode::Cdc && config.envelope == Envelope::Row
    }
}

#[connector_api::async_trait]
impl SinkConnector for Mysql {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "MySQL or MariaDB tables by LOAD DATA LOCAL INFILE; insert or upsert; exactly-once (offsets in the same transaction)";
    type Config = MysqlSinkConfig;

    fn validate(&self, config: &MysqlSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: MysqlSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(MysqlSink::new(config)))
    }

    async fn check(&self, config: &MysqlSinkConfig) -> Result<()> {
        sink::check(config).await
    }

    fn accepts_changes(&self, config: &MysqlSinkConfig) -> Result<()> {
        config.accepts_changes()
    }
}
