//! The run lock: a session-level advisory lock that the sink takes on its one
//! connection before it reads its stored offsets, and holds for the life of the run.
//!
//! It is keyed by the row the offsets live in (schema, pipeline, sink), so it closes
//! two holes at once:
//! - a restart racing the killed run's last commit: the killed run's backend holds the
//!   lock until it has finished (or aborted) the transaction it was committing and
//!   noticed that its client is gone; the new run waits for that before it reads the
//!   offsets, so it sees the commit and does not write those rows again;
//! - two runs of one pipeline at once: the second waits up to `lock_timeout`, then
//!   stops with an error naming the holder, instead of writing next to the first.
//!
//! The lock ends with its connection, so a killed run needs no clean-up. It costs one
//! statement at open and nothing per flush.

use std::time::Duration;

use connector_api::{stable_hash, Error, ErrorKind, Result};
use sqlx::postgres::PgConnection;
use sqlx::Executor;

use crate::error::{pg_error, sqlstate};

/// The lock key of the offsets row of `pipeline`'s `sink` in `schema`.
pub fn key(schema: &str, pipeline: &str, sink: &str) -> i64 {
    stable_hash(format!("sluice_offsets\0{schema}\0{pipeline}\0{sink}").as_bytes()) as i64
}

/// Takes the lock on `conn`, waiting up to `wait` for a holder to let go (the server
/// wakes the waiter the moment the holder's session ends). `what` names the lock in
/// messages.
pub async fn acquire(conn: &mut PgConnection, key: i64, wait: Duration, what: &str) -> Result<()> {
    if try_lock(conn, key).await? {
        return Ok(());
    }
    if !wait.is_zero() {
        if let Some(holder) = holder(conn, key).await? {
            tracing::warn!(lock = %what, holder = %holder, wait = ?wait, "waiting for the run that holds the lock to end");
        }
        conn.execute(format!("SET lock_timeout = {}", wait.as_millis().max(1)).as_str())
            .await
            .map_err(|e| pg_error("set lock_timeout", e))?;
        let waited = sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await;
        conn.execute("RESET lock_timeout")
            .await
            .map_err(|e| pg_error("reset lock_timeout", e))?;
        match waited {
            Ok(_) => return Ok(()),
            Err(e) if sqlstate(&e).as_deref() == Some("55P03") => {}
            Err(e) => return Err(pg_error(format!("{what}: take the run lock"), e)),
        }
    }
    // the holder may have let go since: one last try before giving up
    if try_lock(conn, key).await? {
        return Ok(());
    }
    let holder = holder(conn, key)
        .await?
        .unwrap_or_else(|| "a session that has since ended".into());
    Err(Error::new(
        ErrorKind::Conflict,
        format!(
            "{what} is in use by another run: {holder}; waited {}. Stop that run; if it is gone \
             but its connection lingers, end it with SELECT pg_terminate_backend(pid)",
            humantime_duration(wait)
        ),
    ))
}

async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| pg_error("take the run lock", e))
}

/// Who holds the lock: backend pid, session name, client and since when.
async fn holder(conn: &mut PgConnection, key: i64) -> Result<Option<String>> {
    let (high, low) = ((key as u64 >> 32) as i64, (key as u64 & 0xffff_ffff) as i64);
    let row: Option<(i32, String, String, String)> = sqlx::query_as(
        "SELECT l.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'the local socket'), \
         coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?') \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.classid::bigint = $1 AND l.objid::bigint = $2 LIMIT 1",
    )
    .bind(high)
    .bind(low)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| pg_error("find the holder of the run lock", e))?;
    Ok(row.map(|(pid, app, client, since)| {
        format!("PostgreSQL backend pid {pid} (application \"{app}\", from {client}, connected since {since})")
    }))
}

fn humantime_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_differs_by_schema_pipeline_and_sink_and_never_by_build() {
        let k = key("public", "orders", "sink");
        assert_eq!(k, key("public", "orders", "sink"));
        assert_ne!(k, key("other", "orders", "sink"));
        assert_ne!(k, key("public", "orders2", "sink"));
        assert_ne!(k, key("public", "orders", "archive"));
        // names that only differ in where one ends and the next begins
        assert_ne!(key("a", "bc", "d"), key("ab", "c", "d"));
        // fixed across builds and versions: an upgraded binary must wait for the lock
        // that the run it replaces holds
        assert_eq!(k, -494_288_199_269_672_056);
    }
}
