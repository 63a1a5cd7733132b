//! # sluice-file
//!
//! Reads and writes local files: JSON lines, CSV and Parquet.
//!
//! - The source reads a path or glob in order; each file is a split, its offset the
//!   file's identity (inode and a fingerprint of its first bytes, not only its name)
//!   plus the position after the last delivered record, so a restart resumes
//!   mid-file. `watch = true` keeps running: new files and appended lines arrive.
//! - The sink writes files under a directory, rolling by records and bytes. Files are
//!   written under temporary names and published by rename on flush, together with a
//!   small state file holding the offsets: a restart rolls an interrupted publish
//!   forward and resumes where the published data ends (exactly-once; beside other
//!   sinks, from a source that reads in order again).

mod config;
mod identity;
mod sink;
mod source;
mod writeback;

pub use config::{FileSinkConfig, FileSourceConfig};
pub use sink::FileSink;
pub use source::FileSource;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector, SplitList};

/// The connector name.
pub const NAME: &str = "file";

/// The `file` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct File;

#[connector_api::async_trait]
impl SourceConnector for File {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "local files (JSON lines, CSV, Parquet); a path or glob, optionally watched";
    type Config = FileSourceConfig;

    fn validate(&self, config: &FileSourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: FileSourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(FileSource::new(config)?))
    }

    async fn check(&self, config: &FileSourceConfig) -> Result<()> {
        source::check(config)
    }

    async fn discover(&self, config: &FileSourceConfig) -> Result<Option<SchemaRef>> {
        source::discover(config)
    }

    /// Each file the glob matches is a split.
    async fn splits(&self, config: &FileSourceConfig) -> Result<Option<SplitList>> {
        Ok(Some(SplitList {
            splits: source::splits(config)?,
            growing: config.watch,
            cut: None,
        }))
    }

    /// The declared schema, which JSON lines and CSV are read into; Parquet files
    /// bring their own.
    fn record_schema(&self, config: &FileSourceConfig) -> Option<SchemaRef> {
        match config.format {
            sluice_formats::Format::Parquet => None,
            _ => config.declared_schema().ok().flatten(),
        }
    }
}

#[connector_api::async_trait]
impl SinkConnector for File {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "local files (JSON lines, CSV, Parquet) written atomically, rolled by records and bytes";
    type Config = FileSinkConfig;

    fn validate(&self, config: &FileSinkConfig) -> Result<()> {
        config.validate()
    }

    fn accepts(&self, config: &FileSinkConfig, schema: &arrow_schema::Schema) -> Result<()> {
        config.csv.accepts(config.format, schema)
    }

    /// The directory, absolute, its longest existing part resolved through symbolic
    /// links and `..`: one sink's files and state per directory.
    fn destination(&self, config: &FileSinkConfig) -> Option<String> {
        let dir = std::path::absolute(&config.path).ok()?;
        let mut existing = dir.as_path();
        let mut rest = Vec::new();
        let resolved = loop {
            if let Ok(real) = std::fs::canonicalize(existing) {
                break real;
            }
            rest.push(existing.file_name()?.to_owned());
            existing = existing.parent()?;
        };
        let dir = rest.iter().rev().fold(resolved, |d, part| d.join(part));
        Some(format!("directory \"{}\"", dir.display()))
    }

    fn create_sink(&self, config: FileSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink::new(config)))
    }

    async fn check(&self, config: &FileSinkConfig) -> Result<()> {
        sink::check(config)
    }
}
