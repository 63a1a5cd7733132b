//! Splits for runtimes that share a `snapshot` (`[checkpoint] store = "postgres"`):
//! each table is one, and with `split_key_width` a table with a single integer
//! primary key is cut into key ranges of that width, `SCHEMA.TABLE@LO..HI` (keys
//! `LO <= k < HI`), so one large table is read by several runtimes at once. Range
//! bounds are multiples of the width: every runtime, listing at any time, names the
//! same ranges, and rows with keys beyond the last range listed fall into new ones.

use connector_api::{Error, Result, SplitList};

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
    let mut ids = Vec::new();
    let Some(width) = config.split_key_width else {
        ids.extend(config.tables.iter().map(|t| format!("{schema}.{t}")));
        return Ok(Some(SplitList {
            ids,
            growing: false,
        }));
    };
    let pool = connect_pool(&config.url, 1, "sluice split listing").await?;
    for table in &config.tables {
        let (columns, _, pk) = describe(&pool, schema, table).await?;
        let integer = match pk.as_slice() {
            [k] if matches!(columns[*k].pg.as_str(), "smallint" | "integer" | "bigint") => {
                Some(&columns[*k].name)
            }
            _ => None,
        };
        let Some(key) = integer else {
            tracing::info!(table = %format!("{schema}.{table}"), "not cut into key ranges: its primary key is not one integer column");
            ids.push(format!("{schema}.{table}"));
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
        let (Some(lo), Some(hi)) = (lo, hi) else {
            ids.push(format!("{schema}.{table}"));
            continue;
        };
        let (first, last) = (lo.div_euclid(width), hi.div_euclid(width));
        if last - first >= MAX_RANGES {
            return Err(Error::config(format!(
                "table \"{schema}\".\"{table}\": keys {lo}..{hi} make more than {MAX_RANGES} ranges of split_key_width {width}; make it larger"
            ))
            .with_field("split_key_width"));
        }
        for n in first..=last {
            ids.push(format!(
                "{schema}.{table}@{}..{}",
                n * width,
                (n + 1) * width
            ));
        }
    }
    pool.close().await;
    Ok(Some(SplitList {
        ids,
        growing: false,
    }))
}

/// The table and key range a split id names: `SCHEMA.TABLE@LO..HI`, or the whole
/// table.
pub(super) fn parse(id: &str) -> (&str, Option<(i64, i64)>) {
    let Some((table, range)) = id.rsplit_once('@') else {
        return (id, None);
    };
    let bounds = range
        .split_once("..")
        .and_then(|(lo, hi)| Some((lo.parse().ok()?, hi.parse().ok()?)));
    match bounds {
        Some(b) => (table, Some(b)),
        None => (id, None),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_split_id_names_its_table_and_key_range() {
        assert_eq!(parse("public.t@-10..0"), ("public.t", Some((-10, 0))));
        assert_eq!(parse("public.t"), ("public.t", None));
        assert_eq!(parse("public.a@b"), ("public.a@b", None));
    }
}
