//! The pipeline engine: source task -> bounded channel -> transforms -> sinks.
//!
//! The order never changes: read, write, flush every sink, store the checkpoint, and
//! only then commit to the source. The channel is bounded in batches and in bytes
//! (`batch.max_in_flight`), so a slow sink slows the source and memory stays flat.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use connector_api::{
    conform, Batch, DriftPolicy, Error, Offsets, Reject, Result, Sink, SinkContext, SourceContext,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::checkpoint::CheckpointStore;
use crate::config::{Pipeline, Section, Tolerance};
use crate::registry::Registry;
use crate::retry::RetryPolicy;
use crate::retrying;

/// Counters of a running pipeline, shared with the progress display.
#[derive(Debug)]
pub struct Stats {
    /// Records read from the source.
    pub records_in: AtomicU64,
    /// Records written to the sinks (each record counted once, whatever the number of sinks).
    pub records_out: AtomicU64,
    /// Arrow bytes of the records written.
    pub bytes_out: AtomicU64,
    /// Records sent to the dead-letter sink.
    pub rejected: AtomicU64,
    /// Checkpoints stored.
    pub checkpoints: AtomicU64,
    /// When the pipeline started.
    pub started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

enum Msg {
    Batch(Batch, Option<OwnedSemaphorePermit>),
    Failed(Error),
}

struct SinkSlot {
    name: String,
    sink: Box<dyn Sink>,
    drift: DriftPolicy,
    schema: Option<SchemaRef>,
}

/// Tracks the share of bad records over the last `window` records.
struct FailureWindow {
    window: u64,
    entries: VecDeque<(u64, u64)>,
    total: u64,
    bad: u64,
}

impl FailureWindow {
    fn new(window: usize) -> Self {
        FailureWindow {
            window: window.max(1) as u64,
            entries: VecDeque::new(),
            total: 0,
            bad: 0,
        }
    }

    /// Adds a batch's counts; returns the bad share when the window is full.
    fn add(&mut self, good: u64, bad: u64) -> Option<f64> {
        self.entries.push_back((good, bad));
        self.total += good + bad;
        self.bad += bad;
        while let Some(&(g, b)) = self.entries.front() {
            if self.total - (g + b) < self.window {
                break;
            }
            self.entries.pop_front();
            self.total -= g + b;
            self.bad -= b;
        }
        (self.total >= self.window).then(|| self.bad as f64 / self.total as f64)
    }
}

fn dead_letter_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        s("pipeline"),
        s("split"),
        s("position"),
        s("error_kind"),
        s("error"),
        s("record"),
        Field::new(
            "failed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

fn dead_letter_batch(pipeline: &str, rejects: &[Reject]) -> Result<RecordBatch> {
    let col = |f: &dyn Fn(&Reject) -> String| -> Arc<StringArray> {
        Arc::new(StringArray::from_iter_values(rejects.iter().map(f)))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Ok(RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            col(&|_| pipeline.to_string()),
            col(&|r| r.split.clone()),
            col(&|r| r.position.clone()),
            col(&|r| r.error.kind().to_string()),
            col(&|r| r.error.to_string()),
            col(&|r| r.raw.clone()),
            Arc::new(
                TimestampMicrosecondArray::from(vec![now; rejects.len()]).with_timezone("UTC"),
            ),
        ],
    )?)
}

/// Runs one pipeline like [`run`], and after a failure that a fresh start may cure
/// (a lost connection, a sink that lost its transaction) restarts it from its last
/// checkpoint, with exponential backoff, up to `errors.max_retries` times in a row.
pub async fn supervise(
    pipeline: &Pipeline,
    registry: &Registry,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<()> {
    let policy = RetryPolicy {
        max_retries: pipeline.errors.max_retries,
        initial: pipeline.errors.retry_backoff,
        max: pipeline.errors.retry_backoff_max,
    };
    let mut backoff = crate::retry::Backoff::new(&policy);
    loop {
        let started = Instant::now();
        let result = run(pipeline, registry, shutdown.clone(), stats.clone()).await;
        let err = match result {
            Err(e) if e.is_restartable() && !*shutdown.borrow() => e,
            other => return other,
        };
        if started.elapsed() > Duration::from_secs(60) {
            // it ran a while: a new failure starts a new count
            backoff = crate::retry::Backoff::new(&policy);
        }
        let Some(delay) = backoff.next_delay() else {
            return Err(err.context(format!("after {} restarts", policy.max_retries)));
        };
        tracing::warn!(
            pipeline = %pipeline.name,
            error = %err,
            kind = %err.kind(),
            attempt = backoff.attempt(),
            delay_ms = delay.as_millis() as u64,
            "pipeline failed; restarting from its last checkpoint"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}

/// Runs one pipeline until its source ends, it fails, or `shutdown` turns true.
pub async fn run(
    pipeline: &Pipeline,
    registry: &Registry,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<()> {
    let policy = RetryPolicy {
        max_retries: pipeline.errors.max_retries,
        initial: pipeline.errors.retry_backoff,
        max: pipeline.errors.retry_backoff_max,
    };
    let name = pipeline.name.clone();

    // a stop signal while connecting (a service still down, retried with backoff)
    // ends the pipeline at once: nothing was read or written yet
    macro_rules! unless_stopped {
        ($fut:expr) => {
            tokio::select! {
                r = $fut => r,
                _ = shutdown.wait_for(|stop| *stop) => {
                    tracing::info!(pipeline = %name, "stopped while connecting");
                    return Ok(());
                }
            }
        };
    }

    let mut sinks = Vec::new();
    let mut sink_offsets = Vec::new();
    for section in &pipeline.sinks {
        let (slot, offsets) = unless_stopped!(open_sink(registry, section, &name, &policy))?;
        sinks.push(slot);
        sink_offsets.push(offsets);
    }
    let mut dead_letter = match &pipeline.dead_letter {
        Some(section) => Some(unless_stopped!(open_sink(registry, section, &name, &policy))?.0),
        None => None,
    };

    let store_path = pipeline.checkpoint_path();
    let store = unless_stopped!(async {
        retrying!(
            &policy,
            "checkpoint store open",
            CheckpointStore::shared(&store_path)
        )
    })?;
    let stored = store.load(&name).await?;
    let resume = match (sink_offsets.len(), sink_offsets.first().cloned().flatten()) {
        (1, Some(with_data)) => {
            tracing::info!(pipeline = %name, "resuming from the offsets stored with the sink's data");
            with_data
        }
        _ => stored.unwrap_or_default(),
    };

    let connector = registry.source(&pipeline.source.connector).ok_or_else(|| {
        Error::config(format!(
            "unknown connector \"{}\"",
            pipeline.source.connector
        ))
    })?;
    let mut source = connector.create_source(&pipeline.source.config)?;
    let ctx = SourceContext {
        pipeline: name.clone(),
        batch_size: pipeline.batch.max_records,
        idle_timeout: pipeline
            .batch
            .linger
            .max(Duration::from_millis(100))
            .min(pipeline.checkpoint.interval),
    };
    unless_stopped!(async { retrying!(&policy, "source open", source.open(&ctx, &resume)) })
        .map_err(|e| e.context("source"))?;
    tracing::info!(pipeline = %name, source = %pipeline.source.connector, splits = resume.len(), "pipeline started");

    // source task
    let in_flight_kib =
        (pipeline.batch.max_in_flight.0 / 1024).clamp(1, u32::MAX as u64 >> 4) as u32;
    let budget = Arc::new(Semaphore::new(in_flight_kib as usize));
    let (tx, mut rx) = mpsc::channel::<Msg>(4);
    let (commit_tx, mut commit_rx) = mpsc::unbounded_channel::<Offsets>();
    let source_stats = stats.clone();
    let source_policy = policy.clone();
    let mut source_shutdown = shutdown.clone();
    let source_task = tokio::spawn(async move {
        let mut backoff = crate::retry::Backoff::new(&source_policy);
        loop {
            while let Ok(offsets) = commit_rx.try_recv() {
                if let Err(e) = source.commit(&offsets).await {
                    tracing::warn!(error = %e, "source commit failed; the checkpoint store has the position");
                }
            }
            let next = tokio::select! {
                biased;
                _ = source_shutdown.wait_for(|stop| *stop) => break,
                r = source.next_batch() => r,
            };
            match next {
                Ok(Some(batch)) if batch.is_idle() => continue,
                Ok(Some(batch)) => {
                    backoff = crate::retry::Backoff::new(&source_policy);
                    let kib = ((batch.byte_size() / 1024) as u32).clamp(1, in_flight_kib);
                    let permit = budget.clone().acquire_many_owned(kib).await.ok();
                    source_stats
                        .records_in
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    if tx.send(Msg::Batch(batch, permit)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if backoff.wait(&e, "source read").await {
                        continue;
                    }
                    let _ = tx.send(Msg::Failed(e.context("source"))).await;
                    break;
                }
            }
        }
        drop(tx);
        while let Some(offsets) = commit_rx.recv().await {
            if let Err(e) = source.commit(&offsets).await {
                tracing::warn!(error = %e, "source commit failed; the checkpoint store has the position");
            }
        }
        if let Err(e) = source.close().await {
            tracing::warn!(error = %e, "source close failed");
        }
    });

    let mut engine = Engine {
        pipeline,
        policy: &policy,
        sinks,
        dead_letter: dead_letter.take(),
        position: resume,
        dirty: false,
        failures: FailureWindow::new(pipeline.errors.window),
        stats: stats.clone(),
        acc: Vec::new(),
        acc_rows: 0,
        acc_bytes: 0,
        acc_since: None,
        permits: Vec::new(),
    };
    let result = engine
        .drive(&mut rx, &store, &commit_tx, &mut shutdown)
        .await;
    drop(commit_tx);
    drop(rx);
    let _ = source_task.await;
    for slot in engine.sinks.iter_mut().chain(engine.dead_letter.iter_mut()) {
        if let Err(e) = slot.sink.close().await {
            tracing::warn!(sink = %slot.name, error = %e, "sink close failed");
        }
    }
    result
}

async fn open_sink(
    registry: &Registry,
    section: &Section,
    pipeline: &str,
    policy: &RetryPolicy,
) -> Result<(SinkSlot, Option<Offsets>)> {
    let connector = registry
        .sink(&section.connector)
        .ok_or_else(|| Error::config(format!("unknown connector \"{}\"", section.connector)))?;
    let mut sink = connector.create_sink(&section.config)?;
    let ctx = SinkContext {
        pipeline: pipeline.to_string(),
        sink: section.name.clone(),
    };
    let state = retrying!(policy, "sink open", sink.open(&ctx))
        .map_err(|e| e.context(format!("sink \"{}\"", section.name)))?;
    Ok((
        SinkSlot {
            name: section.name.clone(),
            sink,
            drift: section.drift,
            schema: state.schema,
        },
        state.offsets,
    ))
}

struct Engine<'a> {
    pipeline: &'a Pipeline,
    policy: &'a RetryPolicy,
    sinks: Vec<SinkSlot>,
    dead_letter: Option<SinkSlot>,
    /// Position after the last batch written to every sink.
    position: Offsets,
    /// Something was written since the last checkpoint.
    dirty: bool,
    failures: FailureWindow,
    stats: Arc<Stats>,
    acc: Vec<Batch>,
    acc_rows: usize,
    acc_bytes: usize,
    acc_since: Option<Instant>,
    permits: Vec<OwnedSemaphorePermit>,
}

impl Engine<'_> {
    async fn drive(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
        store: &CheckpointStore,
        commit_tx: &mpsc::UnboundedSender<Offsets>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let interval = self.pipeline.checkpoint.interval;
        let linger = self.pipeline.batch.linger;
        let mut last_checkpoint = Instant::now();
        loop {
            let linger_at = self.acc_since.map(|t| t + linger);
            let checkpoint_at = last_checkpoint + interval;
            let wake = linger_at.map_or(checkpoint_at, |l| l.min(checkpoint_at));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Batch(batch, permit)) => {
                        self.accept(batch, permit).await?;
                    }
                    Some(Msg::Failed(e)) => return Err(e),
                    None => {
                        self.write_acc().await?;
                        self.checkpoint(store, commit_tx).await?;
                        let stopped = *shutdown.borrow();
                        tracing::info!(pipeline = %self.pipeline.name, stopped, "pipeline finished");
                        return Ok(());
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    if linger_at.is_some_and(|l| Instant::now() >= l) {
                        self.write_acc().await?;
                    }
                    if Instant::now() >= checkpoint_at {
                        self.write_acc().await?;
                        self.checkpoint(store, commit_tx).await?;
                        last_checkpoint = Instant::now();
                    }
                }
            }
        }
    }

    async fn accept(
        &mut self,
        mut batch: Batch,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<()> {
        if !batch.rejects.is_empty() {
            let rejects = std::mem::take(&mut batch.rejects);
            self.reject(batch.num_rows(), rejects).await?;
        } else {
            // good records count in the failure window too
            self.failures.add(batch.num_rows() as u64, 0);
        }
        if batch.num_rows() == 0 {
            if self.acc.is_empty() {
                self.position.merge(&batch.offsets);
                self.dirty = true;
            } else {
                self.acc.push(batch);
            }
            return Ok(());
        }
        if let Some(first) = self.acc.first() {
            if first.records.schema() != batch.records.schema() {
                self.write_acc().await?;
            }
        }
        self.acc_rows += batch.num_rows();
        self.acc_bytes += batch.byte_size();
        self.acc_since.get_or_insert_with(Instant::now);
        self.acc.push(batch);
        if let Some(p) = permit {
            self.permits.push(p);
        }
        if self.acc_rows >= self.pipeline.batch.max_records
            || self.acc_bytes as u64 >= self.pipeline.batch.max_bytes.0
        {
            self.write_acc().await?;
        }
        Ok(())
    }

    async fn reject(&mut self, good: usize, rejects: Vec<Reject>) -> Result<()> {
        let errors = &self.pipeline.errors;
        if errors.tolerance == Tolerance::None {
            let r = &rejects[0];
            return Err(
                Error::data(format!("bad record at {}: {}", r.position, r.error))
                    .context(format!("pipeline \"{}\"", self.pipeline.name)),
            );
        }
        if let Some(share) = self.failures.add(good as u64, rejects.len() as u64) {
            if share > errors.max_failure_rate {
                return Err(Error::data(format!(
                    "{:.1}% of the last {} records were bad (errors.max_failure_rate = {}); last: {}: {}",
                    share * 100.0,
                    errors.window,
                    errors.max_failure_rate,
                    rejects[rejects.len() - 1].position,
                    rejects[rejects.len() - 1].error
                )));
            }
        }
        for r in &rejects {
            tracing::warn!(position = %r.position, error = %r.error, "bad record sent to the dead-letter sink");
        }
        let records = dead_letter_batch(&self.pipeline.name, &rejects)?;
        let slot = self
            .dead_letter
            .as_mut()
            .ok_or_else(|| Error::internal("tolerance all without a dead-letter sink"))?;
        let batch = Batch::new(records, Offsets::new());
        retrying!(self.policy, "dead-letter write", slot.sink.write(&batch))
            .map_err(|e| e.context("dead-letter sink"))?;
        self.stats
            .rejected
            .fetch_add(rejects.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the accumulated batches, as one, to every sink.
    async fn write_acc(&mut self) -> Result<()> {
        if self.acc.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.acc);
        self.acc_rows = 0;
        self.acc_bytes = 0;
        self.acc_since = None;
        let mut offsets = Offsets::new();
        for b in &batches {
            offsets.merge(&b.offsets);
        }
        let with_rows: Vec<&RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| &b.records)
            .collect();
        let mut records = match with_rows.len() {
            0 => None,
            1 => Some(with_rows[0].clone()),
            _ => Some(arrow_select::concat::concat_batches(
                &with_rows[0].schema(),
                with_rows.iter().copied(),
            )?),
        };
        drop(batches);
        if let Some(r) = records.take() {
            let mut r = r;
            for t in &self.pipeline.transforms {
                r = t.apply(r)?;
            }
            records = Some(r);
        }
        if let Some(records) = records {
            let rows = records.num_rows() as u64;
            let bytes = records.get_array_memory_size() as u64;
            for slot in &mut self.sinks {
                let fitted = match &slot.schema {
                    None => {
                        // the sink's schema: the data columns, without reserved metadata
                        let schema = records.schema();
                        let fields: Vec<_> = schema
                            .fields()
                            .iter()
                            .filter(|f| !connector_api::columns::is_reserved(f.name()))
                            .cloned()
                            .collect();
                        slot.schema = Some(Arc::new(Schema::new(fields)));
                        records.clone()
                    }
                    Some(target) => {
                        let c = conform(&records, target, slot.drift)
                            .map_err(|e| e.context(format!("sink \"{}\"", slot.name)))?;
                        if let Some(evolved) = c.evolved {
                            tracing::info!(sink = %slot.name, columns = evolved.fields().len(), "schema evolved: new nullable columns, or a column widened");
                            slot.schema = Some(evolved);
                        }
                        if c.dropped_rows > 0 {
                            tracing::warn!(sink = %slot.name, rows = c.dropped_rows, "rows with new columns discarded (drift = discard_row)");
                        }
                        c.batch
                    }
                };
                let batch = Batch::new(fitted, offsets.clone());
                retrying!(self.policy, "sink write", slot.sink.write(&batch))
                    .map_err(|e| e.context(format!("sink \"{}\"", slot.name)))?;
            }
            self.stats.records_out.fetch_add(rows, Ordering::Relaxed);
            self.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
        self.permits.clear();
        self.position.merge(&offsets);
        self.dirty = true;
        Ok(())
    }

    /// Flushes every sink, stores the checkpoint, then tells the source.
    async fn checkpoint(
        &mut self,
        store: &CheckpointStore,
        commit_tx: &mpsc::UnboundedSender<Offsets>,
    ) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        for slot in self.sinks.iter_mut().chain(self.dead_letter.iter_mut()) {
            retrying!(self.policy, "sink flush", slot.sink.flush(&self.position))
                .map_err(|e| e.context(format!("sink \"{}\"", slot.name)))?;
        }
        retrying!(
            self.policy,
            "checkpoint store",
            store.store(&self.pipeline.name, &self.position)
        )?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        let _ = commit_tx.send(self.position.clone());
        self.dirty = false;
        tracing::debug!(pipeline = %self.pipeline.name, "checkpoint stored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_window_reports_only_when_full() {
        let mut w = FailureWindow::new(10);
        assert_eq!(w.add(5, 1), None);
        let share = w.add(3, 1).unwrap();
        assert!((share - 0.2).abs() < 1e-9);
        // old entries slide out
        let share = w.add(10, 0).unwrap();
        assert_eq!(share, 0.0);
    }
}
