//! `mode = "cdc"`: a snapshot of the table (its position: [`super::position`]), then
//! every insert, update and delete from the row-based binlog, from the position the snapshot was taken at (no gap, no
//! overlap). Records carry `_op` (`r` snapshot read, `c`, `u`, `d`).
//!
//! The position is the binlog file and the offset of the next event after the last
//! delivered transaction. A batch cut inside a large transaction stands at that
//! transaction's first event and counts the rows of it already delivered, so a
//! restart reads the transaction again and skips them. A position whose file the
//! server has purged is an error with the way out (`snapshot_on_purge`), never a
//! silent jump ahead. The position also names the server it was read on and carries
//! MariaDB's GTID state, so another server finds it by GTID ([`super::gtid`]).
//!
//! A DDL on the table shows as a table map of another shape ([`shape`]): the rows
//! pending go out, the columns are taken from the table map where it names them
//! (`binlog_row_metadata = FULL`) or read again from the table, and the records that
//! follow have the new schema, which the sinks take by their drift policy.

use std::time::{Duration, Instant};

use arrow_array::{RecordBatch, StringArray};
use arrow_schema::Schema;
use connector_api::{Batch, Error, Offsets, Positions, Result, Secret};
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};

use super::binlog::{self, TableColumn};
use super::debezium;
use super::gtid::{self, GtidState, Resume};
use super::position::{purged, with_op, BinlogOffset, SPLIT};
use crate::config::ZeroDates;
use crate::conn::connect;
use crate::decode::Decoder;
use crate::error::my_error;
use rows::{described, key_positions, Images};
use shape::Shape;

mod events;
mod rows;
mod shape;

/// How long a finished transaction waits for more before it is delivered.
const LINGER: Duration = Duration::from_millis(20);
/// MariaDB's GTID event.
const MARIADB_GTID_EVENT: u8 = 162;

/// How the binlog is read: from the server at `url` (MariaDB or not) as replica
/// `server_id`.
pub struct Replica {
    /// Connection URL.
    pub url: Secret,
    /// The replica's server id.
    pub server_id: u32,
    /// The server is MariaDB.
    pub mariadb: bool,
}

/// Changes of one table from the binlog.
pub struct Changes {
    url: Secret,
    server_id: u32,
    mariadb: bool,
    db: String,
    table: String,
    columns: Vec<TableColumn>,
    zero_dates: ZeroDates,
    stream: Option<BinlogStream>,
    /// A connection for the table's columns when a DDL changes them (made when
    /// first needed).
    meta: Option<Conn>,
    /// The table map id and row format `columns` were last found to fit.
    shape: Option<(u64, Shape)>,
    /// The collation ids of UTF-8 character sets (read when the stream starts).
    utf8: Vec<u16>,
    decoder: Decoder,
    ops: Vec<&'static str>,
    /// The file of the event being read, and the offset of the next one.
    file: String,
    next: u64,
    gtid: Option<String>,
    /// MariaDB: the GTID state after `committed` ([`super::gtid`]).
    state: GtidState,
    /// The `@@server_id` of the server read from (once connected).
    read_on: Option<u32>,
    /// This dump was started by GTID: the name in its first, artificial rotate (the
    /// file it starts in) becomes `file` once the format event says whether a
    /// checksum ends it.
    by_gtid: Option<Vec<u8>>,
    /// Inside a transaction: where it starts and how many of its rows are delivered
    /// or pending.
    txn: Option<(BinlogOffset, u64)>,
    /// The position after the last transaction whose rows are all pending or
    /// delivered.
    committed: BinlogOffset,
    /// Rows of the captured table still to skip (a restart inside a transaction).
    to_skip: u64,
    /// The GTID of the transaction `to_skip` counts in, after a resume by GTID
    /// (other domains' transactions may come first); None: the first one.
    skip_in: Option<String>,
    /// A DDL named the table: its next table map is checked.
    recheck: bool,
    /// The position last handed out.
    delivered: BinlogOffset,
    /// Where the primary-key columns are among `columns`.
    key: Vec<usize>,
    /// The stream's format event was read (the dump's first, artificial rotate comes
    /// before it).
    formatted: bool,
    /// When the oldest pending row was read.
    pending_since: Option<Instant>,
    /// `envelope = "debezium"`: the before images and where each change came from.
    debezium: Option<Images>,
    /// The event being read: its time (s) and server, the row within it, and the
    /// thread of its transaction when a `BEGIN` named it.
    event: (u32, u32, i32, Option<i64>),
    /// The records carry their places in the binlog ([`super::position::place`]):
    /// while the binlog is read by position on the server the run's offset was read
    /// on, along one numbering of its files. Off for the rest of the run otherwise.
    placing: bool,
    /// The places of the pending records, while `placing`.
    places: Vec<u128>,
}

impl Changes {
    /// A reader of `db.table` from `from`.
    pub fn new(
        Replica {
            url,
            server_id,
            mariadb,
        }: Replica,
        (db, table): (String, String),
        columns: Vec<TableColumn>,
        zero_dates: ZeroDates,
        from: BinlogOffset,
        debezium: Option<debezium::Place>,
    ) -> Changes {
        // Debezium's images are nullable: a create has no before, a delete no after
        let nullable = debezium.is_some();
        let decoder = Decoder::new(&described(&columns, nullable), zero_dates);
        let key = key_positions(&columns);
        let debezium = debezium.map(|place| Images {
            before: Decoder::new(&described(&columns, true), zero_dates),
            has_before: Vec::new(),
            has_after: Vec::new(),
            origins: Vec::new(),
            place,
        });
        Changes {
            url,
            server_id,
            mariadb,
            db,
            table,
            columns,
            zero_dates,
            stream: None,
            meta: None,
            shape: None,
            utf8: Vec::new(),
            decoder,
            ops: Vec::new(),
            file: from.file.clone(),
            next: from.pos,
            gtid: from.gtid.clone(),
            state: GtidState::parse(from.gtids.as_deref().unwrap_or_default()),
            read_on: from.read_on,
            by_gtid: None,
            txn: None,
            to_skip: from.skip,
            skip_in: None,
            recheck: false,
            committed: BinlogOffset {
                skip: 0,
                ..from.clone()
            },
            delivered: from,
            key,
            formatted: false,
            pending_since: None,
            debezium,
            event: (0, 0, 0, None),
            placing: true,
            places: Vec::new(),
        }
    }

    /// The records carry no places in the binlog this run (the table is read again
    /// from a new snapshot over an older position: places from before it do not
    /// compare).
    pub fn without_places(&mut self) {
        self.placing = false;
    }

    /// Connects and starts the dump at the position: at its file and offset on the
    /// server it was read on (after checking the file is still there), by its GTID
    /// state on another.
    pub async fn start(&mut self) -> Result<()> {
        let mut conn = connect(&self.url).await?;
        let here = gtid::server_id(&mut conn).await?;
        let resume = gtid::resume(&self.delivered, here, self.mariadb)?;
        // heartbeats every 5 s keep a quiet stream alive and tell a dead one
        let mut setup = vec!["SET @master_heartbeat_period = 5000000000".to_string()];
        if self.mariadb {
            // real GTID events instead of BEGIN queries
            setup.push("SET @mariadb_slave_capability = 4".into());
        }
        // places compare only in the binlog of the server the offset was read on
        if resume != Resume::Position || self.delivered.read_on != Some(here) {
            self.placing = false;
        }
        let file = self.file.clone().into_bytes();
        let mut request = BinlogStreamRequest::new(self.server_id);
        match &resume {
            Resume::Position => {
                let files = binlog::binlog_files(&mut conn).await?;
                if !files.contains(&self.file) {
                    return Err(purged(&self.file, self.next, &files));
                }
                if self.mariadb && self.state.is_empty() {
                    // a position stored without its GTID state
                    self.state = gtid::state_at(&mut conn, &self.file, self.next).await?;
                    if self.committed.gtids.is_none() && !self.state.is_empty() {
                        self.committed.gtids = Some(self.state.to_string());
                    }
                }
                request = request.with_filename(&file).with_pos(self.next);
                self.by_gtid = None;
                // a skip counts in the first transaction from here, unless the
                // position names one not yet in its GTID state (a cut one whose rows
                // other domains' transactions came before, after a resume by GTID)
                self.skip_in = match &self.delivered.gtid {
                    Some(g) if self.mariadb && self.to_skip > 0 && !self.state.holds(g) => {
                        Some(g.clone())
                    }
                    _ => None,
                };
            }
            Resume::Gtid(state) => {
                tracing::info!(from = ?self.delivered.read_on, server = here, gtids = %state, "the position was read on another server: resuming by GTID");
                self.state = GtidState::parse(state);
                // strict: a state this server's binlog does not hold is an error
                setup.push(format!("SET @slave_connect_state = '{}'", self.state));
                setup.push("SET @slave_gtid_strict_mode = 1".into());
                self.by_gtid = Some(Vec::new());
                self.skip_in = self.delivered.gtid.clone().filter(|_| self.to_skip > 0);
            }
        }
        for sql in &setup {
            conn.query_drop(sql).await.map_err(|e| my_error(sql, e))?;
        }
        self.utf8 = binlog::utf8_collations(&mut conn).await?;
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| binlog::grants(my_error("start reading the binlog", e)))?;
        self.stream = Some(stream);
        self.formatted = false;
        self.read_on = Some(here);
        Ok(())
    }

    /// The next batch of changes: rows of whole transactions, a part of one larger
    /// than `limit`, or an idle batch after `idle` without changes.
    pub async fn next_batch(&mut self, limit: usize, idle: Duration) -> Result<Batch> {
        if self.stream.is_none() {
            // after a lost connection: again from what was last handed out
            self.start().await?;
        }
        let started = Instant::now();
        loop {
            // finished transactions linger a little for more; a batch goes out at the
            // latest LINGER after its first row, however busy the server is
            let waited = match (self.pending_since, &self.txn) {
                (Some(since), None) => LINGER.saturating_sub(since.elapsed()),
                _ => idle.saturating_sub(started.elapsed()),
            }
            .max(Duration::from_millis(1));
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| Error::internal("binlog stream is not open"))?;
            let event = match tokio::time::timeout(waited, stream.next()).await {
                Err(_) => None,
                Ok(None) => {
                    self.lose_stream();
                    return Err(Error::connect("the server ended the binlog stream"));
                }
                Ok(Some(Err(e))) => {
                    let err = binlog::grants(my_error(
                        format!("read the binlog at {} {}", self.file, self.next),
                        e,
                    ));
                    self.lose_stream();
                    return Err(err);
                }
                Ok(Some(Ok(event))) => Some(event),
            };
            if let Some(event) = event {
                match self.apply(event).await {
                    Ok(Some(batch)) => return Ok(batch),
                    Ok(None) => {}
                    Err(e) => {
                        // the event is consumed: a retry must read it again
                        self.lose_stream();
                        return Err(e);
                    }
                }
            }
            let lingered = self.pending_since.is_some_and(|t| t.elapsed() >= LINGER);
            if self.ops.len() >= limit || (lingered && self.txn.is_none()) {
                return self.emit();
            }
            if self.ops.is_empty() && started.elapsed() >= idle {
                return self.idle();
            }
        }
    }

    /// The rows pending as a batch, at the position after them.
    fn emit(&mut self) -> Result<Batch> {
        self.pending_since = None;
        let data = self.decoder.finish()?;
        let ops = std::mem::take(&mut self.ops);
        let records = match &mut self.debezium {
            None => with_op(data, std::sync::Arc::new(StringArray::from(ops)))?,
            Some(d) => {
                let before = d.before.finish()?;
                let records = debezium::records(
                    &data.schema(),
                    (before.columns().to_vec(), &d.has_before),
                    (data.columns().to_vec(), &d.has_after),
                    ops,
                    &d.origins,
                    &d.place,
                    debezium::now_ms(),
                )?;
                d.has_before.clear();
                d.has_after.clear();
                d.origins.clear();
                records
            }
        };
        let position = match &mut self.txn {
            // cut inside a transaction: resume at its start, past what is delivered
            Some((start, n)) => BinlogOffset {
                skip: *n,
                ..start.clone()
            },
            // other domains' transactions read before the one still to be skipped
            // in (after a resume by GTID): the skip goes on with the position
            // (not one cut of the binlog: placed against nothing)
            None if self.to_skip > 0 && self.skip_in.is_some() => BinlogOffset {
                skip: self.to_skip,
                gtid: self.skip_in.clone(),
                exact: false,
                ..self.committed.clone()
            },
            None => self.committed.clone(),
        };
        let places = std::mem::take(&mut self.places);
        let rows = records.num_rows();
        let mut batch = self.batch(records, position)?;
        if self.placing && places.len() == rows {
            let mut positions = Positions::new();
            let split = positions.split(SPLIT);
            for p in places {
                positions.push_at(split, p);
            }
            batch.positions = Some(positions);
        }
        Ok(batch)
    }

    /// No change for a while: the position moves on over what was read (other
    /// tables' transactions), so a quiet table does not pin old binlog files.
    fn idle(&mut self) -> Result<Batch> {
        // inside a transaction, or short of the rows a cut one delivered: nowhere new
        if self.txn.is_some() || self.to_skip > 0 || self.committed == self.delivered {
            return Ok(Batch::idle());
        }
        let records = RecordBatch::new_empty(std::sync::Arc::new(Schema::empty()));
        let position = self.committed.clone();
        self.batch(records, position)
    }

    fn batch(&mut self, records: RecordBatch, mut position: BinlogOffset) -> Result<Batch> {
        // a run without places (another numbering, another server's read) stores
        // offsets nothing is placed against
        position.exact &= self.placing;
        let mut offsets = Offsets::new();
        offsets.set_typed(SPLIT, &position)?;
        self.delivered = position;
        Ok(Batch::new(records, offsets))
    }

    /// The stream is gone: what is pending was not handed out and will be read again,
    /// from the position last handed out, by the next call.
    fn lose_stream(&mut self) {
        self.stream = None;
        self.ops.clear();
        self.places.clear();
        self.pending_since = None;
        self.reset_decoders();
        self.txn = None;
        self.file = self.delivered.file.clone();
        self.next = self.delivered.pos;
        self.to_skip = self.delivered.skip;
        self.gtid = self.delivered.gtid.clone();
        self.state = GtidState::parse(self.delivered.gtids.as_deref().unwrap_or_default());
        self.read_on = self.delivered.read_on;
        self.committed = BinlogOffset {
            skip: 0,
            ..self.delivered.clone()
        };
    }

    /// Rows read now are those `to_skip` counts (the transaction it counts in, or
    /// any when that is the first).
    fn skipping(&self) -> bool {
        self.skip_in.is_none() || self.skip_in == self.gtid
    }

    /// Ends the dump.
    pub async fn close(&mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
        }
        if let Some(meta) = self.meta.take() {
            let _ = meta.disconnect().await;
        }
    }
}
