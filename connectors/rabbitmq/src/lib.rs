//! # sluice-rabbitmq
//!
//! RabbitMQ as a source and a sink, over AMQP 0.9.1.
//!
//! - Source: a queue consumed with manual acknowledgements and a prefetch of
//!   `max_in_flight`; the deliveries of the batches a checkpoint covers are
//!   acknowledged (`multiple`) only after every sink flushed and the checkpoint was
//!   stored. After a crash the broker delivers the unacknowledged messages again: at
//!   least once, a message repeating only if the crash fell between a checkpoint and
//!   its acknowledgement. A dead letter is acknowledged with its batch (it went to the
//!   dead-letter sink), never requeued. A stream queue (`stream = true`) is read from
//!   the offset after the checkpoint, so a restart resumes exactly.
//! - Sink: persistent, mandatory publishes with publisher confirms; `flush` waits for
//!   every confirm. A nack sends the run back to its checkpoint; a message no queue
//!   took (returned) stops it, naming exchange and routing key. At least once.

mod config;
mod conn;
mod sink;
mod source;

pub use config::{RabbitSinkConfig, RabbitSourceConfig, Start};
pub use sink::RabbitSink;
pub use source::{QueueOffset, RabbitSource};

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "rabbitmq";

/// The `rabbitmq` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct RabbitMq;

#[connector_api::async_trait]
impl SourceConnector for RabbitMq {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "a RabbitMQ queue with manual acks sent after each checkpoint, or a stream queue by offset; JSON, string, bytes or Avro (schema registry) payloads";
    type Config = RabbitSourceConfig;

    fn validate(&self, config: &RabbitSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: RabbitSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(RabbitSource::new(config)?))
    }

    async fn check(&self, config: &RabbitSourceConfig) -> Result<()> {
        source::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }

    fn record_schema(&self, config: &RabbitSourceConfig) -> Option<SchemaRef> {
        config.record_schema()
    }
}

#[connector_api::async_trait]
impl SinkConnector for RabbitMq {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "RabbitMQ exchanges: persistent, mandatory publishes, flush waits for every publisher confirm";
    type Config = RabbitSinkConfig;

    fn validate(&self, config: &RabbitSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: RabbitSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(RabbitSink::new(config)))
    }

    async fn check(&self, config: &RabbitSinkConfig) -> Result<()> {
        sink::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }
}
