//! Where a capture stands: the binlog position (the offset of `cdc`), the position a
//! snapshot is taken at, and what the records of a change look like without
//! Debezium's envelope.

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use connector_api::{columns, Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use super::{binlog, gtid};
use crate::error::my_error;

/// The offset key of the binlog position.
pub const SPLIT: &str = "binlog";
/// Where the binlog is read from. Exclusive of what was delivered: reading starts at
/// `pos` in `file` and skips the first `skip` rows of the captured table there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinlogOffset {
    /// Binlog file.
    pub file: String,
    /// Offset of the next event to read (a transaction's first event when `skip` > 0).
    pub pos: u64,
    /// Rows of the captured table at `pos` already delivered.
    #[serde(default)]
    pub skip: u64,
    /// The GTID of the last delivered transaction, when the server gives one (with
    /// `skip` > 0: of the transaction cut, whose rows are skipped).
    #[serde(default)]
    pub gtid: Option<String>,
    /// MariaDB: the GTID state at `pos` (the last GTID of each domain), by which
    /// another server of the topology finds the position ([`super::gtid`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtids: Option<String>,
    /// The `@@server_id` of the server `file` and `pos` are of (None in positions
    /// stored before it was kept: the server connected to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_on: Option<u32>,
    /// `file`, `pos` and `skip` are one cut of the binlog of `read_on`: every change
    /// before it delivered, none after, so changes are placed against it
    /// ([`BinlogOffset::covered_below`]). False where the skip counts in a later
    /// transaction (after a resume by GTID), and in positions stored before it was kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

impl BinlogOffset {
    /// The place ([`place`]) of the first change this offset does not cover: every
    /// transaction starting before `pos` in `file` is covered, and the first `skip`
    /// rows of the one starting there. None when the offset is not one cut
    /// (`exact`) or does not name its server.
    pub fn covered_below(&self) -> Option<u128> {
        if !self.exact || self.read_on.is_none() {
            return None;
        }
        place(&self.file, self.pos, self.skip.checked_mul(2)?)
    }

    /// The server and the binlog name its file and offset are of: the places of two
    /// offsets compare only when these are the same.
    pub fn space(&self) -> Option<(u32, &str)> {
        Some((self.read_on?, numbered(&self.file)?.0))
    }
}

/// Where a change lies in the binlog of one server, as one number that rises along
/// it: the number of the file its transaction starts in, the offset of the
/// transaction's first event there, and `slot`, twice the change's row among the
/// captured table's rows of the transaction (plus one for the second record of a key
/// update). None for a file name without a number or an offset past 32 bits.
pub fn place(file: &str, pos: u64, slot: u64) -> Option<u128> {
    let (_, number) = numbered(file)?;
    let pos = u32::try_from(pos).ok()?;
    Some(u128::from(number) << 96 | u128::from(pos) << 64 | u128::from(slot))
}

/// A binlog file's base name and number (`mysql-bin.000012`: `mysql-bin`, 12).
pub fn numbered(file: &str) -> Option<(&str, u32)> {
    let (base, digits) = file.rsplit_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

/// The position the snapshot of this run reads at, taken with the snapshot's
/// transaction: MariaDB names it without a lock (`binlog_snapshot_file`); MySQL under
/// a read lock held only while the position is read.
pub async fn snapshot_position(conn: &mut Conn, mariadb: bool) -> Result<BinlogOffset> {
    let err = |e| binlog::grants(my_error("read the binlog position of the snapshot", e));
    if mariadb {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(err)?;
        let rows: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(err)?;
        let get = |k: &str| {
            rows.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let (Some(file), Some(pos)) =
            (get("binlog_snapshot_file"), get("binlog_snapshot_position"))
        else {
            return Err(Error::new(
                connector_api::ErrorKind::Unsupported,
                "the server does not say the binlog position of its snapshot (binlog_snapshot_file)",
            ));
        };
        let pos = pos.parse().map_err(|_| {
            Error::internal(format!(
                "the snapshot's binlog position \"{pos}\" is no number"
            ))
        })?;
        let gtids = gtid::state_at(conn, &file, pos).await?;
        return Ok(BinlogOffset {
            gtids: (!gtids.is_empty()).then(|| gtids.to_string()),
            read_on: Some(gtid::server_id(conn).await?),
            file,
            pos,
            skip: 0,
            gtid: None,
            exact: true,
        });
    }
    conn.query_drop("FLUSH TABLES WITH READ LOCK")
        .await
        .map_err(err)?;
    let started = conn
        .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await;
    // MySQL 8.4 renamed SHOW MASTER STATUS
    let status: std::result::Result<Option<mysql_async::Row>, _> =
        match conn.query_first("SHOW BINARY LOG STATUS").await {
            Ok(row) => Ok(row),
            Err(_) => conn.query_first("SHOW MASTER STATUS").await,
        };
    conn.query_drop("UNLOCK TABLES").await.map_err(err)?;
    started.map_err(err)?;
    let mut row = status.map_err(err)?.ok_or_else(|| {
        Error::config("SHOW MASTER STATUS is empty: the server's binlog is off").with_field("mode")
    })?;
    Ok(BinlogOffset {
        file: row
            .take::<String, _>(0)
            .ok_or_else(|| Error::internal("the binlog status has no file"))?,
        pos: row
            .take::<u64, _>(1)
            .ok_or_else(|| Error::internal("the binlog status has no position"))?,
        skip: 0,
        gtid: None,
        gtids: None,
        read_on: Some(gtid::server_id(conn).await?),
        exact: true,
    })
}

/// `data` with the `_op` column `ops` after its own.
pub fn with_op(data: RecordBatch, ops: ArrayRef) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = data
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(columns::OP, DataType::Utf8, false));
    let mut arrays = data.columns().to_vec();
    arrays.push(ops);
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        arrays,
    )?)
}

/// The error of a position whose binlog file is gone.
pub fn purged(file: &str, pos: u64, files: &[String]) -> Error {
    Error::config(format!(
        "binlog no longer available: the pipeline's position is {file} {pos}, but the server has purged that file \
         (its oldest is {}); the changes since are lost to this pipeline. Set snapshot_on_purge = true to read the \
         table again from a new snapshot, or keep binlogs longer (binlog_expire_logs_seconds)",
        files.first().map_or("none", String::as_str)
    ))
    .with_field("snapshot_on_purge")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: &str, pos: u64, skip: u64) -> BinlogOffset {
        BinlogOffset {
            file: file.into(),
            pos,
            skip,
            gtid: None,
            gtids: None,
            read_on: Some(1),
            exact: true,
        }
    }

    #[test]
    fn binlog_files_are_numbered_past_six_digits() {
        assert_eq!(numbered("mysql-bin.000012"), Some(("mysql-bin", 12)));
        assert_eq!(numbered("a.b.1000000"), Some(("a.b", 1_000_000)));
        assert_eq!(numbered("binlog"), None);
        assert_eq!(numbered("binlog."), None);
        assert_eq!(numbered("binlog.00x1"), None);
    }

    #[test]
    fn an_offset_covers_the_changes_placed_before_it_and_no_other() {
        let covered = |o: &BinlogOffset, file: &str, start: u64, row: u64| {
            place(file, start, 2 * row).unwrap() < o.covered_below().unwrap()
        };
        // at a transaction's start: every change of earlier transactions, none of it
        let whole = at("bin.000003", 500, 0);
        assert!(covered(&whole, "bin.000003", 400, 9_999));
        assert!(covered(&whole, "bin.000002", 90_000, 0));
        assert!(!covered(&whole, "bin.000003", 500, 0));
        assert!(!covered(&whole, "bin.000004", 4, 0));
        // cut inside the transaction at 500 after 2 rows: those two (a key update's
        // second record included), not the third
        let cut = at("bin.000003", 500, 2);
        assert!(covered(&cut, "bin.000003", 500, 1));
        assert!(place("bin.000003", 500, 3).unwrap() < cut.covered_below().unwrap());
        assert!(!covered(&cut, "bin.000003", 500, 2));
        assert!(!covered(&cut, "bin.000003", 501, 0));
        // not one cut, or of no named server: not placed
        let later = BinlogOffset {
            exact: false,
            ..cut.clone()
        };
        assert_eq!(later.covered_below(), None);
        let unnamed = BinlogOffset {
            read_on: None,
            ..cut.clone()
        };
        assert_eq!(unnamed.covered_below(), None);
        // an offset stored before `exact` was kept reads as not exact
        let old: BinlogOffset =
            serde_json::from_str(r#"{"file":"bin.000003","pos":500,"skip":0,"read_on":1}"#)
                .unwrap();
        assert_eq!(old.covered_below(), None);
        assert_eq!(cut.space(), Some((1, "bin")));
    }
}
