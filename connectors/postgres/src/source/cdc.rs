//! `cdc`: the slot, the publication, and the stream of changes after the snapshot.

use std::time::Instant;

use connector_api::{Batch, Error, Offsets, Reject, Result};
use sluice_formats::JsonDecoder;
use sqlx::postgres::PgPool;

use super::describe::describe;
use super::envelope::{record_schema, source_json, with_op};
use super::PostgresSource;

/// The state of a `cdc` source.
pub(super) struct Cdc {
    pub(super) slot: String,
    pub(super) publication: String,
    /// Column names of the relation as the stream last described it.
    pub(super) columns: Vec<String>,
    /// Where the slot was last advanced to.
    pub(super) advanced: u64,
    /// Changes asked for per peek (widened when a peek returns only delivered ones).
    pub(super) limit: usize,
    /// The last change the sinks have flushed: the checkpoint resumed from, then each
    /// commit.
    pub(super) flushed: u64,
    /// When the slot was last moved while the tables had no changes.
    pub(super) heartbeat: Instant,
}

impl PostgresSource {
    /// Checks `wal_level`, makes the publication, and finds or creates the slot: a
    /// slot that a stored position expects but is gone is a loud error, never a
    /// silent new slot (changes in between would be lost).
    pub(super) async fn open_cdc(&mut self, pool: &PgPool, pipeline: &str) -> Result<Cdc> {
        crate::cdc::check_wal_level(pool).await?;
        let table = self
            .tables
            .first()
            .ok_or_else(|| Error::config("no table").with_field("tables"))?;
        let slot = self
            .config
            .slot
            .clone()
            .unwrap_or_else(|| crate::cdc::slot_name(pipeline));
        let publication = self
            .config
            .publication
            .clone()
            .unwrap_or_else(|| crate::cdc::slot_name(pipeline));
        crate::cdc::ensure_publication(pool, &publication, &table.relation).await?;
        let started = table.offset.after.is_some()
            || table.offset.ctid.is_some()
            || table.offset.done
            || table.offset.lsn.is_some();
        let advanced = match (crate::cdc::slot_position(pool, &slot).await?, started) {
            (Some(lsn), true) => lsn,
            (None, true) => {
                return Err(Error::not_found(format!(
                    "replication slot \"{slot}\" is gone, but this pipeline has read from it (up to LSN {}); \
                     changes since then cannot be read. Run `sluice offsets reset` and clear the target to start \
                     over with a new snapshot",
                    crate::cdc::lsn_text(table.offset.lsn.unwrap_or(0))
                ))
                .with_field("slot"))
            }
            // a first run: the slot comes before the snapshot, so no change falls between
            (_, false) => crate::cdc::create_slot(pool, &slot).await?,
        };
        Ok(Cdc {
            slot,
            publication,
            columns: Vec::new(),
            advanced,
            limit: self.batch_size.max(1024),
            flushed: self.tables.first().and_then(|t| t.offset.lsn).unwrap_or(0),
            heartbeat: Instant::now(),
        })
    }

    /// The next batch of changes, or an idle batch after `idle_timeout`.
    pub(super) async fn stream(&mut self) -> Result<Option<Batch>> {
        let started = Instant::now();
        let pool = self
            .pool
            .clone()
            .ok_or_else(|| Error::internal("source is not open"))?;
        loop {
            let (Some(cdc), Some(table)) = (self.cdc.as_mut(), self.tables.first_mut()) else {
                return Ok(None);
            };
            let delivered = table.offset.lsn.unwrap_or(0);
            let schema = table.row_schema.clone();
            // heartbeat: the WAL position before the peek; if the peek then finds no
            // change, every commit before it is behind the slot's consumer
            let wal_before = if cdc.heartbeat.elapsed() >= self.config.heartbeat_interval {
                Some(crate::cdc::current_lsn(&pool).await?)
            } else {
                None
            };
            let args = crate::cdc::PeekArgs {
                slot: &cdc.slot,
                publication: &cdc.publication,
                limit: cdc.limit,
                delivered,
                max_changes: self.batch_size,
            };
            let peeked = crate::cdc::peek(&pool, args, &mut cdc.columns, &schema).await?;
            if peeked.relation_changed {
                // ALTER TABLE: read the new columns, then read the changes again with them
                let (name, rel) = (self.config.tables[0].clone(), self.config.schema.clone());
                let (columns, new_schema, _) = describe(&pool, &rel, &name).await?;
                table.columns = columns;
                table.decoder =
                    JsonDecoder::new(Some(record_schema(&new_schema, true, table.debezium)));
                table.row_schema = with_op(&new_schema);
                table.table_schema = new_schema;
                tracing::info!(table = %table.split, "table changed in the stream; new columns picked up");
                continue;
            }
            if peeked.changes.is_empty() {
                if peeked.returned >= cdc.limit {
                    cdc.limit = cdc.limit.saturating_mul(2);
                    continue;
                }
                if let Some(wal) = wal_before {
                    cdc.heartbeat = Instant::now();
                    // only once the sinks have flushed everything read so far
                    if delivered <= cdc.flushed && wal > cdc.advanced {
                        crate::cdc::advance(&pool, &cdc.slot, wal).await?;
                        tracing::debug!(slot = %cdc.slot, lsn = %crate::cdc::lsn_text(wal), "no changes; replication slot moved to the current WAL position");
                        cdc.advanced = wal;
                    }
                }
                if started.elapsed() >= self.idle_timeout {
                    return Ok(Some(Batch::idle()));
                }
                tokio::time::sleep(self.config.poll_interval.min(self.idle_timeout)).await;
                continue;
            }
            let mut buf = Vec::new();
            let n = peeked.changes.len();
            for mut change in peeked.changes {
                let record = if table.debezium {
                    let after = if change.op == "d" || change.op == "t" {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::Object(change.row)
                    };
                    serde_json::json!({
                        "before": change.before.map(serde_json::Value::Object),
                        "after": after,
                        "op": change.op,
                        "ts_ms": change.ts_ms,
                        "source": source_json(&table.split, Some(change.lsn), Some(change.xid), change.ts_ms, false),
                    })
                } else {
                    change.row.insert(
                        connector_api::columns::OP.to_string(),
                        serde_json::Value::String(change.op.to_string()),
                    );
                    serde_json::Value::Object(change.row)
                };
                serde_json::to_writer(&mut buf, &record)
                    .map_err(|e| Error::internal("change").with_source(e))?;
                buf.push(b'\n');
            }
            let decoded = table.decoder.decode(&buf, n, true)?;
            table.offset.lsn = Some(peeked.end_lsn);
            let mut offsets = Offsets::new();
            offsets.set_typed(table.split.clone(), &table.offset)?;
            let records = decoded
                .batch
                .unwrap_or_else(|| arrow_array::RecordBatch::new_empty(schema.clone()));
            let mut batch = Batch::new(records, offsets);
            batch.rejects = decoded
                .bad
                .into_iter()
                .map(|b| Reject {
                    split: table.split.clone(),
                    position: format!(
                        "table {} change before LSN {}",
                        table.split,
                        crate::cdc::lsn_text(peeked.end_lsn)
                    ),
                    raw: b.raw,
                    error: b.error,
                })
                .collect();
            return Ok(Some(batch));
        }
    }
}
