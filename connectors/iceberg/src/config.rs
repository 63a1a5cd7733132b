//! Options of the Iceberg sink.

use connector_api::{Error, Result, Secret};
use iceberg::spec::Transform;
use schemars::JsonSchema;
use serde::Deserialize;

/// Options of the `iceberg` sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IcebergSinkConfig {
    /// The catalog that holds the table's current metadata, e.g.
    /// `{ type = "sql", url = "sqlite://out/catalog.db" }` or a PostgreSQL URL.
    pub catalog: CatalogConfig,
    /// Where the tables' files go: a local directory (`out/warehouse`) or
    /// `s3://bucket/prefix` (reached with the `s3` options). Only for tables the sink
    /// creates; an existing table keeps its own location.
    pub warehouse: String,
    /// Namespace of the table (`analytics`; dots separate levels); created when missing.
    pub namespace: String,
    /// Table name; created from the schema of the first batch when missing.
    pub table: String,
    /// Partition transforms of a table the sink creates, by column: `"region"` or
    /// `"identity(region)"`, `"year(ts)"`, `"month(ts)"`, `"day(ts)"`, `"hour(ts)"`,
    /// `"bucket(16, user_id)"`, `"truncate(4, name)"`. An existing table keeps its own
    /// partitioning.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Size in bytes at which a data file is closed and the next one started, within
    /// one commit. Every checkpoint commits, so files are also cut there.
    #[serde(default = "default_target_file_size")]
    pub target_file_size: u64,
    /// Commit at most this often (`"1m"`): the pipeline's checkpoints, each of which
    /// is a commit, are spaced by at least this, for fewer snapshots and files. The
    /// other sinks of the pipeline flush as often, and a source that releases data at
    /// checkpoints (a PostgreSQL slot) holds it that long. Keep it under the time
    /// limits of the pipeline's other connectors that wait for a checkpoint: a Kafka
    /// sink's transaction with `exactly_once` (`delivery_timeout`, 120 s), a NATS
    /// source's `ack_wait`, a Redis source's `claim_idle`. A source that asks for a
    /// checkpoint (MQTT and RabbitMQ do at half of `max_in_flight`), a pause, a stop
    /// and the end of the input still commit at once. Default: a commit at every
    /// `checkpoint.interval`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub commit_interval: Option<std::time::Duration>,
    /// zstd level of the Parquet data files (1 to 22). Default 1, as the `file` and
    /// `s3` sinks write Parquet: on the benchmark's events, level 3 took 19% more CPU
    /// for files 2% larger, since Parquet's own encodings leave little to compress.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// How to reach S3 for an `s3://` warehouse or table location.
    #[serde(default)]
    pub s3: S3Options,
}

fn default_target_file_size() -> u64 {
    128 * 1024 * 1024
}

fn default_zstd_level() -> i32 {
    1
}

/// The catalog (`catalog`).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Kind of catalog: `sql` (a table of metadata locations in SQLite or PostgreSQL,
    /// the layout pyiceberg's and Java's SQL/JDBC catalogs read).
    #[serde(rename = "type")]
    pub kind: CatalogKind,
    /// Database of the catalog: `sqlite://path/catalog.db` (created when missing) or
    /// `postgres://user@host/db` (the database must exist; its tables are created).
    pub url: Secret,
    /// Catalog name, the `catalog_name` column: readers name the catalog the same.
    #[serde(default = "default_catalog_name")]
    pub name: String,
}

fn default_catalog_name() -> String {
    "sluice".into()
}

/// Kinds of catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    /// A SQL database holding the metadata location of each table.
    Sql,
}

/// How to reach S3 (`s3`).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// Region; absent = from the environment or profile, else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server (MinIO, Ceph, moto).
    pub endpoint: Option<String>,
    /// Path-style addressing; default: on with `endpoint`, off without.
    pub force_path_style: Option<bool>,
    /// Credentials, as for the `s3` connector; absent = the AWS default chain.
    #[serde(default)]
    pub auth: sluice_s3::Auth,
}

/// A parsed `partition_by` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionField {
    /// Source column.
    pub column: String,
    /// Transform applied to it.
    pub transform: Transform,
}

impl PartitionField {
    /// The partition field's name in the spec: Spark's and pyiceberg's convention
    /// (`ts_day`, `user_id_bucket_16`, `region`).
    pub fn name(&self) -> String {
        let c = &self.column;
        match self.transform {
            Transform::Identity => c.clone(),
            Transform::Year => format!("{c}_year"),
            Transform::Month => format!("{c}_month"),
            Transform::Day => format!("{c}_day"),
            Transform::Hour => format!("{c}_hour"),
            Transform::Bucket(n) => format!("{c}_bucket_{n}"),
            Transform::Truncate(w) => format!("{c}_trunc_{w}"),
            _ => format!("{c}_{}", self.transform),
        }
    }

    /// Parses `day(ts)`, `bucket(16, id)`, `identity(c)` or a bare column.
    pub fn parse(text: &str) -> Result<PartitionField> {
        let bad = |why: &str| {
            Error::config(format!(
                "partition_by entry \"{text}\": {why}; write a column (\"region\"), \
                 \"year(ts)\", \"month(ts)\", \"day(ts)\", \"hour(ts)\", \"bucket(16, id)\" or \"truncate(4, name)\""
            ))
            .with_field("partition_by")
        };
        let t = text.trim();
        let Some(open) = t.find('(') else {
            return if is_column(t) {
                Ok(PartitionField {
                    column: t.to_string(),
                    transform: Transform::Identity,
                })
            } else {
                Err(bad("not a column name"))
            };
        };
        let inner = t[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| bad("no closing parenthesis"))?;
        let args: Vec<&str> = inner.split(',').map(str::trim).collect();
        let function = t[..open].trim().to_ascii_lowercase();
        let number = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("the first argument must be a positive whole number"))
        };
        let (transform, column) = match (function.as_str(), args.as_slice()) {
            ("identity", [c]) => (Transform::Identity, *c),
            ("year", [c]) => (Transform::Year, *c),
            ("month", [c]) => (Transform::Month, *c),
            ("day", [c]) => (Transform::Day, *c),
            ("hour", [c]) => (Transform::Hour, *c),
            ("bucket", [n, c]) => (Transform::Bucket(number(n)?), *c),
            ("truncate", [w, c]) => (Transform::Truncate(number(w)?), *c),
            ("identity" | "year" | "month" | "day" | "hour" | "bucket" | "truncate", _) => {
                return Err(bad("wrong number of arguments"))
            }
            _ => return Err(bad(&format!("unknown transform \"{function}\""))),
        };
        if !is_column(column) {
            return Err(bad(&format!("\"{column}\" is not a column name")));
        }
        Ok(PartitionField {
            column: column.to_string(),
            transform,
        })
    }
}

fn is_column(s: &str) -> bool {
    !s.is_empty() && !s.contains(['(', ')', ',', ' '])
}

impl IcebergSinkConfig {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        let url = self.catalog.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(Error::config(format!(
                "catalog url \"{}\" is neither sqlite:PATH nor postgres://...",
                connector_api::redacted_url(url)
            ))
            .with_field("catalog.url"));
        }
        for (field, value) in [
            ("namespace", &self.namespace),
            ("table", &self.table),
            ("warehouse", &self.warehouse),
        ] {
            if value.trim().is_empty() {
                return Err(Error::config(format!("{field} must not be empty")).with_field(field));
            }
        }
        if self.namespace.split('.').any(str::is_empty) {
            return Err(Error::config(format!(
                "namespace \"{}\" has an empty level",
                self.namespace
            ))
            .with_field("namespace"));
        }
        let mut seen = Vec::new();
        for p in self.partitions()? {
            if seen.contains(&p.name()) {
                return Err(
                    Error::config(format!("partition_by names \"{}\" twice", p.name()))
                        .with_field("partition_by"),
                );
            }
            seen.push(p.name());
        }
        if self.target_file_size < 1024 * 1024 {
            return Err(
                Error::config("target_file_size must be at least 1 MiB (1048576)")
                    .with_field("target_file_size"),
            );
        }
        if self.commit_interval.is_some_and(|i| i.is_zero()) {
            return Err(
                Error::config("commit_interval must be more than 0").with_field("commit_interval")
            );
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(Error::config("zstd_level must be 1 to 22").with_field("zstd_level"));
        }
        if let Some(e) = &self.s3.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Error::config(format!(
                    "s3.endpoint \"{e}\" must be a URL starting with http:// or https://"
                ))
                .with_field("s3.endpoint"));
            }
        }
        Ok(())
    }

    /// The parsed `partition_by`.
    pub fn partitions(&self) -> Result<Vec<PartitionField>> {
        self.partition_by
            .iter()
            .map(|p| PartitionField::parse(p))
            .collect()
    }

    /// The S3 connection for `bucket`.
    pub fn s3_connection(&self, bucket: &str) -> sluice_s3::Connection {
        sluice_s3::Connection {
            bucket: bucket.to_string(),
            region: self.s3.region.clone(),
            endpoint: self.s3.endpoint.clone(),
            force_path_style: self.s3.force_path_style,
            auth: self.s3.auth.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_transform() {
        let p = |s| PartitionField::parse(s).unwrap();
        assert_eq!(p("region").transform, Transform::Identity);
        assert_eq!(p("identity(region)").name(), "region");
        assert_eq!(p("day(ts)").name(), "ts_day");
        assert_eq!(p(" bucket(16, user_id) ").transform, Transform::Bucket(16));
        assert_eq!(p("bucket(16, user_id)").name(), "user_id_bucket_16");
        assert_eq!(p("truncate(4,name)").transform, Transform::Truncate(4));
        assert_eq!(p("HOUR(ts)").transform, Transform::Hour);
    }

    #[test]
    fn a_bad_transform_names_the_entry() {
        for bad in [
            "week(ts)",
            "bucket(ts)",
            "bucket(0, id)",
            "day(ts",
            "day(a, b)",
            "a b",
        ] {
            let e = PartitionField::parse(bad).unwrap_err();
            assert!(e.message().contains(bad), "{bad}: {}", e.message());
        }
    }
}
