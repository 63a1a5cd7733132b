//! The Redis sink: what one checkpoint interval writes is queued in a transaction
//! (`MULTI`) and applied with the pipeline's offsets by one `EXEC` at the flush, so
//! the server holds a write exactly when it holds the offsets after it. On open the
//! offsets are read back and the pipeline resumes from them: exactly once, whatever
//! the mode.

use connector_api::{Batch, Error, ErrorKind, Offsets, Result, Sink, SinkContext, SinkState};
use redis::aio::MultiplexedConnection;
use redis::{cmd, Value};

use crate::commands::commands;
use crate::config::{RedisSinkConfig, SinkMode};
use crate::conn::{connect, query, redis_error, text};

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
        self.in_multi = false;
        self.queued.clear();
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
        let cmds = commands(&self.config, &self.name, &batch.records)?;
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
            // each is queued ("QUEUED"); an error here (out of memory) aborts the
            // transaction, and EXEC says so
            let replies: Vec<Value> = p
                .ignore_errors()
                .query_async(self.con()?)
                .await
                .map_err(|e| redis_error("queueing writes", e))?;
            if let Some((i, Value::ServerError(e))) = replies
                .iter()
                .enumerate()
                .find(|(_, v)| matches!(v, Value::ServerError(_)))
            {
                return Err(Error::new(
                    ErrorKind::Aborted,
                    format!(
                        "redis: record {} of the write was not queued: {} {}",
                        self.queued[first + i],
                        e.code(),
                        e.details().unwrap_or_default()
                    ),
                ));
            }
        }
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
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
