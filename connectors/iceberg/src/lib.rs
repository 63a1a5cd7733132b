//! # sluice-iceberg
//!
//! Writes Apache Iceberg tables: Parquet (zstd) data files per partition, committed to
//! a SQL catalog (SQLite or PostgreSQL, the layout pyiceberg's `SqlCatalog` and Java's
//! JDBC catalog read) with a warehouse in a local directory or S3.
//!
//! - The table is created from the first batch's schema when missing, partitioned by
//!   `partition_by` (identity, year, month, day, hour, bucket, truncate); types map
//!   without loss ([`types`]).
//! - Every flush (checkpoint) is one commit: an append snapshot whose summary holds the
//!   pipeline's offsets under `sluice.offsets.<pipeline>.<sink>`. `open` reads them back
//!   from the latest snapshot that has them, so a restart resumes exactly where the
//!   committed data ends: exactly-once. See [`IcebergSink`].
//! - A concurrent commit by another writer is retried on top of it (iceberg's own
//!   retry); a commit by another run of the same pipeline stops the flush, checked
//!   atomically with the catalog's swap of the metadata location.
//!
//! Under `drift = "evolve"` new columns are added to the table (optional) and columns
//! widened as Iceberg allows (int -> long, float -> double, decimal precision).
//!
//! Change records (`_op`) are appended as rows with their operation column: the sink
//! writes no delete files (merge-on-read deletes are not supported yet).

mod catalog;
mod commit;
mod config;
mod error;
mod evolve;
mod files;
mod sink;
mod storage;
pub mod types;

pub use catalog::OFFSETS_KEY;
pub use config::{CatalogConfig, CatalogKind, IcebergSinkConfig, PartitionField, S3Options};
pub use sink::IcebergSink;

use connector_api::{Result, Sink, SinkConnector};

/// The connector name.
pub const NAME: &str = "iceberg";

/// The `iceberg` connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct Iceberg;

#[connector_api::async_trait]
impl SinkConnector for Iceberg {
    const NAME: &'static str = NAME;
    const DESCRIPTION: &'static str =
        "Apache Iceberg tables (SQL catalog, local or S3 warehouse); exactly-once (offsets in the snapshot summary)";
    type Config = IcebergSinkConfig;

    fn validate(&self, config: &IcebergSinkConfig) -> Result<()> {
        config.validate()
    }

    fn create_sink(&self, config: IcebergSinkConfig) -> Result<Box<dyn Sink>> {
        Ok(Box::new(IcebergSink::new(config)))
    }

    async fn check(&self, config: &IcebergSinkConfig) -> Result<()> {
        let lake = catalog::Lake::open(config).await?;
        lake.load().await.map(|_| ())
    }
}
