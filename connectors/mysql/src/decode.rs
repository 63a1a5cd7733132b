//! Rows of the binary protocol (prepared statements) into Arrow columns, one builder
//! per column, exactly: a value that does not fit its column is an error naming the
//! column and the row, never a changed value.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    DurationMicrosecondBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, Int8Builder, StringBuilder, TimestampMicrosecondBuilder, UInt16Builder,
    UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::types::{Decimal128Type, Decimal256Type};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{Error, Result};
use mysql_async::Value;
use sluice_formats::calendar::days_from_civil;

use crate::config::ZeroDates;
use crate::types::Kind;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// One column's builder.
enum Builder {
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    D128(Decimal128Builder, u8, i8),
    D256(Decimal256Builder, u8, i8),
    F32(Float32Builder),
    F64(Float64Builder),
    Date(Date32Builder),
    Micros(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Span(DurationMicrosecondBuilder),
    Bool(BooleanBuilder),
    Bytes(BinaryBuilder),
    Geometry(BinaryBuilder),
    Text(StringBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Builder {
        match kind {
            Kind::Int {
                bits: 8,
                unsigned: false,
            } => Builder::I8(Default::default()),
            Kind::Int {
                bits: 8,
                unsigned: true,
            } => Builder::U8(Default::default()),
            Kind::Int {
                bits: 16,
                unsigned: false,
            } => Builder::I16(Default::default()),
            Kind::Int {
                bits: 16,
                unsigned: true,
            } => Builder::U16(Default::default()),
            Kind::Int {
                bits: 24 | 32,
                unsigned: false,
            } => Builder::I32(Default::default()),
            Kind::Int {
                bits: 24 | 32,
                unsigned: true,
            } => Builder::U32(Default::default()),
            Kind::Int {
                unsigned: false, ..
            } => Builder::I64(Default::default()),
            Kind::Int { unsigned: true, .. } => Builder::U64(Default::default()),
            Kind::Decimal { precision, scale } if precision <= 38 => {
                Builder::D128(Decimal128Builder::new(), precision, scale)
            }
            Kind::Decimal { precision, scale } => {
                Builder::D256(Decimal256Builder::new(), precision, scale)
            }
            Kind::Float => Builder::F32(Default::default()),
            Kind::Double => Builder::F64(Default::default()),
            Kind::Date => Builder::Date(Default::default()),
            Kind::DateTime => Builder::Micros(Default::default(), None),
            Kind::Timestamp => Builder::Micros(Default::default(), Some("UTC".into())),
            Kind::Time => Builder::Span(Default::default()),
            Kind::Year => Builder::I16(Default::default()),
            Kind::Bit { width: 1 } => Builder::Bool(Default::default()),
            Kind::Bit { .. } | Kind::Binary => Builder::Bytes(Default::default()),
            Kind::Geometry => Builder::Geometry(Default::default()),
            Kind::Text => Builder::Text(Default::default()),
        }
    }

    fn push_null(&mut self) {
        match self {
            Builder::I8(b) => b.append_null(),
            Builder::I16(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::U8(b) => b.append_null(),
            Builder::U16(b) => b.append_null(),
            Builder::U32(b) => b.append_null(),
            Builder::U64(b) => b.append_null(),
            Builder::D128(b, ..) => b.append_null(),
            Builder::D256(b, ..) => b.append_null(),
            Builder::F32(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Micros(b, _) => b.append_null(),
            Builder::Span(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Bytes(b) | Builder::Geometry(b) => b.append_null(),
            Builder::Text(b) => b.append_null(),
        }
    }

    /// Appends `v`; Err(text) says why it does not fit.
    fn push(&mut self, v: Value, zero_dates: ZeroDates) -> std::result::Result<(), String> {
        if v == Value::NULL {
            self.push_null();
            return Ok(());
        }
        match self {
            Builder::I8(b) => b.append_value(int(&v)?),
            Builder::I16(b) => b.append_value(int(&v)?),
            Builder::I32(b) => b.append_value(int(&v)?),
            Builder::I64(b) => b.append_value(int(&v)?),
            Builder::U8(b) => b.append_value(int(&v)?),
            Builder::U16(b) => b.append_value(int(&v)?),
            Builder::U32(b) => b.append_value(int(&v)?),
            Builder::U64(b) => b.append_value(int(&v)?),
            Builder::D128(b, p, s) => b.append_value(
                arrow_cast::parse::parse_decimal::<Decimal128Type>(text(&v)?, *p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            Builder::D256(b, p, s) => b.append_value(
                arrow_cast::parse::parse_decimal::<Decimal256Type>(text(&v)?, *p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            Builder::F32(b) => match v {
                Value::Float(f) => b.append_value(f),
                other => return Err(format!("{other:?} is not a FLOAT")),
            },
            Builder::F64(b) => match v {
                Value::Double(f) => b.append_value(f),
                Value::Float(f) => b.append_value(f64::from(f)),
                other => return Err(format!("{other:?} is not a DOUBLE")),
            },
            Builder::Date(b) => match micros(&v)? {
                Some(us) => b.append_value((us / MICROS_PER_DAY) as i32),
                None if zero_dates == ZeroDates::Null => b.append_null(),
                None => return Err(zero_date()),
            },
            Builder::Micros(b, _) => match micros(&v)? {
                Some(us) => b.append_value(us),
                None if zero_dates == ZeroDates::Null => b.append_null(),
                None => return Err(zero_date()),
            },
            Builder::Span(b) => match v {
                Value::Time(neg, days, h, m, s, us) => {
                    let total = ((i64::from(days) * 24 + i64::from(h)) * 60 + i64::from(m)) * 60
                        + i64::from(s);
                    let span = total * 1_000_000 + i64::from(us);
                    b.append_value(if neg { -span } else { span });
                }
                other => return Err(format!("{other:?} is not a TIME")),
            },
            Builder::Bool(b) => match v {
                Value::Bytes(bytes) => b.append_value(bytes.iter().any(|&x| x != 0)),
                Value::Int(i) => b.append_value(i != 0),
                Value::UInt(i) => b.append_value(i != 0),
                other => return Err(format!("{other:?} is not a BIT")),
            },
            Builder::Bytes(b) => match v {
                Value::Bytes(bytes) => b.append_value(bytes),
                other => return Err(format!("{other:?} is not bytes")),
            },
            Builder::Geometry(b) => match v {
                Value::Bytes(bytes) => b.append_value(wkb(&bytes)?),
                other => return Err(format!("{other:?} is not a GEOMETRY")),
            },
            Builder::Text(b) => match v {
                Value::Bytes(bytes) => b.append_value(
                    std::str::from_utf8(&bytes).map_err(|e| format!("not UTF-8 ({e})"))?,
                ),
                other => return Err(format!("{other:?} is not text")),
            },
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(match self {
            Builder::I8(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::U8(b) => Arc::new(b.finish()),
            Builder::U16(b) => Arc::new(b.finish()),
            Builder::U32(b) => Arc::new(b.finish()),
            Builder::U64(b) => Arc::new(b.finish()),
            Builder::D128(b, p, s) => Arc::new(b.finish().with_precision_and_scale(*p, *s)?),
            Builder::D256(b, p, s) => Arc::new(b.finish().with_precision_and_scale(*p, *s)?),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Micros(b, zone) => Arc::new(b.finish().with_timezone_opt(zone.clone())),
            Builder::Span(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Bytes(b) | Builder::Geometry(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
        })
    }
}

fn zero_date() -> String {
    "a zero date, which no calendar holds (zero_dates = \"null\" reads it as NULL)".into()
}

/// An integer value into the column's width.
fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> std::result::Result<T, String> {
    match v {
        Value::Int(i) => T::try_from(*i).map_err(|_| format!("{i} is out of the column's range")),
        Value::UInt(u) => T::try_from(*u).map_err(|_| format!("{u} is out of the column's range")),
        other => Err(format!("{other:?} is not an integer")),
    }
}

fn text(v: &Value) -> std::result::Result<&str, String> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b).map_err(|e| format!("not UTF-8 ({e})")),
        other => Err(format!("{other:?} is not a decimal")),
    }
}

/// Microseconds since 1970-01-01 of a DATE/DATETIME/TIMESTAMP; None for a zero date
/// (month or day 0).
fn micros(v: &Value) -> std::result::Result<Option<i64>, String> {
    match *v {
        Value::Date(_, 0, ..) | Value::Date(_, _, 0, ..) => Ok(None),
        Value::Date(y, mo, d, h, mi, s, us) => {
            let days = days_from_civil(i64::from(y), i64::from(mo), i64::from(d));
            let secs = (i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(s);
            Ok(Some(
                days * MICROS_PER_DAY + secs * 1_000_000 + i64::from(us),
            ))
        }
        ref other => Err(format!("{other:?} is not a date")),
    }
}

/// MySQL's stored geometry (a 4-byte little-endian SRID, then WKB) as WKB; with an
/// SRID other than 0, as EWKB (the SRID flag in the type, the SRID after it), so the
/// SRID is kept.
fn wkb(stored: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if stored.len() < 9 {
        return Err(format!("{} bytes are no geometry", stored.len()));
    }
    let srid = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let body = &stored[4..];
    if srid == 0 {
        return Ok(body.to_vec());
    }
    let little = body[0] == 1;
    let raw = [body[1], body[2], body[3], body[4]];
    let kind = if little {
        u32::from_le_bytes(raw)
    } else {
        u32::from_be_bytes(raw)
    } | 0x2000_0000;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(body[0]);
    if little {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&srid.to_le_bytes());
    } else {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&srid.to_be_bytes());
    }
    out.extend_from_slice(&body[5..]);
    Ok(out)
}

/// Builds batches of a fixed list of columns from rows of values.
pub struct Decoder {
    schema: SchemaRef,
    builders: Vec<Builder>,
    zero_dates: ZeroDates,
}

impl Decoder {
    /// A decoder of columns `(name, kind, nullable)`.
    pub fn new(columns: &[(String, Kind, bool)], zero_dates: ZeroDates) -> Decoder {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, kind, nullable)| {
                // a zero date read as NULL makes any date column nullable
                let zero = zero_dates == ZeroDates::Null
                    && matches!(kind, Kind::Date | Kind::DateTime | Kind::Timestamp);
                Field::new(name, kind.arrow(), *nullable || zero)
            })
            .collect();
        Decoder {
            schema: Arc::new(Schema::new(fields)),
            builders: columns.iter().map(|(_, k, _)| Builder::new(*k)).collect(),
            zero_dates,
        }
    }

    /// The schema of the batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Appends one row; `at` names where it was read, for errors.
    pub fn push(&mut self, values: Vec<Value>, at: &dyn Fn() -> String) -> Result<()> {
        if values.len() != self.builders.len() {
            return Err(Error::internal(format!(
                "{}: a row has {} values for {} columns",
                at(),
                values.len(),
                self.builders.len()
            )));
        }
        for (i, (b, v)) in self.builders.iter_mut().zip(values).enumerate() {
            b.push(v, self.zero_dates).map_err(|why| {
                Error::data(format!(
                    "{}: column \"{}\": {why}",
                    at(),
                    self.schema.field(i).name()
                ))
            })?;
        }
        Ok(())
    }

    /// The rows pushed so far as a batch; the builders start over.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns = self
            .builders
            .iter_mut()
            .map(Builder::finish)
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_past_a_day_and_negative() {
        let mut b = Builder::new(Kind::Time);
        b.push(Value::Time(true, 1, 2, 3, 4, 5), ZeroDates::Error)
            .unwrap();
        let a = b.finish().unwrap();
        let a = a
            .as_any()
            .downcast_ref::<arrow_array::DurationMicrosecondArray>()
            .unwrap();
        assert_eq!(a.value(0), -((26 * 3600 + 3 * 60 + 4) * 1_000_000 + 5));
    }

    #[test]
    fn zero_dates_follow_the_policy() {
        let mut b = Builder::new(Kind::Date);
        assert!(b
            .push(Value::Date(0, 0, 0, 0, 0, 0, 0), ZeroDates::Error)
            .is_err());
        b.push(Value::Date(0, 0, 0, 0, 0, 0, 0), ZeroDates::Null)
            .unwrap();
        b.push(Value::Date(1970, 1, 2, 0, 0, 0, 0), ZeroDates::Null)
            .unwrap();
        let a = b.finish().unwrap();
        assert!(a.is_null(0));
        assert_eq!(
            a.as_any()
                .downcast_ref::<arrow_array::Date32Array>()
                .unwrap()
                .value(1),
            1
        );
    }

    #[test]
    fn geometry_keeps_its_srid() {
        // POINT(1 2), SRID 4326, little-endian
        let mut stored = 4326u32.to_le_bytes().to_vec();
        stored.push(1);
        stored.extend_from_slice(&1u32.to_le_bytes());
        stored.extend_from_slice(&1f64.to_le_bytes());
        stored.extend_from_slice(&2f64.to_le_bytes());
        let out = wkb(&stored).unwrap();
        assert_eq!(&out[1..5], &0x2000_0001u32.to_le_bytes());
        assert_eq!(&out[5..9], &4326u32.to_le_bytes());
        assert_eq!(out.len(), stored.len());
        let plain = wkb(&[&[0u8; 4][..], &stored[4..]].concat()).unwrap();
        assert_eq!(plain, stored[4..]);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut b = Builder::new(Kind::Int {
            bits: 8,
            unsigned: false,
        });
        assert!(b.push(Value::Int(300), ZeroDates::Error).is_err());
    }
}
