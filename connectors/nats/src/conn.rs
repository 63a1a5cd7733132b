//! Connecting to NATS, and NATS errors as classified errors naming the server.

use std::time::Duration;

use async_nats::{Client, ConnectOptions};
use connector_api::{Error, ErrorKind, Secret};

use connector_api::redacted_url;

/// A client of the servers in `url`, named `name` (seen in the server's connection
/// list). Fails at once, naming the servers, when none answers; after that the client
/// reconnects by itself while the pipeline waits.
pub async fn connect(url: &Secret, name: &str) -> connector_api::Result<Client> {
    let servers: Vec<&str> = url.expose().split(',').map(str::trim).collect();
    let shown = servers
        .iter()
        .map(|s| redacted_url(s))
        .collect::<Vec<_>>()
        .join(",");
    ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("nats: disconnected; reconnecting")
                }
                async_nats::Event::Connected => tracing::debug!("nats: connected"),
                other => tracing::debug!(event = %other, "nats"),
            }
        })
        .connect(servers.as_slice())
        .await
        .map_err(|e| {
            let kind = match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => ErrorKind::Auth,
                _ => ErrorKind::Connect,
            };
            Error::new(kind, format!("nats: cannot connect to {shown}")).with_source(e)
        })
}

/// A failure of `what`, retried when the connection is the cause.
pub fn nats_error(
    what: impl std::fmt::Display,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    let text = e.to_string();
    let kind = if text.contains("timed out")
        || text.contains("disconnected")
        || text.contains("broken pipe")
        || text.contains("connection")
    {
        ErrorKind::Transient
    } else {
        ErrorKind::Internal
    };
    Error::new(kind, format!("nats: {what}")).with_source(e)
}

/// A failed lookup of stream `name`: not there (naming it), or a failure to ask.
pub fn stream_error(name: &str, e: async_nats::jetstream::context::GetStreamError) -> Error {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match e.kind() {
        GetStreamErrorKind::JetStream(_) => {
            Error::not_found(format!("nats: stream \"{name}\" does not exist"))
                .with_field("stream")
                .with_source(e)
        }
        _ => nats_error(format!("looking up stream \"{name}\""), e),
    }
}
