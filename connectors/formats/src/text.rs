//! One decoder for the line-oriented formats, so every byte-reading source (file, S3)
//! drives JSON lines and CSV the same way.

use arrow_schema::SchemaRef;
use connector_api::Result;

use crate::{CsvDecoder, CsvOptions, Decoded, Format, JsonDecoder};

/// A JSON lines or CSV decoder.
pub enum TextDecoder {
    /// JSON lines.
    Json(JsonDecoder),
    /// CSV.
    Csv(CsvDecoder),
}

impl TextDecoder {
    /// The decoder for `format`; `None` for Parquet, which is not line-oriented.
    pub fn new(format: Format, declared: Option<SchemaRef>, csv: &CsvOptions) -> Option<Self> {
        match format {
            Format::Json => Some(TextDecoder::Json(JsonDecoder::new(declared))),
            Format::Csv => Some(TextDecoder::Csv(CsvDecoder::new(declared, csv.clone()))),
            Format::Parquet => None,
        }
    }

    /// Decodes only `columns` of the declared schema, in the schema's order, when the
    /// format can pass the others over unread (JSON lines); see
    /// [`JsonDecoder::read_only`]. False when it cannot (CSV): batches keep every
    /// column.
    pub fn read_only(&mut self, columns: &[String]) -> bool {
        match self {
            TextDecoder::Json(d) => d.read_only(columns),
            TextDecoder::Csv(_) => false,
        }
    }

    /// Decodes whole records from the start of `buf` (see [`JsonDecoder::decode`]);
    /// `at_start` says `buf` begins at the start of the input (a CSV header is there).
    pub fn decode(
        &mut self,
        buf: &[u8],
        rows: usize,
        eof: bool,
        at_start: bool,
    ) -> Result<Decoded> {
        match self {
            TextDecoder::Json(d) => d.decode(buf, rows, eof),
            TextDecoder::Csv(d) => d.decode(buf, rows, eof, at_start),
        }
    }

    /// Before resuming inside an input: infers a CSV schema from `head`, the input's
    /// first bytes, when none is declared or known yet (see [`CsvDecoder::prime`]).
    /// JSON lines name their fields in every record: nothing to do.
    pub fn prime(&mut self, head: &[u8], eof: bool) -> Result<()> {
        match self {
            TextDecoder::Json(_) => Ok(()),
            TextDecoder::Csv(d) => d.prime(head, eof),
        }
    }

    /// Decodes up to `parts` batches of `rows` (in parallel where the format allows).
    pub fn decode_parts(
        &mut self,
        buf: &[u8],
        rows: usize,
        parts: usize,
        eof: bool,
        at_start: bool,
    ) -> Result<Vec<Decoded>> {
        match self {
            TextDecoder::Json(d) => d.decode_parts(buf, rows, parts, eof),
            TextDecoder::Csv(d) => Ok(vec![d.decode(buf, rows, eof, at_start)?]),
        }
    }

    /// The schema, once declared or inferred.
    pub fn schema(&self) -> Option<SchemaRef> {
        match self {
            TextDecoder::Json(d) => d.schema().cloned(),
            TextDecoder::Csv(d) => d.schema().cloned(),
        }
    }
}
