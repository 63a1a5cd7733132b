//! Options of the S3 source and sink.
//!
//! Both share the connection options (`bucket`, `region`, `endpoint`,
//! `force_path_style`, `auth`), so one pipeline runs against AWS S3, MinIO, Ceph or any
//! other server that speaks the S3 API by changing only those.

use std::time::Duration;

use connector_api::arrow_schema::SchemaRef;
use connector_api::{schema_from_specs, Error, FieldSpec, Result, Secret};
use schemars::JsonSchema;
use serde::Deserialize;
pub use sluice_formats::Compression;
use sluice_formats::{CsvOptions, Format, JsonOptions, ParquetOptions};

use crate::template::Template;

/// Credentials. Absent: the AWS default chain (environment variables
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, the shared config and credentials
/// files, web identity, container and instance metadata).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Static access key id; give it with `secret_access_key`.
    pub access_key_id: Option<Secret>,
    /// Static secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary static credentials.
    pub session_token: Option<Secret>,
    /// A named profile of the shared AWS config and credentials files.
    pub profile: Option<String>,
}

/// Where the objects are and how to reach them: the part of the options the source and
/// sink share.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Bucket name.
    pub bucket: String,
    /// Region; absent = from the environment or profile, else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: Option<bool>,
    /// Credentials.
    pub auth: Auth,
}

impl Connection {
    /// Checks the connection options without touching the network.
    pub fn validate(&self) -> Result<()> {
        let b = &self.bucket;
        if b.len() < 3
            || b.len() > 63
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            return Err(Error::config(format!(
                "bucket \"{b}\" is not a valid bucket name (3 to 63 characters: a-z, 0-9, '.', '-')"
            ))
            .with_field("bucket"));
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Error::config(format!(
                    "endpoint \"{e}\" must be a URL starting with http:// or https://"
                ))
                .with_field("endpoint"));
            }
        }
        match (&self.auth.access_key_id, &self.auth.secret_access_key) {
            (Some(_), None) | (None, Some(_)) => Err(Error::config(
                "auth.access_key_id and auth.secret_access_key go together: give both or neither",
            )
            .with_field("auth")),
            (Some(_), Some(_)) if self.auth.profile.is_some() => Err(Error::config(
                "auth: give static keys or a profile, not both",
            )
            .with_field("auth.profile")),
            _ => Ok(()),
        }
    }

    /// `s3://bucket/key` for messages.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// Options of the `s3` source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3SourceConfig {
    /// Bucket name.
    pub bucket: String,
    /// Region; absent = from the environment or profile, else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server (MinIO, Ceph, ...): `http://host:9000`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers
    /// need. Default: true when `endpoint` is set, false otherwise.
    pub force_path_style: Option<bool>,
    /// Credentials; absent = the AWS default chain.
    #[serde(default)]
    pub auth: Auth,
    /// Object key or glob (`orders/dt=*/*.parquet`; `*` stays within one `/` level,
    /// `**` crosses levels). Objects are read in key order.
    pub path: String,
    /// Record format: `json` (JSON lines), `csv` or `parquet`.
    #[serde(default)]
    pub format: Format,
    /// Compression of JSON lines and CSV objects: `auto` (from the name: `.gz`,
    /// `.zst`), `none`, `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// CSV options (with `format = "csv"`).
    #[serde(default)]
    pub csv: CsvOptions,
    /// Declared columns; absent = inferred from the first records (JSON, CSV) or taken
    /// from the object (Parquet).
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
    /// Keep running and read new objects as they appear.
    #[serde(default)]
    pub watch: bool,
    /// In watch mode, how often to list the bucket for new objects.
    #[serde(default = "poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
}

fn poll_interval() -> Duration {
    Duration::from_secs(5)
}

impl S3SourceConfig {
    /// The connection options.
    pub fn connection(&self) -> Connection {
        Connection {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            force_path_style: self.force_path_style,
            auth: self.auth.clone(),
        }
    }

    /// Checks the options without touching the network.
    pub fn validate(&self) -> Result<()> {
        self.connection().validate()?;
        if self.path.trim().is_empty() || self.path.starts_with('/') {
            return Err(Error::config(
                "path must be an object key or glob inside the bucket, without a leading '/'",
            )
            .with_field("path"));
        }
        glob::Pattern::new(&self.path).map_err(|e| {
            Error::config(format!("path \"{}\" is not a valid glob", self.path))
                .with_source(e)
                .with_field("path")
        })?;
        if self.format == Format::Parquet
            && !matches!(self.compression, Compression::Auto | Compression::None)
        {
            return Err(Error::config(
                "compression applies to json and csv; Parquet compresses inside the file",
            )
            .with_field("compression"));
        }
        self.csv.validate()?;
        self.declared_schema()?;
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

    /// The key prefix to list: the glob up to its first wildcard.
    pub fn list_prefix(&self) -> &str {
        let end = self.path.find(['*', '?', '[']).unwrap_or(self.path.len());
        &self.path[..end]
    }
}

/// Options of the `s3` sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    /// Bucket name.
    pub bucket: String,
    /// Region; absent = from the environment or profile, else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server (MinIO, Ceph, ...): `http://host:9000`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers
    /// need. Default: true when `endpoint` is set, false otherwise.
    pub force_path_style: Option<bool>,
    /// Credentials; absent = the AWS default chain.
    #[serde(default)]
    pub auth: Auth,
    /// Key template of the objects' folder: text with `{column}` (the row's value),
    /// `{column:%Y-%m-%d}` (a date or timestamp column, strftime format: event time)
    /// and `{@now:%Y-%m-%d}` (processing time, UTC). Values are escaped so they stay
    /// one path segment: `orders/dt={event_date}/region={region}/`.
    #[serde(default)]
    pub prefix: String,
    /// Record format: `json` (JSON lines), `csv` or `parquet`.
    #[serde(default)]
    pub format: Format,
    /// Compression of JSON lines and CSV objects: `none` (or `auto`), `gzip`, `zstd`.
    /// Parquet compresses inside the file (`parquet.compression`).
    #[serde(default)]
    pub compression: Compression,
    /// JSON lines options (with `format = "json"`).
    #[serde(default)]
    pub json: JsonOptions,
    /// CSV options (with `format = "csv"`).
    #[serde(default)]
    pub csv: CsvOptions,
    /// Parquet options (with `format = "parquet"`): compression, row group size.
    #[serde(default)]
    pub parquet: ParquetOptions,
    /// Object name prefix; names are `FILE_PREFIX-<start position hash>.<ext>`.
    #[serde(default = "file_prefix")]
    pub file_prefix: String,
    /// Start a new object after this many records (0 = no limit). Objects also close
    /// at every checkpoint (`checkpoint.interval`: the time-based roll).
    #[serde(default = "max_records")]
    pub max_records: u64,
    /// Start a new object after this many bytes (0 = no limit).
    #[serde(default = "max_bytes")]
    pub max_bytes: u64,
    /// Size of the parts of the multipart upload, at least 5 MiB. Each open object
    /// holds up to one part in memory.
    #[serde(default = "part_size")]
    pub part_size: usize,
    /// Most objects open at once (one per partition); beyond it the oldest is closed.
    #[serde(default = "max_open_objects")]
    pub max_open_objects: usize,
}

fn file_prefix() -> String {
    "part".into()
}
fn max_records() -> u64 {
    10_000_000
}
fn max_bytes() -> u64 {
    1 << 30
}
fn part_size() -> usize {
    8 << 20
}
fn max_open_objects() -> usize {
    64
}

/// The smallest part S3 accepts (but for the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

impl S3SinkConfig {
    /// The connection options.
    pub fn connection(&self) -> Connection {
        Connection {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            force_path_style: self.force_path_style,
            auth: self.auth.clone(),
        }
    }

    /// Checks the options without touching the network.
    pub fn validate(&self) -> Result<()> {
        self.connection().validate()?;
        self.template()?;
        if self.file_prefix.is_empty()
            || self.file_prefix.contains(['/', '\\', '{', '}'])
            || self.file_prefix.starts_with(['.', '_'])
        {
            return Err(Error::config(format!(
                "file_prefix \"{}\" must be a plain name part (no '/', '{{', not starting with '.' or '_')",
                self.file_prefix
            ))
            .with_field("file_prefix"));
        }
        if self.format == Format::Parquet
            && !matches!(self.compression, Compression::Auto | Compression::None)
        {
            return Err(Error::config(
                "compression applies to json and csv; for Parquet set parquet.compression",
            )
            .with_field("compression"));
        }
        if self.part_size < MIN_PART_SIZE {
            return Err(Error::config(format!(
                "part_size must be at least {MIN_PART_SIZE} bytes (5 MiB), the smallest part S3 accepts"
            ))
            .with_field("part_size"));
        }
        if self.max_open_objects == 0 {
            return Err(
                Error::config("max_open_objects must be at least 1").with_field("max_open_objects")
            );
        }
        self.csv.validate()
    }

    /// The parsed key template.
    pub fn template(&self) -> Result<Template> {
        Template::parse(&self.prefix).map_err(|e| e.with_field("prefix"))
    }

    /// The object name suffix: format extension and compression.
    pub fn extension(&self) -> String {
        format!(
            "{}{}",
            self.format.extension(),
            self.compression.for_key("").suffix()
        )
    }
}
