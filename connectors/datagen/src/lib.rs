//! # sluice-datagen
//!
//! A source of deterministic synthetic records, for demos, tests and benchmarks. The
//! same seed, schema and row number always give the same values, so a restarted run
//! resumes with exactly the records it would have produced.

mod config;
mod generate;
mod source;

pub use config::DatagenConfig;
pub use source::DatagenSource;

use connector_api::{Result, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "datagen";

/// The `datagen` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Datagen;

#[connector_api::async_trait]
impl SourceConnector for Datagen {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "deterministic synthetic records of a declared schema";
    type Config = DatagenConfig;

    fn validate(&self, config: &DatagenConfig) -> Result<()> {
        config.schema().map(|_| ())
    }

    fn create_source(&self, config: DatagenConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(DatagenSource::new(config)?))
    }

    async fn discover(
        &self,
        config: &DatagenConfig,
    ) -> Result<Option<connector_api::arrow_schema::SchemaRef>> {
        config.schema().map(Some)
    }

    /// Its schema: every record is generated to it.
    fn record_schema(
        &self,
        config: &DatagenConfig,
    ) -> Option<connector_api::arrow_schema::SchemaRef> {
        config.schema().ok()
    }
}

/// The `blackhole` sink: accepts and discards every record (for benchmarks and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Blackhole;

/// Options of the `blackhole` sink (none).
#[derive(Clone, Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

struct BlackholeSink;

#[connector_api::async_trait]
impl connector_api::Sink for BlackholeSink {
    async fn open(
        &mut self,
        _ctx: &connector_api::SinkContext,
    ) -> Result<connector_api::SinkState> {
        Ok(connector_api::SinkState::default())
    }
    async fn write(&mut self, _batch: &connector_api::Batch) -> Result<()> {
        Ok(())
    }
    async fn flush(&mut self, _offsets: &connector_api::Offsets) -> Result<()> {
        Ok(())
    }
}

#[connector_api::async_trait]
impl connector_api::SinkConnector for Blackhole {
    const NAME: &'static str = "blackhole";
    const DESCRIPTION: &'static str = "discards every record (benchmarks, tests)";
    type Config = BlackholeConfig;

    fn create_sink(&self, _config: BlackholeConfig) -> Result<Box<dyn connector_api::Sink>> {
        Ok(Box::new(BlackholeSink))
    }
}
