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

use arrow_array::builder::{make_builder, ArrayBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use connector_api::{Error, Result};

use crate::conn::quote;
use crate::value::binary::{take, value};
use crate::value::render::row_text;
use crate::value::{append, base, Value};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

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
        _ => q,
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
    /// Rejected rows: their key values (as text), why, and the row as text
    /// ([`row_text`]).
    pub rejects: Vec<(Vec<String>, String, String)>,
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
    let kinds = crate::value::kinds(schema.fields(), pg_types.iter().copied())?;
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
            Some(why) => rejects.push((
                key_text(&fields[kinds.len()..], form),
                why,
                row_text(&fields[..kinds.len()], &kinds, schema.fields()),
            )),
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
