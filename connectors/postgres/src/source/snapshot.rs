//! Reading tables by binary COPY in key order: chunks with one read ahead, decoded on
//! every core (`decode.rs`).

use std::time::Instant;

use connector_api::{Batch, Error, Result};
use sqlx::postgres::PgPool;

use crate::config::SourceMode;
use crate::error::pg_error;

use super::decode::{decode_parts, offset_batch, part_batch};
use super::{now_millis, PostgresSource};

/// Rows per COPY of a snapshot at least (measured, 1M rows to Parquet: 16,384 per
/// query 2.04 s, 65,536 1.60-1.69 s).
pub(super) const COPY_ROWS: usize = 65_536;

/// A COPY read ahead: the table's index and the task reading it.
pub(super) struct Prefetch {
    pub(super) table: usize,
    pub(super) task: tokio::task::JoinHandle<std::result::Result<Vec<u8>, sqlx::Error>>,
}

/// The whole output of a `COPY ... TO STDOUT`; in `snapshot` (exported with a `cdc`
/// slot) when given.
pub(super) async fn read_copy(
    pool: &PgPool,
    sql: &str,
    snapshot: Option<&str>,
) -> std::result::Result<Vec<u8>, sqlx::Error> {
    use futures::StreamExt;
    use sqlx::postgres::PgPoolCopyExt;
    let mut buf = Vec::new();
    let Some(snapshot) = snapshot else {
        let mut stream = pool.copy_out_raw(sql).await?;
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        return Ok(buf);
    };
    let mut tx = pool.begin().await?;
    in_snapshot(&mut tx, snapshot).await?;
    let mut stream = tx.copy_out_raw(sql).await?;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    drop(stream);
    tx.commit().await?;
    Ok(buf)
}

/// Makes the transaction read in `snapshot`, as of the slot's consistent point.
pub(super) async fn in_snapshot(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    snapshot: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut **tx)
        .await?;
    sqlx::query(&format!(
        "SET TRANSACTION SNAPSHOT '{}'",
        snapshot.replace('\'', "''")
    ))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A failed read of `split`: a snapshot that can no longer be imported (the
/// connection that exported it ended) is retried: the read after goes on without it
/// (`cdc`) or in a new one (`physical::Exported`).
pub(super) fn read_error(split: &str, e: sqlx::Error) -> Error {
    if crate::error::sqlstate(&e).as_deref() == Some("22023") && e.to_string().contains("snapshot")
    {
        return Error::transient(format!(
            "reading {split}: the exported snapshot is gone (the connection that exported it ended)"
        ))
        .with_source(e);
    }
    pg_error(format!("reading {split}"), e)
}

impl PostgresSource {
    /// The next batch of table rows (`snapshot`, `incremental`, and the snapshot that
    /// starts `cdc`): an empty batch with the offset `done` ends a table; a
    /// `snapshot` ends after the last; `incremental` polls at `poll_interval`.
    pub(super) async fn read_tables(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        let mut empty_pass = 0;
        loop {
            if self.tables.is_empty() {
                return Ok(None);
            }
            if self.current >= self.tables.len() {
                self.current = 0;
                if self.config.mode == SourceMode::Snapshot {
                    return Ok(None);
                }
                if empty_pass >= self.tables.len() {
                    if started.elapsed() >= self.idle_timeout {
                        return Ok(Some(Batch::idle()));
                    }
                    tokio::time::sleep(self.config.poll_interval.min(self.idle_timeout)).await;
                    empty_pass = 0;
                }
            }
            let pool = self.pool()?;
            let snapshot = self.exported_snapshot();
            let table = &mut self.tables[self.current];
            if table.offset.done {
                self.current += 1;
                continue;
            }
            // whole-table reads in chunks of at least COPY_ROWS: each chunk is one query
            // with its own start-up through the key index
            let limit = match self.config.mode {
                SourceMode::Incremental => self.batch_size * self.parts,
                _ => (self.batch_size * self.parts).max(COPY_ROWS),
            };
            let read = match self.prefetch.take() {
                Some(p) if p.table == self.current => p
                    .task
                    .await
                    .map_err(|e| Error::internal("COPY read-ahead task").with_source(e))?,
                other => {
                    if let Some(p) = other {
                        p.task.abort();
                    }
                    let sql = table.copy(table.offset.after.as_deref(), limit);
                    read_copy(&pool, &sql, snapshot.as_deref()).await
                }
            };
            let buf = read.map_err(|e| read_error(&table.split, e))?;
            // an empty read: the table has no more rows
            let starts = match buf.is_empty() {
                true => Vec::new(),
                false => crate::binary::tuples(&buf)?,
            };
            // a full chunk in key order: read the next one while this one decodes (the
            // server and the decoding threads then work at the same time)
            if self.config.mode != SourceMode::Incremental && starts.len() >= limit {
                if let Some(&last) = starts.last() {
                    let after = crate::binary::key_of(&buf, last, table.columns.len())?;
                    let sql = table.copy(Some(&after), limit);
                    let pool = pool.clone();
                    let snapshot = snapshot.clone();
                    self.prefetch = Some(Prefetch {
                        table: self.current,
                        task: tokio::spawn(async move {
                            read_copy(&pool, &sql, snapshot.as_deref()).await
                        }),
                    });
                }
            }
            if starts.len() < limit {
                if let Some(cursor) = table.cursor.as_mut() {
                    // caught up: a row no cursor position reaches is an error, not a gap
                    cursor
                        .check_nulls(&pool, &table.relation, &table.split)
                        .await?;
                }
            }
            if starts.is_empty() {
                self.current += 1;
                empty_pass += 1;
                if self.config.mode != SourceMode::Incremental {
                    table.offset.done = true;
                    return Ok(Some(offset_batch(table)?));
                }
                continue;
            }
            let parts: Vec<&[usize]> = starts.chunks(self.batch_size).collect();
            let ties = match table.cursor {
                Some(_) => super::cursor::ties(&buf, &parts, table.columns.len())?,
                None => vec![false; parts.len()],
            };
            let decoded = decode_parts(table, &buf, &parts, self.parts);
            let now_ms = now_millis();
            for (part, tie) in decoded.into_iter().zip(ties) {
                let part = part?;
                if !tie {
                    table.offset.after = Some(part.last_key.clone());
                }
                self.ready.push_back(part_batch(table, part, now_ms)?);
            }
            return Ok(self.ready.pop_front());
        }
    }
}
