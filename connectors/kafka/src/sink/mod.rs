//! The Kafka sink: an idempotent (or transactional) producer.
//!
//! `write` hands every record to librdkafka; `flush` returns only when every message
//! has a delivery report, and fails the whole pipeline back to its checkpoint
//! ([`ErrorKind::Aborted`]) when one was not delivered: a failed delivery is never
//! dropped silently. With `exactly_once = true` each flush commits one transaction;
//! when the source of the same pipeline is a Kafka consumer, its offsets commit in that
//! transaction (`send_offsets_to_transaction`).

mod encode;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_api::{
    Batch, Error, ErrorKind, Offsets, Reject, Result, Sink, SinkContext, SinkState,
};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use sluice_formats::avro::AvroWriter;

use self::encode::Encoded;
use crate::config::{KafkaSinkConfig, ValueFormat};
use crate::{kafka_error, log_to_tracing, source};

/// The first failed delivery: what kind of error it makes, and the message.
type Failure = (ErrorKind, String);

/// The error a delivery failure with `code` to `topic` makes: a missing topic or a
/// record larger than the broker takes fail for good, naming the way out; anything
/// else (a broker not answering before `delivery_timeout`) aborts the run, which
/// starts again from its checkpoint.
fn delivery_failure(code: Option<RDKafkaErrorCode>, topic: &str, e: &KafkaError) -> Failure {
    match code {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => (
            ErrorKind::NotFound,
            format!("topic \"{topic}\" does not exist: create it (or let the brokers create topics): {e}"),
        ),
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => (
            ErrorKind::Data,
            format!("a record is larger than topic \"{topic}\" takes (the broker's message.max.bytes): {e}"),
        ),
        _ => (
            ErrorKind::Aborted,
            format!("delivery to topic \"{topic}\" failed: {e}"),
        ),
    }
}

/// The producer's callbacks: it remembers the first failed delivery.
pub(crate) struct Ctx {
    failed: Arc<Mutex<Option<Failure>>>,
    errors: crate::ErrorLog,
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.report("producer", &error, reason);
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
            self.fail((ErrorKind::Aborted, format!("{error}: {reason}")));
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::Message;
            self.fail(delivery_failure(e.rdkafka_error_code(), m.topic(), e));
        }
    }
}

impl Ctx {
    fn fail(&self, message: Failure) {
        let mut slot = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(message);
        }
    }
}

type Producer_ = ThreadedProducer<Ctx>;

/// The `kafka` sink.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    pipeline: String,
    producer: Option<Arc<Producer_>>,
    failed: Arc<Mutex<Option<Failure>>>,
    in_txn: bool,
    /// `format = "avro"` or `key_format = "avro"`: the encoders and the registered
    /// schema ids.
    avro: Option<AvroWriter>,
}

impl KafkaSink {
    /// A sink for `config` (validated); connects in `open`.
    pub fn new(config: KafkaSinkConfig) -> Result<Self> {
        let avro = match &config.schema_registry {
            Some(r) => Some(AvroWriter::new(r, &config.record_name)?),
            None => None,
        };
        Ok(KafkaSink {
            config,
            pipeline: String::new(),
            producer: None,
            failed: Arc::new(Mutex::new(None)),
            in_txn: false,
            avro,
        })
    }

    fn producer(&self) -> Result<Arc<Producer_>> {
        self.producer
            .clone()
            .ok_or_else(|| Error::internal("kafka sink used before open"))
    }

    fn check_failed(&self) -> Result<()> {
        match self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some((kind, m)) => Err(Error::new(kind, format!("kafka: {m}"))),
            None => Ok(()),
        }
    }
}

/// The records of `enc` over `message.max.bytes`, each a reject naming topic and row:
/// librdkafka would refuse them one by one after the records before them were sent,
/// so the whole write is refused before anything is.
fn oversized(enc: &Encoded, rows: usize, config: &KafkaSinkConfig) -> Result<Vec<(usize, Reject)>> {
    let max = config.max_message_bytes()?;
    let mut out = Vec::new();
    for row in 0..rows {
        let size = enc.wire_size(row);
        if size <= max {
            continue;
        }
        let topic = enc.topic(row, config.topic.as_deref())?;
        let payload = enc.payload(row).unwrap_or_default();
        let error = Error::data(format!(
            "a message of {size} bytes is over message.max.bytes ({max}): raise `options.\"message.max.bytes\"` \
             (and the topic's max.message.bytes) or make the record smaller"
        ));
        // the text is a preview: the bytes are all there, once
        let preview = String::from_utf8_lossy(&payload[..payload.len().min(1024)]);
        let mut reject = Reject::new(
            topic,
            format!("topic \"{topic}\" record {row} of the write"),
            format!("{preview}... ({size} bytes, all in record_base64)"),
            error,
        );
        reject.bytes = Some(payload.to_vec());
        reject.key = enc.key(row).map(<[u8]>::to_vec);
        out.push((row, reject));
    }
    Ok(out)
}

/// Creates a producer and checks the brokers answer.
pub(crate) fn connect(
    config: &KafkaSinkConfig,
    pipeline: &str,
    sink: &str,
    failed: Arc<Mutex<Option<Failure>>>,
) -> Result<Producer_> {
    let producer: Producer_ = config
        .client_config(pipeline, sink)
        .create_with_context(Ctx {
            failed,
            errors: Default::default(),
        })
        .map_err(|e| kafka_error("creating the producer", e))?;
    crate::broker_metadata(producer.client(), &config.bootstrap_servers)?;
    Ok(producer)
}

#[connector_api::async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.pipeline = ctx.pipeline.clone();
        self.failed = Arc::new(Mutex::new(None));
        self.in_txn = false;
        let config = self.config.clone();
        let (pipeline, sink, failed) =
            (ctx.pipeline.clone(), ctx.sink.clone(), self.failed.clone());
        let producer = blocking(move || {
            let p = connect(&config, &pipeline, &sink, failed)?;
            if config.exactly_once {
                // fences an older instance with the same transactional id and aborts
                // whatever transaction it left open
                p.init_transactions(Duration::from_secs(60))
                    .map_err(|e| txn_error("initialising transactions", e))?;
            }
            Ok(p)
        })
        .await?;
        self.producer = Some(Arc::new(producer));
        Ok(SinkState::default())
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        self.check_failed()?;
        let rb = &batch.records;
        if rb.num_rows() == 0 {
            return Ok(());
        }
        let producer = self.producer()?;
        let mut enc =
            connector_api::blocking(|| Encoded::new(&self.config, rb, self.avro.as_mut()))?;
        if let Some(avro) = &mut self.avro {
            enc.set_schema_ids(&self.config, avro).await?;
        }
        let mut refused = oversized(&enc, rb.num_rows(), &self.config)?;
        if self.config.format == ValueFormat::Json {
            let place = format!(
                "kafka sink \"{}\"",
                self.config.topic.as_deref().unwrap_or("(topic column)")
            );
            refused.extend(sluice_formats::scan::json_refusals(rb, &place)?);
        }
        if !refused.is_empty() {
            return Err(Error::refused(refused));
        }
        if self.config.exactly_once && !self.in_txn {
            producer
                .begin_transaction()
                .map_err(|e| txn_error("beginning a transaction", e))?;
            self.in_txn = true;
        }
        for row in 0..rb.num_rows() {
            let topic = enc.topic(row, self.config.topic.as_deref())?;
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(p) = enc.payload(row) {
                record = record.payload(p);
            }
            if let Some(k) = enc.key(row) {
                record = record.key(k);
            }
            if let Some(h) = enc.headers(row) {
                record = record.headers(h);
            }
            if let Some(ts) = enc.timestamp(row) {
                record = record.timestamp(ts);
            }
            if let Some(p) = enc.partition(row) {
                record = record.partition(p);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        // the producer's own thread drains the queue
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        self.check_failed()?;
                    }
                    Err((e, r)) => {
                        // refused before it left: about this record, unless the topic is
                        // missing
                        let (kind, m) = delivery_failure(e.rdkafka_error_code(), r.topic, &e);
                        let kind = match kind {
                            ErrorKind::Aborted => ErrorKind::Data,
                            k => k,
                        };
                        return Err(Error::new(kind, format!("kafka: record {row}: {m}")));
                    }
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        let producer = self.producer()?;
        let timeout = self.config.delivery_timeout;
        if !self.config.exactly_once {
            blocking(move || {
                producer.flush(timeout).map_err(|e| {
                    Error::transient(format!("kafka: waiting for delivery reports: {e}"))
                })
            })
            .await?;
            return self.check_failed();
        }
        let group = source::group_of(&self.pipeline)
            .and_then(|g| g.txn_offsets(offsets))
            .filter(|(tpl, _)| tpl.count() > 0);
        if !self.in_txn && group.is_none() {
            return self.check_failed();
        }
        let began = self.in_txn;
        self.in_txn = false;
        let failed = self.failed.clone();
        blocking(move || {
            if !began {
                producer
                    .begin_transaction()
                    .map_err(|e| txn_error("beginning a transaction", e))?;
            }
            let result = (|| {
                if let Some((tpl, meta)) = &group {
                    producer
                        .send_offsets_to_transaction(tpl, meta, timeout)
                        .map_err(|e| {
                            txn_error("adding the consumed offsets to the transaction", e)
                        })?;
                }
                if let Some((kind, m)) = failed.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    return Err(Error::new(kind, format!("kafka: {m}")));
                }
                producer
                    .commit_transaction(timeout)
                    .map_err(|e| txn_error("committing the transaction", e))
            })();
            if result.is_err() {
                if let Err(e) = producer.abort_transaction(timeout) {
                    tracing::warn!(error = %e, "kafka: aborting the transaction failed");
                }
            }
            result
        })
        .await
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(p) = self.producer.take() {
            let in_txn = std::mem::take(&mut self.in_txn);
            blocking(move || {
                if in_txn {
                    let _ = p.abort_transaction(Duration::from_secs(10));
                }
                drop(p);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("kafka task failed").with_source(e))?
}

/// A transaction error: everything since the last commit is gone, so the pipeline
/// restarts from its checkpoint.
fn txn_error(what: &str, e: KafkaError) -> Error {
    Error::new(ErrorKind::Aborted, format!("kafka: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_topic_and_a_record_too_large_fail_for_good_a_timeout_aborts_the_run() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        let (kind, m) = delivery_failure(e.rdkafka_error_code(), "orders", &e);
        assert_eq!(kind, ErrorKind::NotFound);
        assert!(m.contains("topic \"orders\" does not exist"), "{m}");
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let (kind, m) = delivery_failure(e.rdkafka_error_code(), "orders", &e);
        assert_eq!(kind, ErrorKind::Data);
        assert!(m.contains("message.max.bytes"), "{m}");
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let (kind, _) = delivery_failure(e.rdkafka_error_code(), "orders", &e);
        assert_eq!(kind, ErrorKind::Aborted);
    }
}
