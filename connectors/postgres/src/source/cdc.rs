//! `cdc`: the checks at start (the table is the one read before, its publication
//! covers it, its out-of-line values reach the changes, the slot is there), then the
//! changes after the snapshot as one stream.
//!
//! A transaction's changes are returned as they arrive, in batches of at most
//! `batch_size`, so memory stays bounded whatever its size. The offset says how far:
//! `lsn`, the end of the last transaction returned whole, and `txn`, how many changes
//! of the next one were returned. The server is told it may release WAL up to `lsn`
//! once the runtime committed it (after every sink flushed): a crash re-reads from
//! there and skips what the offset says was returned, so nothing is lost or repeated.
//! While idle and flushed, the keepalive's WAL position is confirmed too, but never
//! past the position of the last check that the publication still covers the table.

use std::time::{Duration, Instant};

use connector_api::{Batch, Error, Offsets, Positions, Result};
use futures::FutureExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;

use super::change::{change_position, Change, Layout};
use super::describe::describe;
use super::rows::Rows;
use super::table::Table;
use super::PostgresSource;
use super::TableOffset;
use crate::cdc::catalog::{self, PublicationRef, TableName};
use crate::cdc::pgoutput::{self, Message};
use crate::cdc::{lsn_text, parse_lsn, replication};

/// How often, at most, the catalog is asked whether the publication still covers the
/// table (between transactions).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Events buffered between the replication connection and the source.
const BUFFER: usize = 1024;
/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch), in milliseconds.
const EPOCH_MS: i64 = 946_684_800_000;

/// How far a transaction was returned when a batch ended inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TxnOffset {
    /// The transaction's commit LSN (Begin's final LSN).
    pub final_lsn: u64,
    /// Changes of the table in it returned so far.
    pub changes: u64,
}

/// The position of the first change `offset` does not cover, once the snapshot is
/// done: every transaction committing before its `lsn` is covered, and the first
/// `txn.changes` of the one it ended inside. An offset that ends the snapshot, before
/// any change was read, covers no change of the stream.
pub(super) fn covered_below(offset: &TableOffset) -> Option<u128> {
    match (offset.done, offset.lsn) {
        (true, Some(lsn)) => Some(covered(lsn, offset.txn)),
        (true, None) => Some(0),
        (false, _) => None,
    }
}

/// The position of the first change not covered by `lsn` (the end of the last whole
/// transaction returned) and `txn` (how far the next one was).
fn covered(lsn: u64, txn: Option<TxnOffset>) -> u128 {
    match txn {
        Some(t) => change_position(t.final_lsn, t.changes),
        None => change_position(lsn, 0),
    }
}

/// The transaction being read.
struct Txn {
    final_lsn: u64,
    xid: u32,
    ts_ms: i64,
    /// Changes of the table seen in it.
    seen: u64,
    /// Changes returned before a restart: skipped.
    skip: u64,
    /// Returned whole before a restart: skipped.
    skip_all: bool,
}

/// The state of a `cdc` source.
pub(super) struct Cdc {
    slot: String,
    publication: String,
    table: TableName,
    /// The table's OID.
    relid: u32,
    client: Option<ReplicationClient>,
    /// The client made the slot and waits, not streaming yet, while the table is read in
    /// the snapshot it exported.
    gated: bool,
    /// That snapshot's name, until streaming starts.
    snapshot: Option<String>,
    /// The slot's confirmed position when opened: where the stream starts.
    start: u64,
    /// The table's columns as the stream last described them.
    layout: Option<Layout>,
    txn: Option<Txn>,
    /// How far a transaction was returned before a restart (from the offset), until
    /// that transaction comes again.
    resume: Option<TxnOffset>,
    /// A message to handle first on the next call (a relation change that waits
    /// until the changes before it are returned).
    deferred: Option<(Message, u64)>,
    /// Changes decoded and not yet returned (made for the table's columns when the
    /// first one comes).
    pending: Option<Rows>,
    /// End LSN of the last transaction decoded whole.
    done: u64,
    /// How far the last batch returned covers ([`covered`]): also a batch that ended
    /// inside a transaction, whose changes a keepalive must not release before they
    /// are flushed.
    emitted: u128,
    /// How far the last offsets the runtime committed cover.
    flushed: u128,
    /// The last position confirmed to the server.
    confirmed: u64,
    /// The last check that the publication covers the table: when, and the WAL
    /// position then (every change before it was decoded with the table covered).
    checked: Option<(Instant, u64)>,
    status_interval: Duration,
    name: String,
    /// The position of the stream read so far, and the commit time (ms) of the
    /// transaction there.
    read: (u64, i64),
    /// The server's WAL write position at the last check.
    server: u64,
}

impl PostgresSource {
    /// Checks `wal_level`, the table and the publication, and finds or creates the
    /// slot: a slot that a stored position expects but is gone is a loud error, never
    /// a silent new slot (changes in between would be lost).
    pub(super) async fn open_cdc(&mut self, pool: &PgPool, pipeline: &str) -> Result<Cdc> {
        catalog::check_wal_level(pool).await?;
        let table = self
            .tables
            .first_mut()
            .ok_or_else(|| Error::config("no table").with_field("tables"))?;
        let name = TableName {
            schema: self.config.schema.clone(),
            name: self.config.tables[0].clone(),
        };
        let slot = self
            .config
            .slot
            .clone()
            .unwrap_or_else(|| crate::cdc::slot_name(pipeline));
        let ours = self.config.publication.is_none();
        let publication = self
            .config
            .publication
            .clone()
            .unwrap_or_else(|| crate::cdc::slot_name(pipeline));
        let offset = &mut table.offset;
        let started = offset.started();
        let now = catalog::table_state(pool, &publication, &name).await?;
        let relid = now
            .oid
            .ok_or_else(|| Error::not_found(format!("table {name} does not exist")))?;
        if let Some(was) = offset.relid.filter(|&was| was != relid) {
            return Err(catalog::recreated(&name, &publication, was, Some(relid)));
        }
        offset.relid = Some(relid);
        catalog::check_identity(pool, &name).await?;
        let publication_ref = PublicationRef {
            name: &publication,
            ours,
        };
        catalog::cover(pool, &publication_ref, &name, !started).await?;
        let app = format!("sluice {pipeline}");
        let status_interval = self.config.heartbeat_interval.min(Duration::from_secs(10));
        let mut exported = None;
        let start = match (catalog::slot(pool, &slot).await?, started) {
            (Some(s), true) if !s.lost => s.confirmed,
            (Some(_), true) => {
                return Err(catalog::slot_gone(&slot, true, offset.lsn, offset.done))
            }
            (None, true) => return Err(catalog::slot_gone(&slot, false, offset.lsn, offset.done)),
            // a first run: the slot exports a snapshot of its consistent point; the table
            // is read in it, and the stream starts at that point: no change is missed or
            // read twice
            (_, false) => {
                catalog::drop_stale_slot(pool, &slot).await?;
                let stream = replication::Stream {
                    url: &self.config.url,
                    slot: &slot,
                    publication: &publication,
                    start: 0,
                    status_interval,
                    buffer: BUFFER,
                    name: &app,
                };
                let made = replication::create_exported(&stream).await?;
                let lsn = made.lsn;
                exported = Some(made);
                lsn
            }
        };
        let (client, snapshot) = match exported {
            Some(e) => (Some(e.client), Some(e.snapshot)),
            None => (None, None),
        };
        let done = offset.lsn.unwrap_or(start);
        Ok(Cdc {
            slot,
            publication,
            table: name,
            relid,
            gated: client.is_some(),
            client,
            snapshot,
            start,
            layout: None,
            txn: None,
            deferred: None,
            resume: offset.txn,
            pending: None,
            done,
            emitted: covered(done, None),
            flushed: covered(done, None),
            confirmed: start,
            checked: None,
            status_interval,
            name: app,
            read: (start, 0),
            server: start,
        })
    }

    /// The runtime committed `lsn` (and `txn`, how far the transaction after it was):
    /// the server may release the WAL before `lsn`.
    pub(super) fn commit_cdc(&mut self, lsn: u64, txn: Option<TxnOffset>) {
        let Some(cdc) = self.cdc.as_mut() else {
            return;
        };
        cdc.flushed = cdc.flushed.max(covered(lsn, txn));
        cdc.confirm(lsn);
    }

    /// Stops streaming.
    pub(super) async fn close_cdc(&mut self) {
        if let Some(mut client) = self.cdc.as_mut().and_then(|c| c.client.take()) {
            if tokio::time::timeout(Duration::from_secs(2), client.shutdown())
                .await
                .is_err()
            {
                client.abort();
            }
        }
    }

    /// The next batch of changes, or an idle batch after `idle_timeout`.
    pub(super) async fn stream(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        let pool = self.pool()?;
        let (Some(cdc), Some(table)) = (self.cdc.as_mut(), self.tables.first_mut()) else {
            return Ok(None);
        };
        if let (true, Some(client)) = (cdc.gated, cdc.client.as_mut()) {
            replication::start_gated(client, &cdc.slot).await?;
            cdc.gated = false;
            cdc.snapshot = None;
            tracing::info!(slot = %cdc.slot, lsn = %lsn_text(cdc.start), "snapshot read; streaming changes from its consistent point");
        }
        if cdc.client.is_none() {
            let stream = replication::Stream {
                url: &self.config.url,
                slot: &cdc.slot,
                publication: &cdc.publication,
                start: cdc.start,
                status_interval: cdc.status_interval,
                buffer: BUFFER,
                name: &cdc.name,
            };
            cdc.client = Some(replication::start(&stream).await?);
            tracing::info!(slot = %cdc.slot, lsn = %lsn_text(cdc.start), "streaming changes");
        }
        if let Some((message, lsn)) = cdc.deferred.take() {
            cdc.apply(&pool, table, message, lsn).await?;
        }
        loop {
            if cdc.txn.is_none()
                && cdc
                    .checked
                    .is_none_or(|(at, _)| at.elapsed() >= CHECK_EVERY)
            {
                cdc.check(&pool).await?;
            }
            let pending = cdc.pending();
            if pending >= self.batch_size || cdc.deferred.is_some() {
                return cdc.emit(table).map(Some);
            }
            let client = cdc
                .client
                .as_mut()
                .ok_or_else(|| Error::internal("not streaming"))?;
            let event = if pending > 0 {
                // return what is decoded as soon as nothing more is at hand
                match client.recv().now_or_never() {
                    Some(event) => event,
                    None => return cdc.emit(table).map(Some),
                }
            } else {
                let left = self.idle_timeout.saturating_sub(started.elapsed());
                match tokio::time::timeout(left.min(CHECK_EVERY), client.recv()).await {
                    Ok(event) => event,
                    Err(_) if started.elapsed() >= self.idle_timeout => {
                        return Ok(Some(Batch::idle()))
                    }
                    Err(_) => continue,
                }
            };
            let what = format!("streaming from replication slot \"{}\"", cdc.slot);
            let event = event.map_err(|e| replication::wire_error(&what, e))?;
            let Some(event) = event else {
                return Err(Error::connect(format!(
                    "{what}: the server ended the stream"
                )));
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    let ts_ms = commit_time_micros / 1000 + EPOCH_MS;
                    cdc.read.1 = ts_ms;
                    cdc.begin(final_lsn.as_u64(), xid, ts_ms);
                }
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => {
                    let message = pgoutput::parse(&data)?;
                    cdc.read.0 = cdc.read.0.max(wal_start.as_u64());
                    cdc.apply(&pool, table, message, wal_start.as_u64()).await?;
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    cdc.read.0 = cdc.read.0.max(end_lsn.as_u64());
                    cdc.end(end_lsn.as_u64());
                }
                ReplicationEvent::KeepAlive {
                    wal_end,
                    server_time_micros,
                    ..
                } => cdc.idle(wal_end.as_u64(), server_time_micros / 1000 + EPOCH_MS),
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => {
                    return Err(Error::internal("the replication stream stopped"))
                }
            }
        }
    }
}

impl Cdc {
    /// A transaction begins: one that ends before the last returned whole is skipped,
    /// and the one a batch before a restart ended inside skips what was returned.
    fn begin(&mut self, final_lsn: u64, xid: u32, ts_ms: i64) {
        let mut skip = 0;
        match self.resume {
            Some(r) if r.final_lsn == final_lsn => {
                skip = r.changes;
                self.resume = None;
            }
            Some(r) if r.final_lsn < final_lsn => self.resume = None,
            _ => {}
        }
        self.txn = Some(Txn {
            final_lsn,
            xid,
            ts_ms,
            seen: 0,
            skip,
            skip_all: final_lsn < self.done,
        });
    }

    /// The transaction ends at `end_lsn`.
    fn end(&mut self, end_lsn: u64) {
        if let Some(txn) = self.txn.take() {
            if !txn.skip_all {
                self.done = self.done.max(end_lsn);
            }
        }
    }

    /// The snapshot the slot exported, while the table is read in it (a first run).
    pub(super) fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    /// How far the stream is behind the server: WAL bytes between the position read and
    /// the server's write position at the last check, and, while behind, the age of
    /// the transaction at the read position.
    pub(super) fn lag(&self, split: &str) -> connector_api::Lag {
        let bytes = self.server.saturating_sub(self.read.0);
        let now_ms = super::now_millis();
        let seconds = match bytes {
            0 => 0.0,
            _ if self.read.1 == 0 => 0.0,
            _ => (now_ms - self.read.1).max(0) as f64 / 1000.0,
        };
        connector_api::Lag {
            split: split.to_string(),
            bytes: Some(bytes),
            seconds: Some(seconds),
            ..Default::default()
        }
    }

    /// Tells the server it may release WAL before `lsn`.
    fn confirm(&mut self, lsn: u64) {
        if lsn > self.confirmed {
            if let Some(client) = &self.client {
                client.update_applied_lsn(Lsn::from_u64(lsn));
                self.confirmed = lsn;
            }
        }
    }

    /// A keepalive at `wal_end`, sent at `at_ms`: everything before it was read.
    fn idle(&mut self, wal_end: u64, at_ms: i64) {
        if wal_end >= self.read.0 {
            self.read = (wal_end, at_ms);
        }
        if let Some(lsn) = self.releasable(wal_end) {
            self.confirm(lsn);
        }
    }

    /// How far a keepalive at `wal_end` may release WAL: with nothing read and
    /// unflushed, up to the WAL position of the last check that found the table
    /// covered; otherwise not at all.
    fn releasable(&self, wal_end: u64) -> Option<u64> {
        if self.txn.is_some() || self.pending() > 0 || self.flushed < self.emitted {
            return None;
        }
        self.checked.map(|(_, safe)| wal_end.min(safe))
    }

    /// Fails when the publication no longer covers the table or the table was dropped
    /// (or dropped and created again): its changes since are not decoded.
    async fn check(&mut self, pool: &PgPool) -> Result<()> {
        // the WAL position first, in a statement of its own: the catalog read after it
        // then vouches for everything before it (one statement could read the catalog
        // before a drop and the position after it)
        let (wal,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await
            .map_err(|e| crate::error::pg_error("read the current WAL position", e))?;
        let state = catalog::table_state(pool, &self.publication, &self.table).await?;
        if state.oid != Some(self.relid) {
            return Err(catalog::recreated(
                &self.table,
                &self.publication,
                self.relid,
                state.oid,
            ));
        }
        if !state.published {
            return Err(catalog::not_covered(&self.publication, &self.table));
        }
        let wal = parse_lsn(&wal).ok_or_else(|| Error::internal(format!("WAL position {wal}")))?;
        self.checked = Some((Instant::now(), wal));
        self.server = self.server.max(wal);
        Ok(())
    }

    /// Decodes one message of the stream at `lsn` into the pending changes.
    async fn apply(
        &mut self,
        pool: &PgPool,
        table: &mut Table,
        message: Message,
        lsn: u64,
    ) -> Result<()> {
        let rel = match &message {
            Message::Relation(r) => {
                if r.oid != self.relid {
                    if r.namespace == self.table.schema && r.name == self.table.name {
                        return Err(catalog::recreated(
                            &self.table,
                            &self.publication,
                            self.relid,
                            Some(r.oid),
                        ));
                    }
                    return Ok(());
                }
                let known = r
                    .columns
                    .iter()
                    .all(|c| table.table_schema.field_with_name(&c.name).is_ok());
                let changed = self.layout.as_ref().is_some_and(|l| l.columns != r.columns);
                if changed || !known {
                    if self.pending() > 0 {
                        // the changes before it are typed by the old columns
                        self.deferred = Some((message, lsn));
                        return Ok(());
                    }
                    redescribe(pool, &self.table, table).await?;
                    self.pending = None;
                }
                self.layout = Some(Layout::new(r.columns.clone(), table));
                return Ok(());
            }
            Message::Insert { rel, .. }
            | Message::Update { rel, .. }
            | Message::Delete { rel, .. } => *rel == self.relid,
            Message::Truncate { rels } => rels.contains(&self.relid),
            Message::Other => false,
        };
        let Some(txn) = self.txn.as_mut() else {
            return Err(Error::internal("a change outside a transaction"));
        };
        if !rel || txn.skip_all {
            return Ok(());
        }
        txn.seen += 1;
        if txn.seen <= txn.skip {
            return Ok(());
        }
        let (xid, ts_ms) = (txn.xid, txn.ts_ms);
        let position = change_position(txn.final_lsn, txn.seen - 1);
        let layout = self.layout.as_ref().ok_or_else(|| {
            Error::internal(format!("a change of {} before its relation", self.table))
        })?;
        let at = Change {
            table: &*table,
            layout,
            lsn,
            xid,
            ts_ms,
            position,
        };
        let rows = match &mut self.pending {
            Some(rows) => rows,
            None => self.pending.insert(Rows::new(table)?),
        };
        at.append(&message, rows)
    }

    /// Changes decoded and not yet returned.
    fn pending(&self) -> usize {
        self.pending.as_ref().map_or(0, Rows::len)
    }

    /// The pending changes as one batch, with the offset after them.
    fn emit(&mut self, table: &mut Table) -> Result<Batch> {
        table.offset.lsn = Some(self.done);
        table.offset.txn = self
            .txn
            .as_ref()
            .filter(|t| !t.skip_all && t.seen > 0)
            .map(|t| TxnOffset {
                final_lsn: t.final_lsn,
                // while still skipping what a run before returned, that much is returned
                changes: t.seen.max(t.skip),
            });
        let mut positions = Positions::new();
        let (records, rejects) = match &mut self.pending {
            Some(rows) => {
                let split = positions.split(&table.split);
                for p in rows.take_positions() {
                    positions.push_at(split, p);
                }
                rows.finish(&table.split)?
            }
            None => Rows::new(table)?.finish(&table.split)?,
        };
        self.emitted = covered(self.done, table.offset.txn);
        let mut offsets = Offsets::new();
        offsets.set_typed(table.split.clone(), &table.offset)?;
        let mut batch = Batch::new(records, offsets);
        batch.rejects = rejects;
        batch.positions = Some(positions);
        Ok(batch)
    }
}

/// Reads the table's columns again after the stream described a change of them.
async fn redescribe(pool: &PgPool, name: &TableName, table: &mut Table) -> Result<()> {
    let (columns, schema, key) = describe(pool, &name.schema, &name.name).await?;
    table.columns = columns;
    table.key = key;
    table.table_schema = schema;
    tracing::info!(table = %name, "the table's columns changed in the stream; picked up");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdc(done: u64, resume: Option<TxnOffset>) -> Cdc {
        Cdc {
            slot: "s".into(),
            publication: "p".into(),
            table: TableName {
                schema: "public".into(),
                name: "t".into(),
            },
            relid: 1,
            client: None,
            gated: false,
            snapshot: None,
            start: 0,
            layout: None,
            txn: None,
            resume,
            deferred: None,
            pending: None,
            done,
            emitted: covered(done, None),
            flushed: covered(done, None),
            confirmed: 0,
            checked: None,
            status_interval: Duration::from_secs(1),
            name: "t".into(),
            read: (0, 0),
            server: 0,
        }
    }

    #[test]
    fn a_change_is_covered_by_an_offset_after_it_and_not_by_one_before() {
        let at = |lsn: u64, txn: Option<(u64, u64)>| TableOffset {
            done: true,
            lsn: Some(lsn),
            txn: txn.map(|(final_lsn, changes)| TxnOffset { final_lsn, changes }),
            ..Default::default()
        };
        // the transaction committing at 0x200, changes 0..3; the second changed the key
        // (two records: the second takes the odd position)
        let change = |i| change_position(0x200, i);
        let whole_before = covered_below(&at(0x180, None)).unwrap();
        let two_returned = covered_below(&at(0x180, Some((0x200, 2)))).unwrap();
        let whole = covered_below(&at(0x230, None)).unwrap();
        assert!(change(0) >= whole_before);
        assert!(change(1) < two_returned && change(1) + 1 < two_returned);
        assert!(change(2) >= two_returned);
        assert!(change(2) < whole);
        // another transaction's end past it covers it, and nothing of a later one
        let later = covered_below(&at(0x900, None)).unwrap();
        assert!(change(2) < later && change_position(0x900, 0) >= later);
        // the snapshot still being read: no position
        let reading = TableOffset {
            lsn: Some(0x100),
            ..Default::default()
        };
        assert_eq!(covered_below(&reading), None);
        // the snapshot read, no change yet: every change of the stream is after it
        let read = TableOffset {
            done: true,
            ..Default::default()
        };
        assert_eq!(covered_below(&read), Some(0));
        assert!(covered_below(&read) < Some(change_position(1, 0)));
    }

    #[test]
    fn a_restart_skips_whole_transactions_returned_and_the_returned_part_of_the_next() {
        // returned: everything up to 100, and 50 changes of the transaction at 150
        let mut c = cdc(
            100,
            Some(TxnOffset {
                final_lsn: 150,
                changes: 50,
            }),
        );
        // the server replays a transaction returned whole: skipped, the resume point kept
        c.begin(90, 1, 0);
        assert!(c.txn.as_ref().unwrap().skip_all);
        c.end(99);
        assert_eq!(c.done, 100);
        c.begin(150, 2, 0);
        let txn = c.txn.as_ref().unwrap();
        assert_eq!((txn.skip, txn.skip_all), (50, false));
        c.end(160);
        assert_eq!(c.done, 160);
        // the next one is read whole
        c.begin(170, 3, 0);
        assert_eq!(c.txn.as_ref().unwrap().skip, 0);
    }

    #[test]
    fn a_keepalive_releases_wal_only_when_flushed_and_never_past_the_last_check() {
        let mut c = cdc(100, None);
        assert_eq!(c.releasable(500), None, "no check yet");
        c.checked = Some((Instant::now(), 400));
        assert_eq!(c.releasable(500), Some(400), "not past the check");
        assert_eq!(c.releasable(300), Some(300));
        c.emitted = covered(120, None);
        assert_eq!(c.releasable(500), None, "a batch is not flushed yet");
        c.flushed = covered(120, None);
        // a batch that ended inside the transaction at 130 is not flushed by what
        // covers the start of it, also once that transaction's commit was read
        c.emitted = covered(
            120,
            Some(TxnOffset {
                final_lsn: 130,
                changes: 5,
            }),
        );
        c.flushed = c.flushed.max(covered(
            120,
            Some(TxnOffset {
                final_lsn: 130,
                changes: 3,
            }),
        ));
        assert_eq!(
            c.releasable(500),
            None,
            "the end of a transaction is not flushed yet"
        );
        c.flushed = c.flushed.max(covered(140, None));
        c.begin(450, 1, 0);
        assert_eq!(c.releasable(500), None, "inside a transaction");
        c.end(460);
        c.idle(500, 7);
        assert_eq!(c.read, (500, 7));
    }
}
