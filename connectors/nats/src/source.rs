//! The NATS source: a JetStream stream through a durable pull consumer, or core NATS
//! subjects through a subscription.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use async_nats::jetstream::consumer::pull::{Config as PullConfig, Stream as PullStream};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::{Client, Subject};
use connector_api::{Batch, Error, Offsets, Result, Source, SourceContext};
use futures::stream::{SelectAll, StreamExt};
use serde::{Deserialize, Serialize};
use sluice_formats::messages::{message_reject, Message, MessageDecoder};

use crate::config::{NatsSourceConfig, Start};
use crate::conn::{connect, nats_error, stream_error};

/// The offset of a stream: the sequence of the last message delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOffset {
    /// Stream sequence.
    pub seq: u64,
}

/// One message read, owned.
struct Read {
    subject: String,
    payload: bytes::Bytes,
    headers: Vec<(String, Option<String>)>,
    seq: u64,
    published_ms: Option<i64>,
    reply: Option<Subject>,
}

enum Reader {
    /// The durable consumer's message stream.
    Jet(Box<PullStream>),
    /// Core NATS subscriptions, merged.
    Core(SelectAll<async_nats::Subscriber>),
}

/// Reads a stream or subjects.
pub struct NatsSource {
    config: NatsSourceConfig,
    client: Option<Client>,
    reader: Option<Reader>,
    decoder: MessageDecoder,
    /// The stream's name: the split.
    split: String,
    /// Sequence of the last message delivered (JetStream): a message sent again at or
    /// below it is dropped.
    last: u64,
    /// The ack subject of the last message of each batch delivered and not yet
    /// acknowledged, by stream sequence: a commit acknowledges the highest one it
    /// covers, and with `AckPolicy::All` every message before it.
    unacked: BTreeMap<u64, Subject>,
    /// `bounded`: the stream's last sequence when the source opened.
    end: Option<u64>,
    /// The durable consumer (JetStream), asked whether messages are pending when
    /// a bounded read waits in vain (its subjects may not reach `end`).
    consumer: Option<async_nats::jetstream::consumer::PullConsumer>,
    /// `start = "new"`: the position to checkpoint before the first message.
    first: Option<Batch>,
    /// An error met after some messages were read: returned after their batch.
    deferred: Option<Error>,
    /// Messages read whose Avro writer schemas the registry did not give yet: the
    /// next call decodes them (the runtime retries it), never drops them.
    pending: Option<Vec<Read>>,
    batch_size: usize,
    idle_timeout: Duration,
}

impl NatsSource {
    /// A source for `config` (validated).
    pub fn new(config: NatsSourceConfig) -> Result<Self> {
        config.validate()?;
        let decoder =
            MessageDecoder::new(config.format, config.declared_schema()?, &config.metadata)
                .with_registry(config.schema_registry.as_ref())?;
        Ok(NatsSource {
            split: config
                .stream
                .clone()
                .unwrap_or_else(|| config.subjects.join(",")),
            config,
            client: None,
            reader: None,
            decoder,
            last: 0,
            unacked: BTreeMap::new(),
            end: None,
            consumer: None,
            first: None,
            deferred: None,
            pending: None,
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
        })
    }

    /// Places the durable consumer just after the checkpoint (or where `start` says)
    /// and starts reading.
    async fn open_stream(
        &mut self,
        client: &Client,
        pipeline: &str,
        committed: &Offsets,
    ) -> Result<()> {
        let js = async_nats::jetstream::new(client.clone());
        let stream = js
            .get_stream(&self.split)
            .await
            .map_err(|e| stream_error(&self.split, e))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| nats_error(format!("stream \"{}\"", self.split), e))?;
        use async_nats::jetstream::stream::RetentionPolicy;
        if info.config.retention != RetentionPolicy::Limits {
            // the consumer is placed again at each open: on an interest stream deleting
            // it drops the unacknowledged messages, a work-queue stream refuses it
            return Err(Error::new(
                connector_api::ErrorKind::Unsupported,
                format!(
                    "nats: stream \"{}\" keeps messages by {:?} retention; the source reads streams with limits retention (the default)",
                    self.split, info.config.retention
                ),
            )
            .with_field("stream"));
        }
        let stored: Option<StreamOffset> = committed.get_typed(&self.split)?;
        let deliver = match (stored, self.config.start) {
            (Some(at), _) => {
                self.last = at.seq;
                DeliverPolicy::ByStartSequence {
                    start_sequence: at.seq + 1,
                }
            }
            (None, Start::All) => DeliverPolicy::All,
            (None, Start::New) => {
                self.last = info.state.last_sequence;
                let mut offsets = Offsets::new();
                offsets.set_typed(self.split.clone(), &StreamOffset { seq: self.last })?;
                self.first = Some(Batch::new(
                    RecordBatch::new_empty(Schema::empty().into()),
                    offsets,
                ));
                DeliverPolicy::ByStartSequence {
                    start_sequence: self.last + 1,
                }
            }
            (None, Start::Sequence) => {
                let seq = self.config.start_sequence.unwrap_or(1).max(1);
                self.last = seq - 1;
                DeliverPolicy::ByStartSequence {
                    start_sequence: seq,
                }
            }
            (None, Start::Time) => {
                let nanos = self.config.start_time_nanos()?;
                let start_time = chrono::DateTime::from_timestamp_nanos(nanos as i64);
                DeliverPolicy::ByStartTime { start_time }
            }
        };
        if self.config.bounded {
            self.end = Some(info.state.last_sequence);
        }
        let durable = self.config.durable_name(pipeline);
        // the checkpoint is the position: a consumer left by an earlier run is placed
        // again rather than trusted (its acknowledgements may be ahead of or behind it)
        if let Err(e) = stream.delete_consumer(&durable).await {
            tracing::debug!(consumer = %durable, error = %e, "nats: no consumer to replace");
        }
        let (filter_subject, filter_subjects) = match self.config.subjects.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let consumer = stream
            .create_consumer(PullConfig {
                durable_name: Some(durable.clone()),
                filter_subject,
                filter_subjects,
                deliver_policy: deliver,
                ack_policy: AckPolicy::All,
                ack_wait: self.config.ack_wait,
                max_ack_pending: self.config.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                nats_error(
                    format!(
                        "creating consumer \"{durable}\" on stream \"{}\"",
                        self.split
                    ),
                    e,
                )
            })?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch_size.clamp(1, 10_000))
            .max_bytes_per_batch(MAX_PULL_BYTES)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .map_err(|e| nats_error(format!("reading stream \"{}\"", self.split), e))?;
        self.reader = Some(Reader::Jet(Box::new(messages)));
        self.consumer = Some(consumer);
        tracing::info!(stream = %self.split, consumer = %durable, after = self.last, "nats: reading the stream");
        Ok(())
    }

    /// The next message, waiting at most `wait`; None when none came.
    async fn next_message(&mut self, wait: Duration) -> Result<Option<Read>> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| Error::internal("nats source is not open"))?;
        let next = match reader {
            Reader::Jet(stream) => match tokio::time::timeout(wait, stream.next()).await {
                Err(_) => return Ok(None),
                // the pull stream ended (its consumer deleted): the run goes back to its
                // checkpoint, which places a consumer again
                Ok(None) => return Err(lost(&self.split, "the consumer's message stream ended")),
                Ok(Some(Err(e))) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind;
                    if e.kind() == MessagesErrorKind::MissingHeartbeat {
                        // the server went quiet (a reconnect): the stream pulls again
                        tracing::warn!(stream = %self.split, "nats: missed heartbeats; pulling again");
                        return Ok(None);
                    }
                    return Err(lost(&self.split, &e.to_string()));
                }
                Ok(Some(Ok(m))) => {
                    let info = m
                        .info()
                        .map_err(|e| Error::internal(format!("nats: a message's metadata: {e}")))?;
                    let (seq, published) =
                        (info.stream_sequence, info.published.timestamp_millis());
                    Read::of(&m.message, seq, Some(published))
                }
            },
            Reader::Core(subs) => match tokio::time::timeout(wait, subs.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(lost(&self.split, "the subscriptions ended")),
                Ok(Some(m)) => Read::of(&m, 0, None),
            },
        };
        Ok(Some(next))
    }

    /// `reads` as a batch, once the registry gave the Avro writer schemas they need;
    /// until it does they wait in `pending`.
    async fn decoded(&mut self, reads: Vec<Read>) -> Result<Option<Batch>> {
        let reads = self
            .decoder
            .fetched(reads, |r| r.payload.as_ref(), &mut self.pending)
            .await?;
        if let Some(last) = reads.last() {
            if let Some(reply) = &last.reply {
                self.unacked.insert(last.seq, reply.clone());
            }
        }
        self.batch(&reads).map(Some)
    }

    /// The messages of `reads` as a batch: the records that decode, the others as
    /// rejects naming stream and sequence.
    fn batch(&mut self, reads: &[Read]) -> Result<Batch> {
        let msgs: Vec<Message> = reads
            .iter()
            .map(|r| Message {
                payload: &r.payload,
                topic: &r.subject,
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect(),
                offset: r.seq as i64,
                timestamp_ms: r.published_ms,
                id: "",
            })
            .collect();
        let decoded = self.decoder.decode(&msgs)?;
        let rejects = decoded
            .bad
            .into_iter()
            .map(|(i, error)| {
                let r = &reads[i];
                let position = match self.config.jetstream {
                    true => format!(
                        "stream \"{}\" sequence {} (subject \"{}\")",
                        self.split, r.seq, r.subject
                    ),
                    false => format!("subject \"{}\"", r.subject),
                };
                message_reject(&self.split, position, &r.payload, &r.headers, error)
            })
            .collect();
        let mut offsets = Offsets::new();
        if let Some(last) = reads.last().filter(|_| self.config.jetstream) {
            offsets.set_typed(self.split.clone(), &StreamOffset { seq: last.seq })?;
        }
        let records = decoded
            .records
            .unwrap_or_else(|| RecordBatch::new_empty(Schema::empty().into()));
        let mut batch = Batch::new(records, offsets);
        batch.rejects = rejects;
        Ok(batch)
    }
}

/// Bytes one pull asks for at most, so a stream of large messages does not fill memory
/// (the client pulls again when half is consumed).
const MAX_PULL_BYTES: usize = 32 << 20;

/// The reader failed in a way only a new one mends: the run goes back to its
/// checkpoint (nothing read after it was acknowledged).
fn lost(split: &str, why: &str) -> Error {
    Error::new(
        connector_api::ErrorKind::Aborted,
        format!("nats: reading \"{split}\": {why}"),
    )
}

impl Read {
    fn of(m: &async_nats::Message, seq: u64, published_ms: Option<i64>) -> Read {
        let headers = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (k.to_string(), Some(v.as_str().to_string())))
            })
            .collect();
        Read {
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
            headers,
            seq,
            published_ms,
            reply: m.reply.clone(),
        }
    }
}

#[connector_api::async_trait]
impl Source for NatsSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        // read again from the checkpoint, as everything else not yet acknowledged
        self.pending = None;
        let client = connect(&self.config.url, &format!("sluice {} source", ctx.pipeline)).await?;
        if self.config.jetstream {
            self.open_stream(&client, &ctx.pipeline, committed).await?;
        } else {
            let mut subs = Vec::new();
            for s in &self.config.subjects {
                subs.push(
                    client
                        .subscribe(s.clone())
                        .await
                        .map_err(|e| nats_error(format!("subscribing to \"{s}\""), e))?,
                );
            }
            self.reader = Some(Reader::Core(futures::stream::select_all(subs)));
        }
        self.client = Some(client);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if let Some(reads) = self.pending.take() {
            return self.decoded(reads).await;
        }
        if self.end.is_some_and(|end| self.last >= end) {
            return Ok(None);
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let started = Instant::now();
        let mut reads: Vec<Read> = Vec::new();
        // the highest sequence in `reads`: `last` moves only with a batch handed out
        let mut high = self.last;
        while reads.len() < self.batch_size {
            // the first message waits up to the idle timeout; the rest only take what
            // has arrived already
            let wait = match reads.is_empty() {
                true => self.idle_timeout.saturating_sub(started.elapsed()),
                false => Duration::ZERO,
            };
            let read = match self.next_message(wait).await {
                Ok(Some(read)) => read,
                Ok(None) => break,
                // the messages read so far go out first; the error comes next call
                Err(e) if !reads.is_empty() => {
                    self.deferred = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            };
            if self.config.jetstream {
                if read.seq <= high {
                    // sent again (its ack wait ran out): read before, dropped
                    continue;
                }
                high = read.seq;
                if self.end.is_some_and(|end| read.seq >= end) {
                    reads.push(read);
                    break;
                }
            }
            reads.push(read);
        }
        self.last = high;
        if reads.is_empty() {
            if let (Some(_), Some(consumer)) = (self.end, &self.consumer) {
                let info = consumer
                    .get_info()
                    .await
                    .map_err(|e| nats_error("the consumer's state", e))?;
                if info.num_pending == 0 {
                    return Ok(None);
                }
            }
            return Ok(Some(Batch::idle()));
        }
        self.decoded(reads).await
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let Some(at) = offsets.get_typed::<StreamOffset>(&self.split)? else {
            return Ok(());
        };
        let rest = self.unacked.split_off(&(at.seq + 1));
        let covered = std::mem::replace(&mut self.unacked, rest);
        let (Some((_, reply)), Some(client)) = (covered.into_iter().next_back(), &self.client)
        else {
            return Ok(());
        };
        // `AckPolicy::All`: this message's acknowledgement covers every one before it
        client
            .publish(reply, bytes::Bytes::from_static(b"+ACK"))
            .await
            .map_err(|e| nats_error("acknowledging", e))?;
        client
            .flush()
            .await
            .map_err(|e| nats_error("acknowledging", e))
    }

    async fn close(&mut self) -> Result<()> {
        self.reader = None;
        if let Some(client) = self.client.take() {
            let _ = client.flush().await;
        }
        Ok(())
    }
}

/// `sluice check`: the servers answer and the stream exists.
pub async fn check(config: &NatsSourceConfig) -> Result<()> {
    let client = connect(&config.url, "sluice check").await?;
    if let Some(stream) = &config.stream {
        let js = async_nats::jetstream::new(client);
        js.get_stream(stream)
            .await
            .map_err(|e| stream_error(stream, e))?;
    }
    Ok(())
}
