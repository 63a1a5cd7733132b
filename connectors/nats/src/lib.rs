//! # sluice-nats
//!
//! NATS as a source and a sink.
//!
//! - Source, JetStream: a durable pull consumer on a stream, placed at the pipeline's
//!   checkpoint each time the source opens (so the stream sequence in the checkpoint
//!   is the position, whatever the server remembers), acknowledged (`AckPolicy::All`,
//!   one ack per commit) only after every sink flushed and the checkpoint was stored.
//!   A redelivered message at or below the last sequence read is dropped, so records
//!   repeat only after a crash, back to the last checkpoint.
//! - Source, core NATS (`jetstream = false`): a plain subscription, at most once: what
//!   arrives while the pipeline is down, or is read and not yet written when it
//!   crashes, is gone.
//! - Sink: JetStream publishes, `flush` waiting for every acknowledgement; with
//!   `msg_id = "ordinal"` (a source that replays in order) or `msg_id_column`, each
//!   carries a `Nats-Msg-Id`, so the stream's duplicate window drops what a replay
//!   after a crash sends again. Core NATS publishes
//!   (`jetstream = false`) are at most once.

mod config;
mod conn;
mod sink;
mod source;

pub use config::{MsgId, NatsSinkConfig, NatsSourceConfig, Start};
pub use sink::NatsSink;
pub use source::NatsSource;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "nats";

/// The `nats` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nats;

#[connector_api::async_trait]
impl SourceConnector for Nats {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "NATS JetStream streams by a durable pull consumer, acknowledged after each checkpoint (core NATS subjects at most once); JSON, string, bytes or Avro (schema registry) payloads";
    type Config = NatsSourceConfig;

    fn validate(&self, config: &NatsSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: NatsSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(NatsSource::new(config)?))
    }

    async fn check(&self, config: &NatsSourceConfig) -> Result<()> {
        source::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }

    fn record_schema(&self, config: &NatsSourceConfig) -> Option<SchemaRef> {
        config.record_schema()
    }
}

#[connector_api::async_trait]
impl SinkConnector for Nats {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "NATS subjects: JetStream publishes, flush waits for every ack, de-duplicated by message id on request (core NATS at most once)";
    type Config = NatsSinkConfig;

    fn validate(&self, config: &NatsSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: NatsSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(NatsSink::new(config)))
    }

    async fn check(&self, config: &NatsSinkConfig) -> Result<()> {
        sink::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }
}
