//! One runtime at a time per pipeline: an OS lock on `PIPELINE.lock` beside the
//! pipeline's checkpoint store, held while the pipeline runs (restarts included) and
//! released by the OS when the process ends, crash or kill -9 included. A second run
//! of the same pipeline fails at start naming the holder (process id, host, since
//! when), instead of writing every record a second time.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use connector_api::{Error, ErrorKind, Result};

use crate::config::Pipeline;

/// The lock of a running pipeline; dropping it releases the lock.
pub struct PipelineLock {
    _file: std::fs::File,
}

/// The lock file of `pipeline`: `NAME.lock` in its checkpoint store's directory (a
/// pipeline name is letters, digits, `-`, `_` and `.`, so a file name as it is).
pub fn path(pipeline: &Pipeline) -> PathBuf {
    let store = pipeline.checkpoint_path();
    let dir = store.parent().unwrap_or(Path::new("."));
    dir.join(format!("{}.lock", pipeline.name))
}

/// Takes the lock of `pipeline`, waiting up to `[checkpoint] lock_timeout` for the
/// run that holds it to end; then fails with a [`ErrorKind::Conflict`] naming that
/// run. None when `stop` turns true while waiting.
pub async fn hold(
    pipeline: &Pipeline,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<PipelineLock>> {
    let path = path(pipeline);
    let failed = |e: std::io::Error| {
        Error::storage(format!(
            "lock file \"{}\" cannot be made; the pipeline's checkpoint directory must be writable (or set [checkpoint] path)",
            path.display()
        ))
        .with_source(e)
    };
    let unlockable = |e: std::io::Error| {
        Error::storage(format!(
            "lock file \"{}\" cannot be locked (a file system without locks?); set [checkpoint] path to a local disk",
            path.display()
        ))
        .with_source(e)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(failed)?;
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::Error(e)) => return Err(unlockable(e)),
            Err(std::fs::TryLockError::WouldBlock) => {}
        }
        let holder = holder(&mut file);
        if started.elapsed() >= pipeline.checkpoint.lock_timeout {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "pipeline \"{}\" is already running: {holder} holds \"{}\"; stop it first, \
                     or two runs would write its records twice ([checkpoint] lock_timeout waits for it)",
                    pipeline.name,
                    path.display()
                ),
            ));
        }
        if !said {
            tracing::info!(pipeline = %pipeline.name, holder = %holder, "waiting for the other run of this pipeline to end");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if *stop.borrow() {
            return Ok(None);
        }
    }
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let me = format!("process {} on {} since {since}", std::process::id(), host());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(me.as_bytes()))
        .map_err(failed)?;
    Ok(Some(PipelineLock { _file: file }))
}

/// Who holds the lock, as the holder wrote it.
fn holder(file: &mut std::fs::File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.trim() {
        "" => "another process".to_owned(),
        h => h.to_owned(),
    }
}

/// This machine's name, for the holder's description.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_hold_fails_naming_the_first_and_a_dropped_lock_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "name = \"a.b-c\"\n[source]\nconnector = \"datagen\"\n[sink]\nconnector = \"blackhole\"\n").unwrap();
        let pipeline = crate::config::load(&file, &crate::registry::Registry::builtin()).unwrap();
        assert_eq!(path(&pipeline), dir.path().join(".sluice/a.b-c.lock"));
        let (_tx, stop) = tokio::sync::watch::channel(false);
        let first = hold(&pipeline, &stop).await.unwrap();
        assert!(first.is_some());
        let err = hold(&pipeline, &stop).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(
            err.message()
                .contains(&format!("process {} on ", std::process::id()))
                && err.message().contains("already running"),
            "{err}"
        );
        drop(first);
        assert!(hold(&pipeline, &stop).await.unwrap().is_some());
    }
}
