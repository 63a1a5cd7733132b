//! The reading of one line: a cursor over its bytes that parses each value straight
//! into its column, and passes over the values of fields the schema does not have.

use arrow_array::types::Date32Type;
use arrow_cast::parse::Parser;
use connector_api::{Error, Result};

use super::{Fields, Node, Ty, MAX_DEPTH};
use crate::columns::{offset, Col, Kind};
use crate::scalars::{decimal, err, float, int, text, timestamp};

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

/// The position in the line being read, and scratch space for unescaped keys and for
/// strings that hold numbers.
#[derive(Default)]
pub(super) struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    scratch: Vec<u8>,
    /// A field not in the schema is an error.
    strict: bool,
    /// Fields skipped inside struct columns: the column, the field, how many times.
    pub(super) dropped: Vec<(String, String, u64)>,
}

impl<'a> Cursor<'a> {
    /// A cursor for lines of a schema that is `strict` (a field it does not have is an
    /// error) or not (such a field is passed over).
    pub(super) fn new(strict: bool) -> Self {
        Cursor {
            strict,
            ..Cursor::default()
        }
    }

    /// Reads one line, a JSON object, into `cols` (one per field of `fields`).
    pub(super) fn row(&mut self, line: &'a [u8], fields: &Fields, cols: &mut [Col]) -> Result<()> {
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
