//! Arrow <-> PostgreSQL types (Arrow values in the COPY formats: the `copy` module).
//!
//! | Arrow | PostgreSQL (created by the sink) |
//! |---|---|
//! | Boolean | boolean |
//! | Int8, Int16 / Int32 / Int64 | smallint / integer / bigint |
//! | UInt8, UInt16 / UInt32 / UInt64 | integer / bigint / numeric(20,0) |
//! | Float32 / Float64 | real / double precision |
//! | Utf8 | text |
//! | Binary | bytea |
//! | Decimal128(p,s) | numeric(p,s) |
//! | Date32 | date |
//! | Time64(µs) | time |
//! | Timestamp(unit) | timestamp |
//! | Timestamp(unit, zone) | timestamptz |
//! | List<T> | T[] |
//! | Struct | jsonb |
//!
//! Reading a table's types back (for the drift policy): the inverse, with `uuid`,
//! `json`, `jsonb`, `character varying(n)`, enums and other types PostgreSQL reads
//! from text mapped to Utf8 (the sink writes them as text and PostgreSQL parses them);
//! unconstrained `numeric` maps to Decimal128(38, 10).

use std::sync::Arc;

use arrow_schema::{DataType, Field, TimeUnit};
use connector_api::{Error, Result};

/// The PostgreSQL type the sink creates for a column of `dt`.
pub fn pg_type(column: &str, dt: &DataType) -> Result<String> {
    Ok(match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 | DataType::UInt8 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Date32 => "date".into(),
        DataType::Time64(_) => "time".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("{}[]", pg_type(column, f.data_type())?)
        }
        DataType::Struct(_) => "jsonb".into(),
        other => {
            return Err(Error::schema(format!(
                "column \"{column}\": type {} has no PostgreSQL mapping",
                connector_api::type_name(other)
            )))
        }
    })
}

/// The type a column of PostgreSQL type `current` is altered to so that it holds
/// values of `to`, when that is a widening PostgreSQL does in place or by a rewrite
/// without changing a value: more digits of a `numeric` at the same scale, a wider
/// integer, `real` to `double precision`. None when the column holds them already or
/// the change is no widening.
pub fn widened(current: Option<&str>, name: &str, to: &DataType) -> Option<String> {
    let (current, wanted) = (current?, pg_type(name, to).ok()?);
    if let (Some(have), Some(want)) = (numeric_digits(current), numeric_digits(&wanted)) {
        return (want.0 > have.0 && want.1 == have.1).then_some(wanted);
    }
    const LADDERS: [&[&str]; 2] = [
        &["smallint", "integer", "bigint"],
        &["real", "double precision"],
    ];
    let wider = LADDERS.iter().any(|ladder| {
        let rank = |t: &str| ladder.iter().position(|l| *l == t);
        matches!((rank(current), rank(&wanted)), (Some(a), Some(b)) if b > a)
    });
    wider.then_some(wanted)
}

/// The precision and scale of `numeric(p,s)`.
fn numeric_digits(pg: &str) -> Option<(u32, u32)> {
    let (p, s) = pg
        .strip_prefix("numeric(")?
        .strip_suffix(')')?
        .split_once(',')?;
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}

/// The Arrow type of a PostgreSQL type as `format_type()` writes it.
pub fn arrow_type(pg: &str) -> DataType {
    let t = pg.trim();
    if let Some(inner) = t.strip_suffix("[]") {
        return DataType::List(Arc::new(Field::new("item", arrow_type(inner), true)));
    }
    let base = crate::value::base(t);
    match base {
        "boolean" => DataType::Boolean,
        "smallint" => DataType::Int16,
        "integer" => DataType::Int32,
        "bigint" => DataType::Int64,
        "real" => DataType::Float32,
        "double precision" => DataType::Float64,
        "bytea" => DataType::Binary,
        "date" => DataType::Date32,
        "numeric" => {
            let args: Vec<i64> = t
                .trim_start_matches(base)
                .trim_matches(|c| c == '(' || c == ')')
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            match args.as_slice() {
                [p, s] if (1..=38).contains(p) => DataType::Decimal128(*p as u8, *s as i8),
                [p] if (1..=38).contains(p) => DataType::Decimal128(*p as u8, 0),
                _ => DataType::Decimal128(38, 10),
            }
        }
        _ if t.starts_with("timestamp") && t.ends_with("with time zone") => DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(connector_api::types::UTC.into()),
        ),
        _ if t.starts_with("timestamp") => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ if t.starts_with("time") => DataType::Time64(TimeUnit::Microsecond),
        _ => DataType::Utf8,
    }
}

/// The Arrow type the source reads a column of PostgreSQL type `pg` (as
/// `format_type()` writes it; `typtype` from pg_type) as; `None` when it has none.
pub fn source_type(pg: &str, typtype: &str) -> Option<DataType> {
    if let Some(inner) = pg.strip_suffix("[]") {
        let item = source_type(inner, "b")?;
        return Some(DataType::List(Arc::new(Field::new("item", item, true))));
    }
    if typtype == "e" {
        return Some(DataType::Utf8); // enum labels
    }
    let base = crate::value::base(pg);
    let known_text = [
        "text",
        "character varying",
        "character",
        "\"char\"",
        "name",
        "uuid",
        "json",
        "jsonb",
        "interval",
        "inet",
        "cidr",
        "macaddr",
        "xml",
        "money",
        "citext",
    ];
    match base {
        "boolean" | "smallint" | "integer" | "bigint" | "real" | "double precision" | "bytea"
        | "date" | "numeric" => Some(arrow_type(pg)),
        // a time with zone keeps its offset as text (`04:05:06.789-08`): Arrow's times
        // have no zone, and converting to UTC would lose it
        _ if pg.starts_with("time ") || pg.starts_with("time(") => {
            match pg.ends_with("with time zone") {
                true => Some(DataType::Utf8),
                false => Some(arrow_type(pg)),
            }
        }
        _ if pg.starts_with("timestamp") || pg.starts_with("time") => Some(arrow_type(pg)),
        _ if known_text.contains(&base) => Some(DataType::Utf8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_types_map_back() {
        for dt in [
            DataType::Boolean,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Utf8,
            DataType::Binary,
            DataType::Decimal128(12, 2),
            DataType::Date32,
            DataType::Time64(TimeUnit::Microsecond),
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ] {
            let pg = pg_type("c", &dt).unwrap();
            let pg = match pg.as_str() {
                "timestamptz" => "timestamp with time zone".to_string(),
                "timestamp" => "timestamp without time zone".to_string(),
                "time" => "time without time zone".to_string(),
                _ => pg,
            };
            assert_eq!(arrow_type(&pg), dt, "{pg}");
        }
        assert_eq!(arrow_type("numeric"), DataType::Decimal128(38, 10));
        // the source keeps the offset of a time with zone, as text
        assert_eq!(
            source_type("time with time zone", "b"),
            Some(DataType::Utf8)
        );
        assert_eq!(
            source_type("time(3) with time zone", "b"),
            Some(DataType::Utf8)
        );
        assert_eq!(
            arrow_type("time(3) without time zone"),
            DataType::Time64(TimeUnit::Microsecond)
        );
        assert!(matches!(arrow_type("integer[]"), DataType::List(_)));
    }

    #[test]
    fn only_a_widening_alters_a_column() {
        let widen = |current, to| widened(Some(current), "c", &to);
        assert_eq!(widen("integer", DataType::Int64).as_deref(), Some("bigint"));
        assert_eq!(
            widen("smallint", DataType::Int32).as_deref(),
            Some("integer")
        );
        assert_eq!(
            widen("real", DataType::Float64).as_deref(),
            Some("double precision")
        );
        assert_eq!(
            widen("numeric(10,2)", DataType::Decimal128(12, 2)).as_deref(),
            Some("numeric(12,2)")
        );
        // narrower, another scale, unconstrained, or another family: left as it is
        assert_eq!(widen("bigint", DataType::Int32), None);
        assert_eq!(widen("numeric(10,2)", DataType::Decimal128(12, 3)), None);
        assert_eq!(widen("numeric", DataType::Decimal128(12, 2)), None);
        assert_eq!(widen("integer", DataType::Float64), None);
        assert_eq!(widened(None, "c", &DataType::Int64), None);
    }
}
