//! A plugin for the tests: `panicky` panics in `next_batch` and in `write` (the host
//! must turn that into an error of that pipeline only), and `file` clashes with the
//! built-in connector of that name (the host must refuse it and load the rest).

use connector_api::{
    Batch, Offsets, Result, Sink, SinkConnector, SinkContext, SinkState, Source, SourceConnector,
    SourceContext,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Options of `panicky` (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Panics when used.
pub struct Panicky;

struct PanickySource;
struct PanickySink;

#[connector_api::async_trait]
impl Source for PanickySource {
    async fn open(&mut self, _ctx: &SourceContext, _committed: &Offsets) -> Result<()> {
        Ok(())
    }
    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        panic!("boom in next_batch")
    }
}

#[connector_api::async_trait]
impl Sink for PanickySink {
    async fn open(&mut self, _ctx: &SinkContext) -> Result<SinkState> {
        Ok(SinkState::default())
    }
    async fn write(&mut self, _batch: &Batch) -> Result<()> {
        panic!("boom in write")
    }
    async fn flush(&mut self, _offsets: &Offsets) -> Result<()> {
        Ok(())
    }
}

#[connector_api::async_trait]
impl SourceConnector for Panicky {
    const NAME: &'static str = "panicky";
    const DESCRIPTION: &'static str = "panics in next_batch (tests)";
    type Config = NoConfig;
    fn create_source(&self, _config: NoConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(PanickySource))
    }
}

#[connector_api::async_trait]
impl SinkConnector for Panicky {
    const NAME: &'static str = "panicky";
    const DESCRIPTION: &'static str = "panics in write (tests)";
    type Config = NoConfig;
    fn create_sink(&self, _config: NoConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PanickySink))
    }
}

/// Claims the name of a built-in.
pub struct Clash;

#[connector_api::async_trait]
impl SourceConnector for Clash {
    const NAME: &'static str = "file";
    const DESCRIPTION: &'static str = "clashes with the built-in file connector (tests)";
    type Config = NoConfig;
    fn create_source(&self, _config: NoConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(PanickySource))
    }
}

connector_api::export_plugin!(sources: [Panicky, Clash], sinks: [Panicky]);
