//! One column value on its way into Arrow, whichever form the server sent it in: the
//! binary send format of a `COPY ... (FORMAT binary)` ([`binary`]: the snapshot and
//! incremental reads) or the text output of a change streamed by pgoutput ([`text`]:
//! `cdc`). Both decode into the same [`Value`] and are appended by the same code, so a
//! column reads the same in a snapshot and in its changes: numerics exact into
//! Decimal128 (more fraction digits than the scale, more digits than the precision, NaN
//! and infinities refused, never rounded), dates and timestamps to the microsecond,
//! one-dimensional arrays.

pub mod binary;
pub mod render;
pub mod text;

use std::borrow::Cow;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_schema::{DataType, TimeUnit};

/// How a column's value is read.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Bool,
    I16,
    I32,
    I64,
    F32,
    F64,
    Text,
    /// uuid: 16 bytes in binary, read as its text form
    Uuid,
    /// jsonb: in binary a version byte, then the JSON text
    Jsonb,
    Bytes,
    Date,
    /// time (microseconds of the day)
    Time,
    /// timestamp and timestamptz (microseconds since 1970-01-01 UTC)
    Timestamp,
    Numeric {
        precision: u8,
        scale: i8,
    },
    List(Box<Kind>),
}

/// The PostgreSQL type name without its modifiers (`numeric(12,2)` -> `numeric`).
pub fn base(pg: &str) -> &str {
    pg.split('(').next().unwrap_or(pg).trim()
}

/// How each field of `fields` decodes, given the PostgreSQL type of each (as
/// `format_type()` writes it; missing ones count as none).
pub fn kinds<'a>(
    fields: &arrow_schema::Fields,
    pg_types: impl IntoIterator<Item = &'a str>,
) -> connector_api::Result<Vec<Kind>> {
    fields
        .iter()
        .zip(pg_types.into_iter().chain(std::iter::repeat("")))
        .map(|(f, pg)| {
            Kind::of_column(f.data_type(), pg).ok_or_else(|| {
                connector_api::Error::schema(format!(
                    "column \"{}\": {} has no PostgreSQL reading",
                    f.name(),
                    f.data_type()
                ))
            })
        })
        .collect()
}

impl Kind {
    /// How a column of PostgreSQL type `pg` read as `dt` decodes.
    pub fn of_column(dt: &DataType, pg: &str) -> Option<Kind> {
        match (dt, base(pg)) {
            (DataType::Utf8, "uuid") => Some(Kind::Uuid),
            (DataType::Utf8, "jsonb") => Some(Kind::Jsonb),
            _ => Kind::of(dt),
        }
    }

    fn of(dt: &DataType) -> Option<Kind> {
        Some(match dt {
            DataType::Boolean => Kind::Bool,
            DataType::Int16 => Kind::I16,
            DataType::Int32 => Kind::I32,
            DataType::Int64 => Kind::I64,
            DataType::Float32 => Kind::F32,
            DataType::Float64 => Kind::F64,
            DataType::Utf8 => Kind::Text,
            DataType::Binary => Kind::Bytes,
            DataType::Date32 => Kind::Date,
            DataType::Time64(TimeUnit::Microsecond) => Kind::Time,
            DataType::Timestamp(TimeUnit::Microsecond, _) => Kind::Timestamp,
            DataType::Decimal128(p, s) => Kind::Numeric {
                precision: *p,
                scale: *s,
            },
            DataType::List(f) => Kind::List(Box::new(Kind::of(f.data_type())?)),
            _ => return None,
        })
    }
}

/// A value taken from a tuple, checked, before it is appended: a row that fails
/// halfway leaves nothing behind in the builders.
#[derive(Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(Cow<'a, str>),
    Uuid([u8; 16]),
    Bytes(Cow<'a, [u8]>),
    Decimal(i128),
    List(Vec<Value<'a>>),
}

/// A uuid's text form as PostgreSQL writes it: lowercase hex, 8-4-4-4-12.
fn uuid_text(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    s
}

macro_rules! builder {
    ($b:expr, $t:ty) => {
        $b.as_any_mut()
            .downcast_mut::<$t>()
            .expect("builder made for this kind")
    };
}

/// Appends `v`, decoded for `kind`, to `b`, a builder made (`make_builder`) for the
/// column's Arrow type.
pub fn append(b: &mut dyn ArrayBuilder, kind: &Kind, v: &Value) {
    match (kind, v) {
        (Kind::Bool, Value::Bool(x)) => builder!(b, BooleanBuilder).append_value(*x),
        (Kind::I16, Value::I16(x)) => builder!(b, Int16Builder).append_value(*x),
        (Kind::I32, Value::I32(x)) => builder!(b, Int32Builder).append_value(*x),
        (Kind::I64, Value::I64(x)) => builder!(b, Int64Builder).append_value(*x),
        (Kind::F32, Value::F32(x)) => builder!(b, Float32Builder).append_value(*x),
        (Kind::F64, Value::F64(x)) => builder!(b, Float64Builder).append_value(*x),
        (Kind::Text | Kind::Jsonb | Kind::Uuid, Value::Text(x)) => {
            builder!(b, StringBuilder).append_value(x)
        }
        (Kind::Uuid, Value::Uuid(x)) => builder!(b, StringBuilder).append_value(uuid_text(x)),
        (Kind::Bytes, Value::Bytes(x)) => builder!(b, BinaryBuilder).append_value(x),
        (Kind::Date, Value::I32(x)) => builder!(b, Date32Builder).append_value(*x),
        (Kind::Time, Value::I64(x)) => builder!(b, Time64MicrosecondBuilder).append_value(*x),
        (Kind::Timestamp, Value::I64(x)) => {
            builder!(b, TimestampMicrosecondBuilder).append_value(*x)
        }
        (Kind::Numeric { .. }, Value::Decimal(x)) => {
            builder!(b, Decimal128Builder).append_value(*x)
        }
        (Kind::List(item), Value::List(items)) => {
            let list = builder!(b, ListBuilder<Box<dyn ArrayBuilder>>);
            for it in items {
                append(list.values().as_mut(), item, it);
            }
            list.append(true);
        }
        (kind, Value::Null) => append_null(b, kind),
        (kind, v) => unreachable!("a {v:?} decoded for a {kind:?} column"),
    }
}

/// Appends a null to `b`, a builder made for `kind`'s column.
pub fn append_null(b: &mut dyn ArrayBuilder, kind: &Kind) {
    match kind {
        Kind::Bool => builder!(b, BooleanBuilder).append_null(),
        Kind::I16 => builder!(b, Int16Builder).append_null(),
        Kind::I32 => builder!(b, Int32Builder).append_null(),
        Kind::I64 => builder!(b, Int64Builder).append_null(),
        Kind::F32 => builder!(b, Float32Builder).append_null(),
        Kind::F64 => builder!(b, Float64Builder).append_null(),
        Kind::Text | Kind::Uuid | Kind::Jsonb => builder!(b, StringBuilder).append_null(),
        Kind::Bytes => builder!(b, BinaryBuilder).append_null(),
        Kind::Date => builder!(b, Date32Builder).append_null(),
        Kind::Time => builder!(b, Time64MicrosecondBuilder).append_null(),
        Kind::Timestamp => builder!(b, TimestampMicrosecondBuilder).append_null(),
        Kind::Numeric { .. } => builder!(b, Decimal128Builder).append_null(),
        Kind::List(_) => builder!(b, ListBuilder<Box<dyn ArrayBuilder>>).append(false),
    }
}
