//! Options of the Redis source and sink.

use std::time::Duration;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{redacted_url, Error, FieldSpec, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_formats::messages::{self, MessageField, PayloadFormat};
use sluice_formats::registry::RegistryConfig;
use sluice_formats::JsonOptions;

/// How a stream entry becomes a record, and a record an entry or a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryFormat {
    /// A JSON object in the field `body_field`; its fields are columns (declared in
    /// `schema` or inferred from the first entries).
    #[default]
    Json,
    /// The field `body_field` as UTF-8 text, in one column `value`.
    String,
    /// The field `body_field` as raw bytes, in one column `value`.
    Bytes,
    /// The field `body_field` as an Avro record in the Confluent wire format (a magic
    /// byte, the writer schema's id in `schema_registry`, the record); its fields are
    /// columns.
    Avro,
    /// Every field of the entry is a column (`XADD s * id 7 name ada`): text, or the
    /// type `schema` declares (a value that does not parse is a dead letter). Written
    /// back the same way: each non-null column a field, in its text form.
    Fields,
}

impl EntryFormat {
    /// The shared payload format; `fields`, which has none, counts as the default
    /// (JSON), so a registry beside it is refused as beside JSON.
    pub fn payload_format(self) -> PayloadFormat {
        self.payload().unwrap_or_default()
    }

    /// The shared payload format, for the formats that read one field.
    pub fn payload(self) -> Option<PayloadFormat> {
        match self {
            EntryFormat::Json => Some(PayloadFormat::Json),
            EntryFormat::String => Some(PayloadFormat::String),
            EntryFormat::Bytes => Some(PayloadFormat::Bytes),
            EntryFormat::Avro => Some(PayloadFormat::Avro),
            EntryFormat::Fields => None,
        }
    }
}

/// Where a new consumer group starts reading when the pipeline has no checkpoint yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The first entry the stream holds.
    #[default]
    All,
    /// Only entries added after the group is created.
    New,
}

/// Options of `connector = "redis"` as a source: one stream, read by a consumer group.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSourceConfig {
    /// Server URL, `redis://[user:password@]host:6379[/db]`.
    pub url: Secret,
    /// The stream key to read.
    pub stream: String,
    /// The consumer group (created when missing, with the stream). Absent:
    /// `sluice-PIPELINE`.
    pub group: Option<String>,
    /// This runtime's consumer name in the group. Absent: `sluice-PIPELINE`. Runtimes
    /// that share a group each need their own, kept across restarts (the entries a
    /// consumer read and did not acknowledge are read again by the same name).
    pub consumer: Option<String>,
    /// Where the pipeline starts without a checkpoint: `all` (default) or `new`. A
    /// group this source creates starts there, and so does a group the pipeline owns
    /// (no other consumer active): a checkpoint always wins, and without one the group
    /// is placed here.
    #[serde(default)]
    pub start: Start,
    /// Entry format: `json` (default), `string`, `bytes` or `avro` (of the field
    /// `body_field`), or `fields` (every field a column).
    #[serde(default)]
    pub format: EntryFormat,
    /// The field holding the payload, with `json`, `string`, `bytes` and `avro`.
    #[serde(default = "body")]
    pub body_field: String,
    /// The schema registry Avro payloads' writer schemas are fetched from
    /// (`format = "avro"`): `{ url = "http://registry:8081" }`.
    pub schema_registry: Option<RegistryConfig>,
    /// Declared columns: of the JSON payload, or of the fields (`format = "fields"`);
    /// absent: inferred from the first entries (`fields`: every field as text).
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
    /// Metadata columns to add: `topic` (`_topic`: the stream key), `headers`
    /// (`_headers`: the entry's other fields), `id` (`_id`: the entry id, text) and
    /// `timestamp` (`_timestamp`: the time in the entry id).
    #[serde(default)]
    pub metadata: Vec<MessageField>,
    /// Entries another consumer of the group read and left unacknowledged this long
    /// (it died) are claimed and read by this one (`XAUTOCLAIM`).
    #[serde(default = "claim_idle", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub claim_idle: Duration,
    /// Stop once the entries the stream holds when the source opens are read (a
    /// backfill or a test), instead of waiting for new ones.
    #[serde(default)]
    pub bounded: bool,
}

fn body() -> String {
    "body".into()
}

fn claim_idle() -> Duration {
    Duration::from_secs(60)
}

impl RedisSourceConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        if self.stream.is_empty() {
            return Err(Error::config("stream is empty").with_field("stream"));
        }
        if self.metadata.contains(&MessageField::Offset) {
            return Err(Error::config(
                "metadata \"offset\": a Redis entry id is not a number; ask for \"id\" (the entry id as text)",
            )
            .with_field("metadata"));
        }
        if matches!(
            self.format,
            EntryFormat::String | EntryFormat::Bytes | EntryFormat::Avro
        ) && !self.schema.is_empty()
        {
            return Err(Error::config(
                "schema declares columns of format = \"json\" or \"fields\"",
            )
            .with_field("schema"));
        }
        messages::check_registry(self.format.payload_format(), self.schema_registry.as_ref())?;
        if let (EntryFormat::Fields, Some(schema)) = (self.format, self.declared_schema()?) {
            if let Some(f) = schema.fields().iter().find(|f| f.data_type().is_nested()) {
                return Err(Error::config(format!(
                    "schema: column \"{}\" is {}; entry fields are text, read into plain types only: use format = \"json\" for nested columns",
                    f.name(),
                    connector_api::type_name(f.data_type())
                ))
                .with_field("schema"));
            }
        }
        Ok(())
    }

    /// The declared columns, when there are any.
    pub fn declared_schema(&self) -> Result<Option<SchemaRef>> {
        messages::declared_schema(&self.schema)
    }

    /// Every record's schema when the config tells it: declared columns and no
    /// metadata columns.
    pub fn record_schema(&self) -> Option<SchemaRef> {
        messages::record_schema(&self.schema, &self.metadata)
    }

    /// The group's name for `pipeline`.
    pub fn group_name(&self, pipeline: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("sluice-{pipeline}"))
    }

    /// This consumer's name for `pipeline`.
    pub fn consumer_name(&self, pipeline: &str) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("sluice-{pipeline}"))
    }
}

/// What the sink writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SinkMode {
    /// Each record an entry of a stream (`XADD`).
    #[default]
    Stream,
    /// Each record a hash at its key (`DEL` then `HSET` of every non-null column);
    /// change records (`_op`) delete by key.
    Hash,
    /// Each record a string value at its key (`SET`, the payload in `format`); change
    /// records (`_op`) delete by key.
    String,
}

/// Options of `connector = "redis"` as a sink. What one checkpoint interval wrote is
/// applied in one transaction (`MULTI`/`EXEC`) together with the pipeline's offsets,
/// so a restart resumes exactly after what the server holds: exactly once.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// Server URL, `redis://[user:password@]host:6379[/db]`.
    pub url: Secret,
    /// `stream` (default: `XADD`), `hash` (`HSET` by key) or `string` (`SET` by key).
    #[serde(default)]
    pub mode: SinkMode,
    /// With `mode = "stream"`: the stream key to add to.
    pub stream: Option<String>,
    /// With `mode = "stream"`: trim the stream to about this many entries
    /// (`MAXLEN ~`).
    pub maxlen: Option<u64>,
    /// With `hash` and `string`: the columns whose values, joined by `:`, make the key.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// Put before every key (`user:`).
    #[serde(default)]
    pub key_prefix: String,
    /// Payload format of `stream` and `string`: `json` (default: an object of every
    /// column), `string` or `bytes` (the column `value`, or the only column), `avro`
    /// (the columns as an Avro record in the Confluent wire format, its schema
    /// registered in `schema_registry`), or, for streams, `fields` (each non-null
    /// column a field). Hashes always hold one field per column.
    #[serde(default)]
    pub format: EntryFormat,
    /// The stream field the payload goes in (`json`, `string`, `bytes`, `avro`).
    #[serde(default = "body")]
    pub body_field: String,
    /// The schema registry of `format = "avro"`: `{ url = "http://registry:8081" }`.
    pub schema_registry: Option<RegistryConfig>,
    /// The registry subject the Avro schema is registered under; default
    /// `{stream}-value` (needed with `mode = "string"`, whose keys vary).
    pub schema_subject: Option<String>,
    /// With `format = "avro"`: the name of the Avro record written (namespace
    /// `sluice`; letters, digits and `_`).
    #[serde(default = "messages::default_record_name")]
    pub record_name: String,
    /// JSON options (with `format = "json"`).
    #[serde(default)]
    pub json: JsonOptions,
    /// Write the reserved `_`-columns (`_topic`, `_id`, ...) too.
    #[serde(default)]
    pub include_metadata: bool,
    /// The key holding the pipeline's offsets, written in the same transaction as the
    /// data. Absent: `sluice:offsets:PIPELINE:SINK`.
    pub offsets_key: Option<String>,
}

impl RedisSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        match self.mode {
            SinkMode::Stream => {
                if self.stream.as_deref().unwrap_or("").is_empty() {
                    return Err(Error::config("mode = \"stream\" needs the stream key")
                        .with_field("stream"));
                }
                if !self.key_columns.is_empty() {
                    return Err(Error::config(
                        "key_columns name the key of a hash or string; a stream entry has none",
                    )
                    .with_field("key_columns"));
                }
            }
            SinkMode::Hash | SinkMode::String => {
                if self.key_columns.is_empty() {
                    return Err(Error::config(
                        "mode = \"hash\" and \"string\" need key_columns, the columns of each record's key",
                    )
                    .with_field("key_columns"));
                }
                if self.stream.is_some() || self.maxlen.is_some() {
                    return Err(Error::config("stream and maxlen are of mode = \"stream\"")
                        .with_field("stream"));
                }
                if self.mode == SinkMode::String && self.format == EntryFormat::Fields {
                    return Err(Error::config(
                        "format = \"fields\" writes stream entries (or use mode = \"hash\")",
                    )
                    .with_field("format"));
                }
            }
        }
        if self.maxlen == Some(0) {
            return Err(Error::config("maxlen must be at least 1").with_field("maxlen"));
        }
        if self.mode == SinkMode::Hash && self.format == EntryFormat::Avro {
            return Err(Error::config(
                "a hash holds one field per column, in its text form: format = \"avro\" writes stream entries or string values",
            )
            .with_field("format"));
        }
        messages::check_avro_sink(
            self.format.payload_format(),
            self.schema_registry.as_ref(),
            self.schema_subject.as_deref(),
            self.destination(),
            &self.record_name,
        )
    }

    /// The key every record goes to, when there is one (the stream), which the
    /// default Avro subject is made of.
    pub fn destination(&self) -> Option<&str> {
        match self.mode {
            SinkMode::Stream => self.stream.as_deref(),
            SinkMode::Hash | SinkMode::String => None,
        }
    }

    /// The key of the offsets for `pipeline` and `sink`.
    pub fn offsets_key(&self, pipeline: &str, sink: &str) -> String {
        self.offsets_key
            .clone()
            .unwrap_or_else(|| format!("sluice:offsets:{pipeline}:{sink}"))
    }
}

fn check_url(url: &Secret) -> Result<()> {
    let u = url.expose();
    match u.split("://").next() {
        Some("redis" | "redis+unix" | "unix") if u.contains("://") => Ok(()),
        Some("rediss") => Err(Error::config(format!(
            "url \"{}\": TLS (rediss://) is not built in; connect through a TLS tunnel, or use redis://",
            redacted_url(u)
        ))
        .with_field("url")),
        _ => Err(Error::config(format!(
            "url \"{}\": expected redis://host:6379",
            redacted_url(u)
        ))
        .with_field("url")),
    }
}
