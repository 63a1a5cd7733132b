//! The run lock: a named lock (`GET_LOCK`) the sink takes on its one connection before
//! it reads its stored offsets, and holds for the life of the run.
//!
//! As the postgres sink's advisory lock, it closes two holes: a restart racing the
//! killed run's last commit (the server ends the killed session, and its lock, only
//! after the statement it was running, COMMIT included, has finished), and two runs of
//! one pipeline at once (the second waits up to `lock_timeout`, then stops with an
//! error naming the holder). The lock ends with its session, so a killed run needs no
//! clean-up.

use std::time::Duration;

use connector_api::{stable_hash, Error, ErrorKind, Result};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::error::my_error;

/// The lock name of the offsets row of `pipeline`'s `sink` in database `db` (names are
/// at most 64 characters, so a hash).
pub fn name(db: &str, pipeline: &str, sink: &str) -> String {
    format!(
        "sluice_offsets_{:016x}",
        stable_hash(format!("{db}\0{pipeline}\0{sink}").as_bytes())
    )
}

/// Takes the lock on `conn`, waiting up to `wait`. `what` names it in messages.
pub async fn acquire(conn: &mut Conn, name: &str, wait: Duration, what: &str) -> Result<()> {
    let holder: Option<Option<u64>> = conn
        .exec_first("SELECT IS_USED_LOCK(?)", (name,))
        .await
        .map_err(|e| my_error(format!("{what}: look for the run lock"), e))?;
    if let Some(Some(id)) = holder {
        tracing::warn!(lock = %what, holder = id, wait = ?wait, "waiting for the run that holds the lock to end");
    }
    // GET_LOCK waits in whole seconds (a fraction is rounded by some servers)
    let secs = wait.as_secs_f64().ceil() as u64;
    let got: Option<Option<i64>> = conn
        .exec_first("SELECT GET_LOCK(?, ?)", (name, secs))
        .await
        .map_err(|e| my_error(format!("{what}: take the run lock"), e))?;
    match got.flatten() {
        Some(1) => Ok(()),
        _ => {
            let holder: Option<Option<u64>> = conn
                .exec_first("SELECT IS_USED_LOCK(?)", (name,))
                .await
                .map_err(|e| my_error(format!("{what}: look for the run lock"), e))?;
            let by = match holder.flatten() {
                Some(id) => format!("MySQL connection {id}"),
                None => "another session".into(),
            };
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{what} is in use by another run ({by}) after waiting {wait:?}; \
                     stop that run, or raise lock_timeout"
                ),
            )
            .with_field("lock_timeout"))
        }
    }
}
