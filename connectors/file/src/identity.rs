//! File identity and the typed offset of a file split.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use connector_api::{stable_hash, Result};
use serde::{Deserialize, Serialize};

/// Bytes hashed to fingerprint a file.
pub const FINGERPRINT_BYTES: usize = 1024;

/// Who a file is: more than its name, so a replaced or rotated file is noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Inode number (0 where the platform has none).
    pub ino: u64,
    /// FNV-1a hash of the first `fp_len` bytes.
    pub fingerprint: u64,
    /// How many bytes the fingerprint covers (grows until FINGERPRINT_BYTES).
    pub fp_len: u32,
}

/// Offset of a file split. `pos` is exclusive: the byte (text formats) or row
/// (Parquet) after the last delivered record. `line` counts the newlines before `pos`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffset {
    /// Identity of the file when it was read.
    pub id: Identity,
    /// Position after the last delivered record (bytes, or rows for Parquet).
    pub pos: u64,
    /// Newlines before `pos` (text formats), for line numbers in errors.
    pub line: u64,
    /// Hash of the `tail_len` bytes just before `pos` (text formats): a file rewritten
    /// in place with the same first bytes is told apart by them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tail: u64,
    /// How many bytes `tail` covers (0: none stored).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tail_len: u32,
    /// A compressed file read to its end: its size then, in bytes of the file. Its
    /// positions are decompressed bytes, which its size cannot be compared with, so
    /// without this every run would decompress it again to find nothing left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<u64>,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Reads the identity of the file at `path`.
pub fn identify(path: &Path) -> Result<Identity> {
    let mut f = File::open(path)?;
    let meta = f.metadata()?;
    let mut buf = vec![0u8; FINGERPRINT_BYTES];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(Identity {
        ino: inode(&meta),
        fingerprint: stable_hash(&buf[..n]),
        fp_len: n as u32,
    })
}

/// The inode number of a file (0 where the platform has none).
#[cfg(unix)]
pub fn inode(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

/// How many names a file has (0: deleted, still open); 1 where the platform cannot
/// tell.
#[cfg(unix)]
pub fn links(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.nlink()
}

/// How many names a file has (0: deleted, still open); 1 where the platform cannot
/// tell.
#[cfg(not(unix))]
pub fn links(_meta: &std::fs::Metadata) -> u64 {
    1
}

/// The inode number of a file (0 where the platform has none).
#[cfg(not(unix))]
pub fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

impl Identity {
    /// True when `now` is the same file, possibly grown: same inode and the same
    /// leading bytes over the shorter fingerprint.
    pub fn same_file(&self, now: &Identity, path: &Path) -> bool {
        if self.ino != now.ino {
            return false;
        }
        if self.fp_len == now.fp_len {
            return self.fingerprint == now.fingerprint;
        }
        // the file grew past the old fingerprint: hash the same prefix again
        let Ok(mut f) = File::open(path) else {
            return false;
        };
        let mut buf = vec![0u8; self.fp_len as usize];
        f.read_exact(&mut buf).is_ok() && stable_hash(&buf) == self.fingerprint
    }
}
