//! MySQL/MariaDB types <-> Arrow, both ways, without loss.
//!
//! | MySQL / MariaDB                  | Arrow                                  |
//! |----------------------------------|----------------------------------------|
//! | TINYINT … BIGINT [UNSIGNED]      | Int8 … Int64, UInt8 … UInt64 (MEDIUMINT: 32 bits) |
//! | DECIMAL(p,s)                     | Decimal128(p,s), Decimal256(p,s) above 38 digits |
//! | FLOAT, DOUBLE                    | Float32, Float64                       |
//! | DATE                             | Date32 (zero dates: `zero_dates`)      |
//! | DATETIME(n)                      | Timestamp(µs) without zone             |
//! | TIMESTAMP(n)                     | Timestamp(µs, "UTC")                   |
//! | TIME(n) (negative, past 24 h)    | Duration(µs)                           |
//! | YEAR                             | Int16                                  |
//! | BIT(1), BIT(n)                   | Boolean, Binary (big-endian bytes)     |
//! | CHAR, VARCHAR, TEXT, ENUM, SET   | Utf8 (SET as its comma list)           |
//! | JSON                             | Utf8 (MariaDB's JSON is LONGTEXT)      |
//! | BINARY, VARBINARY, BLOB          | Binary                                 |
//! | GEOMETRY                         | Binary: WKB, EWKB when the SRID is not 0 |
//!
//! The sink creates: Boolean as BIT(1), integers as the same width, decimals as
//! DECIMAL(p,s) (p ≤ 65, s ≤ 30), text as LONGTEXT (VARCHAR(768) in a key), bytes as
//! LONGBLOB (VARBINARY(3072) in a key), dates as DATE, timestamps as DATETIME(6)
//! (with a zone: in UTC; MySQL's TIMESTAMP ends in 2038), times and durations as
//! TIME(6), lists, structs and maps as JSON.

use arrow_schema::{DataType, TimeUnit};
use connector_api::{Error, Result};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::Column;

/// The `binary` character set: the bytes of BINARY, VARBINARY, BLOB and BIT.
const BINARY_CHARSET: u16 = 63;

/// What a column holds, as the source decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An integer of `bits` bits (MEDIUMINT: 24, read into 32).
    Int {
        /// 8, 16, 24, 32 or 64.
        bits: u8,
        /// UNSIGNED.
        unsigned: bool,
    },
    /// DECIMAL(precision, scale).
    Decimal {
        /// Digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// FLOAT.
    Float,
    /// DOUBLE.
    Double,
    /// DATE.
    Date,
    /// DATETIME: a wall-clock time without zone.
    DateTime,
    /// TIMESTAMP: an instant, read in UTC.
    Timestamp,
    /// TIME: a signed span.
    Time,
    /// YEAR.
    Year,
    /// BIT(width).
    Bit {
        /// Bits.
        width: u32,
    },
    /// Text of any character set but `binary` (also ENUM, SET, JSON).
    Text,
    /// Bytes.
    Binary,
    /// GEOMETRY, read as WKB.
    Geometry,
}

impl Kind {
    /// The kind of a result column, from the metadata the server sends with it.
    pub fn of(column: &Column) -> Result<Kind> {
        let flags = column.flags();
        let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
        let enum_or_set = flags.intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG);
        let binary = column.character_set() == BINARY_CHARSET && !enum_or_set;
        let scale = column.decimals();
        // a decimal's display length counts the sign and the point
        let len = column.column_length() as i64 - i64::from(scale > 0) - i64::from(!unsigned);
        let precision = u8::try_from(len.clamp(1, 65)).unwrap_or(65);
        let digits = (precision.max(scale).max(1), scale as i8);
        let ty = column.column_type();
        Kind::of_type(ty, unsigned, binary, digits, column.column_length()).ok_or_else(|| {
            Error::schema(format!(
                "column \"{}\" has type {ty:?}, which has no Arrow mapping",
                column.name_str()
            ))
        })
    }

    /// The kind of a column of server type `ty` (a query's or the binlog's):
    /// `unsigned`, `binary` (text and bytes in the `binary` character set), `digits`
    /// (a decimal's precision and scale), `bits` (a BIT's width). None: no Arrow
    /// mapping.
    pub fn of_type(
        ty: ColumnType,
        unsigned: bool,
        binary: bool,
        digits: (u8, i8),
        bits: u32,
    ) -> Option<Kind> {
        use ColumnType::*;
        Some(match ty {
            MYSQL_TYPE_TINY => Kind::Int { bits: 8, unsigned },
            MYSQL_TYPE_SHORT => Kind::Int { bits: 16, unsigned },
            MYSQL_TYPE_INT24 => Kind::Int { bits: 24, unsigned },
            MYSQL_TYPE_LONG => Kind::Int { bits: 32, unsigned },
            MYSQL_TYPE_LONGLONG => Kind::Int { bits: 64, unsigned },
            MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Kind::Decimal {
                precision: digits.0,
                scale: digits.1,
            },
            MYSQL_TYPE_FLOAT => Kind::Float,
            MYSQL_TYPE_DOUBLE => Kind::Double,
            MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Kind::Date,
            MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Kind::DateTime,
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Kind::Timestamp,
            MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => Kind::Time,
            MYSQL_TYPE_YEAR => Kind::Year,
            MYSQL_TYPE_BIT => Kind::Bit { width: bits },
            MYSQL_TYPE_JSON | MYSQL_TYPE_ENUM | MYSQL_TYPE_SET => Kind::Text,
            MYSQL_TYPE_GEOMETRY => Kind::Geometry,
            MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_STRING
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_BLOB => match binary {
                true => Kind::Binary,
                false => Kind::Text,
            },
            _ => return None,
        })
    }

    /// The Arrow type values of this kind are read as.
    pub fn arrow(self) -> DataType {
        match self {
            Kind::Int {
                bits: 8,
                unsigned: false,
            } => DataType::Int8,
            Kind::Int {
                bits: 8,
                unsigned: true,
            } => DataType::UInt8,
            Kind::Int {
                bits: 16,
                unsigned: false,
            } => DataType::Int16,
            Kind::Int {
                bits: 16,
                unsigned: true,
            } => DataType::UInt16,
            Kind::Int {
                bits: 24 | 32,
                unsigned: false,
            } => DataType::Int32,
            Kind::Int {
                bits: 24 | 32,
                unsigned: true,
            } => DataType::UInt32,
            Kind::Int {
                unsigned: false, ..
            } => DataType::Int64,
            Kind::Int { unsigned: true, .. } => DataType::UInt64,
            Kind::Decimal { precision, scale } if precision <= 38 => {
                DataType::Decimal128(precision, scale)
            }
            Kind::Decimal { precision, scale } => DataType::Decimal256(precision, scale),
            Kind::Float => DataType::Float32,
            Kind::Double => DataType::Float64,
            Kind::Date => DataType::Date32,
            Kind::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Time => DataType::Duration(TimeUnit::Microsecond),
            Kind::Year => DataType::Int16,
            Kind::Bit { width: 1 } => DataType::Boolean,
            Kind::Bit { .. } | Kind::Binary | Kind::Geometry => DataType::Binary,
            Kind::Text => DataType::Utf8,
        }
    }
}

/// `(name, kind, nullable)` of each result column.
pub fn describe(columns: &[Column]) -> Result<Vec<(String, Kind, bool)>> {
    columns
        .iter()
        .map(|c| {
            let nullable = !c.flags().contains(ColumnFlags::NOT_NULL_FLAG);
            Ok((c.name_str().to_string(), Kind::of(c)?, nullable))
        })
        .collect()
}

/// Text columns in a created table's key: InnoDB keys hold at most 3072 bytes, 768
/// characters of utf8mb4.
const KEY_TEXT: &str = "VARCHAR(768)";
/// Byte columns in a created table's key.
const KEY_BYTES: &str = "VARBINARY(3072)";

/// The MySQL type a created table gives a column of Arrow type `dt`; `key` when the
/// column is part of the primary key.
pub fn mysql_type(column: &str, dt: &DataType, key: bool) -> Result<String> {
    Ok(match dt {
        DataType::Boolean => "BIT(1)".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            if *p > 65 || *s > 30 || *s < 0 {
                return Err(Error::schema(format!(
                    "column \"{column}\" is decimal({p},{s}), but MySQL's DECIMAL holds at most 65 digits, 30 after the point"
                )));
            }
            format!("DECIMAL({p},{s})")
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if key => KEY_TEXT.into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "LONGTEXT".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_)
            if key =>
        {
            KEY_BYTES.into()
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "LONGBLOB".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(..) => "DATETIME(6)".into(),
        DataType::Time32(_) | DataType::Time64(_) | DataType::Duration(_) => "TIME(6)".into(),
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..) => "JSON".into(),
        other => {
            return Err(Error::schema(format!(
                "column \"{column}\" has Arrow type {other}, which has no MySQL type here"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_digits() {
        let k = Kind::Decimal {
            precision: 65,
            scale: 30,
        };
        assert_eq!(k.arrow(), DataType::Decimal256(65, 30));
        assert_eq!(
            mysql_type("d", &DataType::Decimal256(65, 30), false).unwrap(),
            "DECIMAL(65,30)"
        );
        assert!(mysql_type("d", &DataType::Decimal256(76, 10), false).is_err());
    }

    #[test]
    fn keys_get_indexable_types() {
        assert_eq!(mysql_type("k", &DataType::Utf8, true).unwrap(), KEY_TEXT);
        assert_eq!(mysql_type("k", &DataType::Utf8, false).unwrap(), "LONGTEXT");
    }
}
