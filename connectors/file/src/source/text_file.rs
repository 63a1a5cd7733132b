//! Opening a text file (JSON lines, CSV) to read: as it is or decompressed (gzip,
//! Zstandard), at a position, with a CSV schema still to infer taken from its start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use connector_api::{Error, Result};
use sluice_formats::Compression;

use super::{Body, Current, FileSource, PRIME_BYTES};
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
        if compressed && self.finished.get(&split) == Some(&id) {
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
