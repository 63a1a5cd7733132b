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
    /// Text that stands for null, read and written (e.g. `\\N`, as PostgreSQL's COPY
    /// writes it). Unset: an empty field reads as null and null is written as an empty
    /// field, so an empty string does not come back as one. Set: only this text is
    /// null, an empty field is an empty string (and an error in a column of another
    /// type), and a text value equal to it is refused when writing (it would read back
    /// as null).
    pub null_value: Option<String>,
    /// Writing: how a list, struct or map column goes into CSV, which has no nested
    /// values: `error` (the default: the column is named, nothing is written) or
    /// `json` (each value as its JSON text, as in JSON lines).
    #[serde(default)]
    pub nested: NestedCsv,
}

/// How a CSV writer takes a nested column (`csv.nested`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NestedCsv {
    /// A nested column is an error naming it.
    #[default]
    Error,
    /// Each value is written as its JSON text.
    Json,
}

impl CsvOptions {
    /// Whether records of `schema` can be written in `format` with these options: a
    /// nested column into CSV needs `nested = "json"` ([`Self::refuse_nested`]).
    pub fn accepts(
        &self,
        format: crate::Format,
        schema: &arrow_schema::Schema,
    ) -> connector_api::Result<()> {
        match format {
            crate::Format::Csv => self.refuse_nested(schema),
            _ => Ok(()),
        }
    }

    /// The pattern arrow-csv reads nulls by: `null_value` exactly, when set.
    pub(crate) fn null_regex(&self) -> Option<regex::Regex> {
        let text = self.null_value.as_deref()?;
        regex::Regex::new(&format!("^{}$", regex::escape(text))).ok()
    }

    /// The first nested (list, struct or map) field of `schema` when `nested` is
    /// `error`: CSV cannot hold it. The error names the column and the way out.
    pub fn refuse_nested(&self, schema: &arrow_schema::Schema) -> connector_api::Result<()> {
        if self.nested == NestedCsv::Json {
            return Ok(());
        }
        match schema.fields().iter().find(|f| f.data_type().is_nested()) {
            Some(f) => Err(connector_api::Error::schema(format!(
                "column \"{}\" is {}: CSV holds no nested values; set csv.nested = \"json\" to write each as its JSON text",
                f.name(),
                connector_api::type_name(f.data_type())
            ))
            .with_field("csv.nested")),
            None => Ok(()),
        }
    }
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
            null_value: None,
            nested: NestedCsv::Error,
        }
    }
}

impl CsvOptions {
    /// Checks the characters are single ASCII bytes; names the key otherwise.
    pub fn validate(&self) -> connector_api::Result<()> {
        if self.null_value.as_deref() == Some("") {
            return Err(connector_api::Error::config(
                "csv.null_value must not be empty: leave it out for empty fields as null",
            )
            .with_field("csv.null_value"));
        }
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

/// JSON lines writer options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonOptions {
    /// How decimal columns are written: `number` (the default: `12.50`) or `string`
    /// (`"12.50"`). A reader without a declared schema takes a number for a float,
    /// losing digits and the scale; a string keeps both, and a declared decimal
    /// column reads either form.
    #[serde(default)]
    pub decimals: DecimalJson,
}

/// How a JSON writer writes a decimal (`json.decimals`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecimalJson {
    /// A JSON number with the column's scale: `12.50`.
    #[default]
    Number,
    /// A JSON string of the same digits: `"12.50"`.
    String,
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
