//! What the runtime knows about its pipelines while they run: one [`Telemetry`]
//! registry that the engine writes and the HTTP API, the progress display and the
//! summary read. Counters are atomics (the engine never waits on a reader); the few
//! values that are not numbers sit behind short-held mutexes.
//!
//! Rendered in the Prometheus text format by [`Telemetry::render`] (see
//! `telemetry/prometheus.rs` for the names).

mod prometheus;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use connector_api::{ErrorKind, Offsets};
use tokio::sync::Semaphore;

/// The life cycle of a pipeline, as `/pipelines` and `sluice_pipeline_state` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Opening its connectors.
    Starting = 0,
    /// Reading and writing.
    Running = 1,
    /// Reading stopped on request; connections and position kept.
    Paused = 2,
    /// Stopped on request, or by a shutdown or reload; flushed and checkpointed.
    Stopped = 3,
    /// Gave up after its retries; `last_error` says why.
    Failed = 4,
    /// Its source ended and everything was delivered.
    Finished = 5,
    /// Waiting to retry an operation or to restart after a failure.
    Retrying = 6,
}

impl State {
    /// Every state, in the order of their numbers.
    pub const ALL: [State; 7] = [
        State::Starting,
        State::Running,
        State::Paused,
        State::Stopped,
        State::Failed,
        State::Finished,
        State::Retrying,
    ];

    /// The lowercase name used in JSON and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Finished => "finished",
            State::Retrying => "retrying",
        }
    }

    fn from_u8(v: u8) -> State {
        State::ALL.get(v as usize).copied().unwrap_or(State::Failed)
    }
}

/// Upper bounds (seconds) of the flush latency histogram's buckets.
pub const FLUSH_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets ([`FLUSH_BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; FLUSH_BUCKETS.len()],
    /// Sum of the observations, in microseconds.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = FLUSH_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound, the sum in seconds and the count.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (
            cumulative,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// Counters of one sink of a pipeline.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// The sink's name (`sink`, `sinks.NAME` or `dead_letter`).
    pub name: String,
    /// Its connector.
    pub connector: String,
    /// Records written to it.
    pub records: AtomicU64,
    /// Arrow bytes written to it.
    pub bytes: AtomicU64,
    /// Batches written to it.
    pub batches: AtomicU64,
    /// Flushes that returned.
    pub flushes: AtomicU64,
    /// How long each flush took.
    pub flush_seconds: Histogram,
}

/// Everything known about one pipeline.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// The pipeline's name.
    pub name: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// The source connector.
    pub source: String,
    /// Records read from the source.
    pub records_in: AtomicU64,
    /// Arrow bytes read from the source.
    pub bytes_in: AtomicU64,
    /// Batches read from the source.
    pub batches_in: AtomicU64,
    /// Records written to the sinks (each record once, whatever the number of sinks).
    pub records_out: AtomicU64,
    /// Arrow bytes of the records written (each record once).
    pub bytes_out: AtomicU64,
    /// Records the source could not decode (`batch.rejects`).
    pub rejected: AtomicU64,
    /// Rejected records written to the dead-letter sink.
    pub dead_lettered: AtomicU64,
    /// Checkpoints stored.
    pub checkpoints: AtomicU64,
    /// Each sink's counters, in pipeline order (the dead-letter sink last).
    pub sinks: Vec<SinkMetrics>,
    /// Retries per error kind (index: [`kind_index`]).
    retries: [AtomicU64; KINDS.len()],
    /// Restarts of the whole pipeline after a failure.
    pub restarts: AtomicU64,
    state: AtomicU8,
    /// Values substituted for references in its file, redacted from errors.
    secrets: Vec<String>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    started: Option<Instant>,
    last_error: Option<String>,
    config_error: Option<String>,
    last_checkpoint: Option<(SystemTime, Offsets)>,
    in_flight: Option<(Arc<Semaphore>, u64)>,
    progress: Option<connector_api::Progress>,
    lag: Vec<connector_api::Lag>,
}

/// The error kinds retries are counted by.
const KINDS: [ErrorKind; 12] = [
    ErrorKind::Config,
    ErrorKind::Connect,
    ErrorKind::Auth,
    ErrorKind::NotFound,
    ErrorKind::Transient,
    ErrorKind::Data,
    ErrorKind::Schema,
    ErrorKind::Aborted,
    ErrorKind::Conflict,
    ErrorKind::Unsupported,
    ErrorKind::Storage,
    ErrorKind::Internal,
];

fn kind_index(kind: ErrorKind) -> usize {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS.len() - 1)
}

impl PipelineMetrics {
    /// Metrics for a pipeline with `sinks` as (name, connector) pairs.
    pub fn new(name: &str, file: PathBuf, source: &str, sinks: &[(String, String)]) -> Self {
        PipelineMetrics {
            name: name.to_string(),
            file,
            source: source.to_string(),
            records_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            sinks: sinks
                .iter()
                .map(|(name, connector)| SinkMetrics {
                    name: name.clone(),
                    connector: connector.clone(),
                    ..SinkMetrics::default()
                })
                .collect(),
            retries: Default::default(),
            restarts: AtomicU64::new(0),
            state: AtomicU8::new(State::Starting as u8),
            secrets: Vec::new(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Metrics for `pipeline`.
    pub fn of(pipeline: &crate::config::Pipeline) -> Self {
        let sinks: Vec<(String, String)> = pipeline
            .sinks
            .iter()
            .chain(pipeline.dead_letter.iter())
            .map(|s| (s.name.clone(), s.connector.clone()))
            .collect();
        PipelineMetrics {
            secrets: pipeline.secrets.clone(),
            ..Self::new(
                &pipeline.name,
                pipeline.file.clone(),
                &pipeline.source.connector,
                &sinks,
            )
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sink named `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkMetrics> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// Marks a (re)start: uptime counts from now.
    pub fn mark_started(&self) {
        self.inner().started = Some(Instant::now());
    }

    /// Time since the last (re)start of the pipeline.
    pub fn uptime(&self) -> Duration {
        self.inner()
            .started
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the state.
    pub fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Back to running after a retry succeeded (a paused or stopped state stays).
    pub fn recovered(&self) {
        let _ = self.state.compare_exchange(
            State::Retrying as u8,
            State::Running as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Counts a retry after `err`, keeps it as the last error and shows the pipeline
    /// as retrying.
    pub fn retry(&self, err: &connector_api::Error) {
        self.retries[kind_index(err.kind())].fetch_add(1, Ordering::Relaxed);
        let _ = self.state.compare_exchange(
            State::Running as u8,
            State::Retrying as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.set_error(Some(format!("{} error: {err}", err.kind())));
    }

    /// Retries so far, per error kind (kinds with none left out).
    pub fn retries(&self) -> Vec<(ErrorKind, u64)> {
        KINDS
            .iter()
            .zip(&self.retries)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// `message` with every value substituted for a reference in the pipeline file
    /// (a password, a token) replaced by `****`.
    pub fn redact(&self, message: String) -> String {
        crate::config::redact(&self.secrets, message)
    }

    /// Records the last error (redacted here).
    pub fn set_error(&self, message: Option<String>) {
        let message = message.map(|m| self.redact(m));
        self.inner().last_error = message;
    }

    /// The last error.
    pub fn last_error(&self) -> Option<String> {
        self.inner().last_error.clone()
    }

    /// A changed file that did not validate (the running version is kept).
    pub fn set_config_error(&self, message: Option<String>) {
        self.inner().config_error = message;
    }

    /// The reload error, if the file on disk does not validate.
    pub fn config_error(&self) -> Option<String> {
        self.inner().config_error.clone()
    }

    /// Records a stored checkpoint.
    pub fn checkpointed(&self, offsets: &Offsets) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.inner().last_checkpoint = Some((SystemTime::now(), offsets.clone()));
    }

    /// When the last checkpoint was stored, and its offsets.
    pub fn last_checkpoint(&self) -> Option<(SystemTime, Offsets)> {
        self.inner().last_checkpoint.clone()
    }

    /// The in-flight budget of the running version: its semaphore (permits are KiB)
    /// and its size in bytes.
    pub fn set_in_flight(&self, budget: Option<(Arc<Semaphore>, u64)>) {
        self.inner().in_flight = budget;
    }

    /// Records how far the source's bounded read has come.
    pub fn set_progress(&self, progress: Option<connector_api::Progress>) {
        self.inner().progress = progress;
    }

    /// Records how far each split of the source is behind its input's end.
    pub fn set_lag(&self, lag: Vec<connector_api::Lag>) {
        self.inner().lag = lag;
    }

    /// How far each split of the source is behind its input's end (where known).
    pub fn lag(&self) -> Vec<connector_api::Lag> {
        self.inner().lag.clone()
    }

    /// How far the source's bounded read has come, when it knows its total.
    pub fn progress(&self) -> Option<connector_api::Progress> {
        self.inner().progress
    }

    /// Bytes read but not yet written, and the limit.
    pub fn in_flight(&self) -> Option<(u64, u64)> {
        self.inner().in_flight.as_ref().map(|(s, limit)| {
            let free = s.available_permits() as u64 * 1024;
            (limit.saturating_sub(free), *limit)
        })
    }
}

/// The registry of every pipeline of this process.
#[derive(Debug)]
pub struct Telemetry {
    pipelines: RwLock<BTreeMap<String, Arc<PipelineMetrics>>>,
    /// When the process started.
    pub started: Instant,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            pipelines: RwLock::new(BTreeMap::new()),
            started: Instant::now(),
        }
    }
}

impl Telemetry {
    /// Registers (or replaces) a pipeline's metrics.
    pub fn insert(&self, metrics: Arc<PipelineMetrics>) {
        self.pipelines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(metrics.name.clone(), metrics);
    }

    /// Forgets a pipeline (its file was removed).
    pub fn remove(&self, name: &str) {
        self.pipelines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The pipeline named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<PipelineMetrics>> {
        self.pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every pipeline, by name.
    pub fn all(&self) -> Vec<Arc<PipelineMetrics>> {
        self.pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The Prometheus text exposition of every pipeline.
    pub fn render(&self) -> String {
        prometheus::render(self)
    }
}

tokio::task_local! {
    static CURRENT: Arc<PipelineMetrics>;
}

/// Runs `fut` with `metrics` as the pipeline that retries inside it are counted for.
pub async fn scope<F: std::future::Future>(metrics: Arc<PipelineMetrics>, fut: F) -> F::Output {
    CURRENT.scope(metrics, fut).await
}

/// Counts a retry after `err` for the pipeline of the current task, if any.
pub fn count_retry(err: &connector_api::Error) {
    let _ = CURRENT.try_with(|m| m.retry(err));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(buckets[0], 1); // <= 1 ms
        assert_eq!(buckets[3], 1); // <= 25 ms
        assert_eq!(buckets[4], 2); // <= 50 ms
        assert_eq!(*buckets.last().unwrap(), 2); // the minute is only in +Inf
        assert_eq!(count, 3);
        assert!((sum - 60.0305).abs() < 1e-9);
    }

    #[test]
    fn retrying_shows_until_recovered_and_never_overrides_pause() {
        let m = PipelineMetrics::new("p", PathBuf::from("p.toml"), "file", &[]);
        m.set_state(State::Running);
        m.retry(&connector_api::Error::connect("db down"));
        assert_eq!(m.state(), State::Retrying);
        assert_eq!(m.last_error().unwrap(), "connect error: db down");
        m.recovered();
        assert_eq!(m.state(), State::Running);
        m.set_state(State::Paused);
        m.retry(&connector_api::Error::transient("busy"));
        m.recovered();
        assert_eq!(m.state(), State::Paused);
        assert_eq!(
            m.retries(),
            vec![(ErrorKind::Connect, 1), (ErrorKind::Transient, 1)]
        );
    }
}
