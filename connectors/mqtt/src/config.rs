//! Options of the MQTT source and sink.

use std::time::Duration;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{redacted_url, Error, FieldSpec, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_formats::messages::{self, MessageField, PayloadFormat};
use sluice_formats::registry::RegistryConfig;
use sluice_formats::JsonOptions;

/// Options of `connector = "mqtt"` as a source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Broker URL, `mqtt://[user:password@]host:1883`.
    pub url: Secret,
    /// Topic filters to subscribe to (wildcards `+` and `#` allowed).
    pub topics: Vec<String>,
    /// The client id, which names the broker's session for this pipeline (keep it
    /// across restarts). Absent: `sluice-PIPELINE`.
    pub client_id: Option<String>,
    /// Quality of service: 1 (default: each message acknowledged after the checkpoint
    /// that holds it, the broker sending again what was not), or 0 (at most once).
    #[serde(default = "one")]
    pub qos: u8,
    /// How long the broker keeps the session (subscriptions and the messages that
    /// arrive for it) while the pipeline is down.
    #[serde(default = "session_expiry", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_expiry: Duration,
    /// Messages delivered and not yet acknowledged at most (MQTT 5's receive
    /// maximum, 1 to 65535). Messages are acknowledged at each checkpoint, so this
    /// caps the records read between two checkpoints.
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
    /// Metadata columns to add: `topic` (`_topic`), `headers` (`_headers`: the user
    /// properties).
    #[serde(default)]
    pub metadata: Vec<MessageField>,
    /// Stop once nothing waits for an acknowledgement and nothing arrived for two
    /// seconds (a backfill or a test), instead of waiting for new messages.
    #[serde(default)]
    pub bounded: bool,
}

fn one() -> u8 {
    1
}

fn session_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn max_in_flight() -> u16 {
    10_000
}

impl MqttSourceConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        parse_url(&self.url)?;
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            return Err(
                Error::config("topics: name at least one topic filter").with_field("topics")
            );
        }
        if self.qos > 1 {
            return Err(Error::config("qos: the source subscribes with 0 or 1").with_field("qos"));
        }
        if self.max_in_flight == 0 {
            return Err(
                Error::config("max_in_flight must be at least 1").with_field("max_in_flight")
            );
        }
        if let Some(m) = self
            .metadata
            .iter()
            .find(|m| !matches!(m, MessageField::Topic | MessageField::Headers))
        {
            return Err(Error::config(format!(
                "metadata {m:?}: MQTT messages carry a topic and user properties (\"topic\", \"headers\")"
            ))
            .with_field("metadata"));
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

/// Options of `connector = "mqtt"` as a sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// Broker URL, `mqtt://[user:password@]host:1883`.
    pub url: Secret,
    /// The topic to publish to (the default when `topic_column` is set and null).
    pub topic: Option<String>,
    /// Publish each record to the topic in this column (e.g. `_topic`).
    pub topic_column: Option<String>,
    /// The client id. Absent: `sluice-PIPELINE-SINK`.
    pub client_id: Option<String>,
    /// Quality of service: 1 (default: flush waits for every PUBACK, at least once),
    /// 2 (flush waits for every PUBCOMP) or 0 (at most once).
    #[serde(default = "one")]
    pub qos: u8,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Payload format: `json` (default), `string`, `bytes` or `avro` (the payload
    /// columns as an Avro record in the Confluent wire format, its schema registered
    /// in `schema_registry`).
    #[serde(default)]
    pub format: PayloadFormat,
    /// The schema registry of `format = "avro"`: `{ url = "http://registry:8081" }`.
    pub schema_registry: Option<RegistryConfig>,
    /// The registry subject the Avro schema is registered under; default
    /// `{topic}-value` (needed with `topic_column`).
    pub schema_subject: Option<String>,
    /// With `format = "avro"`: the name of the Avro record written (namespace
    /// `sluice`; letters, digits and `_`).
    #[serde(default = "messages::default_record_name")]
    pub record_name: String,
    /// JSON options (with `format = "json"`).
    #[serde(default)]
    pub json: JsonOptions,
    /// User properties from this `list<struct<key, value>>` column (`_headers`).
    pub headers_column: Option<String>,
    /// Write the reserved `_`-columns (`_topic`, ...) into JSON and Avro payloads
    /// too.
    #[serde(default)]
    pub include_metadata: bool,
}

impl MqttSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        parse_url(&self.url)?;
        if self.topic.is_none() && self.topic_column.is_none() {
            return Err(Error::config("set topic, or topic_column").with_field("topic"));
        }
        if let Some(t) = &self.topic {
            if t.is_empty() || t.contains(['+', '#']) {
                return Err(Error::config(format!(
                    "topic \"{t}\": a topic to publish to has no wildcard"
                ))
                .with_field("topic"));
            }
        }
        if self.qos > 2 {
            return Err(Error::config("qos is 0, 1 or 2").with_field("qos"));
        }
        messages::check_avro_sink(
            self.format,
            self.schema_registry.as_ref(),
            self.schema_subject.as_deref(),
            self.destination(),
            &self.record_name,
        )
    }

    /// The topic every record is published to, when no column chooses it.
    pub fn destination(&self) -> Option<&str> {
        match self.topic_column {
            Some(_) => None,
            None => self.topic.as_deref(),
        }
    }
}

/// Host, port, user and password of an `mqtt://` URL.
pub struct Address {
    /// Host name or address.
    pub host: String,
    /// Port (1883 when absent).
    pub port: u16,
    /// User and password, when given.
    pub login: Option<(String, String)>,
}

/// Parses `mqtt://[user:password@]host[:port]`.
pub fn parse_url(url: &Secret) -> Result<Address> {
    let u = url.expose();
    let bad =
        |why: &str| Error::config(format!("url \"{}\": {why}", redacted_url(u))).with_field("url");
    let rest = match u.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => rest,
        Some(("mqtts" | "ssl", _)) => {
            return Err(bad(
                "TLS (mqtts://) is not built in; connect through a TLS tunnel, or use mqtt://",
            ))
        }
        _ => return Err(bad("expected mqtt://host:1883")),
    };
    let rest = rest.trim_end_matches('/');
    let (login, hostport) = match rest.rsplit_once('@') {
        Some((login, hp)) => {
            let (user, pass) = login.split_once(':').unwrap_or((login, ""));
            (Some((percent_decoded(user), percent_decoded(pass))), hp)
        }
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad("the port is not a number"))?),
        None => (hostport, 1883),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Address {
        host: host.to_string(),
        port,
        login,
    })
}

/// `text` with `%XX` escapes decoded (a password holding `@` or `:` is written `%40`,
/// `%3A` in a URL).
fn percent_decoded(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        let code = b
            .get(i + 1)
            .copied()
            .and_then(hex)
            .zip(b.get(i + 2).copied().and_then(hex));
        match (b[i], code) {
            (b'%', Some((h, l))) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
