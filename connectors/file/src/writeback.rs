//! A file writer that starts the disk write of what it has written every few MiB, so
//! the fsync that publishes a finished file waits for the last stretch only, not for
//! the whole file (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, what PostgreSQL's
//! `backend_flush_after` does). It also keeps the page cache's dirty pages few.
//!
//! Durability is unchanged: the sink still fsyncs every file before publishing it.

use std::fs::File;
use std::io::{self, Write};

/// Bytes between two write-back requests.
const WRITE_BEHIND: u64 = 8 << 20;

/// Wraps a [`File`]; see the module doc.
pub struct WriteBehind {
    file: File,
    /// Bytes written to the file.
    written: u64,
    /// Bytes whose write-back has been requested.
    requested: u64,
}

impl WriteBehind {
    /// A writer appending to `file` from its start.
    pub fn new(file: File) -> Self {
        WriteBehind {
            file,
            written: 0,
            requested: 0,
        }
    }

    /// The file, for its fsync.
    pub fn into_inner(self) -> File {
        self.file
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.requested >= WRITE_BEHIND {
            start_write_back(&self.file, self.requested, self.written - self.requested);
            self.requested = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk, without waiting.
/// Only a hint: a failure is left for the fsync to report.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // sync_file_range only reads its integer arguments.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_write_back(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_byte_through_the_write_backs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = WriteBehind::new(File::create(&path).unwrap());
        let chunk: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
        for _ in 0..7 {
            w.write_all(&chunk).unwrap();
        }
        assert!(w.requested > 0 && w.requested < w.written);
        w.into_inner().sync_all().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 7 * chunk.len());
        assert!(back.chunks(chunk.len()).all(|c| c == chunk));
    }
}
