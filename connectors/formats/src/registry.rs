//! A Confluent Schema Registry client (the REST API that Confluent's registry, Karapace,
//! Apicurio and Redpanda serve): register a schema under a subject, fetch a schema by
//! id, fetch a subject's latest schema. Plain HTTP or HTTPS, optional basic auth.

use std::time::Duration;

use base64::Engine as _;
use connector_api::{Error, ErrorKind, Result, Secret};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A Confluent-compatible Schema Registry (Confluent, Karapace, Apicurio, Redpanda),
/// for `format = "avro"`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://localhost:8081` or `https://psrc-xyz.confluent.cloud`.
    pub url: String,
    /// Basic auth user (Confluent Cloud: the API key).
    pub username: Option<String>,
    /// Basic auth password (Confluent Cloud: the API secret); may be a secret reference.
    pub password: Option<Secret>,
    /// How long one request may take before it is retried.
    #[serde(default = "registry_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn registry_timeout() -> Duration {
    Duration::from_secs(10)
}

impl RegistryConfig {
    /// Checks the URL's scheme and that a password comes with a username.
    pub fn validate(&self) -> Result<()> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(Error::config(format!(
                "\"{}\" is not an http:// or https:// URL",
                self.url
            ))
            .with_field("schema_registry.url"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(
                Error::config("a password needs a username").with_field("schema_registry.username")
            );
        }
        Ok(())
    }
}

/// Checks that Avro and `schema_registry` come together: `needed_by` is the option
/// asking for Avro (`format = "avro"`), None when none does; `applies_with` names the
/// options a registry is for, in the error when one is set without them.
pub fn check_avro(
    needed_by: Option<&str>,
    applies_with: &str,
    registry: Option<&RegistryConfig>,
) -> Result<()> {
    match (needed_by, registry) {
        (Some(what), None) => Err(Error::config(format!(
            "{what} needs schema_registry = {{ url = \"http://...\" }}"
        ))
        .with_field("schema_registry")),
        (Some(_), Some(r)) => r.validate(),
        (None, Some(_)) => Err(Error::config(format!("only applies with {applies_with}"))
            .with_field("schema_registry")),
        (None, None) => Ok(()),
    }
}

/// `sluice check` of a connector with `schema_registry`: the registry answers and
/// takes the credentials (nothing to check without one).
pub async fn check(registry: Option<&RegistryConfig>) -> Result<()> {
    match registry {
        Some(r) => Registry::new(r)?.check().await,
        None => Ok(()),
    }
}

/// A client of one registry.
pub struct Registry {
    base: String,
    auth: Option<String>,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Percent-encodes a path segment (subjects are usually `topic-value`, but may hold
/// anything).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Registry {
    /// A client of the registry `config` names (HTTP or HTTPS with the system's root
    /// certificates, basic auth when a username is given); connects on first use.
    pub fn new(config: &RegistryConfig) -> Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| {
                Error::config(format!("schema registry: no TLS root certificates: {e}"))
                    .with_field("schema_registry.url")
            })?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let auth = config.username.as_ref().map(|user| {
            let password = config.password.as_ref().map_or("", |p| p.expose());
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Ok(Registry {
            base: config.url.trim_end_matches('/').to_string(),
            auth,
            timeout: config.timeout,
            client,
        })
    }

    /// One request; the status and the JSON body (Null when empty or not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", CONTENT_TYPE);
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", CONTENT_TYPE);
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| Error::config(format!("schema registry: bad url \"{url}\": {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                Error::connect(format!("schema registry {}: {}", self.base, chain(&e)))
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::connect(format!("schema registry {}: {e}", self.base)))?
                .to_bytes();
            Ok::<_, Error>((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        };
        let (status, value) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Error::transient(format!(
                    "schema registry {}: no answer within {:?}",
                    self.base, self.timeout
                ))
            })??;
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Error::new(
                ErrorKind::Auth,
                format!(
                    "schema registry {}: {status}: {}",
                    self.base,
                    message(&value)
                ),
            )),
            s if s.is_server_error() => Err(Error::transient(format!(
                "schema registry {}: {status}: {}",
                self.base,
                message(&value)
            ))),
            _ => Ok((status, value)),
        }
    }

    /// The schema with `id`: Ok(None) when the registry does not know it.
    pub async fn schema(&self, id: u32) -> Result<Option<String>> {
        let (status, v) = self
            .call(Method::GET, &format!("/schemas/ids/{id}"), None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        schema_text(status, &v, &format!("schema id {id}")).map(Some)
    }

    /// The latest schema of `subject`: Ok(None) when the subject does not exist.
    pub async fn latest(&self, subject: &str) -> Result<Option<String>> {
        let path = format!("/subjects/{}/versions/latest", segment(subject));
        let (status, v) = self.call(Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        schema_text(status, &v, &format!("subject \"{subject}\"")).map(Some)
    }

    /// Registers `schema` (Avro JSON) under `subject` and returns its id; registering a
    /// schema the subject has already returns the id it has.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let path = format!("/subjects/{}/versions", segment(subject));
        let (status, v) = self
            .call(Method::POST, &path, Some(json!({"schema": schema})))
            .await?;
        match status {
            StatusCode::OK => v
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    Error::internal(format!(
                        "schema registry {}: answer without an id: {v}",
                        self.base
                    ))
                }),
            StatusCode::CONFLICT => Err(Error::schema(format!(
                "schema registry {}: subject \"{subject}\" refused the schema as incompatible: {}",
                self.base,
                message(&v)
            ))),
            StatusCode::UNPROCESSABLE_ENTITY => Err(Error::schema(format!(
                "schema registry {}: subject \"{subject}\" refused the schema as invalid: {}",
                self.base,
                message(&v)
            ))),
            s => Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "schema registry {}: registering under \"{subject}\": {s}: {}",
                    self.base,
                    message(&v)
                ),
            )),
        }
    }

    /// Checks the registry answers (and takes the credentials).
    pub async fn check(&self) -> Result<()> {
        let (status, v) = self.call(Method::GET, "/subjects", None).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::connect(format!(
                "schema registry {}: GET /subjects: {status}: {}",
                self.base,
                message(&v)
            )))
        }
    }
}

/// An error and its causes, each said once ("client error (Connect): tcp connect
/// error: Connection refused (os error 111)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

fn message(v: &Value) -> String {
    v.get("message")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}

fn schema_text(status: StatusCode, v: &Value, what: &str) -> Result<String> {
    if !status.is_success() {
        return Err(Error::new(
            ErrorKind::Internal,
            format!("schema registry: {what}: {status}: {}", message(v)),
        ));
    }
    match v.get("schemaType").and_then(Value::as_str) {
        None | Some("AVRO") => {}
        Some(other) => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("schema registry: {what} is a {other} schema, not Avro"),
            ))
        }
    }
    v.get("schema")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| Error::internal(format!("schema registry: {what}: answer without a schema")))
}
