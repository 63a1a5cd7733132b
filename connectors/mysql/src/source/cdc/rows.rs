//! The rows of the captured table's rows events: decoded into the pending changes
//! (each with its op, and with `envelope = "debezium"` its before image and origin).

use std::time::Instant;

use connector_api::{Error, Result};
use mysql_async::binlog::events::RowsEventData;
use mysql_async::Value;

use super::Changes;
use crate::decode::Decoder;
use crate::source::binlog::{self, TableColumn};
use crate::source::debezium;
use crate::source::position::place;

/// What Debezium's envelope adds to the pending rows (whose after images are the
/// decoder's).
pub(super) struct Images {
    pub(super) before: Decoder,
    pub(super) has_before: Vec<bool>,
    pub(super) has_after: Vec<bool>,
    pub(super) origins: Vec<debezium::Origin>,
    pub(super) place: debezium::Place,
}

impl Changes {
    /// The rows of a rows event of the captured table, as changes.
    pub(super) fn decode(
        &mut self,
        tme: &mysql_async::binlog::events::TableMapEvent<'_>,
        rows: &RowsEventData<'_>,
    ) -> Result<()> {
        let op =
            match rows {
                RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => "c",
                RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => "u",
                RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => "d",
                RowsEventData::PartialUpdateRowsEvent(_) => return Err(Error::config(
                    "the binlog has partial JSON updates: SET GLOBAL binlog_row_value_options = ''",
                )),
            };
        for (i, row) in rows.rows(tme).enumerate() {
            let (before, after) = row.map_err(|e| {
                Error::data(format!(
                    "binlog {} {}: row {i} does not decode",
                    self.file, self.next
                ))
                .with_source(e)
            })?;
            if let Some((_, n)) = &mut self.txn {
                *n += 1;
            }
            if self.to_skip > 0 && self.skipping() {
                self.to_skip -= 1;
                continue;
            }
            let before = before.map(|r| self.values(r)).transpose()?;
            let after = after.map(|r| self.values(r)).transpose()?;
            self.event.2 = i32::try_from(i).unwrap_or(i32::MAX);
            // twice the row's index among the table's rows of its transaction (skipped
            // ones too): a key update's two records take both slots
            let slot = self
                .txn
                .as_ref()
                .map_or(0, |(_, n)| 2 * n.saturating_sub(1));
            match (before, after) {
                // an update of the key: the old key goes, the new one comes, as the
                // postgres source does, so an upsert leaves no row behind
                (Some(b), Some(a)) if self.key.iter().any(|&k| b[k] != a[k]) => {
                    self.push("d", Some(b), None, slot)?;
                    self.push("c", None, Some(a), slot + 1)?;
                }
                (b, a) => self.push(op, b, a, slot)?,
            }
        }
        Ok(())
    }

    /// A row image's values, as the binary protocol gives them.
    fn values(
        &self,
        image: mysql_async::binlog::row::BinlogRow,
    ) -> Result<Vec<mysql_async::Value>> {
        if image.len() != self.columns.len() {
            return Err(Error::config(format!(
                "table {}.{}: a row in the binlog has {} of its {} columns; CDC needs binlog_row_image = FULL",
                self.db,
                self.table,
                image.len(),
                self.columns.len()
            )));
        }
        image
            .unwrap()
            .into_iter()
            .zip(&self.columns)
            .map(|(v, c)| {
                binlog::normalize(v, c)
                    .map_err(|why| Error::data(format!("column \"{}\": {why}", c.name)))
            })
            .collect()
    }

    /// Empty builders for the current columns.
    pub(super) fn reset_decoders(&mut self) {
        let nullable = self.debezium.is_some();
        self.decoder = Decoder::new(&described(&self.columns, nullable), self.zero_dates);
        if let Some(d) = &mut self.debezium {
            d.before = Decoder::new(&described(&self.columns, true), self.zero_dates);
            d.has_before.clear();
            d.has_after.clear();
            d.origins.clear();
        }
    }

    /// Appends one change: its op and images (one of them at least), at `slot` of
    /// its transaction.
    pub(super) fn push(
        &mut self,
        op: &'static str,
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
        slot: u64,
    ) -> Result<()> {
        let at = || format!("binlog {} {}", self.file, self.next);
        let nulls = || vec![Value::NULL; self.columns.len()];
        match &mut self.debezium {
            None => {
                let Some(values) = after.or(before) else {
                    return Ok(());
                };
                self.decoder.push(values, &at)?;
            }
            Some(d) => {
                let (has_before, has_after) = (before.is_some(), after.is_some());
                d.before.push(before.unwrap_or_else(nulls), &at)?;
                self.decoder.push(after.unwrap_or_else(nulls), &at)?;
                d.has_before.push(has_before);
                d.has_after.push(has_after);
                let (secs, server, row, thread) = self.event;
                d.origins.push(debezium::Origin {
                    ts_ms: i64::from(secs) * 1000,
                    server_id: i64::from(server),
                    gtid: self.gtid.clone(),
                    file: self.file.clone(),
                    pos: i64::try_from(self.next).unwrap_or(i64::MAX),
                    row,
                    thread,
                    snapshot: false,
                });
            }
        }
        self.ops.push(op);
        self.note_place(slot);
        self.pending_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Keeps the place of the change just pushed, at `slot` of the transaction read.
    fn note_place(&mut self, slot: u64) {
        if !self.placing {
            return;
        }
        let start = self.txn.as_ref().map(|(start, _)| start);
        match start.and_then(|s| place(&s.file, s.pos, slot)) {
            Some(p) => self.places.push(p),
            // rows outside a transaction whose start it knows (XA without GTIDs), or
            // a file without a number: no places for the rest of the run
            None => {
                self.placing = false;
                self.places.clear();
            }
        }
    }
}

/// Where the primary-key columns are.
pub(super) fn key_positions(columns: &[TableColumn]) -> Vec<usize> {
    columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.key)
        .map(|(i, _)| i)
        .collect()
}

pub(super) fn described(
    columns: &[TableColumn],
    nullable: bool,
) -> Vec<(String, crate::types::Kind, bool)> {
    columns
        .iter()
        .map(|c| (c.name.clone(), c.kind, c.nullable || nullable))
        .collect()
}
