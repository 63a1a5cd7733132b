//! `incremental` reads by cursor columns, kept exact where a plain `cursor > last`
//! loses rows:
//!
//! - **Ties.** A table's primary key follows the cursor in the read order, so each
//!   position is one row: a restart repeats and skips none, even among rows that
//!   share a cursor value. Without a key (a `query`, a keyless table) a read ends after
//!   every row equal to its last one (`FETCH FIRST n ROWS WITH TIES`), and a batch
//!   inside a read carries an offset only where the cursor changes: nothing is
//!   skipped, and a restart may repeat the rows of one value. Either way a row written
//!   later with a cursor equal to one already read is behind the position: the cursor
//!   must grow for new rows.
//! - **Late commits.** A transaction that began before another but commits after it
//!   may write a smaller cursor value than rows already read. From a table, rows are
//!   read only when the transaction that wrote them is older than the oldest one still
//!   running (the row's `xmin` against the snapshot's `xmin`): a newer row waits until
//!   nothing older can commit before it. A long-open transaction (anywhere on the
//!   server) therefore holds the reads back; the rows arrive when it ends. This is
//!   exact for a cursor that grows in the order transactions write (a sequence id
//!   taken by the insert, a timestamp set by a trigger); a cursor taken earlier than
//!   the transaction's first write (`now()` at its start, an id fetched before it)
//!   can still come out of that order. A `query` has no `xmin`: its cursor must grow
//!   in commit order.
//! - **NULL.** No position comes after a NULL cursor, so such a row would never be
//!   read: rows with a NULL in a nullable cursor column are left out of reads, and
//!   when the source has caught up it looks for them and stops with an error that
//!   names the columns.

use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use connector_api::{Error, Result};
use sqlx::postgres::PgPool;

use crate::conn::quote;
use crate::error::pg_error;

/// How one relation's cursor reads are bounded.
pub(super) struct Cursor {
    /// The cursor columns that may hold NULL.
    nullable: Vec<String>,
    /// The relation is a table (it has `xmin`).
    horizon: bool,
    /// When NULLs were last looked for.
    checked: Option<Instant>,
}

/// How often, at most, a caught-up source looks for NULL cursors: the rows with one
/// are left out of every read meanwhile, so a later look loses nothing, and a query
/// (each of whose columns may be NULL) is not run again at every poll.
const NULL_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Rows written by a transaction older than the oldest still running (whose `xmin`
/// is further in the past); frozen rows count as oldest. The snapshot's `xmin` is a
/// 64-bit transaction id, the row's a 32-bit one: compared as ages.
const OLDER_THAN_RUNNING: &str = "age(__sluice_t.xmin) > (SELECT age((pg_snapshot_xmin(pg_current_snapshot())::text::numeric % 4294967296)::text::xid))";

impl Cursor {
    /// The cursor of `relation` (`table`: a table name, else a query) ordered by the
    /// columns `key` of `schema`.
    pub(super) async fn open(
        pool: &PgPool,
        relation: &str,
        table: bool,
        schema: &SchemaRef,
        key: &[usize],
    ) -> Result<Cursor> {
        let horizon = match table {
            false => false,
            true => sqlx::query_scalar(
                "SELECT relkind IN ('r', 'p', 'm') FROM pg_class WHERE oid = $1::regclass",
            )
            .bind(relation)
            .fetch_one(pool)
            .await
            .map_err(|e| pg_error(format!("kind of {relation}"), e))?,
        };
        let nullable = key
            .iter()
            .map(|&i| schema.field(i))
            .filter(|f| f.is_nullable())
            .map(|f| f.name().clone())
            .collect();
        Ok(Cursor {
            nullable,
            horizon,
            checked: None,
        })
    }

    /// The conditions every read adds.
    pub(super) fn conditions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .nullable
            .iter()
            .map(|c| format!("__sluice_t.{} IS NOT NULL", quote(c)))
            .collect();
        if self.horizon {
            out.push(OLDER_THAN_RUNNING.to_string());
        }
        out
    }

    /// Caught up: stops with an error naming the cursor columns when `table` has a
    /// row with a NULL in one (it would never be read).
    pub(super) async fn check_nulls(
        &mut self,
        pool: &PgPool,
        relation: &str,
        split: &str,
    ) -> Result<()> {
        let recent = self.checked.is_some_and(|t| t.elapsed() < NULL_CHECK_EVERY);
        if self.nullable.is_empty() || recent {
            return Ok(());
        }
        self.checked = Some(Instant::now());
        let any: Vec<String> = self
            .nullable
            .iter()
            .map(|c| format!("__sluice_t.{} IS NULL", quote(c)))
            .collect();
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {relation} AS __sluice_t WHERE {})",
            any.join(" OR ")
        );
        let found: bool = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .map_err(|e| pg_error(format!("reading {split}"), e))?;
        if !found {
            return Ok(());
        }
        let names: Vec<String> = self.nullable.iter().map(|c| format!("\"{c}\"")).collect();
        Err(Error::data(format!(
            "{split}: a row has NULL in the cursor column {}; no cursor position comes after NULL, so it would never be read. \
             Fill the column and set it NOT NULL, or read a query that gives it a value (COALESCE)",
            names.join(" or ")
        ))
        .with_field("cursor"))
    }
}

/// For each part of a read but the last: its last row has the same cursor as the
/// next part's first, so the part must not move the offset past it.
pub(super) fn ties(buf: &[u8], parts: &[&[usize]], columns: usize) -> Result<Vec<bool>> {
    let mut out = Vec::with_capacity(parts.len());
    for pair in parts.windows(2) {
        let (Some(&last), Some(&first)) = (pair[0].last(), pair[1].first()) else {
            out.push(false);
            continue;
        };
        out.push(
            crate::binary::key_of(buf, last, columns)?
                == crate::binary::key_of(buf, first, columns)?,
        );
    }
    out.push(false);
    Ok(out)
}
