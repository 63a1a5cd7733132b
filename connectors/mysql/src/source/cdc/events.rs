//! The binlog's events taken in: transactions (their start, their GTID, their
//! commit, which moves the position), and the captured table's rows events, after a
//! check that the table map still describes the columns decoded with.

use connector_api::{Batch, Error, Result};
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::BinlogChecksumAlg;

use super::rows::key_positions;
use super::shape::{self, Shape};
use super::{Changes, MARIADB_GTID_EVENT};
use crate::conn::connect;
use crate::source::binlog::{self, TableColumn};
use crate::source::position::{numbered, BinlogOffset};

impl Changes {
    /// Takes in one event; a batch when the rows pending must go first (the table's
    /// columns changed).
    pub(super) async fn apply(
        &mut self,
        event: mysql_async::binlog::events::Event,
    ) -> Result<Option<Batch>> {
        let header = event.header();
        // where the event starts: what came before it may not have been sent (a dump
        // started by GTID skips to its transaction)
        let start = match header.log_pos() {
            0 => self.next,
            end => u64::from(end.saturating_sub(header.event_size())),
        };
        self.event.0 = header.timestamp();
        self.event.1 = header.server_id();
        if header.log_pos() != 0 {
            self.next = u64::from(header.log_pos());
        }
        let data = event.read_data().map_err(|e| {
            Error::data(format!(
                "binlog {} {start}: an event that does not decode",
                self.file
            ))
            .with_source(e)
        })?;
        match data {
            // the artificial rotate that starts a dump names the file asked for and
            // comes before the format event, so its name still ends in the checksum:
            // it is skipped; a later one (the next file after a server restart) is not
            Some(EventData::RotateEvent(r)) if header.log_pos() != 0 || self.formatted => {
                let file = r.name().into_owned();
                // places rise along one numbering of the binlog (RESET MASTER, or
                // another log_bin name, starts another; the artificial rotate sent
                // before a new file's format event names the file again)
                let (was, now) = (numbered(&self.file), numbered(&file));
                let onward = matches!((was, now), (Some((a, m)), Some((b, n))) if a == b && n > m);
                if file != self.file && !onward {
                    self.placing = false;
                }
                self.file = file;
                self.next = r.position();
            }
            Some(EventData::RotateEvent(r)) => {
                if let Some(name) = &mut self.by_gtid {
                    *name = r.name_raw().to_vec();
                }
            }
            Some(EventData::FormatDescriptionEvent(f)) => {
                self.formatted = true;
                if let Some(mut name) = self.by_gtid.take().filter(|n| !n.is_empty()) {
                    if f.footer().get_checksum_alg()
                        == Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32))
                    {
                        name.truncate(name.len().saturating_sub(4));
                    }
                    self.file = String::from_utf8_lossy(&name).into_owned();
                }
            }
            Some(EventData::GtidEvent(g)) => {
                let sid: String = g.sid().iter().map(|b| format!("{b:02x}")).collect();
                self.gtid = Some(format!("{sid}:{}", g.gno()));
                self.begin(start, self.gtid.clone());
            }
            Some(EventData::QueryEvent(q)) => {
                let sql = q.query();
                let word = sql
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" => {
                        self.event.3 = Some(i64::from(q.thread_id()));
                        self.begin(start, None);
                    }
                    // inside the transaction (an ORM's savepoints, XA's steps)
                    "SAVEPOINT" | "RELEASE" | "XA" => {}
                    "ROLLBACK" if sql.to_ascii_uppercase().contains(" TO ") => {}
                    "COMMIT" | "ROLLBACK" => self.commit(),
                    // DDL and other statements are transactions of their own; one
                    // naming the table has its next table map checked even when its
                    // shape looks the same (a rename without column names in it)
                    _ => {
                        if mentions(&sql, &self.table) {
                            self.recheck = true;
                        }
                        self.commit()
                    }
                }
            }
            Some(EventData::XidEvent(_)) => self.commit(),
            Some(EventData::RowsEvent(rows)) => return self.rows(rows).await,
            None if header.event_type_raw() == MARIADB_GTID_EVENT => {
                self.gtid = binlog::mariadb_gtid(event.data(), header.server_id());
                self.begin(start, self.gtid.clone());
            }
            _ => {}
        }
        Ok(None)
    }

    /// A transaction starts at `at` (with its own GTID where an event named it).
    fn begin(&mut self, at: u64, gtid: Option<String>) {
        if self.txn.is_none() {
            // the state before it, found by on any server; the file and offset of
            // the server read from; its own GTID, to know it again after a resume by
            // GTID, where other domains' transactions may come before it
            let start = BinlogOffset {
                file: self.file.clone(),
                pos: at,
                skip: 0,
                read_on: self.read_on,
                gtid: gtid.or_else(|| self.committed.gtid.clone()),
                exact: true,
                ..self.committed.clone()
            };
            self.txn = Some((start, 0));
        }
    }

    fn commit(&mut self) {
        self.event.3 = None;
        self.txn = None;
        if self.skipping() {
            self.to_skip = 0;
            self.skip_in = None;
        }
        if let (true, Some(gtid)) = (self.mariadb, &self.gtid) {
            self.state.apply(gtid);
        }
        self.committed = BinlogOffset {
            file: self.file.clone(),
            pos: self.next,
            skip: 0,
            gtid: self.gtid.clone(),
            gtids: (!self.state.is_empty()).then(|| self.state.to_string()),
            read_on: self.read_on,
            exact: true,
        };
    }

    async fn rows(&mut self, rows: RowsEventData<'_>) -> Result<Option<Batch>> {
        let table_id = rows.table_id();
        let Some(tme) = self.stream.as_ref().and_then(|s| s.get_tme(table_id)) else {
            return Ok(None);
        };
        if tme.database_name() != self.db.as_str() || tme.table_name() != self.table.as_str() {
            return Ok(None);
        }
        if self.recheck || self.shape.as_ref().map(|(id, _)| *id) != Some(table_id) {
            // a table map not met yet: the same row format under a new id, or a DDL
            let shape = Shape::of(tme);
            let recheck = std::mem::take(&mut self.recheck);
            if recheck || self.shape.as_ref().is_none_or(|(_, known)| *known != shape) {
                if let Some(described) = shape::columns_of(tme, &self.utf8, self.mariadb)? {
                    // it names its columns: they are the ones its rows were written
                    // with, whatever the table is now
                    if described != self.columns {
                        if let Some(batch) = self.pending_first()? {
                            self.recheck = recheck;
                            return Ok(Some(batch));
                        }
                        self.use_columns(described);
                    }
                } else if recheck
                    || self.shape.is_some()
                    || shape::differs(&self.columns, tme).is_some()
                {
                    if let Some(batch) = self.pending_first()? {
                        self.recheck = recheck;
                        return Ok(Some(batch));
                    }
                    self.refresh().await?;
                    let tme = self.stream.as_ref().and_then(|s| s.get_tme(table_id));
                    if let Some(why) = tme.and_then(|tme| shape::differs(&self.columns, tme)) {
                        return Err(Error::schema(format!(
                            "table {}.{} at binlog {} {} is not the table as it is now ({why}): it changed again \
                             since, and the binlog does not name its columns (binlog_row_metadata = FULL would); \
                             read it again from a new snapshot (reset the pipeline's offsets)",
                            self.db, self.table, self.file, self.next
                        )));
                    }
                }
            }
            self.shape = Some((table_id, shape));
        }
        // the stream lends its table map while the rows go into `self`
        let stream = self
            .stream
            .take()
            .ok_or_else(|| Error::internal("binlog stream is not open"))?;
        let decoded = match stream.get_tme(rows.table_id()) {
            Some(tme) => self.decode(tme, &rows),
            None => Ok(()),
        };
        self.stream = Some(stream);
        decoded?;
        Ok(None)
    }

    /// Before the columns change: the rows pending go out in the old shape, and the
    /// event is read again, from their end, by the next call.
    fn pending_first(&mut self) -> Result<Option<Batch>> {
        if self.ops.is_empty() {
            return Ok(None);
        }
        let batch = self.emit()?;
        self.lose_stream();
        Ok(Some(batch))
    }

    /// Reads the table's columns again (after a DDL, where the binlog does not name
    /// them).
    async fn refresh(&mut self) -> Result<()> {
        let mut meta = match self.meta.take() {
            Some(conn) => conn,
            None => connect(&self.url).await?,
        };
        // a failed read drops the connection (it may be what failed)
        let columns = binlog::table_columns(&mut meta, &self.db, &self.table).await?;
        self.meta = Some(meta);
        self.use_columns(columns);
        Ok(())
    }

    /// Decodes with `columns` from now on.
    fn use_columns(&mut self, columns: Vec<TableColumn>) {
        self.columns = columns;
        self.reset_decoders();
        self.key = key_positions(&self.columns);
        tracing::info!(table = %format!("{}.{}", self.db, self.table), "the table's columns changed in the binlog");
    }
}

/// Whether statement `sql` may name table `table` (its name in any case, anywhere:
/// a false match costs one more check of a table map, a missed one a rename unseen).
fn mentions(sql: &str, table: &str) -> bool {
    sql.to_lowercase().contains(&table.to_lowercase())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_statement_may_name_a_table() {
        assert!(super::mentions(
            "ALTER TABLE `test`.`Orders` RENAME COLUMN a TO b",
            "orders"
        ));
        assert!(super::mentions(
            "ALTER TABLE `order-items` ADD c INT",
            "order-items"
        ));
        assert!(!super::mentions(
            "ALTER TABLE customers ADD c INT",
            "orders"
        ));
    }
}
