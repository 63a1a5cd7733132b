//! # sluice-template
//!
//! A complete connector to copy when you write your own: a source (`count` rows of
//! `id`, `word`) and a sink (appends JSON lines to a file), each with a typed config
//! whose doc comments are what `sluice describe template` prints.
//!
//! The same crate works both ways, unchanged:
//! - built in: add `Template` to the runtime's list in `runtime/src/registry.rs`;
//! - as a plugin: `cargo build --release -p sluice-template` gives
//!   `libsluice_template.so`; put it in a directory and run
//!   `sluice --plugin-dir DIR run pipeline.toml`.
//!
//! The last line of this file is all the plugin needs: `export_plugin!`.

mod config;
mod sink;
mod source;

pub use config::{TemplateSinkConfig, TemplateSourceConfig};

use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "template";

/// The `template` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Template;

#[connector_api::async_trait]
impl SourceConnector for Template {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "template source: `count` rows of (id, word)";
    type Config = TemplateSourceConfig;

    fn validate(&self, config: &TemplateSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: TemplateSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(source::TemplateSource::new(config)))
    }
}

#[connector_api::async_trait]
impl SinkConnector for Template {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "template sink: appends records as JSON lines to a file";
    type Config = TemplateSinkConfig;

    fn create_sink(&self, config: TemplateSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(sink::TemplateSink::new(config)))
    }
}

connector_api::export_plugin!(sources: [Template], sinks: [Template]);
