//! # sluice-formats
//!
//! JSON lines, CSV, Parquet and Avro codecs shared by the connectors that read and
//! write bytes (file, S3, Kafka and the other event streams, whose message payloads
//! and schema registry client sit behind the `registry` feature). Decoders turn whole
//! records into Arrow batches and isolate records that do not decode, so one bad line
//! becomes a [`connector_api::Reject`] instead of a failed batch. Encoders write
//! batches to any `std::io::Write`.

pub mod avro;
pub mod calendar;
pub mod changes;
mod columns;
mod compression;
mod csv;
mod encode;
mod json;
mod json_encoders;
mod json_exact;
mod json_typed;
#[cfg(feature = "registry")]
pub mod messages;
mod options;
mod parquet_writer;
#[cfg(feature = "registry")]
pub mod registry;
mod scalars;
pub mod scan;
mod text;
mod text_cast;

pub use crate::csv::CsvDecoder;
pub use compression::{decompressing, Compression};
pub use encode::{json_lines, Encoder};
pub use json::JsonDecoder;
pub use options::{
    CsvOptions, DecimalJson, Format, JsonOptions, NestedCsv, ParquetCompression, ParquetOptions,
};
pub use parquet_writer::ParallelParquet;
pub use scalars::unit_digits;
pub use text::TextDecoder;
pub use text_cast::{cast_text, CastText};

use arrow_array::RecordBatch;

/// A record that did not decode: its index among the records of the call, its text,
/// and why.
#[derive(Debug)]
pub struct BadRecord {
    /// 0-based index of the line (JSON) or record (CSV) within the decoded range.
    pub index: usize,
    /// The record as read.
    pub raw: String,
    /// What was wrong.
    pub error: connector_api::Error,
    /// The record's bytes when `raw` could not hold them exactly (not UTF-8).
    pub bytes: Option<Vec<u8>>,
}

impl BadRecord {
    /// The bad record at `index`, read from `bytes`, for `error`: its text, and its
    /// bytes too when they are not UTF-8.
    pub fn of(index: usize, bytes: &[u8], error: connector_api::Error) -> Self {
        let raw = String::from_utf8_lossy(bytes);
        let exact = matches!(raw, std::borrow::Cow::Borrowed(_));
        BadRecord {
            index,
            raw: raw.into_owned(),
            error,
            bytes: (!exact).then(|| bytes.to_vec()),
        }
    }
}

/// What one call of a text decoder produced.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The records that decoded (None when there were none).
    pub batch: Option<RecordBatch>,
    /// Bytes of the input consumed (always ends on a record boundary).
    pub consumed: usize,
    /// Lines consumed (newlines counted in the consumed bytes).
    pub lines: u64,
    /// Records that did not decode.
    pub bad: Vec<BadRecord>,
}

impl Decoded {
    /// The decoded records as a batch advancing `offsets` (no records: an empty batch
    /// of `schema`, or of no columns before a schema is known); every bad record becomes
    /// a reject of `split` at `position(index)`, `index` counting records of this call.
    pub fn into_batch(
        self,
        schema: Option<arrow_schema::SchemaRef>,
        offsets: connector_api::Offsets,
        split: &str,
        position: impl Fn(usize) -> String,
    ) -> connector_api::Batch {
        let records = match (self.batch, schema) {
            (Some(b), _) => b,
            (None, Some(s)) => RecordBatch::new_empty(s),
            (None, None) => connector_api::Batch::idle().records,
        };
        let mut out = connector_api::Batch::new(records, offsets);
        out.rejects = self
            .bad
            .into_iter()
            .map(|b| connector_api::Reject {
                bytes: b.bytes,
                ..connector_api::Reject::new(split, position(b.index), b.raw, b.error)
            })
            .collect();
        out
    }
}

/// Each row of `batch` as a JSON object (as in JSON lines), for a record that has to
/// be shown whole: a dead letter.
pub fn row_texts(batch: &RecordBatch) -> connector_api::Result<Vec<Option<String>>> {
    let rows: arrow_array::ArrayRef =
        std::sync::Arc::new(arrow_array::StructArray::from(batch.clone()));
    json_texts("row", &rows)
}

/// Each value of a column as JSON text (None for null): lists, structs and maps as
/// they appear in JSON lines, for databases that store them as JSON.
pub fn json_texts(
    name: &str,
    array: &arrow_array::ArrayRef,
) -> connector_api::Result<Vec<Option<String>>> {
    use arrow_array::Array;
    let schema = std::sync::Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "v",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![array.clone()])?;
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
        w.write(&batch)?;
        w.finish()?;
    }
    let mut lines = buf.split(|&b| b == b'\n');
    let mut out = Vec::with_capacity(array.len());
    for i in 0..array.len() {
        let line = lines.next().unwrap_or_default();
        if array.is_null(i) {
            out.push(None);
            continue;
        }
        let mut obj: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
            connector_api::Error::internal(format!("column \"{name}\": json encoding"))
                .with_source(e)
        })?;
        let v = obj
            .get_mut("v")
            .map(serde_json::Value::take)
            .unwrap_or_default();
        out.push(Some(v.to_string()));
    }
    Ok(out)
}

/// The UTF-8 byte order mark some editors put at the start of a text file.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Counts `\n` bytes.
pub fn count_newlines(buf: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', buf).count() as u64
}
