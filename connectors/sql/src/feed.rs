//! The table `input`: the leaf of a prepared plan, which yields the batch handed to
//! it just before the plan runs, once.

use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::SendableRecordBatchStream;

/// The batch the next run of the plan reads as `input`.
#[derive(Debug)]
pub(crate) struct Feed {
    schema: SchemaRef,
    next: Mutex<Option<RecordBatch>>,
}

impl Feed {
    pub(crate) fn new(schema: SchemaRef) -> Arc<Self> {
        Arc::new(Feed {
            schema,
            next: Mutex::new(None),
        })
    }

    /// Hands `batch` to the next run of the plan.
    pub(crate) fn put(&self, batch: RecordBatch) {
        // a panic while the lock was held cannot leave the slot half-written
        *self.next.lock().unwrap_or_else(PoisonError::into_inner) = Some(batch);
    }
}

impl PartitionStream for Feed {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = self
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batch.map(Ok)),
        ))
    }
}
