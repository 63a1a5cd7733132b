//! # sluice-postgres
//!
//! PostgreSQL connectors on sqlx. So far the sink: COPY into a table created from the
//! Arrow schema (or an existing one), `insert` or `upsert` by key, new nullable columns
//! added under `drift = "evolve"`, and the pipeline's offsets stored in
//! `sluice_offsets` in the same transaction as the data: exactly-once. Identifiers are
//! always quoted. Types: see [`types`].

mod binary;
mod calendar;
pub mod cdc;
mod config;
mod conn;
mod copy;
mod error;
mod lock;
mod nul;
mod sink;
mod source;
pub mod types;
mod value;

pub use config::{Envelope, PostgresSinkConfig, PostgresSourceConfig, SinkMode, SourceMode};
pub use sink::PostgresSink;
pub use source::{BlockRange, PostgresSource, TableOffset, TxnOffset};

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "postgres";

/// The `postgres` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Postgres;

#[connector_api::async_trait]
impl SourceConnector for Postgres {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "PostgreSQL tables or a query: snapshot in key or physical order, incremental by cursor columns, or cdc (snapshot, then changes over logical replication)";
    type Config = PostgresSourceConfig;

    fn validate(&self, config: &PostgresSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: PostgresSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(PostgresSource::new(config)))
    }

    async fn check(&self, config: &PostgresSourceConfig) -> Result<()> {
        source::discover(config).await.map(|_| ())
    }

    async fn discover(&self, config: &PostgresSourceConfig) -> Result<Option<SchemaRef>> {
        source::discover(config).await.map(Some)
    }

    /// Each table of a `snapshot` in key order, or each key range of it
    /// (`split_key_width`).
    async fn splits(
        &self,
        config: &PostgresSourceConfig,
    ) -> Result<Option<connector_api::SplitList>> {
        source::splits(config).await
    }

    fn emits_changes(&self, config: &PostgresSourceConfig) -> bool {
        config.mode == SourceMode::Cdc && config.envelope == Envelope::Row
    }
}

#[connector_api::async_trait]
impl SinkConnector for Postgres {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "PostgreSQL tables via COPY; insert or upsert; exactly-once (offsets in the same transaction)";
    type Config = PostgresSinkConfig;

    fn validate(&self, config: &PostgresSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: PostgresSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PostgresSink::new(config)))
    }

    async fn check(&self, config: &PostgresSinkConfig) -> Result<()> {
        sink::check(config).await
    }

    fn accepts_changes(&self, config: &PostgresSinkConfig) -> Result<()> {
        config.accepts_changes()
    }
}
