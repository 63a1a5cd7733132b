//! Arrow <-> SQLite types.
//!
//! SQLite stores five storage classes; the declared column type carries the rest, so
//! a table the sink creates reads back with the same Arrow types:
//!
//! | Arrow                         | declared type      | stored as                  |
//! |-------------------------------|--------------------|----------------------------|
//! | Boolean                       | `BOOLEAN`          | integer 0/1                |
//! | Int8 / Int16 / Int32 / Int64  | `TINYINT` / `SMALLINT` / `INT` / `BIGINT` | integer |
//! | UInt8 / UInt16 / UInt32       | `UINT8` / `UINT16` / `UINT32` | integer         |
//! | UInt64                        | `UINT64`           | integer (error above i64::MAX) |
//! | Float32 / Float64             | `FLOAT` / `DOUBLE` | real                       |
//! | Utf8                          | `TEXT`             | text                       |
//! | Binary                        | `BLOB`             | blob                       |
//! | Decimal128(p,s)               | `DECIMAL TEXT(p,s)` | text (exact; TEXT affinity) |
//! | Date32                        | `DATE`             | text `YYYY-MM-DD`          |
//! | Time64(µs)                    | `TIME`             | text                       |
//! | Timestamp(unit)               | `TIMESTAMP(0/3/6/9)` | text ISO 8601, all the unit's fraction digits (sorts as time) |
//! | Timestamp(unit, zone)         | `TIMESTAMPTZ(0/3/6/9)` | the same in UTC, `Z`; reads back with zone UTC |
//! | List, Struct                  | `JSON`             | text (JSON); reads back as Utf8 |
//!
//! Declared types of tables not made by Sluice map by SQLite's affinity rules
//! (`INTEGER` -> Int64, `REAL` -> Float64, `VARCHAR(n)` -> Utf8, `NUMERIC(p,s)` -> Decimal128).
//! A column with no declared type, or one that maps to nothing, is an error naming it.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, TimeUnit};
use connector_api::{Error, Result, Value};

/// A value ready to bind to a statement.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// INTEGER storage.
    Int(i64),
    /// REAL storage.
    Real(f64),
    /// TEXT storage.
    Text(String),
    /// BLOB storage.
    Blob(Vec<u8>),
}

/// The declared type the sink gives a column of `dt`.
pub fn declared_type(column: &str, dt: &DataType) -> Result<String> {
    Ok(match dt {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "UINT8".into(),
        DataType::UInt16 => "UINT16".into(),
        DataType::UInt32 => "UINT32".into(),
        DataType::UInt64 => "UINT64".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BLOB".into(),
        // "TEXT" in the name gives the column TEXT affinity: SQLite would turn numeric
        // text into a lossy REAL under the NUMERIC affinity of a plain DECIMAL
        DataType::Decimal128(p, s) => format!("DECIMAL TEXT({p},{s})"),
        DataType::Date32 => "DATE".into(),
        DataType::Time64(TimeUnit::Microsecond) => "TIME".into(),
        DataType::Timestamp(unit, None) => {
            format!("TIMESTAMP({})", sluice_formats::unit_digits(*unit))
        }
        DataType::Timestamp(unit, Some(_)) => {
            format!("TIMESTAMPTZ({})", sluice_formats::unit_digits(*unit))
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) => "JSON".into(),
        DataType::Null => "TEXT".into(),
        other => {
            return Err(Error::schema(format!(
                "column \"{column}\": type {} has no SQLite mapping",
                connector_api::type_name(other)
            )))
        }
    })
}

/// The Arrow type of a declared SQLite type; `None` when it maps to nothing.
pub fn arrow_type(declared: &str) -> Option<DataType> {
    let d = declared.trim().to_ascii_uppercase();
    let (name, args) = match d.find('(') {
        Some(i) => (d[..i].trim(), d[i + 1..].trim_end_matches(')').trim()),
        None => (d.as_str(), ""),
    };
    let digits_unit = |a: &str| match a {
        "0" => Some(TimeUnit::Second),
        "3" => Some(TimeUnit::Millisecond),
        "" | "6" => Some(TimeUnit::Microsecond),
        "9" => Some(TimeUnit::Nanosecond),
        _ => None,
    };
    Some(match name {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" => DataType::Int8,
        "SMALLINT" => DataType::Int16,
        "INT" | "MEDIUMINT" => DataType::Int32,
        "BIGINT" | "INTEGER" | "INT8" => DataType::Int64,
        "UINT8" => DataType::UInt8,
        "UINT16" => DataType::UInt16,
        "UINT32" => DataType::UInt32,
        "UINT64" => DataType::UInt64,
        "FLOAT" => DataType::Float32,
        "DOUBLE" | "REAL" | "DOUBLE PRECISION" => DataType::Float64,
        "TEXT" | "VARCHAR" | "CHAR" | "CLOB" | "NVARCHAR" | "NCHAR" | "STRING" | "JSON"
        | "UUID" => DataType::Utf8,
        "BLOB" => DataType::Binary,
        "DECIMAL" | "NUMERIC" | "DECIMAL TEXT" => {
            let mut parts = args.split(',').map(|p| p.trim().parse::<i64>());
            match (parts.next(), parts.next()) {
                (Some(Ok(p)), Some(Ok(s))) if (1..=38).contains(&p) && (0..=p).contains(&s) => {
                    DataType::Decimal128(p as u8, s as i8)
                }
                (Some(Ok(p)), None) if (1..=38).contains(&p) => DataType::Decimal128(p as u8, 0),
                _ => return None,
            }
        }
        "DATE" => DataType::Date32,
        "TIME" => DataType::Time64(TimeUnit::Microsecond),
        "TIMESTAMP" | "DATETIME" => DataType::Timestamp(digits_unit(args)?, None),
        "TIMESTAMPTZ" => {
            DataType::Timestamp(digits_unit(args)?, Some(connector_api::types::UTC.into()))
        }
        _ => return None,
    })
}

/// The values of one column, ready to bind.
pub fn column_values(name: &str, array: &ArrayRef) -> Result<Vec<SqlValue>> {
    let n = array.len();
    let err =
        |e: arrow_schema::ArrowError| Error::data(format!("column \"{name}\"")).with_source(e);
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let out = match array.data_type() {
        DataType::Null => vec![SqlValue::Null; n],
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..n)
                .map(|i| {
                    if a.is_null(i) {
                        SqlValue::Null
                    } else {
                        SqlValue::Int(a.value(i) as i64)
                    }
                })
                .collect()
        }
        DataType::UInt64 => {
            let a = array.as_primitive::<arrow_array::types::UInt64Type>();
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(if a.is_null(i) {
                    SqlValue::Null
                } else {
                    let x = a.value(i);
                    SqlValue::Int(i64::try_from(x).map_err(|_| {
                        Error::data(format!(
                            "column \"{name}\": {x} does not fit SQLite's 64-bit signed integer"
                        ))
                    })?)
                });
            }
            v
        }
        dt if dt.is_integer() => {
            let c = cast_with_options(array, &DataType::Int64, &strict).map_err(err)?;
            let a = c.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| {
                    if a.is_null(i) {
                        SqlValue::Null
                    } else {
                        SqlValue::Int(a.value(i))
                    }
                })
                .collect()
        }
        DataType::Float32 | DataType::Float64 | DataType::Float16 => {
            let c = cast_with_options(array, &DataType::Float64, &strict).map_err(err)?;
            let a = c.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| {
                    if a.is_null(i) {
                        SqlValue::Null
                    } else {
                        SqlValue::Real(a.value(i))
                    }
                })
                .collect()
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let c = cast_with_options(array, &DataType::Binary, &strict).map_err(err)?;
            let a = c.as_binary::<i32>();
            (0..n)
                .map(|i| {
                    if a.is_null(i) {
                        SqlValue::Null
                    } else {
                        SqlValue::Blob(a.value(i).to_vec())
                    }
                })
                .collect()
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) => {
            sluice_formats::json_texts(name, array)?
                .into_iter()
                .map(|v| v.map_or(SqlValue::Null, SqlValue::Text))
                .collect()
        }
        DataType::Timestamp(unit, Some(_)) => {
            // store instants in UTC
            let utc = DataType::Timestamp(*unit, Some(connector_api::types::UTC.into()));
            let c = cast_with_options(array, &utc, &strict).map_err(err)?;
            timestamp_texts(&c, unit, "Z").map_err(err)?
        }
        DataType::Timestamp(unit, None) => timestamp_texts(array, unit, "").map_err(err)?,
        _ => text_values(array, &strict).map_err(err)?,
    };
    Ok(out)
}

/// Timestamps as ISO 8601 text with all the fraction digits of their unit, always, so
/// that the text sorts as the times do (`10:00:00.000Z` before `10:00:00.500Z`; with
/// the digits left out when zero, `10:00:00Z` would sort after it).
fn timestamp_texts(
    array: &ArrayRef,
    unit: &TimeUnit,
    zone: &str,
) -> std::result::Result<Vec<SqlValue>, arrow_schema::ArrowError> {
    let fraction = match unit {
        TimeUnit::Second => "",
        TimeUnit::Millisecond => "%.3f",
        TimeUnit::Microsecond => "%.6f",
        TimeUnit::Nanosecond => "%.9f",
    };
    let format = format!("%Y-%m-%dT%H:%M:%S{fraction}{zone}");
    let options = FormatOptions::new()
        .with_timestamp_format(Some(&format))
        .with_timestamp_tz_format(Some(&format));
    let texts = ArrayFormatter::try_new(array.as_ref(), &options)?;
    Ok((0..array.len())
        .map(|i| match array.is_null(i) {
            true => SqlValue::Null,
            false => SqlValue::Text(texts.value(i).to_string()),
        })
        .collect())
}

fn text_values(
    array: &ArrayRef,
    opts: &CastOptions,
) -> std::result::Result<Vec<SqlValue>, arrow_schema::ArrowError> {
    let c = cast_with_options(array, &DataType::Utf8, opts)?;
    let a = c.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| {
            if a.is_null(i) {
                SqlValue::Null
            } else {
                SqlValue::Text(a.value(i).to_string())
            }
        })
        .collect())
}

/// Reads one column of a row as a [`Value`] by its storage class.
pub fn read_value(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Value> {
    use sqlx::{Row, TypeInfo, ValueRef};
    let raw = row
        .try_get_raw(i)
        .map_err(|e| Error::internal("sqlite row").with_source(e))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let class = raw.type_info().name().to_string();
    let get_err = |e: sqlx::Error| Error::data(format!("sqlite column {i}")).with_source(e);
    Ok(match class.as_str() {
        "INTEGER" => Value::Int(row.try_get::<i64, _>(i).map_err(get_err)?),
        "REAL" => Value::Float(row.try_get::<f64, _>(i).map_err(get_err)?),
        "BLOB" => Value::Bytes(row.try_get::<Vec<u8>, _>(i).map_err(get_err)?),
        _ => Value::Str(row.try_get::<String, _>(i).map_err(get_err)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_stored_as_text_that_sorts_as_the_times_do() {
        use arrow_array::TimestampMillisecondArray;
        let times = TimestampMillisecondArray::from(vec![Some(500), Some(0), None, Some(-1)])
            .with_timezone("+02:00");
        let array: ArrayRef = std::sync::Arc::new(times);
        let texts: Vec<String> = column_values("t", &array)
            .unwrap()
            .into_iter()
            .map(|v| match v {
                SqlValue::Text(t) => t,
                SqlValue::Null => "NULL".into(),
                _ => panic!("not text"),
            })
            .collect();
        assert_eq!(
            texts,
            [
                "1970-01-01T00:00:00.500Z",
                "1970-01-01T00:00:00.000Z",
                "NULL",
                "1969-12-31T23:59:59.999Z"
            ]
        );
    }

    #[test]
    fn declared_types_map_back_to_the_same_arrow_types() {
        for dt in [
            DataType::Boolean,
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt32,
            DataType::Float32,
            DataType::Float64,
            DataType::Utf8,
            DataType::Binary,
            DataType::Decimal128(12, 2),
            DataType::Date32,
            DataType::Time64(TimeUnit::Microsecond),
            DataType::Timestamp(TimeUnit::Millisecond, None),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ] {
            let decl = declared_type("c", &dt).unwrap();
            assert_eq!(arrow_type(&decl), Some(dt.clone()), "{decl}");
        }
        assert_eq!(arrow_type("VARCHAR(20)"), Some(DataType::Utf8));
        assert_eq!(arrow_type("GEOMETRY"), None);
    }
}
