//! # sluice-redis
//!
//! Redis as a source and a sink.
//!
//! - Source: one stream read by a consumer group (`XREADGROUP`), acknowledged
//!   (`XACK`) only after every sink flushed and the checkpoint was stored. A pipeline
//!   that owns its group places it at its checkpoint on open (`XGROUP SETID`), so a
//!   restart reads exactly what came after; in a group shared with other consumers the
//!   source reads again what it left unacknowledged and claims (`XAUTOCLAIM`) what
//!   stopped consumers left: at least once. Entries are a JSON, text or bytes payload
//!   in one field, or every field a column.
//! - Sink: stream entries (`XADD`, trimmed by `MAXLEN ~` on request), hashes (`HSET`
//!   by key) or strings (`SET` by key); change records delete by key. Each checkpoint
//!   interval is one transaction that also stores the pipeline's offsets, read back on
//!   open: exactly once.

mod commands;
mod config;
mod conn;
mod entries;
mod sink;
mod source;

pub use config::{EntryFormat, RedisSinkConfig, RedisSourceConfig, SinkMode, Start};
pub use entries::EntryId;
pub use sink::RedisSink;
pub use source::{RedisSource, StreamOffset};

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "redis";

/// The `redis` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Redis;

#[connector_api::async_trait]
impl SourceConnector for Redis {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "a Redis stream through a consumer group, acknowledged after each checkpoint; JSON, string, bytes or Avro (schema registry) in one field, or every field a column";
    type Config = RedisSourceConfig;

    fn validate(&self, config: &RedisSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: RedisSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(RedisSource::new(config)?))
    }

    async fn check(&self, config: &RedisSourceConfig) -> Result<()> {
        source::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }

    fn record_schema(&self, config: &RedisSourceConfig) -> Option<SchemaRef> {
        config.record_schema()
    }
}

#[connector_api::async_trait]
impl SinkConnector for Redis {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str = "Redis stream entries, hashes or strings by key (JSON, string, bytes or Avro payloads), in one transaction per checkpoint with the offsets: exactly once";
    type Config = RedisSinkConfig;

    fn validate(&self, config: &RedisSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: RedisSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(RedisSink::new(config)))
    }

    async fn check(&self, config: &RedisSinkConfig) -> Result<()> {
        sink::check(config).await?;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }
}
