//! `mode = "cdc"` in the source: the server checked and the table's columns read at
//! open, the snapshot taken (or resumed) at a binlog position, then the binlog read
//! from it by [`super::cdc::Changes`].

use connector_api::{Batch, Error, Offsets, Result};
use mysql_async::prelude::Queryable;

use super::{binlog, cdc, debezium, gtid, position, BinlogOffset, MysqlOffset, MysqlSource};
use crate::conn::{database_of, split_table};
use crate::error::my_error;

impl MysqlSource {
    /// `cdc` at open: the server's settings, then the snapshot (taken now, or resumed
    /// in a new one) or the binlog from the stored position.
    pub(super) async fn open_cdc(&mut self, committed: &Offsets) -> Result<()> {
        binlog::check_server(self.conn()?).await?;
        // the columns the stream decodes, checked before a snapshot is read for nothing
        let table = self.config.tables.first().cloned().unwrap_or_default();
        let conn = self.conn()?;
        let db = database_of(conn, &table).await?;
        let bare = split_table(&table).1.to_string();
        let columns = binlog::table_columns(conn, &db, &bare).await?;
        self.captured = Some(columns);
        self.cdc_table = (db, bare);
        let mut from: Option<BinlogOffset> = committed.get_typed(position::SPLIT)?;
        if let Some(at) = &from {
            let here = gtid::server_id(self.conn()?).await?;
            // on another server the position is found by GTID when the stream starts
            let by_position = gtid::resume(at, here, self.mariadb)? == gtid::Resume::Position;
            let files = match by_position {
                true => binlog::binlog_files(self.conn()?).await?,
                false => Vec::new(),
            };
            if by_position && !files.contains(&at.file) {
                if !self.config.snapshot_on_purge {
                    return Err(position::purged(&at.file, at.pos, &files));
                }
                tracing::warn!(file = %at.file, position = at.pos, "the stored binlog position was purged; reading the table again from a new snapshot (snapshot_on_purge)");
                from = None;
                self.resnapshot = true;
                for split in &mut self.splits {
                    split.position = None;
                }
            }
        }
        let snapshot_done = self
            .splits
            .iter()
            .all(|s| s.position == Some(MysqlOffset::Done));
        match (from, snapshot_done) {
            (Some(at), true) => self.binlog_from = Some(at),
            (Some(at), false) => {
                // a snapshot cut short: the rest in a new snapshot; the changes made
                // meanwhile come again from the binlog (they converge under upsert)
                self.conn()?
                    .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await
                    .map_err(|e| my_error("start the snapshot", e))?;
                self.binlog_from = Some(at);
            }
            (None, _) => {
                let mariadb = self.mariadb;
                let mut at = position::snapshot_position(self.conn()?, mariadb).await?;
                // read again after a purge: the sinks may hold offsets of an older
                // numbering of the binlog, which places of this one do not compare with
                at.exact = !self.resnapshot;
                self.binlog_from = Some(at);
            }
        }
        Ok(())
    }

    /// `envelope = "debezium"`: the table and pipeline the records are of.
    pub(super) fn place(&self) -> Option<debezium::Place> {
        if self.config.envelope != crate::config::Envelope::Debezium {
            return None;
        }
        Some(debezium::Place {
            name: self.pipeline.clone(),
            db: self.cdc_table.0.clone(),
            table: self.cdc_table.1.clone(),
        })
    }

    /// `cdc`: the snapshot's next batch, then the binlog's.
    pub(super) async fn next_change(&mut self) -> Result<Batch> {
        if self.changes.is_none() {
            if let Some(batch) = self.next_snapshot().await? {
                return Ok(batch);
            }
            // the snapshot is read: its transaction ends, the stream starts
            self.conn()?
                .query_drop("COMMIT")
                .await
                .map_err(|e| my_error("end the snapshot", e))?;
            let columns = self
                .captured
                .take()
                .ok_or_else(|| Error::internal("no captured table"))?;
            let (db, bare) = self.cdc_table.clone();
            let from = self
                .binlog_from
                .clone()
                .ok_or_else(|| Error::internal("no binlog position"))?;
            let place = self.place();
            let replica = cdc::Replica {
                url: self.config.url.clone(),
                server_id: self.server_id,
                mariadb: self.mariadb,
            };
            let mut changes = cdc::Changes::new(
                replica,
                (db, bare),
                columns,
                self.config.zero_dates,
                from,
                place,
            );
            if self.resnapshot {
                changes.without_places();
            }
            changes.start().await?;
            self.changes = Some(changes);
        }
        let (limit, idle) = (self.batch_size, self.idle_timeout);
        match &mut self.changes {
            Some(changes) => changes.next_batch(limit, idle).await,
            None => Err(Error::internal("binlog reader")),
        }
    }
}
