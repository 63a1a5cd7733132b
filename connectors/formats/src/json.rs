//! JSON lines decoding with per-line isolation of bad records and schema inference.

use std::sync::Arc;

use arrow_json::reader::{infer_json_schema_from_iterator, ReaderBuilder};
use arrow_schema::{Schema, SchemaRef};
use connector_api::{Error, Result};

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
}

impl JsonDecoder {
    /// A decoder for `schema`; `None` infers it from the first lines and widens it later.
    pub fn new(schema: Option<SchemaRef>) -> Self {
        JsonDecoder {
            infer: schema.is_none(),
            schema,
        }
    }

    /// The schema so far (None before the first line when inferring).
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// Decodes up to `max_rows` lines from the start of `buf`. Only whole lines (ending
    /// in `\n`) are taken unless `eof`, when a last line without newline counts too.
    pub fn decode(&mut self, buf: &[u8], max_rows: usize, eof: bool) -> Result<Decoded> {
        let mut lines: Vec<(usize, usize)> = Vec::new();
        let mut pos = 0;
        let mut newlines = 0u64;
        while lines.len() < max_rows && pos < buf.len() {
            let end = match memchr::memchr(b'\n', &buf[pos..]) {
                Some(i) => pos + i,
                None if eof => buf.len(),
                None => break,
            };
            let line = &buf[pos..end];
            // fast path: a record line starts with '{'; anything else may be blank
            if line.first() == Some(&b'{') || line.iter().any(|b| !b.is_ascii_whitespace()) {
                lines.push((pos, end));
            }
            if end < buf.len() {
                newlines += 1;
            }
            pos = (end + 1).min(buf.len());
        }
        let consumed = pos;
        if lines.is_empty() {
            return Ok(Decoded {
                consumed,
                lines: newlines,
                ..Default::default()
            });
        }
        let range = &buf[lines[0].0..lines[lines.len() - 1].1];
        if self.schema.is_none() {
            self.schema = Some(infer(
                lines.iter().take(INFER_LINES).map(|&(s, e)| &buf[s..e]),
            )?);
        }
        let mut decoded = Decoded {
            consumed,
            lines: newlines,
            ..Default::default()
        };
        match self.decode_range(range, lines.len()) {
            Ok(batch) => decoded.batch = batch,
            Err(first_error) => {
                if self.infer && self.widen(&lines, buf) {
                    if let Ok(batch) = self.decode_range(range, lines.len()) {
                        decoded.batch = batch;
                        return Ok(decoded);
                    }
                }
                isolate(self, &lines, buf, &mut decoded, first_error)?;
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
    let mut line_index = 0usize;
    let mut last_end = 0usize;
    for &(s, e) in lines {
        line_index += crate::count_newlines(&buf[last_end..s]) as usize;
        last_end = s;
        let line = &buf[s..e];
        match dec.decode_range(line, 1) {
            Ok(_) => {
                good.extend_from_slice(line);
                good.push(b'\n');
                good_rows += 1;
            }
            Err(err) => out.bad.push(BadRecord {
                index: line_index,
                raw: String::from_utf8_lossy(line).into_owned(),
                error: Error::data("invalid json record").with_source(err),
            }),
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

fn infer<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<SchemaRef> {
    let values = lines.filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok().map(Ok));
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
    fn inferred_schema_widens_on_new_field() {
        let mut d = JsonDecoder::new(None);
        let out = d.decode(b"{\"a\":1}\n", 10, false).unwrap();
        assert_eq!(out.batch.unwrap().num_columns(), 1);
        let out = d.decode(b"{\"a\":2,\"b\":\"x\"}\n", 10, false).unwrap();
        let b = out.batch.unwrap();
        assert_eq!(b.num_columns(), 2);
        assert_eq!(b.column(1).len(), 1);
    }
}
