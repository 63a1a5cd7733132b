//! Connecting to RabbitMQ, and AMQP errors as classified errors naming what failed.

use connector_api::{redacted_url, Error, ErrorKind, Result, Secret};
use lapin::types::AMQPValue;
use lapin::{Channel, Connection, ConnectionProperties};

/// A connection to the broker at `url`, named `name` (the management UI shows it),
/// and a channel on it.
pub async fn connect(url: &Secret, name: &str) -> Result<(Connection, Channel)> {
    let shown = redacted_url(url.expose());
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = Connection::connect(url.expose(), props)
        .await
        .map_err(|e| {
            let kind = match classify(&e) {
                ErrorKind::Auth => ErrorKind::Auth,
                _ => ErrorKind::Connect,
            };
            Error::new(kind, format!("rabbitmq: cannot connect to {shown}")).with_source(e)
        })?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| amqp_error("opening a channel", e))?;
    Ok((conn, channel))
}

/// The queue `queue` as the broker has it (a passive declare): not there is an error
/// naming it.
pub async fn declared_queue(channel: &Channel, queue: &str) -> Result<lapin::Queue> {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(format!("queue \"{queue}\""), e).with_field("queue"))
}

/// Closes `channel`, then `conn` (closing the connection under an open channel makes
/// lapin log an error).
/// Each waits at most two seconds: a broker that went away answers neither.
pub async fn disconnect(conn: Option<Connection>, channel: Option<Channel>) {
    let wait = std::time::Duration::from_secs(2);
    if let Some(channel) = channel {
        let _ = tokio::time::timeout(wait, channel.close(200, "bye".into())).await;
    }
    if let Some(conn) = conn {
        let _ = tokio::time::timeout(wait, conn.close(200, "bye".into())).await;
    }
}

fn classify(e: &lapin::Error) -> ErrorKind {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::MissingHeartbeatError
        | K::RuntimeShutdownError(_) => ErrorKind::Aborted,
        K::AuthProviderError(_) => ErrorKind::Auth,
        K::ProtocolError(p) => {
            // the broker's reply code, as AMQP names it
            let text = p.to_string();
            if text.contains("ACCESS_REFUSED") || text.contains("NOT_ALLOWED") {
                ErrorKind::Auth
            } else if text.contains("NOT_FOUND") {
                ErrorKind::NotFound
            } else if text.contains("CONNECTION_FORCED")
                || text.contains("RESOURCE_LOCKED")
                // the broker's acknowledgement timeout (consumer_timeout) closed the
                // channel: the run goes back to its checkpoint
                || text.contains("PRECONDITION_FAILED")
            {
                ErrorKind::Aborted
            } else {
                ErrorKind::Internal
            }
        }
        _ => ErrorKind::Internal,
    }
}

/// A failure of `what`: the run goes back to its checkpoint when the connection or
/// channel was lost (a broker restart), else an error naming the broker's answer.
pub fn amqp_error(what: impl std::fmt::Display, e: lapin::Error) -> Error {
    Error::new(classify(&e), format!("rabbitmq: {what}")).with_source(e)
}

/// An AMQP header value as text.
pub fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Void => String::new(),
        other => format!("{other:?}"),
    }
}

/// An AMQP header value as an integer, when it is one.
pub fn value_int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::Timestamp(t) => i64::try_from(*t).ok(),
        _ => None,
    }
}
