//! The engine loop of one run: takes batches from the source task, accumulates them
//! up to `[batch]` limits, writes them to every sink, and at each checkpoint flushes
//! every sink, stores the offsets, and only then tells the source to commit. Writing
//! to the sinks themselves is in `engine/sinks.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use connector_api::{Batch, DriftPolicy, Error, Offsets, Reject, Result, Sink};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::ahead::Ahead;
use super::catch_up::CatchUp;
use super::dead_letter::{self, FailureWindow};
use crate::checkpoint::Store;
use crate::config::{Pipeline, Tolerance};
use crate::retry::RetryPolicy;
use crate::retrying;
use crate::telemetry::PipelineMetrics;
use crate::transform::chain::{Chain, SqlStage};

mod sinks;

/// What the source task sends the engine.
pub(super) enum Msg {
    /// A batch, with its share of the in-flight budget.
    Batch(Batch, Option<OwnedSemaphorePermit>),
    /// The source gave up.
    Failed(Error),
}

/// An open sink and the schema it takes.
pub(super) struct SinkSlot {
    pub(super) name: String,
    pub(super) sink: Box<dyn Sink>,
    pub(super) drift: DriftPolicy,
    pub(super) schema: Option<SchemaRef>,
    /// The rows it takes (`where`), when not all.
    pub(super) route: Option<SqlStage>,
    /// While it catches up with what it held beyond the run's start: not flushed
    /// meanwhile, so its stored offsets never go back.
    pub(super) catch_up: Option<CatchUp>,
    /// While the run has not passed, in every split, the records it held beyond the
    /// run's start (by position): they are not handed to it again.
    pub(super) ahead: Option<Ahead>,
}

pub(super) struct Engine<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) policy: &'a RetryPolicy,
    chain: Chain,
    pub(super) sinks: Vec<SinkSlot>,
    pub(super) dead_letter: Option<SinkSlot>,
    /// Position after the last batch written to every sink.
    pub(super) position: Offsets,
    /// Something was written since the last checkpoint.
    dirty: bool,
    failures: FailureWindow,
    metrics: Arc<PipelineMetrics>,
    acc: Vec<Batch>,
    acc_rows: usize,
    acc_bytes: usize,
    acc_since: Option<Instant>,
    permits: Vec<OwnedSemaphorePermit>,
}

impl<'a> Engine<'a> {
    pub(super) fn new(
        pipeline: &'a Pipeline,
        policy: &'a RetryPolicy,
        chain: Chain,
        sinks: Vec<SinkSlot>,
        dead_letter: Option<SinkSlot>,
        position: Offsets,
        metrics: Arc<PipelineMetrics>,
    ) -> Self {
        Engine {
            pipeline,
            policy,
            chain,
            sinks,
            dead_letter,
            position,
            dirty: false,
            failures: FailureWindow::new(pipeline.errors.window),
            metrics,
            acc: Vec::new(),
            acc_rows: 0,
            acc_bytes: 0,
            acc_since: None,
            permits: Vec::new(),
        }
    }

    /// Runs until the source ends (after a last flush and checkpoint) or fails. When
    /// `paused` turns true, what was read is written and checkpointed at once.
    pub(super) async fn drive(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
        store: &Store,
        commit_tx: &mpsc::UnboundedSender<Offsets>,
        stop: &watch::Receiver<bool>,
        paused: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let interval = self.checkpoint_interval();
        let linger = self.pipeline.batch.linger;
        let mut last_checkpoint = Instant::now();
        loop {
            let linger_at = self.acc_since.map(|t| t + linger);
            let checkpoint_at = last_checkpoint + interval;
            let wake = linger_at.map_or(checkpoint_at, |l| l.min(checkpoint_at));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Batch(batch, permit)) => {
                        let soon = batch.checkpoint;
                        self.accept(batch, permit).await?;
                        if soon {
                            // the source waits for acknowledgements: give them now
                            self.write_acc().await?;
                            self.checkpoint(store, commit_tx).await?;
                            last_checkpoint = Instant::now();
                        }
                        if *paused.borrow() {
                            // the last read before the source saw the pause
                            self.write_acc().await?;
                            self.checkpoint(store, commit_tx).await?;
                        }
                    }
                    Some(Msg::Failed(e)) => return Err(e),
                    None => {
                        self.write_acc().await?;
                        let stopped = *stop.borrow();
                        // a stop leaves a sink catching up unflushed: the next run
                        // catches up again; only a source that ended gives up
                        if !stopped {
                            self.settle().await?;
                        }
                        self.checkpoint(store, commit_tx).await?;
                        tracing::info!(pipeline = %self.pipeline.name, stopped, "pipeline finished");
                        return Ok(());
                    }
                },
                Ok(()) = paused.changed() => {
                    if *paused.borrow_and_update() {
                        self.write_acc().await?;
                        self.checkpoint(store, commit_tx).await?;
                        last_checkpoint = Instant::now();
                        tracing::info!(pipeline = %self.pipeline.name, "paused: everything read is written and checkpointed");
                    }
                }
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

    /// The pipeline's `checkpoint.interval`, or longer where a sink wants its flushes
    /// spaced further apart (a table format's `commit_interval`).
    fn checkpoint_interval(&self) -> Duration {
        let mut interval = self.pipeline.checkpoint.interval;
        for slot in &self.sinks {
            if let Some(wanted) = slot.sink.flush_interval().filter(|w| *w > interval) {
                tracing::info!(
                    pipeline = %self.pipeline.name,
                    sink = %slot.name,
                    every = ?wanted,
                    "checkpoints spaced by the sink's flush interval"
                );
                interval = wanted;
            }
        }
        interval
    }

    async fn accept(
        &mut self,
        mut batch: Batch,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<()> {
        if !batch.rejects.is_empty() {
            let rejects = std::mem::take(&mut batch.rejects);
            self.reject(Some(batch.num_rows()), rejects).await?;
        } else {
            // good records count in the failure window too
            self.failures.add(batch.num_rows() as u64, 0);
        }
        if batch.num_rows() == 0 {
            if self.acc.is_empty() {
                self.position.merge(&batch.offsets);
                self.moved();
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

    /// Stops on `rejects`, or sends them to the dead-letter sink, by the tolerance.
    /// `good`: the good records read with them (counted in the failure window too);
    /// None for records a sink refused, already counted good when they were read.
    async fn reject(&mut self, good: Option<usize>, rejects: Vec<Reject>) -> Result<()> {
        self.metrics
            .rejected
            .fetch_add(rejects.len() as u64, Ordering::Relaxed);
        let errors = &self.pipeline.errors;
        if errors.tolerance == Tolerance::None {
            let r = &rejects[0];
            return Err(
                Error::data(format!("bad record at {}: {}", r.position, r.error))
                    .context(format!("pipeline \"{}\"", self.pipeline.name)),
            );
        }
        let bad = rejects.len() as u64;
        let share = match good {
            Some(good) => self.failures.add(good as u64, bad),
            None => self.failures.refused(bad),
        };
        if let Some(share) = share {
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
        let records = dead_letter::batch(&self.pipeline.name, &rejects)?;
        let slot = self
            .dead_letter
            .as_mut()
            .ok_or_else(|| Error::internal("tolerance all without a dead-letter sink"))?;
        let batch = Batch::new(records, Offsets::new());
        retrying!(self.policy, "dead-letter write", slot.sink.write(&batch))
            .map_err(|e| dead_letters_refused(e, &rejects))?;
        let n = rejects.len() as u64;
        self.metrics.dead_lettered.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = self.metrics.sink(&slot.name) {
            m.records.fetch_add(n, Ordering::Relaxed);
            m.bytes.fetch_add(
                batch.records.get_array_memory_size() as u64,
                Ordering::Relaxed,
            );
            m.batches.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the accumulated batches, as one, to every sink; one by one while a sink
    /// catches up, so that its count ends where a source batch ends, at a position to
    /// compare with the one it stored.
    async fn write_acc(&mut self) -> Result<()> {
        if self.acc.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.acc);
        self.acc_rows = 0;
        self.acc_bytes = 0;
        self.acc_since = None;
        if self
            .sinks
            .iter()
            .any(|s| s.catch_up.is_some() || s.ahead.is_some())
        {
            for b in batches {
                let records = (b.num_rows() > 0).then_some(b.records);
                self.deliver(records, b.offsets, b.positions.as_ref())
                    .await?;
            }
        } else {
            let mut offsets = Offsets::new();
            for b in &batches {
                offsets.merge(&b.offsets);
            }
            let with_rows: Vec<&RecordBatch> = batches
                .iter()
                .filter(|b| b.num_rows() > 0)
                .map(|b| &b.records)
                .collect();
            let records = match with_rows.len() {
                0 => None,
                1 => Some(with_rows[0].clone()),
                _ => Some(arrow_select::concat::concat_batches(
                    &with_rows[0].schema(),
                    with_rows.iter().copied(),
                )?),
            };
            drop(batches);
            self.deliver(records, offsets, None).await?;
        }
        self.metrics.recovered();
        self.permits.clear();
        self.dirty = true;
        Ok(())
    }

    /// Flushes every sink, stores the checkpoint, then tells the source.
    async fn checkpoint(
        &mut self,
        store: &Store,
        commit_tx: &mpsc::UnboundedSender<Offsets>,
    ) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        // dead letters first: a sink that was ahead when the run restarts does not
        // route or refuse again what it holds
        let caught_up = self.sinks.iter_mut().filter(|s| s.catch_up.is_none());
        for slot in self.dead_letter.iter_mut().chain(caught_up) {
            let started = Instant::now();
            // a sink that was ahead keeps its own offsets of the splits not yet passed
            let own = slot.ahead.as_ref().map(|a| a.offsets(&self.position));
            let at = own.as_ref().unwrap_or(&self.position);
            retrying!(self.policy, "sink flush", slot.sink.flush(at))
                .map_err(|e| e.context(format!("sink \"{}\"", slot.name)))?;
            if let Some(m) = self.metrics.sink(&slot.name) {
                m.flushes.fetch_add(1, Ordering::Relaxed);
                m.flush_seconds.observe(started.elapsed());
            }
        }
        retrying!(
            self.policy,
            "checkpoint store",
            store.store(&self.pipeline.name, &self.position)
        )?;
        self.metrics.checkpointed(&self.position);
        self.metrics.recovered();
        let _ = commit_tx.send(self.position.clone());
        self.dirty = false;
        tracing::debug!(pipeline = %self.pipeline.name, "checkpoint stored");
        Ok(())
    }
}

/// The dead-letter sink's failure. Letters it refused (one too large for its topic,
/// say) stop the run before the next checkpoint, so nothing is lost; the message says
/// which letter and how to take it.
fn dead_letters_refused(e: Error, rejects: &[Reject]) -> Error {
    let Some((row, refusal)) = e.refused_rows().first() else {
        return e.context("dead-letter sink");
    };
    let of = rejects.get(*row).map_or("", |r| r.position.as_str());
    Error::data(format!(
        "the dead-letter sink refused {} letter(s), first the one of {of}: {}; nothing is lost (the run stops \
         before its next checkpoint): give [errors.dead_letter] a sink that takes them (file and s3 take any size)",
        e.refused_rows().len(),
        refusal.error
    ))
    .with_source(e)
}
