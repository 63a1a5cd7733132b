//! Parquet files: opened at a row and read in batches. A file whose last bytes are not
//! a footer yet is still being written: in watch mode it waits until it is complete.
//! A file that cannot be read is one bad record (dead-lettered or stopping the
//! pipeline, as `errors.tolerance` says), and its rows after the position are never
//! read: the position moves past its end.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use connector_api::{Batch, Error, Offsets, Reject, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{offsets_of, Body, Current, FileSource};
use crate::identity::{FileOffset, Identity};

/// What opening a Parquet file found.
pub(super) enum Opened {
    /// Rows to read from the position.
    Reading(Current),
    /// Every row was read.
    Done,
    /// No footer at the end yet: being written.
    Incomplete,
    /// It cannot be read.
    Bad(Error),
    /// It ends before its footer, outside watch mode: cut short or still being copied.
    Cut(Error),
}

/// Opens `path` at row `pos`; `watch`: a file without its footer yet is waited for.
pub(super) fn open(
    path: &Path,
    split: &str,
    id: Identity,
    pos: u64,
    rows: usize,
    watch: bool,
) -> Result<Opened> {
    if pos == u64::MAX {
        // rejected whole before
        return Ok(Opened::Done);
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        // renamed or deleted since the listing
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Opened::Done),
        Err(e) => return Err(e.into()),
    };
    if !has_footer(&mut file)? {
        return Ok(match watch {
            true => Opened::Incomplete,
            false => Opened::Cut(Error::data(
                "the file ends before a parquet footer (cut short, or still being written); \
                 it is read again by a later run",
            )),
        });
    }
    let builder = match ParquetRecordBatchReaderBuilder::try_new(file) {
        Ok(b) => b,
        Err(e) => {
            return Ok(Opened::Bad(Error::data(format!(
                "not a readable parquet file: {e}"
            ))))
        }
    };
    let total = builder.metadata().file_metadata().num_rows() as u64;
    if pos >= total {
        return Ok(Opened::Done);
    }
    let reader = match builder
        .with_batch_size(rows)
        .with_offset(pos as usize)
        .build()
    {
        Ok(r) => r,
        Err(e) => return Ok(Opened::Bad(Error::data(format!("unreadable parquet: {e}")))),
    };
    Ok(Opened::Reading(Current {
        split: split.to_string(),
        id,
        size: 0,
        tail: (0, 0),
        renamed_away: false,
        pos,
        line: 0,
        body: Body::Parquet(reader),
    }))
}

/// True when the file ends with a Parquet footer (its length, then `PAR1`).
fn has_footer(file: &mut File) -> Result<bool> {
    let len = file.metadata()?.len();
    if len < 12 {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(len - 4))?;
    file.read_exact(&mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(&magic == b"PAR1")
}

/// The file `split` as a rejected record that keeps its position: a later run reads
/// it again.
pub(super) fn reject_for_now(split: &str, pos: u64, error: Error) -> Batch {
    let mut batch = Batch::idle();
    batch.rejects.push(Reject::new(
        split,
        format!("file \"{split}\" after row {pos}"),
        "",
        error,
    ));
    batch
}

/// The rows of `split` after row `pos` as one rejected record, with the position
/// moved past the file's end.
pub(super) fn reject_rest(split: &str, id: Identity, pos: u64, error: Error) -> Result<Batch> {
    let mut offsets = Offsets::new();
    offsets.set_typed(
        split.to_string(),
        &FileOffset {
            id,
            pos: u64::MAX,
            line: 0,
            tail: 0,
            tail_len: 0,
            whole: None,
        },
    )?;
    let mut batch = Batch::idle();
    batch.offsets = offsets;
    batch.rejects.push(Reject::new(
        split,
        format!("file \"{split}\" after row {pos}"),
        "",
        error,
    ));
    Ok(batch)
}

impl FileSource {
    /// Reads the next batch of the current Parquet file; a batch that cannot be read
    /// makes the rest of the file one bad record.
    pub(super) fn read_parquet(&mut self) -> Result<Option<Batch>> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(None);
        };
        let Body::Parquet(reader) = &mut cur.body else {
            return Ok(None);
        };
        match reader.next() {
            Some(Ok(records)) => {
                cur.pos += records.num_rows() as u64;
                let offsets = offsets_of(cur, None)?;
                Ok(Some(Batch::new(records, offsets)))
            }
            Some(Err(e)) => {
                let e = Error::data(format!("unreadable parquet: {e}"));
                let rest = reject_rest(&cur.split, cur.id, cur.pos, e)?;
                self.current = None;
                Ok(Some(rest))
            }
            None => {
                self.current = None;
                Ok(None)
            }
        }
    }
}
