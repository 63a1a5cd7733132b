//! How many rows a bounded snapshot reads, for its progress bar: the planner's
//! estimate, read with `EXPLAIN`, which scans nothing. For a whole table that is
//! `pg_class.reltuples` scaled to the table's current size; for the rows after a
//! resume point it comes from the key column's statistics (or, in physical order, the
//! blocks after the `ctid`), so a resumed run starts its bar where the last one left
//! off. An estimate: `done` may pass `total`, and a table never analyzed is guessed
//! from its size.

use connector_api::{Error, Result};
use sqlx::postgres::PgPool;

use super::table::Table;

/// The estimated rows of `tables` in all, and of those read before this run (tables
/// done, and the part before each table's offset).
pub(super) async fn estimate(pool: &PgPool, tables: &[Table]) -> Result<(u64, u64)> {
    let (mut total, mut before) = (0, 0);
    for table in tables {
        let all = rows(pool, &table.explain(false)?, &table.split).await?;
        total += all;
        if table.offset.done {
            before += all;
        } else if table.offset.started() {
            let rest = rows(pool, &table.explain(true)?, &table.split).await?;
            before += all.saturating_sub(rest);
        }
    }
    Ok((total, before))
}

/// The row estimates of `explains` added up.
async fn rows(pool: &PgPool, explains: &[String], split: &str) -> Result<u64> {
    let mut rows = 0;
    for explain in explains {
        rows += plan_rows(pool, explain, split).await?;
    }
    Ok(rows)
}

/// The row estimate of the top node of the plan of `explain`.
async fn plan_rows(pool: &PgPool, explain: &str, split: &str) -> Result<u64> {
    let top: String = sqlx::query_scalar(explain)
        .fetch_one(pool)
        .await
        .map_err(|e| crate::error::pg_error(format!("estimate the rows of {split}"), e))?;
    rows_of(&top).ok_or_else(|| {
        Error::internal(format!("no row estimate in the plan of {split}: \"{top}\""))
    })
}

/// `rows=N` of a plan line such as `Seq Scan on t  (cost=0.00..35.50 rows=2550 width=4)`.
fn rows_of(line: &str) -> Option<u64> {
    let at = line.find(" rows=")? + " rows=".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_estimate_is_read_off_the_top_plan_line() {
        assert_eq!(
            rows_of("Seq Scan on t __sluice_t  (cost=0.00..1443.00 rows=100000 width=4)"),
            Some(100000)
        );
        assert_eq!(
            rows_of("Index Only Scan using t_pkey on t  (cost=0.29..8.31 rows=1 width=4)"),
            Some(1)
        );
        assert_eq!(rows_of("Result  (cost=0.00..0.01 width=4)"), None);
    }
}
