//! The file source: reads files matching a glob in name order, resumable mid-file,
//! optionally watching for new files and appended lines.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use connector_api::{Batch, Error, ListedSplit, Offsets, Result, Source, SourceContext};
use notify::RecommendedWatcher;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use sluice_formats::{Compression, Format, TextDecoder as Text};
use tokio::sync::mpsc;

use crate::config::FileSourceConfig;
use crate::identity::{identify, FileOffset, Identity};

mod follow;
mod listing;
mod parquet_file;
mod text_file;

pub use self::listing::check;
use self::listing::list;
use self::parquet_file::Opened;
use self::text_file::Input;

enum Body {
    Text {
        file: Input,
        /// Read but not yet consumed bytes are `buf[start..]`.
        buf: Vec<u8>,
        start: usize,
        drained: bool,
    },
    Parquet(ParquetRecordBatchReader),
}

/// The file being read.
struct Current {
    split: String,
    id: Identity,
    /// The file's size when it was opened.
    size: u64,
    pos: u64,
    line: u64,
    /// Length and hash of the bytes just before `pos`.
    tail: (u32, u64),
    /// Read through a kept handle after its name moved on and it was deleted: it will
    /// not grow.
    renamed_away: bool,
    body: Body,
}

/// Reads files matching `path`.
pub struct FileSource {
    config: FileSourceConfig,
    text: Option<Text>,
    known: BTreeMap<String, FileOffset>,
    /// Files whose unread tail is an incomplete line, with the size seen then.
    partial: HashMap<String, u64>,
    current: Option<Current>,
    /// Batches decoded together and not yet returned.
    ready: VecDeque<Batch>,
    /// Batches decoded in parallel per read (JSON with a declared schema).
    parts: usize,
    /// Average bytes per line seen so far, to size reads.
    row_bytes: usize,
    batch_size: usize,
    idle_timeout: Duration,
    events: Option<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)>,
    last_scan: Option<Instant>,
    /// Sizes of the files matched at open (a bounded read of a text format), for
    /// progress.
    sizes: BTreeMap<String, u64>,
    /// Files with data not read yet, other than the one being read, and their unread
    /// bytes, as of the last listing (for lag).
    waiting: (u64, u64),
    /// Watch mode: open handles of files read to their end, by split, with how many
    /// bytes of the file were seen (past the position: a last line not ended yet).
    handles: HashMap<String, (Identity, File, u64)>,
    /// Positions of files whose name moved on to another file (oldest first).
    moved: Vec<(String, FileOffset)>,
    /// The files to read, when the runtime shares the pipeline's files between
    /// runtimes ([`SourceContext::splits`]); `None`: every file the glob matches.
    only: Option<std::collections::BTreeSet<String>>,
}

/// Bytes read from a file's start to infer a CSV schema before resuming inside it.
const PRIME_BYTES: u64 = 4 << 20;

impl FileSource {
    /// A source for `config` (validated).
    pub fn new(config: FileSourceConfig) -> Result<Self> {
        config.validate()?;
        let declared = config.declared_schema()?;
        let text = Text::new(config.format, declared, &config.csv);
        Ok(FileSource {
            config,
            text,
            known: BTreeMap::new(),
            partial: HashMap::new(),
            current: None,
            ready: VecDeque::new(),
            parts: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            row_bytes: 256,
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            events: None,
            last_scan: None,
            sizes: BTreeMap::new(),
            waiting: (0, 0),
            handles: HashMap::new(),
            moved: Vec::new(),
            only: None,
        })
    }

    /// True when positions in the file `split` are bytes of it (plain text), not rows
    /// (Parquet) or decompressed bytes.
    fn positions_are_bytes(&self, split: &str) -> bool {
        self.config.format != Format::Parquet
            && self.config.compression.for_key(split) == Compression::None
    }

    /// Opens the first file (in name order) that has unread data.
    fn pick(&mut self) -> Result<bool> {
        if self.config.watch && self.renamed_away()? {
            return Ok(true);
        }
        let paths = self.list()?;
        self.open_first(paths)
    }

    /// The files to read, in name order: those the glob matches, or those of them
    /// the runtime gave this source.
    fn list(&self) -> Result<Vec<PathBuf>> {
        let mut paths = list(&self.config.path)?;
        if let Some(only) = &self.only {
            paths.retain(|p| only.contains(p.to_string_lossy().as_ref()));
        }
        Ok(paths)
    }

    /// Opens the first of `paths` (listed just now) that has unread data.
    fn open_first(&mut self, paths: Vec<PathBuf>) -> Result<bool> {
        let unread: Vec<u64> = paths.iter().map(|p| self.unread(p)).collect();
        self.waiting = (
            unread.iter().filter(|&&n| n > 0).count() as u64,
            unread.iter().sum(),
        );
        for (path, left) in paths.into_iter().zip(unread) {
            let split = path.to_string_lossy().into_owned();
            let id = match identify(&path) {
                Ok(id) => id,
                // deleted between listing and opening: nothing to read
                Err(e) if e.kind() == connector_api::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.context(format!("file \"{split}\""))),
            };
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                // renamed or deleted since the listing: looked at again next time
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            // renamed away since `renamed_away` looked, its name now another file's:
            // the lines written to it before the rename come first, or its position
            // would give way to the new file's and they would be lost
            if self
                .handles
                .get(&split)
                .is_some_and(|(kept, _, _)| kept.ino != id.ino)
                && self.renamed_away()?
            {
                return Ok(true);
            }
            let (pos, line) = self.resume_point(&split, &path, id, size);
            let (files, bytes) = self.waiting;
            let picked = (files.saturating_sub(u64::from(left > 0)), bytes - left);
            if self.config.format == Format::Parquet {
                if self.partial.get(&split) == Some(&size) {
                    continue;
                }
                match parquet_file::open(
                    &path,
                    &split,
                    id,
                    pos,
                    self.batch_size,
                    self.config.watch,
                )? {
                    Opened::Reading(cur) => {
                        self.current = Some(cur);
                        self.waiting = picked;
                        return Ok(true);
                    }
                    Opened::Done => continue,
                    Opened::Incomplete => {
                        self.partial.insert(split, size);
                        continue;
                    }
                    Opened::Bad(e) => {
                        self.ready
                            .push_back(parquet_file::reject_rest(&split, id, pos, e)?);
                        return Ok(true);
                    }
                    Opened::Cut(e) => {
                        // not done with it: a later run reads it once it is whole
                        self.partial.insert(split.clone(), size);
                        self.ready
                            .push_back(parquet_file::reject_for_now(&split, pos, e));
                        return Ok(true);
                    }
                }
            }
            let Some(cur) = self.open_text(&path, split, id, (pos, line), size)? else {
                continue;
            };
            self.waiting = picked;
            self.current = Some(cur);
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads the next batch from the current file; `None` when it has no more now.
    fn read_current(&mut self) -> Result<Option<Batch>> {
        if let Some(b) = self.ready.pop_front() {
            return Ok(Some(b));
        }
        match self
            .current
            .as_ref()
            .map(|c| matches!(c.body, Body::Parquet(_)))
        {
            None => Ok(None),
            Some(true) => self.read_parquet(),
            Some(false) => self.read_text(),
        }
    }
}

/// The offset of `cur` as read so far; `whole`: a compressed file read to its end,
/// of that size.
fn offsets_of(cur: &Current, whole: Option<u64>) -> Result<Offsets> {
    let mut offsets = Offsets::new();
    offsets.set_typed(
        cur.split.clone(),
        &FileOffset {
            id: cur.id,
            pos: cur.pos,
            line: cur.line,
            tail: cur.tail.1,
            tail_len: cur.tail.0,
            whole,
        },
    )?;
    Ok(offsets)
}

#[connector_api::async_trait]
impl Source for FileSource {
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
            // these files to their end as they are now: the runtime lists again
            self.only = Some(splits.iter().cloned().collect());
            self.config.watch = false;
        }
        for (split, value) in committed.iter() {
            let off: FileOffset = serde_json::from_value(value.clone()).map_err(|e| {
                Error::internal(format!("stored offset of file \"{split}\" is unreadable"))
                    .with_source(e)
            })?;
            self.known.insert(split.clone(), off);
        }
        if self.config.watch {
            // files renamed away and followed under a key of their own before the
            // restart: their handles are reopened by inode
            let detached: Vec<(String, FileOffset)> = self
                .known
                .iter()
                .filter(|(k, _)| k.contains('\0'))
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            for (key, off) in detached {
                self.reopen(&key, &off);
            }
            self.start_watching()?;
        } else {
            let files = self.list()?;
            // given files may have gone since they were listed: nothing to read
            if files.is_empty() && self.only.is_none() {
                return Err(
                    Error::not_found(format!("no file matches \"{}\"", self.config.path))
                        .with_field("path"),
                );
            }
            // Parquet positions are rows, not bytes: no total to compare them with
            if self.config.format != Format::Parquet {
                self.sizes = files
                    .iter()
                    .filter_map(|p| {
                        let size = std::fs::metadata(p).ok()?.len();
                        Some((p.to_string_lossy().into_owned(), size))
                    })
                    .collect();
            }
        }
        Ok(())
    }

    fn progress(&self) -> Option<connector_api::Progress> {
        if self.sizes.is_empty() {
            return None;
        }
        let done = self
            .sizes
            .iter()
            .map(|(split, &size)| {
                // a compressed file's position is not in its bytes: it counts when done
                if !self.positions_are_bytes(split) {
                    let whole = self.known.get(split).is_some_and(|o| o.whole.is_some());
                    return if whole { size } else { 0 };
                }
                self.known.get(split).map_or(0, |o| o.pos.min(size))
            })
            .sum();
        Some(connector_api::Progress {
            done,
            total: self.sizes.values().sum(),
            unit: connector_api::ProgressUnit::Bytes,
        })
    }

    /// The files found with data not read yet, as of the last listing, and their
    /// unread bytes (text formats; a Parquet file's positions are rows).
    fn lag(&self) -> Vec<connector_api::Lag> {
        let (mut files, mut bytes) = self.waiting;
        if let Some(cur) = &self.current {
            files += 1;
            bytes += cur.size.saturating_sub(cur.pos);
        }
        vec![connector_api::Lag {
            split: self.config.path.clone(),
            files: Some(files),
            bytes: (self.config.format != Format::Parquet).then_some(bytes),
            ..Default::default()
        }]
    }

    /// Files in name order, each from its position, when the set is read once; a
    /// watched directory's files grow and arrive in the order they are written.
    fn replays_in_order(&self) -> bool {
        !self.config.watch
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        loop {
            // (a file found renamed queues its position to checkpoint, maybe with
            // nothing to read)
            if self.current.is_none()
                && self.ready.is_empty()
                && !self.pick()?
                && self.ready.is_empty()
            {
                if !self.config.watch {
                    return Ok(None);
                }
                if started.elapsed() >= self.idle_timeout {
                    return Ok(Some(Batch::idle()));
                }
                self.wait_for_change().await;
                continue;
            }
            if let Some(batch) = connector_api::blocking(|| self.read_current())? {
                for (split, value) in batch.offsets.iter() {
                    if let Ok(off) = serde_json::from_value::<FileOffset>(value.clone()) {
                        self.known.insert(split.clone(), off);
                    }
                }
                return Ok(Some(batch));
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.current = None;
        self.events = None;
        Ok(())
    }
}

/// The files the glob matches now, in name order, as splits: each versioned by its
/// inode and size, so a file that grew or was replaced is read again.
pub fn splits(config: &FileSourceConfig) -> Result<Vec<ListedSplit>> {
    Ok(list(&config.path)?
        .into_iter()
        .map(|p| {
            let version = std::fs::metadata(&p)
                .ok()
                .map(|m| format!("{}:{}", crate::identity::inode(&m), m.len()));
            ListedSplit {
                id: p.to_string_lossy().into_owned(),
                version,
            }
        })
        .collect())
}

/// `sluice schema`: the declared schema, or the one inferred from the first file.
pub fn discover(config: &FileSourceConfig) -> Result<Option<SchemaRef>> {
    if let Some(s) = config.declared_schema()? {
        return Ok(Some(s));
    }
    let Some(first) = list(&config.path)?.into_iter().next() else {
        return Ok(None);
    };
    if config.format == Format::Parquet {
        let b = ParquetRecordBatchReaderBuilder::try_new(File::open(&first)?)
            .map_err(|e| Error::data(format!("file \"{}\"", first.display())).with_source(e))?;
        return Ok(Some(b.schema().clone()));
    }
    let mut head = Vec::new();
    File::open(&first)?.take(1 << 20).read_to_end(&mut head)?;
    let mut source = FileSource::new(config.clone())?;
    let text = source
        .text
        .as_mut()
        .ok_or_else(|| Error::internal("no text decoder"))?;
    let decoded = text.decode(&head, 1000, true, true)?;
    Ok(decoded.batch.map(|b| b.schema()))
}

#[cfg(test)]
mod tests;
