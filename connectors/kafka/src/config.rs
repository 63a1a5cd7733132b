//! Options of the Kafka source and sink.
//!
//! Both share the connection options (`bootstrap_servers`, `options`): any librdkafka
//! property (`security.protocol`, `sasl.mechanism`, `fetch.max.bytes`, ...) can be
//! passed through `options`, so a pipeline runs against any Kafka-protocol broker.

use std::collections::BTreeMap;
use std::time::Duration;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{schema_from_specs, Error, FieldSpec, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;
pub use sluice_formats::registry::RegistryConfig;

/// How message values (and keys) are read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// A JSON object per message; its fields are columns (declared in `schema` or
    /// inferred from the first messages).
    #[default]
    Json,
    /// The message as UTF-8 text, in one column `value`.
    String,
    /// The message as raw bytes, in one column `value`.
    Bytes,
    /// Avro in the Confluent wire format (magic byte 0, schema id, datum); a source
    /// fetches each writer schema by id, a sink registers the schema it writes. Needs
    /// `schema_registry`.
    Avro,
}

/// Checks that Avro values or keys and `schema_registry` come together.
fn check_registry(
    format: ValueFormat,
    key_format: KeyFormat,
    registry: &Option<RegistryConfig>,
) -> Result<()> {
    let what = match (format, key_format) {
        (ValueFormat::Avro, _) => Some("format = \"avro\""),
        (_, KeyFormat::Avro) => Some("key_format = \"avro\""),
        _ => None,
    };
    sluice_formats::registry::check_avro(
        what,
        "format = \"avro\" or key_format = \"avro\"",
        registry.as_ref(),
    )
}

/// How message keys are read into `_key` and written from the key columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormat {
    /// UTF-8 text (a source rejects a key that is not UTF-8). A sink writes the one
    /// key column's value as text.
    #[default]
    String,
    /// Raw bytes.
    Bytes,
    /// A sink writes the key columns as one JSON object (`{"id": 7}`); a source reads
    /// the key as text.
    Json,
    /// Avro in the Confluent wire format, with the schema registry of
    /// `schema_registry`. A sink writes the key columns as one record
    /// `{record_name}Key` registered under `key_subject` (or passes `_key` on: a
    /// struct as a record, any other type as a bare Avro value); a source decodes each
    /// key with its writer schema into `_key` (a struct for a record key).
    Avro,
}

/// Where a partition starts reading when nobody has read it: neither the pipeline's
/// checkpoint nor the consumer group has a position for it. A partition with a
/// position always resumes there (the further of the two), also when a rebalance
/// moves it between runtimes, as Kafka's `auto.offset.reset` does; to read a topic
/// again, use another `group_id` and run `sluice offsets reset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The earliest offset still in the partition (the same as `earliest`).
    #[default]
    Committed,
    /// The earliest offset still in the partition.
    Earliest,
    /// The end of the partition: only messages produced after it was assigned.
    Latest,
    /// The first message at or after `start_timestamp`.
    Timestamp,
}

/// A metadata column a source adds on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metadata {
    /// `_key`: the message key (string or binary per `key_format`).
    Key,
    /// `_headers`: `list<struct<key: string, value: string>>`, in message order.
    Headers,
    /// `_timestamp`: the message timestamp, `timestamp(ms, UTC)`.
    Timestamp,
    /// `_topic`: the topic name.
    Topic,
    /// `_partition`: the partition number (int32).
    Partition,
    /// `_offset`: the offset in the partition (int64).
    Offset,
}

/// Compression of produced message sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4 (the default: cheap and effective).
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How a sink picks the partition of a record that has no `partition_column` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// murmur2 of the key, as the Java client does (so both agree where a key goes);
    /// records without key are spread at random.
    #[default]
    Murmur2Random,
    /// murmur2 of the key; records without key all go to one partition.
    Murmur2,
    /// CRC32 of the key (librdkafka's own default), random without key.
    ConsistentRandom,
    /// FNV-1a of the key (Sarama's choice), random without key.
    Fnv1aRandom,
    /// Random, ignoring the key.
    Random,
}

impl Partitioner {
    fn as_str(self) -> &'static str {
        match self {
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::Murmur2 => "murmur2",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Fnv1aRandom => "fnv1a_random",
            Partitioner::Random => "random",
        }
    }
}

/// Options of `connector = "kafka"` as a source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Brokers to bootstrap from, `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Topics to read. An entry starting with `^` is a regular expression matched
    /// against every topic of the cluster (new matching topics are picked up).
    pub topics: Vec<String>,
    /// Consumer group id. Absent: `sluice-PIPELINE`. Runtimes with the same group id
    /// share the partitions between them.
    pub group_id: Option<String>,
    /// Where a partition starts: `committed` (default), `earliest`, `latest` or
    /// `timestamp` (with `start_timestamp`).
    #[serde(default)]
    pub start: Start,
    /// With `start = "timestamp"`: RFC 3339 time of the first message to read.
    pub start_timestamp: Option<String>,
    /// Stop when every assigned partition has been read up to the end it had when it
    /// was assigned (a backfill or a test), instead of waiting for new messages.
    #[serde(default)]
    pub bounded: bool,
    /// Value format: `json` (default), `string`, `bytes` or `avro`.
    #[serde(default)]
    pub format: ValueFormat,
    /// The schema registry writer schemas are fetched from (`format = "avro"`).
    pub schema_registry: Option<RegistryConfig>,
    /// Key format for the `_key` column: `string` (default), `bytes` or `avro`
    /// (Confluent wire format; a record key becomes a struct column).
    #[serde(default)]
    pub key_format: KeyFormat,
    /// Declared value columns (`format = "json"`); absent = inferred from the first
    /// messages, widened when new fields appear.
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
    /// Metadata columns to add: `key`, `headers`, `timestamp`, `topic`, `partition`,
    /// `offset` (as `_key`, `_headers`, ...).
    #[serde(default)]
    pub metadata: Vec<Metadata>,
    /// How long a revoked partition waits for its records in flight to be flushed and
    /// committed before it is released to another consumer.
    #[serde(default = "revoke_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub revoke_timeout: Duration,
    /// Extra librdkafka consumer properties, e.g. `"security.protocol" = "sasl_ssl"`.
    /// Values may be secret references.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
}

fn revoke_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Properties the connector sets itself; `options` may not override them.
const OWNED_CONSUMER: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

const OWNED_PRODUCER: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "transactional.id",
];

fn check_options(options: &BTreeMap<String, Secret>, owned: &[&str]) -> Result<()> {
    for key in options.keys() {
        if owned.contains(&key.as_str()) {
            return Err(Error::config(format!(
                "\"{key}\" is set by the connector; use its own option instead"
            ))
            .with_field(format!("options.{key}")));
        }
    }
    Ok(())
}

impl KafkaSourceConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::config("is empty").with_field("bootstrap_servers"));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::config("needs at least one topic, none empty").with_field("topics"));
        }
        if self.start == Start::Timestamp {
            self.start_millis()?;
        } else if self.start_timestamp.is_some() {
            return Err(Error::config("only applies with start = \"timestamp\"")
                .with_field("start_timestamp"));
        }
        if !self.schema.is_empty() && self.format != ValueFormat::Json {
            return Err(
                Error::config("a schema is declared only for format = \"json\"")
                    .with_field("schema"),
            );
        }
        check_registry(self.format, self.key_format, &self.schema_registry)?;
        if self.key_format == KeyFormat::Json {
            return Err(Error::config(
                "a source reads keys as \"string\", \"bytes\" or \"avro\" (a JSON key arrives as its text)",
            )
            .with_field("key_format"));
        }
        self.declared_schema()?;
        // a revoke waits inside the rebalance; the group waits max.poll.interval.ms
        let poll_interval = match self.options.get("max.poll.interval.ms") {
            Some(v) => v.expose().parse::<u64>().map_err(|_| {
                Error::config("must be a number of milliseconds")
                    .with_field("options.max.poll.interval.ms")
            })?,
            None => 300_000,
        };
        if self.revoke_timeout.as_millis() as u64 >= poll_interval {
            return Err(Error::config(format!(
                "must be shorter than max.poll.interval.ms ({poll_interval} ms)"
            ))
            .with_field("revoke_timeout"));
        }
        check_options(&self.options, OWNED_CONSUMER)
    }

    /// The declared value schema, if any.
    pub fn declared_schema(&self) -> Result<Option<SchemaRef>> {
        if self.schema.is_empty() {
            Ok(None)
        } else {
            schema_from_specs(&self.schema).map(Some)
        }
    }

    /// `start_timestamp` in milliseconds since the epoch.
    pub fn start_millis(&self) -> Result<i64> {
        let text = self.start_timestamp.as_deref().ok_or_else(|| {
            Error::config("start = \"timestamp\" needs start_timestamp")
                .with_field("start_timestamp")
        })?;
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                Error::config(format!("\"{text}\" is not an RFC 3339 time: {e}"))
                    .with_field("start_timestamp")
            })
    }

    /// The group id for `pipeline`.
    pub fn group(&self, pipeline: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{pipeline}"))
    }

    /// The librdkafka consumer properties.
    pub fn client_config(&self, pipeline: &str) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", self.group(pipeline))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range,roundrobin")
            // librdkafka waits 1 s before fetching again for a partition once its local
            // queue is over the thresholds; with many partitions one fetch response
            // passes them, and the consumer then idles half the time (measured: 4.3 s
            // against 2.1 s for 1M messages over 160 partitions)
            .set("fetch.queue.backoff.ms", "10")
            // the statistics carry each partition's end offsets: the lag the source
            // reports (sluice_source_lag_records)
            .set("statistics.interval.ms", "1000")
            .set("client.id", format!("sluice-{pipeline}"));
        for (k, v) in &self.options {
            c.set(k, v.expose());
        }
        c
    }
}

/// Options of `connector = "kafka"` as a sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Brokers to bootstrap from, `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Topic to write to (the default when `topic_column` is set and null).
    pub topic: Option<String>,
    /// Route each record to the topic named in this column (e.g. `_topic`).
    pub topic_column: Option<String>,
    /// Columns that make the message key. Absent: the `_key` column when the batch has
    /// one, else no key.
    #[serde(default)]
    pub key: Vec<String>,
    /// How the key is written: `string` (default; the one key column as text),
    /// `bytes` (one binary or string column as is), `json` (an object of the key
    /// columns) or `avro` (a record of the key columns, registered under
    /// `key_subject`).
    #[serde(default)]
    pub key_format: KeyFormat,
    /// Value format: `json` (default; an object of every column but the metadata
    /// columns), `avro` (the same columns as one Avro record, registered in
    /// `schema_registry`), `string` or `bytes` (the one column `value`, or the only
    /// column).
    #[serde(default)]
    pub format: ValueFormat,
    /// JSON options (with `format = "json"`, and `key_format = "json"`).
    #[serde(default)]
    pub json: sluice_formats::JsonOptions,
    /// The schema registry the value schema is registered in (`format = "avro"`).
    pub schema_registry: Option<RegistryConfig>,
    /// The subject the value schema is registered under; `{topic}` stands for the
    /// topic written to (TopicNameStrategy).
    #[serde(default = "subject")]
    pub subject: String,
    /// The subject the key schema is registered under (`key_format = "avro"`);
    /// `{topic}` stands for the topic written to.
    #[serde(default = "key_subject")]
    pub key_subject: String,
    /// Name of the Avro record written (namespace `sluice`); letters, digits and `_`.
    #[serde(default = "sluice_formats::messages::default_record_name")]
    pub record_name: String,
    /// Column with the message headers (`list<struct<key, value>>`). Absent: `_headers`
    /// when the batch has it.
    pub headers_column: Option<String>,
    /// Timestamp column for the message timestamp. Absent: `_timestamp` when the batch
    /// has it, else the time of sending.
    pub timestamp_column: Option<String>,
    /// Integer column with an explicit partition number.
    pub partition_column: Option<String>,
    /// Partitioner for records without an explicit partition.
    #[serde(default)]
    pub partitioner: Partitioner,
    /// Compression of message sets: `lz4` (default), `zstd`, `gzip`, `snappy`, `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Also write the metadata columns (`_key`, `_topic`, ...) into JSON values.
    #[serde(default)]
    pub include_metadata: bool,
    /// Transactional producer: every flush commits one transaction; in a Kafka to
    /// Kafka pipeline the consumed offsets commit in the same transaction, so a crash
    /// can neither lose nor duplicate a record for a `read_committed` reader.
    #[serde(default)]
    pub exactly_once: bool,
    /// Transactional id (with `exactly_once`). Absent: `sluice-PIPELINE-SINK`. Each
    /// replica of a pipeline needs its own (e.g. `"sluice-orders-${env:HOSTNAME}"`).
    pub transactional_id: Option<String>,
    /// How long a flush waits for every delivery report before failing.
    #[serde(default = "delivery_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub delivery_timeout: Duration,
    /// Extra librdkafka producer properties, e.g. `"linger.ms" = "20"`. Values may be
    /// secret references.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
}

fn subject() -> String {
    "{topic}-value".into()
}

fn key_subject() -> String {
    "{topic}-key".into()
}

fn delivery_timeout() -> Duration {
    Duration::from_secs(120)
}

impl KafkaSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::config("is empty").with_field("bootstrap_servers"));
        }
        if self.topic.is_none() && self.topic_column.is_none() {
            return Err(Error::config("set topic or topic_column").with_field("topic"));
        }
        if !matches!(self.key_format, KeyFormat::Json | KeyFormat::Avro) && self.key.len() > 1 {
            return Err(Error::config(
                "several key columns need key_format = \"json\" or \"avro\"",
            )
            .with_field("key"));
        }
        check_registry(self.format, self.key_format, &self.schema_registry)?;
        if self.subject.trim().is_empty() {
            return Err(Error::config("is empty").with_field("subject"));
        }
        if self.key_subject.trim().is_empty() {
            return Err(Error::config("is empty").with_field("key_subject"));
        }
        // (a key is an Avro record `{record_name}Key` when key columns make it)
        if self.format == ValueFormat::Avro
            || (self.key_format == KeyFormat::Avro && !self.key.is_empty())
        {
            sluice_formats::avro::check_record_name(&self.record_name)?;
        }
        if self.transactional_id.is_some() && !self.exactly_once {
            return Err(Error::config("only applies with exactly_once = true")
                .with_field("transactional_id"));
        }
        if self.delivery_timeout < Duration::from_secs(1) {
            return Err(Error::config("must be at least 1s").with_field("delivery_timeout"));
        }
        check_options(&self.options, OWNED_PRODUCER)
    }

    /// The registry subject of the values for `topic`.
    pub fn subject_for(&self, topic: &str) -> String {
        self.subject.replace("{topic}", topic)
    }

    /// The registry subject of the keys for `topic`.
    pub fn key_subject_for(&self, topic: &str) -> String {
        self.key_subject.replace("{topic}", topic)
    }

    /// The transactional id for `pipeline`'s sink `sink`.
    pub fn txn_id(&self, pipeline: &str, sink: &str) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{pipeline}-{sink}"))
    }

    /// The largest message librdkafka sends: `options."message.max.bytes"`, or its
    /// default (1,000,000).
    pub fn max_message_bytes(&self) -> Result<usize> {
        match self.options.get("message.max.bytes") {
            None => Ok(1_000_000),
            Some(v) => v.expose().trim().parse().map_err(|_| {
                Error::config(format!(
                    "options.\"message.max.bytes\" = \"{}\" is not a number of bytes",
                    v.expose()
                ))
                .with_field("options.message.max.bytes")
            }),
        }
    }

    /// The librdkafka producer properties.
    pub fn client_config(&self, pipeline: &str, sink: &str) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("compression.codec", self.compression.as_str())
            .set("partitioner", self.partitioner.as_str())
            .set("linger.ms", "5")
            // queue at most 64 MB for delivery (librdkafka's default is 1 GB)
            .set("queue.buffering.max.kbytes", "65536")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            )
            .set("client.id", format!("sluice-{pipeline}-{sink}"));
        if self.exactly_once {
            c.set("transactional.id", self.txn_id(pipeline, sink)).set(
                "transaction.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            );
        }
        for (k, v) in &self.options {
            c.set(k, v.expose());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(extra: serde_json::Value) -> Result<KafkaSinkConfig> {
        let mut v = serde_json::json!({"bootstrap_servers": "b:9092", "topic": "orders"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let c: KafkaSinkConfig = serde_json::from_value(v).unwrap();
        c.validate().map(|_| c)
    }

    #[test]
    fn avro_needs_a_registry_and_a_registry_needs_avro() {
        let err = sink(serde_json::json!({"format": "avro"})).unwrap_err();
        assert_eq!(err.field(), Some("schema_registry"));
        assert!(err.to_string().contains("needs schema_registry"), "{err}");
        let err =
            sink(serde_json::json!({"schema_registry": {"url": "http://r:8081"}})).unwrap_err();
        assert!(
            err.to_string()
                .contains("only applies with format = \"avro\" or key_format = \"avro\""),
            "{err}"
        );
        let err = sink(serde_json::json!({"key_format": "avro"})).unwrap_err();
        assert!(
            err.to_string()
                .contains("key_format = \"avro\" needs schema_registry"),
            "{err}"
        );
        let c = sink(serde_json::json!({"key_format": "avro", "key": ["a", "b"],
            "schema_registry": {"url": "http://r:8081"}}))
        .unwrap();
        assert_eq!(c.key_subject_for("orders"), "orders-key");
        let err = sink(serde_json::json!({"format": "avro", "schema_registry": {"url": "r:8081"}}))
            .unwrap_err();
        assert_eq!(err.field(), Some("schema_registry.url"));
        let c =
            sink(serde_json::json!({"format": "avro", "schema_registry": {"url": "https://r"}}))
                .unwrap();
        assert_eq!(c.subject_for("orders"), "orders-value");
        assert_eq!(c.record_name, "Record");
    }
}
