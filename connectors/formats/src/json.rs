//! JSON lines decoding with per-line isolation of bad records and schema inference.

use std::sync::Arc;

use arrow_json::reader::{infer_json_schema_from_iterator, ReaderBuilder};
use arrow_schema::{Schema, SchemaRef};
use connector_api::{Error, Result};

use crate::json_typed::Plan;
use crate::{BadRecord, Decoded};

/// Lines read to infer a schema when none is declared.
const INFER_LINES: usize = 1000;

/// Decodes JSON lines into batches of a declared or inferred schema.
///
/// With a declared schema, fields not in it are ignored. With an inferred schema, a
/// later line with a new field widens the schema (a schema change downstream).
pub struct JsonDecoder {
    schema: Option<SchemaRef>,
    infer: bool,
    /// The schema, declared or inferred so far, when the one-pass decoder covers its
    /// types (else arrow-json decodes).
    plan: Option<Plan>,
}

impl JsonDecoder {
    /// A decoder for `schema`; `None` infers it from the first lines and widens it later.
    pub fn new(schema: Option<SchemaRef>) -> Self {
        JsonDecoder {
            infer: schema.is_none(),
            plan: schema.as_ref().and_then(|s| Plan::new(s, false)),
            schema,
        }
    }

    /// Decodes only `columns` of the declared schema, in the schema's order: the other
    /// fields are passed over as fields the schema does not have are, so their values
    /// are neither copied nor checked. False, and nothing changed, when the schema is
    /// inferred, decodes with arrow-json, or does not have one of `columns` (or
    /// `columns` is empty).
    pub fn read_only(&mut self, columns: &[String]) -> bool {
        // only where the one-pass decoder reads the whole schema too: arrow-json,
        // which reads the others, differs on a few inputs (`1.5` for an integer)
        let Some(schema) = self
            .schema
            .as_ref()
            .filter(|_| !self.infer && self.plan.is_some())
        else {
            return false;
        };
        if columns.is_empty() {
            return false;
        }
        let Ok(mut keep) = columns
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<std::result::Result<Vec<_>, _>>()
        else {
            return false;
        };
        keep.sort_unstable();
        keep.dedup();
        match schema.project(&keep) {
            Ok(narrow) => {
                *self = JsonDecoder::new(Some(Arc::new(narrow)));
                true
            }
            Err(_) => false,
        }
    }

    /// The schema so far (None before the first line when inferring).
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// Decodes up to `max_rows` lines from the start of `buf`. Only whole lines (ending
    /// in `\n`) are taken unless `eof`, when a last line without newline counts too.
    pub fn decode(&mut self, buf: &[u8], max_rows: usize, eof: bool) -> Result<Decoded> {
        if !self.infer {
            return self.decode_declared(buf, max_rows, eof);
        }
        let (lines, consumed, newlines) = scan_lines(buf, max_rows, eof);
        if let Some(&(first, _)) = lines.first() {
            if self.schema.is_none() {
                self.schema = Some(infer(
                    lines.iter().take(INFER_LINES).map(|&(s, e)| &buf[s..e]),
                )?);
                self.plan = self.schema.as_ref().and_then(|s| Plan::new(s, true));
            }
            let range = &buf[first..lines[lines.len() - 1].1];
            if self.decode_range(range, lines.len()).is_err() && self.widen(&lines, buf) {
                // a new field: the schema widened; decode (isolating what still fails)
                self.plan = self.schema.as_ref().and_then(|s| Plan::new(s, true));
            }
        }
        self.decode_lines(buf, &lines, consumed, newlines)
    }

    /// Like [`JsonDecoder::decode`], but splits up to `parts * max_rows` lines into
    /// `parts` batches decoded on parallel threads (declared schemas only; an inferred
    /// schema decodes in one part because it may widen). Results are in input order,
    /// each with its own `consumed` and `lines`.
    pub fn decode_parts(
        &mut self,
        buf: &[u8],
        max_rows: usize,
        parts: usize,
        eof: bool,
    ) -> Result<Vec<Decoded>> {
        if self.infer || parts <= 1 {
            return Ok(vec![self.decode(buf, max_rows, eof)?]);
        }
        // cut points after every max_rows newlines
        let mut cuts = Vec::with_capacity(parts);
        let mut pos = 0;
        'outer: while cuts.len() + 1 < parts {
            for _ in 0..max_rows {
                match memchr::memchr(b'\n', &buf[pos..]) {
                    Some(i) => pos += i + 1,
                    None => break 'outer,
                }
            }
            cuts.push(pos);
        }
        if cuts.is_empty() {
            return Ok(vec![self.decode(buf, max_rows, eof)?]);
        }
        let mut segments = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        for &c in &cuts {
            segments.push((&buf[start..c], false));
            start = c;
        }
        segments.push((&buf[start..], eof));
        let this = &*self;
        std::thread::scope(|scope| {
            let handles: Vec<_> = segments[1..]
                .iter()
                .map(|&(seg, e)| scope.spawn(move || this.decode_declared(seg, max_rows, e)))
                .collect();
            let mut out = vec![this.decode_declared(segments[0].0, max_rows, segments[0].1)?];
            for h in handles {
                out.push(
                    h.join()
                        .map_err(|_| Error::internal("json decoding thread panicked"))??,
                );
            }
            Ok(out)
        })
    }

    /// `decode` for a declared schema: no state changes, so it can run in parallel.
    fn decode_declared(&self, buf: &[u8], max_rows: usize, eof: bool) -> Result<Decoded> {
        let (lines, consumed, newlines) = scan_lines(buf, max_rows, eof);
        self.decode_lines(buf, &lines, consumed, newlines)
    }

    /// Decodes the scanned `lines` of `buf` as one batch, isolating bad lines.
    fn decode_lines(
        &self,
        buf: &[u8],
        lines: &[(usize, usize)],
        consumed: usize,
        newlines: u64,
    ) -> Result<Decoded> {
        let mut decoded = Decoded {
            consumed,
            lines: newlines,
            ..Default::default()
        };
        let (Some(&(first, _)), Some(&(_, last))) = (lines.first(), lines.last()) else {
            return Ok(decoded);
        };
        // the one-pass decoder: a fractional number for an integer column is a bad line,
        // where arrow-json would truncate it
        if let Some(plan) = &self.plan {
            let (batch, bad) = plan.decode(buf, lines)?;
            decoded.batch = batch;
            let mut index = LineIndex::default();
            for (i, error) in bad {
                decoded.bad.push(index.bad(buf, lines[i], error));
            }
            return Ok(decoded);
        }
        // arrow-json would cut the digits a decimal or timestamp column cannot hold:
        // those lines are bad before it decodes the others
        let lost = match &self.schema {
            Some(schema) => crate::json_exact::lost(schema.fields(), buf, lines),
            None => Vec::new(),
        };
        if lost.is_empty() {
            match self.decode_range(&buf[first..last], lines.len()) {
                Ok(batch) => decoded.batch = batch,
                Err(first_error) => isolate(self, lines, buf, &mut decoded, first_error)?,
            }
            return Ok(decoded);
        }
        let mut index = LineIndex::default();
        for &(i, ref why) in &lost {
            decoded
                .bad
                .push(index.bad(buf, lines[i], Error::data(why.clone())));
        }
        let kept: Vec<(usize, usize)> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| lost.binary_search_by_key(i, |(l, _)| *l).is_err())
            .map(|(_, &line)| line)
            .collect();
        if !kept.is_empty() {
            let mut joined = Vec::new();
            for &(s, e) in &kept {
                joined.extend_from_slice(&buf[s..e]);
                joined.push(b'\n');
            }
            match self.decode_range(&joined[..joined.len() - 1], kept.len()) {
                Ok(batch) => decoded.batch = batch,
                Err(first_error) => {
                    let mut rest = Decoded::default();
                    isolate(self, &kept, buf, &mut rest, first_error)?;
                    decoded.batch = rest.batch;
                    decoded.bad.extend(rest.bad);
                    decoded.bad.sort_by_key(|b| b.index);
                }
            }
        }
        Ok(decoded)
    }

    fn decoder(&self, rows: usize) -> Result<arrow_json::reader::Decoder> {
        let schema = self
            .schema
            .clone()
            .ok_or_else(|| Error::internal("json decoder has no schema"))?;
        Ok(ReaderBuilder::new(schema)
            .with_batch_size(rows.max(1))
            .with_strict_mode(self.infer)
            .build_decoder()?)
    }

    fn decode_range(&self, range: &[u8], rows: usize) -> Result<Option<arrow_array::RecordBatch>> {
        let mut d = self.decoder(rows)?;
        let n = d.decode(range)?;
        if n != range.len() {
            return Err(Error::data("json: more records than expected in range"));
        }
        Ok(d.flush()?)
    }

    /// Re-infers over `lines` and merges into the schema; true if the schema grew.
    fn widen(&mut self, lines: &[(usize, usize)], buf: &[u8]) -> bool {
        let Some(current) = self.schema.clone() else {
            return false;
        };
        let Ok(seen) = infer(lines.iter().map(|&(s, e)| &buf[s..e])) else {
            return false;
        };
        match Schema::try_merge([current.as_ref().clone(), seen.as_ref().clone()]) {
            Ok(merged) if merged.fields().len() > current.fields().len() => {
                // keep the original column order, new columns at the end
                let mut fields: Vec<_> = current.fields().iter().cloned().collect();
                for f in merged.fields() {
                    if current.field_with_name(f.name()).is_err() {
                        fields.push(Arc::new(f.as_ref().clone().with_nullable(true)));
                    }
                }
                self.schema = Some(Arc::new(Schema::new(fields)));
                true
            }
            _ => false,
        }
    }
}

/// Finds up to `max_rows` non-blank lines at the start of `buf`: their ranges (without
/// the newline), the bytes consumed (whole lines; a last line without newline only
/// when `eof`) and the newlines consumed.
fn scan_lines(buf: &[u8], max_rows: usize, eof: bool) -> (Vec<(usize, usize)>, usize, u64) {
    let mut lines: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    let mut newlines = 0u64;
    while lines.len() < max_rows && pos < buf.len() {
        let end = match memchr::memchr(b'\n', &buf[pos..]) {
            Some(i) => pos + i,
            None if eof => buf.len(),
            None => break,
        };
        // a UTF-8 byte order mark (an editor's, at the file's start) is not part of it
        let from = if buf[pos..end].starts_with(crate::BOM) {
            pos + crate::BOM.len()
        } else {
            pos
        };
        let line = &buf[from..end];
        // fast path: a record line starts with '{'; anything else may be blank
        if line.first() == Some(&b'{') || line.iter().any(|b| !b.is_ascii_whitespace()) {
            lines.push((from, end));
        }
        if end < buf.len() {
            newlines += 1;
        }
        pos = (end + 1).min(buf.len());
    }
    (lines, pos, newlines)
}

/// Counts the lines of a buffer up to each bad one, in order (blank lines count).
#[derive(Default)]
struct LineIndex {
    index: usize,
    counted_to: usize,
}

impl LineIndex {
    /// The bad record of the line at `(start, end)` of `buf`, which comes after the
    /// lines asked about before.
    fn bad(&mut self, buf: &[u8], (start, end): (usize, usize), error: Error) -> BadRecord {
        self.index += crate::count_newlines(&buf[self.counted_to..start]) as usize;
        self.counted_to = start;
        BadRecord::of(
            self.index,
            &buf[start..end],
            Error::data("invalid json record").with_source(error),
        )
    }
}

/// Decodes line by line to separate the bad lines from the good ones.
fn isolate(
    dec: &JsonDecoder,
    lines: &[(usize, usize)],
    buf: &[u8],
    out: &mut Decoded,
    first_error: Error,
) -> Result<()> {
    let mut good: Vec<u8> = Vec::new();
    let mut good_rows = 0;
    let mut index = LineIndex::default();
    for &(s, e) in lines {
        let line = &buf[s..e];
        match dec.decode_range(line, 1) {
            Ok(_) => {
                good.extend_from_slice(line);
                good.push(b'\n');
                good_rows += 1;
            }
            Err(err) => out.bad.push(index.bad(buf, (s, e), err)),
        }
    }
    if out.bad.is_empty() {
        // the batch failed as a whole but every line alone decodes: report the real error
        return Err(first_error);
    }
    if good_rows > 0 {
        out.batch = dec.decode_range(&good[..good.len() - 1], good_rows)?;
    }
    Ok(())
}

/// The schema of the JSON objects among `lines`; a line that is no object (a number,
/// an array, not JSON at all) does not take part, and is a bad record when decoded.
fn infer<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<SchemaRef> {
    let values = lines
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object)
        .map(Ok);
    let schema = infer_json_schema_from_iterator(values)?;
    Ok(Arc::new(schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_schema::{DataType, Field};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(10, 2), true),
        ]))
    }

    #[test]
    fn decodes_whole_lines_and_leaves_a_partial_one() {
        let mut d = JsonDecoder::new(Some(schema()));
        let buf = b"{\"id\":1,\"amount\":\"1.50\"}\n{\"id\":2}\n{\"id\":3";
        let out = d.decode(buf, 100, false).unwrap();
        assert_eq!(out.batch.unwrap().num_rows(), 2);
        assert_eq!(out.consumed, buf.len() - 7);
        assert_eq!(out.lines, 2);
    }

    #[test]
    fn reads_only_the_columns_asked_for_and_passes_the_others_over() {
        let mut d = JsonDecoder::new(Some(schema()));
        assert!(!d.read_only(&["id".into(), "nope".into()]), "not a column");
        assert!(d.read_only(&["id".into()]));
        // a value the unread column could not hold is not looked at
        let buf = b"{\"id\":1,\"amount\":\"1.50\"}\n{\"amount\":\"abc\",\"id\":2}\n";
        let out = d.decode(buf, 100, false).unwrap();
        assert!(out.bad.is_empty(), "{:?}", out.bad);
        let batch = out.batch.unwrap();
        assert_eq!(batch.schema().fields().len(), 1);
        assert_eq!(batch.schema().field(0), schema().field(0));
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>();
        assert_eq!(ids.unwrap().values(), &[1, 2]);
        // an inferred schema has no columns to leave out
        assert!(!JsonDecoder::new(None).read_only(&["id".into()]));
    }

    #[test]
    fn isolates_a_malformed_line() {
        let mut d = JsonDecoder::new(Some(schema()));
        let buf = b"{\"id\":1}\n{\"id\": oops}\n{\"id\":3}\n";
        let out = d.decode(buf, 100, false).unwrap();
        let batch = out.batch.unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(out.bad.len(), 1);
        assert_eq!(out.bad[0].index, 1);
        assert_eq!(out.bad[0].raw, "{\"id\": oops}");
    }

    #[test]
    fn a_line_that_is_no_object_is_a_bad_record_under_an_inferred_schema() {
        let mut d = JsonDecoder::new(None);
        let buf = b"{\"id\":1}\n42\n[1,2]\n{\"id\":2}\n";
        let out = d.decode(buf, 100, false).unwrap();
        assert_eq!(out.batch.unwrap().num_rows(), 2);
        let bad: Vec<(usize, &str)> = out.bad.iter().map(|b| (b.index, b.raw.as_str())).collect();
        assert_eq!(bad, [(1, "42"), (2, "[1,2]")]);
    }

    #[test]
    fn inferred_schema_widens_on_new_field() {
        let mut d = JsonDecoder::new(None);
        let out = d.decode(b"{\"a\":1}\n", 10, false).unwrap();
        assert_eq!(out.batch.unwrap().num_columns(), 1);
        let out = d.decode(b"{\"a\":2,\"b\":\"x\"}\n", 10, false).unwrap();
        let b = out.batch.unwrap();
        assert_eq!(b.num_columns(), 2);
        assert_eq!(b.column(1).len(), 1);
    }

    #[test]
    fn an_inferred_integer_column_rejects_a_fraction_instead_of_truncating_it() {
        let mut d = JsonDecoder::new(None);
        let mut text = String::new();
        for i in 0..1200 {
            text.push_str(&format!("{{\"a\":{i},\"tags\":[\"x\"]}}\n"));
        }
        text.push_str("{\"a\":4.5,\"tags\":[\"y\"]}\n{\"a\":7,\"tags\":[]}\n");
        let out = d.decode(text.as_bytes(), 2000, true).unwrap();
        assert_eq!(out.batch.unwrap().num_rows(), 1201);
        assert_eq!(out.bad.len(), 1);
        assert_eq!(out.bad[0].index, 1200);
        let why = format!("{:?}", out.bad[0].error);
        assert!(why.contains("4.5") && why.contains("\"a\""), "{why}");
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped() {
        let mut d = JsonDecoder::new(Some(schema()));
        let input = b"\xEF\xBB\xBF{\"id\":1}\n{\"id\":2}\n";
        let out = d.decode(input, 10, true).unwrap();
        assert!(
            out.bad.is_empty(),
            "{:?}",
            out.bad.first().map(|b| b.error.to_string())
        );
        assert_eq!(out.batch.unwrap().num_rows(), 2);
        assert_eq!(out.consumed, input.len());
    }
}
