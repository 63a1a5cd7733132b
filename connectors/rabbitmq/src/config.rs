//! Options of the RabbitMQ source and sink.

use connector_api::arrow_schema::SchemaRef;
use connector_api::{redacted_url, Error, FieldSpec, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_formats::messages::{self, MessageField, PayloadFormat};
use sluice_formats::registry::RegistryConfig;
use sluice_formats::JsonOptions;

/// Where a stream queue is read from when the pipeline has no checkpoint yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The first message the stream holds.
    #[default]
    First,
    /// Only messages published after the source first opens.
    Next,
}

/// Options of `connector = "rabbitmq"` as a source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RabbitSourceConfig {
    /// Server URL, `amqp://user:password@host:5672/vhost` (`%2f` for the vhost `/`).
    pub url: Secret,
    /// The queue to consume (it must exist).
    pub queue: String,
    /// The queue is a RabbitMQ stream (`x-queue-type = stream`): read by offset from
    /// the pipeline's checkpoint, so a restart resumes exactly; without it, a classic
    /// or quorum queue, whose unacknowledged messages the broker delivers again.
    #[serde(default)]
    pub stream: bool,
    /// With `stream`: where to start without a checkpoint, `first` (default) or `next`.
    #[serde(default)]
    pub start: Start,
    /// Messages delivered and not yet acknowledged at most (the consumer's prefetch,
    /// 1 to 65535). Messages are acknowledged at each checkpoint, so this caps the
    /// records read between two checkpoints.
    #[serde(default = "max_in_flight")]
    pub max_in_flight: u16,
    /// Payload format: `json` (default), `string`, `bytes` or `avro` (Confluent wire
    /// format, with `schema_registry`).
    #[serde(default)]
    pub format: PayloadFormat,
    /// The schema registry Avro payloads' writer schemas are fetched from
    /// (`format = "avro"`): `{ url = "http://registry:8081" }`.
    pub schema_registry: Option<RegistryConfig>,
    /// Declared columns of JSON payloads; absent: inferred from the first messages.
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
    /// Metadata columns to add: `topic` (`_topic`: the routing key), `headers`
    /// (`_headers`), `timestamp` (`_timestamp`: the message's timestamp property),
    /// `offset` (`_offset`: the stream offset, with `stream`).
    #[serde(default)]
    pub metadata: Vec<MessageField>,
    /// Stop once no message arrived for the idle timeout (a backfill or a test),
    /// instead of waiting for new ones.
    #[serde(default)]
    pub bounded: bool,
}

fn max_in_flight() -> u16 {
    10_000
}

impl RabbitSourceConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        if self.queue.is_empty() {
            return Err(Error::config("queue is empty").with_field("queue"));
        }
        if self.max_in_flight == 0 {
            return Err(
                Error::config("max_in_flight must be at least 1").with_field("max_in_flight")
            );
        }
        if self.metadata.contains(&MessageField::Id) {
            return Err(Error::config(
                "metadata \"id\" is of Redis streams; RabbitMQ streams number messages: \"offset\"",
            )
            .with_field("metadata"));
        }
        if !self.stream && self.metadata.contains(&MessageField::Offset) {
            return Err(Error::config(
                "metadata \"offset\": only a stream queue (stream = true) numbers its messages",
            )
            .with_field("metadata"));
        }
        if !self.stream && self.start != Start::First {
            return Err(Error::config(
                "start is of stream queues (stream = true); a queue delivers what it holds",
            )
            .with_field("start"));
        }
        messages::check_registry(self.format, self.schema_registry.as_ref())?;
        messages::check_schema(self.format, &self.schema)
    }

    /// The declared JSON columns, when there are any.
    pub fn declared_schema(&self) -> Result<Option<SchemaRef>> {
        messages::declared_schema(&self.schema)
    }

    /// Every record's schema when the config tells it.
    pub fn record_schema(&self) -> Option<SchemaRef> {
        messages::record_schema(&self.schema, &self.metadata)
    }
}

/// Options of `connector = "rabbitmq"` as a sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RabbitSinkConfig {
    /// Server URL, `amqp://user:password@host:5672/vhost` (`%2f` for the vhost `/`).
    pub url: Secret,
    /// The exchange to publish to (it must exist); empty (the default exchange):
    /// the routing key is the queue's name.
    #[serde(default)]
    pub exchange: String,
    /// The routing key (the default when `routing_key_column` is set and null).
    #[serde(default)]
    pub routing_key: String,
    /// Publish each record with the routing key in this column (e.g. `_topic`).
    pub routing_key_column: Option<String>,
    /// Payload format: `json` (default: an object of every column but the metadata
    /// and routing columns), `string` or `bytes` (the column `value`, or the only
    /// column), or `avro` (the payload columns as an Avro record in the Confluent wire
    /// format, its schema registered in `schema_registry`).
    #[serde(default)]
    pub format: PayloadFormat,
    /// The schema registry of `format = "avro"`: `{ url = "http://registry:8081" }`.
    pub schema_registry: Option<RegistryConfig>,
    /// The registry subject the Avro schema is registered under; default
    /// `{routing_key}-value`, else `{exchange}-value` (needed with
    /// `routing_key_column`).
    pub schema_subject: Option<String>,
    /// With `format = "avro"`: the name of the Avro record written (namespace
    /// `sluice`; letters, digits and `_`).
    #[serde(default = "messages::default_record_name")]
    pub record_name: String,
    /// JSON options (with `format = "json"`).
    #[serde(default)]
    pub json: JsonOptions,
    /// Message headers from this `list<struct<key, value>>` column (`_headers`).
    pub headers_column: Option<String>,
    /// Persistent messages (delivery mode 2, the default): a durable queue keeps them
    /// across a broker restart.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Write the reserved `_`-columns (`_topic`, `_offset`, ...) into JSON and Avro payloads
    /// too.
    #[serde(default)]
    pub include_metadata: bool,
}

fn yes() -> bool {
    true
}

impl RabbitSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        if self.exchange.is_empty()
            && self.routing_key.is_empty()
            && self.routing_key_column.is_none()
        {
            return Err(Error::config(
                "set exchange, or routing_key (the queue, through the default exchange), or routing_key_column",
            )
            .with_field("routing_key"));
        }
        messages::check_avro_sink(
            self.format,
            self.schema_registry.as_ref(),
            self.schema_subject.as_deref(),
            self.destination(),
            &self.record_name,
        )
    }

    /// The routing key (else the exchange) every record is published with, when no
    /// column chooses it.
    pub fn destination(&self) -> Option<&str> {
        match (&self.routing_key_column, self.routing_key.as_str()) {
            (Some(_), _) => None,
            (None, "") => Some(self.exchange.as_str()).filter(|e| !e.is_empty()),
            (None, key) => Some(key),
        }
    }
}

fn check_url(url: &Secret) -> Result<()> {
    let u = url.expose();
    match u.split("://").next() {
        Some("amqp") if u.contains("://") => Ok(()),
        Some("amqps") => Err(Error::config(format!(
            "url \"{}\": TLS (amqps://) is not built in; connect through a TLS tunnel, or use amqp://",
            redacted_url(u)
        ))
        .with_field("url")),
        _ => Err(Error::config(format!(
            "url \"{}\": expected amqp://user:password@host:5672/vhost",
            redacted_url(u)
        ))
        .with_field("url")),
    }
}
