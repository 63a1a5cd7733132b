//! Reading tables in physical order (`snapshot_order = "physical"`): each block range
//! of a table is one `COPY (SELECT ..., ctid ... WHERE ctid in the range)`, a TID
//! range scan, streamed by a task that cuts it into chunks of whole tuples.
//! `snapshot_readers` ranges, of one table or of several, stream at once, each on a
//! connection of its own and all in one snapshot: the slot's, exported when a `cdc`
//! run starts, or one exported for a `snapshot` run (`Exported`); their chunks are
//! decoded here as they come. Each range's offset is its last
//! delivered `ctid`, so the ranges resume on their own, and a table is done when its
//! last range is.

use std::task::Poll;

use connector_api::{Batch, Error, Result};
use sqlx::postgres::PgPool;

use crate::config::SourceMode;

use super::decode::{decode_parts, offset_batch, part_batch};
use super::snapshot::{in_snapshot, read_error, COPY_ROWS};
use super::{now_millis, PostgresSource};

/// One block range being read: a task streams its COPY and sends it on in chunks of
/// whole tuples (each a binary COPY stream of its own), one chunk ahead. An empty
/// chunk ends the range; a channel closed without one, or an error, ends the stream,
/// and the next read starts a new one after the range's last decoded row.
pub(super) struct CopyStream {
    /// The table's index.
    table: usize,
    /// The range's index in the table's offset.
    range: usize,
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl CopyStream {
    /// Starts reading `sql`, a binary COPY of `what`, in chunks of at least `rows`
    /// tuples.
    fn start(
        pool: PgPool,
        (sql, what): (String, String),
        rows: usize,
        (table, range): (usize, usize),
        snapshot: Option<String>,
    ) -> CopyStream {
        let (tx, chunks) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            if let Err(e) = stream_copy(&pool, &sql, rows, snapshot.as_deref(), &tx).await {
                let _ = tx.send(Err(e.context(format!("reading {what}")))).await;
            }
        });
        CopyStream {
            table,
            range,
            chunks,
            task,
        }
    }
}

/// A snapshot exported for a `snapshot` run with several readers, as `pg_dump -j`
/// does: held by a REPEATABLE READ transaction on a connection of its own, and
/// imported by every range's COPY, so that all ranges read the tables as of one
/// moment (a row an update moves from one range to another is read once, not twice
/// or never).
pub(super) struct Exported {
    conn: sqlx::PgConnection,
    name: String,
}

impl Exported {
    async fn export(url: &connector_api::Secret, session: &str) -> Result<Exported> {
        let mut conn = crate::conn::connect_one(url, session).await?;
        let failed = |e| crate::error::pg_error("export a snapshot for the block ranges", e);
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut conn)
            .await
            .map_err(failed)?;
        let name: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut conn)
            .await
            .map_err(failed)?;
        Ok(Exported { conn, name })
    }
}

impl PostgresSource {
    /// The next batch of a physical-order snapshot: rows of whichever range has a
    /// chunk ready, or an empty batch with the offset when a range ends (`done` with
    /// a table's last); none when every range of every table is done.
    pub(super) async fn read_physical(&mut self) -> Result<Option<Batch>> {
        self.start_streams().await?;
        if self.streams.is_empty() {
            self.exported = None;
            return Ok(None);
        }
        let (at, next) = self.next_chunk().await;
        let (t, r) = (self.streams[at].table, self.streams[at].range);
        let read = match next {
            Some(Ok(buf)) if !buf.is_empty() => self.take_chunk((t, r), &buf),
            Some(Ok(_)) => {
                self.streams.remove(at);
                let table = &mut self.tables[t];
                table.finish(r);
                return Ok(Some(offset_batch(table)?));
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::transient(format!(
                "the COPY of {} stopped before the end of the range",
                self.tables[t].range_name(r)
            ))),
        };
        if let Err(e) = read {
            // a retried read starts over after the range's last decoded row
            self.streams.remove(at).task.abort();
            self.check_exported().await;
            return Err(e);
        }
        Ok(self.ready.pop_front())
    }

    /// Decodes a chunk of block range `r` of table `t` into batches, ready in turn,
    /// each moving the range's offset past its rows.
    fn take_chunk(&mut self, (t, r): (usize, usize), buf: &[u8]) -> Result<()> {
        let table = &mut self.tables[t];
        let starts = crate::binary::tuples(buf)?;
        let parts: Vec<&[usize]> = starts.chunks(self.batch_size).collect();
        let decoded = decode_parts(table, buf, &parts, self.parts);
        let now_ms = now_millis();
        for part in decoded {
            let part = part?;
            table.advance(r, &part.last_key)?;
            self.ready.push_back(part_batch(table, part, now_ms)?);
        }
        Ok(())
    }

    /// Starts streams for the ranges neither done nor being read, in table order,
    /// until `readers` stream; a `snapshot` run with several readers exports the
    /// snapshot they read in first.
    async fn start_streams(&mut self) -> Result<()> {
        let mut pending = Vec::new();
        for (t, table) in self.tables.iter().enumerate() {
            for (r, range) in table.offset.ranges.iter().enumerate() {
                let reading = self.streams.iter().any(|s| (s.table, s.range) == (t, r));
                if !range.done && !reading {
                    pending.push((t, r));
                }
            }
        }
        pending.truncate(self.readers.saturating_sub(self.streams.len()));
        if pending.is_empty() {
            return Ok(());
        }
        if self.readers > 1 && self.config.mode == SourceMode::Snapshot && self.exported.is_none() {
            self.exported = Some(Exported::export(&self.config.url, &self.session).await?);
        }
        let pool = self.pool()?;
        let snapshot = match &self.exported {
            Some(exported) => Some(exported.name.clone()),
            None => self.exported_snapshot(),
        };
        // each stream holds up to two chunks: their size shrinks as readers are added
        let rows = (self.batch_size * self.parts).max(COPY_ROWS / self.readers);
        for (t, r) in pending {
            let table = &self.tables[t];
            let sql = (table.copy_range(r)?, table.range_name(r));
            self.streams.push(CopyStream::start(
                pool.clone(),
                sql,
                rows,
                (t, r),
                snapshot.clone(),
            ));
        }
        Ok(())
    }

    /// After a failed read: a snapshot this run exported whose connection is gone can
    /// no longer be imported, so the next read exports another.
    async fn check_exported(&mut self) {
        use sqlx::Connection;
        if let Some(exported) = self.exported.as_mut() {
            if exported.conn.ping().await.is_err() {
                tracing::warn!("the connection holding the snapshot of the block ranges ended: the ranges not yet read go on in a new snapshot");
                self.exported = None;
            }
        }
    }

    /// The next chunk of any stream, and the stream's index; the streams are asked in
    /// turn, each first in its turn.
    async fn next_chunk(&mut self) -> (usize, Option<Result<Vec<u8>>>) {
        let n = self.streams.len();
        let first = self.turn % n;
        self.turn = self.turn.wrapping_add(1);
        let streams = &mut self.streams;
        std::future::poll_fn(|cx| {
            for k in 0..n {
                let at = (first + k) % n;
                if let Poll::Ready(next) = streams[at].chunks.poll_recv(cx) {
                    return Poll::Ready((at, next));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Reads the binary COPY `sql` to its end and sends it on as chunks of at least
/// `rows` whole tuples, each with the stream's header and a trailer. Synchronized and
/// parallel scans are turned off for it (in its own transaction): either would hand
/// rows out of block order.
async fn stream_copy(
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
