//! The local checkpoint store: the offsets every sink has flushed, per pipeline, in
//! an embedded SQLite file (`.sluice/state.db` by default). Each store is one durable
//! transaction (WAL, synchronous = FULL).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use connector_api::{Error, Offsets, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// A checkpoint store file.
#[derive(Clone)]
pub struct CheckpointStore {
    pool: SqlitePool,
    path: PathBuf,
}

/// A failure of the store at `path`, classified by SQLite's result code: a full or
/// read-only disk and a file that is not a database stop at once with the way out; a
/// busy file is retried; the rest as a lost connection.
fn store_error(path: &Path, what: &str, err: sqlx::Error) -> Error {
    let at = format!("checkpoint store \"{}\"", path.display());
    let error = match sqlite_code(&err) {
        // SQLITE_FULL
        Some(13) => Error::storage(format!(
            "{at}: {what}: the disk is full; free space and run again (the offsets stored last are kept)"
        )),
        // SQLITE_READONLY
        Some(8) => Error::storage(format!(
            "{at}: {what}: the file or its disk is read-only; make it writable or set [checkpoint] path"
        )),
        // SQLITE_CORRUPT, SQLITE_NOTADB
        Some(11 | 26) => Error::storage(format!(
            "{at}: {what}: the file is not a SQLite database or is damaged; \
             `sluice offsets reset` sets it aside and starts a new one (every pipeline in it \
             then reads from the start), or move it away yourself"
        )),
        // SQLITE_BUSY, SQLITE_LOCKED
        Some(5 | 6) => Error::transient(format!("{at}: {what}: the file is busy")),
        _ => Error::connect(format!("{at}: {what}")),
    };
    error.with_source(err)
}

/// SQLite's primary result code of a database error.
fn sqlite_code(err: &sqlx::Error) -> Option<i32> {
    let code = err.as_database_error()?.code()?;
    code.parse::<i32>().ok().map(|c| c & 0xff)
}

/// The store's file is not a database or is damaged.
pub fn is_corrupt(err: &Error) -> bool {
    err.kind() == connector_api::ErrorKind::Storage
        && err.message().contains("not a SQLite database")
}

/// Stores already open in this process, by path: pipelines that share a file share
/// one pool instead of racing each other for SQLite's locks.
static OPEN: std::sync::Mutex<Vec<(PathBuf, CheckpointStore)>> = std::sync::Mutex::new(Vec::new());

impl CheckpointStore {
    /// The store at `path`, opened once per process and shared.
    pub async fn shared(path: &Path) -> Result<Self> {
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(store) = Self::find(&key) {
            return Ok(store);
        }
        let store = Self::open(path).await?;
        let winner = {
            let Ok(mut open) = OPEN.lock() else {
                return Ok(store);
            };
            match open.iter().find(|(p, _)| *p == key) {
                Some((_, existing)) => Some(existing.clone()),
                None => {
                    open.push((key, store.clone()));
                    None
                }
            }
        };
        match winner {
            // opened concurrently by another pipeline: use that one
            Some(existing) => {
                store.close().await;
                Ok(existing)
            }
            None => Ok(store),
        }
    }

    fn find(key: &Path) -> Option<Self> {
        let open = OPEN.lock().ok()?;
        open.iter().find(|(p, _)| p == key).map(|(_, s)| s.clone())
    }

    /// Opens (creating) the store at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::from(e)
                        .context(format!("checkpoint store directory \"{}\"", dir.display()))
                })?;
            }
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| {
                Error::config(format!("checkpoint store path \"{}\"", path.display()))
                    .with_source(e)
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| store_error(path, "cannot open", e))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS sluice_checkpoints (pipeline TEXT PRIMARY KEY, offsets TEXT NOT NULL, updated_at TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(|e| store_error(path, "cannot create table", e))?;
        Ok(CheckpointStore {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// Opens the store at `path`; one that is not a database (or is damaged) is
    /// renamed to `PATH.corrupt-SECONDS` and a new one created. Returns the store and
    /// where the old file went. For `sluice offsets reset`, which must recover.
    pub async fn open_or_set_aside(path: &Path) -> Result<(Self, Option<PathBuf>)> {
        match Self::open(path).await {
            Ok(store) => Ok((store, None)),
            Err(e) if is_corrupt(&e) => {
                let seconds = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = PathBuf::from(format!("{}.corrupt-{seconds}", path.display()));
                std::fs::rename(path, &aside).map_err(|io| {
                    Error::from(io).context(format!(
                        "setting aside checkpoint store \"{}\"",
                        path.display()
                    ))
                })?;
                // its write-ahead log goes with it: it may hold the newest checkpoints
                for suffix in ["-wal", "-shm"] {
                    let from = format!("{}{suffix}", path.display());
                    if Path::new(&from).exists() {
                        std::fs::rename(&from, format!("{}{suffix}", aside.display())).map_err(
                            |io| Error::from(io).context(format!("setting aside \"{from}\"")),
                        )?;
                    }
                }
                Ok((Self::open(path).await?, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }

    /// The stored offsets of `pipeline`, if any.
    pub async fn load(&self, pipeline: &str) -> Result<Option<Offsets>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT offsets FROM sluice_checkpoints WHERE pipeline = ?")
                .bind(pipeline)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| store_error(&self.path, "read", e))?;
        row.map(|(s,)| Offsets::from_envelope(&s)).transpose()
    }

    /// The time of the last store of `pipeline`.
    pub async fn updated_at(&self, pipeline: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT updated_at FROM sluice_checkpoints WHERE pipeline = ?")
                .bind(pipeline)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| store_error(&self.path, "read", e))?;
        Ok(row.map(|(s,)| s))
    }

    /// Stores the offsets of `pipeline`, durably.
    pub async fn store(&self, pipeline: &str, offsets: &Offsets) -> Result<()> {
        sqlx::query(
            "INSERT INTO sluice_checkpoints (pipeline, offsets, updated_at) VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
             ON CONFLICT (pipeline) DO UPDATE SET offsets = excluded.offsets, updated_at = excluded.updated_at",
        )
        .bind(pipeline)
        .bind(offsets.to_envelope())
        .execute(&self.pool)
        .await
        .map_err(|e| store_error(&self.path, "write", e))?;
        Ok(())
    }

    /// Forgets the offsets of `pipeline`; true if there were any.
    pub async fn reset(&self, pipeline: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM sluice_checkpoints WHERE pipeline = ?")
            .bind(pipeline)
            .execute(&self.pool)
            .await
            .map_err(|e| store_error(&self.path, "write", e))?;
        Ok(r.rows_affected() > 0)
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_loads_and_resets() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("s/state.db"))
            .await
            .unwrap();
        assert!(store.load("p").await.unwrap().is_none());
        let mut o = Offsets::new();
        o.set("a", serde_json::json!(3));
        store.store("p", &o).await.unwrap();
        store.close().await;
        let store = CheckpointStore::open(&dir.path().join("s/state.db"))
            .await
            .unwrap();
        assert_eq!(store.load("p").await.unwrap(), Some(o));
        assert!(store.reset("p").await.unwrap());
        assert!(store.load("p").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_full_disk_and_a_file_that_is_no_database_stop_at_once_naming_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = CheckpointStore::open(&path).await.unwrap();
        // a database that may not grow: SQLite answers SQLITE_FULL, as on a full disk
        let mut conn = store.pool.acquire().await.unwrap();
        sqlx::query("PRAGMA max_page_count = 3")
            .execute(&mut *conn)
            .await
            .unwrap();
        let big = "x".repeat(64 * 1024);
        let err = sqlx::query("INSERT INTO sluice_checkpoints VALUES ('p', ?, 'now')")
            .bind(&big)
            .execute(&mut *conn)
            .await
            .unwrap_err();
        let err = store_error(&path, "write", err);
        assert_eq!(err.kind(), connector_api::ErrorKind::Storage, "{err}");
        assert!(err.message().contains("the disk is full"), "{err}");
        drop(conn);
        store.close().await;

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![b'g'; 8192]).unwrap();
        let err = CheckpointStore::open(&garbage).await.err().unwrap();
        assert!(is_corrupt(&err), "{err}");
        assert!(!err.is_retryable());
        assert!(err.message().contains("sluice offsets reset"), "{err}");
        let (store, aside) = CheckpointStore::open_or_set_aside(&garbage).await.unwrap();
        let aside = aside.unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), vec![b'g'; 8192]);
        assert!(store.load("p").await.unwrap().is_none());
    }
}
