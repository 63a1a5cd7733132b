//! CSV decoding with RFC 4180 quoting, header handling, inference and isolation of
//! records whose values do not convert.

use std::sync::Arc;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow_csv::reader::{Format as CsvFormat, ReaderBuilder};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use connector_api::{Error, Result};

use crate::{BadRecord, CsvOptions, Decoded};

/// Records read to infer a schema when none is declared.
const INFER_RECORDS: usize = 1000;

/// Decodes CSV into batches of a declared or inferred schema.
pub struct CsvDecoder {
    schema: Option<SchemaRef>,
    options: CsvOptions,
    /// The current file's header names the schema's columns in another order: file
    /// column `i` is schema column `order[i]`.
    order: Option<Vec<usize>>,
}

impl CsvDecoder {
    /// A decoder for `schema` (columns by position; a header that names the same
    /// columns in another order is followed); `None` infers it from the header and the
    /// first records.
    pub fn new(schema: Option<SchemaRef>, options: CsvOptions) -> Self {
        CsvDecoder {
            schema,
            options,
            order: None,
        }
    }

    /// The schema so far.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// Infers the schema from `head`, the first bytes of the input, when none is known
    /// yet. A reader resuming inside a file calls it first, so that the header names
    /// the columns and the types come from the same records as on the first run,
    /// instead of the first unread row becoming the header. `eof`: `head` is the whole
    /// input.
    pub fn prime(&mut self, head: &[u8], eof: bool) -> Result<()> {
        let head = head.strip_prefix(crate::BOM).unwrap_or(head);
        let usable = if eof {
            head.len()
        } else {
            complete_prefix(head, self.options.quote as u8)
        };
        if usable == 0 {
            return Ok(());
        }
        if self.schema.is_none() {
            match self.infer(&head[..usable])? {
                Some(schema) => self.schema = Some(schema),
                None => return Ok(()),
            }
        }
        self.follow_header(&head[..usable])
    }

    /// The schema of the records in `buf` (which starts with the header, if any);
    /// None when it holds no record to tell the types by. A column empty in every
    /// record read is text: typed Null, its later values would all read as null.
    fn infer(&self, buf: &[u8]) -> Result<Option<SchemaRef>> {
        let (schema, records) = self
            .format(self.options.header)
            .infer_schema(buf, Some(INFER_RECORDS))?;
        if records == 0 {
            return Ok(None);
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Null => Field::new(f.name(), DataType::Utf8, true),
                // the unit of the records seen: a later `.5` would not fit seconds
                DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, tz) => Field::new(
                    f.name(),
                    DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                    f.is_nullable(),
                ),
                _ => f.as_ref().clone(),
            })
            .collect();
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    fn format(&self, header: bool) -> CsvFormat {
        let format = CsvFormat::default()
            .with_header(header)
            .with_delimiter(self.options.delimiter as u8)
            .with_quote(self.options.quote as u8);
        match self.options.null_regex() {
            Some(nulls) => format.with_null_regex(nulls),
            None => format,
        }
    }

    /// Reads the header at the start of `buf` (a file's start): when it names the
    /// schema's columns in another order, the file's columns are mapped by name, not
    /// by position (which would swap values between columns).
    fn follow_header(&mut self, buf: &[u8]) -> Result<()> {
        self.order = None;
        let Some(schema) = self.schema.as_ref().filter(|_| self.options.header) else {
            return Ok(());
        };
        let (file, _) = self.format(true).infer_schema(buf, Some(0))?;
        if file.fields().len() != schema.fields().len() {
            return Ok(());
        }
        let order: Option<Vec<usize>> = file
            .fields()
            .iter()
            .map(|f| schema.index_of(f.name()).ok())
            .collect();
        if let Some(order) = order {
            let mut seen = vec![false; order.len()];
            let permutation = order
                .iter()
                .all(|&j| !std::mem::replace(&mut seen[j], true));
            if permutation && order.iter().enumerate().any(|(i, &j)| i != j) {
                self.order = Some(order);
            }
        }
        Ok(())
    }

    /// Decodes up to `max_rows` records from the start of `buf`, which must begin on a
    /// record boundary. `at_start`: `buf` begins at the start of the file (a header is
    /// skipped). Only complete records are taken unless `eof`.
    pub fn decode(
        &mut self,
        buf: &[u8],
        max_rows: usize,
        eof: bool,
        at_start: bool,
    ) -> Result<Decoded> {
        let usable = if eof {
            buf.len()
        } else {
            complete_prefix(buf, self.options.quote as u8)
        };
        // a UTF-8 byte order mark at the file's start is not part of the first name
        let bom = if at_start && buf[..usable].starts_with(crate::BOM) {
            crate::BOM.len()
        } else {
            0
        };
        let buf = &buf[bom..usable];
        if buf.is_empty() {
            return Ok(Decoded {
                consumed: bom,
                ..Default::default()
            });
        }
        let header = self.options.header && at_start;
        if self.schema.is_none() {
            match self.infer(buf)? {
                Some(schema) => self.schema = Some(schema),
                // a header and no record yet: its types are unknown; wait for records
                // (or, at the end of the input, go on to the next one)
                None if eof => {
                    return Ok(Decoded {
                        consumed: bom + buf.len(),
                        lines: crate::count_newlines(buf),
                        ..Default::default()
                    })
                }
                None => return Ok(Decoded::default()),
            }
        }
        if at_start {
            self.follow_header(buf)?;
        }
        let wanted = self
            .schema
            .clone()
            .ok_or_else(|| Error::internal("no csv schema"))?;
        // the columns in the file's order
        let schema = match &self.order {
            Some(order) => Arc::new(Schema::new(
                order
                    .iter()
                    .map(|&j| wanted.field(j).clone())
                    .collect::<Vec<_>>(),
            )),
            None => wanted.clone(),
        };
        let rows = max_rows;
        let mut d = self.builder(schema.clone(), header, rows).build_decoder();
        let mut out = Decoded::default();
        match feed(&mut d, buf) {
            Ok(consumed) => {
                out.consumed = consumed;
                out.lines = crate::count_newlines(&buf[..consumed]);
                let all = &buf[..consumed];
                match d.flush() {
                    Ok(batch) if !self.arrow_would_change(all, header, rows, &schema)? => {
                        out.batch = batch
                    }
                    // values arrow-csv would change: decimal places beyond the scale,
                    // sub-second digits beyond the unit, decimals it misreads
                    Ok(_) => {
                        let err = arrow_schema::ArrowError::ParseError("digits lost".into());
                        self.isolate(all, header, rows, &schema, &mut out, err)?
                    }
                    Err(err) => {
                        if let Err(e) = self.isolate(all, header, rows, &schema, &mut out, err) {
                            // not even text: a record with the wrong number of fields or
                            // bytes that are not UTF-8; each record on its own finds which
                            let n = self.one_by_one(all, header, rows, &schema, &mut out, e)?;
                            out.consumed = n;
                            out.lines = crate::count_newlines(&buf[..n]);
                        }
                    }
                }
            }
            Err(e) => {
                out.consumed = self.one_by_one(buf, header, rows, &schema, &mut out, e)?;
                out.lines = crate::count_newlines(&buf[..out.consumed]);
            }
        }
        if let Some(order) = &self.order {
            // back to the schema's order
            let from: Vec<usize> = (0..order.len())
                .map(|j| order.iter().position(|&o| o == j).unwrap_or(j))
                .collect();
            if let Some(batch) = out.batch.take() {
                out.batch = Some(batch.project(&from)?.with_schema(wanted)?);
            }
        }
        out.consumed += bom;
        Ok(out)
    }

    /// Whether a decimal or timestamp column of `buf` has a value arrow-csv would read
    /// as another ([`crate::scalars::arrow_would_change`]: digits dropped, a decimal
    /// misread); read again as text, those columns only. The records are then cast from
    /// text, which reads them exactly or refuses them.
    fn arrow_would_change(
        &self,
        buf: &[u8],
        header: bool,
        rows: usize,
        schema: &SchemaRef,
    ) -> Result<bool> {
        let exact: Vec<(usize, &DataType)> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                matches!(
                    f.data_type(),
                    DataType::Decimal128(..) | DataType::Decimal256(..) | DataType::Timestamp(..)
                )
            })
            .map(|(i, f)| (i, f.data_type()))
            .collect();
        if exact.is_empty() {
            return Ok(false);
        }
        let mut d = self
            .builder(text_schema(schema), header, rows)
            .with_projection(exact.iter().map(|&(i, _)| i).collect())
            .build_decoder();
        feed(&mut d, buf)?;
        let Some(text) = d.flush()? else {
            return Ok(false);
        };
        Ok(exact.iter().enumerate().any(|(c, &(_, data_type))| {
            text.column(c)
                .as_any()
                .downcast_ref::<StringArray>()
                .is_some_and(|s| {
                    s.iter()
                        .flatten()
                        .any(|v| crate::scalars::arrow_would_change(v, data_type).is_some())
                })
        }))
    }

    fn builder(&self, schema: SchemaRef, header: bool, rows: usize) -> ReaderBuilder {
        let builder = ReaderBuilder::new(schema)
            .with_header(header)
            .with_delimiter(self.options.delimiter as u8)
            .with_quote(self.options.quote as u8)
            .with_batch_size(rows.max(1));
        match self.options.null_regex() {
            Some(nulls) => builder.with_null_regex(nulls),
            None => builder,
        }
    }

    /// Re-reads `buf` as text and converts column by column; a record with a value that
    /// does not convert becomes a [`BadRecord`].
    fn isolate(
        &self,
        buf: &[u8],
        header: bool,
        rows: usize,
        schema: &SchemaRef,
        out: &mut Decoded,
        first_error: arrow_schema::ArrowError,
    ) -> Result<()> {
        let mut d = self
            .builder(text_schema(schema), header, rows)
            .build_decoder();
        feed(&mut d, buf)?;
        let Some(text) = d.flush().map_err(|_| Error::from(first_error))? else {
            return Ok(());
        };
        let crate::CastText {
            columns,
            failed: mut reasons,
        } = crate::cast_text(&text, schema, self.options.null_value.is_none())?;
        let ok: Vec<bool> = reasons.iter().map(Option::is_none).collect();
        let header_lines = usize::from(header);
        for (r, reason) in reasons.iter_mut().enumerate() {
            if let Some(reason) = reason.take() {
                let raw: Vec<&str> = (0..text.num_columns())
                    .map(|c| {
                        text.column(c)
                            .as_any()
                            .downcast_ref::<StringArray>()
                            .map(|s| if s.is_null(r) { "" } else { s.value(r) })
                            .unwrap_or("")
                    })
                    .collect();
                out.bad.push(BadRecord {
                    index: r + header_lines,
                    raw: raw.join(&self.options.delimiter.to_string()),
                    error: Error::data(reason),
                    bytes: None,
                });
            }
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let mask = BooleanArray::from(ok);
        out.batch = Some(arrow_select::filter::filter_record_batch(&batch, &mask)?);
        Ok(())
    }
}

impl CsvDecoder {
    /// Decodes the first `rows` records of `buf` one at a time (after `first`, the
    /// error of all of them at once): each that does not read becomes a
    /// [`BadRecord`]. Returns the bytes they take.
    fn one_by_one(
        &self,
        buf: &[u8],
        header: bool,
        rows: usize,
        schema: &SchemaRef,
        out: &mut Decoded,
        first: Error,
    ) -> Result<usize> {
        let mut batches = Vec::new();
        let mut start = 0;
        let ends = record_ends(buf, self.options.quote as u8);
        for (index, &end) in ends.iter().take(rows + usize::from(header)).enumerate() {
            let record = &buf[start..end];
            start = end;
            if header && index == 0 {
                continue;
            }
            let mut one = Decoded::default();
            let parse = || arrow_schema::ArrowError::ParseError("record".into());
            match self.isolate(record, false, 1, schema, &mut one, parse()) {
                Ok(()) => {
                    batches.extend(one.batch);
                    out.bad
                        .extend(one.bad.into_iter().map(|b| BadRecord { index, ..b }));
                }
                Err(e) => {
                    let line = record.strip_suffix(b"\n").unwrap_or(record);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let e = Error::data(format!("not a CSV record of the schema: {e}"));
                    out.bad.push(BadRecord::of(index, line, e));
                }
            }
        }
        if out.bad.is_empty() {
            // the records read one by one but not together: nothing to tell them by
            return Err(first);
        }
        out.batch = Some(arrow_select::concat::concat_batches(schema, &batches)?);
        Ok(start)
    }
}

/// The end (after its newline) of each record of `buf`: newlines inside quotes do not
/// end one; a last record without a newline ends with `buf`.
fn record_ends(buf: &[u8], quote: u8) -> Vec<usize> {
    let mut in_quotes = false;
    let mut ends = Vec::new();
    for (i, &b) in buf.iter().enumerate() {
        if b == quote {
            in_quotes = !in_quotes;
        } else if b == b'\n' && !in_quotes {
            ends.push(i + 1);
        }
    }
    if ends.last() != Some(&buf.len()) && !buf.is_empty() {
        ends.push(buf.len());
    }
    ends
}

/// `schema` with every column read as text.
fn text_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

/// Feeds `buf` until the batch is full or the input ends (the header skip and the
/// end of input each take a call of their own); returns the bytes consumed.
fn feed(d: &mut arrow_csv::reader::Decoder, buf: &[u8]) -> Result<usize> {
    let mut consumed = 0;
    loop {
        let n = d.decode(&buf[consumed..])?;
        consumed += n;
        if n == 0 || d.capacity() == 0 {
            return Ok(consumed);
        }
    }
}

/// Length of the prefix of `buf` that ends after a newline outside quotes.
fn complete_prefix(buf: &[u8], quote: u8) -> usize {
    let mut in_quotes = false;
    let mut last = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == quote {
            in_quotes = !in_quotes;
        } else if b == b'\n' && !in_quotes {
            last = i + 1;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_past_a_decimal_scale_are_read_not_shifted_in() {
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "n",
            DataType::Decimal128(10, 0),
            true,
        )]));
        let mut d = CsvDecoder::new(Some(schema), CsvOptions::default());
        let out = d.decode(b"n\n12.0\n-3.00\n", 100, true, true).unwrap();
        let b = out.batch.unwrap();
        let n = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Decimal128Type>(
            b.column(0),
        );
        assert_eq!((n.value(0), n.value(1)), (12, -3));
        // what arrow-csv reads right is read as before: exponents, a bare point
        let out = d.decode(b"n\n1.5e1\n7.\n", 100, true, true).unwrap();
        let b = out.batch.unwrap();
        let n = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Decimal128Type>(
            b.column(0),
        );
        assert_eq!((n.value(0), n.value(1)), (15, 7));
        // and text that is no number is a bad record, not 0
        let out = d.decode(b"n\n5\ne5\n", 100, true, true).unwrap();
        assert_eq!((out.batch.unwrap().num_rows(), out.bad.len()), (1, 1));
    }

    #[test]
    fn infers_from_header_and_keeps_quoted_newlines() {
        let mut d = CsvDecoder::new(None, CsvOptions::default());
        let buf = b"id,note\n1,\"a\nb\"\n2,c\n3,partial";
        let out = d.decode(buf, 100, false, true).unwrap();
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(out.consumed, buf.len() - "3,partial".len());
        assert_eq!(d.schema().unwrap().field(0).data_type(), &DataType::Int64);
    }

    #[test]
    fn inferred_timestamps_hold_microseconds_so_a_later_fraction_fits() {
        let mut d = CsvDecoder::new(None, CsvOptions::default());
        // whole seconds only in the records the types are inferred from
        let out = d
            .decode(b"at\n2024-05-01T10:00:00\n", 100, false, true)
            .unwrap();
        assert_eq!(out.batch.unwrap().num_rows(), 1);
        let out = d
            .decode(b"2024-05-01T10:00:01.5\n", 100, false, false)
            .unwrap();
        assert!(out.bad.is_empty());
        let at = out.batch.unwrap();
        assert_eq!(
            at.column(0)
                .as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                .unwrap()
                .value(0)
                % 1_000_000,
            500_000
        );
        assert_eq!(
            d.schema().unwrap().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
    }

    #[test]
    fn a_header_without_records_waits_for_them_before_the_types_are_inferred() {
        let mut d = CsvDecoder::new(None, CsvOptions::default());
        let out = d.decode(b"id,note,extra\n", 100, false, true).unwrap();
        assert_eq!((out.consumed, out.batch.is_none()), (0, true));
        assert!(d.schema().is_none());
        // the rows appended later: typed by them, the empty column as text
        let buf = b"id,note,extra\n1,a,\n2,b,\n";
        let out = d.decode(buf, 100, false, true).unwrap();
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 2);
        let schema = d.schema().unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(2).data_type(), &DataType::Utf8);
        // a value in the column empty so far is kept, not turned into null
        let out = d.decode(b"3,c,kept\n", 100, false, false).unwrap();
        let extra = out.batch.unwrap().column(2).clone();
        assert_eq!(
            extra
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0),
            "kept"
        );
        // at the end of a header-only input: consumed, still nothing inferred
        let mut d = CsvDecoder::new(None, CsvOptions::default());
        let out = d.decode(b"id,note\n", 100, true, true).unwrap();
        assert_eq!((out.consumed, d.schema().is_none()), (8, true));
    }

    #[test]
    fn a_record_with_the_wrong_field_count_or_bytes_not_utf8_is_a_bad_record() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let mut d = CsvDecoder::new(Some(schema), CsvOptions::default());
        let buf = b"id,name\n1,a\n2\n3,c,extra\n4,\xff\xfe\n5,e\n";
        let out = d.decode(buf, 100, true, true).unwrap();
        let ids = out.batch.unwrap().column(0).clone();
        let ids: Vec<i64> = ids
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(ids, [1, 5]);
        let bad: Vec<(usize, &str)> = out.bad.iter().map(|b| (b.index, b.raw.as_str())).collect();
        assert_eq!(bad, [(2, "2"), (3, "3,c,extra"), (4, "4,\u{fffd}\u{fffd}")]);
    }

    #[test]
    fn a_decimal_with_more_places_than_its_scale_is_a_bad_record_not_rounded() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Decimal128(12, 2), true),
        ]));
        let mut d = CsvDecoder::new(Some(schema), CsvOptions::default());
        let out = d
            .decode(
                b"id,amount\n1,1.00\n2,1.005\n3,2.5\n4,1.0500\n",
                100,
                true,
                true,
            )
            .unwrap();
        let batch = out.batch.unwrap();
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(out.bad.len(), 1);
        assert_eq!(out.bad[0].index, 2);
        assert_eq!(out.bad[0].raw, "2,1.005");
        assert!(
            out.bad[0].error.to_string().contains("column \"amount\""),
            "{}",
            out.bad[0].error
        );
    }

    #[test]
    fn a_file_whose_header_orders_the_columns_otherwise_is_read_by_name() {
        let mut d = CsvDecoder::new(None, CsvOptions::default());
        let first = d.decode(b"id,name\n1,a\n", 100, true, true).unwrap();
        let first = first.batch.unwrap();
        let second = d.decode(b"name,id\nb,2\n", 100, false, true).unwrap();
        let more = d.decode(b"c,3\n", 100, true, false).unwrap();
        for batch in [second.batch.unwrap(), more.batch.unwrap()] {
            assert_eq!(batch.schema(), first.schema());
            let id = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>();
            assert!(
                id.is_some_and(|a| a.value(0) == 2 || a.value(0) == 3),
                "{batch:?}"
            );
        }
        // resuming inside such a file follows its header too
        let mut d = CsvDecoder::new(Some(first.schema()), CsvOptions::default());
        d.prime(b"name,id\nb,2\n", true).unwrap();
        let out = d.decode(b"c,3\n", 100, true, false).unwrap();
        let batch = out.batch.unwrap();
        let name = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(name.value(0), "c");
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_not_part_of_the_first_name() {
        let mut d = CsvDecoder::new(None, CsvOptions::default());
        let input = b"\xEF\xBB\xBFid,name\n1,a\n";
        let out = d.decode(input, 100, true, true).unwrap();
        assert_eq!(out.consumed, input.len());
        let batch = out.batch.unwrap();
        assert_eq!(batch.schema().field(0).name(), "id");
        assert_eq!(batch.num_rows(), 1);
    }

    #[test]
    fn isolates_a_value_that_does_not_convert() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let mut d = CsvDecoder::new(Some(schema), CsvOptions::default());
        let out = d.decode(b"id\n1\nx\n3\n", 100, true, true).unwrap();
        assert_eq!(out.batch.unwrap().num_rows(), 2);
        assert_eq!(out.bad.len(), 1);
        assert_eq!(out.bad[0].index, 2);
        assert!(out.bad[0]
            .error
            .to_string()
            .contains("\"x\" is not a valid int64"));
    }
}
