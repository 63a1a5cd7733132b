//! The Redis sink: what one checkpoint interval writes is queued in a transaction
//! (`MULTI`) and applied with the pipeline's offsets by one `EXEC` at the flush, so
//! the server holds a write exactly when it holds the offsets after it. On open the
//! offsets are read back and the pipeline resumes from them: exactly once, whatever
//! the mode.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use connector_api::{Batch, Error, ErrorKind, Offsets, Result, Sink, SinkContext, SinkState};
use redis::aio::MultiplexedConnection;
use redis::{cmd, Value};

use sluice_formats::messages::AvroSink;

use crate::commands::commands;
use crate::config::{RedisSinkConfig, SinkMode};
use crate::conn::{connect, query, redis_error, text};

/// Pipelines sent and not yet answered, at most, before the sink waits for the oldest.
const IN_FLIGHT: usize = 4;

/// The replies to a pipeline sent.
type Sent = Pin<Box<dyn Future<Output = redis::RedisResult<Vec<Value>>> + Send>>;

/// Writes records to Redis.
pub struct RedisSink {
    config: RedisSinkConfig,
    con: Option<MultiplexedConnection>,
    name: String,
    offsets_key: String,
    /// A transaction is open on the connection.
    in_multi: bool,
    /// The record (row of its write) of each command queued in it, to name one that
    /// fails.
    queued: Vec<usize>,
    /// Commands sent per pipeline at most.
    chunk: usize,
    /// Pipelines sent whose replies (`QUEUED` each) are not read yet, oldest first,
    /// each with the index in `queued` of its first command and its write's number.
    sent: VecDeque<(usize, u64, Sent)>,
    /// Writes the sink was given (their number names a write in an error).
    writes: u64,
    /// `format = "avro"`: the registry and subject.
    avro: Option<AvroSink>,
}

impl RedisSink {
    /// A sink for `config` (validated).
    pub fn new(config: RedisSinkConfig) -> Self {
        RedisSink {
            config,
            con: None,
            name: String::new(),
            offsets_key: String::new(),
            in_multi: false,
            queued: Vec::new(),
            chunk: 2048,
            sent: VecDeque::new(),
            writes: 0,
            avro: None,
        }
    }

    fn con(&mut self) -> Result<&mut MultiplexedConnection> {
        self.con
            .as_mut()
            .ok_or_else(|| Error::internal("redis sink is not open"))
    }

    /// Where the sink writes, in words.
    fn target(&self) -> String {
        match (&self.config.stream, self.config.mode) {
            (Some(stream), SinkMode::Stream) => format!("stream \"{stream}\""),
            _ => format!("keys \"{}*\"", self.config.key_prefix),
        }
    }

    /// Sends `p` (the commands `queued[first..]`) without waiting for its replies, so
    /// the next records are encoded while the server queues these; waits for the
    /// oldest pipeline once [`IN_FLIGHT`] are out.
    async fn send(&mut self, first: usize, mut p: redis::Pipeline) -> Result<()> {
        while self.sent.len() >= IN_FLIGHT {
            self.answered().await?;
        }
        let mut con = self.con()?.clone();
        let mut sent: Sent =
            Box::pin(async move { p.ignore_errors().query_async::<Vec<Value>>(&mut con).await });
        // one poll hands the pipeline to the connection's writer, so pipelines go out
        // in the order they are made: the connection has no concurrency limit, its
        // request channel holds far more than IN_FLIGHT, and the poll is outside
        // tokio's task budget (which could make the send wait), so it never waits
        let first_poll = std::future::poll_fn(|cx| Poll::Ready(sent.as_mut().poll(cx)));
        if let Poll::Ready(done) = tokio::task::unconstrained(first_poll).await {
            sent = Box::pin(std::future::ready(done));
        }
        self.sent.push_back((first, self.writes, sent));
        // the connection's writer was woken on this worker: let it put the pipeline
        // on the wire before the next records are encoded
        tokio::task::yield_now().await;
        Ok(())
    }

    /// Waits for the replies of the oldest pipeline sent: each command queued, or
    /// an error naming the record of the one that was not (out of memory), which
    /// aborts the transaction (`EXEC` says so).
    async fn answered(&mut self) -> Result<()> {
        let Some((first, write, sent)) = self.sent.pop_front() else {
            return Ok(());
        };
        let replies = sent.await.map_err(|e| redis_error("queueing writes", e))?;
        if let Some((i, Value::ServerError(e))) = replies
            .iter()
            .enumerate()
            .find(|(_, v)| matches!(v, Value::ServerError(_)))
        {
            return Err(Error::new(
                ErrorKind::Aborted,
                format!(
                    "redis: record {} of {} was not queued: {} {}",
                    self.queued[first + i],
                    match write == self.writes {
                        true => "the latest write",
                        false => "an earlier write since the last checkpoint",
                    },
                    e.code(),
                    e.details().unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    async fn begin(&mut self) -> Result<()> {
        if !self.in_multi {
            query(self.con()?, &cmd("MULTI"), "starting a transaction").await?;
            self.in_multi = true;
        }
        Ok(())
    }
}

#[connector_api::async_trait]
impl Sink for RedisSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.name = ctx.sink.clone();
        self.offsets_key = self.config.offsets_key(&ctx.pipeline, &ctx.sink);
        self.avro = AvroSink::new(
            self.config.format.payload_format(),
            self.config.schema_registry.as_ref(),
            self.config.schema_subject.as_deref(),
            self.config.destination(),
            &self.config.record_name,
        )?;
        self.in_multi = false;
        self.queued.clear();
        self.sent.clear();
        let mut con = connect(&self.config.url, &format!("sluice {} sink", ctx.pipeline)).await?;
        if let (SinkMode::Stream, Some(stream)) = (self.config.mode, &self.config.stream) {
            let t = cmd("TYPE").arg(stream).clone();
            let kind = query(&mut con, &t, format!("key \"{stream}\""))
                .await
                .map(|v| text(&v))?;
            if let Some(kind) = kind.filter(|k| k != "stream" && k != "none") {
                return Err(Error::schema(format!(
                    "redis: key \"{stream}\" holds a {kind}, not a stream"
                ))
                .with_field("stream"));
            }
        }
        let get = cmd("GET").arg(&self.offsets_key).clone();
        let stored = query(
            &mut con,
            &get,
            format!("reading offsets \"{}\"", self.offsets_key),
        )
        .await?;
        let offsets = match text(&stored) {
            Some(envelope) => Offsets::from_envelope(&envelope).map_err(|e| {
                Error::data(format!(
                    "redis: key \"{}\" does not hold this pipeline's offsets: {e}",
                    self.offsets_key
                ))
            })?,
            None => Offsets::new(),
        };
        self.con = Some(con);
        Ok(SinkState {
            offsets: Some(offsets),
            schema: None,
        })
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.writes += 1;
        let cmds = commands(&self.config, &self.name, &batch.records, self.avro.as_mut()).await?;
        self.begin().await?;
        let mut cmds = cmds.into_iter();
        loop {
            let mut p = redis::pipe();
            let first = self.queued.len();
            for (c, row) in cmds.by_ref().take(self.chunk) {
                p.add_command(c);
                self.queued.push(row);
            }
            if self.queued.len() == first {
                return Ok(());
            }
            self.send(first, p).await?;
        }
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        while !self.sent.is_empty() {
            self.answered().await?;
        }
        self.begin().await?;
        let set = cmd("SET")
            .arg(&self.offsets_key)
            .arg(offsets.to_envelope())
            .clone();
        query(self.con()?, &set, "queueing the offsets").await?;
        self.in_multi = false;
        let done = query(self.con()?, &cmd("EXEC"), "applying the transaction").await?;
        let replies = match done {
            Value::Array(r) => r,
            other => {
                return Err(Error::new(
                    ErrorKind::Aborted,
                    format!("redis: the transaction was not applied ({other:?})"),
                ))
            }
        };
        let queued = std::mem::take(&mut self.queued);
        if let Some((i, Value::ServerError(e))) = replies
            .iter()
            .enumerate()
            .find(|(_, v)| matches!(v, Value::ServerError(_)))
        {
            // Redis applied the transaction's other commands, the offsets too: stop,
            // naming what failed, rather than go on past it
            let kind = match e.code() {
                "WRONGTYPE" => ErrorKind::Schema,
                _ => ErrorKind::Internal,
            };
            return Err(Error::new(
                kind,
                format!(
                    "redis: {} failed in the transaction: {} {}; Redis applied the rest of it, the offsets too, so that record is not written: fix the key, then replay from an earlier checkpoint",
                    match queued.get(i) {
                        Some(row) => format!("the command writing record {row} of a write to {}", self.target()),
                        None => "storing the offsets".to_string(),
                    },
                    e.code(),
                    e.details().unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.sent.clear();
        if self.in_multi {
            if let Some(con) = self.con.as_mut() {
                let _ = cmd("DISCARD").query_async::<Value>(con).await;
            }
        }
        self.in_multi = false;
        self.con = None;
        Ok(())
    }
}

/// `sluice check`: the server answers and the stream key is a stream or absent.
pub async fn check(config: &RedisSinkConfig) -> Result<()> {
    let mut sink = RedisSink::new(config.clone());
    sink.open(&SinkContext::for_pipeline("check"))
        .await
        .map(|_| ())
}
