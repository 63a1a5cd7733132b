//! Splits for runtimes that share a `snapshot` (`[checkpoint] store = "postgres"`):
//! each table is one, and with `split_key_width` a table with a single integer
//! primary key is cut into key ranges of that width, `SCHEMA.TABLE@LO..HI` (keys
//! `LO <= k < HI`; a bound past the 64-bit range is left open: `@LO..`), so one
//! large table is read by several runtimes at once. Range bounds are multiples of
//! the width: every runtime, listing at any time, names the same ranges for the same
//! width, and rows with keys beyond the last range listed fall into new ones. An
//! empty table has no range yet (and, with a width, no split). Changing the width of
//! a pipeline that has run names other ranges, which overlap those read: reset its
//! offsets first.

use connector_api::{Error, ListedSplit, Result, SplitList};

use crate::config::{PostgresSourceConfig, SnapshotOrder, SourceMode};
use crate::conn::{connect_pool, quote};
use crate::error::pg_error;

use super::describe::describe;

/// More ranges than this for one table is a width too small for its keys.
const MAX_RANGES: i64 = 100_000;

/// The splits of a `snapshot` in key order of `tables`; None for other reads (a
/// query, `incremental`, `cdc`, physical order), which one runtime reads.
pub async fn splits(config: &PostgresSourceConfig) -> Result<Option<SplitList>> {
    let shareable = config.mode == SourceMode::Snapshot
        && config.query_text().is_none()
        && config.snapshot_order == SnapshotOrder::Key;
    if !shareable {
        return Ok(None);
    }
    let schema = &config.schema;
    let whole = |t: &String| ListedSplit {
        id: format!("{schema}.{t}"),
        version: None,
    };
    let Some(width) = config.split_key_width else {
        let splits = config.tables.iter().map(whole).collect();
        return Ok(Some(SplitList {
            splits,
            growing: false,
            cut: None,
        }));
    };
    let pool = connect_pool(&config.url, 1, "sluice split listing").await?;
    let mut splits = Vec::new();
    for table in &config.tables {
        let (columns, _, pk) = describe(&pool, schema, table).await?;
        let Some(key) = integer_key(&columns, &pk) else {
            tracing::info!(table = %format!("{schema}.{table}"), "not cut into key ranges: its primary key is not one integer column");
            splits.push(whole(table));
            continue;
        };
        let (lo, hi): (Option<i64>, Option<i64>) = sqlx::query_as(&format!(
            "SELECT min({k})::int8, max({k})::int8 FROM {}.{}",
            quote(schema),
            quote(table),
            k = quote(key)
        ))
        .fetch_one(&pool)
        .await
        .map_err(|e| pg_error(format!("table \"{schema}\".\"{table}\""), e))?;
        // empty: nothing to read yet (a whole-table split now would overlap the
        // ranges of a later listing)
        let (Some(lo), Some(hi)) = (lo, hi) else {
            continue;
        };
        let (first, last) = (lo.div_euclid(width), hi.div_euclid(width));
        if i128::from(last) - i128::from(first) >= i128::from(MAX_RANGES) {
            return Err(Error::config(format!(
                "table \"{schema}\".\"{table}\": keys {lo}..{hi} make more than {MAX_RANGES} ranges of split_key_width {width}; make it larger"
            ))
            .with_field("split_key_width"));
        }
        for n in first..=last {
            let bound = |m: i128| i64::try_from(m * i128::from(width)).ok();
            let lo = bound(i128::from(n))
                .map(|b| b.to_string())
                .unwrap_or_default();
            let hi = bound(i128::from(n) + 1)
                .map(|b| b.to_string())
                .unwrap_or_default();
            splits.push(ListedSplit {
                id: format!("{schema}.{table}@{lo}..{hi}"),
                version: None,
            });
        }
    }
    pool.close().await;
    Ok(Some(SplitList {
        splits,
        growing: false,
        cut: Some(format!("split_key_width = {width}")),
    }))
}

/// The name of the table's key column when it is one integer column.
pub(super) fn integer_key<'a>(
    columns: &'a [super::table::Column],
    pk: &[usize],
) -> Option<&'a str> {
    match pk {
        [k] if matches!(columns[*k].pg.as_str(), "smallint" | "integer" | "bigint") => {
            Some(&columns[*k].name)
        }
        _ => None,
    }
}

/// Keys `LO <= k < HI` of one integer column; a bound left out is open.
pub(super) type Bounds = (Option<i64>, Option<i64>);

/// The table and key range a split id names: `SCHEMA.TABLE@LO..HI`, or the whole
/// table.
pub(super) fn parse(id: &str) -> (&str, Option<Bounds>) {
    let Some((table, range)) = id.rsplit_once('@') else {
        return (id, None);
    };
    let bound = |b: &str| match b {
        "" => Some(None),
        b => b.parse().ok().map(Some),
    };
    let bounds = range
        .split_once("..")
        .and_then(|(lo, hi)| Some((bound(lo)?, bound(hi)?)));
    match bounds {
        Some(b) => (table, Some(b)),
        None => (id, None),
    }
}

/// The split id of `table` (qualified) limited to `bounds`.
pub(super) fn id(table: &str, bounds: Option<Bounds>) -> String {
    let text = |b: Option<i64>| b.map(|b| b.to_string()).unwrap_or_default();
    match bounds {
        Some((lo, hi)) => format!("{table}@{}..{}", text(lo), text(hi)),
        None => table.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{id, parse};

    #[test]
    fn a_split_id_names_its_table_and_key_range() {
        assert_eq!(
            parse("public.t@-10..0"),
            ("public.t", Some((Some(-10), Some(0))))
        );
        assert_eq!(parse("public.t@10.."), ("public.t", Some((Some(10), None))));
        assert_eq!(parse("public.t"), ("public.t", None));
        assert_eq!(parse("public.a@b"), ("public.a@b", None));
        for split in ["public.t@-10..0", "public.t@..5", "public.t"] {
            let (table, bounds) = parse(split);
            assert_eq!(id(table, bounds), split);
        }
    }
}
