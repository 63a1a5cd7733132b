//! A connection to the broker: the client, and a task that drives its event loop and
//! passes on what the source and sink need to know.

use std::time::Duration;

use connector_api::{Error, ErrorKind, Result, Secret};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, PubCompReason, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::parse_url;

/// What the event loop saw.
#[derive(Debug)]
pub enum Note {
    /// A message arrived.
    Message(Box<Publish>),
    /// A subscription was answered: each filter's granted QoS, or why it failed.
    Subscribed(Vec<std::result::Result<QoS, String>>),
    /// A publish of this client was acknowledged (`PUBACK`, or `PUBCOMP` for QoS 2),
    /// or refused (with why).
    Acked(std::result::Result<(), String>),
    /// The connection is gone: the run goes back to its checkpoint.
    Lost(String),
}

/// A connected client and the task driving it.
pub struct Link {
    /// The client.
    pub client: AsyncClient,
    /// The broker still had this client id's session.
    pub session_present: bool,
    /// What the event loop saw, in order.
    pub notes: mpsc::UnboundedReceiver<Note>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the connection is set up.
pub struct Setup {
    /// The client id.
    pub client_id: String,
    /// Keep the session across connections for this long (None: a clean session).
    pub session: Option<Duration>,
    /// Messages the broker may send unacknowledged.
    pub receive_maximum: u16,
    /// Acknowledge received messages by hand.
    pub manual_acks: bool,
}

/// Connects to the broker at `url` and waits for its `CONNACK`: a broker that does
/// not answer, or refuses the connection, is an error naming it.
pub async fn connect(url: &Secret, setup: Setup) -> Result<Link> {
    let addr = parse_url(url)?;
    let shown = format!("{}:{}", addr.host, addr.port);
    let mut opts = MqttOptions::new(setup.client_id.clone(), addr.host, addr.port);
    if let Some((user, pass)) = addr.login {
        opts.set_credentials(user, pass);
    }
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(setup.session.is_none())
        .set_receive_maximum(Some(setup.receive_maximum))
        .set_manual_acks(setup.manual_acks)
        .set_max_packet_size(Some(256 << 20));
    if let Some(keep) = setup.session {
        opts.set_session_expiry_interval(Some(keep.as_secs().min(u64::from(u32::MAX)) as u32));
    }
    let (client, mut events) = AsyncClient::new(opts, 1024);
    // the first CONNACK, or why there is none
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let session_present = match first {
        Ok(Ok(ack)) if ack.code == ConnectReturnCode::Success => ack.session_present,
        Ok(Ok(ack)) => return Err(refused(&shown, ack.code)),
        Ok(Err(ConnectionError::ConnectionRefused(code))) => return Err(refused(&shown, code)),
        Ok(Err(e)) => {
            return Err(Error::new(
                ErrorKind::Connect,
                format!("mqtt: cannot connect to {shown}"),
            )
            .with_source(e))
        }
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Connect,
                format!("mqtt: {shown} did not answer within 10 s"),
            ))
        }
    };
    let (tx, notes) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let note = match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => Note::Message(Box::new(p)),
                Ok(Event::Incoming(Packet::SubAck(ack))) => Note::Subscribed(
                    ack.return_codes
                        .iter()
                        .map(|c| match c {
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(q) => Ok(*q),
                            other => Err(format!("{other:?}")),
                        })
                        .collect(),
                ),
                Ok(Event::Incoming(Packet::PubAck(ack))) => Note::Acked(match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                    other => Err(format!("{other:?}")),
                }),
                Ok(Event::Incoming(Packet::PubComp(c))) => Note::Acked(match c.reason {
                    PubCompReason::Success => Ok(()),
                    other => Err(format!("{other:?}")),
                }),
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    Note::Lost(format!("the broker disconnected ({:?})", d.reason_code))
                }
                Ok(_) => continue,
                Err(e) => Note::Lost(e.to_string()),
            };
            let lost = matches!(note, Note::Lost(_));
            if tx.send(note).is_err() || lost {
                return;
            }
        }
    });
    Ok(Link {
        client,
        session_present,
        notes,
        task,
    })
}

fn refused(shown: &str, code: ConnectReturnCode) -> Error {
    let kind = match code {
        ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
            ErrorKind::Auth
        }
        _ => ErrorKind::Connect,
    };
    Error::new(
        kind,
        format!("mqtt: {shown} refused the connection: {code:?}"),
    )
}

/// The connection was lost: the run goes back to its checkpoint.
pub fn lost(why: &str) -> Error {
    Error::new(
        ErrorKind::Aborted,
        format!("mqtt: the connection was lost: {why}"),
    )
}

/// A failed client request (the event loop is gone).
pub fn client_error(what: &str, e: rumqttc::v5::ClientError) -> Error {
    Error::new(ErrorKind::Aborted, format!("mqtt: {what}: {e}")).with_source(e)
}

/// The QoS of 0, 1 or 2.
pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
