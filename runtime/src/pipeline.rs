//! One pipeline: source task -> bounded channel -> transforms -> sinks.
//!
//! The order never changes: read, write, flush every sink, store the checkpoint, and
//! only then commit to the source. The channel is bounded in batches and in bytes
//! (`batch.max_in_flight`), so a slow sink slows the source and memory stays flat.
//! [`supervise`] restarts a run that failed in a way a fresh start may cure; the
//! engine loop is in `pipeline/engine.rs`, bad records in `pipeline/dead_letter.rs`,
//! the drift policy's schema conformance in `pipeline/conform.rs`, where a run starts
//! (and what each of several sinks skips) in `pipeline/resume.rs`, a sink that was
//! ahead catching up in `pipeline/catch_up.rs` (by count) and `pipeline/ahead.rs` (by
//! position).

/// `$fut`'s result, unless `$stop` turns true first: then the enclosing function
/// returns `Ok(())`, saying that pipeline `$name` stopped while connecting (a
/// service still down, retried with backoff; nothing was read or written yet).
macro_rules! unless_stopped {
    ($stop:expr, $name:expr, $fut:expr) => {
        tokio::select! {
            r = $fut => r,
            _ = $stop.wait_for(|stop| *stop) => {
                tracing::info!(pipeline = %$name, "stopped while connecting");
                return Ok(());
            }
        }
    };
}

mod ahead;
mod catch_up;
mod conform;
mod dead_letter;
mod engine;
mod resume;
mod shared;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use connector_api::{Error, Offsets, Result, SinkContext, SourceContext};
use tokio::sync::{mpsc, watch, Semaphore};

use self::ahead::Ahead;
use self::catch_up::CatchUp;
use self::engine::{Engine, Msg, SinkSlot};
use crate::checkpoint::{CheckpointStore, Store};
use crate::config::{Pipeline, Section, StoreKind, Tolerance};
use crate::registry::Registry;
use crate::retry::RetryPolicy;
use crate::retrying;
use crate::telemetry::{self, PipelineMetrics, State};
use crate::transform::chain::{Chain, SqlStage};

/// How a running pipeline is steered from outside.
#[derive(Clone)]
pub struct Control {
    /// Turns true to stop: the source stops, everything read is written, flushed and
    /// checkpointed, then the run ends.
    pub stop: watch::Receiver<bool>,
    /// While true, the source is not read; what was read is flushed and checkpointed.
    pub paused: watch::Receiver<bool>,
    /// Keeps `paused` open when nobody else holds its sender.
    _unpaused: Option<Arc<watch::Sender<bool>>>,
}

impl Control {
    /// Stopped by `stop`, never paused.
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        let (tx, paused) = watch::channel(false);
        Control {
            stop,
            paused,
            _unpaused: Some(Arc::new(tx)),
        }
    }

    /// Stopped by `stop`, paused by `paused`.
    pub fn with_pause(stop: watch::Receiver<bool>, paused: watch::Receiver<bool>) -> Self {
        Control {
            stop,
            paused,
            _unpaused: None,
        }
    }
}

/// Runs one pipeline like [`run`], and after a failure that a fresh start may cure
/// (a lost connection, a sink that lost its transaction) restarts it from its last
/// checkpoint, with exponential backoff, up to `errors.max_retries` times in a row.
pub async fn supervise(
    pipeline: &Pipeline,
    registry: &Registry,
    control: Control,
    metrics: Arc<PipelineMetrics>,
) -> Result<()> {
    if pipeline.checkpoint.store == StoreKind::Postgres {
        // runtimes share the splits: leases take the place of the lock file
        return shared::work(pipeline, registry, control, metrics).await;
    }
    let policy = RetryPolicy::of(pipeline);
    let mut stop = control.stop.clone();
    let mut backoff = crate::retry::Backoff::new(&policy);
    // held until the pipeline ends for good: restarts keep it
    let Some(_lock) = crate::lock::hold(pipeline, &control.stop).await? else {
        return Ok(()); // stopped while waiting for another run to end
    };
    loop {
        let position = || metrics.last_checkpoint().map(|(_, offsets)| offsets);
        let before = position();
        let result = telemetry::scope(
            metrics.clone(),
            run(pipeline, registry, control.clone(), metrics.clone()),
        )
        .await;
        let err = match result {
            Err(e) if e.is_restartable() && !*stop.borrow() => e,
            other => return other,
        };
        let after = position();
        if after.is_some() && after != before {
            // the run stored a checkpoint further on: it got on, so a new failure
            // starts a new count. Time alone is no progress, nor a checkpoint of the
            // same position: a run that spent minutes retrying its connections, or
            // idled, counts as a failed attempt.
            backoff = crate::retry::Backoff::new(&policy);
        }
        let Some(delay) = backoff.next_delay() else {
            return Err(err.context(format!(
                "after {} restarts in a row without a checkpoint further on",
                policy.max_retries
            )));
        };
        let attempt = backoff.attempt();
        tracing::warn!(
            pipeline = %pipeline.name,
            error = %err,
            kind = %err.kind(),
            attempt,
            max_retries = policy.max_retries,
            delay_ms = delay.as_millis() as u64,
            "pipeline failed; restarting from its last checkpoint"
        );
        metrics.restarts.fetch_add(1, Ordering::Relaxed);
        metrics.set_error(Some(format!(
            "{} error (restart {attempt} of {}): {err}",
            err.kind(),
            policy.max_retries
        )));
        metrics.set_state(State::Retrying);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}

/// Runs one pipeline until its source ends, it fails, or `control.stop` turns true,
/// with its checkpoints in the local store.
pub async fn run(
    pipeline: &Pipeline,
    registry: &Registry,
    control: Control,
    metrics: Arc<PipelineMetrics>,
) -> Result<()> {
    let policy = RetryPolicy::of(pipeline);
    let path = pipeline.checkpoint_path();
    let mut stop = control.stop.clone();
    let store = unless_stopped!(stop, pipeline.name, async {
        retrying!(
            &policy,
            "checkpoint store open",
            CheckpointStore::shared(&path)
        )
    })?;
    run_on(
        pipeline,
        registry,
        control,
        metrics,
        Store::Local(store),
        None,
    )
    .await
}

/// Runs `pipeline` (with the checkpoints of `store`, reading only `splits` when
/// given) until its source ends, it fails, or `control.stop` turns true.
async fn run_on(
    pipeline: &Pipeline,
    registry: &Registry,
    control: Control,
    metrics: Arc<PipelineMetrics>,
    store: Store,
    splits: Option<Vec<String>>,
) -> Result<()> {
    let policy = RetryPolicy::of(pipeline);
    let name = pipeline.name.clone();
    let Control {
        stop, mut paused, ..
    } = control;
    let mut shutdown = stop.clone();

    // the sinks, then the dead-letter sink (whose stored offsets play no part in the
    // resume)
    let mut opened = Vec::new();
    for section in pipeline.sinks.iter().chain(&pipeline.dead_letter) {
        opened.push(unless_stopped!(
            shutdown,
            name,
            open_sink(
                registry,
                section,
                &name,
                &policy,
                pipeline.batch.max_records
            )
        )?);
    }
    let dead_letter = match pipeline.dead_letter {
        Some(_) => opened.pop().map(|(slot, _)| slot),
        None => None,
    };
    let (mut sinks, mut sink_offsets): (Vec<SinkSlot>, Vec<Option<Offsets>>) =
        opened.into_iter().unzip();

    let stored = unless_stopped!(shutdown, name, async {
        retrying!(&policy, "checkpoint store read", store.load(&name))
    })?;

    let connector = registry.source_named(&pipeline.source.connector)?;
    let mut source = connector.create_source(&pipeline.source.config)?;

    if let Store::Split(_, claim) = &store {
        if claim.imported {
            // moved from a local store: the sinks hold the split's records under the
            // pipeline's name, so holding nothing under the split's means nothing
            for offsets in sink_offsets.iter_mut() {
                if offsets.as_ref().is_some_and(Offsets::is_empty) {
                    *offsets = None;
                }
            }
        }
    }
    let (plan, notes) = {
        let covered = |split: &str, offset: &serde_json::Value| source.covered_below(split, offset);
        let replay = resume::Replay {
            in_order: source.replays_in_order(),
            covered: &covered,
        };
        resume::plan(&sink_offsets, stored.clone(), &replay)
    };
    log_resume(pipeline, &sink_offsets, &plan, &notes);
    if !plan.from.is_empty() && stored.as_ref() != Some(&plan.from) {
        // every sink holds the records up to where the run starts (a sink's offsets
        // are further on than the store's): the store says so too, so that a read
        // that finds nothing more still ends at the right position
        retrying!(&policy, "checkpoint store", store.store(&name, &plan.from))?;
        metrics.checkpointed(&plan.from);
    }
    for (slot, skip) in sinks.iter_mut().zip(plan.skips) {
        // a sink that skips gets records from where its own offsets are
        let start = skip.as_ref().map_or(&plan.from, resume::Skip::stored);
        slot.sink
            .resume(start)
            .await
            .map_err(|e| e.context(format!("sink \"{}\"", slot.name)))?;
        match skip {
            Some(resume::Skip::Count(count)) => slot.catch_up = Some(CatchUp::new(count)),
            Some(resume::Skip::Below(below)) => slot.ahead = Some(Ahead::new(below)),
            None => {}
        }
    }
    let resume = plan.from;
    let chain = Chain::new(&pipeline.transforms, pipeline.batch.max_records)?;
    // a record a query rejects goes to the dead-letter sink whole: with one, every
    // column is read
    let columns = match pipeline.errors.tolerance {
        Tolerance::None => connector
            .record_schema(&pipeline.source.config)
            .and_then(|schema| chain.columns_read(&schema)),
        Tolerance::All => None,
    };
    if let Some(columns) = &columns {
        tracing::debug!(pipeline = %name, ?columns, "the first query reads only these columns");
    }
    let ctx = SourceContext {
        pipeline: name.clone(),
        batch_size: pipeline.batch.max_records,
        idle_timeout: pipeline
            .batch
            .linger
            .max(Duration::from_millis(100))
            .min(pipeline.checkpoint.interval),
        splits,
        columns,
    };
    let splits = resume.splits();
    unless_stopped!(shutdown, name, async {
        retrying!(&policy, "source open", source.open(&ctx, &splits))
    })
    .map_err(|e| e.context("source"))?;
    tracing::info!(pipeline = %name, source = %pipeline.source.connector, resumed_splits = splits.len(), "pipeline started");
    metrics.set_progress(source.progress());
    metrics.set_state(State::Running);

    // source task
    let in_flight_kib =
        (pipeline.batch.max_in_flight.0 / 1024).clamp(1, u32::MAX as u64 >> 4) as u32;
    let budget = Arc::new(Semaphore::new(in_flight_kib as usize));
    metrics.set_in_flight(Some((budget.clone(), in_flight_kib as u64 * 1024)));
    let (tx, mut rx) = mpsc::channel::<Msg>(4);
    let (commit_tx, mut commit_rx) = mpsc::unbounded_channel::<Offsets>();
    let source_metrics = metrics.clone();
    let source_policy = policy.clone();
    let mut source_stop = stop.clone();
    let mut source_paused = paused.clone();
    let source_budget = budget.clone();
    let source_task = tokio::spawn(telemetry::scope(metrics.clone(), async move {
        let mut backoff = crate::retry::Backoff::new(&source_policy);
        'read: loop {
            while let Ok(offsets) = commit_rx.try_recv() {
                commit(&mut *source, &offsets).await;
            }
            // paused: read nothing, but still commit what the engine checkpoints (a read
            // in progress is not cancelled: it ends with data or an idle batch first)
            loop {
                let paused = *source_paused.borrow_and_update();
                if !paused {
                    break;
                }
                let committed = tokio::select! {
                    biased;
                    _ = source_stop.wait_for(|stop| *stop) => break 'read,
                    // the engine ended: nothing will resume this run
                    _ = tx.closed() => break 'read,
                    Some(offsets) = commit_rx.recv() => Some(offsets),
                    // what is waiting grows while nothing is read
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        source_metrics.set_lag(source.lag());
                        None
                    }
                    // the controller is gone: nothing will resume this run
                    r = source_paused.changed() => match r {
                        Ok(()) => None,
                        Err(_) => break 'read,
                    },
                };
                if let Some(offsets) = committed {
                    commit(&mut *source, &offsets).await;
                }
            }
            let next = tokio::select! {
                biased;
                _ = source_stop.wait_for(|stop| *stop) => break,
                // the engine ended (a sink failed): a read that waits for data must not
                // hold the run open
                _ = tx.closed() => break,
                r = source.next_batch() => r,
            };
            match next {
                Ok(Some(batch)) if batch.is_idle() => {
                    source_metrics.set_lag(source.lag());
                    continue;
                }
                Ok(Some(batch)) => {
                    backoff = crate::retry::Backoff::new(&source_policy);
                    let kib = ((batch.byte_size() / 1024) as u32).clamp(1, in_flight_kib);
                    let permit = source_budget.clone().acquire_many_owned(kib).await.ok();
                    source_metrics
                        .records_in
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    source_metrics
                        .bytes_in
                        .fetch_add(batch.byte_size() as u64, Ordering::Relaxed);
                    source_metrics.batches_in.fetch_add(1, Ordering::Relaxed);
                    source_metrics.set_progress(source.progress());
                    source_metrics.set_lag(source.lag());
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
            commit(&mut *source, &offsets).await;
        }
        if let Err(e) = source.close().await {
            tracing::warn!(error = %e, "source close failed");
        }
    }));

    let mut engine = Engine::new(
        pipeline,
        &policy,
        chain,
        sinks,
        dead_letter,
        resume,
        metrics.clone(),
    );
    let result = engine
        .drive(&mut rx, &store, &commit_tx, &stop, &mut paused)
        .await;
    drop(commit_tx);
    drop(rx);
    // a source waiting for in-flight budget the engine still holds gets none, and ends
    budget.close();
    // a source that panicked did not read to its end: never an ending
    let read = source_task
        .await
        .map_err(|e| Error::internal("the source's task failed").with_source(e));
    for slot in engine.sinks.iter_mut().chain(engine.dead_letter.iter_mut()) {
        if let Err(e) = slot.sink.close().await {
            tracing::warn!(sink = %slot.name, error = %e, "sink close failed");
        }
    }
    metrics.set_in_flight(None);
    result.and(read)
}

/// Says in the log where the run starts and why.
fn log_resume(
    pipeline: &Pipeline,
    sink_offsets: &[Option<Offsets>],
    plan: &resume::Resume,
    notes: &[resume::Note],
) {
    let name = &pipeline.name;
    if !plan.from.is_empty() {
        let with_data = sink_offsets.iter().flatten().any(|o| *o == plan.from);
        let by_position = plan
            .skips
            .iter()
            .any(|s| matches!(s, Some(resume::Skip::Below(_))));
        let whence = match (with_data, by_position) {
            (true, _) => "the offsets stored with a sink's data",
            (false, true) => "the oldest sink's offset of each split",
            (false, false) => "the checkpoint store",
        };
        tracing::info!(pipeline = %name, records = plan.from.records().unwrap_or(0), "resuming from {whence}");
    }
    let sink = |i: usize| pipeline.sinks[i].name.as_str();
    for note in notes {
        match note {
            resume::Note::Emptied(i) if plan.from.is_empty() => tracing::warn!(
                pipeline = %name,
                sink = sink(*i),
                "the sink has no stored offsets although the checkpoint store has a position: its data was removed or replaced, so the pipeline reads from the start"
            ),
            resume::Note::Emptied(i) => tracing::warn!(
                pipeline = %name,
                sink = sink(*i),
                "the sink has no stored offsets although the other sinks or the checkpoint store have a position: it is new, or its data was removed or replaced; it gets the records from where the run starts"
            ),
            resume::Note::MayRepeat(ahead) => tracing::warn!(
                pipeline = %name,
                sinks = ?ahead.iter().map(|&i| sink(i)).collect::<Vec<_>>(),
                "the sinks stored different positions, and the source does not read again in the same order: the pipeline resumes from the checkpoint, and these sinks may receive records they hold again"
            ),
        }
    }
    for (i, skip) in plan.skips.iter().enumerate() {
        match skip {
            Some(resume::Skip::Count(c)) => {
                tracing::info!(pipeline = %name, sink = sink(i), until = c.until, "the sink holds records beyond the oldest sink's position: they are read again, and not written to it again once the run is confirmed to reach the position it stored")
            }
            Some(resume::Skip::Below(b)) => {
                tracing::info!(pipeline = %name, sink = sink(i), splits = b.below.len(), "the sink holds records beyond the oldest sink's position: they are read again, and not written to it again (by their positions)")
            }
            None => {}
        }
    }
}

/// Tells the source that `offsets` are checkpointed; a failure only costs a replay.
async fn commit(source: &mut dyn connector_api::Source, offsets: &Offsets) {
    if let Err(e) = source.commit(&offsets.splits()).await {
        tracing::warn!(error = %e, "source commit failed; the checkpoint store has the position");
    }
}

async fn open_sink(
    registry: &Registry,
    section: &Section,
    pipeline: &str,
    policy: &RetryPolicy,
    batch_size: usize,
) -> Result<(SinkSlot, Option<Offsets>)> {
    let connector = registry.sink_named(&section.connector)?;
    let route = match &section.route {
        Some(predicate) => Some(SqlStage::route(&section.name, predicate, batch_size)?),
        None => None,
    };
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
            route,
            catch_up: None,
            ahead: None,
        },
        state.offsets,
    ))
}
