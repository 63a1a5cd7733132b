//! Reading `COPY (SELECT ...) TO STDOUT (FORMAT binary)` into Arrow: the snapshot and
//! incremental reads. The server sends its own send-format of each value (no text
//! rendering, no JSON), and the decoder writes it straight into Arrow builders.
//!
//! Natively decoded: boolean, smallint, integer, bigint, real, double precision,
//! numeric (exactly, into Decimal128: more fraction digits than the scale, more
//! digits than the precision, NaN and infinities are rejects, never rounded), text,
//! varchar, char(n), bytea, date, time, timestamp, timestamptz, and one-dimensional
//! arrays of these. Every other type the source maps to text (uuid, json, jsonb,
//! interval, enums, inet, ...) is cast to text by the SELECT ([`select_expr`]). A row
//! whose value does not fit its Arrow type becomes one reject; the rows around it stay.

use std::sync::Arc;

use arrow_array::builder::{
    make_builder, ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use connector_api::{Error, Result};

use crate::conn::quote;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Days and microseconds from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_DAYS: i32 = 10_957;
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How a column's binary value is read.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Bool,
    I16,
    I32,
    I64,
    F32,
    F64,
    Text,
    /// uuid: 16 bytes, read as its text form
    Uuid,
    /// jsonb: a version byte, then the JSON text
    Jsonb,
    Bytes,
    Date,
    /// time (microseconds of the day)
    Time,
    /// timestamp and timestamptz (microseconds since 2000-01-01)
    Timestamp,
    Numeric {
        precision: u8,
        scale: i8,
    },
    List(Box<Kind>),
}

/// The PostgreSQL type name without its modifiers (`numeric(12,2)` -> `numeric`).
fn base(pg: &str) -> &str {
    pg.split('(').next().unwrap_or(pg).trim()
}

impl Kind {
    /// How a column of PostgreSQL type `pg` read as `dt` decodes.
    fn of_column(dt: &DataType, pg: &str) -> Option<Kind> {
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

/// The SELECT expression for a column of PostgreSQL type `pg` read as `dt`: the
/// column itself when its binary form is decoded natively, else cast to text.
pub fn select_expr(name: &str, pg: &str, dt: &DataType) -> String {
    let q = quote(name);
    let native_text = |t: &str| matches!(base(t), "text" | "character varying" | "character");
    match dt {
        // uuid and jsonb are decoded here, json's binary form is its text
        DataType::Utf8 if matches!(base(pg), "uuid" | "json" | "jsonb") => q,
        DataType::Utf8 if !native_text(pg) => format!("{q}::text AS {q}"),
        DataType::List(f) if *f.data_type() == DataType::Utf8 => match pg.strip_suffix("[]") {
            Some(inner) if native_text(inner) => q,
            _ => format!("{q}::text[] AS {q}"),
        },
        // a time with zone is read as the UTC time of day
        DataType::Time64(_) if pg.contains("with time zone") => {
            format!("({q} AT TIME ZONE 'UTC')::time AS {q}")
        }
        _ => q,
    }
}

/// A value taken from a tuple, checked, before it is appended: a row that fails
/// halfway leaves nothing behind in the builders.
enum Value<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(&'a str),
    Uuid([u8; 16]),
    Bytes(&'a [u8]),
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

fn take<const N: usize>(data: &[u8], at: usize) -> std::result::Result<[u8; N], String> {
    data.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "value cut short".to_string())
}

fn exact<const N: usize>(data: &[u8]) -> std::result::Result<[u8; N], String> {
    if data.len() != N {
        return Err(format!("expected {N} bytes, got {}", data.len()));
    }
    take(data, 0)
}

fn value<'a>(kind: &Kind, data: &'a [u8]) -> std::result::Result<Value<'a>, String> {
    Ok(match kind {
        Kind::Bool => Value::Bool(exact::<1>(data)?[0] != 0),
        Kind::I16 => Value::I16(i16::from_be_bytes(exact(data)?)),
        Kind::I32 => Value::I32(i32::from_be_bytes(exact(data)?)),
        Kind::I64 => Value::I64(i64::from_be_bytes(exact(data)?)),
        Kind::F32 => Value::F32(f32::from_be_bytes(exact(data)?)),
        Kind::F64 => Value::F64(f64::from_be_bytes(exact(data)?)),
        Kind::Text => Value::Text(std::str::from_utf8(data).map_err(|e| e.to_string())?),
        Kind::Uuid => Value::Uuid(exact(data)?),
        Kind::Jsonb => match data.split_first() {
            Some((1, json)) => Value::Text(std::str::from_utf8(json).map_err(|e| e.to_string())?),
            _ => return Err("jsonb in an unknown binary version".into()),
        },
        Kind::Bytes => Value::Bytes(data),
        Kind::Date => {
            let d = i32::from_be_bytes(exact(data)?);
            if d == i32::MAX || d == i32::MIN {
                return Err("date infinity has no Arrow value".into());
            }
            Value::I32(d + EPOCH_DAYS)
        }
        Kind::Time => Value::I64(i64::from_be_bytes(exact(data)?)),
        Kind::Timestamp => {
            let t = i64::from_be_bytes(exact(data)?);
            if t == i64::MAX || t == i64::MIN {
                return Err("timestamp infinity has no Arrow value".into());
            }
            Value::I64(t + EPOCH_MICROS)
        }
        Kind::Numeric { precision, scale } => Value::Decimal(numeric(data, *precision, *scale)?),
        Kind::List(item) => Value::List(array(item, data)?),
    })
}

/// PostgreSQL's binary numeric (base-10000 digits, weight, sign, display scale) as the
/// unscaled value of Decimal128(precision, scale).
fn numeric(data: &[u8], precision: u8, scale: i8) -> std::result::Result<i128, String> {
    let ndigits = i16::from_be_bytes(take(data, 0)?) as usize;
    let weight = i16::from_be_bytes(take(data, 2)?) as i32;
    let sign = u16::from_be_bytes(take(data, 4)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric NaN has no Decimal128 value".into()),
        _ => return Err("numeric infinity has no Decimal128 value".into()),
    }
    let mut acc: i128 = 0;
    let overflow = || format!("numeric does not fit Decimal128({precision}, {scale})");
    for i in 0..ndigits {
        let digit = i16::from_be_bytes(take(data, 8 + 2 * i)?) as i128;
        let exp = 4 * (weight - i as i32) + scale as i32;
        let term = if exp >= 0 {
            10i128
                .checked_pow(exp as u32)
                .and_then(|p| p.checked_mul(digit))
                .ok_or_else(overflow)?
        } else {
            let div = 10i128.pow((-exp).min(4) as u32);
            if exp < -4 || digit % div != 0 {
                if digit != 0 {
                    return Err(format!(
                        "numeric has more than {scale} fraction digits (the column's scale); not rounded"
                    ));
                }
                0
            } else {
                digit / div
            }
        };
        acc = acc.checked_add(term).ok_or_else(overflow)?;
    }
    if acc >= 10i128.pow(precision as u32) {
        return Err(overflow());
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// A one-dimensional array's elements.
fn array<'a>(item: &Kind, data: &'a [u8]) -> std::result::Result<Vec<Value<'a>>, String> {
    let ndim = i32::from_be_bytes(take(data, 0)?);
    if ndim == 0 {
        return Ok(Vec::new());
    }
    if ndim != 1 {
        return Err(format!(
            "a {ndim}-dimensional array has no Arrow list mapping"
        ));
    }
    let len = i32::from_be_bytes(take(data, 12)?).max(0) as usize;
    let mut at = 20;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let n = i32::from_be_bytes(take(data, at)?);
        at += 4;
        if n < 0 {
            out.push(Value::Null);
            continue;
        }
        let end = at + n as usize;
        let bytes = data.get(at..end).ok_or("array element cut short")?;
        out.push(value(item, bytes)?);
        at = end;
    }
    Ok(out)
}

macro_rules! builder {
    ($b:expr, $t:ty) => {
        $b.as_any_mut()
            .downcast_mut::<$t>()
            .expect("builder made for this kind")
    };
}

fn append(b: &mut dyn ArrayBuilder, kind: &Kind, v: &Value) {
    match (kind, v) {
        (Kind::Bool, Value::Bool(x)) => builder!(b, BooleanBuilder).append_value(*x),
        (Kind::I16, Value::I16(x)) => builder!(b, Int16Builder).append_value(*x),
        (Kind::I32, Value::I32(x)) => builder!(b, Int32Builder).append_value(*x),
        (Kind::I64, Value::I64(x)) => builder!(b, Int64Builder).append_value(*x),
        (Kind::F32, Value::F32(x)) => builder!(b, Float32Builder).append_value(*x),
        (Kind::F64, Value::F64(x)) => builder!(b, Float64Builder).append_value(*x),
        (Kind::Text | Kind::Jsonb, Value::Text(x)) => builder!(b, StringBuilder).append_value(x),
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
        (kind, _) => append_null(b, kind),
    }
}

fn append_null(b: &mut dyn ArrayBuilder, kind: &Kind) {
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

/// The length of the header of a binary COPY stream (signature, flags, extension),
/// or None while `buf` does not hold all of it yet.
pub fn header_len(buf: &[u8]) -> Result<Option<usize>> {
    if buf.len() < 19 {
        return Ok(None);
    }
    if !buf.starts_with(SIGNATURE) {
        return Err(Error::internal("binary COPY stream: no PGCOPY signature"));
    }
    let ext = u32::from_be_bytes(buf[15..19].try_into().expect("4 bytes")) as usize;
    Ok((buf.len() >= 19 + ext).then_some(19 + ext))
}

/// What starts at `at` of a binary COPY stream.
pub enum Next {
    /// A whole tuple, ending at this offset.
    Tuple(usize),
    /// The trailer: the stream ends.
    Trailer,
}

/// The tuple or trailer at `at`, or None while `buf` ends before it does.
pub fn next_tuple(buf: &[u8], at: usize) -> Option<Next> {
    let fields = i16::from_be_bytes(take::<2>(buf, at).ok()?);
    if fields == -1 {
        return Some(Next::Trailer);
    }
    let mut end = at + 2;
    for _ in 0..fields {
        let len = i32::from_be_bytes(take::<4>(buf, end).ok()?);
        end += 4 + len.max(0) as usize;
    }
    (end <= buf.len()).then_some(Next::Tuple(end))
}

/// The end of a binary COPY stream.
pub const TRAILER: [u8; 2] = [0xff, 0xff];

/// Start offsets of the tuples of a binary COPY stream (header and trailer checked).
pub fn tuples(buf: &[u8]) -> Result<Vec<usize>> {
    let mut at =
        header_len(buf)?.ok_or_else(|| Error::internal("binary COPY stream: no PGCOPY header"))?;
    let mut starts = Vec::new();
    loop {
        match next_tuple(buf, at) {
            Some(Next::Tuple(end)) => {
                starts.push(at);
                at = end;
            }
            Some(Next::Trailer) => return Ok(starts),
            None => {
                return Err(Error::internal(
                    "binary COPY stream: cut short before the trailer",
                ))
            }
        }
    }
}

/// The key values (as text) of the tuple at `start`: its fields after the first
/// `columns` (what [`decode`] reports as `last_key`, without decoding the rest).
pub fn key_of(buf: &[u8], start: usize, columns: usize) -> Result<Vec<String>> {
    let mut fields = Vec::new();
    tuple_fields(buf, start, &mut fields)?;
    Ok(key_text(
        fields.get(columns..).unwrap_or_default(),
        KeyForm::Text,
    ))
}

/// The fields of the tuple at `start` (None: NULL), in `out`.
fn tuple_fields<'a>(buf: &'a [u8], start: usize, out: &mut Vec<Option<&'a [u8]>>) -> Result<()> {
    out.clear();
    let count = i16::from_be_bytes(take(buf, start).map_err(Error::internal)?).max(0);
    let mut at = start + 2;
    for _ in 0..count {
        let len = i32::from_be_bytes(take(buf, at).map_err(Error::internal)?);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = at + len as usize;
            out.push(Some(
                buf.get(at..end)
                    .ok_or_else(|| Error::internal("binary COPY tuple cut short"))?,
            ));
            at = end;
        }
    }
    Ok(())
}

/// Key fields (read as text) as strings.
fn key_text(fields: &[Option<&[u8]>], form: KeyForm) -> Vec<String> {
    fields
        .iter()
        .map(|f| {
            let f = f.unwrap_or_default();
            match (form, f) {
                (KeyForm::Tid, [b0, b1, b2, b3, l0, l1]) => format!(
                    "({},{})",
                    u32::from_be_bytes([*b0, *b1, *b2, *b3]),
                    u16::from_be_bytes([*l0, *l1])
                ),
                _ => String::from_utf8_lossy(f).into_owned(),
            }
        })
        .collect()
}

/// How the fields after a tuple's columns give its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyForm {
    /// The order key's columns, as text.
    Text,
    /// The `ctid`, binary (block and line number, the server renders no text for it);
    /// reported as PostgreSQL writes it, `(block,line)`.
    Tid,
}

/// Rows decoded from a run of tuples.
pub struct Decoded {
    /// The rows, in the table's Arrow schema (rejects left out).
    pub batch: RecordBatch,
    /// Rejected rows: their key values (as text) and why.
    pub rejects: Vec<(Vec<String>, String)>,
    /// Key values (as text) of the last tuple, rejected or not.
    pub last_key: Vec<String>,
}

/// Decodes the tuples starting at `starts` (from [`tuples`]): the columns of
/// `schema`, then `keys` columns giving the tuple's position, in `form`.
pub fn decode(
    buf: &[u8],
    starts: &[usize],
    schema: &SchemaRef,
    pg_types: &[&str],
    (keys, form): (usize, KeyForm),
) -> Result<Decoded> {
    let kinds: Vec<Kind> = schema
        .fields()
        .iter()
        .zip(pg_types.iter().chain(std::iter::repeat(&"")))
        .map(|(f, pg)| {
            Kind::of_column(f.data_type(), pg).ok_or_else(|| {
                Error::schema(format!(
                    "column \"{}\": {} has no binary COPY reading",
                    f.name(),
                    f.data_type()
                ))
            })
        })
        .collect::<Result<_>>()?;
    let mut builders: Vec<Box<dyn ArrayBuilder>> = schema
        .fields()
        .iter()
        .map(|f| make_builder(f.data_type(), starts.len()))
        .collect();
    let want = kinds.len() + keys;
    let mut rejects = Vec::new();
    let mut fields: Vec<Option<&[u8]>> = Vec::with_capacity(want);
    let mut values: Vec<Value> = Vec::with_capacity(kinds.len());
    for &start in starts {
        tuple_fields(buf, start, &mut fields)?;
        if fields.len() != want {
            return Err(Error::internal(format!(
                "binary COPY tuple has {} fields, expected {want}",
                fields.len()
            )));
        }
        values.clear();
        let mut failed = None;
        for ((field, kind), f) in fields.iter().zip(&kinds).zip(schema.fields()) {
            match field {
                None => values.push(Value::Null),
                Some(data) => match value(kind, data) {
                    Ok(v) => values.push(v),
                    Err(e) => {
                        failed = Some(format!("column \"{}\": {e}", f.name()));
                        break;
                    }
                },
            }
        }
        match failed {
            Some(why) => rejects.push((key_text(&fields[kinds.len()..], form), why)),
            None => {
                for ((b, kind), v) in builders.iter_mut().zip(&kinds).zip(&values) {
                    append(b.as_mut(), kind, v);
                }
            }
        }
    }
    // `fields` holds the last tuple's
    let last_key = key_text(fields.get(kinds.len()..).unwrap_or_default(), form);
    let columns: Vec<ArrayRef> = builders.iter_mut().map(|b| b.finish()).collect();
    let batch = RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Error::internal("binary COPY batch").with_source(e))?;
    Ok(Decoded {
        batch,
        rejects,
        last_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(ndigits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_are_exact_or_refused() {
        // 12345.678 = [1, 2345, 6780] weight 1
        let v = numeric_bytes(&[1, 2345, 6780], 1, 0, 3);
        assert_eq!(numeric(&v, 12, 3), Ok(12_345_678));
        assert_eq!(numeric(&v, 12, 5), Ok(1_234_567_800));
        assert!(numeric(&v, 12, 2).unwrap_err().contains("fraction digits"));
        assert!(numeric(&v, 7, 3).unwrap_err().contains("does not fit"));
        let neg = numeric_bytes(&[5], -1, 0x4000, 4); // -0.0005
        assert_eq!(numeric(&neg, 10, 4), Ok(-5));
        assert_eq!(numeric(&numeric_bytes(&[], 0, 0, 0), 5, 2), Ok(0));
        assert!(numeric(&numeric_bytes(&[], 0, 0xC000, 0), 5, 2)
            .unwrap_err()
            .contains("NaN"));
        // 10^20 at scale 10 in Decimal128(38, 10)
        let big = numeric_bytes(&[1], 5, 0, 0);
        assert_eq!(numeric(&big, 38, 10), Ok(10i128.pow(30)));
    }

    #[test]
    fn uuid_and_jsonb_read_as_postgres_writes_them() {
        let id = [
            0x43, 0xaa, 0x86, 0x52, 0xad, 0x94, 0x43, 0xa2, 0x92, 0x14, 0x23, 0x73, 0x55, 0xc3,
            0x62, 0xf4,
        ];
        assert_eq!(uuid_text(&id), "43aa8652-ad94-43a2-9214-237355c362f4");
        assert!(matches!(
            value(&Kind::Jsonb, b"\x01{\"a\": 1}"),
            Ok(Value::Text("{\"a\": 1}"))
        ));
        assert!(value(&Kind::Jsonb, b"\x02{}").is_err());
        assert!(value(&Kind::Uuid, &id[..15]).is_err());
    }

    #[test]
    fn casts_only_what_is_not_native() {
        assert_eq!(select_expr("a", "uuid", &DataType::Utf8), "\"a\"");
        assert_eq!(select_expr("a", "jsonb", &DataType::Utf8), "\"a\"");
        assert_eq!(
            select_expr("a", "inet", &DataType::Utf8),
            "\"a\"::text AS \"a\""
        );
        assert_eq!(
            select_expr("a", "character varying(5)", &DataType::Utf8),
            "\"a\""
        );
        let list = DataType::List(Arc::new(arrow_schema::Field::new(
            "item",
            DataType::Utf8,
            true,
        )));
        assert_eq!(select_expr("a", "text[]", &list), "\"a\"");
        assert_eq!(select_expr("a", "jsonb[]", &list), "\"a\"::text[] AS \"a\"");
        assert_eq!(select_expr("a", "bigint", &DataType::Int64), "\"a\"");
    }
}
