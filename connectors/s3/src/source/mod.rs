//! The S3 source: lists a bucket prefix, reads matching objects in key order, resumable
//! inside an object, optionally polling for new objects.
//!
//! Each object is a split; its offset is the object's ETag (so a replaced object is
//! noticed), the position after the last delivered record (bytes of the decompressed
//! text, or rows of a Parquet file), the line count, and `done` once the object is
//! read to its end. Text objects stream: an uncompressed one resumes with a ranged GET
//! from its position, a compressed one is decompressed again from its start and the
//! delivered bytes skipped. A Parquet object needs random access, so it is spooled to a
//! temporary file first (memory stays flat for any object size).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use connector_api::{Batch, Error, Offsets, Reject, Result, Source, SourceContext};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde::{Deserialize, Serialize};
use sluice_formats::{Decoded, Format, TextDecoder};

use crate::client::{connect, s3_error};
use crate::codec::Decompressor;
use crate::config::{Compression, Connection, S3SourceConfig};
use crate::sink::check_bucket;

mod discover;
mod listing;

pub use self::discover::discover;
pub use self::listing::{check, splits};
use self::listing::{list_matching, Listed};

/// The offset of an object split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectOffset {
    /// The object's ETag when it was read.
    pub etag: String,
    /// Position after the last delivered record: bytes (text) or rows (Parquet).
    pub pos: u64,
    /// Newlines before `pos` (text formats), for line numbers in errors.
    pub line: u64,
    /// The object was read to its end.
    #[serde(default)]
    pub done: bool,
}

enum Body {
    Text {
        stream: ByteStream,
        decompress: Decompressor,
        /// Decompressed bytes not yet decoded are `buf[start..]`.
        buf: Vec<u8>,
        start: usize,
        /// Decompressed bytes still to drop (resuming inside a compressed object).
        skip: u64,
        drained: bool,
    },
    Parquet(ParquetRecordBatchReader),
}

struct Current {
    key: String,
    etag: String,
    /// The object's size as listed.
    size: u64,
    pos: u64,
    line: u64,
    body: Body,
}

/// Reads objects matching `path` in a bucket.
pub struct S3Source {
    config: S3SourceConfig,
    conn: Connection,
    pattern: glob::Pattern,
    client: Option<Client>,
    text: Option<TextDecoder>,
    known: BTreeMap<String, ObjectOffset>,
    pending: VecDeque<Listed>,
    current: Option<Current>,
    ready: VecDeque<Batch>,
    listed: Option<Instant>,
    batch_size: usize,
    idle_timeout: Duration,
    parts: usize,
    row_bytes: usize,
    /// The objects to read, when the runtime shares the pipeline's objects between
    /// runtimes ([`SourceContext::splits`]); `None`: every object the glob matches.
    only: Option<std::collections::BTreeSet<String>>,
    /// A bounded read: each matching object's size and whether its positions are
    /// bytes of it (plain text) rather than rows or decompressed bytes, for progress.
    sizes: BTreeMap<String, (u64, bool)>,
}

const READ_TARGET: usize = 1 << 20;

/// Bytes read from an object's start to infer a CSV schema before resuming inside it.
const PRIME_BYTES: u64 = 4 << 20;

impl S3Source {
    /// A source for `config` (validated).
    pub fn new(config: S3SourceConfig) -> Result<Self> {
        config.validate()?;
        let pattern = glob::Pattern::new(&config.path)
            .map_err(|e| Error::config("path").with_source(e).with_field("path"))?;
        let text = TextDecoder::new(config.format, config.declared_schema()?, &config.csv);
        Ok(S3Source {
            conn: config.connection(),
            config,
            pattern,
            client: None,
            text,
            known: BTreeMap::new(),
            pending: VecDeque::new(),
            current: None,
            ready: VecDeque::new(),
            listed: None,
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            parts: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            row_bytes: 256,
            sizes: BTreeMap::new(),
            only: None,
        })
    }

    fn client(&self) -> Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::internal("the S3 source is not open"))
    }

    /// Lists the objects with unread data, in key order.
    async fn list(&mut self) -> Result<()> {
        let mut all =
            list_matching(self.client()?, &self.conn, &self.config, &self.pattern).await?;
        if let Some(only) = &self.only {
            all.retain(|o| only.contains(&o.key));
        }
        self.listed = Some(Instant::now());
        if !self.config.watch {
            self.sizes = all
                .iter()
                .map(|o| (o.key.clone(), (o.size, self.plain(&o.key))))
                .collect();
        }
        self.pending = all
            .into_iter()
            .filter(|o| match self.known.get(&o.key) {
                Some(off) if off.etag == o.etag => !off.done,
                Some(_) => {
                    tracing::warn!(object = %self.conn.url(&o.key), "object was replaced since it was read; reading the new object from the start");
                    true
                }
                None => true,
            })
            .collect();
        Ok(())
    }

    /// True when positions in the object `key` are bytes of it (plain text), not rows
    /// or decompressed bytes.
    fn plain(&self, key: &str) -> bool {
        self.config.format != Format::Parquet
            && self.config.compression.for_key(key) == Compression::None
    }

    /// Opens `obj` at its stored position; a batch of rejects when it cannot be read.
    async fn open_object(&mut self, obj: Listed) -> Result<Option<Batch>> {
        let (pos, line) = match self.known.get(&obj.key) {
            Some(off) if off.etag == obj.etag => (off.pos, off.line),
            _ => (0, 0),
        };
        let url = self.conn.url(&obj.key);
        let client = self.client()?.clone();
        if self.config.format == Format::Parquet {
            let reader = match spool_parquet(&client, &self.conn, &obj, pos, self.batch_size).await
            {
                Ok(r) => r,
                Err(e) if e.kind() == connector_api::ErrorKind::Data => {
                    return Ok(Some(self.reject_object(&obj.key, &obj.etag, pos, line, e)?))
                }
                Err(e) => return Err(e),
            };
            match reader {
                Some(reader) => {
                    self.current = Some(Current {
                        key: obj.key,
                        etag: obj.etag,
                        size: obj.size,
                        pos,
                        line,
                        body: Body::Parquet(reader),
                    })
                }
                None => return Ok(Some(Self::done_batch(&obj.key, &obj.etag, pos, line)?)),
            }
            return Ok(None);
        }
        let compression = self.config.compression.for_key(&obj.key);
        let unknown_schema = self.text.as_ref().is_some_and(|t| t.schema().is_none());
        if pos > 0 && unknown_schema {
            // resuming inside the object: a CSV schema still to infer comes from the
            // object's start (its header), not from the first unread row
            let (head, eof) = head_bytes(&client, &self.conn, &obj, compression).await?;
            if let Some(text) = self.text.as_mut() {
                text.prime(&head, eof)
                    .map_err(|e| e.context(format!("reading {url}")))?;
            }
        }
        let ranged = compression == Compression::None && pos > 0;
        if ranged && pos >= obj.size {
            return Ok(Some(Self::done_batch(&obj.key, &obj.etag, pos, line)?));
        }
        let mut get = client.get_object().bucket(&self.conn.bucket).key(&obj.key);
        if ranged {
            get = get.range(format!("bytes={pos}-"));
        }
        let out = get
            .send()
            .await
            .map_err(|e| s3_error(e, &format!("reading {url}")))?;
        self.current = Some(Current {
            key: obj.key,
            etag: obj.etag,
            size: obj.size,
            pos,
            line,
            body: Body::Text {
                stream: out.body,
                decompress: Decompressor::new(compression)?,
                buf: Vec::new(),
                start: 0,
                skip: if ranged { 0 } else { pos },
                drained: false,
            },
        });
        Ok(None)
    }

    fn offsets(key: &str, etag: &str, pos: u64, line: u64, done: bool) -> Result<Offsets> {
        let mut offsets = Offsets::new();
        offsets.set_typed(
            key.to_string(),
            &ObjectOffset {
                etag: etag.to_string(),
                pos,
                line,
                done,
            },
        )?;
        Ok(offsets)
    }

    fn done_batch(key: &str, etag: &str, pos: u64, line: u64) -> Result<Batch> {
        let mut b = Batch::idle();
        b.offsets = Self::offsets(key, etag, pos, line, true)?;
        Ok(b)
    }

    /// The whole rest of an object as one rejected record: it cannot be read (corrupt
    /// Parquet, a broken gzip stream). The runtime dead-letters it or stops, per
    /// `errors.tolerance`; either way the object is not read again.
    fn reject_object(&self, key: &str, etag: &str, pos: u64, line: u64, e: Error) -> Result<Batch> {
        let mut b = Self::done_batch(key, etag, pos, line)?;
        b.rejects.push(Reject::new(
            key,
            format!("object {} after line {line}", self.conn.url(key)),
            "",
            e,
        ));
        Ok(b)
    }

    /// Reads from the current object; `None` when it is finished.
    async fn read_current(&mut self) -> Result<Option<Batch>> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(None);
        };
        let rows = self.batch_size;
        match &mut cur.body {
            Body::Parquet(reader) => match reader.next() {
                Some(Ok(records)) => {
                    cur.pos += records.num_rows() as u64;
                    let offsets = Self::offsets(&cur.key, &cur.etag, cur.pos, 0, false)?;
                    Ok(Some(Batch::new(records, offsets)))
                }
                Some(Err(e)) => {
                    let (key, etag, pos) = (cur.key.clone(), cur.etag.clone(), cur.pos);
                    self.current = None;
                    let e = Error::data(format!("unreadable parquet: {e}"));
                    Ok(Some(self.reject_object(&key, &etag, pos, 0, e)?))
                }
                None => {
                    let b = Self::done_batch(&cur.key, &cur.etag, cur.pos, 0)?;
                    self.current = None;
                    Ok(Some(b))
                }
            },
            Body::Text {
                stream,
                decompress,
                buf,
                start,
                skip,
                drained,
            } => {
                let text = self
                    .text
                    .as_mut()
                    .ok_or_else(|| Error::internal("no text decoder"))?;
                let target = READ_TARGET.max(self.row_bytes * rows * self.parts);
                let mut need_more = false;
                loop {
                    while !*drained && (need_more || buf.len() - *start < target) {
                        need_more = false;
                        if *start > 0 {
                            buf.drain(..*start);
                            *start = 0;
                        }
                        let before = buf.len();
                        let pushed = match stream.next().await {
                            Some(Ok(chunk)) => decompress.push(&chunk, buf),
                            Some(Err(e)) => {
                                return Err(Error::transient(format!(
                                    "reading {}: the download broke off",
                                    self.conn.url(&cur.key)
                                ))
                                .with_source(e))
                            }
                            None => {
                                *drained = true;
                                decompress.finish(buf)
                            }
                        };
                        if let Err(e) = pushed {
                            let (key, etag, pos, line) =
                                (cur.key.clone(), cur.etag.clone(), cur.pos, cur.line);
                            self.current = None;
                            let e = Error::data(format!("cannot decompress: {e}"));
                            return Ok(Some(self.reject_object(&key, &etag, pos, line, e)?));
                        }
                        if *skip > 0 {
                            let n = (*skip).min((buf.len() - before) as u64) as usize;
                            buf.drain(before..before + n);
                            *skip -= n as u64;
                        }
                    }
                    if *start < buf.len() {
                        let (parts, at_start) = (self.parts, cur.pos == 0);
                        let parts = connector_api::blocking(|| {
                            text.decode_parts(&buf[*start..], rows, parts, *drained, at_start)
                        })
                        .map_err(|e| {
                            e.context(format!(
                                "{} after line {}",
                                self.conn.url(&cur.key),
                                cur.line
                            ))
                        })?;
                        let consumed: usize = parts.iter().map(|d| d.consumed).sum();
                        if consumed > 0 {
                            let lines: u64 = parts.iter().map(|d| d.lines).sum();
                            if lines > 0 {
                                self.row_bytes = (consumed / lines as usize).max(1);
                            }
                            *start += consumed;
                            for decoded in parts {
                                let batch = to_batch(cur, text, decoded, &self.conn)?;
                                self.ready.push_back(batch);
                            }
                            return Ok(self.ready.pop_front());
                        }
                    }
                    if *drained {
                        let b = Self::offsets(&cur.key, &cur.etag, cur.pos, cur.line, true)?;
                        self.current = None;
                        let mut done = Batch::idle();
                        done.offsets = b;
                        return Ok(Some(done));
                    }
                    need_more = true;
                }
            }
        }
    }
}

/// Turns one decoded part into a batch, advancing the object position past it.
fn to_batch(
    cur: &mut Current,
    text: &TextDecoder,
    decoded: Decoded,
    conn: &Connection,
) -> Result<Batch> {
    let first_line = cur.line;
    cur.pos += decoded.consumed as u64;
    cur.line += decoded.lines;
    let offsets = S3Source::offsets(&cur.key, &cur.etag, cur.pos, cur.line, false)?;
    Ok(decoded.into_batch(text.schema(), offsets, &cur.key, |i| {
        format!(
            "object {} line {}",
            conn.url(&cur.key),
            first_line + i as u64 + 1
        )
    }))
}

/// The first [`PRIME_BYTES`] of `obj`, decompressed, and whether that is all of it.
async fn head_bytes(
    client: &Client,
    conn: &Connection,
    obj: &Listed,
    compression: Compression,
) -> Result<(Vec<u8>, bool)> {
    let url = conn.url(&obj.key);
    let mut get = client.get_object().bucket(&conn.bucket).key(&obj.key);
    if compression == Compression::None {
        get = get.range(format!("bytes=0-{}", PRIME_BYTES - 1));
    }
    let mut stream = get
        .send()
        .await
        .map_err(|e| s3_error(e, &format!("reading {url}")))?
        .body;
    let mut decompress = Decompressor::new(compression)?;
    let mut head = Vec::new();
    let cannot = |e: std::io::Error| Error::data(format!("{url}: cannot decompress: {e}"));
    while head.len() < PRIME_BYTES as usize {
        match stream.next().await {
            Some(Ok(chunk)) => decompress.push(&chunk, &mut head).map_err(cannot)?,
            Some(Err(e)) => {
                return Err(
                    Error::transient(format!("reading {url}: the download broke off"))
                        .with_source(e),
                )
            }
            None => {
                decompress.finish(&mut head).map_err(cannot)?;
                return Ok((head, true));
            }
        }
    }
    Ok((
        head,
        compression == Compression::None && obj.size <= PRIME_BYTES,
    ))
}

/// Downloads a Parquet object into a temporary file and opens it at row `pos`; `None`
/// when it has no rows after `pos`. Data errors mean the object is not Parquet.
async fn spool_parquet(
    client: &Client,
    conn: &Connection,
    obj: &Listed,
    pos: u64,
    rows: usize,
) -> Result<Option<ParquetRecordBatchReader>> {
    let url = conn.url(&obj.key);
    let out = client
        .get_object()
        .bucket(&conn.bucket)
        .key(&obj.key)
        .send()
        .await
        .map_err(|e| s3_error(e, &format!("reading {url}")))?;
    let mut file = tempfile::tempfile()
        .map_err(|e| Error::from(e).context("temporary file for a Parquet object"))?;
    let mut body = out.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Error::transient(format!("reading {url}: the download broke off")).with_source(e)
        })?;
        file.write_all(&chunk)
            .map_err(|e| Error::from(e).context("temporary file for a Parquet object"))?;
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::data(format!("{url} is not a readable Parquet file: {e}")))?;
    let total = builder.metadata().file_metadata().num_rows() as u64;
    if pos >= total {
        return Ok(None);
    }
    let reader = builder
        .with_batch_size(rows)
        .with_offset(pos as usize)
        .build()
        .map_err(|e| Error::data(format!("{url}: {e}")))?;
    Ok(Some(reader))
}

#[connector_api::async_trait]
impl Source for S3Source {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        if let (Some(columns), Some(text)) = (&ctx.columns, self.text.as_mut()) {
            // JSON lines: the fields no query reads are passed over unread
            if text.read_only(columns) {
                tracing::info!(?columns, "reading only the columns the first query reads");
            }
        }
        if let Some(splits) = &ctx.splits {
            // these objects to their end as they are now: the runtime lists again
            self.only = Some(splits.iter().cloned().collect());
            self.config.watch = false;
        }
        for (split, value) in committed.iter() {
            let off: ObjectOffset = serde_json::from_value(value.clone()).map_err(|e| {
                Error::internal(format!("stored offset of object \"{split}\" is unreadable"))
                    .with_source(e)
            })?;
            self.known.insert(split.clone(), off);
        }
        let client = connect(&self.conn).await?;
        check_bucket(&client, &self.conn).await?;
        self.client = Some(client);
        self.list().await?;
        // given objects may have gone since they were listed: nothing to read
        if !self.config.watch
            && self.only.is_none()
            && self.pending.is_empty()
            && !self.known.keys().any(|k| self.pattern.matches(k))
        {
            return Err(Error::not_found(format!(
                "no object matches {}",
                self.conn.url(&self.config.path)
            ))
            .with_field("path"));
        }
        Ok(())
    }

    /// Bytes of the matching objects read: whole objects once done, a plain one also
    /// part-way (a compressed or Parquet object counts when it is done).
    fn progress(&self) -> Option<connector_api::Progress> {
        if self.sizes.is_empty() {
            return None;
        }
        let done = self
            .sizes
            .iter()
            .map(|(key, &(size, plain))| match self.known.get(key) {
                Some(off) if off.done => size,
                Some(off) if plain => off.pos.min(size),
                _ => 0,
            })
            .sum();
        Some(connector_api::Progress {
            done,
            total: self.sizes.values().map(|(size, _)| size).sum(),
            unit: connector_api::ProgressUnit::Bytes,
        })
    }

    /// The objects with data not read yet, as of the last listing, and their unread
    /// bytes (an object whose positions are not bytes of it counts whole).
    fn lag(&self) -> Vec<connector_api::Lag> {
        let unread = |key: &str, size: u64, pos: u64| match self.plain(key) {
            true => size.saturating_sub(pos),
            false => size,
        };
        let mut files = self.pending.len() as u64;
        let mut bytes: u64 = self
            .pending
            .iter()
            .map(|o| match self.known.get(&o.key) {
                Some(off) if off.etag == o.etag => unread(&o.key, o.size, off.pos),
                _ => o.size,
            })
            .sum();
        if let Some(cur) = &self.current {
            files += 1;
            bytes += unread(&cur.key, cur.size, cur.pos);
        }
        vec![connector_api::Lag {
            split: self.conn.url(&self.config.path),
            files: Some(files),
            bytes: Some(bytes),
            ..Default::default()
        }]
    }

    /// Objects in key order, each from its position, when the prefix is read once;
    /// watched, new objects arrive in the order they are written.
    fn replays_in_order(&self) -> bool {
        !self.config.watch
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(Some(b));
            }
            if self.current.is_none() {
                if self.pending.is_empty() {
                    if !self.config.watch {
                        return Ok(None);
                    }
                    let due = self
                        .listed
                        .is_none_or(|t| t.elapsed() >= self.config.poll_interval);
                    if due {
                        self.list().await?;
                    }
                    if self.pending.is_empty() {
                        if started.elapsed() >= self.idle_timeout {
                            return Ok(Some(Batch::idle()));
                        }
                        let next_list = self
                            .listed
                            .map(|t| self.config.poll_interval.saturating_sub(t.elapsed()))
                            .unwrap_or_default();
                        let wake = next_list
                            .min(self.idle_timeout.saturating_sub(started.elapsed()))
                            .max(Duration::from_millis(10));
                        tokio::time::sleep(wake).await;
                        continue;
                    }
                }
                if let Some(obj) = self.pending.pop_front() {
                    if let Some(b) = self.open_object(obj).await? {
                        self.note(&b);
                        return Ok(Some(b));
                    }
                }
                continue;
            }
            if let Some(b) = self.read_current().await? {
                self.note(&b);
                return Ok(Some(b));
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.current = None;
        Ok(())
    }
}

impl S3Source {
    /// Remembers the positions a batch advances to (for the next listing).
    fn note(&mut self, b: &Batch) {
        for (split, value) in b.offsets.iter() {
            if let Ok(off) = serde_json::from_value::<ObjectOffset>(value.clone()) {
                self.known.insert(split.clone(), off);
            }
        }
    }
}
