//! Options of the NATS source and sink.

use std::time::Duration;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{redacted_url, Error, FieldSpec, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_formats::messages::{self, MessageField, PayloadFormat};
use sluice_formats::registry::RegistryConfig;
use sluice_formats::JsonOptions;

/// Where a JetStream source starts when the pipeline has no checkpoint yet; with one,
/// it always resumes just after the checkpoint's stream sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The first message the stream still holds.
    #[default]
    All,
    /// Only messages stored after the source first opens (that position is stored
    /// at the first checkpoint; a run stopped before it starts at the end again).
    New,
    /// The stream sequence `start_sequence`.
    Sequence,
    /// The first message stored at or after `start_time`.
    Time,
}

/// Options of `connector = "nats"` as a source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// Server URL, `nats://[user:password@]host:4222`; several, comma-separated, for a
    /// cluster.
    pub url: Secret,
    /// Read a JetStream stream (the default), acknowledged after each checkpoint; false:
    /// subscribe to core NATS `subjects`, at most once (what is published while the
    /// pipeline is down, or read and not yet written when it stops, is lost).
    #[serde(default = "yes")]
    pub jetstream: bool,
    /// The JetStream stream to read (with `jetstream`).
    pub stream: Option<String>,
    /// Subjects (wildcards `*` and `>` allowed): with `jetstream`, only messages of
    /// these subjects of the stream (empty: all of them); without, the subjects to
    /// subscribe to.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The durable consumer's name. Absent: `sluice-PIPELINE` (characters NATS does
    /// not take in a name become `_`). The source places it at the pipeline's
    /// checkpoint each time it opens.
    pub durable: Option<String>,
    /// Where to start without a checkpoint: `all` (default), `new`, `sequence` (with
    /// `start_sequence`) or `time` (with `start_time`).
    #[serde(default)]
    pub start: Start,
    /// With `start = "sequence"`: the stream sequence of the first message to read.
    pub start_sequence: Option<u64>,
    /// With `start = "time"`: RFC 3339 time of the first message to read.
    pub start_time: Option<String>,
    /// Stop once the stream's messages as of opening are read (a backfill or a test),
    /// instead of waiting for new ones.
    #[serde(default)]
    pub bounded: bool,
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
    /// Metadata columns to add: `topic` (`_topic`: the subject), `headers`
    /// (`_headers`), `offset` (`_offset`: the stream sequence), `timestamp`
    /// (`_timestamp`: when the stream stored the message).
    #[serde(default)]
    pub metadata: Vec<MessageField>,
    /// How long the server waits for a read message's acknowledgement before it sends
    /// it again; messages are acknowledged at each checkpoint, so keep it well above
    /// `[checkpoint] interval`. A message sent again that was already read is dropped.
    #[serde(default = "ack_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ack_wait: Duration,
    /// Messages read and not yet acknowledged at most: past it the server sends no
    /// more until the next checkpoint acknowledges them. Keep it above the records
    /// read between two checkpoints.
    #[serde(default = "max_ack_pending")]
    pub max_ack_pending: i64,
}

fn yes() -> bool {
    true
}

fn ack_wait() -> Duration {
    Duration::from_secs(300)
}

fn max_ack_pending() -> i64 {
    1_000_000
}

impl NatsSourceConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        match (self.jetstream, &self.stream) {
            (true, None) => {
                return Err(Error::config("jetstream needs the stream to read").with_field("stream"))
            }
            (false, Some(_)) => {
                return Err(Error::config(
                    "stream is read with jetstream = true; core NATS subscribes to subjects",
                )
                .with_field("stream"))
            }
            (false, None) if self.subjects.is_empty() => {
                return Err(
                    Error::config("core NATS needs the subjects to subscribe to")
                        .with_field("subjects"),
                )
            }
            _ => {}
        }
        match self.start {
            Start::Sequence if self.start_sequence.unwrap_or(0) == 0 => {
                return Err(Error::config(
                    "start = \"sequence\" needs start_sequence, a stream sequence from 1",
                )
                .with_field("start_sequence"))
            }
            Start::Time => {
                self.start_time_nanos()?;
            }
            _ => {}
        }
        if self.metadata.contains(&MessageField::Id) {
            return Err(Error::config(
                "metadata \"id\": NATS messages are numbered; ask for \"offset\" (the stream sequence)",
            )
            .with_field("metadata"));
        }
        messages::check_schema(self.format, &self.schema)?;
        messages::check_registry(self.format, self.schema_registry.as_ref())?;
        if self.max_ack_pending < 1 {
            return Err(
                Error::config("max_ack_pending must be at least 1").with_field("max_ack_pending")
            );
        }
        Ok(())
    }

    /// `start_time` in nanoseconds since 1970.
    pub fn start_time_nanos(&self) -> Result<i128> {
        let text = self.start_time.as_deref().ok_or_else(|| {
            Error::config("start = \"time\" needs start_time (RFC 3339)").with_field("start_time")
        })?;
        let t = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
            Error::config(format!(
                "start_time \"{text}\" is not an RFC 3339 time: {e}"
            ))
            .with_field("start_time")
        })?;
        Ok(i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos()))
    }

    /// The declared JSON columns, when there are any.
    pub fn declared_schema(&self) -> Result<Option<SchemaRef>> {
        messages::declared_schema(&self.schema)
    }

    /// Every record's schema when the config tells it: declared JSON columns and no
    /// metadata columns.
    pub fn record_schema(&self) -> Option<SchemaRef> {
        messages::record_schema(&self.schema, &self.metadata)
    }

    /// The durable consumer's name for `pipeline`.
    pub fn durable_name(&self, pipeline: &str) -> String {
        let name = self
            .durable
            .clone()
            .unwrap_or_else(|| format!("sluice-{pipeline}"));
        name.chars()
            .map(|c| match c {
                '.' | '*' | '>' | '/' | '\\' => '_',
                c if c.is_whitespace() || c.is_control() => '_',
                c => c,
            })
            .collect()
    }
}

/// Where a NATS sink's message ids come from (`msg_id`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MsgId {
    /// No id: at least once.
    #[default]
    None,
    /// The record's ordinal in the pipeline, for a source that replays in order.
    Ordinal,
}

/// Options of `connector = "nats"` as a sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Server URL, `nats://[user:password@]host:4222`; several, comma-separated, for a
    /// cluster.
    pub url: Secret,
    /// Publish to JetStream (the default): each message acknowledged by the stream
    /// that stores it, and de-duplicated by its `Nats-Msg-Id` within the stream's
    /// duplicate window; false: core NATS, at most once.
    #[serde(default = "yes")]
    pub jetstream: bool,
    /// The subject to publish to (the default when `subject_column` is set and null).
    pub subject: Option<String>,
    /// Publish each record to the subject in this column (e.g. `_topic`).
    pub subject_column: Option<String>,
    /// Payload format: `json` (default: an object of every column but the metadata
    /// and routing columns), `string` or `bytes` (the one column `value`, or the only
    /// column), or `avro` (the payload columns as an Avro record in the Confluent wire
    /// format, its schema registered in `schema_registry`).
    #[serde(default)]
    pub format: PayloadFormat,
    /// The schema registry of `format = "avro"`: `{ url = "http://registry:8081" }`.
    pub schema_registry: Option<RegistryConfig>,
    /// The registry subject the Avro schema is registered under; default
    /// `{subject}-value` (needed with `subject_column`).
    pub schema_subject: Option<String>,
    /// With `format = "avro"`: the name of the Avro record written (namespace
    /// `sluice`; letters, digits and `_`).
    #[serde(default = "messages::default_record_name")]
    pub record_name: String,
    /// JSON options (with `format = "json"`).
    #[serde(default)]
    pub json: JsonOptions,
    /// Message headers from this `list<struct<key, value>>` column (`_headers`, as the
    /// `nats` and `kafka` sources write it).
    pub headers_column: Option<String>,
    /// `Nats-Msg-Id` of each message, which the stream de-duplicates by within its
    /// duplicate window (two minutes unless the stream says otherwise): `none` (the
    /// default: after a crash, records since the last checkpoint may be stored
    /// twice) or `ordinal` (the record's ordinal in the pipeline, so a replay after a
    /// crash is stored once). `ordinal` is only for a source whose replay from a
    /// checkpoint gives the same records in the same order (files, S3 objects, a
    /// table, a NATS stream, one Kafka partition): a replay in another order would
    /// give a record an id another one had, and the stream would drop it.
    #[serde(default)]
    pub msg_id: MsgId,
    /// `Nats-Msg-Id` from this column (a key, `_offset`) instead: records with the
    /// same value within the stream's duplicate window are stored once.
    pub msg_id_column: Option<String>,
    /// Write the reserved `_`-columns (`_topic`, `_offset`, ...) into JSON and Avro payloads
    /// too.
    #[serde(default)]
    pub include_metadata: bool,
}

impl NatsSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        check_url(&self.url)?;
        if self.subject.is_none() && self.subject_column.is_none() {
            return Err(Error::config("set subject, or subject_column").with_field("subject"));
        }
        if let Some(s) = &self.subject {
            if s.is_empty() || s.contains(['*', '>', ' ']) {
                return Err(Error::config(format!(
                    "subject \"{s}\": a subject to publish to has no wildcard or space"
                ))
                .with_field("subject"));
            }
        }
        messages::check_avro_sink(
            self.format,
            self.schema_registry.as_ref(),
            self.schema_subject.as_deref(),
            self.destination(),
            &self.record_name,
        )?;
        if !self.jetstream && (self.msg_id_column.is_some() || self.msg_id == MsgId::Ordinal) {
            return Err(Error::config(
                "message ids de-duplicate in a JetStream stream: msg_id and msg_id_column need jetstream = true",
            )
            .with_field("msg_id_column"));
        }
        Ok(())
    }

    /// The subject every record is published to, when no column chooses it.
    pub fn destination(&self) -> Option<&str> {
        match self.subject_column {
            Some(_) => None,
            None => self.subject.as_deref(),
        }
    }
}

fn check_url(url: &Secret) -> Result<()> {
    for one in url.expose().split(',') {
        let one = one.trim();
        let scheme = one.split("://").next().unwrap_or_default();
        if !one.contains("://") || !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
            return Err(Error::config(format!(
                "url \"{}\": expected nats://host:port",
                redacted_url(one)
            ))
            .with_field("url"));
        }
    }
    Ok(())
}
