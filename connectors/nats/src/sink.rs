//! The NATS sink: JetStream publishes acknowledged by the stream and de-duplicated by
//! message id, or core NATS publishes.
//!
//! With `msg_id = "ordinal"`, the id of a record is its ordinal in the pipeline: how many records it delivered
//! before this one since it began ([`Offsets::records`], kept with each checkpoint).
//! A run that crashed after publishing and before its checkpoint reads the same
//! records again in the same order (for a source that reads in order: a stream, one
//! partition, files, a table), gives them the same ids, and the stream drops them
//! within its duplicate window (two minutes unless the stream says otherwise). Rows
//! this sink refuses (no subject, a payload over the server's limit) shift the ids of
//! the rows after them until the next checkpoint. `msg_id_column` takes the id from
//! the records instead; without either (the default) a replay may store records
//! twice: at least once.

use std::future::IntoFuture;
use std::str::FromStr;

use arrow_array::RecordBatch;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::{Client, HeaderMap, HeaderName, HeaderValue};
use connector_api::{
    stable_hash, Batch, Error, ErrorKind, Offsets, Result, Sink, SinkContext, SinkState,
};
use sluice_formats::messages::{
    column_texts, record_headers, refuse, sink_payloads, AvroSink, Payloads,
};

use crate::config::{MsgId, NatsSinkConfig};
use crate::conn::{connect, nats_error};

/// Publishes records to subjects.
pub struct NatsSink {
    config: NatsSinkConfig,
    client: Option<Client>,
    js: Option<async_nats::jetstream::Context>,
    /// Acknowledgements of JetStream publishes not yet awaited.
    acks: Vec<PublishAckFuture>,
    /// Hash of the pipeline and sink names: ids of two pipelines never meet.
    tag: u64,
    /// The ordinal of the first record after the position the sink resumed from or
    /// last flushed ([`Offsets::records`]).
    base: u64,
    /// Records published since that position.
    count: u64,
    name: String,
    /// `format = "avro"`: the registry and subject.
    avro: Option<AvroSink>,
}

/// JetStream publishes whose acks are not awaited yet, at most: below the context's
/// own limit on acks in flight (5,000), past which a publish waits for one.
const MAX_UNAWAITED: usize = 4096;

/// What each record is published as.
struct Outgoing {
    subjects: Vec<String>,
    headers: Vec<HeaderMap>,
    payloads: Payloads,
}

impl NatsSink {
    /// A sink for `config` (validated).
    pub fn new(config: NatsSinkConfig) -> Self {
        NatsSink {
            config,
            client: None,
            js: None,
            acks: Vec::new(),
            tag: 0,
            base: 0,
            count: 0,
            name: String::new(),
            avro: None,
        }
    }

    fn client(&self) -> Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::internal("nats sink is not open"))
    }

    /// Waits for every publish's ack; one that failed sends the run back to its
    /// checkpoint.
    async fn await_acks(&mut self) -> Result<()> {
        let acks = std::mem::take(&mut self.acks);
        for ack in futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await {
            ack.map_err(|e| {
                aborted(nats_error(
                    "a publish was not acknowledged by its stream",
                    e,
                ))
            })?;
        }
        Ok(())
    }

    /// Subjects, headers and payloads of `records`, or the rows that cannot be
    /// published (no subject, a header NATS does not take, a payload over the server's
    /// limit), found before anything is sent.
    async fn outgoing(&mut self, records: &RecordBatch) -> Result<Outgoing> {
        let rows = records.num_rows();
        let mut found: Vec<(usize, String)> = Vec::new();
        let subjects: Vec<Option<String>> = match &self.config.subject_column {
            Some(name) => column_texts(records, name, "subject_column")?
                .into_iter()
                .map(|s| s.or_else(|| self.config.subject.clone()))
                .collect(),
            None => vec![self.config.subject.clone(); rows],
        };
        for (r, s) in subjects.iter().enumerate() {
            match s {
                None => found.push((
                    r,
                    "no subject: the subject column is null and no subject is set".into(),
                )),
                Some(s) if s.is_empty() || s.contains(['*', '>', ' ', '\t', '\r', '\n']) => {
                    found.push((r, format!("\"{s}\" is not a subject to publish to")))
                }
                _ => {}
            }
        }
        let mut headers = vec![HeaderMap::new(); rows];
        let pairs = record_headers(records, self.config.headers_column.as_deref())?;
        for (r, pairs) in pairs.into_iter().enumerate() {
            for (k, v) in pairs {
                match (HeaderName::from_str(&k), HeaderValue::from_str(v.as_deref().unwrap_or(""))) {
                    (Ok(k), Ok(v)) => headers[r].append(k, v),
                    _ => found.push((r, format!("header \"{k}\": a name or value NATS does not take (a colon, a line break, not ASCII)"))),
                }
            }
        }
        let ids: Option<Vec<Option<String>>> = match &self.config.msg_id_column {
            Some(name) => Some(column_texts(records, name, "msg_id_column")?),
            None => None,
        };
        for (r, h) in headers.iter_mut().enumerate() {
            let id = match (&ids, self.config.msg_id) {
                (Some(ids), _) => match &ids[r] {
                    Some(id) => id.clone(),
                    None => {
                        found.push((r, "the msg_id column is null".into()));
                        continue;
                    }
                },
                (None, MsgId::Ordinal) => {
                    format!("{:016x}-{}", self.tag, self.base + self.count + r as u64)
                }
                (None, MsgId::None) => break,
            };
            match HeaderValue::from_str(&id) {
                Ok(v) => h.insert(async_nats::header::NATS_MESSAGE_ID, v),
                Err(_) => found.push((
                    r,
                    format!("message id \"{id}\" is not a header value NATS takes"),
                )),
            }
        }
        let payloads = sink_payloads(
            records,
            self.config.format,
            &self.config.json,
            self.avro.as_mut(),
            self.config.include_metadata,
            &[
                self.config.subject_column.as_deref(),
                self.config.headers_column.as_deref(),
            ],
        )
        .await?;
        let max = self.client()?.server_info().max_payload;
        for (r, h) in headers.iter().enumerate() {
            // the server's limit counts the headers too
            let size = payloads.get(r).len() + header_bytes(h);
            if max > 0 && size > max {
                found.push((
                    r,
                    format!("a payload of {size} bytes is over the server's max_payload ({max})"),
                ));
            }
        }
        refuse(records, found, &self.name)?;
        Ok(Outgoing {
            subjects: subjects
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
            headers,
            payloads,
        })
    }
}

/// The bytes `headers` take in a message (`NATS/1.0`, each `name: value`, line ends).
fn header_bytes(headers: &HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    let lines: usize = headers
        .iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| k.to_string().len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n\r\n".len() + lines
}

#[connector_api::async_trait]
impl Sink for NatsSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.name = ctx.sink.clone();
        self.avro = AvroSink::new(
            self.config.format,
            self.config.schema_registry.as_ref(),
            self.config.schema_subject.as_deref(),
            self.config.destination(),
            &self.config.record_name,
        )?;
        self.tag = stable_hash(format!("{}\u{0}{}", ctx.pipeline, ctx.sink).as_bytes());
        let client = connect(&self.config.url, &format!("sluice {} sink", ctx.pipeline)).await?;
        if self.config.jetstream {
            let js = async_nats::jetstream::new(client.clone());
            if let Some(subject) = &self.config.subject {
                // a subject no stream stores would fail every publish
                js.stream_by_subject(subject.clone()).await.map_err(|e| {
                    Error::not_found(format!(
                        "nats: no JetStream stream stores subject \"{subject}\": create one (or set jetstream = false)"
                    ))
                    .with_field("subject")
                    .with_source(e)
                })?;
            }
            self.js = Some(js);
        }
        self.client = Some(client);
        Ok(SinkState::default())
    }

    async fn resume(&mut self, from: &Offsets) -> Result<()> {
        self.base = from.records().unwrap_or(0);
        self.count = 0;
        Ok(())
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let out = self.outgoing(&batch.records).await?;
        for r in 0..rows {
            let (subject, headers) = (out.subjects[r].clone(), out.headers[r].clone());
            let payload = bytes::Bytes::copy_from_slice(out.payloads.get(r));
            match &self.js {
                Some(js) => {
                    let ack = js
                        .publish_with_headers(subject, headers, payload)
                        .await
                        .map_err(|e| aborted(nats_error("publishing", e)))?;
                    self.acks.push(ack);
                    // the context lets only so many acks be outstanding: a publish past
                    // them would wait for acks nobody awaits
                    if self.acks.len() >= MAX_UNAWAITED {
                        self.await_acks().await?;
                    }
                }
                None => self
                    .client()?
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| nats_error("publishing", e))?,
            }
        }
        self.count += rows as u64;
        Ok(())
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        self.await_acks().await?;
        self.client()?
            .flush()
            .await
            .map_err(|e| aborted(nats_error("flushing", e)))?;
        self.base = offsets.records().unwrap_or(self.base + self.count);
        self.count = 0;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.acks.clear();
        self.client = None;
        self.js = None;
        Ok(())
    }
}

/// A publish that may not have reached its stream: the run goes back to its
/// checkpoint, and the message ids keep what did arrive from being stored twice.
fn aborted(e: Error) -> Error {
    match e.kind() {
        ErrorKind::Transient | ErrorKind::Connect | ErrorKind::Internal => {
            Error::new(ErrorKind::Aborted, e.message().to_string())
        }
        _ => e,
    }
}

/// `sluice check`: the servers answer and, for JetStream, a stream stores the subject.
pub async fn check(config: &NatsSinkConfig) -> Result<()> {
    let mut sink = NatsSink::new(config.clone());
    sink.open(&SinkContext::for_pipeline("check"))
        .await
        .map(|_| ())
}
