//! Rows into a table: `LOAD DATA LOCAL INFILE` from a stream in memory, or multi-row
//! statements where the server refuses it; every warning an error.

use arrow_array::RecordBatch;
use connector_api::{Error, Result};
use mysql_async::prelude::Queryable;

use super::MysqlSink;
use crate::conn::quote;
use crate::encode::{self, Column};
use crate::error::{code, my_error};

/// Rows encoded at a time.
const STEP_ROWS: usize = 256;
/// Bytes of a piece of a load (the stream sends one piece at a time): small, so the
/// server starts on a batch soon after the encoder does.
const PIECE_BYTES: usize = 64 << 10;
/// Bytes of one `INSERT ... VALUES` or `DELETE ... IN` statement, well under the
/// default packet limit.
pub(super) const STATEMENT_BYTES: usize = 4 << 20;

/// How a `LOAD DATA LOCAL INFILE` failed.
enum LoadError {
    /// The server does not allow it: fall back to `INSERT`.
    Refused(String),
    /// Anything else.
    Failed(Error),
}
use LoadError::{Failed, Refused};

impl MysqlSink {
    /// Runs a statement that writes rows: a warning (a value changed, a row skipped)
    /// is an error, never silent.
    pub(super) async fn exec_rows(&mut self, sql: &str) -> Result<()> {
        self.exec(sql).await?;
        let warnings = self.conn()?.get_warnings();
        if warnings > 0 {
            return Err(self.warnings(warnings).await);
        }
        Ok(())
    }

    /// Loads `records` into `into` (`replace`: a row with an existing key replaces it).
    pub(super) async fn load(
        &mut self,
        into: &str,
        records: &RecordBatch,
        replace: bool,
    ) -> Result<()> {
        let names: Vec<String> = records
            .schema()
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect();
        if self.infile {
            match self.load_infile(into, &names, records, replace).await {
                Ok(()) => return Ok(()),
                Err(Refused(why)) => {
                    tracing::warn!(table = %self.target, reason = %why, "LOAD DATA LOCAL INFILE refused by the server; writing with INSERT instead");
                    self.infile = false;
                }
                Err(Failed(e)) => return Err(e),
            }
        }
        let columns = connector_api::blocking(|| Column::all(records, self.schema.as_ref()))?;
        self.insert_values(into, &names, records.num_rows(), &columns, replace)
            .await
    }

    /// `LOAD DATA LOCAL INFILE` of `records` from a stream that a blocking task
    /// fills while the server takes in what it has sent: the server is never idle
    /// waiting for the encoding of a whole batch. A value that cannot be written ends
    /// the stream early, and the load's rows are rolled back with the write.
    async fn load_infile(
        &mut self,
        into: &str,
        names: &[String],
        records: &RecordBatch,
        replace: bool,
    ) -> std::result::Result<(), LoadError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let (records, target) = (records.clone(), self.schema.clone());
        let encoder = tokio::task::spawn_blocking(move || -> Result<()> {
            let columns = Column::all(&records, target.as_ref())?;
            let rows = records.num_rows();
            let mut out = Vec::with_capacity(PIECE_BYTES * 2);
            for start in (0..rows).step_by(STEP_ROWS) {
                let end = (start + STEP_ROWS).min(rows);
                encode::lines(&columns, start..end, &mut out)?;
                if out.len() >= PIECE_BYTES || end == rows {
                    let piece = std::mem::replace(&mut out, Vec::with_capacity(PIECE_BYTES * 2));
                    if tx.blocking_send(bytes::Bytes::from(piece)).is_err() {
                        // the load ended (refused or failed): nothing more to send
                        break;
                    }
                }
            }
            Ok(())
        });
        let pieces = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (Ok(piece), rx))
        });
        let sql = format!(
            "LOAD DATA LOCAL INFILE 'sluice' {}INTO TABLE {into} CHARACTER SET binary \
             FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
            if replace { "REPLACE " } else { "" },
            names.join(", ")
        );
        let target = self.target.clone();
        let conn = self.conn().map_err(Failed)?;
        conn.set_infile_handler(async move { Ok(Box::pin(pieces) as mysql_async::InfileData) });
        let loaded = conn.query_drop(&sql).await;
        let warnings = conn.get_warnings();
        let encoded = encoder
            .await
            .map_err(|e| Failed(Error::internal("the LOAD DATA encoder").with_source(e)))?;
        match loaded {
            Ok(()) => {}
            Err(e) if matches!(code(&e), Some(1148 | 3948 | 4166)) => {
                return Err(Refused(e.to_string()))
            }
            Err(e) => return Err(Failed(my_error(format!("table {target}: LOAD DATA"), e))),
        }
        encoded.map_err(Failed)?;
        if warnings > 0 {
            return Err(Failed(self.warnings(warnings).await));
        }
        Ok(())
    }

    /// The error of a load that left warnings: each was a value changed or a row
    /// skipped, which is never silent.
    async fn warnings(&mut self, count: u16) -> Error {
        let target = self.target.clone();
        let listed = match self.conn() {
            Ok(conn) => match conn
                .query::<(String, u32, String), _>("SHOW WARNINGS LIMIT 5")
                .await
            {
                Ok(rows) => rows
                    .into_iter()
                    .map(|(level, code, message)| format!("{level} {code}: {message}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(e) => format!("they could not be read: {e}"),
            },
            Err(e) => e.to_string(),
        };
        Error::data(format!(
            "table {target}: the server changed or skipped values while writing ({count} warnings: {listed})"
        ))
    }

    /// Writes rows with multi-row `INSERT`s (`replace`: `REPLACE`).
    async fn insert_values(
        &mut self,
        into: &str,
        names: &[String],
        rows: usize,
        columns: &[Column],
        replace: bool,
    ) -> Result<()> {
        let verb = if replace { "REPLACE" } else { "INSERT" };
        let head = format!("{verb} INTO {into} ({}) VALUES ", names.join(", "));
        self.exec_tuples(&head, "", columns, rows).await
    }

    /// Runs `head (row), (row), ... tail` over the rows of `columns`, in statements
    /// of up to [`STATEMENT_BYTES`].
    pub(super) async fn exec_tuples(
        &mut self,
        head: &str,
        tail: &str,
        columns: &[Column],
        rows: usize,
    ) -> Result<()> {
        let mut sql = head.as_bytes().to_vec();
        for i in 0..rows {
            if sql.len() > head.len() {
                sql.push(b',');
            }
            encode::tuple(columns, i, &mut sql)?;
            if sql.len() >= STATEMENT_BYTES || i + 1 == rows {
                sql.extend_from_slice(tail.as_bytes());
                let text = String::from_utf8(std::mem::replace(&mut sql, head.as_bytes().to_vec()))
                    .map_err(|_| Error::internal("a statement is not UTF-8"))?;
                self.exec_rows(&text).await?;
            }
        }
        Ok(())
    }
}
