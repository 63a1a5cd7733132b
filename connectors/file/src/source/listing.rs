//! Finding the files to read: the glob, what of each is unread, and watching the
//! directory for changes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use connector_api::{Error, Result};
use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::FileSource;
use crate::config::FileSourceConfig;
use crate::identity::inode;

impl FileSource {
    /// Bytes of the file at `path` not read yet (the whole of a new or replaced file;
    /// none of a Parquet file read before, whose positions are rows, or of an
    /// incomplete last line that is waiting to grow).
    pub(super) fn unread(&self, path: &Path) -> u64 {
        let split = path.to_string_lossy();
        let Ok(meta) = std::fs::metadata(path) else {
            return 0;
        };
        let size = meta.len();
        let pos = match self.known.get(split.as_ref()) {
            // positions not in bytes of the file (rows, decompressed bytes)
            Some(_) if !self.positions_are_bytes(&split) => return 0,
            Some(off) if off.id.ino == inode(&meta) => off.pos,
            _ => 0,
        };
        if self.partial.get(split.as_ref()) == Some(&size) {
            return 0;
        }
        size.saturating_sub(pos)
    }

    /// Starts watching the directory of the glob (created when missing).
    pub(super) fn start_watching(&mut self) -> Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // the source's own opening and reading of files is not a change: woken by
            // it, an idle source would look again and again
            let change = res.is_ok_and(|e| {
                !matches!(
                    e.kind,
                    EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
                )
            });
            if change {
                let _ = tx.send(());
            }
        })
        .map_err(|e| Error::internal("cannot start the file watcher").with_source(e))?;
        let dir = watch_dir(&self.config.path);
        if !dir.is_dir() {
            // made so files can be dropped in, but said: a mistyped path would otherwise
            // wait for files that never come without a word
            tracing::warn!(directory = %dir.display(), pattern = %self.config.path, "the watched directory did not exist; created it (check `path` if files never arrive)");
            std::fs::create_dir_all(&dir).map_err(|e| {
                Error::from(e).context(format!("create watched directory \"{}\"", dir.display()))
            })?;
        }
        watcher.watch(&dir, RecursiveMode::Recursive).map_err(|e| {
            Error::internal(format!("cannot watch \"{}\"", dir.display())).with_source(e)
        })?;
        self.events = Some((watcher, rx));
        Ok(())
    }

    pub(super) async fn wait_for_change(&mut self) {
        let poll = self.config.poll_interval.min(self.idle_timeout);
        if let Some((_, rx)) = self.events.as_mut() {
            if tokio::time::timeout(poll, rx.recv()).await.is_ok() {
                // a burst of events is one change
                while rx.try_recv().is_ok() {}
            }
        } else {
            tokio::time::sleep(poll).await;
        }
        self.partial.clear();
        self.last_scan = Some(Instant::now());
    }
}

/// Files matching the glob, in name order.
pub(super) fn list(pattern: &str) -> Result<Vec<PathBuf>> {
    let paths = glob::glob(pattern)
        .map_err(|e| Error::config(format!("path \"{pattern}\"")).with_source(e))?;
    let mut out: Vec<PathBuf> = paths
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// The directory to watch: the longest leading part of the glob without wildcards.
pub(super) fn watch_dir(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    for part in Path::new(pattern).components() {
        let s = part.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            break;
        }
        dir.push(part);
    }
    if dir.as_os_str().is_empty() || dir == Path::new(pattern) {
        dir = Path::new(pattern)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
    }
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}

/// `sluice check`: the glob matches readable files (or, in watch mode, its directory exists).
pub fn check(config: &FileSourceConfig) -> Result<()> {
    if config.watch {
        let dir = watch_dir(&config.path);
        if !dir.is_dir() {
            return Err(Error::not_found(format!(
                "directory \"{}\" does not exist",
                dir.display()
            ))
            .with_field("path"));
        }
        return Ok(());
    }
    let files = list(&config.path)?;
    if files.is_empty() {
        return Err(
            Error::not_found(format!("no file matches \"{}\"", config.path)).with_field("path"),
        );
    }
    for f in files {
        File::open(&f).map_err(|e| Error::from(e).context(format!("file \"{}\"", f.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_dir_is_the_part_before_the_first_wildcard() {
        assert_eq!(watch_dir("in/*.jsonl"), PathBuf::from("in"));
        assert_eq!(watch_dir("a/b/c.csv"), PathBuf::from("a/b"));
        assert_eq!(watch_dir("*.csv"), PathBuf::from("."));
    }
}
