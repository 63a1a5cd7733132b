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
