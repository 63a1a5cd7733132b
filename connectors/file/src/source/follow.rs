//! Following files by who they are, not only by name, as log shippers do:
//!
//! - **Renamed** (rotation by rename, the new name matched by the glob): a file seen
//!   for the first time that is a file already read under another name (same inode,
//!   same leading bytes, same bytes before the position) goes on from that position.
//! - **Renamed away** (the new name not matched, or the file deleted): in watch mode
//!   the handle of each file read to its end stays open, and when its name no longer
//!   leads to it, what was written to it before the rename is read through the handle
//!   before the file now under that name. A last line without its newline yet is read
//!   once it ends or the file is deleted (a renamed file's writer may still finish
//!   it; under a name the glob matches, it is read there). Once a new file has the
//!   old name (logrotate's `create`), the renamed one goes on under a key of its own
//!   (the name, a NUL and its inode) with its handle and position, so what its writer
//!   adds after the new file was read is still read, once. A restart has no handle
//!   to it, nor does a run that finds a file renamed away while the pipeline was
//!   down: the file is then looked for by inode in its directory and reopened, so
//!   what was written to it after the last checkpoint is read from there (a file
//!   moved to another directory or deleted is read on only under a new name the glob
//!   matches).
//! - **Truncated** (copy-and-truncate rotation): a file shorter than its position is
//!   read again from the start.
//! - **Rewritten in place** (same inode, same first KiB, other content): the bytes
//!   just before the position are checked against a hash stored with it; other bytes
//!   mean another file, read from the start.
//!
//! Each of these is logged once per file, not at every look at the directory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use connector_api::{stable_hash, Result};

use super::{Body, Current, FileSource, Input};
use crate::identity::{identify, inode, links, FileOffset, Identity};

/// Bytes before a position whose hash is stored with it.
pub(super) const TAIL_BYTES: usize = 256;

/// Positions of files whose name now leads to another file, kept to be found under
/// a new name, at most.
const MOVED: usize = 1024;

/// Handles kept open for files read to their end, at most (a directory with more
/// active files follows renames away only for that many).
const HANDLES: usize = 64;

impl FileSource {
    /// Where to read the file `split` (at `path`, now `id`, `size` bytes) from: the
    /// stored position when it is still the same file, the position of the same file
    /// read under another name, or its start.
    pub(super) fn resume_point(
        &mut self,
        split: &str,
        path: &Path,
        id: Identity,
        size: u64,
    ) -> (u64, u64) {
        // positions not in bytes of the file: no size or tail to check them against
        let opaque = !self.positions_are_bytes(split);
        let fresh = FileOffset {
            id,
            pos: 0,
            line: 0,
            tail: 0,
            tail_len: 0,
            whole: None,
        };
        match self.known.get(split).cloned() {
            Some(off) if off.id.same_file(&id, path) => {
                let why = if opaque {
                    None
                } else if size < off.pos {
                    Some("is shorter than the position read (truncated)")
                } else if !tail_matches(path, &off) {
                    Some("holds other bytes before the position read (rewritten in place)")
                } else {
                    None
                };
                match why {
                    None => (off.pos, off.line),
                    Some(why) => {
                        tracing::warn!(file = %split, position = off.pos, "file {why}; reading it from the start");
                        self.known.insert(split.to_string(), fresh);
                        (0, 0)
                    }
                }
            }
            Some(old) => {
                // the old file may turn up under another name (rotation by rename),
                // and it may go on being written (logrotate's `create`)
                if self.moved.len() >= MOVED {
                    self.moved.remove(0);
                }
                self.moved.push((split.to_string(), old.clone()));
                // the new file may be one read under another name before (a numbered
                // rotation moving `app.log.1` on to `app.log.2` and `app.log` to
                // `app.log.1`)
                let found = self.renamed(split, path, id, size, opaque);
                if !opaque {
                    if self.config.watch {
                        // renamed away while the pipeline was down: no handle kept
                        self.reopen(split, &old);
                    }
                    self.detach(split, &old, found.is_none().then_some(&fresh));
                }
                if let Some(at) = found {
                    return at;
                }
                tracing::warn!(file = %split, "file was replaced since it was read; reading the new file from the start");
                self.known.insert(split.to_string(), fresh);
                (0, 0)
            }
            None => self
                .renamed(split, path, id, size, opaque)
                .unwrap_or((0, 0)),
        }
    }

    /// Where the file `split` (at `path`, now `id`, `size` bytes) goes on from when
    /// it is a file read under another name (same inode, same leading bytes, same
    /// bytes before the position), checkpointed under its new name at once.
    fn renamed(
        &mut self,
        split: &str,
        path: &Path,
        id: Identity,
        size: u64,
        opaque: bool,
    ) -> Option<(u64, u64)> {
        let (other, off) = self
            .known
            .iter()
            .chain(self.moved.iter().map(|(s, o)| (s, o)))
            .find(|(other, off)| {
                other.as_str() != split
                    && off.id.ino == id.ino
                    && off.id.same_file(&id, path)
                    && (opaque || (off.pos <= size && tail_matches(path, off)))
            })
            .map(|(other, off)| (other.clone(), off.clone()))?;
        tracing::info!(file = %split, from = %shown(&other), position = off.pos, "file was renamed; going on from where it was read");
        // followed under its new name from here: a handle kept under the old one
        // would read the same lines again
        if self
            .handles
            .get(&other)
            .is_some_and(|(kept, _, _)| kept.ino == id.ino)
        {
            self.handles.remove(&other);
        }
        let at = (off.pos, off.line);
        let moved = FileOffset { id, ..off };
        // checkpointed under the new name at once, even with nothing left to read, so
        // a restart does not read it again
        let mut offsets = connector_api::Offsets::new();
        if offsets.set_typed(split.to_string(), &moved).is_ok() {
            let mut b = connector_api::Batch::idle();
            b.offsets = offsets;
            self.ready.push_back(b);
        }
        self.known.insert(split.to_string(), moved);
        Some(at)
    }

    /// The file `old` was read under `split` and a new file now has that name
    /// (logrotate's `create`): `old` goes on under a key of its own, with its kept
    /// handle and its position, checkpointed at once, so what its writer still adds
    /// (a last line ended after the rename) is read from that position, and the new
    /// file's positions under `split` never meet it.
    /// Only a file whose handle is kept (watch mode) has anything left to read.
    /// `fresh`: the position of a new file read from its start, checkpointed with
    /// it, so no stored position under the name is of the old file.
    fn detach(&mut self, split: &str, old: &FileOffset, fresh: Option<&FileOffset>) {
        if !self
            .handles
            .get(split)
            .is_some_and(|(id, _, _)| *id == old.id)
        {
            return;
        }
        let key = detached(split, old.id.ino);
        if let Some(kept) = self.handles.remove(split) {
            self.handles.insert(key.clone(), kept);
        }
        let mut offsets = connector_api::Offsets::new();
        let fresh = fresh.map_or(Ok(()), |f| offsets.set_typed(split.to_string(), f));
        if offsets.set_typed(key.clone(), old).is_ok() && fresh.is_ok() {
            let mut b = connector_api::Batch::idle();
            b.offsets = offsets;
            self.ready.push_back(b);
        }
        self.known.insert(key, old.clone());
    }

    /// Watch mode, where a run has no kept handle of a file read under `key` that was
    /// renamed away (a restart, or a rename while the pipeline was down): the file is
    /// looked for in its directory by inode (same leading bytes, same bytes before the
    /// position) and reopened under `key`, so what its writer added after `off` is
    /// read, once, from there. Not found (deleted, moved to another directory): nothing
    /// more can be read of it.
    pub(super) fn reopen(&mut self, key: &str, off: &FileOffset) {
        if self.handles.contains_key(key) {
            return;
        }
        if self.handles.len() >= HANDLES {
            tracing::warn!(file = %shown(key), kept = HANDLES, "too many renamed files are followed: this one is not read on");
            return;
        }
        let name = Path::new(shown(key));
        let dir = match name.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let same_inode = entry
                .metadata()
                .is_ok_and(|m| m.is_file() && inode(&m) == off.id.ino);
            if !same_inode || path.file_name() == name.file_name() {
                continue;
            }
            let Ok(id) = identify(&path) else { continue };
            if !off.id.same_file(&id, &path) || !tail_matches(&path, off) {
                continue;
            }
            // followed under its new name already (the glob matches it): not twice
            if self
                .known
                .iter()
                .any(|(k, o)| k != key && o.id.ino == id.ino && o.id.same_file(&id, &path))
            {
                return;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            tracing::info!(file = %shown(key), now = %path.display(), position = off.pos, "a file renamed away before this run is read on from its position");
            self.handles
                .insert(key.to_string(), (off.id, file, off.pos));
            return;
        }
    }

    /// Keeps the handle of a file read to its end, to read what is written to it
    /// before it is renamed away (watch mode).
    pub(super) fn keep_handle(&mut self, cur: Current) {
        if let (
            Body::Text {
                file: Input::Plain(file),
                buf,
                start,
                ..
            },
            false,
        ) = (cur.body, cur.renamed_away)
        {
            let seen = cur.pos + (buf.len() - start) as u64;
            if self.handles.len() < HANDLES || self.handles.contains_key(&cur.split) {
                if let Some((old, kept, _)) =
                    self.handles.insert(cur.split.clone(), (cur.id, file, seen))
                {
                    if old != cur.id {
                        self.warn_unread(&cur.split, &old, &kept);
                    }
                }
            }
        }
    }

    /// Makes current a kept file whose name no longer leads to it and that has bytes
    /// not read yet; true when there was one. Handles of files gone for good are
    /// closed.
    pub(super) fn renamed_away(&mut self) -> Result<bool> {
        let gone: Vec<String> = self
            .handles
            .iter()
            .filter(|(split, (id, _, _))| {
                std::fs::metadata(split.as_str()).map_or(true, |m| inode(&m) != id.ino)
            })
            .map(|(split, _)| split.clone())
            .collect();
        for split in gone {
            let Some((id, mut file, seen)) = self.handles.remove(&split) else {
                continue;
            };
            let Some(off) = self.known.get(&split).filter(|o| o.id == id) else {
                self.warn_unread(&split, &id, &file);
                continue;
            };
            let meta = file.metadata()?;
            let size = meta.len();
            if size <= off.pos {
                // nothing new yet; its writer may still add lines until it is deleted
                if links(&meta) > 0 {
                    self.handles.insert(split, (id, file, seen));
                }
                continue;
            }
            // renamed, its writer may still finish a line in it: its end is the end of
            // a line only once it is deleted
            let deleted = links(&meta) == 0;
            if !deleted && size <= seen {
                // only a last line not ended yet, already seen: kept until it grows,
                // not read again and again
                self.handles.insert(split, (id, file, seen));
                continue;
            }
            tracing::info!(file = %shown(&split), unread = size - off.pos, "file was renamed or removed with lines not read yet; reading them first");
            file.seek(SeekFrom::Start(off.pos))?;
            self.current = Some(Current {
                split,
                id,
                size,
                pos: off.pos,
                line: off.line,
                tail: (off.tail_len, off.tail),
                renamed_away: deleted,
                body: Body::Text {
                    file: Input::Plain(file),
                    buf: Vec::new(),
                    start: 0,
                    drained: false,
                },
            });
            return Ok(true);
        }
        Ok(false)
    }

    /// Warns when the kept handle of a file renamed away is dropped with bytes past
    /// its position: its name leads to a new file already read from, and a name
    /// holds one position, so they are not read. Said, never silent.
    fn warn_unread(&self, split: &str, id: &Identity, file: &File) {
        let unread = self
            .moved
            .iter()
            .rev()
            .find(|(s, o)| s == split && o.id == *id)
            .and_then(|(_, o)| Some(file.metadata().ok()?.len().saturating_sub(o.pos)));
        if let Some(bytes) = unread.filter(|&b| b > 0) {
            tracing::warn!(file = %shown(split), unread = bytes, "a file renamed away has bytes past its position (a last line ended after the rename, or lines written since) and a new file under its name is read already: they are not read");
        }
    }
}

/// The key a file read under `split` goes on under once a new file has its name:
/// the name, a NUL (which no path holds, so no listed file has this key) and the
/// old file's inode.
pub(super) fn detached(split: &str, ino: u64) -> String {
    format!("{split}\0{ino}")
}

/// The file name of a key, for messages (a detached key without its inode).
pub(super) fn shown(split: &str) -> &str {
    split.split('\0').next().unwrap_or(split)
}

/// True when the bytes of `path` just before `off.pos` hash as stored (or nothing was
/// stored).
fn tail_matches(path: &Path, off: &FileOffset) -> bool {
    let len = off.tail_len as u64;
    if len == 0 || off.pos < len {
        return len == 0;
    }
    let mut buf = vec![0u8; len as usize];
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(off.pos - len))?;
        f.read_exact(&mut buf)
    });
    read.is_ok() && stable_hash(&buf) == off.tail
}

/// The hash and length of the last `TAIL_BYTES` (at most) of `bytes`.
pub(super) fn tail_of(bytes: &[u8]) -> (u32, u64) {
    let tail = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
    (tail.len() as u32, stable_hash(tail))
}
