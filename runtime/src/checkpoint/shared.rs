//! The shared checkpoint store: a PostgreSQL database that several runtimes running
//! the same pipeline file use to divide its splits.
//!
//! Tables (created when missing, in the URL's database and search path):
//!
//! - `sluice_splits`: one row per (pipeline, split): its checkpoint (the offsets
//!   envelope of that split alone), `done` once read to its end, and the lease: the
//!   `owner` runtime, the `epoch` (one more at each claim) and `lease_until`.
//! - `sluice_split_claims`: every claim (pipeline, split, epoch, owner, when, how it
//!   ended): who did which share of the work, takeovers included.
//! - `sluice_runtimes`: each runtime's heartbeat.
//!
//! A split is claimed with `FOR UPDATE SKIP LOCKED`, so two runtimes never claim the
//! same row at once; a lease that is not renewed within `lease_timeout` (the runtime
//! died, or lost the database) may be claimed by another runtime, which bumps the
//! epoch. Every checkpoint of a split is an `UPDATE ... WHERE epoch = $mine AND owner
//! = $me`: a runtime whose lease was taken over writes nothing over the new owner's
//! offsets, and stops reading the split.

use std::time::Duration;

use connector_api::{Error, ErrorKind, Offsets, Result};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

/// The shared store of one runtime.
#[derive(Clone)]
pub struct SharedStore {
    pool: PgPool,
    /// This runtime's id: host, process id and a random tag.
    me: String,
    lease: Duration,
    /// The URL without its password, for messages.
    shown: String,
}

/// A split this runtime leased.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The pipeline.
    pub pipeline: String,
    /// The split id.
    pub split: String,
    /// The lease's epoch: one more than any earlier claim of the split.
    pub epoch: i64,
    /// The split's last checkpoint.
    pub offsets: Option<Offsets>,
    /// The runtime whose lease ran out, when this claim takes the split over.
    pub from: Option<String>,
    /// The split's checkpoint was taken from a local store
    /// ([`SharedStore::import`]) and none was stored since.
    pub imported: bool,
}

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

const SETUP: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_splits (\
       pipeline TEXT NOT NULL, split TEXT NOT NULL, offsets TEXT, \
       done BOOLEAN NOT NULL DEFAULT false, owner TEXT, epoch BIGINT NOT NULL DEFAULT 0, \
       lease_until TIMESTAMPTZ, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
       PRIMARY KEY (pipeline, split))",
    // the split's position came from a local store: the data up to it is in the
    // sinks under the pipeline's own name, not under the split's
    "ALTER TABLE sluice_splits ADD COLUMN IF NOT EXISTS imported BOOLEAN NOT NULL DEFAULT false",
    "CREATE TABLE IF NOT EXISTS sluice_split_claims (\
       pipeline TEXT NOT NULL, split TEXT NOT NULL, epoch BIGINT NOT NULL, owner TEXT NOT NULL, \
       claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(), ended_at TIMESTAMPTZ, outcome TEXT, \
       PRIMARY KEY (pipeline, split, epoch))",
    "CREATE TABLE IF NOT EXISTS sluice_runtimes (\
       id TEXT PRIMARY KEY, started_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
       heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now())",
];

/// Serialises the table creation of runtimes that start together.
const SETUP_LOCK: i64 = 0x736c_7569_6365_5f31;

const RFC3339: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";

impl SharedStore {
    /// Connects to the store at `url` and creates its tables when missing; leases
    /// last `lease` without renewal.
    pub async fn connect(url: &str, lease: Duration) -> Result<Self> {
        let shown = connector_api::redacted_url(url);
        let failed = |what: &str, e: sqlx::Error| store_error(&shown, what, e);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| failed("cannot connect", e))?;
        let mut tx = pool.begin().await.map_err(|e| failed("begin", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETUP_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| failed("lock for setup", e))?;
        for statement in SETUP {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| failed("cannot create its tables", e))?;
        }
        tx.commit().await.map_err(|e| failed("commit setup", e))?;
        let me = format!(
            "{}:{}:{:04x}",
            crate::lock::host(),
            std::process::id(),
            rand::random::<u16>()
        );
        Ok(SharedStore {
            pool,
            me,
            lease,
            shown,
        })
    }

    /// This runtime's id in the store.
    pub fn runtime(&self) -> &str {
        &self.me
    }

    fn error(&self, what: &str, e: sqlx::Error) -> Error {
        store_error(&self.shown, what, e)
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis().min(i64::MAX as u128) as i64
    }

    /// Says this runtime is alive.
    pub async fn heartbeat(&self) -> Result<()> {
        sqlx::query(
            "INSERT INTO sluice_runtimes (id) VALUES ($1) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(&self.me)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("heartbeat", e))?;
        Ok(())
    }

    /// Adds the splits of `pipeline` the store does not know yet; how many were new.
    pub async fn add_splits(&self, pipeline: &str, ids: &[String]) -> Result<u64> {
        let r = sqlx::query(
            "INSERT INTO sluice_splits (pipeline, split) SELECT $1, unnest($2::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(pipeline)
        .bind(ids)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("add splits", e))?;
        Ok(r.rows_affected())
    }

    /// Leases the first split of `pipeline` (in id order) that is not done and not
    /// leased, or whose lease ran out; None when there is none.
    /// Splits in `avoid` are passed over.
    pub async fn claim(&self, pipeline: &str, avoid: &[String]) -> Result<Option<Claim>> {
        let row = sqlx::query(
            "WITH c AS (\
               SELECT split, CASE WHEN lease_until IS NOT NULL THEN owner END AS was \
               FROM sluice_splits WHERE pipeline = $1 AND NOT done \
                 AND (lease_until IS NULL OR lease_until < now()) AND split <> ALL($4) \
               ORDER BY split LIMIT 1 FOR UPDATE SKIP LOCKED), \
             u AS (\
               UPDATE sluice_splits s SET owner = $2, epoch = s.epoch + 1, updated_at = now(), \
                 lease_until = now() + $3 * interval '1 millisecond' \
               FROM c WHERE s.pipeline = $1 AND s.split = c.split \
               RETURNING s.split, s.epoch, s.offsets, s.imported, c.was), \
             h AS (\
               INSERT INTO sluice_split_claims (pipeline, split, epoch, owner) \
               SELECT $1, split, epoch, $2 FROM u) \
             SELECT split, epoch, offsets, imported, was FROM u",
        )
        .bind(pipeline)
        .bind(&self.me)
        .bind(self.lease_ms())
        .bind(avoid)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error("claim a split", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let offsets: Option<String> = row.get("offsets");
        Ok(Some(Claim {
            pipeline: pipeline.to_owned(),
            split: row.get("split"),
            epoch: row.get("epoch"),
            offsets: offsets.as_deref().map(Offsets::from_envelope).transpose()?,
            from: row.get("was"),
            imported: row.get("imported"),
        }))
    }

    /// The last checkpoint of the split of `claim`.
    pub async fn load(&self, claim: &Claim) -> Result<Option<Offsets>> {
        let offsets: Option<Option<String>> = sqlx::query_scalar(
            "SELECT offsets FROM sluice_splits WHERE pipeline = $1 AND split = $2",
        )
        .bind(&claim.pipeline)
        .bind(&claim.split)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error("read a checkpoint", e))?;
        offsets
            .flatten()
            .as_deref()
            .map(Offsets::from_envelope)
            .transpose()
    }

    /// Extends the lease of `claim`; false when it is no longer this runtime's.
    pub async fn renew(&self, claim: &Claim) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE sluice_splits SET lease_until = now() + $5 * interval '1 millisecond' \
             WHERE pipeline = $1 AND split = $2 AND epoch = $3 AND owner = $4 AND NOT done",
        )
        .bind(&claim.pipeline)
        .bind(&claim.split)
        .bind(claim.epoch)
        .bind(&self.me)
        .bind(self.lease_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("renew a lease", e))?;
        Ok(r.rows_affected() == 1)
    }

    /// Stores the checkpoint of the split of `claim` (and extends the lease), only
    /// while the lease is this runtime's.
    pub async fn store(&self, claim: &Claim, offsets: &Offsets) -> Result<()> {
        let r = sqlx::query(
            "UPDATE sluice_splits SET offsets = $5, updated_at = now(), imported = false, \
               lease_until = now() + $6 * interval '1 millisecond' \
             WHERE pipeline = $1 AND split = $2 AND epoch = $3 AND owner = $4 AND NOT done",
        )
        .bind(&claim.pipeline)
        .bind(&claim.split)
        .bind(claim.epoch)
        .bind(&self.me)
        .bind(offsets.to_envelope())
        .bind(self.lease_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("store a checkpoint", e))?;
        match r.rows_affected() {
            1 => Ok(()),
            _ => Err(self.fenced(claim).await),
        }
    }

    /// The error of a runtime whose lease on `claim` was taken over.
    async fn fenced(&self, claim: &Claim) -> Error {
        let now: Option<(Option<String>, i64)> = sqlx::query_as(
            "SELECT owner, epoch FROM sluice_splits WHERE pipeline = $1 AND split = $2",
        )
        .bind(&claim.pipeline)
        .bind(&claim.split)
        .fetch_optional(&self.pool)
        .await
        .ok()
        .flatten();
        let holder = match now {
            Some((Some(owner), epoch)) => format!("runtime {owner} (epoch {epoch})"),
            _ => "another runtime".to_owned(),
        };
        Error::new(
            ErrorKind::Conflict,
            format!(
                "split \"{}\" of pipeline \"{}\": the lease of this runtime ({}, epoch {}) ran out and passed to {holder}; \
                 its checkpoint is refused and it stops reading the split, which goes on from the last checkpoint",
                claim.split, claim.pipeline, self.me, claim.epoch
            ),
        )
    }

    /// Ends `claim` with the split read to its end; false when the lease was no
    /// longer this runtime's.
    pub async fn finish(&self, claim: &Claim) -> Result<bool> {
        self.end(claim, true, "done").await
    }

    /// Gives the split of `claim` back for any runtime to claim again, saying why.
    pub async fn release(&self, claim: &Claim, outcome: &str) -> Result<()> {
        self.end(claim, false, outcome).await.map(|_| ())
    }

    async fn end(&self, claim: &Claim, done: bool, outcome: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "WITH u AS (\
               UPDATE sluice_splits SET done = $5, lease_until = NULL, updated_at = now() \
               WHERE pipeline = $1 AND split = $2 AND epoch = $3 AND owner = $4 AND NOT done \
               RETURNING epoch), \
             h AS (\
               UPDATE sluice_split_claims SET ended_at = now(), outcome = $6 \
               WHERE pipeline = $1 AND split = $2 AND epoch = $3) \
             SELECT epoch FROM u",
        )
        .bind(&claim.pipeline)
        .bind(&claim.split)
        .bind(claim.epoch)
        .bind(&self.me)
        .bind(done)
        .bind(outcome)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error("end a lease", e))?;
        Ok(row.is_some())
    }

    /// Splits of `pipeline` not read to their end yet.
    pub async fn unfinished(&self, pipeline: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sluice_splits WHERE pipeline = $1 AND NOT done",
        )
        .bind(pipeline)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error("count splits", e))?;
        Ok(n as u64)
    }

    /// True when the store holds any split of `pipeline`.
    pub async fn knows(&self, pipeline: &str) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sluice_splits WHERE pipeline = $1)")
            .bind(pipeline)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error("read", e))
    }

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

    /// Takes the offsets a pipeline stored in a local store: each split becomes a
    /// row with its own position, marked imported (a split with a finished position
    /// is still read by its source, which knows it is at its end). Only into a
    /// pipeline the store does not know yet; true when it did.
    pub async fn import(&self, pipeline: &str, offsets: &Offsets) -> Result<bool> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.error("begin", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(connector_api::stable_hash(pipeline.as_bytes()) as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("lock for import", e))?;
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sluice_splits WHERE pipeline = $1)")
                .bind(pipeline)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.error("read", e))?;
        if known {
            return Ok(false);
        }
        for (split, value) in offsets.splits().iter() {
            let mut one = Offsets::new();
            one.set(split.clone(), value.clone());
            sqlx::query(
                "INSERT INTO sluice_splits (pipeline, split, offsets, imported) VALUES ($1, $2, $3, true)",
            )
                .bind(pipeline)
                .bind(split)
                .bind(one.to_envelope())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error("import offsets", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.error("commit import", e))?;
        Ok(true)
    }

    /// Forgets every split of `pipeline` and its claims; true if there were any.
    pub async fn reset(&self, pipeline: &str) -> Result<bool> {
        let r = sqlx::query(
            "WITH h AS (DELETE FROM sluice_split_claims WHERE pipeline = $1) \
             DELETE FROM sluice_splits WHERE pipeline = $1",
        )
        .bind(pipeline)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("reset", e))?;
        Ok(r.rows_affected() > 0)
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A failure of the store at `shown`: a lost or refused connection is retried, a
/// refused login or a missing database stops with the way out.
fn store_error(shown: &str, what: &str, err: sqlx::Error) -> Error {
    let at = format!("checkpoint store \"{shown}\"");
    let code = err
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    let error = match (&err, code.as_deref()) {
        (_, Some(c)) if c.starts_with("28") => Error::new(
            ErrorKind::Auth,
            format!("{at}: {what}: the login was refused; check the user and password in [checkpoint] url"),
        ),
        (_, Some("3D000")) => Error::not_found(format!(
            "{at}: {what}: the database does not exist; create it or fix [checkpoint] url"
        )),
        (_, Some(c)) if c.starts_with("08") || c.starts_with("57P") => {
            Error::connect(format!("{at}: {what}"))
        }
        (_, Some("40001" | "40P01" | "55P03")) => Error::transient(format!("{at}: {what}")),
        (sqlx::Error::Database(_), _) => Error::storage(format!("{at}: {what}")),
        _ => Error::connect(format!("{at}: {what}")),
    };
    error.with_source(err)
}
