//! `mode = "incremental"`: new rows of one table or query by cursor columns, read
//! in cursor order after the last delivered values, never ending a read inside a run
//! of rows that share a cursor.

use std::time::{Duration, Instant};

use connector_api::{Batch, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Row};

use super::{null_order, order, Chunk, Key, MysqlOffset, MysqlSource};
use crate::conn::quote;
use crate::error::my_error;

/// How often a caught-up `incremental` source looks for rows with a NULL cursor.
const NULL_CHECK_EVERY: Duration = Duration::from_secs(60);

impl MysqlSource {
    pub(super) async fn next_incremental(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        loop {
            let Chunk {
                mut rows,
                columns,
                full,
            } = self.chunk(0).await?;
            if rows.is_empty() {
                self.check_nulls().await?;
                if started.elapsed() >= self.idle_timeout {
                    return Ok(Some(Batch::idle()));
                }
                tokio::time::sleep(self.config.poll_interval.min(self.idle_timeout)).await;
                continue;
            }
            let mut cursors = rows
                .iter()
                .map(|r| self.order_of(0, r))
                .collect::<Result<Vec<_>>>()?;
            if full {
                // the read may end inside a run of rows sharing a cursor, and the next
                // read (after that value) would skip the rest of it: the run is left
                // to the next read, or read whole when it is the whole read
                let last = cursors.last().cloned().unwrap_or_default();
                let kept = cursors
                    .iter()
                    .rposition(|c| *c != last)
                    .map_or(0, |i| i + 1);
                if kept > 0 {
                    rows.truncate(kept);
                    cursors.truncate(kept);
                } else {
                    rows = self.chunk_equal(&last).await?;
                }
            }
            let after = cursors.pop().unwrap_or_default();
            return self
                .batch(0, &columns, rows, MysqlOffset::Cursor { after })
                .map(Some);
        }
    }

    /// Every row whose cursor equals `at` (a run longer than a read).
    async fn chunk_equal(&mut self, at: &[Key]) -> Result<Vec<Row>> {
        let split = &self.splits[0];
        let (cond, params) = order::equal(&split.order, &split.marks, at);
        let sql = format!("SELECT * FROM {} WHERE {cond}", split.relation);
        let name = split.name.clone();
        self.conn()?
            .exec(sql, Params::Positional(params))
            .await
            .map_err(|e| my_error(format!("{name}: read"), e))
    }

    /// Caught up: a row with NULL in a cursor column is never reached, which is an
    /// error, not a silent skip. Looked for at most once a minute (it may scan the
    /// table).
    async fn check_nulls(&mut self) -> Result<()> {
        if self
            .nulls_checked
            .is_some_and(|t| t.elapsed() < NULL_CHECK_EVERY)
        {
            return Ok(());
        }
        self.nulls_checked = Some(Instant::now());
        let split = &self.splits[0];
        let any: Vec<String> = split
            .order
            .iter()
            .map(|c| format!("{} IS NULL", quote(c)))
            .collect();
        let sql = format!(
            "SELECT 1 FROM {} WHERE {} LIMIT 1",
            split.relation,
            any.join(" OR ")
        );
        let name = split.name.clone();
        let cursor = split.order.join("\" or \"");
        let found: Option<u8> = self
            .conn()?
            .query_first(sql)
            .await
            .map_err(|e| my_error(format!("{name}: read"), e))?;
        match found {
            Some(_) => Err(null_order(&name, &cursor)),
            None => Ok(()),
        }
    }
}
