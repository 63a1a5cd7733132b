//! The RabbitMQ source: a queue consumed with manual acknowledgements, sent (multiple)
//! only after every sink flushed and the checkpoint was stored; or a stream queue read
//! from the offset after the pipeline's checkpoint.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use connector_api::{Batch, Error, Offsets, Result, Source, SourceContext};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use serde::{Deserialize, Serialize};
use sluice_formats::messages::{gather, message_reject, Message, MessageDecoder, Pull};

use crate::config::{RabbitSourceConfig, Start};
use crate::conn::{amqp_error, connect, declared_queue, disconnect, value_int, value_text};

/// The offset of a queue: the ordinal of the last batch handed out (which deliveries
/// a commit acknowledges) and, for a stream queue, the stream offset of its last
/// message, where a restart resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueOffset {
    /// The batch's ordinal.
    pub batch: u64,
    /// The stream offset of the batch's last message (stream queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_offset: Option<i64>,
}

/// One delivery, read.
pub struct Read {
    tag: u64,
    routing_key: String,
    payload: Vec<u8>,
    headers: Vec<(String, Option<String>)>,
    offset: Option<i64>,
    timestamp_ms: Option<i64>,
}

/// Consumes one queue.
pub struct RabbitSource {
    config: RabbitSourceConfig,
    conn: Option<Connection>,
    channel: Option<Channel>,
    consumer: Option<Consumer>,
    decoder: MessageDecoder,
    /// Batches handed out.
    batches: u64,
    /// The last delivery tag of each batch handed out and not yet acknowledged.
    unacked: VecDeque<(u64, u64)>,
    /// Deliveries handed out and not yet acknowledged.
    held: usize,
    /// How many deliveries each batch in `unacked` holds.
    held_by: VecDeque<usize>,
    /// The stream offset of the last message handed out.
    stream_offset: Option<i64>,
    /// An error met after some messages were read: returned after their batch.
    deferred: Option<Error>,
    /// Messages read whose Avro writer schemas the registry did not give yet: the
    /// next call decodes them (the runtime retries it), never drops them.
    pending: Option<Vec<Read>>,
    batch_size: usize,
    idle_timeout: Duration,
    /// When the last message arrived (or the source opened).
    quiet_since: Instant,
    /// A message of the stream queue arrived since the source opened.
    stream_read: bool,
}

/// How long a bounded read of a stream queue waits for more before it stops (a stream
/// does not say where it ends), and for the first message.
const STREAM_QUIET: Duration = Duration::from_secs(5);
const STREAM_FIRST: Duration = Duration::from_secs(30);

impl RabbitSource {
    /// A source for `config` (validated).
    pub fn new(config: RabbitSourceConfig) -> Result<Self> {
        config.validate()?;
        let decoder =
            MessageDecoder::new(config.format, config.declared_schema()?, &config.metadata)
                .with_registry(config.schema_registry.as_ref())?;
        Ok(RabbitSource {
            config,
            conn: None,
            channel: None,
            consumer: None,
            decoder,
            batches: 0,
            unacked: VecDeque::new(),
            held: 0,
            held_by: VecDeque::new(),
            stream_offset: None,
            deferred: None,
            pending: None,
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            quiet_since: Instant::now(),
            stream_read: false,
        })
    }

    /// The next delivery, waiting at most `wait`; None when none came.
    async fn next_delivery(&mut self, wait: Duration) -> Result<Option<Read>> {
        let consumer = self
            .consumer
            .as_mut()
            .ok_or_else(|| Error::internal("rabbitmq source is not open"))?;
        let queue = &self.config.queue;
        let d: Delivery = match tokio::time::timeout(wait, consumer.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => {
                return Err(Error::new(
                    connector_api::ErrorKind::Aborted,
                    format!("rabbitmq: the consumer of queue \"{queue}\" was cancelled"),
                ))
            }
            Ok(Some(Err(e))) => return Err(amqp_error(format!("consuming queue \"{queue}\""), e)),
            Ok(Some(Ok(d))) => d,
        };
        let mut headers = Vec::new();
        let mut offset = None;
        if let Some(table) = d.properties.headers() {
            for (k, v) in table.inner() {
                if k.as_str() == "x-stream-offset" {
                    offset = value_int(v);
                }
                headers.push((k.as_str().to_string(), Some(value_text(v))));
            }
        }
        if offset.is_some() && !self.config.stream {
            // read as a queue, a stream starts at its end at every open: what came
            // while the pipeline was down would be skipped
            return Err(Error::config(format!(
                "rabbitmq: queue \"{queue}\" is a stream queue: set stream = true, so it is read from the checkpoint"
            ))
            .with_field("stream"));
        }
        Ok(Some(Read {
            tag: d.delivery_tag,
            routing_key: d.routing_key.as_str().to_string(),
            timestamp_ms: d
                .properties
                .timestamp()
                .and_then(|s| i64::try_from(s).ok())
                .map(|s| s.saturating_mul(1000)),
            payload: d.data,
            headers,
            offset,
        }))
    }

    /// `bounded`: nothing waits for an acknowledgement (the prefetch may hold the
    /// rest back until the next checkpoint's) and the queue holds no message ready,
    /// or, a stream queue, nothing arrived for [`STREAM_QUIET`].
    async fn drained(&mut self) -> Result<bool> {
        if !self.unacked.is_empty() {
            return Ok(false);
        }
        if self.config.stream {
            // a stream starts delivering after a while (seconds for a large one)
            let quiet = match self.stream_read {
                true => STREAM_QUIET,
                false => STREAM_FIRST,
            };
            return Ok(self.quiet_since.elapsed() >= quiet);
        }
        let channel = self
            .channel
            .as_ref()
            .ok_or_else(|| Error::internal("rabbitmq source is not open"))?;
        let q = declared_queue(channel, &self.config.queue).await?;
        Ok(q.message_count() == 0)
    }

    /// `reads` as a batch, once the registry gave the Avro writer schemas they need;
    /// until it does they wait in `pending`.
    async fn decoded(&mut self, reads: Vec<Read>) -> Result<Option<Batch>> {
        let reads = self
            .decoder
            .fetched(reads, |r| r.payload.as_slice(), &mut self.pending)
            .await?;
        self.batch(&reads).map(Some)
    }

    fn batch(&mut self, reads: &[Read]) -> Result<Batch> {
        let msgs: Vec<Message> = reads
            .iter()
            .map(|r| Message {
                payload: &r.payload,
                topic: &r.routing_key,
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect(),
                offset: r.offset.unwrap_or_default(),
                timestamp_ms: r.timestamp_ms,
                id: "",
            })
            .collect();
        let decoded = self.decoder.decode(&msgs)?;
        let queue = &self.config.queue;
        let rejects = decoded
            .bad
            .into_iter()
            .map(|(i, error)| {
                let r = &reads[i];
                let position = match r.offset {
                    Some(o) => format!(
                        "queue \"{queue}\" offset {o} (routing key \"{}\")",
                        r.routing_key
                    ),
                    None => format!("queue \"{queue}\" (routing key \"{}\")", r.routing_key),
                };
                message_reject(queue, position, &r.payload, &r.headers, error)
            })
            .collect();
        self.batches += 1;
        if let Some(last) = reads.last() {
            self.unacked.push_back((self.batches, last.tag));
            self.held_by.push_back(reads.len());
            self.held += reads.len();
            if last.offset.is_some() {
                self.stream_offset = last.offset;
            }
        }
        let mut offsets = Offsets::new();
        offsets.set_typed(
            queue.clone(),
            &QueueOffset {
                batch: self.batches,
                stream_offset: self.stream_offset,
            },
        )?;
        let records = decoded
            .records
            .unwrap_or_else(|| RecordBatch::new_empty(Schema::empty().into()));
        let mut batch = Batch::new(records, offsets);
        batch.rejects = rejects;
        // the broker sends no more past the prefetch until a commit acknowledges
        batch.checkpoint = self.held * 2 >= usize::from(self.config.max_in_flight);
        Ok(batch)
    }
}

impl Pull for RabbitSource {
    type Item = Read;

    async fn pull(&mut self, wait: Duration) -> Result<Option<Read>> {
        self.next_delivery(wait).await
    }
}

#[connector_api::async_trait]
impl Source for RabbitSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        self.deferred = None;
        self.pending = None;
        self.unacked.clear();
        self.held_by.clear();
        self.held = 0;
        let (conn, channel) =
            connect(&self.config.url, &format!("sluice {} source", ctx.pipeline)).await?;
        let queue = self.config.queue.clone();
        declared_queue(&channel, &queue).await?;
        channel
            .basic_qos(self.config.max_in_flight, BasicQosOptions::default())
            .await
            .map_err(|e| amqp_error("setting the prefetch", e))?;
        let stored: Option<QueueOffset> = committed.get_typed(&queue)?;
        if let Some(at) = stored {
            self.batches = at.batch;
            self.stream_offset = at.stream_offset;
        }
        let mut args = FieldTable::default();
        if self.config.stream {
            let from = match (self.stream_offset, self.config.start) {
                (Some(o), _) => AMQPValue::LongLongInt(o + 1),
                (None, Start::First) => AMQPValue::LongString("first".into()),
                (None, Start::Next) => AMQPValue::LongString("next".into()),
            };
            args.insert("x-stream-offset".into(), from);
        }
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("sluice-{}", ctx.pipeline).as_str().into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| amqp_error(format!("consuming queue \"{queue}\""), e))?;
        tracing::info!(%queue, stream = self.config.stream, after = ?self.stream_offset, "rabbitmq: consuming");
        self.consumer = Some(consumer);
        self.channel = Some(channel);
        self.quiet_since = Instant::now();
        self.stream_read = false;
        self.conn = Some(conn);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        // messages already read come before the error met after them
        if let Some(reads) = self.pending.take() {
            return self.decoded(reads).await;
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let (reads, failed) = gather(self, self.batch_size, self.idle_timeout).await?;
        self.deferred = failed;
        if reads.is_empty() {
            if self.config.bounded && self.held > 0 {
                // caught up, deliveries waiting for their acknowledgement: checkpoint
                // now, not at the interval, so a bounded read ends once it is done
                let mut batch = self.batch(&[])?;
                batch.checkpoint = true;
                return Ok(Some(batch));
            }
            return match self.config.bounded && self.drained().await? {
                true => Ok(None),
                false => Ok(Some(Batch::idle())),
            };
        }
        self.quiet_since = Instant::now();
        self.stream_read = true;
        self.decoded(reads).await
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let Some(at) = offsets.get_typed::<QueueOffset>(&self.config.queue)? else {
            return Ok(());
        };
        let mut tag = None;
        while self.unacked.front().is_some_and(|(n, _)| *n <= at.batch) {
            tag = self.unacked.pop_front().map(|(_, t)| t);
            self.held -= self.held_by.pop_front().unwrap_or(0);
        }
        let (Some(tag), Some(channel)) = (tag, &self.channel) else {
            return Ok(());
        };
        // the prefetch held deliveries back until now: a bounded read waits afresh
        self.quiet_since = Instant::now();
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| amqp_error("acknowledging", e))
    }

    async fn close(&mut self) -> Result<()> {
        self.consumer = None;
        disconnect(self.conn.take(), self.channel.take()).await;
        Ok(())
    }
}

/// `sluice check`: the broker answers and the queue exists.
pub async fn check(config: &RabbitSourceConfig) -> Result<()> {
    let (conn, channel) = connect(&config.url, "sluice check").await?;
    let found = declared_queue(&channel, &config.queue).await.map(|_| ());
    disconnect(Some(conn), Some(channel)).await;
    found
}
