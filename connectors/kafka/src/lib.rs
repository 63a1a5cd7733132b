//! # sluice-kafka
//!
//! Reads and writes Kafka topics (or any Kafka-protocol broker) on `rdkafka`.
//!
//! - The source is a consumer-group member: partitions are splits, offsets are
//!   committed to Kafka and stored in the checkpoint only after every sink has
//!   flushed, and a revoked partition is released only once what was read from it is
//!   committed. Values are JSON (declared or inferred schema), Avro in the Confluent
//!   wire format (schemas from a schema registry), strings or bytes; key,
//!   headers, timestamp, topic, partition and offset come as metadata columns on
//!   request. See [`KafkaSource`].
//! - The sink is an idempotent producer whose flush waits for every delivery report;
//!   with `exactly_once = true` it is transactional, and in a Kafka to Kafka pipeline
//!   the consumed offsets commit in the same transaction. See [`KafkaSink`].

mod config;
mod sink;
mod source;

pub use config::{
    Compression, KafkaSinkConfig, KafkaSourceConfig, KeyFormat, Metadata, Partitioner,
    RegistryConfig, Start, ValueFormat,
};
pub use sink::KafkaSink;
pub use source::{headers_type, parse_split, split_id, KafkaSource, PartitionOffset};

use std::sync::Arc;
use std::time::Duration;

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use connector_api::arrow_schema::SchemaRef;
use connector_api::{
    columns, Error, ErrorKind, Result, Sink, SinkConnector, Source, SourceConnector,
};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

/// The connector name.
pub const NAME: &str = "kafka";

/// A topic and partition.
pub(crate) type Tp = (String, i32);

/// The `kafka` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kafka;

/// An error creating a client: a bad property is a config error.
///
/// The value of a refused property is left out: it may be a resolved secret.
pub(crate) fn kafka_error(what: &str, e: KafkaError) -> Error {
    match e {
        KafkaError::ClientConfig(_, desc, key, _) => {
            Error::config(format!("kafka: {what}: {desc}")).with_field(format!("options.{key}"))
        }
        KafkaError::ClientCreation(_) => {
            Error::config(format!("kafka: {what}: {e}")).with_field("options")
        }
        e => Error::connect(format!("kafka: {what}: {e}")),
    }
}

/// librdkafka's log lines as tracing events.
pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(facility = fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
    }
}

/// Logs client errors, once per distinct message per 10 s: librdkafka reports a
/// broker that is down on every connection attempt.
#[derive(Default)]
pub(crate) struct ErrorLog {
    last: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl ErrorLog {
    pub(crate) fn report(&self, client: &str, error: &KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let repeat = last
            .as_ref()
            .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(10));
        if !repeat {
            tracing::warn!(error = %error, reason, "kafka {client}");
            *last = Some((text, std::time::Instant::now()));
        }
    }
}

/// The cluster's metadata: the first request of every client, so a broker that is
/// down is a connect error (retried) naming the servers.
pub(crate) fn broker_metadata<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    servers: &str,
) -> Result<rdkafka::metadata::Metadata> {
    client
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| Error::connect(format!("kafka brokers \"{servers}\" did not answer: {e}")))
}

/// Lists what the brokers know of `topics` (regular expressions match against all).
fn check_topics(config: &KafkaSourceConfig) -> Result<()> {
    let consumer: BaseConsumer = config
        .client_config("check")
        .create()
        .map_err(|e| kafka_error("creating the consumer", e))?;
    let md = broker_metadata(consumer.client(), &config.bootstrap_servers)?;
    for t in &config.topics {
        if t.starts_with('^') {
            continue;
        }
        if !md
            .topics()
            .iter()
            .any(|m| m.name() == t && m.error().is_none())
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("kafka: topic \"{t}\" does not exist"),
            ));
        }
    }
    Ok(())
}

#[connector_api::async_trait]
impl SourceConnector for Kafka {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "Kafka topics in a consumer group (JSON, Avro with a schema registry, string or bytes values; key, headers and timestamp as columns)";
    type Config = KafkaSourceConfig;

    fn validate(&self, config: &KafkaSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: KafkaSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(KafkaSource::new(config)?))
    }

    async fn check(&self, config: &KafkaSourceConfig) -> Result<()> {
        let owned = config.clone();
        tokio::task::spawn_blocking(move || check_topics(&owned))
            .await
            .map_err(|e| Error::internal("kafka check task failed").with_source(e))??;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }

    async fn discover(&self, config: &KafkaSourceConfig) -> Result<Option<SchemaRef>> {
        let mut fields: Vec<Field> = match config.format {
            ValueFormat::Json => match config.declared_schema()? {
                Some(s) => s.fields().iter().map(|f| f.as_ref().clone()).collect(),
                None => return Ok(None),
            },
            ValueFormat::Avro => match latest_schema(config, "value").await? {
                Some(s) => s
                    .arrow()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect(),
                None => return Ok(None),
            },
            ValueFormat::String => vec![Field::new("value", DataType::Utf8, true)],
            ValueFormat::Bytes => vec![Field::new("value", DataType::Binary, true)],
        };
        for m in &config.metadata {
            fields.push(match m {
                Metadata::Key => Field::new(
                    columns::KEY,
                    match config.key_format {
                        KeyFormat::Bytes => DataType::Binary,
                        KeyFormat::Avro => match latest_schema(config, "key").await? {
                            Some(s) if s.is_record() => {
                                DataType::Struct(s.arrow().fields().clone())
                            }
                            Some(s) => s.arrow().field(0).data_type().clone(),
                            None => return Ok(None),
                        },
                        _ => DataType::Utf8,
                    },
                    true,
                ),
                Metadata::Headers => Field::new(columns::HEADERS, headers_type(), true),
                Metadata::Timestamp => Field::new(
                    columns::TIMESTAMP,
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    true,
                ),
                Metadata::Topic => Field::new(columns::TOPIC, DataType::Utf8, false),
                Metadata::Partition => Field::new(columns::PARTITION, DataType::Int32, false),
                Metadata::Offset => Field::new(columns::OFFSET, DataType::Int64, false),
            });
        }
        Ok(Some(Arc::new(Schema::new(fields))))
    }
}

/// The latest `{topic}-{part}` schema (TopicNameStrategy) of a source reading one
/// topic by name; None without a registry, for a pattern, or before any is registered.
async fn latest_schema(
    config: &KafkaSourceConfig,
    part: &str,
) -> Result<Option<sluice_formats::avro::AvroSchema>> {
    let (Some(r), [topic]) = (&config.schema_registry, config.topics.as_slice()) else {
        return Ok(None);
    };
    if topic.starts_with('^') {
        return Ok(None);
    }
    match sluice_formats::registry::Registry::new(r)?
        .latest(&format!("{topic}-{part}"))
        .await?
    {
        Some(text) => Ok(Some(sluice_formats::avro::AvroSchema::parse(&text)?)),
        None => Ok(None),
    }
}

#[connector_api::async_trait]
impl SinkConnector for Kafka {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "Kafka topics through an idempotent or transactional (exactly-once) producer";
    type Config = KafkaSinkConfig;

    fn validate(&self, config: &KafkaSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: KafkaSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(KafkaSink::new(config)?))
    }

    async fn check(&self, config: &KafkaSinkConfig) -> Result<()> {
        let owned = config.clone();
        tokio::task::spawn_blocking(move || {
            let producer = sink::connect(&owned, "check", "sink", Default::default())?;
            // the fixed topic must exist (records routed by `topic_column` name theirs)
            let Some(topic) = owned
                .topic
                .as_deref()
                .filter(|_| owned.topic_column.is_none())
            else {
                return Ok(());
            };
            let md = broker_metadata(
                rdkafka::producer::Producer::client(&producer),
                &owned.bootstrap_servers,
            )?;
            if md
                .topics()
                .iter()
                .any(|m| m.name() == topic && m.error().is_none())
            {
                return Ok(());
            }
            Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "kafka: topic \"{topic}\" does not exist; create it (a broker with \
                     auto.create.topics.enable makes it on the first write)"
                ),
            )
            .with_field("topic"))
        })
        .await
        .map_err(|e| Error::internal("kafka check task failed").with_source(e))??;
        sluice_formats::registry::check(config.schema_registry.as_ref()).await
    }
}
