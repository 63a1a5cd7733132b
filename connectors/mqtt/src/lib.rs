//! # sluice-mqtt
//!
//! MQTT 5 as a source and a sink (brokers: Mosquitto, EMQX, HiveMQ, VerneMQ, ...).
//!
//! - Source: a persistent session (clean start off, kept `session_expiry` while the
//!   pipeline is down) subscribed to topic filters at QoS 1; each message is
//!   acknowledged (`PUBACK`) only after every sink flushed and the checkpoint holding
//!   it was stored. After a crash the broker sends the unacknowledged messages again
//!   to the same session: at least once, a message repeating only if the crash fell
//!   between a checkpoint and its acknowledgement. QoS 0: at most once.
//! - Sink: publishes at QoS 1 (or 0, 2) to a topic or each record's topic, user
//!   properties from a headers column; `flush` waits for every acknowledgement.

mod config;
mod conn;
mod sink;
mod source;

pub use config::{MqttSinkConfig, MqttSourceConfig};
pub use sink::MqttSink;
pub use source::{MqttSource, SessionOffset};

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "mqtt";

/// The `mqtt` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mqtt;

#[connector_api::async_trait]
impl SourceConnector for Mqtt {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "MQTT 5 topic filters in a persistent session, QoS 1 messages acknowledged after each checkpoint; JSON, string, bytes or Avro (schema registry) payloads";
    type Config = MqttSourceConfig;

    fn validate(&self, config: &MqttSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: MqttSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(MqttSource::new(config)?))
    }

    async fn check(&self, config: &MqttSourceConfig) -> Result<()> {
        source::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }

    fn record_schema(&self, config: &MqttSourceConfig) -> Option<SchemaRef> {
        config.record_schema()
    }
}

#[connector_api::async_trait]
impl SinkConnector for Mqtt {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "MQTT 5 publishes at QoS 0, 1 or 2 to a topic or each record's; flush waits for every acknowledgement";
    type Config = MqttSinkConfig;

    fn validate(&self, config: &MqttSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: MqttSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(MqttSink::new(config)))
    }

    async fn check(&self, config: &MqttSinkConfig) -> Result<()> {
        sink::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }
}
