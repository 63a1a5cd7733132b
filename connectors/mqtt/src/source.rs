//! The MQTT source: a persistent session subscribed to topic filters; each QoS 1
//! message is acknowledged (`PUBACK`) only after every sink flushed and the checkpoint
//! holding it was stored, so the broker sends again, to the same session, what a crash
//! left unacknowledged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use connector_api::{Batch, Error, ErrorKind, Offsets, Result, Source, SourceContext};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use sluice_formats::messages::{gather, message_reject, Message, MessageDecoder, Pull};

use crate::config::MqttSourceConfig;
use crate::conn::{client_error, connect, lost, qos, Link, Note, Setup};

/// The offset of a subscription: the ordinal of the last batch handed out, which
/// tells a commit what to acknowledge (MQTT has no position to resume from: the
/// broker's session keeps what was not acknowledged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOffset {
    /// The batch's ordinal.
    pub batch: u64,
}

/// Reads the subscribed topics.
pub struct MqttSource {
    config: MqttSourceConfig,
    link: Option<Link>,
    decoder: MessageDecoder,
    /// The split: the client id.
    split: String,
    /// Messages that came before the subscription was answered.
    early: VecDeque<Publish>,
    batches: u64,
    /// The packet ids of each batch handed out and not yet acknowledged.
    unacked: VecDeque<(u64, Vec<u16>)>,
    /// Messages handed out and not yet acknowledged.
    held: usize,
    /// An error met after some messages were read: returned after their batch.
    deferred: Option<Error>,
    /// Messages read whose Avro writer schemas the registry did not give yet: the
    /// next call decodes them (the runtime retries it), never drops them.
    pending: Option<Vec<Publish>>,
    batch_size: usize,
    idle_timeout: Duration,
    /// When the last message came (or the source opened).
    quiet_since: Instant,
}

/// How long a read waits for a commit when `max_in_flight` messages are unacknowledged.
const FULL_WAIT: Duration = Duration::from_millis(10);

/// How long a bounded read waits without a message before it stops.
const QUIET: Duration = Duration::from_secs(2);

impl MqttSource {
    /// A source for `config` (validated).
    pub fn new(config: MqttSourceConfig) -> Result<Self> {
        config.validate()?;
        let decoder =
            MessageDecoder::new(config.format, config.declared_schema()?, &config.metadata)
                .with_registry(config.schema_registry.as_ref())?;
        Ok(MqttSource {
            config,
            link: None,
            decoder,
            split: String::new(),
            early: VecDeque::new(),
            batches: 0,
            unacked: VecDeque::new(),
            held: 0,
            deferred: None,
            pending: None,
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            quiet_since: Instant::now(),
        })
    }

    /// The next message, waiting at most `wait`.
    async fn next_message(&mut self, wait: Duration) -> Result<Option<Publish>> {
        if let Some(p) = self.early.pop_front() {
            return Ok(Some(p));
        }
        let link = self
            .link
            .as_mut()
            .ok_or_else(|| Error::internal("mqtt source is not open"))?;
        loop {
            match tokio::time::timeout(wait, link.notes.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(lost("the event loop stopped")),
                Ok(Some(Note::Message(p))) => return Ok(Some(*p)),
                Ok(Some(Note::Lost(why))) => return Err(lost(&why)),
                Ok(Some(_)) => {}
            }
        }
    }

    /// `msgs` as a batch, once the registry gave the Avro writer schemas they need;
    /// until it does they wait in `pending`.
    async fn decoded(&mut self, msgs: Vec<Publish>) -> Result<Option<Batch>> {
        let msgs = self
            .decoder
            .fetched(msgs, |p| p.payload.as_ref(), &mut self.pending)
            .await?;
        self.batch(msgs).map(Some)
    }

    fn batch(&mut self, msgs: Vec<Publish>) -> Result<Batch> {
        let topics: Vec<String> = msgs
            .iter()
            .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
            .collect();
        let decoded = self.decoder.decode(
            &msgs
                .iter()
                .zip(&topics)
                .map(|(p, topic)| Message {
                    payload: &p.payload,
                    topic,
                    headers: p
                        .properties
                        .iter()
                        .flat_map(|props| props.user_properties.iter())
                        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                        .collect(),
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )?;
        let rejects = decoded
            .bad
            .into_iter()
            .map(|(i, error)| {
                let p = &msgs[i];
                let headers: Vec<(String, Option<String>)> = p
                    .properties
                    .iter()
                    .flat_map(|props| props.user_properties.iter())
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect();
                message_reject(
                    &self.split,
                    format!("topic \"{}\"", topics[i]),
                    &p.payload,
                    &headers,
                    error,
                )
            })
            .collect();
        self.batches += 1;
        let pkids: Vec<u16> = msgs
            .iter()
            .filter(|p| p.qos != QoS::AtMostOnce)
            .map(|p| p.pkid)
            .collect();
        self.held += pkids.len();
        self.unacked.push_back((self.batches, pkids));
        let mut offsets = Offsets::new();
        offsets.set_typed(
            self.split.clone(),
            &SessionOffset {
                batch: self.batches,
            },
        )?;
        let records = decoded
            .records
            .unwrap_or_else(|| RecordBatch::new_empty(Schema::empty().into()));
        let mut batch = Batch::new(records, offsets);
        batch.rejects = rejects;
        // the broker sends no more past the receive maximum until a commit
        // acknowledges, and `next_batch` hands out no more: a full window waits for this
        batch.checkpoint = self.held * 2 >= usize::from(self.config.max_in_flight);
        Ok(batch)
    }
}

impl Pull for MqttSource {
    type Item = Publish;

    async fn pull(&mut self, wait: Duration) -> Result<Option<Publish>> {
        self.next_message(wait).await
    }
}

#[connector_api::async_trait]
impl Source for MqttSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        self.split = self
            .config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}", ctx.pipeline));
        self.deferred = None;
        self.pending = None;
        self.unacked.clear();
        self.held = 0;
        self.early.clear();
        if let Some(at) = committed.get_typed::<SessionOffset>(&self.split)? {
            self.batches = at.batch;
        }
        let qos = qos(self.config.qos);
        let mut link = connect(
            &self.config.url,
            Setup {
                client_id: self.split.clone(),
                session: (qos != QoS::AtMostOnce).then_some(self.config.session_expiry),
                receive_maximum: self.config.max_in_flight,
                manual_acks: true,
            },
        )
        .await?;
        link.client
            .subscribe_many(
                self.config
                    .topics
                    .iter()
                    .map(|t| rumqttc::v5::mqttbytes::v5::Filter::new(t.clone(), qos)),
            )
            .await
            .map_err(|e| client_error("subscribing", e))?;
        // the session's messages may come before the answer: kept in order
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match link.notes.recv().await {
                    Some(Note::Subscribed(codes)) => return Ok(codes),
                    Some(Note::Message(p)) => self.early.push_back(*p),
                    Some(Note::Lost(why)) => return Err(lost(&why)),
                    Some(_) => {}
                    None => return Err(lost("the event loop stopped")),
                }
            }
        })
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Connect,
                "mqtt: the broker did not answer the subscription within 10 s",
            )
        })??;
        for (filter, granted) in self.config.topics.iter().zip(answer) {
            match granted {
                Err(why) => {
                    let kind = match why.as_str() {
                        "NotAuthorized" => ErrorKind::Auth,
                        _ => ErrorKind::Config,
                    };
                    return Err(Error::new(
                        kind,
                        format!("mqtt: the broker refused the subscription to \"{filter}\": {why}"),
                    )
                    .with_field("topics"));
                }
                // a broker that grants less would make the source at most once unsaid
                Ok(q) if q == QoS::AtMostOnce && qos != QoS::AtMostOnce => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("mqtt: the broker grants only QoS 0 on \"{filter}\": the source would lose messages; allow QoS 1, or set qos = 0"),
                    )
                    .with_field("qos"))
                }
                Ok(_) => {}
            }
        }
        if !link.session_present && self.batches > 0 {
            tracing::warn!(client_id = %self.split, "mqtt: the broker no longer had this pipeline's session (expired, or the broker lost it): messages published while the pipeline was down may be gone");
        }
        tracing::info!(client_id = %self.split, topics = ?self.config.topics, "mqtt: subscribed");
        self.link = Some(link);
        self.quiet_since = Instant::now();
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        // messages already read come before the error met after them
        if let Some(msgs) = self.pending.take() {
            return self.decoded(msgs).await;
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        // never more handed out unacknowledged than the receive maximum, whatever the
        // broker sends: only what was handed out can be written and repeat after a
        // crash (Mosquitto before 2.0.13 lets each PUBACK release a receive maximum's
        // worth more; MQTT 3.1.1 has none). QoS 0 holds nothing. The batch that fills
        // the window asks for a checkpoint (`batch`), whose commit makes room.
        let room = match self.config.qos {
            0 => self.batch_size,
            _ => usize::from(self.config.max_in_flight).saturating_sub(self.held),
        };
        if room == 0 {
            tokio::time::sleep(FULL_WAIT.min(self.idle_timeout)).await;
            return Ok(Some(Batch::idle()));
        }
        let (msgs, failed) = gather(self, self.batch_size.min(room), self.idle_timeout).await?;
        self.deferred = failed;
        if msgs.is_empty() {
            if self.config.bounded && self.held > 0 {
                // caught up, messages waiting for their acknowledgement: checkpoint
                // now, not at the interval, so a bounded read ends once it is done
                let mut batch = self.batch(Vec::new())?;
                batch.checkpoint = true;
                return Ok(Some(batch));
            }
            // bounded: the broker says nothing of what it still holds for the session
            // (it sends more as acknowledgements free room): done once nothing waits for
            // an acknowledgement and nothing came for a while
            let done = self.config.bounded
                && self.held == 0
                && self.quiet_since.elapsed() >= QUIET.max(self.idle_timeout);
            return match done {
                true => Ok(None),
                false => Ok(Some(Batch::idle())),
            };
        }
        self.quiet_since = Instant::now();
        self.decoded(msgs).await
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let Some(at) = offsets.get_typed::<SessionOffset>(&self.split)? else {
            return Ok(());
        };
        let Some(link) = &self.link else {
            return Ok(());
        };
        // the receive maximum held messages back until now: a bounded read waits afresh
        self.quiet_since = Instant::now();
        while self.unacked.front().is_some_and(|(n, _)| *n <= at.batch) {
            let Some((_, pkids)) = self.unacked.pop_front() else {
                break;
            };
            self.held -= pkids.len();
            for pkid in pkids {
                let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new(), None);
                p.pkid = pkid;
                link.client
                    .ack(&p)
                    .await
                    .map_err(|e| client_error("acknowledging", e))?;
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            let _ = link.client.disconnect().await;
            // the disconnect goes out before the event loop stops
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// `sluice check`: the broker accepts a connection (a clean session, not this
/// pipeline's).
pub async fn check(config: &MqttSourceConfig) -> Result<()> {
    let link = connect(
        &config.url,
        Setup {
            client_id: "sluice-check".into(),
            session: None,
            receive_maximum: 1,
            manual_acks: false,
        },
    )
    .await?;
    let _ = link.client.disconnect().await;
    Ok(())
}
