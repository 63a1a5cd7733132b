//! JSON lines into a declared schema in one pass: each value is parsed straight into
//! its column, with no intermediate tape, and a line that fails is cut back out of
//! every column, so it becomes one bad record while the lines around it stay.
//!
//! It reads what arrow-json's decoder reads for the same schema (numbers or numeric
//! strings for numbers, decimals and timestamps; RFC 3339 or `YYYY-MM-DD` strings for
//! dates and timestamps, numbers as raw values; fields not in the schema skipped;
//! missing fields null), with two differences: a fractional number for an integer
//! column is an error instead of being truncated, and a field given twice in one object
//! is an error instead of one of the two values being kept. Schemas with types it does
//! not cover ([`Plan::new`] returns None) decode with arrow-json.

use std::collections::HashMap;
use std::str::FromStr;

use arrow_array::timezone::Tz;
use arrow_array::types::Date32Type;
use arrow_array::{make_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_cast::parse::Parser;
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use connector_api::{Error, Result};

use crate::columns::{offset, Col, Kind};
use crate::scalars::{decimal, err, float, int, text, timestamp};

/// The most fields of one object (their presence is tracked in a 64-bit mask).
const MAX_FIELDS: usize = 64;
/// The deepest nesting of arrays and objects a skipped value may have.
const MAX_DEPTH: usize = 128;

/// How the lines of one schema decode; shared by the threads decoding parts of a buffer.
pub(crate) struct Plan {
    schema: SchemaRef,
    fields: Fields,
    /// A field the schema does not have is an error (an inferred schema, which widens
    /// instead), not skipped (a declared one, which ignores it).
    strict: bool,
    /// Fields found inside a declared struct but not declared in it, already logged:
    /// a new nested key is said once, not dropped without a word.
    warned: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

enum Ty {
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    Date32,
    Timestamp(TimeUnit, Tz),
    Decimal(u8, i8),
    List(Box<Node>),
    Struct(Fields),
}

struct Node {
    name: String,
    ty: Ty,
    nullable: bool,
}

struct Fields {
    nodes: Vec<Node>,
    by_name: HashMap<Box<[u8]>, usize>,
}

impl Fields {
    fn new(fields: &arrow_schema::Fields) -> Option<Fields> {
        if fields.len() > MAX_FIELDS {
            return None;
        }
        let nodes = fields
            .iter()
            .map(|f| node(f.name(), f.data_type(), f.is_nullable()))
            .collect::<Option<Vec<_>>>()?;
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_bytes().into(), i))
            .collect();
        Some(Fields { nodes, by_name })
    }

    /// The index of the field named `key`, trying `hint` (the field after the last one
    /// read: objects usually list their fields in the same order) first.
    fn find(&self, key: &[u8], hint: usize) -> Option<usize> {
        match self.nodes.get(hint) {
            Some(n) if same_bytes(n.name.as_bytes(), key) => Some(hint),
            _ => self.by_name.get(key).copied(),
        }
    }

    fn cols(&self) -> Vec<Col> {
        self.nodes.iter().map(|n| col(&n.ty)).collect()
    }
}

/// `a == b` as a loop: field names are short, and a call to `memcmp` per field costs
/// more than comparing them.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn node(name: &str, dt: &DataType, nullable: bool) -> Option<Node> {
    let ty = match dt {
        DataType::Boolean => Ty::Bool,
        DataType::Int32 => Ty::Int32,
        DataType::Int64 => Ty::Int64,
        DataType::Float32 => Ty::Float32,
        DataType::Float64 => Ty::Float64,
        DataType::Utf8 => Ty::Utf8,
        DataType::Date32 => Ty::Date32,
        DataType::Timestamp(unit, tz) => {
            let tz = Tz::from_str(tz.as_deref().unwrap_or("+00:00")).ok()?;
            Ty::Timestamp(*unit, tz)
        }
        DataType::Decimal128(p, s) => Ty::Decimal(*p, *s),
        DataType::List(item) => Ty::List(Box::new(node(
            item.name(),
            item.data_type(),
            item.is_nullable(),
        )?)),
        DataType::Struct(fields) => Ty::Struct(Fields::new(fields)?),
        _ => return None,
    };
    Some(Node {
        name: name.to_string(),
        ty,
        nullable,
    })
}

fn col(ty: &Ty) -> Col {
    let kind = match ty {
        Ty::Bool => Kind::Bool(Vec::new()),
        Ty::Int32 | Ty::Date32 => Kind::Int(Vec::new()),
        Ty::Int64 | Ty::Timestamp(..) => Kind::Long(Vec::new()),
        Ty::Float32 => Kind::Float(Vec::new()),
        Ty::Float64 => Kind::Double(Vec::new()),
        Ty::Utf8 => Kind::Bytes {
            offsets: vec![0],
            data: Vec::new(),
            utf8: true,
            symbols: None,
        },
        Ty::Decimal(..) => Kind::Decimal(None, Vec::new()),
        Ty::List(item) => Kind::List(vec![0], Box::new(col(&item.ty))),
        Ty::Struct(fields) => Kind::Struct(fields.cols()),
    };
    Col {
        null_index: None,
        valid: Vec::new(),
        kind,
    }
}

impl Plan {
    /// A plan for `schema`, or None when a type is not covered (arrow-json decodes it).
    pub(crate) fn new(schema: &SchemaRef, strict: bool) -> Option<Plan> {
        Some(Plan {
            schema: schema.clone(),
            fields: Fields::new(schema.fields())?,
            strict,
            warned: Default::default(),
        })
    }

    /// Decodes the `lines` (ranges of `buf`) as one batch. Each bad line is returned
    /// with its index among the lines and why.
    pub(crate) fn decode(&self, buf: &[u8], lines: &[(usize, usize)]) -> Result<Lines> {
        let mut cols = self.fields.cols();
        let mut bad = Vec::new();
        let mut rows = 0usize;
        let mut p = Cursor {
            strict: self.strict,
            ..Cursor::default()
        };
        for (i, &(s, e)) in lines.iter().enumerate() {
            match p.row(&buf[s..e], &self.fields, &mut cols) {
                Ok(()) => rows += 1,
                Err(err) => {
                    cols.iter_mut().for_each(|c| c.truncate(rows));
                    bad.push((i, err));
                }
            }
        }
        self.warn_dropped(&p.dropped);
        if rows == 0 {
            return Ok((None, bad));
        }
        let arrays = cols
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(c, f)| c.finish(f.data_type()).map(make_array))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        Ok((Some(batch), bad))
    }
}

impl Plan {
    /// Logs, once per plan, each field a struct column does not declare that lines
    /// held (a top-level field not in the schema is skipped as documented; one inside
    /// a declared struct is easy to miss).
    fn warn_dropped(&self, dropped: &[(String, String, u64)]) {
        if dropped.is_empty() {
            return;
        }
        let Ok(mut warned) = self.warned.lock() else {
            return;
        };
        for (within, field, count) in dropped {
            if warned.insert((within.clone(), field.clone())) {
                tracing::warn!(
                    column = %within,
                    field = %field,
                    records = count,
                    "field \"{field}\" inside struct column \"{within}\" is not in its declared type: dropped (said once; add it to the schema to keep it)"
                );
            }
        }
    }
}

/// The index of the first `"` or `\\` in `b`: a plain loop over the first bytes, where
/// most values end (memchr's vector set-up costs more than it saves on a short string),
/// memchr beyond.
#[inline]
fn quote_or_escape(b: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let head = &b[..b.len().min(SHORT)];
    match head.iter().position(|&c| c == b'"' || c == b'\\') {
        Some(i) => Some(i),
        None if b.len() <= SHORT => None,
        None => memchr::memchr2(b'"', b'\\', &b[SHORT..]).map(|i| i + SHORT),
    }
}

/// The decoded lines (None: none decoded), and each bad line's index and error.
pub(crate) type Lines = (Option<RecordBatch>, Vec<(usize, Error)>);

/// The position in the line being read, and scratch space for unescaped keys and for
/// strings that hold numbers.
#[derive(Default)]
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    scratch: Vec<u8>,
    /// A field not in the schema is an error.
    strict: bool,
    /// Fields skipped inside struct columns: the column, the field, how many times.
    dropped: Vec<(String, String, u64)>,
}

impl<'a> Cursor<'a> {
    fn row(&mut self, line: &'a [u8], fields: &Fields, cols: &mut [Col]) -> Result<()> {
        if !line.is_ascii() {
            std::str::from_utf8(line).map_err(|e| err(format!("not UTF-8: {e}")))?;
        }
        self.b = line;
        self.i = 0;
        self.ws();
        if self.peek() != Some(b'{') {
            return Err(self.unexpected("an object"));
        }
        self.object(fields, cols, None)?;
        self.ws();
        if self.i < self.b.len() {
            return Err(self.unexpected("the end of the line"));
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.peek() {
            self.i += 1;
        }
    }

    fn unexpected(&self, want: &str) -> Error {
        match self.peek() {
            None => err(format!("the line ends where {want} was expected")),
            Some(c) => err(format!(
                "{want} expected at character {}, found '{}'",
                self.i + 1,
                char::from(c).escape_default()
            )),
        }
    }

    fn eat(&mut self, c: u8, want: &str) -> Result<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected(want))
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.unexpected("a value"))
        }
    }

    /// Reads an object (at `{`) into `cols`, one column per field of `fields`;
    /// `within`: the struct column it is a value of (None: the line itself).
    fn object(&mut self, fields: &Fields, cols: &mut [Col], within: Option<&str>) -> Result<()> {
        self.i += 1;
        let mut seen: u64 = 0;
        let mut hint = 0;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(self.unexpected("a field name"));
                }
                let strict = self.strict;
                let key = self.str_text()?;
                let found = fields.find(key, hint);
                // owned only for a field about to be dropped inside a struct
                let key_text = (found.is_none() && within.is_some())
                    .then(|| String::from_utf8_lossy(key).into_owned());
                if found.is_none() && strict {
                    return Err(err(format!(
                        "field \"{}\" is not in the schema",
                        String::from_utf8_lossy(key)
                    )));
                }
                self.eat(b':', "':'")?;
                match found {
                    Some(f) => {
                        if seen & (1 << f) != 0 {
                            return Err(err(format!(
                                "field \"{}\" appears twice",
                                fields.nodes[f].name
                            )));
                        }
                        seen |= 1 << f;
                        self.value(&fields.nodes[f], &mut cols[f])?;
                        hint = f + 1;
                    }
                    None => {
                        if let Some(within) = within {
                            self.note_dropped(within, key_text.as_deref());
                        }
                        self.skip()?
                    }
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(self.unexpected("',' or '}'")),
                }
            }
        }
        if seen.count_ones() as usize != fields.nodes.len() {
            for (f, n) in fields.nodes.iter().enumerate() {
                if seen & (1 << f) == 0 {
                    if !n.nullable {
                        return Err(err(format!("field \"{}\" is missing", n.name)));
                    }
                    cols[f].push_null();
                }
            }
        }
        Ok(())
    }

    /// The text of a string (at `"`): a slice of the line when it has no escape, else
    /// unescaped into `scratch`.
    fn str_text(&mut self) -> Result<&[u8]> {
        let start = self.i + 1;
        if let Some(n) = quote_or_escape(&self.b[start..]) {
            if self.b[start + n] == b'"' {
                self.i = start + n + 1;
                return Ok(&self.b[start..start + n]);
            }
        }
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        let r = self.string(&mut text);
        self.scratch = text;
        r.map(|()| self.scratch.as_slice())
    }

    /// Appends the text of a string (at `"`) to `out`, unescaped.
    fn string(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.i += 1;
        loop {
            let rest = &self.b[self.i..];
            let Some(n) = quote_or_escape(rest) else {
                return Err(err("a string is not closed"));
            };
            out.extend_from_slice(&rest[..n]);
            self.i += n + 1;
            if rest[n] == b'"' {
                return Ok(());
            }
            let c = self.peek().ok_or_else(|| err("a string is not closed"))?;
            self.i += 1;
            match c {
                b'"' | b'\\' | b'/' => out.push(c),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'u' => {
                    let mut cp = self.hex4()?;
                    if (0xD800..0xDC00).contains(&cp) {
                        if !self.b[self.i..].starts_with(b"\\u") {
                            return Err(err("a \\u escape is half a surrogate pair"));
                        }
                        self.i += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return Err(err("a \\u escape is half a surrogate pair"));
                        }
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    }
                    let ch = char::from_u32(cp)
                        .ok_or_else(|| err("a \\u escape is half a surrogate pair"))?;
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                other => {
                    return Err(err(format!(
                        "\\{} is not a JSON escape",
                        char::from(other).escape_default()
                    )))
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self
            .b
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| err("a \\u escape needs 4 hex digits"))?;
        self.i += 4;
        Ok(digits)
    }

    /// The text of a number (at its first character).
    fn number(&mut self) -> &'a [u8] {
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.i += 1;
        }
        &self.b[start..self.i]
    }

    /// The text of a number or of a string holding one (for number, decimal, date and
    /// timestamp columns); `scratch` holds an unescaped string.
    fn scalar_text(&mut self, what: &str) -> Result<(&[u8], bool)> {
        match self.peek() {
            Some(b'"') => Ok((self.str_text()?, true)),
            Some(b'-' | b'0'..=b'9') => Ok((self.number(), false)),
            _ => Err(self.unexpected(what)),
        }
    }

    /// Reads one value (after the field name and `:`) into `col`.
    fn value(&mut self, node: &Node, col: &mut Col) -> Result<()> {
        self.ws();
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            if !node.nullable {
                return Err(err(format!("field \"{}\" is null", node.name)));
            }
            col.push_null();
            return Ok(());
        }
        // valid first: a value that fails halfway is then cut back with its row
        col.valid.push(true);
        let named = |e: Error| err(format!("field \"{}\": {e}", node.name));
        match (&node.ty, &mut col.kind) {
            (Ty::Bool, Kind::Bool(v)) => match self.peek() {
                Some(b't') => {
                    self.literal(b"true")?;
                    v.push(true);
                }
                Some(b'f') => {
                    self.literal(b"false")?;
                    v.push(false);
                }
                _ => return Err(named(self.unexpected("true or false"))),
            },
            (Ty::Int64, Kind::Long(v)) => {
                let (t, _) = self.scalar_text("a number").map_err(named)?;
                v.push(int(t).map_err(named)?);
            }
            (Ty::Int32, Kind::Int(v)) => {
                let (t, _) = self.scalar_text("a number").map_err(named)?;
                let n = int(t).map_err(named)?;
                v.push(
                    i32::try_from(n)
                        .map_err(|_| named(err(format!("{n} is out of range for int32"))))?,
                );
            }
            (Ty::Float64, Kind::Double(v)) => {
                let (t, _) = self.scalar_text("a number").map_err(named)?;
                v.push(float(t).map_err(named)?);
            }
            (Ty::Float32, Kind::Float(v)) => {
                let (t, _) = self.scalar_text("a number").map_err(named)?;
                v.push(float(t).map_err(named)? as f32);
            }
            (Ty::Utf8, Kind::Bytes { offsets, data, .. }) => {
                if self.peek() != Some(b'"') {
                    return Err(named(self.unexpected("a string")));
                }
                self.string(data).map_err(named)?;
                offsets.push(offset(data.len())?);
            }
            (Ty::Date32, Kind::Int(v)) => {
                let (t, quoted) = self.scalar_text("a date").map_err(named)?;
                let t = text(t)?;
                let d = if quoted {
                    Date32Type::parse(t)
                } else {
                    t.parse::<i32>().ok()
                };
                v.push(d.ok_or_else(|| named(err(format!("\"{t}\" is not a date"))))?);
            }
            (Ty::Timestamp(unit, tz), Kind::Long(v)) => {
                let (t, quoted) = self.scalar_text("a timestamp").map_err(named)?;
                v.push(if quoted {
                    timestamp(t, *unit, tz).map_err(named)?
                } else {
                    int(t).map_err(named)?
                });
            }
            (Ty::Decimal(p, s), Kind::Decimal(_, v)) => {
                let (t, _) = self.scalar_text("a decimal").map_err(named)?;
                v.push(decimal(t, *p, *s).map_err(named)?);
            }
            (Ty::List(item), Kind::List(offsets, items)) => {
                if self.peek() != Some(b'[') {
                    return Err(named(self.unexpected("an array")));
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.value(item, items)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(named(self.unexpected("',' or ']'"))),
                        }
                    }
                }
                offsets.push(offset(items.valid.len())?);
            }
            (Ty::Struct(fields), Kind::Struct(children)) => {
                if self.peek() != Some(b'{') {
                    return Err(named(self.unexpected("an object")));
                }
                self.object(fields, children, Some(&node.name))?;
            }
            _ => return Err(Error::internal("json column of another type")),
        }
        Ok(())
    }

    /// Counts a field `key` dropped inside struct column `within`.
    fn note_dropped(&mut self, within: &str, key: Option<&str>) {
        let key = key.unwrap_or_default();
        match self
            .dropped
            .iter_mut()
            .find(|(w, k, _)| w == within && k == key)
        {
            Some((_, _, n)) => *n += 1,
            None => self.dropped.push((within.to_owned(), key.to_owned(), 1)),
        }
    }

    /// Skips one value of a field not in the schema.
    fn skip(&mut self) -> Result<()> {
        let mut depth = 0usize;
        loop {
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    self.str_text()?;
                }
                Some(b'{' | b'[') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(err("values nest too deeply"));
                    }
                    self.i += 1;
                    continue;
                }
                Some(b'}' | b']') if depth > 0 => {
                    depth -= 1;
                    self.i += 1;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => {
                    self.number();
                }
                _ => return Err(self.unexpected("a value")),
            }
            if depth == 0 {
                return Ok(());
            }
            // inside an array or object: a separator, a key's colon, or its end
            self.ws();
            match self.peek() {
                Some(b',' | b':') => self.i += 1,
                Some(b'}' | b']') => {}
                _ => return Err(self.unexpected("',' or the end of an array or object")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int64Type, TimestampMicrosecondType};
    use arrow_array::Array;
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    fn lines(text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in text.bytes().enumerate() {
            if c == b'\n' {
                out.push((start, i));
                start = i + 1;
            }
        }
        out
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            Field::new(
                "geo",
                DataType::Struct(
                    vec![
                        Field::new("lat", DataType::Float64, false),
                        Field::new("ok", DataType::Boolean, true),
                    ]
                    .into(),
                ),
                true,
            ),
            Field::new("day", DataType::Date32, true),
            Field::new("n32", DataType::Int32, true),
        ]))
    }

    #[test]
    fn decodes_every_covered_type_and_cuts_bad_lines_out() {
        let text = concat!(
            r#"{"id": 1, "name": "a\"b\u00e9\ud83e\udd86", "ts": "2026-01-02T03:04:05.123456Z", "amount": "12.30", "tags": ["x", null], "geo": {"lat": 1.5, "ok": true}, "day": "2026-03-04", "n32": 7, "extra": {"deep": [1, {"x": "}"}]}}"#,
            "\n",
            r#"{"id": 2, "tags": ["half"], "geo": {"lat": "oops"}}"#,
            "\n",
            r#"{"n32": "8", "id": "3", "amount": 5, "ts": 1000, "geo": null, "tags": []}"#,
            "\n",
            r#"{"id": 4.5}"#,
            "\n",
            r#"{"id": 5, "id": 6}"#,
            "\n",
            r#"{"name": "no id"}"#,
            "\n",
            r#"{"id": 7, "n32": 3000000000}"#,
            "\n",
            r#"{"id": 8} trailing"#,
            "\n",
            r#"{"id": 9e0, "name": "ünï"}"#,
            "\n",
        );
        let plan = Plan::new(&schema(), false).unwrap();
        let (batch, bad) = plan.decode(text.as_bytes(), &lines(text)).unwrap();
        let batch = batch.unwrap();
        let bad_lines: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad_lines, vec![1, 3, 4, 5, 6, 7], "{bad:?}");
        assert!(
            bad[0].1.to_string().contains("field \"lat\""),
            "{}",
            bad[0].1
        );
        assert!(
            bad[1].1.to_string().contains("4.5 is not a whole number"),
            "{}",
            bad[1].1
        );
        assert!(
            bad[2].1.to_string().contains("appears twice"),
            "{}",
            bad[2].1
        );
        assert!(
            bad[3].1.to_string().contains("\"id\" is missing"),
            "{}",
            bad[3].1
        );
        assert_eq!(batch.num_rows(), 3);
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values(), &[1, 3, 9]);
        let names = batch.column(1).as_string::<i32>();
        assert_eq!(names.value(0), "a\"bé🦆");
        assert!(names.is_null(1));
        assert_eq!(names.value(2), "ünï");
        let ts = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_767_323_045_123_456);
        assert_eq!(ts.value(1), 1000);
        let amount = batch.column(3).as_primitive::<Decimal128Type>();
        assert_eq!((amount.value(0), amount.value(1)), (1230, 500));
        let tags = batch.column(4).as_list::<i32>();
        assert_eq!(tags.value(0).len(), 2);
        assert!(tags.value(0).is_null(1));
        assert_eq!(tags.value(1).len(), 0);
        assert!(tags.is_null(2));
        let geo = batch.column(5).as_struct();
        assert!(geo.is_valid(0) && geo.is_null(1) && geo.is_null(2));
        assert_eq!(
            geo.column(0)
                .as_primitive::<arrow_array::types::Float64Type>()
                .value(0),
            1.5
        );
        assert_eq!(batch.column(6).as_primitive::<Date32Type>().value(0), 20516);
        assert_eq!(
            batch
                .column(7)
                .as_primitive::<arrow_array::types::Int32Type>()
                .value(1),
            8
        );
    }

    #[test]
    fn types_it_does_not_cover_fall_back() {
        let s = Arc::new(Schema::new(vec![Field::new("b", DataType::Binary, true)]));
        assert!(Plan::new(&s, false).is_none());
    }

    #[test]
    fn a_decimal_with_more_places_than_the_scale_is_a_bad_line_naming_the_column() {
        let plan = Plan::new(&schema(), false).unwrap();
        let text = "{\"id\": 1, \"amount\": 1.25}\n{\"id\": 2, \"amount\": 1.005}\n{\"id\": 3, \"amount\": \"2.50\"}\n";
        let (batch, bad) = plan.decode(text.as_bytes(), &lines(text)).unwrap();
        assert_eq!(batch.unwrap().num_rows(), 2);
        assert_eq!(bad.len(), 1);
        let (line, error) = &bad[0];
        assert_eq!(*line, 1);
        let message = error.to_string();
        assert!(
            message.contains("amount")
                && message.contains("\"1.005\" has more than 2 decimal places"),
            "{message}"
        );
    }
}
