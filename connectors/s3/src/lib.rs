//! # sluice-s3
//!
//! Reads and writes objects in S3 or any server that speaks its API (MinIO, Ceph,
//! moto): JSON lines, CSV (both optionally gzip or zstd) and Parquet, on `aws-sdk-s3`.
//!
//! - The sink writes objects under a key template that partitions by column values and
//!   by event or processing time (`orders/dt={day}/region={region}/`), rolling by
//!   records, bytes and at every checkpoint. Objects are multipart uploads completed
//!   only on flush, together with a state object holding the offsets: nothing is
//!   visible half-written, and a restart neither loses nor repeats records
//!   (exactly-once; beside other sinks, from a source that reads in order again). See
//!   [`sink`](crate::S3Sink).
//! - The source lists a prefix with a glob and reads objects in key order, streaming
//!   text objects and resuming inside an object after a restart; `watch = true` keeps
//!   polling for new objects.
//!
//! Credentials: static keys in `auth`, a named profile, or the AWS default chain.

mod client;
mod codec;
mod config;
mod sink;
mod source;
mod template;
pub mod upload;

pub use client::{connect, is_not_found, s3_error};
pub use config::{Auth, Compression, Connection, S3SinkConfig, S3SourceConfig};
pub use sink::S3Sink;
pub use source::{ObjectOffset, S3Source};
pub use template::{Template, NULL_PARTITION};

use connector_api::arrow_schema::SchemaRef;
use connector_api::{Result, Sink, SinkConnector, Source, SourceConnector};

/// The connector name.
pub const NAME: &str = "s3";

/// The `s3` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct S3;

#[connector_api::async_trait]
impl SourceConnector for S3 {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "objects in S3 or an S3-compatible store (JSON lines, CSV, Parquet; gzip/zstd), in key order, optionally watched";
    type Config = S3SourceConfig;

    fn validate(&self, config: &S3SourceConfig) -> Result<()> {
        config.validate()
    }

    fn create_source(&self, config: S3SourceConfig) -> Result<Box<dyn Source>> {
        Ok(Box::new(S3Source::new(config)?))
    }

    async fn check(&self, config: &S3SourceConfig) -> Result<()> {
        source::check(config).await
    }

    async fn discover(&self, config: &S3SourceConfig) -> Result<Option<SchemaRef>> {
        source::discover(config).await
    }

    /// Each object the glob matches is a split.
    async fn splits(&self, config: &S3SourceConfig) -> Result<Option<connector_api::SplitList>> {
        Ok(Some(connector_api::SplitList {
            splits: source::splits(config).await?,
            growing: config.watch,
            cut: None,
        }))
    }

    /// The declared schema, which JSON lines and CSV are read into; Parquet objects
    /// bring their own.
    fn record_schema(&self, config: &S3SourceConfig) -> Option<SchemaRef> {
        match config.format {
            sluice_formats::Format::Parquet => None,
            _ => config.declared_schema().ok().flatten(),
        }
    }
}

#[connector_api::async_trait]
impl SinkConnector for S3 {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "partitioned objects in S3 or an S3-compatible store (Parquet, JSON lines, CSV), published atomically";
    type Config = S3SinkConfig;

    fn validate(&self, config: &S3SinkConfig) -> Result<()> {
        config.validate()
    }

    fn accepts(&self, config: &S3SinkConfig, schema: &arrow_schema::Schema) -> Result<()> {
        config.csv.accepts(config.format, schema)
    }

    /// The bucket and the prefix's fixed part, where the objects and the
    /// `_sluice/` state go.
    fn destination(&self, config: &S3SinkConfig) -> Option<String> {
        let prefix = config.template().ok()?.static_prefix();
        let at = config.endpoint.as_deref().unwrap_or("AWS");
        Some(format!("s3://{}/{prefix} at {at}", config.bucket))
    }

    fn create_sink(&self, config: S3SinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(S3Sink::new(config)?))
    }

    async fn check(&self, config: &S3SinkConfig) -> Result<()> {
        sink::check(config).await
    }
}
