//! What `sluice offsets show|reset` and the move from a local store do with the
//! shared store: list a pipeline's splits and the runtimes, forget a pipeline, take
//! in a local store's offsets.

use connector_api::{Error, ErrorKind, Offsets, Result};
use sqlx::Row;

use super::{pipeline_lock, SharedStore};

const RFC3339: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";

/// One split as `sluice offsets show` lists it.
#[derive(Debug)]
pub struct SplitRow {
    /// The split id.
    pub split: String,
    /// Read to its end.
    pub done: bool,
    /// The runtime that holds it, or held it last.
    pub owner: Option<String>,
    /// Its lease's epoch.
    pub epoch: i64,
    /// Until when the lease holds (RFC 3339), when leased now.
    pub leased_until: Option<String>,
    /// Its last checkpoint.
    pub offsets: Option<Offsets>,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// A runtime that used the store in the last day.
#[derive(Debug)]
pub struct RuntimeRow {
    /// Host, process id and tag.
    pub id: String,
    /// Its last heartbeat (RFC 3339).
    pub heartbeat_at: String,
}

impl SharedStore {
    /// Every split of `pipeline`, in id order.
    pub async fn splits(&self, pipeline: &str) -> Result<Vec<SplitRow>> {
        let rows = sqlx::query(
            "SELECT split, done, owner, epoch, offsets, \
               CASE WHEN lease_until > now() THEN to_char(lease_until AT TIME ZONE 'UTC', $2) END AS leased_until, \
               to_char(updated_at AT TIME ZONE 'UTC', $2) AS updated_at \
             FROM sluice_splits WHERE pipeline = $1 ORDER BY split",
        )
        .bind(pipeline)
        .bind(RFC3339)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error("read", e))?;
        rows.iter()
            .map(|row| {
                let offsets: Option<String> = row.get("offsets");
                Ok(SplitRow {
                    split: row.get("split"),
                    done: row.get("done"),
                    owner: row.get("owner"),
                    epoch: row.get("epoch"),
                    leased_until: row.get("leased_until"),
                    offsets: offsets.as_deref().map(Offsets::from_envelope).transpose()?,
                    updated_at: row.get("updated_at"),
                })
            })
            .collect()
    }

    /// The runtimes with a heartbeat in the last day, latest first.
    pub async fn runtimes(&self) -> Result<Vec<RuntimeRow>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, to_char(heartbeat_at AT TIME ZONE 'UTC', $1) FROM sluice_runtimes \
             ORDER BY heartbeat_at DESC",
        )
        .bind(RFC3339)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error("read", e))?;
        Ok(rows
            .into_iter()
            .map(|(id, heartbeat_at)| RuntimeRow { id, heartbeat_at })
            .collect())
    }

    /// Takes the offsets a pipeline stored in a local store (`from`, for the record):
    /// each split becomes a row with its own position, marked imported (a split with
    /// a finished position is still read by its source, which knows it is at its
    /// end). Once per pipeline: how many splits it took now, None when it was done
    /// before. A split another runtime has begun to read meanwhile keeps its own
    /// position, and is named in the log.
    pub async fn import(
        &self,
        pipeline: &str,
        offsets: &Offsets,
        from: &str,
    ) -> Result<Option<usize>> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.error("begin", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(pipeline_lock(pipeline))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("lock for import", e))?;
        let first = sqlx::query(
            "INSERT INTO sluice_imports (pipeline, source) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(pipeline)
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error("import offsets", e))?;
        if first.rows_affected() == 0 {
            return Ok(None);
        }
        // the local store read each table, file or object as one split
        self.hold_cut(&mut tx, pipeline, None).await?;
        let mut took = 0;
        for (split, value) in offsets.splits().iter() {
            // a position a source keeps beside its splits (a file source's rotated
            // file, keyed with a NUL PostgreSQL text cannot hold) is no split
            if split.contains('\0') {
                continue;
            }
            let mut one = Offsets::new();
            one.set(split.clone(), value.clone());
            let taken = sqlx::query(
                "INSERT INTO sluice_splits (pipeline, split, offsets, imported) VALUES ($1, $2, $3, true) \
                 ON CONFLICT (pipeline, split) DO UPDATE SET offsets = excluded.offsets, imported = true \
                 WHERE sluice_splits.offsets IS NULL AND sluice_splits.epoch = 0",
            )
            .bind(pipeline)
            .bind(split)
            .bind(one.to_envelope())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("import offsets", e))?;
            match taken.rows_affected() {
                0 => {
                    tracing::warn!(pipeline, split = %split, "another runtime began to read the split before its offsets were taken from the local store (start the runtime that has the local store first): records before that position may repeat")
                }
                _ => took += 1,
            }
        }
        tx.commit()
            .await
            .map_err(|e| self.error("commit import", e))?;
        Ok(Some(took))
    }

    /// Forgets every split of `pipeline` and its claims, unless one is leased now
    /// (a run would write its checkpoint again); true if there were any. Offsets
    /// taken from a local store are not taken again.
    pub async fn reset(&self, pipeline: &str) -> Result<bool> {
        let held: Option<(String, Option<String>)> = sqlx::query_as(
            "WITH h AS (SELECT split, owner FROM sluice_splits \
               WHERE pipeline = $1 AND lease_until > now() LIMIT 1), \
             c AS (DELETE FROM sluice_split_claims WHERE pipeline = $1 \
               AND NOT EXISTS (SELECT 1 FROM h)), \
             k AS (DELETE FROM sluice_cuts WHERE pipeline = $1 \
               AND NOT EXISTS (SELECT 1 FROM h)), \
             s AS (DELETE FROM sluice_splits WHERE pipeline = $1 \
               AND NOT EXISTS (SELECT 1 FROM h) RETURNING 1) \
             SELECT split, owner FROM h \
             UNION ALL SELECT '', NULL WHERE EXISTS (SELECT 1 FROM s) LIMIT 1",
        )
        .bind(pipeline)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error("reset", e))?;
        match held {
            Some((split, owner)) if !split.is_empty() => Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "split \"{split}\" of pipeline \"{pipeline}\" is leased to runtime {}: stop every runtime of the pipeline first",
                    owner.as_deref().unwrap_or("?")
                ),
            )),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }
}
