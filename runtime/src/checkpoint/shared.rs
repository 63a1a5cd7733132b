//! The shared checkpoint store: a PostgreSQL database that several runtimes running
//! the same pipeline file use to divide its splits.
//!
//! Tables (created when missing, in the URL's database and search path):
//!
//! - `sluice_splits`: one row per (pipeline, split): its checkpoint (the offsets
//!   envelope of that split alone), `done` once read to its end, the split's
//!   `version` as last listed (a file's inode and size, an object's ETag) and the
//!   version the read that finished it was claimed at, and the lease: the `owner`
//!   runtime, the `epoch` (one more at each claim) and `lease_until`. A done split
//!   listed with another version (it grew, or was replaced) is read again, from its
//!   checkpoint.
//! - `sluice_split_claims`: every claim (pipeline, split, epoch, owner, when, how it
//!   ended): who did which share of the work, takeovers included.
//! - `sluice_runtimes`: each runtime's heartbeat (kept a day).
//! - `sluice_imports`: pipelines whose offsets were taken from a local store, so
//!   that they are taken once (a reset does not bring them back).
//! - `sluice_cuts`: how each pipeline's splits are cut (`split_key_width = N`, or
//!   NULL: one per table, file or object); a listing or an import cut otherwise is
//!   refused, since its splits would overlap those read.
//!
//! A split is claimed with `FOR UPDATE SKIP LOCKED`, so two runtimes never claim the
//! same row at once; a lease that is not renewed within `lease_timeout` (the runtime
//! died, or lost the database) may be claimed by another runtime, which bumps the
//! epoch. Every checkpoint of a split is an `UPDATE ... WHERE epoch = $mine AND owner
//! = $me`: a runtime whose lease was taken over writes nothing over the new owner's
//! offsets, and stops reading the split.

use std::time::Duration;

use connector_api::{Error, ErrorKind, Offsets, Result, SplitList};
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions};
use sqlx::query::Query;
use sqlx::Postgres;
use sqlx::Row;

mod admin;

pub use self::admin::SplitRow;

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
    /// The runtime whose lease ran out, when this claim takes the split over.
    pub from: Option<String>,
    /// The split's checkpoint was taken from a local store
    /// ([`SharedStore::import`]) and none was stored since.
    pub imported: bool,
}

const SETUP: &[&str] = &[
    // `imported`: the split's position came from a local store, so the data up to
    // it is in the sinks under the pipeline's own name, not under the split's
    "CREATE TABLE IF NOT EXISTS sluice_splits (\
       pipeline TEXT NOT NULL, split TEXT NOT NULL, offsets TEXT, \
       done BOOLEAN NOT NULL DEFAULT false, owner TEXT, epoch BIGINT NOT NULL DEFAULT 0, \
       lease_until TIMESTAMPTZ, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
       imported BOOLEAN NOT NULL DEFAULT false, version TEXT, claimed_version TEXT, \
       done_version TEXT, PRIMARY KEY (pipeline, split))",
    "CREATE INDEX IF NOT EXISTS sluice_splits_open ON sluice_splits (pipeline, split) WHERE NOT done",
    "CREATE TABLE IF NOT EXISTS sluice_split_claims (\
       pipeline TEXT NOT NULL, split TEXT NOT NULL, epoch BIGINT NOT NULL, owner TEXT NOT NULL, \
       claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(), ended_at TIMESTAMPTZ, outcome TEXT, \
       PRIMARY KEY (pipeline, split, epoch))",
    "CREATE TABLE IF NOT EXISTS sluice_runtimes (\
       id TEXT PRIMARY KEY, started_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
       heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "DELETE FROM sluice_runtimes WHERE heartbeat_at < now() - interval '1 day'",
    // how the pipeline's splits are cut (NULL: one per table, file or object)
    "CREATE TABLE IF NOT EXISTS sluice_cuts (pipeline TEXT PRIMARY KEY, cut TEXT)",
    "CREATE TABLE IF NOT EXISTS sluice_imports (\
       pipeline TEXT PRIMARY KEY, source TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())",
];

/// The condition of every write by the holder of a lease: the split (`$1`, `$2`) is
/// not done, and its lease is still the one claimed (`$3` the epoch, `$4` this
/// runtime). [`SharedStore::held`] binds them.
macro_rules! held {
    () => {
        "pipeline = $1 AND split = $2 AND epoch = $3 AND owner = $4 AND NOT done"
    };
}

/// Refuses splits cut by `cut` where the store holds splits cut by `held`.
fn same_cut(pipeline: &str, cut: Option<&str>, held: Option<&str>) -> Result<()> {
    if held == cut {
        return Ok(());
    }
    let said = |cut: Option<&str>| {
        cut.unwrap_or("one split per table, file or object")
            .to_string()
    };
    Err(Error::config(format!(
        "pipeline \"{pipeline}\": the source cuts its splits by {}, but the shared store holds splits cut by {}: they would overlap, and records be read twice; put the setting back, or start over with `sluice offsets reset`",
        said(cut),
        said(held)
    )))
}

/// The advisory lock of `pipeline`'s split list: runtimes hold it shared while they
/// add splits, and exclusively while they take in offsets from a local store.
pub(super) fn pipeline_lock(pipeline: &str) -> i64 {
    connector_api::stable_hash(format!("sluice_splits\0{pipeline}").as_bytes()) as i64
}

/// Serialises the table creation of runtimes that start together.
const SETUP_LOCK: i64 = 0x736c_7569_6365_5f31;

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

    /// Adds the splits of `pipeline` the store does not know yet, and reopens a done
    /// split listed with another version than it was read at. Refuses splits cut
    /// otherwise than those it holds (`SplitList::cut`): they would overlap.
    pub async fn add_splits(&self, pipeline: &str, listed: &SplitList) -> Result<()> {
        let splits = &listed.splits;
        let ids: Vec<&str> = splits.iter().map(|s| s.id.as_str()).collect();
        let versions: Vec<Option<&str>> = splits.iter().map(|s| s.version.as_deref()).collect();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.error("begin", e))?;
        // an import of the pipeline's local offsets goes first (it takes this lock
        // exclusively)
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(pipeline_lock(pipeline))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("lock the pipeline's splits", e))?;
        self.hold_cut(&mut tx, pipeline, listed.cut.as_deref())
            .await?;
        sqlx::query(
            "INSERT INTO sluice_splits (pipeline, split, version) \
             SELECT $1, s, v FROM unnest($2::text[], $3::text[]) AS l(s, v) \
             ON CONFLICT (pipeline, split) DO UPDATE SET version = excluded.version, \
               done = sluice_splits.done AND excluded.version IS NOT DISTINCT FROM sluice_splits.done_version \
             WHERE sluice_splits.version IS DISTINCT FROM excluded.version \
               OR (sluice_splits.done AND sluice_splits.done_version IS DISTINCT FROM excluded.version)",
        )
        .bind(pipeline)
        .bind(&ids)
        .bind(&versions)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error("add splits", e))?;
        tx.commit().await.map_err(|e| self.error("add splits", e))?;
        Ok(())
    }

    /// Records how `pipeline`'s splits are cut (`SplitList::cut`; None: one split per
    /// table, file or object) when the store holds nothing on it yet; refuses
    /// another cut than the one recorded, whose splits would overlap.
    pub(super) async fn hold_cut(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        pipeline: &str,
        cut: Option<&str>,
    ) -> Result<()> {
        // (an update of nothing, so that the row is returned, and the latest one)
        let (held,): (Option<String>,) = sqlx::query_as(
            "INSERT INTO sluice_cuts (pipeline, cut) VALUES ($1, $2) \
             ON CONFLICT (pipeline) DO UPDATE SET cut = sluice_cuts.cut RETURNING cut",
        )
        .bind(pipeline)
        .bind(cut)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| self.error("read how the splits are cut", e))?;
        same_cut(pipeline, cut, held.as_deref())
    }

    /// [`Self::hold_cut`]'s refusal, without recording anything (`sluice check`).
    pub async fn check_cut(&self, pipeline: &str, cut: Option<&str>) -> Result<()> {
        let held: Option<(Option<String>,)> =
            sqlx::query_as("SELECT cut FROM sluice_cuts WHERE pipeline = $1")
                .bind(pipeline)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error("read how the splits are cut", e))?;
        match held {
            Some((held,)) => same_cut(pipeline, cut, held.as_deref()),
            None => Ok(()),
        }
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
                 lease_until = now() + $3 * interval '1 millisecond', claimed_version = s.version \
               FROM c WHERE s.pipeline = $1 AND s.split = c.split \
               RETURNING s.split, s.epoch, s.imported, c.was), \
             h AS (\
               INSERT INTO sluice_split_claims (pipeline, split, epoch, owner) \
               SELECT $1, split, epoch, $2 FROM u), \
             o AS (\
               UPDATE sluice_split_claims p SET ended_at = now(), outcome = 'lease ran out' \
               FROM u WHERE p.pipeline = $1 AND p.split = u.split AND p.epoch < u.epoch \
                 AND p.ended_at IS NULL) \
             SELECT split, epoch, imported, was FROM u",
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
        Ok(Some(Claim {
            pipeline: pipeline.to_owned(),
            split: row.get("split"),
            epoch: row.get("epoch"),
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

    /// `sql`, whose `$1` to `$4` are the split of `claim` and its lease (use
    /// [`held!`] for the condition), with those bound.
    fn held<'q>(&'q self, sql: &'q str, claim: &'q Claim) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(sql)
            .bind(&claim.pipeline)
            .bind(&claim.split)
            .bind(claim.epoch)
            .bind(&self.me)
    }

    /// Extends the lease of `claim`; false when it is no longer this runtime's.
    pub async fn renew(&self, claim: &Claim) -> Result<bool> {
        let sql = concat!(
            "UPDATE sluice_splits SET lease_until = now() + $5 * interval '1 millisecond' WHERE ",
            held!()
        );
        let r = self
            .held(sql, claim)
            .bind(self.lease_ms())
            .execute(&self.pool)
            .await
            .map_err(|e| self.error("renew a lease", e))?;
        Ok(r.rows_affected() == 1)
    }

    /// Stores the checkpoint of the split of `claim` (and extends the lease), only
    /// while the lease is this runtime's.
    pub async fn store(&self, claim: &Claim, offsets: &Offsets) -> Result<()> {
        let sql = concat!(
            "UPDATE sluice_splits SET offsets = $5, updated_at = now(), imported = false, \
               lease_until = now() + $6 * interval '1 millisecond' WHERE ",
            held!()
        );
        let r = self
            .held(sql, claim)
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
        let sql = concat!(
            "WITH u AS (\
               UPDATE sluice_splits SET done = $5, lease_until = NULL, updated_at = now(), \
                 done_version = CASE WHEN $5 THEN claimed_version ELSE done_version END \
               WHERE ",
            held!(),
            " RETURNING epoch), \
             h AS (\
               UPDATE sluice_split_claims SET ended_at = now(), \
                 outcome = CASE WHEN EXISTS (SELECT 1 FROM u) THEN $6 ELSE 'refused: ' || $6 END \
               WHERE pipeline = $1 AND split = $2 AND epoch = $3 AND ended_at IS NULL) \
             SELECT epoch FROM u"
        );
        let row = self
            .held(sql, claim)
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

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The error of a pipeline whose source cannot divide its work between runtimes.
pub fn unshareable(connector: &str) -> Error {
    Error::config(format!(
        "source connector \"{connector}\" cannot divide its work between runtimes (with this config: a watched or query read, CDC, a stream); use the default [checkpoint] store = \"sqlite\" (one runtime per pipeline)"
    ))
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
