//! Connecting to Redis, and Redis errors as classified errors naming what failed.

use std::time::Duration;

use connector_api::{Error, ErrorKind, Result, Secret};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

use connector_api::redacted_url;

/// How long one command may take: above the longest blocking read the source asks for
/// and a large transaction's `EXEC`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the server at `url`, named `name` (`CLIENT LIST` shows it). Fails
/// naming the server when it does not answer.
pub async fn connect(url: &Secret, name: &str) -> Result<MultiplexedConnection> {
    let shown = redacted_url(url.expose());
    let client = Client::open(url.expose()).map_err(|e| {
        Error::config(format!(
            "url \"{shown}\": {}",
            e.detail().unwrap_or("not a Redis URL")
        ))
        .with_field("url")
    })?;
    // no concurrency limit: the sink relies on a pipeline being handed to the
    // connection's writer at its first poll, so pipelines go out in order
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| {
            let kind = match e.kind() {
                redis::ErrorKind::AuthenticationFailed => ErrorKind::Auth,
                _ => ErrorKind::Connect,
            };
            Error::new(kind, format!("redis: cannot connect to {shown}")).with_source(e)
        })?;
    let named = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name.replace(|c: char| c.is_whitespace(), "-"))
        .query_async::<Value>(&mut con)
        .await;
    if let Err(e) = named {
        tracing::debug!(error = %e, "redis: naming the connection");
    }
    Ok(con)
}

/// A failure of `what`: the run goes back to its last checkpoint when the connection
/// or the server's state is the cause (a restart, a failover, a group deleted under
/// it), waits on a full server, else stops naming the server's answer.
pub fn redis_error(what: impl std::fmt::Display, e: redis::RedisError) -> Error {
    use redis::ServerErrorKind as S;
    let kind = if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        ErrorKind::Aborted
    } else {
        match (e.kind(), e.code()) {
            (redis::ErrorKind::AuthenticationFailed, _) => ErrorKind::Auth,
            (
                redis::ErrorKind::Server(
                    S::BusyLoading | S::TryAgain | S::MasterDown | S::ReadOnly,
                ),
                _,
            )
            | (_, Some("NOGROUP")) => ErrorKind::Aborted,
            (_, Some("OOM")) => ErrorKind::Transient,
            (_, Some("WRONGTYPE")) => ErrorKind::Schema,
            (_, Some("NOPERM")) => ErrorKind::Auth,
            _ => ErrorKind::Internal,
        }
    };
    Error::new(kind, format!("redis: {what}")).with_source(e)
}

/// Runs `cmd`, naming `what` when it fails.
pub async fn query(
    con: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
    what: impl std::fmt::Display,
) -> Result<Value> {
    cmd.query_async::<Value>(con)
        .await
        .map_err(|e| redis_error(what, e))
}

/// The bytes of a reply that is a string.
pub fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// A reply that is a string, as text.
pub fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The items of a reply that is an array (or a RESP3 map, flattened).
pub fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}
