//! The built-in `datagen` source and `blackhole` sink, their code unchanged, exported
//! as a plugin under the names `datagen_plugin` and `blackhole_plugin` (a plugin may
//! not take a built-in's name). `integration-tests/bench/plugin.sh` runs the same
//! pipeline through both to measure what the plugin boundary costs.

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};
use sluice_datagen::{Blackhole, BlackholeConfig, Datagen, DatagenConfig};

/// `datagen` under another name.
pub struct DatagenPlugin;

#[connector_api::async_trait]
impl SourceConnector for DatagenPlugin {
    const NAME: &'static str = "datagen_plugin";
    const DESCRIPTION: &'static str = "the datagen source, loaded as a plugin";
    type Config = DatagenConfig;

    fn validate(&self, config: &DatagenConfig) -> Result<()> {
        SourceConnector::validate(&Datagen, config)
    }
    fn create_source(&self, config: DatagenConfig) -> Result<Box<dyn Source>> {
        SourceConnector::create_source(&Datagen, config)
    }
    async fn discover(&self, config: &DatagenConfig) -> Result<Option<SchemaRef>> {
        SourceConnector::discover(&Datagen, config).await
    }
}

/// `blackhole` under another name.
pub struct BlackholePlugin;

#[connector_api::async_trait]
impl SinkConnector for BlackholePlugin {
    const NAME: &'static str = "blackhole_plugin";
    const DESCRIPTION: &'static str = "the blackhole sink, loaded as a plugin";
    type Config = BlackholeConfig;

    fn create_sink(&self, config: BlackholeConfig) -> Result<Box<dyn Sink>> {
        SinkConnector::create_sink(&Blackhole, config)
    }
}

connector_api::export_plugin!(sources: [DatagenPlugin], sinks: [BlackholePlugin]);
