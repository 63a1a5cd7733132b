//! Format options as they appear in pipeline files.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The encoding of records in a file, object or message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line (JSON lines / NDJSON).
    #[default]
    Json,
    /// Comma (or other delimiter) separated values, RFC 4180 quoting.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// CSV options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// The first line holds column names (read: skipped and used for inference; write: written).
    #[serde(default = "yes")]
    pub header: bool,
    /// Field separator, one ASCII character.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// Quote character, one ASCII character.
    #[serde(default = "double_quote")]
    pub quote: char,
}

fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}
fn double_quote() -> char {
    '"'
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: true,
            delimiter: ',',
            quote: '"',
        }
    }
}

impl CsvOptions {
    /// Checks the characters are single ASCII bytes; names the key otherwise.
    pub fn validate(&self) -> connector_api::Result<()> {
        for (key, c) in [("csv.delimiter", self.delimiter), ("csv.quote", self.quote)] {
            if !c.is_ascii() {
                return Err(connector_api::Error::config(format!(
                    "{key} must be one ASCII character, got '{c}'"
                ))
                .with_field(key));
            }
        }
        Ok(())
    }
}

/// Parquet compression codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCompression {
    /// Zstandard, level 1 (fast, small).
    #[default]
    Zstd,
    /// Snappy.
    Snappy,
    /// No compression.
    None,
}

/// Parquet writer options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetOptions {
    /// Compression codec of data pages.
    #[serde(default)]
    pub compression: ParquetCompression,
    /// Rows per row group. The writer holds one row group in memory, so this bounds
    /// the sink's memory.
    #[serde(default = "row_group_size")]
    pub row_group_size: usize,
}

fn row_group_size() -> usize {
    262_144
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            compression: ParquetCompression::default(),
            row_group_size: row_group_size(),
        }
    }
}
