//! The replication connection: the pipeline's `url` as the replication client's
//! settings, starting the stream, and its errors as the API's error kinds.
//!
//! The client is `pgwire-replication` without its TLS feature (which would build
//! aws-lc): a URL that requires TLS (`sslmode=require`, `verify-ca`, `verify-full`) is
//! refused by name until the replication connection speaks TLS over ring.

use std::time::Duration;

use connector_api::{Error, ErrorKind, Result, Secret};
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::conn::quote;

/// How long connecting and starting the stream may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to stream.
pub struct Stream<'a> {
    /// The pipeline's `url`.
    pub url: &'a Secret,
    /// Replication slot.
    pub slot: &'a str,
    /// Publication.
    pub publication: &'a str,
    /// Start (and already confirmed) position.
    pub start: u64,
    /// How often the confirmed position is reported while nothing else is sent.
    pub status_interval: Duration,
    /// Events buffered between the connection and the source.
    pub buffer: usize,
    /// `application_name` of the session.
    pub name: &'a str,
}

/// The percent-decoded password of a `postgres://user:password@host/db` URL, else
/// `PGPASSWORD`.
fn password(url: &str) -> String {
    let from_url = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| percent_decode(password));
    from_url
        .or_else(|| std::env::var("PGPASSWORD").ok())
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
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

/// The replication client's settings for `stream`.
fn config(stream: &Stream<'_>) -> Result<ReplicationConfig> {
    let url = stream.url.expose();
    let options: PgConnectOptions = url.parse().map_err(|e| {
        Error::config("url is not a valid PostgreSQL URL")
            .with_source(e)
            .with_field("url")
    })?;
    if matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Err(Error::config(
            "mode = \"cdc\" streams over a replication connection without TLS for now; this url requires TLS \
             (sslmode), so connect over a trusted network with sslmode=prefer or disable",
        )
        .with_field("url"));
    }
    let host = match options.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => options.get_host().to_string(),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    Ok(ReplicationConfig::new(
        host,
        options.get_username(),
        password(url),
        database,
        stream.slot,
        quote(stream.publication),
    )
    .with_port(options.get_port())
    .with_start_lsn(Lsn::from_u64(stream.start))
    .with_status_interval(stream.status_interval)
    .with_wakeup_interval(stream.status_interval)
    .with_buffer_size(stream.buffer.max(1))
    .with_application_name(stream.name)
    .with_options(SESSION))
}

/// The settings a change's text output is read with (value/text.rs), pinned for the
/// session whatever the server's, database's or role's defaults: ISO dates, hex
/// bytea, floats written to round-trip exactly, intervals as PostgreSQL writes them.
const SESSION: &str =
    "-c DateStyle=ISO -c bytea_output=hex -c extra_float_digits=3 -c IntervalStyle=postgres";

/// `work` on the replication connection, bounded by [`START_TIMEOUT`]; its errors
/// named by `what`.
async fn bounded<T>(
    what: &str,
    work: impl std::future::Future<Output = std::result::Result<T, PgWireError>>,
) -> Result<T> {
    tokio::time::timeout(START_TIMEOUT, work)
        .await
        .map_err(|_| {
            Error::connect(format!(
                "{what}: no answer within {}s",
                START_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| wire_error(what, e))
}

/// Connects and starts streaming from `stream.start`.
pub async fn start(stream: &Stream<'_>) -> Result<ReplicationClient> {
    let config = config(stream)?;
    let what = format!("start streaming from replication slot \"{}\"", stream.slot);
    bounded(&what, async {
        let mut client = ReplicationClient::connect(config).await?;
        client.wait_started().await?;
        Ok(client)
    })
    .await
}

/// A slot created on a replication connection, with the snapshot it exported: the
/// table as of the slot's consistent point. The snapshot stays importable while the
/// connection stays idle, so the connection is kept until the snapshot is read, then
/// streams from that point ([`start_gated`]).
pub struct Exported {
    /// The connection, not streaming yet.
    pub client: ReplicationClient,
    /// The slot's consistent point.
    pub lsn: u64,
    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

/// Creates `stream.slot` with an exported snapshot (`CREATE_REPLICATION_SLOT ...
/// LOGICAL pgoutput (SNAPSHOT 'export')`).
pub async fn create_exported(stream: &Stream<'_>) -> Result<Exported> {
    let config = config(stream)?;
    let what = format!("create replication slot \"{}\"", stream.slot);
    let (client, rows) = bounded(&what, async {
        let mut client = ReplicationClient::connect_gated(config).await?;
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                stream.slot
            ))
            .await?;
        Ok((client, rows))
    })
    .await?;
    let field = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i).cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    match (field(1).as_deref().and_then(super::parse_lsn), field(2)) {
        (Some(lsn), Some(snapshot)) => Ok(Exported {
            client,
            lsn,
            snapshot,
        }),
        _ => Err(Error::internal(format!(
            "{what}: the server's answer has no consistent point and snapshot"
        ))),
    }
}

/// Starts streaming on a connection made by [`create_exported`], from the slot's
/// position; the exported snapshot ends with it.
pub async fn start_gated(client: &mut ReplicationClient, slot: &str) -> Result<()> {
    let what = format!("start streaming from replication slot \"{slot}\"");
    bounded(&what, async {
        client.start().await?;
        client.wait_started().await
    })
    .await
}

/// Maps an error of the replication connection to the API's kinds, keeping the
/// server's message; the way out where there is one.
pub fn wire_error(context: &str, err: PgWireError) -> Error {
    let text = err.to_string();
    let kind = match &err {
        PgWireError::Io(_) | PgWireError::Task(_) => ErrorKind::Connect,
        PgWireError::Auth(_) => ErrorKind::Auth,
        PgWireError::Server(m) if m.contains("SQLSTATE 28") => ErrorKind::Auth,
        PgWireError::Server(m)
            if m.contains("SQLSTATE 57P")
                || m.contains("SQLSTATE 08")
                || m.contains("SQLSTATE 53") =>
        {
            ErrorKind::Connect
        }
        PgWireError::Server(m) if m.contains("SQLSTATE 42704") => ErrorKind::NotFound,
        PgWireError::Server(m) if m.contains("SQLSTATE 55006") => ErrorKind::Transient,
        _ => ErrorKind::Internal,
    };
    let hint = if text.contains("no pg_hba.conf entry for replication") {
        " (a replication connection needs its own pg_hba.conf line: host replication <user> <address> <method>)"
    } else if text.contains("must be superuser or replication role")
        || text.contains("permission denied to start WAL sender")
    {
        " (the user needs the REPLICATION attribute: ALTER ROLE <user> REPLICATION)"
    } else if text.contains("can no longer get changes") || text.contains("has been invalidated") {
        " (the slot was invalidated; re-snapshot: `sluice offsets reset` and clear the target)"
    } else {
        ""
    };
    Error::new(kind, format!("{context}: {text}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_comes_from_the_url_percent_decoded() {
        assert_eq!(password("postgres://u:p%40ss@h:5432/db?x=1"), "p@ss");
        assert_eq!(password("postgres://u:a:b@h/db"), "a:b");
    }

    #[test]
    fn a_url_that_requires_tls_is_refused_by_name() {
        let url = Secret::new("postgres://u@h/db?sslmode=require".to_string());
        let stream = Stream {
            url: &url,
            slot: "s",
            publication: "p",
            start: 0,
            status_interval: Duration::from_secs(1),
            buffer: 8,
            name: "t",
        };
        let e = config(&stream).unwrap_err();
        assert_eq!(e.field(), Some("url"));
        assert!(e.message().contains("sslmode"), "{e}");
    }
}
