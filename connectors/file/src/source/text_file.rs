//! Opening a text file (JSON lines, CSV) to read: as it is or decompressed (gzip,
//! Zstandard), at a position, with a CSV schema still to infer taken from its start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use connector_api::{Batch, Error, Result};
use sluice_formats::{Compression, Decoded, TextDecoder as Text};

use super::{follow, offsets_of, Body, Current, FileSource, PRIME_BYTES};
use crate::identity::Identity;

/// A text file's bytes: the file itself, or decompressed from it.
pub(super) enum Input {
    Plain(File),
    Compressed(Box<dyn Read + Send>),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Input::Plain(f) => f.read(buf),
            Input::Compressed(r) => r.read(buf),
        }
    }
}

impl FileSource {
    /// The file `split` at `path` opened at `pos` (after `line` lines) to read as
    /// text; None when it has nothing to read now.
    pub(super) fn open_text(
        &mut self,
        path: &Path,
        split: String,
        id: Identity,
        (pos, line): (u64, u64),
        size: u64,
    ) -> Result<Option<Current>> {
        let compression = self.config.compression.for_key(&split);
        let compressed = compression != Compression::None;
        if compressed
            && self
                .known
                .get(&split)
                .is_some_and(|o| o.whole == Some(size) && o.id == id)
        {
            return Ok(None);
        }
        if (!compressed && size <= pos) || self.partial.get(&split) == Some(&size) {
            return Ok(None);
        }
        let open = || -> Result<Input> {
            let file = File::open(path)
                .map_err(|e| Error::from(e).context(format!("file \"{split}\"")))?;
            Ok(match compressed {
                false => Input::Plain(file),
                true => Input::Compressed(sluice_formats::decompressing(compression, file)?),
            })
        };
        let mut file = match open() {
            Ok(f) => f,
            // renamed or deleted since the listing
            Err(e) if e.kind() == connector_api::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if pos > 0 {
            // resuming inside the file: a CSV schema still to infer comes from the
            // file's start (its header), not from the first unread row
            if let Some(text) = self.text.as_mut() {
                let mut head = Vec::new();
                (&mut file).take(PRIME_BYTES).read_to_end(&mut head)?;
                text.prime(&head, (head.len() as u64) < PRIME_BYTES)
                    .map_err(|e| e.context(format!("file \"{split}\"")))?;
            }
        }
        match &mut file {
            Input::Plain(f) => {
                f.seek(SeekFrom::Start(pos))?;
            }
            Input::Compressed(_) => {
                let mut again = open()?;
                let skipped = std::io::copy(&mut (&mut again).take(pos), &mut std::io::sink())
                    .map_err(|e| Error::data(format!("file \"{split}\": {e}")))?;
                if skipped < pos {
                    tracing::warn!(file = %split, position = pos, "compressed file is shorter than the position read; reading it from the start");
                    again = open()?;
                    self.known.remove(&split);
                }
                file = again;
            }
        }
        let (pos, line) = match self.known.get(&split) {
            Some(_) => (pos, line),
            None => (0, 0),
        };
        Ok(Some(Current {
            split,
            id,
            size: if compressed { 0 } else { size },
            pos,
            line,
            tail: (0, 0),
            renamed_away: false,
            body: Body::Text {
                file,
                buf: Vec::new(),
                start: 0,
                drained: false,
            },
        }))
    }
}

impl FileSource {
    /// Reads the next batch of the current text file: as many whole records as the
    /// buffer holds, decoded in parts on every core; `None` when it has no more now.
    pub(super) fn read_text(&mut self) -> Result<Option<Batch>> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(None);
        };
        let rows = self.batch_size;
        let Body::Text {
            file,
            buf,
            start,
            drained,
        } = &mut cur.body
        else {
            return Ok(None);
        };
        let text = self
            .text
            .as_mut()
            .ok_or_else(|| Error::internal("no text decoder"))?;
        // the end of a compressed file (written whole), or of one renamed away
        // and deleted, is the end of its last line
        let eof_counts =
            !self.config.watch || cur.renamed_away || matches!(file, Input::Compressed(_));
        // enough bytes for `parts` full batches, so batches come out whole
        let target = self
            .config
            .read_buffer
            .max(self.row_bytes * rows * self.parts);
        let mut need_more = false;
        loop {
            while !*drained && (need_more || buf.len() - *start < target) {
                need_more = false;
                if *start > 0 {
                    buf.copy_within(*start.., 0);
                    buf.truncate(buf.len() - *start);
                    *start = 0;
                }
                let want = (target - buf.len().min(target)).max(self.config.read_buffer) as u64;
                if (&mut *file).take(want).read_to_end(buf)? == 0 {
                    *drained = true;
                }
            }
            if *start < buf.len() {
                let at_start = cur.pos == 0;
                let parts = text
                    .decode_parts(
                        &buf[*start..],
                        rows,
                        self.parts,
                        *drained && eof_counts,
                        at_start,
                    )
                    .map_err(|e| {
                        e.context(format!(
                            "file \"{}\" after line {}",
                            follow::shown(&cur.split),
                            cur.line
                        ))
                    })?;
                let consumed: usize = parts.iter().map(|d| d.consumed).sum();
                if consumed > 0 {
                    let lines: u64 = parts.iter().map(|d| d.lines).sum();
                    if lines > 0 {
                        self.row_bytes = (consumed / lines as usize).max(1);
                    }
                    // the bytes before each part's end, to tell the file again
                    let mut end = *start;
                    let tails: Vec<(u32, u64)> = parts
                        .iter()
                        .map(|d| {
                            end += d.consumed;
                            follow::tail_of(&buf[..end])
                        })
                        .collect();
                    *start += consumed;
                    for (decoded, tail) in parts.into_iter().zip(tails) {
                        cur.tail = tail;
                        let batch = to_batch(cur, text, decoded)?;
                        self.ready.push_back(batch);
                    }
                    return Ok(self.ready.pop_front());
                }
            }
            if *drained {
                if *start < buf.len() {
                    // an incomplete last line: wait until it grows
                    let size = cur.pos + (buf.len() - *start) as u64;
                    self.partial.insert(cur.split.clone(), size);
                }
                if let Some(done) = self.current.take() {
                    if matches!(
                        done.body,
                        Body::Text {
                            file: Input::Compressed(_),
                            ..
                        }
                    ) {
                        // stored, so neither this run nor the next decompresses it again
                        if let Ok(meta) = std::fs::metadata(&done.split) {
                            let mut marker = Batch::idle();
                            marker.offsets = offsets_of(&done, Some(meta.len()))?;
                            return Ok(Some(marker));
                        }
                    } else if self.config.watch {
                        self.keep_handle(done);
                    }
                }
                return Ok(None);
            }
            if buf.len() - *start > self.config.max_line_bytes {
                // one record longer than allowed: a bad record, skipped to the
                // end of its line without holding it
                let (skipped, ended) = skip_line(file, buf, start)?;
                if !ended && !eof_counts {
                    // its end is not written yet: read again from its start, and
                    // skipped whole, once the file grows
                    let size = cur.pos + skipped;
                    self.partial.insert(cur.split.clone(), size);
                    self.current = None;
                    return Ok(None);
                }
                return Ok(Some(long_line(cur, skipped, self.config.max_line_bytes)?));
            }
            // not one whole record in the buffer: read more
            need_more = true;
        }
    }
}

/// Drops the bytes of the line at `buf[*start..]` up to and with its newline (or the
/// end of the input), reading on as needed; how many, and whether its newline came.
fn skip_line(file: &mut Input, buf: &mut Vec<u8>, start: &mut usize) -> Result<(u64, bool)> {
    let mut skipped = 0u64;
    loop {
        if let Some(at) = buf[*start..].iter().position(|&b| b == b'\n') {
            skipped += at as u64 + 1;
            *start += at + 1;
            return Ok((skipped, true));
        }
        skipped += (buf.len() - *start) as u64;
        buf.clear();
        *start = 0;
        if file.take(1 << 20).read_to_end(buf)? == 0 {
            return Ok((skipped, false));
        }
    }
}

/// A batch with the line of `skipped` bytes at the current position as its one bad
/// record, moving the position past it.
fn long_line(cur: &mut Current, skipped: u64, limit: usize) -> Result<Batch> {
    let line = cur.line + 1;
    cur.pos += skipped;
    cur.line += 1;
    // the bytes before the new position were not kept: no tail to check it by
    cur.tail = (0, 0);
    let mut batch = Batch::idle();
    batch.offsets = offsets_of(cur, None)?;
    batch.rejects.push(connector_api::Reject::new(
        follow::shown(&cur.split).to_string(),
        format!("file \"{}\" line {line}", follow::shown(&cur.split)),
        "",
        Error::data(format!(
            "the line is {skipped} bytes, longer than max_line_bytes ({limit})"
        )),
    ));
    Ok(batch)
}

/// Turns one decoded part into a batch, advancing the file position past it.
fn to_batch(cur: &mut Current, text: &Text, decoded: Decoded) -> Result<Batch> {
    let first_line = cur.line;
    cur.pos += decoded.consumed as u64;
    cur.line += decoded.lines;
    let offsets = offsets_of(cur, None)?;
    let name = follow::shown(&cur.split);
    Ok(decoded.into_batch(text.schema(), offsets, name, |i| {
        format!("file \"{name}\" line {}", first_line + i as u64 + 1)
    }))
}
