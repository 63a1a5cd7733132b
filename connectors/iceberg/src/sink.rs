//! The Iceberg sink: Parquet data files per partition, committed at every flush in one
//! snapshot whose summary holds the pipeline's offsets.
//!
//! Exactly-once: `open` reads the offsets back from the latest snapshot that has them
//! (the runtime resumes from there), and every commit checks, atomically with the
//! catalog's swap, that the table still holds this run's last offsets ([`commit`]):
//! a commit under the same key by another run (a second run of the pipeline, a killed
//! run's commit landing late) stops the flush instead of committing the data twice,
//! and an earlier attempt of the same flush that landed is not repeated. Data files
//! written but never committed (a crash before the commit) are left unreferenced.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use connector_api::{Batch, Error, Offsets, Result, Sink, SinkContext, SinkState};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::catalog::{Lake, OFFSETS_KEY, SCHEMA_PROPERTY};
use crate::commit::{commit, stored_offsets, Stored};
use crate::config::IcebergSinkConfig;
use crate::error::aborted;
use crate::files::DataFiles;
use crate::{evolve, types};

/// The table being written and what this sink knows of it.
struct Open {
    lake: Lake,
    table: Option<Table>,
    /// The table's Arrow schema with field ids: what data files are written in.
    target: Option<SchemaRef>,
    files: Option<DataFiles>,
    /// Data files closed but not committed yet (a failed commit is tried again).
    pending: Vec<DataFile>,
    /// The offsets of this sink's last commit, as the table holds them.
    committed: Option<Offsets>,
    /// The last batch schema the table was made to fit.
    evolved: Option<SchemaRef>,
    /// The token of the flush being committed, kept until it lands (a retried flush
    /// recognises its own earlier attempt by it).
    token: Option<String>,
}

/// Writes to one Iceberg table.
pub struct IcebergSink {
    config: IcebergSinkConfig,
    key: String,
    open: Option<Open>,
}

impl IcebergSink {
    /// A sink with `config`; nothing happens before `open`.
    pub fn new(config: IcebergSinkConfig) -> Self {
        IcebergSink {
            config,
            key: String::new(),
            open: None,
        }
    }

    fn state(&mut self) -> Result<&mut Open> {
        self.open
            .as_mut()
            .ok_or_else(|| Error::internal("iceberg sink used before open"))
    }
}

/// The table's schema with field ids, as data files are written.
fn target_of(table: &Table) -> Result<SchemaRef> {
    schema_to_arrow_schema(table.metadata().current_schema())
        .map(Arc::new)
        .map_err(|e| Error::schema(format!("table {}: {e}", table.identifier())))
}

fn writer_properties(level: i32) -> Result<WriterProperties> {
    let zstd = ZstdLevel::try_new(level).map_err(|e| Error::config(format!("zstd_level: {e}")))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        // as the `file` and `s3` sinks write them: each row group's columns are
        // encoded in parallel, and readers split files at row groups
        .set_max_row_group_size(sluice_formats::ParquetOptions::default().row_group_size)
        .build())
}

/// A unique prefix for the names of one commit's files (time first, so they sort).
fn file_prefix() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms:013}-{:016x}", rand::random::<u64>())
}

impl Open {
    async fn write(&mut self, config: &IcebergSinkConfig, batch: RecordBatch) -> Result<()> {
        if self.files.is_none() {
            let table = self
                .table
                .as_ref()
                .ok_or_else(|| Error::internal("no table to write"))?;
            let target = self
                .target
                .clone()
                .ok_or_else(|| Error::internal("no table schema"))?;
            self.files = Some(DataFiles::new(
                table,
                target,
                writer_properties(config.zstd_level)?,
                config.target_file_size as usize,
                file_prefix(),
            )?);
        }
        match self.files.as_mut() {
            Some(files) => files.write(batch).await,
            None => Err(Error::internal("no data files open")),
        }
    }

    /// Closes the open data files into `pending`.
    async fn close_files(&mut self) -> Result<()> {
        if let Some(files) = self.files.take() {
            self.pending.extend(files.close().await?);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for IcebergSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.key = format!("{OFFSETS_KEY}.{}.{}", ctx.pipeline, ctx.sink);
        let lake = Lake::open(&self.config).await?;
        let table = lake.load().await?;
        let (stored, schema, target) = match &table {
            Some(t) => {
                let target = target_of(t)?;
                let property = t.metadata().properties().get(SCHEMA_PROPERTY);
                (
                    stored_offsets(t, &self.key)?,
                    Some(types::schema_to_report(&target, property)),
                    Some(target),
                )
            }
            None => (Stored::Nothing, None, None),
        };
        let offsets = match &stored {
            Stored::Offsets(o, _) => Some(o.clone()),
            Stored::Nothing => Some(Offsets::new()),
            Stored::Unknown => {
                tracing::warn!(
                    table = %lake.name(),
                    key = %self.key,
                    "the snapshots of this sink's commits are expired: resuming from the checkpoint store"
                );
                None
            }
        };
        tracing::info!(
            table = %lake.name(),
            exists = table.is_some(),
            resumes = stored.offsets().is_some(),
            "iceberg table opened"
        );
        self.open = Some(Open {
            lake,
            table,
            target,
            files: None,
            pending: Vec::new(),
            committed: stored.offsets().cloned(),
            evolved: None,
            token: None,
        });
        Ok(SinkState { offsets, schema })
    }

    fn flush_interval(&self) -> Option<std::time::Duration> {
        self.config.commit_interval
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        if batch.records.num_rows() == 0 {
            return Ok(());
        }
        let config = self.config.clone();
        let open = self.state()?;
        if open.table.is_none() {
            let schema: Schema = batch.records.schema().as_ref().clone();
            let table = open.lake.create(&schema, &config).await?;
            tracing::info!(table = %open.lake.name(), "iceberg table created");
            open.target = Some(target_of(&table)?);
            open.table = Some(table);
        }
        let schema = batch.records.schema();
        if open.evolved.as_ref() != Some(&schema) {
            // a batch of a schema not seen yet: make the table fit it first (files
            // still open were written in the table's old schema and are committed
            // with it, read by field id)
            if let Some(table) = open.table.as_ref() {
                if evolve::plan(
                    table.metadata().current_schema(),
                    table.metadata().last_column_id(),
                    &schema,
                )?
                .is_some()
                {
                    if let Err(e) = open.close_files().await {
                        open.pending.clear();
                        return Err(aborted(e));
                    }
                    let table = open.lake.evolve(&schema).await?;
                    open.target = Some(target_of(&table)?);
                    open.table = Some(table);
                }
            }
            open.evolved = Some(schema);
        }
        let target = open
            .target
            .clone()
            .ok_or_else(|| Error::internal("no table schema"))?;
        let conformed = types::conform(&batch.records, &target)
            .map_err(|e| e.context(format!("table {}", open.lake.name())))?;
        if let Err(e) = open.write(&config, conformed).await {
            // part of the batch may be in the open files: writing it again would
            // repeat rows, so they are dropped and the run restarts from its checkpoint
            open.files = None;
            open.pending.clear();
            return Err(aborted(e));
        }
        Ok(())
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        let key = self.key.clone();
        let open = self.state()?;
        if let Err(e) = open.close_files().await {
            open.pending.clear();
            return Err(aborted(e));
        }
        if open.pending.is_empty() && open.committed.as_ref() == Some(offsets) {
            return Ok(());
        }
        let Some(base) = open.table.as_ref() else {
            // nothing was ever written and the table does not exist: nothing to keep
            return Ok(());
        };
        let count = open.pending.len();
        let started = std::time::Instant::now();
        let token = open
            .token
            .get_or_insert_with(|| format!("{:016x}", rand::random::<u64>()))
            .clone();
        let table = commit(
            &open.lake,
            base,
            open.pending.clone(),
            &key,
            open.committed.as_ref(),
            offsets,
            &token,
        )
        .await?;
        tracing::debug!(
            table = %open.lake.name(),
            files = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "iceberg commit"
        );
        open.pending.clear();
        open.token = None;
        open.committed = Some(offsets.clone());
        open.table = Some(table);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        // open files are dropped unreferenced; nothing else to release
        self.open = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Iceberg;
    use connector_api::testkit::{id_batches, sink_contract};

    fn config(dir: &std::path::Path) -> serde_json::Value {
        serde_json::json!({
            "catalog": {"type": "sql", "url": format!("sqlite://{}/catalog.db", dir.display())},
            "warehouse": dir.join("wh").display().to_string(),
            "namespace": "test",
            "table": "t",
        })
    }

    #[tokio::test]
    async fn passes_the_sink_contract_with_offsets_stored_in_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let state = sink_contract(&Iceberg, config(dir.path()), id_batches(9, 4)).await;
        assert!(
            state.offsets.is_some(),
            "the iceberg sink stores offsets with the data"
        );
        assert_eq!(state.schema.unwrap().field(0).name(), "id");
    }

    #[tokio::test]
    async fn two_pipelines_appending_to_one_table_keep_both_commits() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: IcebergSinkConfig = serde_json::from_value(config(dir.path())).unwrap();
        let batches = id_batches(6, 3);
        let mut a = IcebergSink::new(cfg.clone());
        let mut b = IcebergSink::new(cfg.clone());
        a.open(&SinkContext::for_pipeline("a")).await.unwrap();
        b.open(&SinkContext::for_pipeline("b")).await.unwrap();
        let mut offsets = Offsets::new();
        offsets.set("s", serde_json::json!(1));
        a.write(&Batch::new(batches[0].clone(), offsets.clone()))
            .await
            .unwrap();
        b.write(&Batch::new(batches[1].clone(), offsets.clone()))
            .await
            .unwrap();
        a.flush(&offsets).await.unwrap();
        // b's table is one commit behind: iceberg retries it on top of a's
        b.flush(&offsets).await.unwrap();
        let lake = Lake::open(&cfg).await.unwrap();
        let table = lake.load().await.unwrap().unwrap();
        let rows: u64 = table
            .metadata()
            .snapshots()
            .map(|s| {
                s.summary().additional_properties["added-records"]
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(rows, 6);
        for pipeline in ["a", "b"] {
            let key = format!("{OFFSETS_KEY}.{pipeline}.sink");
            assert_eq!(
                stored_offsets(&table, &key).unwrap().offsets(),
                Some(&offsets)
            );
        }
    }

    #[tokio::test]
    async fn a_second_run_committing_under_the_same_key_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: IcebergSinkConfig = serde_json::from_value(config(dir.path())).unwrap();
        let ctx = SinkContext::for_pipeline("twice");
        let batches = id_batches(4, 2);
        let mut first = IcebergSink::new(cfg.clone());
        first.open(&ctx).await.unwrap();
        let mut offsets = Offsets::new();
        offsets.set("s", serde_json::json!(1));
        first
            .write(&Batch::new(batches[0].clone(), offsets.clone()))
            .await
            .unwrap();
        first.flush(&offsets).await.unwrap();
        // a second run opens while the first goes on committing
        let mut second = IcebergSink::new(cfg.clone());
        second.open(&ctx).await.unwrap();
        offsets.set("s", serde_json::json!(2));
        first
            .write(&Batch::new(batches[1].clone(), offsets.clone()))
            .await
            .unwrap();
        first.flush(&offsets).await.unwrap();
        // the same offsets as the table's, from another flush (a source whose offsets
        // count batches of a run), are not taken for this flush having landed
        let mut theirs = Offsets::new();
        theirs.set("s", serde_json::json!(2));
        second
            .write(&Batch::new(batches[1].clone(), theirs.clone()))
            .await
            .unwrap();
        let e = second.flush(&theirs).await.unwrap_err();
        assert_eq!(e.kind(), connector_api::ErrorKind::Conflict, "{e}");
        assert!(e.message().contains("another run of this pipeline"), "{e}");
        let mut again = IcebergSink::new(cfg);
        let state = again.open(&ctx).await.unwrap();
        assert_eq!(state.offsets, Some(offsets));
    }
}
