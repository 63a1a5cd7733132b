//! The poll thread: messages polled together into one buffer and handed to the
//! source, a chunk at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use connector_api::Error;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset};
use tokio::sync::mpsc;

use super::*;

/// One message as the poll thread hands it over.
pub(super) struct Msg {
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) timestamp: Option<i64>,
    /// Where the key is in the chunk's `data` (None: no key).
    pub(super) key: Option<std::ops::Range<usize>>,
    /// Where the payload is in the chunk's `data` (None: a null payload).
    pub(super) payload: Option<std::ops::Range<usize>>,
    /// Header keys and values as sent (a value may be null): kept for every message,
    /// as the key is, so that a dead letter holds them.
    pub(super) headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Messages polled together; payloads are copied once, into one buffer.
#[derive(Default)]
pub(super) struct Messages {
    pub(super) msgs: Vec<Msg>,
    pub(super) data: Vec<u8>,
}

impl Messages {
    pub(super) fn payload(&self, m: &Msg) -> Option<&[u8]> {
        m.payload.clone().map(|r| &self.data[r])
    }

    pub(super) fn key(&self, m: &Msg) -> Option<&[u8]> {
        m.key.clone().map(|r| &self.data[r])
    }
}

/// A poll-thread result: messages, or a fatal error.
pub(super) enum Chunk {
    Messages(Messages),
    Failed(Error),
}

/// The poll loop, on its own thread.
pub(super) struct Poller {
    pub(super) consumer: Arc<BaseConsumer<Ctx>>,
    pub(super) shared: Arc<Shared>,
    pub(super) tx: mpsc::Sender<Chunk>,
    pub(super) batch_size: usize,
    pub(super) bounded: bool,
}

impl Poller {
    pub(super) fn run(self) {
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        let mut chunk = Messages::default();
        loop {
            if self.shared.lock().closing {
                return;
            }
            let timeout = if chunk.msgs.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                None => {
                    if !chunk.msgs.is_empty()
                        && !self.send(Chunk::Messages(std::mem::take(&mut chunk)))
                    {
                        return;
                    }
                    if self.bounded {
                        // everything polled so far is in the channel or handed out
                        if let Ok(p) = self.consumer.position() {
                            let mut st = self.shared.lock();
                            for e in p.elements() {
                                if let Offset::Offset(n) = e.offset() {
                                    st.positions
                                        .insert((e.topic().to_string(), e.partition()), n);
                                }
                            }
                        }
                    }
                }
                Some(Ok(m)) => {
                    let topic = match topics.get(m.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = Arc::from(m.topic());
                            topics.insert(m.topic().to_string(), t.clone());
                            t
                        }
                    };
                    let headers = match m.headers() {
                        Some(h) => h
                            .iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let payload = m.payload().map(|p| {
                        let start = chunk.data.len();
                        chunk.data.extend_from_slice(p);
                        start..chunk.data.len()
                    });
                    chunk.msgs.push(Msg {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key().map(|k| {
                            let start = chunk.data.len();
                            chunk.data.extend_from_slice(k);
                            start..chunk.data.len()
                        }),
                        payload,
                        headers,
                    });
                    if chunk.msgs.len() >= self.batch_size
                        && !self.send(Chunk::Messages(std::mem::take(&mut chunk)))
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    if let Some(err) = classify_poll_error(&e) {
                        let _ = self.send(Chunk::Failed(err));
                        return;
                    }
                    tracing::warn!(error = %e, "kafka consumer");
                }
            }
        }
    }

    /// Sends, waiting for room; false when the source is gone.
    pub(super) fn send(&self, chunk: Chunk) -> bool {
        self.tx.blocking_send(chunk).is_ok()
    }
}

/// Poll errors that stop the source; the rest (broker down, partition EOF) are logged
/// while librdkafka retries.
pub(super) fn classify_poll_error(e: &KafkaError) -> Option<Error> {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::TopicAuthorizationFailed | C::GroupAuthorizationFailed) => Some(Error::new(
            connector_api::ErrorKind::Auth,
            format!("kafka: {e}"),
        )),
        Some(C::Fatal) => Some(Error::internal(format!("kafka: {e}"))),
        _ => None,
    }
}
