//! Options of the file source and sink.

use std::time::Duration;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{schema_from_specs, Error, FieldSpec, Result};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_formats::{Compression, CsvOptions, Format, JsonOptions, ParquetOptions};

/// Options of the `file` source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// File path or glob (`data/*.jsonl`), relative to the working directory. Files are
    /// read in name order.
    pub path: String,
    /// Record format: `json` (JSON lines), `csv` or `parquet`.
    #[serde(default)]
    pub format: Format,
    /// CSV options (with `format = "csv"`).
    #[serde(default)]
    pub csv: CsvOptions,
    /// Declared columns; absent = inferred from the first records (JSON, CSV) or taken
    /// from the file (Parquet). Declare it for exact types (decimals, timestamps).
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
    /// Keep running and pick up new files and appended lines.
    #[serde(default)]
    pub watch: bool,
    /// In watch mode, how often to look for changes besides file system events.
    #[serde(default = "poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Bytes read from a file at a time.
    #[serde(default = "read_buffer")]
    pub read_buffer: usize,
    /// How many bytes of input a record may take before it ends: a line not ended
    /// within them is a bad record (naming its file and line), skipped without being
    /// held in memory.
    #[serde(default = "max_line_bytes")]
    pub max_line_bytes: usize,
    /// Compression of JSON lines and CSV files: `auto` (from the name: `.gz`, `.zst`),
    /// `none`, `gzip` or `zstd`. A compressed file is read as a whole: it should
    /// appear whole (written aside, then renamed in), and resuming inside it
    /// decompresses it again from its start.
    #[serde(default)]
    pub compression: Compression,
}

fn poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn read_buffer() -> usize {
    1 << 20
}

fn max_line_bytes() -> usize {
    16 << 20
}

impl FileSourceConfig {
    /// Checks the options without touching the file system.
    pub fn validate(&self) -> Result<()> {
        if self.path.trim().is_empty() {
            return Err(Error::config("path must not be empty").with_field("path"));
        }
        glob::Pattern::new(&self.path).map_err(|e| {
            Error::config(format!("path \"{}\" is not a valid glob", self.path))
                .with_source(e)
                .with_field("path")
        })?;
        self.csv.validate()?;
        if self.format == Format::Parquet
            && !matches!(self.compression, Compression::Auto | Compression::None)
        {
            return Err(Error::config(
                "compression applies to json and csv; Parquet compresses inside the file",
            )
            .with_field("compression"));
        }
        self.declared_schema()?;
        if self.read_buffer < 4096 {
            return Err(
                Error::config("read_buffer must be at least 4096 bytes").with_field("read_buffer")
            );
        }
        Ok(())
    }

    /// The declared schema, if any.
    pub fn declared_schema(&self) -> Result<Option<SchemaRef>> {
        if self.schema.is_empty() {
            Ok(None)
        } else {
            schema_from_specs(&self.schema).map(Some)
        }
    }
}

/// Options of the `file` sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory the files are written to; created when missing.
    pub path: String,
    /// Record format: `json` (JSON lines), `csv` or `parquet`.
    #[serde(default)]
    pub format: Format,
    /// JSON lines options (with `format = "json"`).
    #[serde(default)]
    pub json: JsonOptions,
    /// CSV options (with `format = "csv"`).
    #[serde(default)]
    pub csv: CsvOptions,
    /// Parquet options (with `format = "parquet"`).
    #[serde(default)]
    pub parquet: ParquetOptions,
    /// File name prefix; names are `PREFIX-<pipeline tag>-<start position hash>.<ext>`
    /// (the tag, a hash of the pipeline name, keeps pipelines sharing a directory apart).
    #[serde(default = "prefix")]
    pub prefix: String,
    /// Start a new file after this many records (0 = no limit).
    #[serde(default = "max_records")]
    pub max_records: u64,
    /// Start a new file after this many bytes (0 = no limit).
    #[serde(default = "max_bytes")]
    pub max_bytes: u64,
}

fn prefix() -> String {
    "part".into()
}
fn max_records() -> u64 {
    10_000_000
}
fn max_bytes() -> u64 {
    256 << 20
}

impl FileSinkConfig {
    /// Checks the options without touching the file system.
    pub fn validate(&self) -> Result<()> {
        if self.path.trim().is_empty() {
            return Err(Error::config("path must not be empty").with_field("path"));
        }
        if self.prefix.is_empty()
            || self.prefix.contains(['/', '\\'])
            || self.prefix.starts_with('.')
        {
            return Err(Error::config(format!(
                "prefix \"{}\" must be a plain file name part (no '/', not starting with '.')",
                self.prefix
            ))
            .with_field("prefix"));
        }
        self.csv.validate()
    }
}
