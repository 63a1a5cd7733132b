//! Reading tables by binary COPY: chunks in key order with one read ahead, or one
//! streaming COPY in physical order cut into chunks by a task.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use connector_api::{Batch, Error, Offsets, Reject, Result};
use sqlx::postgres::PgPool;

use crate::config::SourceMode;
use crate::error::pg_error;

use super::table::Tid;
use super::{now_millis, PostgresSource};

/// Rows per COPY of a snapshot at least (measured, 1M rows to Parquet: 16,384 per
/// query 2.04 s, 65,536 1.60-1.69 s).
const COPY_ROWS: usize = 65_536;

/// A COPY read ahead: the table's index and the task reading it.
pub(super) struct Prefetch {
    pub(super) table: usize,
    pub(super) task: tokio::task::JoinHandle<std::result::Result<Vec<u8>, sqlx::Error>>,
}

/// A physical-order read: one COPY of the table's remaining rows, cut by a task into
/// chunks of whole tuples (each a binary COPY stream of its own), one chunk ahead. An
/// empty chunk ends the table; a channel closed without one, or an error, ends the
/// stream, and the next read starts a new one after the last decoded row.
pub(super) struct CopyStream {
    pub(super) table: usize,
    pub(super) chunks: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    pub(super) task: tokio::task::JoinHandle<()>,
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
async fn in_snapshot(
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

/// A failed read of `split`: a snapshot that can no longer be imported (its
/// replication connection ended) is retried, since the run after goes on without it.
fn read_error(split: &str, e: sqlx::Error) -> Error {
    if crate::error::sqlstate(&e).as_deref() == Some("22023") && e.to_string().contains("snapshot")
    {
        return Error::transient(format!(
            "reading {split}: the snapshot exported with the replication slot is gone (its connection ended)"
        ))
        .with_source(e);
    }
    pg_error(format!("reading {split}"), e)
}

impl CopyStream {
    /// Starts reading `sql`, a binary COPY, in chunks of at least `rows` tuples.
    pub(super) fn start(
        pool: PgPool,
        sql: String,
        rows: usize,
        (split, table): (String, usize),
        snapshot: Option<String>,
    ) -> CopyStream {
        let (tx, chunks) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            if let Err(e) = stream_copy(&pool, &sql, rows, snapshot.as_deref(), &tx).await {
                let _ = tx.send(Err(e.context(format!("reading {split}")))).await;
            }
        });
        CopyStream {
            table,
            chunks,
            task,
        }
    }
}

/// Reads the binary COPY `sql` to its end and sends it on as chunks of at least
/// `rows` whole tuples, each with the stream's header and a trailer. Synchronized and
/// parallel scans are turned off for it (in its own transaction): either would hand
/// rows out of block order.
pub(super) async fn stream_copy(
    pool: &PgPool,
    sql: &str,
    rows: usize,
    snapshot: Option<&str>,
    sender: &tokio::sync::mpsc::Sender<Result<Vec<u8>>>,
) -> Result<()> {
    use crate::binary::{header_len, next_tuple, Next, TRAILER};
    use futures::StreamExt;
    let failed = |e| read_error("physical-order COPY", e);
    let mut tx = pool.begin().await.map_err(failed)?;
    if let Some(snapshot) = snapshot {
        in_snapshot(&mut tx, snapshot).await.map_err(failed)?;
    }
    sqlx::query(
        "SELECT set_config('synchronize_seqscans', 'off', true), \
                set_config('max_parallel_workers_per_gather', '0', true)",
    )
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    let mut copy = tx.copy_out_raw(sql).await.map_err(failed)?;
    // `chunk` holds the header, then whole tuples up to `scanned`, then a part of one
    let mut chunk = Vec::new();
    let mut header = None;
    let mut scanned = 0;
    let mut count = 0;
    while let Some(data) = copy.next().await {
        chunk.extend_from_slice(&data.map_err(failed)?);
        let header_end = match header {
            Some(n) => n,
            None => match header_len(&chunk)? {
                Some(n) => {
                    header = Some(n);
                    scanned = n;
                    n
                }
                None => continue,
            },
        };
        while let Some(Next::Tuple(end)) = next_tuple(&chunk, scanned) {
            scanned = end;
            count += 1;
        }
        if count >= rows {
            let mut next = Vec::with_capacity(chunk.len() + chunk.len() / 8);
            next.extend_from_slice(&chunk[..header_end]);
            next.extend_from_slice(&chunk[scanned..]);
            chunk.truncate(scanned);
            chunk.extend_from_slice(&TRAILER);
            if sender
                .send(Ok(std::mem::replace(&mut chunk, next)))
                .await
                .is_err()
            {
                return Ok(()); // the source stopped reading
            }
            scanned = header_end;
            count = 0;
        }
    }
    drop(copy);
    tx.commit().await.map_err(failed)?;
    // the server's trailer ends the last chunk; an empty one ends the table
    if count > 0 && sender.send(Ok(chunk)).await.is_err() {
        return Ok(());
    }
    let _ = sender.send(Ok(Vec::new())).await;
    Ok(())
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
            let pool = self
                .pool
                .clone()
                .ok_or_else(|| Error::internal("source is not open"))?;
            // a first `cdc` run reads in the snapshot its slot exported
            let snapshot = self
                .cdc
                .as_ref()
                .and_then(|c| c.snapshot())
                .map(str::to_owned);
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
            let physical = table.physical;
            let buf = if physical {
                // one COPY streams the table's remaining rows
                if self.stream.as_ref().is_none_or(|s| s.table != self.current) {
                    if let Some(s) = self.stream.take() {
                        s.task.abort();
                    }
                    let after = table.offset.ctid.as_deref().map(Tid::parse).transpose()?;
                    self.stream = Some(CopyStream::start(
                        pool.clone(),
                        table.copy_physical(after),
                        limit,
                        (table.split.clone(), self.current),
                        snapshot.clone(),
                    ));
                }
                let next = match self.stream.as_mut() {
                    Some(s) => s.chunks.recv().await,
                    None => None,
                };
                match next {
                    Some(Ok(chunk)) => chunk,
                    // a retried read starts over after the last decoded row
                    Some(Err(e)) => {
                        self.stream = None;
                        return Err(e);
                    }
                    None => {
                        self.stream = None;
                        return Err(Error::transient(format!(
                            "the COPY of {} stopped before the end of the table",
                            table.split
                        )));
                    }
                }
            } else {
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
                read.map_err(|e| read_error(&table.split, e))?
            };
            // an empty read: the table has no more rows
            let starts = if buf.is_empty() {
                self.stream = None;
                Vec::new()
            } else {
                crate::binary::tuples(&buf)?
            };
            // a full chunk in key order: read the next one while this one decodes (the
            // server and the decoding threads then work at the same time)
            if !physical && self.config.mode != SourceMode::Incremental && starts.len() >= limit {
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
                    let mut offsets = Offsets::new();
                    offsets.set_typed(table.split.clone(), &table.offset)?;
                    return Ok(Some(Batch::new(
                        RecordBatch::new_empty(Arc::new(Schema::empty())),
                        offsets,
                    )));
                }
                continue;
            }
            // decode on every core: parts of one batch each, as many at a time as cores,
            // each its own batch and offset
            let parts: Vec<&[usize]> = starts.chunks(self.batch_size).collect();
            let ties = match table.cursor {
                Some(_) => super::cursor::ties(&buf, &parts, table.columns.len())?,
                None => vec![false; parts.len()],
            };
            let schema = &table.table_schema;
            let keys = table.key_columns();
            let pg_types: Vec<&str> = table.columns.iter().map(|c| c.pg.as_str()).collect();
            let pg_types = &pg_types[..];
            let waves = self.parts.max(1);
            // CPU-heavy: off the runtime's queue, so the sink's task runs meanwhile
            let decoded = connector_api::blocking(|| {
                let mut decoded: Vec<Result<crate::binary::Decoded>> =
                    Vec::with_capacity(parts.len());
                for wave in parts.chunks(waves) {
                    if let [part] = wave {
                        decoded.push(crate::binary::decode(&buf, part, schema, pg_types, keys));
                        continue;
                    }
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = wave
                            .iter()
                            .map(|part| {
                                let buf = &buf;
                                scope.spawn(move || {
                                    crate::binary::decode(buf, part, schema, pg_types, keys)
                                })
                            })
                            .collect();
                        decoded.extend(handles.into_iter().map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(Error::internal("binary COPY decoder panicked"))
                            })
                        }));
                    });
                }
                decoded
            });
            let now_ms = now_millis();
            for (part, tie) in decoded.into_iter().zip(ties) {
                let part = part?;
                if physical {
                    table.advance_ctid(&part.last_key)?;
                } else if !tie {
                    table.offset.after = Some(part.last_key);
                }
                let mut offsets = Offsets::new();
                offsets.set_typed(table.split.clone(), &table.offset)?;
                let mut batch = Batch::new(table.records(part.batch, now_ms)?, offsets);
                batch.rejects = part
                    .rejects
                    .into_iter()
                    .map(|(key, why)| {
                        let position = if physical {
                            format!("table {} ctid {}", table.split, key.join(", "))
                        } else {
                            format!("table {} key ({})", table.split, key.join(", "))
                        };
                        Reject::new(
                            table.split.clone(),
                            position,
                            key.join(", "),
                            Error::data(why),
                        )
                    })
                    .collect();
                self.ready.push_back(batch);
            }
            return Ok(self.ready.pop_front());
        }
    }
}
