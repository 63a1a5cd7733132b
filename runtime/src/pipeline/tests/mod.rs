//! Engine tests in process: the testkit's in-memory source and sink (with injected
//! failures) behind test connectors, a pipeline file in a temporary directory.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_schema::SchemaRef;
use connector_api::testkit::{id_batches, Faults, MemorySink, MemorySource, MEMORY_SPLIT};
use connector_api::{
    async_trait, Batch, DynSinkConnector, DynSourceConnector, ErrorKind, Offsets, Result, Sink,
    SinkContext, SinkState, Source, SourceContext,
};
use tokio::sync::watch;

mod fanout;

use super::{run, supervise, Control};
use crate::config::{self, Pipeline};
use crate::registry::Registry;
use crate::telemetry::{PipelineMetrics, State};

/// What happened, in order: `read N`, `write`, `flush N`, `commit N` (N: the
/// memory split's offset).
type Log = Arc<Mutex<Vec<String>>>;

fn position(o: &Offsets) -> usize {
    o.get_typed::<usize>(MEMORY_SPLIT).unwrap().unwrap_or(0)
}

fn push(log: &Log, event: String) {
    log.lock().unwrap().push(event);
}

/// A source connector over `batches`; with `endless`, the batches repeat forever.
struct TestSource {
    batches: Vec<arrow_array::RecordBatch>,
    fail_at: Option<usize>,
    endless: bool,
    /// Sleep 1 ms before each batch (so that checkpoints fall between batches).
    paced: bool,
    /// When the batches are read, wait for more forever (a stream with nothing new:
    /// an idle batch every 10 ms) instead of ending.
    then_wait: bool,
    /// Reads again in the same order (as [`MemorySource`] does); false: as a source
    /// of interleaved partitions.
    in_order: bool,
    /// What the runs after the first read instead of `batches` (the input changed, or
    /// the source cuts it into other batches).
    rerun: Option<Vec<arrow_array::RecordBatch>>,
    runs: std::sync::atomic::AtomicUsize,
    log: Log,
}

struct LoggedSource {
    inner: MemorySource,
    endless: Option<(Vec<arrow_array::RecordBatch>, usize)>,
    paced: bool,
    then_wait: bool,
    in_order: bool,
    log: Log,
}

#[async_trait]
impl Source for LoggedSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        if let Some((_, next)) = &mut self.endless {
            *next = position(committed);
        }
        self.inner.open(ctx, committed).await
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.paced {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let batch = match &mut self.endless {
            Some((batches, next)) => {
                let records = batches[*next % batches.len()].clone();
                *next += 1;
                let mut offsets = Offsets::new();
                offsets.set_typed(MEMORY_SPLIT, &*next)?;
                Some(Batch::new(records, offsets))
            }
            None => match self.inner.next_batch().await? {
                None if self.then_wait => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return Ok(Some(Batch::idle()));
                }
                batch => batch,
            },
        };
        if let Some(b) = &batch {
            push(&self.log, format!("read {}", position(&b.offsets)));
        }
        Ok(batch)
    }

    fn replays_in_order(&self) -> bool {
        self.in_order
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        push(&self.log, format!("commit {}", position(offsets)));
        self.inner.commit(offsets).await
    }
}

#[async_trait]
impl DynSourceConnector for TestSource {
    fn name(&self) -> &str {
        "memory"
    }
    fn description(&self) -> &str {
        "in-memory test source"
    }
    fn config_schema(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn validate(&self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    fn create_source(&self, _: &serde_json::Value) -> Result<Box<dyn Source>> {
        let batches = match &self.rerun {
            Some(rerun) if self.runs.fetch_add(1, Ordering::Relaxed) > 0 => rerun.clone(),
            _ => self.batches.clone(),
        };
        let mut inner = MemorySource::new(batches);
        inner.fail_at = self.fail_at;
        Ok(Box::new(LoggedSource {
            inner,
            endless: self.endless.then(|| (self.batches.clone(), 0)),
            paced: self.paced || self.endless,
            then_wait: self.then_wait,
            in_order: self.in_order,
            log: self.log.clone(),
        }))
    }
    async fn check(&self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    async fn discover(&self, _: &serde_json::Value) -> Result<Option<SchemaRef>> {
        Ok(None)
    }
}

/// A sink connector whose sinks all share one [`MemorySink`] store (a restart sees
/// what the last run flushed, as a database would).
struct TestSink {
    sink: MemorySink,
    log: Log,
    /// Each sink's flush with this index (0-based) fails as Aborted: every run gets on
    /// and then loses its connection.
    abort_flush: Option<usize>,
    /// Stores of sinks whose config names one (`store = "NAME"`), so that several
    /// sinks of a pipeline hold different data.
    named: HashMap<String, MemorySink>,
}

struct LoggedSink {
    inner: MemorySink,
    log: Log,
    abort_flush: Option<usize>,
    flushes: usize,
    /// The named store it writes to, whose flushes log `flushed NAME OFFSETS` too.
    store: Option<String>,
}

#[async_trait]
impl Sink for LoggedSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.inner.open(ctx).await
    }
    async fn write(&mut self, batch: &Batch) -> Result<()> {
        self.inner.write(batch).await?;
        push(&self.log, "write".into());
        Ok(())
    }
    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        self.flushes += 1;
        if self.abort_flush == Some(self.flushes - 1) {
            return Err(connector_api::Error::new(
                ErrorKind::Aborted,
                "injected abort: the connection died",
            ));
        }
        self.inner.flush(offsets).await?;
        push(&self.log, format!("flush {}", position(offsets)));
        if let Some(store) = &self.store {
            push(
                &self.log,
                format!("flushed {store} {}", offsets.to_envelope()),
            );
        }
        Ok(())
    }
}

#[async_trait]
impl DynSinkConnector for TestSink {
    fn name(&self) -> &str {
        "memory"
    }
    fn description(&self) -> &str {
        "in-memory test sink"
    }
    fn config_schema(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn validate(&self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    fn create_sink(&self, config: &serde_json::Value) -> Result<Box<dyn Sink>> {
        let store = config.get("store").and_then(|s| s.as_str());
        let inner = match store {
            Some(name) => self.named[name].clone(),
            None => self.sink.clone(),
        };
        Ok(Box::new(LoggedSink {
            inner,
            log: self.log.clone(),
            abort_flush: self.abort_flush,
            flushes: 0,
            store: store.map(str::to_string),
        }))
    }
    async fn check(&self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    pipeline: Pipeline,
    registry: Registry,
    sink: MemorySink,
    log: Log,
    metrics: Arc<PipelineMetrics>,
}

fn setup(source: TestSource, faults: Faults, extra: &str) -> Setup {
    setup_aborting(source, faults, None, extra)
}

/// A pipeline over `source` with the sinks `sinks` (its TOML, after `[source]`), whose
/// `store = "NAME"` are the `named` stores, in a new directory.
fn setup_named(source: TestSource, named: &HashMap<String, MemorySink>, sinks: &str) -> Setup {
    setup_named_in(tempfile::tempdir().unwrap(), source, named, sinks)
}

/// [`setup_named`] in `dir`, where an earlier run kept its checkpoint store.
fn setup_named_in(
    dir: tempfile::TempDir,
    source: TestSource,
    named: &HashMap<String, MemorySink>,
    sinks: &str,
) -> Setup {
    let log = source.log.clone();
    setup_source_in(dir, Arc::new(source), log, named, sinks)
}

/// [`setup_named_in`] with any source connector (named "memory") logging to `log`.
fn setup_source_in(
    dir: tempfile::TempDir,
    source: Arc<dyn DynSourceConnector>,
    log: Log,
    named: &HashMap<String, MemorySink>,
    sinks: &str,
) -> Setup {
    let file = dir.path().join("p.toml");
    let text = format!(
        "name = \"p\"\n[source]\nconnector = \"memory\"\n{sinks}\n\
         [errors]\nretry_backoff = \"1ms\"\nretry_backoff_max = \"2ms\"\n"
    );
    std::fs::write(&file, text).unwrap();
    let sink = MemorySink::new();
    let registry = named_registry(source, named, &log);
    let pipeline = config::load(&file, &registry).unwrap();
    let metrics = Arc::new(PipelineMetrics::of(&pipeline));
    Setup {
        _dir: dir,
        pipeline,
        registry,
        sink,
        log,
        metrics,
    }
}

fn named_registry(
    source: Arc<dyn DynSourceConnector>,
    named: &HashMap<String, MemorySink>,
    log: &Log,
) -> Registry {
    let mut registry = Registry::default();
    registry.add_source(source);
    registry.add_sink(Arc::new(TestSink {
        sink: MemorySink::new(),
        log: log.clone(),
        abort_flush: None,
        named: named.clone(),
    }));
    registry
}

/// [`setup`], with sinks whose flush `abort_flush` fails as Aborted.
fn setup_aborting(
    source: TestSource,
    faults: Faults,
    abort_flush: Option<usize>,
    extra: &str,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let text = format!(
        "name = \"p\"\n[source]\nconnector = \"memory\"\n[sink]\nconnector = \"memory\"\n\
         [errors]\nretry_backoff = \"1ms\"\nretry_backoff_max = \"2ms\"\n{extra}"
    );
    std::fs::write(&file, text).unwrap();
    let log = source.log.clone();
    let mut sink = MemorySink::new();
    sink.faults = faults;
    let mut registry = Registry::default();
    registry.add_source(Arc::new(source));
    registry.add_sink(Arc::new(TestSink {
        sink: sink.clone(),
        log: log.clone(),
        abort_flush,
        named: HashMap::new(),
    }));
    let pipeline = config::load(&file, &registry).unwrap();
    let metrics = Arc::new(PipelineMetrics::of(&pipeline));
    Setup {
        _dir: dir,
        pipeline,
        registry,
        sink,
        log,
        metrics,
    }
}

fn source(rows: usize, batch: usize) -> TestSource {
    TestSource {
        batches: id_batches(rows, batch),
        fail_at: None,
        endless: false,
        paced: false,
        then_wait: false,
        in_order: true,
        rerun: None,
        runs: Default::default(),
        log: Log::default(),
    }
}

/// A control that never stops the run (its sender lives on: a closed channel reads
/// as a stop).
fn never() -> Control {
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx);
    Control::new(rx)
}

/// Every id in 0..n exactly once in what the sink flushed.
fn assert_exactly_once(sink: &MemorySink, n: usize) {
    let store = sink.store.lock().unwrap();
    assert_eq!(ids(&store.flushed), (0..n as i64).collect::<Vec<_>>());
}

/// The ids (first column) of `batches`, sorted, repeats kept.
fn ids<'a>(batches: impl IntoIterator<Item = &'a arrow_array::RecordBatch>) -> Vec<i64> {
    let mut ids: Vec<i64> = batches
        .into_iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn commits_to_the_source_only_what_every_sink_flushed_and_the_store_holds() {
    let s = setup(
        source(1000, 10),
        Faults::default(),
        "[batch]\nmax_records = 100\n",
    );
    run(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_exactly_once(&s.sink, 1000);
    let log = s.log.lock().unwrap().clone();
    let mut flushed = 0;
    let mut commits = 0;
    for e in &log {
        if let Some(n) = e.strip_prefix("flush ") {
            flushed = n.parse().unwrap();
        }
        if let Some(n) = e.strip_prefix("commit ") {
            let n: usize = n.parse().unwrap();
            assert!(n <= flushed, "commit {n} before its flush: {log:?}");
            commits += 1;
        }
    }
    assert!(commits >= 1);
    assert_eq!(log.last().unwrap(), "commit 100");
    // the checkpoint store holds the end too
    let store = crate::checkpoint::CheckpointStore::open(&s.pipeline.checkpoint_path())
        .await
        .unwrap();
    let stored = store.load("p").await.unwrap().unwrap();
    assert_eq!(position(&stored), 100);
    store.close().await;
    // the metrics agree with the sink
    assert_eq!(s.metrics.records_out.load(Ordering::Relaxed), 1000);
    assert_eq!(s.metrics.records_in.load(Ordering::Relaxed), 1000);
    assert_eq!(s.metrics.sinks[0].records.load(Ordering::Relaxed), 1000);
    let flushes = s.sink.store.lock().unwrap().flushes as u64;
    assert_eq!(s.metrics.sinks[0].flushes.load(Ordering::Relaxed), flushes);
    assert_eq!(s.metrics.checkpoints.load(Ordering::Relaxed), flushes);
}

#[tokio::test]
async fn a_source_batch_larger_than_max_records_reaches_the_sink_in_parts_of_at_most_that() {
    let s = setup(
        source(5000, 5000),
        Faults::default(),
        "[batch]\nmax_records = 1000\n",
    );
    run(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_exactly_once(&s.sink, 5000);
    let sizes: Vec<usize> = s
        .sink
        .store
        .lock()
        .unwrap()
        .flushed
        .iter()
        .map(|b| b.num_rows())
        .collect();
    assert_eq!(sizes, [1000; 5]);
    assert_eq!(s.metrics.sinks[0].batches.load(Ordering::Relaxed), 5);
    // and a byte limit below one write's rows makes the parts smaller still
    let s = setup(
        source(5000, 5000),
        Faults::default(),
        "[batch]\nmax_records = 1000\nmax_bytes = \"4KiB\"\n",
    );
    run(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_exactly_once(&s.sink, 5000);
    // 8-byte ids: 4 KiB is 512 rows
    let sizes: Vec<usize> = s
        .sink
        .store
        .lock()
        .unwrap()
        .flushed
        .iter()
        .map(|b| b.num_rows())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 512), "{sizes:?}");
}

#[tokio::test]
async fn a_retryable_write_failure_is_retried_and_counted_without_duplicates() {
    let faults = Faults {
        fail_write_at: Some((3, ErrorKind::Transient)),
        ..Faults::default()
    };
    let s = setup(source(500, 10), faults, "[batch]\nmax_records = 50\n");
    crate::telemetry::scope(
        s.metrics.clone(),
        run(&s.pipeline, &s.registry, never(), s.metrics.clone()),
    )
    .await
    .unwrap();
    assert_exactly_once(&s.sink, 500);
    assert_eq!(s.metrics.retries(), vec![(ErrorKind::Transient, 1)]);
}

#[tokio::test]
async fn a_sink_failure_ends_the_run_while_the_source_waits_for_data() {
    let s = first_write_fails("[batch]\nlinger = \"1ms\"\n");
    ends_with_the_write_failure(supervise(
        &s.pipeline,
        &s.registry,
        never(),
        s.metrics.clone(),
    ))
    .await;
}

/// Ten records, then a source that waits for more forever, into a sink whose first
/// write fails for good.
fn first_write_fails(extra: &str) -> Setup {
    let faults = Faults {
        fail_write_at: Some((0, ErrorKind::Data)),
        ..Faults::default()
    };
    let waiting = TestSource {
        then_wait: true,
        ..source(10, 10)
    };
    setup(waiting, faults, extra)
}

/// The run ends (a hang guard, not a timing: the source never returns again) with the
/// sink's injected failure of its first write.
async fn ends_with_the_write_failure(run: impl std::future::Future<Output = Result<()>>) {
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ended")
        .unwrap_err();
    assert!(
        err.to_string().contains("injected failure of write 0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_sink_failure_while_paused_ends_the_run() {
    // the write comes only with the pause: the linger and the checkpoint are an hour
    let s = first_write_fails("[batch]\nlinger = \"1h\"\n[checkpoint]\ninterval = \"1h\"\n");
    let (_stop_tx, stop_rx) = watch::channel(false);
    let (pause_tx, pause_rx) = watch::channel(false);
    let metrics = s.metrics.clone();
    tokio::spawn(async move {
        while metrics.records_in.load(Ordering::Relaxed) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pause_tx.send(true).unwrap();
        // the controller stays: nothing else would end the paused source
        std::future::pending::<()>().await;
    });
    let control = Control::with_pause(stop_rx, pause_rx);
    ends_with_the_write_failure(run(&s.pipeline, &s.registry, control, s.metrics.clone())).await;
}

#[tokio::test]
async fn records_a_sink_refuses_go_to_the_dead_letter_sink_and_the_rest_is_written() {
    let faults = Faults {
        refuse_write_at: Some((0, vec![3, 7])),
        ..Faults::default()
    };
    let dead_letter = "tolerance = \"all\"\nmax_failure_rate = 1.0\n[errors.dead_letter]\nconnector = \"memory\"\n";
    let s = setup(source(100, 10), faults.clone(), dead_letter);
    supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    let flushed = s.sink.store.lock().unwrap().flushed.clone();
    let (letters, data): (Vec<_>, Vec<_>) = flushed
        .iter()
        .partition(|b| b.schema().field_with_name("pipeline").is_ok());
    let expected: Vec<i64> = (0..100).filter(|i| *i != 3 && *i != 7).collect();
    assert_eq!(ids(data), expected);
    let positions: Vec<String> = letters
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("position").unwrap().as_string::<i32>();
            c.iter().map(|p| p.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(positions, ["sink \"sink\" row 3", "sink \"sink\" row 7"]);
    // records out are those the sink took; the refused two are rejected, once each
    assert_eq!(s.metrics.records_out.load(Ordering::Relaxed), 98);
    assert_eq!(s.metrics.rejected.load(Ordering::Relaxed), 2);
    // without tolerance the run stops, naming the first
    let s = setup(source(100, 10), faults, "");
    let err = supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("injected refusal of row 3"),
        "{err}"
    );
    assert_eq!(s.sink.store.lock().unwrap().flushed_rows(), 0);
}

#[tokio::test]
async fn a_failed_flush_that_cannot_be_retried_stops_and_commits_nothing() {
    let faults = Faults {
        fail_flush_at: Some((0, ErrorKind::Data)),
        ..Faults::default()
    };
    let s = setup(source(100, 10), faults, "");
    let err = supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Data);
    assert!(
        err.to_string().contains("injected failure of flush 0"),
        "{err}"
    );
    let log = s.log.lock().unwrap();
    assert!(!log.iter().any(|e| e.starts_with("commit")), "{log:?}");
    assert_eq!(s.sink.store.lock().unwrap().flushed_rows(), 0);
}

#[tokio::test]
async fn an_aborted_flush_restarts_the_pipeline_from_the_sinks_offsets() {
    let faults = Faults {
        fail_flush_at: Some((2, ErrorKind::Aborted)),
        ..Faults::default()
    };
    let mut src = source(300, 10);
    src.paced = true;
    let s = setup(
        src,
        faults,
        "[batch]\nmax_records = 10\n[checkpoint]\ninterval = \"5ms\"\n",
    );
    supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_exactly_once(&s.sink, 300);
    let flushes = s.sink.store.lock().unwrap().flushes;
    assert_eq!(
        s.metrics.restarts.load(Ordering::Relaxed),
        1,
        "{flushes} flushes"
    );
}

#[tokio::test]
async fn a_source_failure_is_retried_and_reads_on() {
    let mut src = source(300, 10);
    src.fail_at = Some(5);
    let s = setup(src, Faults::default(), "");
    supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_exactly_once(&s.sink, 300);
    assert_eq!(s.metrics.retries(), vec![(ErrorKind::Transient, 1)]);
}

#[tokio::test]
async fn stop_drains_flushes_and_checkpoints_everything_read() {
    let mut src = source(100, 10);
    src.endless = true;
    let s = setup(src, Faults::default(), "[checkpoint]\ninterval = \"1h\"\n");
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = s.metrics.clone();
    let stopper = tokio::spawn(async move {
        while metrics.records_in.load(Ordering::Relaxed) < 500 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_tx.send(true).unwrap();
    });
    run(
        &s.pipeline,
        &s.registry,
        Control::new(stop_rx),
        s.metrics.clone(),
    )
    .await
    .unwrap();
    stopper.await.unwrap();
    let read = s.metrics.records_in.load(Ordering::Relaxed) as usize;
    assert!(read >= 500);
    let store = s.sink.store.lock().unwrap();
    // nothing read is left unflushed, and the stored position is where reading ended
    assert_eq!(store.flushed_rows(), read);
    assert!(store.pending.is_empty());
    assert_eq!(position(store.offsets.as_ref().unwrap()) * 10, read);
    let log = s.log.lock().unwrap();
    assert_eq!(log.last().unwrap(), &format!("commit {}", read / 10));
}

#[tokio::test]
async fn pause_stops_reading_and_checkpoints_what_was_read_then_resume_reads_on() {
    let mut src = source(100, 10);
    src.endless = true;
    let s = setup(src, Faults::default(), "[checkpoint]\ninterval = \"1h\"\n");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (pause_tx, pause_rx) = watch::channel(false);
    let metrics = s.metrics.clone();
    let sink = s.sink.clone();
    let driver = tokio::spawn(async move {
        let wait_for = |n: u64| {
            let metrics = metrics.clone();
            async move {
                while metrics.records_in.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_for(200).await;
        pause_tx.send(true).unwrap();
        // everything read gets flushed although the checkpoint interval is an hour
        loop {
            let read = metrics.records_in.load(Ordering::Relaxed) as usize;
            if sink.store.lock().unwrap().flushed_rows() == read {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let paused_at = metrics.records_in.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(metrics.records_in.load(Ordering::Relaxed), paused_at);
        pause_tx.send(false).unwrap();
        wait_for(paused_at + 200).await;
        stop_tx.send(true).unwrap();
        paused_at
    });
    run(
        &s.pipeline,
        &s.registry,
        Control::with_pause(stop_rx, pause_rx),
        s.metrics.clone(),
    )
    .await
    .unwrap();
    let paused_at = driver.await.unwrap();
    let read = s.metrics.records_in.load(Ordering::Relaxed) as usize;
    assert!(read as u64 >= paused_at + 200);
    assert_eq!(s.sink.store.lock().unwrap().flushed_rows(), read);
    assert_ne!(s.metrics.state(), State::Failed);
}

/// Restarts count in a row only while no run stores a checkpoint: runs that each get
/// on and then lose their connection go on past `max_retries` and deliver everything
/// once; runs that never get on stop after `max_retries`, whatever time they took.
#[tokio::test]
async fn restarts_count_only_while_no_checkpoint_is_stored() {
    let extra = "max_retries = 1\n[batch]\nmax_records = 10\nlinger = \"1ms\"\n\
                 [checkpoint]\ninterval = \"5ms\"\n";
    let paced = TestSource {
        paced: true,
        ..source(400, 10)
    };
    let s = setup_aborting(paced, Faults::default(), Some(1), extra);
    supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_exactly_once(&s.sink, 400);
    let restarts = s.metrics.restarts.load(Ordering::Relaxed);
    assert!(restarts > 1, "{restarts} restarts");

    // the first flush of every run fails: no run gets on
    let s = setup_aborting(source(400, 10), Faults::default(), Some(0), extra);
    let err = supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("after 1 restarts in a row without a checkpoint further on"),
        "{err}"
    );
    assert_eq!(s.metrics.restarts.load(Ordering::Relaxed), 1);
}
