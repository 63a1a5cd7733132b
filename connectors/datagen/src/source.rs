//! The datagen source. Offset of split `datagen`: the number of the next row to
//! generate (exclusive end of what was delivered).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use connector_api::{Batch, Offsets, Result, Source, SourceContext};

use crate::config::DatagenConfig;
use crate::generate::Generator;

/// The split id of the datagen source.
pub const SPLIT: &str = "datagen";

/// Generates batches of the configured schema.
pub struct DatagenSource {
    schema: SchemaRef,
    config: DatagenConfig,
    generator: Generator,
    next: u64,
    batch_size: usize,
    started: Instant,
    start_row: u64,
}

impl DatagenSource {
    /// A source for `config` (validated).
    pub fn new(config: DatagenConfig) -> Result<Self> {
        Ok(DatagenSource {
            schema: config.schema()?,
            generator: Generator {
                seed: config.seed,
                null_rate: config.null_rate,
            },
            config,
            next: 0,
            batch_size: 8192,
            started: Instant::now(),
            start_row: 0,
        })
    }
}

#[connector_api::async_trait]
impl Source for DatagenSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.next = committed.get_typed::<u64>(SPLIT)?.unwrap_or(0);
        self.start_row = self.next;
        self.batch_size = ctx.batch_size.max(1);
        self.started = Instant::now();
        Ok(())
    }

    fn progress(&self) -> Option<connector_api::Progress> {
        self.config.count.map(|total| connector_api::Progress {
            done: self.next.min(total),
            total,
            unit: connector_api::ProgressUnit::Records,
        })
    }

    /// Record `n` is the same in every run.
    fn replays_in_order(&self) -> bool {
        true
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let remaining = match self.config.count {
            Some(count) if self.next >= count => return Ok(None),
            Some(count) => (count - self.next) as usize,
            None => usize::MAX,
        };
        let mut len = self.batch_size.min(remaining);
        if self.config.rate > 0 {
            len = len.min(self.config.rate as usize).max(1);
            let due = (self.next - self.start_row) as f64 / self.config.rate as f64;
            let wait = Duration::from_secs_f64(due).saturating_sub(self.started.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let columns = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| self.generator.column(f, i, self.next, len))
            .collect();
        let records = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.next += len as u64;
        let mut offsets = Offsets::new();
        offsets.set_typed(SPLIT, &self.next)?;
        Ok(Some(Batch::new(records, offsets)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Datagen;

    #[tokio::test]
    async fn passes_the_source_contract() {
        connector_api::testkit::source_contract(&Datagen, serde_json::json!({"count": 7})).await;
    }

    #[test]
    fn rejects_unsupported_type_naming_the_column() {
        let cfg: DatagenConfig = serde_json::from_value(serde_json::json!({
            "schema": [{"name": "t", "type": "time"}]
        }))
        .unwrap();
        let err = cfg.schema().unwrap_err();
        assert!(err.to_string().contains("column \"t\""), "{err}");
        assert_eq!(err.field(), Some("schema[0].type"));
    }
}
