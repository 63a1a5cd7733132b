//! Test kit (feature `testkit`): in-memory source and sink with failure injection, and
//! contract suites any connector runs in one line.
//!
//! ```ignore
//! #[tokio::test]
//! async fn passes_the_source_contract() {
//!     connector_api::testkit::source_contract(&MyConnector, json!({"path": dir})).await;
//! }
//! ```

use std::sync::{Arc, Mutex};

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use crate::batch::Batch;
use crate::error::{Error, ErrorKind, Result};
use crate::offsets::Offsets;
use crate::plugin::{DynSinkConnector, DynSourceConnector};
use crate::sink::{Sink, SinkContext, SinkState};
use crate::source::{Source, SourceContext};

/// The split id the in-memory source uses.
pub const MEMORY_SPLIT: &str = "memory";

/// `rows` records of one non-null Int64 column `id` = 0..rows, in batches of `batch`.
pub fn id_batches(rows: usize, batch: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    (0..rows)
        .step_by(batch.max(1))
        .map(|start| {
            let end = (start + batch).min(rows);
            let ids = Int64Array::from_iter_values(start as i64..end as i64);
            RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).expect("valid batch")
        })
        .collect()
}

/// A bounded source over record batches held in memory. Offset of split
/// [`MEMORY_SPLIT`]: the index of the next batch to read (exclusive).
pub struct MemorySource {
    batches: Vec<RecordBatch>,
    next: usize,
    /// Return a retryable error instead of the batch with this index, once.
    pub fail_at: Option<usize>,
    /// Offsets passed to `commit`, in order.
    pub committed: Arc<Mutex<Vec<Offsets>>>,
}

impl MemorySource {
    /// A source that yields `batches` in order.
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        MemorySource {
            batches,
            next: 0,
            fail_at: None,
            committed: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Source for MemorySource {
    async fn open(&mut self, _ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.next = committed.get_typed::<usize>(MEMORY_SPLIT)?.unwrap_or(0);
        Ok(())
    }

    /// The batches in order.
    fn replays_in_order(&self) -> bool {
        true
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.fail_at == Some(self.next) {
            self.fail_at = None;
            return Err(Error::transient("injected source failure"));
        }
        let Some(records) = self.batches.get(self.next).cloned() else {
            return Ok(None);
        };
        self.next += 1;
        let mut offsets = Offsets::new();
        offsets.set_typed(MEMORY_SPLIT, &self.next)?;
        Ok(Some(Batch::new(records, offsets)))
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        self.committed
            .lock()
            .map_err(|_| Error::internal("poisoned"))?
            .push(offsets.clone());
        Ok(())
    }
}

/// Failures a [`MemorySink`] injects.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail the nth call to `write` (0-based) with this kind.
    pub fail_write_at: Option<(usize, ErrorKind)>,
    /// Fail the nth call to `flush` (0-based) with this kind.
    pub fail_flush_at: Option<(usize, ErrorKind)>,
    /// Never return from `flush`.
    pub hang_flush: bool,
    /// Refuse these rows of the nth call to `write` (0-based), writing none of its
    /// batch ([`Error::refused`]).
    pub refuse_write_at: Option<(usize, Vec<usize>)>,
}

/// What a [`MemorySink`] has received; shared so a test can look while it runs.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Batches written and flushed.
    pub flushed: Vec<RecordBatch>,
    /// Batches written since the last flush.
    pub pending: Vec<RecordBatch>,
    /// Offsets of the last flush (stored "with the data", as a transactional sink does).
    pub offsets: Option<Offsets>,
    /// Calls to `write` and `flush` so far.
    pub writes: usize,
    /// Calls to `flush` so far.
    pub flushes: usize,
}

impl MemoryStore {
    /// Rows flushed so far.
    pub fn flushed_rows(&self) -> usize {
        self.flushed.iter().map(|b| b.num_rows()).sum()
    }
}

/// A transactional in-memory sink: flushed batches and their offsets change together.
#[derive(Clone, Default)]
pub struct MemorySink {
    /// The data, shared with the test.
    pub store: Arc<Mutex<MemoryStore>>,
    /// Failures to inject.
    pub faults: Faults,
}

impl MemorySink {
    /// A sink with no faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn store(&self) -> Result<std::sync::MutexGuard<'_, MemoryStore>> {
        self.store.lock().map_err(|_| Error::internal("poisoned"))
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    async fn open(&mut self, _ctx: &SinkContext) -> Result<SinkState> {
        let mut s = self.store()?;
        s.pending.clear();
        Ok(SinkState {
            offsets: Some(s.offsets.clone().unwrap_or_default()),
            schema: None,
        })
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        let mut s = self.store()?;
        let n = s.writes;
        s.writes += 1;
        if let Some((at, kind)) = self.faults.fail_write_at {
            if at == n {
                return Err(Error::new(kind, format!("injected failure of write {n}")));
            }
        }
        if let Some((at, rows)) = &self.faults.refuse_write_at {
            if *at == n {
                let refused = rows
                    .iter()
                    .map(|&row| {
                        let error = Error::data(format!("injected refusal of row {row}"));
                        (
                            row,
                            crate::Reject::new("memory", format!("row {row}"), "", error),
                        )
                    })
                    .collect();
                return Err(Error::refused(refused));
            }
        }
        s.pending.push(batch.records.clone());
        Ok(())
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        if self.faults.hang_flush {
            std::future::pending::<()>().await;
        }
        let mut s = self.store()?;
        let n = s.flushes;
        s.flushes += 1;
        if let Some((at, kind)) = self.faults.fail_flush_at {
            if at == n {
                return Err(Error::new(kind, format!("injected failure of flush {n}")));
            }
        }
        let pending = std::mem::take(&mut s.pending);
        s.flushed.extend(pending);
        s.offsets = Some(offsets.clone());
        Ok(())
    }
}

async fn drain(source: &mut dyn Source, limit: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut idle = 0;
    while out.len() < limit {
        match source.next_batch().await {
            Ok(Some(b)) if b.num_rows() == 0 && b.rejects.is_empty() => {
                idle += 1;
                if idle > 3 {
                    break;
                }
                if !b.offsets.is_empty() {
                    out.push(b);
                }
            }
            Ok(Some(b)) => out.push(b),
            Ok(None) => break,
            Err(e) => panic!("contract: next_batch failed: {e}"),
        }
    }
    out
}

fn rows(batches: &[Batch]) -> usize {
    batches.iter().map(Batch::num_rows).sum()
}

/// The source contract: reads everything, checks every non-empty batch advances
/// offsets, then reopens after the first batch's offsets and checks exactly the rest
/// comes back, then reopens at the end and checks nothing comes back.
///
/// Panics with a message naming the broken rule. The config must describe a bounded
/// (or idle-after-data) source with at least two batches of data.
pub async fn source_contract(connector: &dyn DynSourceConnector, config: serde_json::Value) {
    let mut ctx = SourceContext::for_pipeline("contract");
    ctx.batch_size = 2;
    ctx.idle_timeout = std::time::Duration::from_millis(50);
    let open = |offsets: Offsets| {
        let config = config.clone();
        let ctx = ctx.clone();
        async move {
            let mut s = connector
                .create_source(&config)
                .expect("contract: create_source");
            s.open(&ctx, &offsets).await.expect("contract: open");
            s
        }
    };
    let mut first = open(Offsets::new()).await;
    let all = drain(first.as_mut(), 100_000).await;
    first.close().await.expect("contract: close");
    let total = rows(&all);
    assert!(
        total > 0,
        "contract: the source returned no rows; give it data"
    );
    for b in &all {
        assert!(
            b.num_rows() == 0 || !b.offsets.is_empty(),
            "contract: a batch with rows advanced no offsets"
        );
    }
    let first_rows = all[0].num_rows();
    let mut after_first = Offsets::new();
    after_first.merge(&all[0].offsets);
    let mut second = open(after_first).await;
    let rest = drain(second.as_mut(), 100_000).await;
    second.close().await.expect("contract: close");
    assert_eq!(
        rows(&rest),
        total - first_rows,
        "contract: reopening after the first batch must return exactly the remaining rows"
    );
    let mut end = Offsets::new();
    for b in &all {
        end.merge(&b.offsets);
    }
    let mut third = open(end.clone()).await;
    third.commit(&end).await.expect("contract: commit");
    let none = drain(third.as_mut(), 100_000).await;
    third.close().await.expect("contract: close");
    assert_eq!(
        rows(&none),
        0,
        "contract: reopening at the end must return no rows"
    );
}

/// The sink contract: writes `batches` with one flush each, closes, reopens, and checks
/// that a sink which stores offsets returns those of the last flush. Returns the state
/// the reopened sink reported, for further checks by the caller.
pub async fn sink_contract(
    connector: &dyn DynSinkConnector,
    config: serde_json::Value,
    batches: Vec<RecordBatch>,
) -> SinkState {
    let ctx = SinkContext::for_pipeline("contract");
    let mut sink = connector
        .create_sink(&config)
        .expect("contract: create_sink");
    sink.open(&ctx).await.expect("contract: open");
    let mut offsets = Offsets::new();
    for (i, records) in batches.into_iter().enumerate() {
        offsets.set_typed(MEMORY_SPLIT, &(i + 1)).expect("offset");
        let batch = Batch::new(records, offsets.clone());
        sink.write(&batch).await.expect("contract: write");
        sink.flush(&offsets).await.expect("contract: flush");
    }
    sink.close().await.expect("contract: close");
    let mut again = connector
        .create_sink(&config)
        .expect("contract: create_sink");
    let state = again.open(&ctx).await.expect("contract: reopen");
    if let Some(stored) = &state.offsets {
        assert_eq!(
            stored, &offsets,
            "contract: stored offsets must be those of the last flush"
        );
    }
    again.close().await.expect("contract: close");
    state
}
