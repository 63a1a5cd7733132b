//! The catalog and the table: connecting, creating what is missing, committing data
//! files with the pipeline's offsets, and reading those offsets back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_schema::Schema as ArrowSchema;
use connector_api::{Error, ErrorKind, Result};
use iceberg::spec::PartitionSpec;
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, MetadataLocation, NamespaceIdent, TableCreation, TableIdent,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};

use crate::config::IcebergSinkConfig;
use crate::error::lake_error;
use crate::evolve;
use crate::storage::FilesFactory;
use crate::types;

/// Prefix of the snapshot summary key holding a sink's offsets; the pipeline and sink
/// names follow (`sluice.offsets.orders.sink`).
pub const OFFSETS_KEY: &str = "sluice.offsets";

/// Table property holding the Arrow schema of the batches the table was made for, so
/// that a later run reports the types its batches have (`uint64`, not the stored
/// `decimal(20, 0)`) while the table still has the types they are stored as.
pub const SCHEMA_PROPERTY: &str = "sluice.arrow-schema";

/// The catalog and the table's name in it.
pub struct Lake {
    catalog: SqlCatalog,
    ident: TableIdent,
    /// Where a created table goes.
    warehouse: String,
    /// The catalog's database URL (as sqlx takes it) and name, for schema changes.
    url: String,
    name: String,
}

/// The catalog URL as sqlx takes it: a SQLite file is created when missing.
fn catalog_url(url: &str) -> Result<String> {
    let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(url.to_string());
    };
    let file = path.split('?').next().unwrap_or(path);
    if let Some(parent) = Path::new(file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::storage(format!(
                "catalog database \"{file}\": cannot create its directory: {e}"
            ))
        })?;
    }
    Ok(if path.contains("mode=") {
        format!("sqlite:{path}")
    } else if path.contains('?') {
        format!("sqlite:{path}&mode=rwc")
    } else {
        format!("sqlite:{path}?mode=rwc")
    })
}

/// The warehouse as an absolute location: `s3://...` as it is, a local directory
/// created and made absolute (`file:///...`).
fn warehouse_location(warehouse: &str) -> Result<String> {
    if warehouse.starts_with("s3://") || warehouse.starts_with("file:") {
        return Ok(warehouse.trim_end_matches('/').to_string());
    }
    std::fs::create_dir_all(warehouse)
        .and_then(|_| std::fs::canonicalize(warehouse))
        .map(|p| format!("file://{}", p.display()))
        .map_err(|e| Error::storage(format!("warehouse \"{warehouse}\": {e}")))
}

impl Lake {
    /// Connects to the catalog and creates the namespace when missing.
    pub async fn open(config: &IcebergSinkConfig) -> Result<Lake> {
        let warehouse = warehouse_location(&config.warehouse)?;
        let s3 = if warehouse.starts_with("s3://") || config.s3.endpoint.is_some() {
            let bucket = warehouse
                .strip_prefix("s3://")
                .and_then(|w| w.split('/').next())
                .unwrap_or("lake");
            Some(sluice_s3::connect(&config.s3_connection(bucket)).await?)
        } else {
            None
        };
        let url = config.catalog.url.expose();
        let shown = connector_api::redacted_url(url);
        let sqlx_url = catalog_url(url)?;
        let catalog = SqlCatalogBuilder::default()
            .uri(sqlx_url.clone())
            .warehouse_location(warehouse.clone())
            .sql_bind_style(SqlBindStyle::DollarNumeric)
            .with_storage_factory(Arc::new(FilesFactory::new(s3)))
            .load(config.catalog.name.clone(), HashMap::new())
            .await
            .map_err(|e| {
                let mut err = lake_error(&format!("catalog {shown}"), e);
                if err.kind() == ErrorKind::Storage {
                    err = Error::connect(err.message().to_string());
                }
                err
            })?;
        let namespace = NamespaceIdent::from_strs(config.namespace.split('.'))
            .map_err(|e| lake_error(&format!("namespace \"{}\"", config.namespace), e))?;
        let exists = |e| lake_error(&format!("namespace \"{}\"", config.namespace), e);
        if !catalog.namespace_exists(&namespace).await.map_err(exists)? {
            if let Err(e) = catalog.create_namespace(&namespace, HashMap::new()).await {
                // another writer may have created it in between
                if !catalog.namespace_exists(&namespace).await.map_err(exists)? {
                    return Err(exists(e));
                }
            }
        }
        Ok(Lake {
            catalog,
            ident: TableIdent::new(namespace, config.table.clone()),
            warehouse,
            url: sqlx_url,
            name: config.catalog.name.clone(),
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &dyn Catalog {
        &self.catalog
    }

    /// The table's name, `namespace.table`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.ident.namespace().join("."), self.ident.name())
    }

    /// The table, or `None` when it does not exist yet.
    pub async fn load(&self) -> Result<Option<Table>> {
        let what = format!("table {}", self.name());
        if !self
            .catalog
            .table_exists(&self.ident)
            .await
            .map_err(|e| lake_error(&what, e))?
        {
            return Ok(None);
        }
        self.catalog
            .load_table(&self.ident)
            .await
            .map(Some)
            .map_err(|e| lake_error(&what, e))
    }

    /// Creates the table for batches of `schema`, partitioned by `config.partition_by`.
    pub async fn create(&self, schema: &ArrowSchema, config: &IcebergSinkConfig) -> Result<Table> {
        let what = format!("table {}", self.name());
        let batch = schema;
        let stored = types::stored_schema(schema)?;
        let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&stored)
            .map_err(|e| Error::schema(format!("{what}: {e}")))?;
        let mut spec = PartitionSpec::builder(schema.clone());
        for p in config.partitions()? {
            if schema.field_by_name(&p.column).is_none() {
                return Err(Error::config(format!(
                    "partition_by: column \"{}\" is not in the data (columns: {})",
                    p.column,
                    stored
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .with_field("partition_by"));
            }
            spec = spec
                .add_partition_field(&p.column, p.name(), p.transform)
                .map_err(|e| {
                    Error::config(format!("partition_by: {}: {e}", p.column))
                        .with_field("partition_by")
                })?;
        }
        let spec = spec.build().map_err(|e| {
            Error::config(format!("partition_by: {}", e.message())).with_field("partition_by")
        })?;
        let location = format!(
            "{}/{}/{}",
            self.warehouse,
            self.ident.namespace().join("/"),
            self.ident.name()
        );
        let creation = TableCreation::builder()
            .name(self.ident.name().to_string())
            .location(location)
            .schema(schema)
            .partition_spec(spec)
            .properties([
                ("write.format.default".to_string(), "parquet".to_string()),
                (
                    "write.parquet.compression-codec".to_string(),
                    "zstd".to_string(),
                ),
                (SCHEMA_PROPERTY.to_string(), types::schema_property(batch)?),
            ])
            .build();
        match self
            .catalog
            .create_table(self.ident.namespace(), creation)
            .await
        {
            Ok(t) => Ok(t),
            // another writer created it first: write into theirs
            Err(e) => match self.load().await? {
                Some(t) => Ok(t),
                None => Err(lake_error(&what, e)),
            },
        }
    }
}

impl Lake {
    /// Evolves the table so that batches of `batch` fit it (new optional columns,
    /// promoted types): a new metadata file swapped into the catalog only if the table
    /// is still at the metadata it was planned on, else planned again on the new one.
    /// Returns the table as it is after.
    pub async fn evolve(&self, batch: &ArrowSchema) -> Result<Table> {
        let what = format!("schema change of {}", self.name());
        let failed = |e: sqlx::Error| Error::connect(format!("{what}: catalog database: {e}"));
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await
            .map_err(failed)?;
        let result = async {
            for attempt in 0..10u32 {
                if attempt > 0 {
                    // another writer committed in between: plan again on its metadata
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(6))).await;
                }
                let table = self.load().await?.ok_or_else(|| Error::not_found(format!("{what}: the table is gone")))?;
                let md = table.metadata();
                let Some(schema) = evolve::plan(md.current_schema(), md.last_column_id(), batch)? else {
                    return Ok(table);
                };
                let current = table.metadata_location_result().map_err(|e| lake_error(&what, e))?.to_string();
                let next = current
                    .parse::<MetadataLocation>()
                    .map_err(|e| lake_error(&what, e))?
                    .with_next_version()
                    .to_string();
                let property =
                    HashMap::from([(SCHEMA_PROPERTY.to_string(), types::schema_property(batch)?)]);
                let evolved = md
                    .clone()
                    .into_builder(Some(current.clone()))
                    .add_current_schema(schema)
                    .and_then(|b| b.set_properties(property))
                    .and_then(|b| b.build())
                    .map_err(|e| lake_error(&what, e))?
                    .metadata;
                evolved
                    .write_to(table.file_io(), &next)
                    .await
                    .map_err(|e| lake_error(&what, e))?;
                let swapped = sqlx::query(
                    "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
                     WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 AND metadata_location = $6 \
                     AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)",
                )
                .bind(&next)
                .bind(&current)
                .bind(&self.name)
                .bind(self.ident.namespace().join("."))
                .bind(self.ident.name())
                .bind(&current)
                .execute(&pool)
                .await
                .map_err(failed)?;
                if swapped.rows_affected() == 1 {
                    tracing::info!(table = %self.name(), metadata = %next, "iceberg schema evolved");
                    return self.load().await?.ok_or_else(|| Error::not_found(format!("{what}: the table is gone")));
                }
            }
            Err(Error::transient(format!("{what}: other writers kept changing the table; try again")))
        }
        .await;
        pool.close().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_catalog_is_created_when_missing() {
        assert_eq!(
            catalog_url("sqlite://cat.db").unwrap(),
            "sqlite:cat.db?mode=rwc"
        );
        assert_eq!(
            catalog_url("sqlite:cat.db?mode=ro").unwrap(),
            "sqlite:cat.db?mode=ro"
        );
        assert_eq!(
            catalog_url("postgres://u@h/db").unwrap(),
            "postgres://u@h/db"
        );
    }
}
