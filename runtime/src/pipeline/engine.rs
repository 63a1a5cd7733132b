//! The engine loop of one run: takes batches from the source task, accumulates them
//! up to `[batch]` limits, writes them to every sink, and at each checkpoint flushes
//! every sink, stores the offsets, and only then tells the source to commit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use connector_api::{Batch, DriftPolicy, Error, Offsets, Reject, Result, Sink};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::catch_up::{CatchUp, Step};
use super::conform::conform;
use super::dead_letter::{self, FailureWindow};
use crate::checkpoint::CheckpointStore;
use crate::config::{Pipeline, Tolerance};
use crate::retry::RetryPolicy;
use crate::retrying;
use crate::telemetry::PipelineMetrics;
use crate::transform::chain::{Chain, SqlStage};

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
        store: &CheckpointStore,
        commit_tx: &mpsc::UnboundedSender<Offsets>,
        stop: &watch::Receiver<bool>,
        paused: &mut watch::Receiver<bool>,
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
                        self.settle().await?;
                        self.checkpoint(store, commit_tx).await?;
                        let stopped = *stop.borrow();
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
        if self.sinks.iter().any(|s| s.catch_up.is_some()) {
            for b in batches {
                let records = (b.num_rows() > 0).then_some(b.records);
                self.deliver(records, b.offsets).await?;
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
            self.deliver(records, offsets).await?;
        }
        self.metrics.recovered();
        self.permits.clear();
        self.dirty = true;
        Ok(())
    }

    /// Runs `records` through the transforms and writes them to every sink; the
    /// position moves to `offsets`.
    async fn deliver(&mut self, records: Option<RecordBatch>, offsets: Offsets) -> Result<()> {
        let records = match records {
            Some(r) => {
                // rows a query fails on are bad records, counted good when they were read
                let (r, rejects) = self.chain.apply(r, &offsets).await?;
                if !rejects.is_empty() {
                    self.reject(None, rejects).await?;
                }
                Some(r)
            }
            None => None,
        };
        // the ordinal sinks name records by: every record after the transforms, taken
        // or refused, so a replay counts the same
        let first = self.position.records().unwrap_or(0);
        self.position.merge(&offsets);
        self.position
            .add_records(records.as_ref().map_or(0, |r| r.num_rows() as u64));
        let Some(records) = records else {
            self.moved();
            return Ok(());
        };
        let rows = records.num_rows() as u64;
        let bytes = records.get_array_memory_size() as u64;
        // records out: those every sink took or was not meant to take (a refused
        // record is a dead letter)
        let mut taken = rows;
        for i in 0..self.sinks.len() {
            let step = match self.sinks[i].catch_up.as_mut() {
                Some(c) => {
                    let limit = self.pipeline.batch.max_in_flight.0 as usize;
                    c.next(first, &records, &self.position, limit)
                }
                None => Step::GiveUp(vec![records.clone()], String::new()),
            };
            let written = match step {
                Step::Hold => rows,
                Step::CaughtUp => {
                    self.caught_up(i);
                    rows
                }
                Step::GiveUp(batches, why) => {
                    if !why.is_empty() {
                        self.gave_up(i, &why);
                    }
                    let mut written = 0;
                    let last = batches.len().saturating_sub(1);
                    for (n, b) in batches.iter().enumerate() {
                        let with = match n == last {
                            true => offsets.clone(),
                            false => Offsets::new(),
                        };
                        written = self.write_to(i, b, &with).await?;
                    }
                    written
                }
            };
            taken = taken.min(written);
        }
        self.metrics.records_out.fetch_add(taken, Ordering::Relaxed);
        self.metrics.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `records` to sink `i` through its route and drift policy, in parts of
    /// at most `[batch]`'s size, `offsets` with the last; returns the records it took
    /// or was not meant to take.
    async fn write_to(
        &mut self,
        i: usize,
        records: &RecordBatch,
        offsets: &Offsets,
    ) -> Result<u64> {
        let rows = records.num_rows() as u64;
        let per_write = self.rows_per_write(records);
        let mut written_here = 0;
        let routed = match self.sinks[i].route.as_mut() {
            Some(route) => {
                let (kept, rejects) = route.apply(records, offsets).await?;
                written_here += rows - kept.num_rows() as u64 - rejects.len() as u64;
                if !rejects.is_empty() {
                    self.reject(None, rejects).await?;
                }
                kept
            }
            None => records.clone(),
        };
        let fitted = fit(&mut self.sinks[i], &routed)?;
        // a source batch larger than [batch] allows goes out in parts; the offsets go
        // with the last (they hold at its end)
        let mut at = 0;
        while at < fitted.num_rows() {
            let n = per_write.min(fitted.num_rows() - at);
            let part = fitted.slice(at, n);
            at += n;
            // a slice reports its whole buffers: its share of them instead
            let share = fitted.get_array_memory_size() as u128 * n as u128
                / fitted.num_rows().max(1) as u128;
            let part_offsets = match at == fitted.num_rows() {
                true => offsets.clone(),
                false => Offsets::new(),
            };
            let written = self.write_part(i, Batch::new(part, part_offsets)).await?;
            written_here += written as u64;
            if let Some(m) = self.metrics.sink(&self.sinks[i].name) {
                m.records.fetch_add(written as u64, Ordering::Relaxed);
                let bytes = share * written as u128 / n.max(1) as u128;
                m.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                m.batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(written_here)
    }

    /// The position moved without records: a sink whose count is at its ordinal may
    /// now be where it stored its offsets.
    fn moved(&mut self) {
        for i in 0..self.sinks.len() {
            if self.sinks[i]
                .catch_up
                .as_ref()
                .is_some_and(|c| c.moved(&self.position))
            {
                self.caught_up(i);
            }
        }
    }

    fn caught_up(&mut self, i: usize) {
        let slot = &mut self.sinks[i];
        if let Some(c) = slot.catch_up.take() {
            tracing::info!(pipeline = %self.pipeline.name, sink = %slot.name, records = c.until(), "the sink has caught up with what it held before the restart: nothing of it was written again");
        }
    }

    fn gave_up(&mut self, i: usize, why: &str) {
        let slot = &mut self.sinks[i];
        if slot.catch_up.take().is_some() {
            tracing::warn!(pipeline = %self.pipeline.name, sink = %slot.name, "the records read again since the restart are not provably those the sink held ({why}): it gets them all, at least once");
        }
    }

    /// The source ended: a sink still catching up gets what was held for it.
    async fn settle(&mut self) -> Result<()> {
        for i in 0..self.sinks.len() {
            let Some(c) = self.sinks[i].catch_up.as_mut() else {
                continue;
            };
            let Step::GiveUp(batches, why) = c.ended() else {
                continue;
            };
            self.gave_up(i, &why);
            for b in &batches {
                self.write_to(i, b, &Offsets::new()).await?;
            }
            self.dirty = true;
        }
        Ok(())
    }

    /// Writes one part to sink `i`; returns the rows written. Records the sink refused
    /// before writing any of the part ([`Error::refused`]) are bad records: under
    /// `errors.tolerance = "all"` they go to the dead-letter sink and the rest of the
    /// part is written again; otherwise the run stops naming the first.
    async fn write_part(&mut self, i: usize, mut batch: Batch) -> Result<usize> {
        loop {
            let slot = &mut self.sinks[i];
            let Err(mut e) = retrying!(self.policy, "sink write", slot.sink.write(&batch)) else {
                return Ok(batch.num_rows());
            };
            let name = slot.name.clone();
            let mut keep = vec![true; batch.num_rows()];
            // one reject per row of the part, whatever the sink sent
            let refused: Vec<Reject> = e
                .take_refused()
                .into_iter()
                .filter_map(|(row, r)| match keep.get_mut(row) {
                    Some(k) if *k => {
                        *k = false;
                        Some(r)
                    }
                    _ => None,
                })
                .collect();
            if refused.is_empty() || self.pipeline.errors.tolerance == Tolerance::None {
                return Err(e.context(format!("sink \"{name}\"")));
            }
            let keep = arrow_array::BooleanArray::from(keep);
            batch.records = arrow_select::filter::filter_record_batch(&batch.records, &keep)?;
            let rejects = refused
                .into_iter()
                .map(|mut r| {
                    r.position = format!("sink \"{name}\" {}", r.position);
                    r
                })
                .collect();
            // counted good when they were read; an emptied part is still written, for
            // its offsets
            self.reject(None, rejects).await?;
        }
    }

    /// Rows of `records` per sink write: `max_records`, fewer when the average row
    /// would make a write larger than `max_bytes`.
    fn rows_per_write(&self, records: &RecordBatch) -> usize {
        let batch = &self.pipeline.batch;
        let rows = records.num_rows().max(1) as u128;
        let bytes = records.get_array_memory_size().max(1) as u128;
        let by_bytes = (rows * batch.max_bytes.0 as u128 / bytes).max(1);
        batch
            .max_records
            .max(1)
            .min(by_bytes.min(usize::MAX as u128) as usize)
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
        // dead letters first: a sink that was ahead when the run restarts does not
        // route or refuse again what it holds
        let caught_up = self.sinks.iter_mut().filter(|s| s.catch_up.is_none());
        for slot in self.dead_letter.iter_mut().chain(caught_up) {
            let started = Instant::now();
            retrying!(self.policy, "sink flush", slot.sink.flush(&self.position))
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

/// `records` fitted to the sink's schema by its drift policy (the first batch sets the
/// schema of a sink that has none).
fn fit(slot: &mut SinkSlot, records: &RecordBatch) -> Result<RecordBatch> {
    match &slot.schema {
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
            Ok(records.clone())
        }
        Some(target) => {
            let c = conform(records, target, slot.drift)
                .map_err(|e| e.context(format!("sink \"{}\"", slot.name)))?;
            if let Some(evolved) = c.evolved {
                tracing::info!(sink = %slot.name, columns = evolved.fields().len(), "schema evolved: new nullable columns, or a column widened");
                slot.schema = Some(evolved);
            }
            if c.dropped_rows > 0 {
                tracing::warn!(sink = %slot.name, rows = c.dropped_rows, "rows with new columns discarded (drift = discard_row)");
            }
            Ok(c.batch)
        }
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
