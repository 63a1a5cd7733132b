//! # sluice-formats
//!
//! JSON lines, CSV and Parquet codecs shared by the connectors that read and write
//! bytes (file, S3, Kafka). Decoders turn whole records into Arrow batches and isolate
//! records that do not decode, so one bad line becomes a [`connector_api::Reject`]
//! instead of a failed batch. Encoders write batches to any `std::io::Write`.

mod csv;
mod encode;
mod json;
mod options;

pub use crate::csv::CsvDecoder;
pub use encode::Encoder;
pub use json::JsonDecoder;
pub use options::{CsvOptions, Format, ParquetCompression, ParquetOptions};

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

/// Counts `\n` bytes.
pub fn count_newlines(buf: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', buf).count() as u64
}
