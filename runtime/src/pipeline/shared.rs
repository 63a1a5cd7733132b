//! Several runtimes, one pipeline: with `[checkpoint] store = "postgres"`, every
//! runtime started on the same pipeline file lists the source's splits into the
//! shared store, leases up to `splits_at_once` splits at a time and reads each to its
//! end as a run of its own, then takes the next. Two at once keep the source busy
//! while a split's sink finishes, as one run over every split does with the local
//! store. The split's run is the pipeline under the name
//! `PIPELINE.split-HASH` (of the split id), so a sink that stores offsets with its
//! data keeps them per split (and the PostgreSQL and MySQL sinks' run locks are per
//! split too).
//!
//! - A lease is renewed every third of `lease_timeout` and by each checkpoint; a
//!   runtime that stops renewing (killed, cut off) loses its splits to the others,
//!   which resume each from its last checkpoint, or from the offsets a sink stored
//!   with its data.
//! - A runtime whose lease passed on (paused past the timeout), or that could not
//!   renew it for as long as it lasts, drops the split's run without writing more,
//!   and its checkpoints are refused ([`SharedStore::store`]). Where the sink holds
//!   a run lock (PostgreSQL, MySQL), the new owner cannot write the split until the
//!   old one's run let go of it, and then reads on from what the old one stored:
//!   nothing is written twice. Other sinks may receive records of a paused run again.
//! - The pipeline ends when every split is done, unless the source's splits grow (a
//!   watched directory): then runtimes keep listing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_api::{Error, ErrorKind, Offsets, Result};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{run_on, Control};
use crate::checkpoint::{unshareable, CheckpointStore, Claim, SharedStore, Store};
use crate::config::Pipeline;
use crate::registry::Registry;
use crate::retry::{Backoff, RetryPolicy};
use crate::retrying;
use crate::telemetry::{self, PipelineMetrics, State};

mod lease;

use lease::{keep, Aborting, Lease};

/// Takes part in sharing `pipeline` until every split is done, it fails, or
/// `control.stop` turns true.
pub(super) async fn work(
    pipeline: &Pipeline,
    registry: &Registry,
    control: Control,
    metrics: Arc<PipelineMetrics>,
) -> Result<()> {
    let policy = RetryPolicy::of(pipeline);
    let url = pipeline
        .checkpoint
        .url
        .as_deref()
        .ok_or_else(|| Error::config("checkpoint.store = \"postgres\" needs checkpoint.url"))?;
    let lease = pipeline.checkpoint.lease_timeout;
    let mut stop = control.stop.clone();
    let store = unless_stopped!(stop, pipeline.name, async {
        retrying!(
            &policy,
            "checkpoint store open",
            SharedStore::connect(url, lease)
        )
    })?;
    let heart = Aborting(tokio::spawn({
        let store = store.clone();
        async move {
            loop {
                if let Err(e) = store.heartbeat().await {
                    tracing::warn!(error = %e, "heartbeat to the checkpoint store failed");
                }
                tokio::time::sleep(lease / 3).await;
            }
        }
    }));
    tracing::info!(pipeline = %pipeline.name, runtime = store.runtime(), "sharing the pipeline's splits through the checkpoint store");
    let result = async {
        import_local(pipeline, &store).await?;
        share(pipeline, registry, &control, &metrics, &store).await
    }
    .await;
    drop(heart);
    store.close().await;
    result
}

/// Moves the offsets the pipeline stored in its local file into the shared store,
/// the first time it runs with it.
async fn import_local(pipeline: &Pipeline, store: &SharedStore) -> Result<()> {
    let path = pipeline.checkpoint_path();
    if !path.exists() {
        return Ok(());
    }
    let policy = RetryPolicy::of(pipeline);
    let local = retrying!(
        &policy,
        "local checkpoint store",
        CheckpointStore::open(&path)
    )?;
    let offsets = local.load(&pipeline.name).await;
    local.close().await;
    let Some(offsets) = offsets? else {
        return Ok(());
    };
    let from = path.display().to_string();
    let took = retrying!(
        &policy,
        "checkpoint store",
        store.import(&pipeline.name, &offsets, &from)
    )?;
    if let Some(took) = took {
        tracing::info!(pipeline = %pipeline.name, splits = took, of = offsets.splits().len(), from = %from, "took the pipeline's offsets from its local checkpoint store into the shared one");
    }
    Ok(())
}

/// Lists, claims and reads splits, up to `splits_at_once` at a time, until none is
/// left (or stopped). A split whose run fails halts the others: they end at their
/// next checkpoint and give their splits back, then the failure is returned.
async fn share(
    pipeline: &Pipeline,
    registry: &Registry,
    control: &Control,
    metrics: &Arc<PipelineMetrics>,
    store: &SharedStore,
) -> Result<()> {
    let name = &pipeline.name;
    let connector = registry.source_named(&pipeline.source.connector)?;
    let width = pipeline.checkpoint.splits_at_once.max(1);
    let poll = (pipeline.checkpoint.lease_timeout / 3).min(Duration::from_secs(1));
    // the splits' runs stop when the pipeline stops, or when one of them failed
    let (halt, halted) = watch::channel(false);
    let reader = Arc::new(Reader {
        pipeline: pipeline.clone(),
        registry: registry.clone(),
        control: Control::with_pause(halted.clone(), control.paused.clone()),
        metrics: metrics.clone(),
        store: store.clone(),
    });
    let mut stop = control.stop.clone();
    let mut claims = Claims {
        pipeline,
        connector: &*connector,
        store,
        avoid: Vec::new(),
        growing: true,
        listed: None,
    };
    // each split's run is a task of its own: runs go on while the next is claimed,
    // and use both cores
    let mut reading: JoinSet<Result<Option<String>>> = JoinSet::new();
    let mut splits: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut failed: Option<Error> = None;
    loop {
        // none free now: other runtimes' splits may come free, or new ones be listed
        let mut idle = false;
        if *stop.borrow() {
            let _ = halt.send(true);
        }
        // (a claim is not cut short by a stop: a split claimed and left would wait for
        // its lease to run out)
        while !*halted.borrow() && reading.len() < width {
            match claims.next(poll).await {
                Ok(Some(claim)) => {
                    let split = claim.split.clone();
                    let task = reading.spawn(read(reader.clone(), claim));
                    splits.insert(task.id(), split);
                }
                Ok(None) => {
                    idle = true;
                    break;
                }
                Err(e) => {
                    failed = Some(e);
                    let _ = halt.send(true);
                }
            }
        }
        if reading.is_empty() {
            if let Some(e) = failed {
                return Err(e);
            }
            if *halted.borrow() {
                return Ok(());
            }
            if !claims.growing && claims.unfinished().await? == 0 {
                tracing::info!(pipeline = %name, runtime = store.runtime(), "every split of the pipeline is done");
                return Ok(());
            }
        }
        tokio::select! {
            Some(read) = reading.join_next_with_id() => {
                let read = match read {
                    Ok((id, read)) => {
                        splits.remove(&id);
                        read
                    }
                    Err(e) => {
                        let split = splits.remove(&e.id()).unwrap_or_default();
                        Err(Error::internal(format!("the task reading split \"{split}\" failed")).with_source(e))
                    }
                };
                match read {
                    Ok(Some(split)) => claims.pass(split),
                    Ok(None) => {}
                    Err(e) => {
                        let _ = halt.send(true);
                        match &failed {
                            None => failed = Some(e),
                            Some(_) => tracing::error!(pipeline = %name, error = %e, "another split failed too"),
                        }
                    }
                }
            }
            _ = tokio::time::sleep(poll), if idle => {}
            _ = stop.wait_for(|stop| *stop), if !*halted.borrow() => {
                let _ = halt.send(true);
            }
        }
    }
}

/// What every split's run of this runtime shares.
struct Reader {
    pipeline: Pipeline,
    registry: Registry,
    /// Stops the runs: the pipeline stops, or a split's run failed.
    control: Control,
    metrics: Arc<PipelineMetrics>,
    store: SharedStore,
}

/// Where the next split to read comes from: the store, listed into first.
struct Claims<'a> {
    pipeline: &'a Pipeline,
    connector: &'a dyn connector_api::DynSourceConnector,
    store: &'a SharedStore,
    /// Splits another runtime's run still holds (its sink let nobody else in), with
    /// when to try them again.
    avoid: Vec<(String, Instant)>,
    /// The source's splits may grow (a watched directory): listed again at every poll.
    growing: bool,
    /// When the splits were last listed.
    listed: Option<Instant>,
}

impl Claims<'_> {
    /// Claims a free split, after listing the source's splits if they are due; None
    /// when no split is free.
    async fn next(&mut self, poll: Duration) -> Result<Option<Claim>> {
        let policy = RetryPolicy::of(self.pipeline);
        if self.growing && self.listed.is_none_or(|at| at.elapsed() >= poll) {
            self.growing = list(self.pipeline, self.connector, self.store).await?;
            self.listed = Some(Instant::now());
        }
        self.avoid.retain(|(_, until)| *until > Instant::now());
        let passed: Vec<String> = self.avoid.iter().map(|(s, _)| s.clone()).collect();
        retrying!(
            &policy,
            "checkpoint store",
            self.store.claim(&self.pipeline.name, &passed)
        )
    }

    /// Tries `split` again only once its lease would have run out.
    fn pass(&mut self, split: String) {
        let until = Instant::now() + self.pipeline.checkpoint.lease_timeout;
        self.avoid.push((split, until));
    }

    /// How many of the pipeline's splits are not done.
    async fn unfinished(&self) -> Result<u64> {
        let policy = RetryPolicy::of(self.pipeline);
        retrying!(
            &policy,
            "checkpoint store",
            self.store.unfinished(&self.pipeline.name)
        )
    }
}

/// Lists the source's splits into the store; true when more may come.
async fn list(
    pipeline: &Pipeline,
    connector: &dyn connector_api::DynSourceConnector,
    store: &SharedStore,
) -> Result<bool> {
    let policy = RetryPolicy::of(pipeline);
    let listed = retrying!(
        &policy,
        "list the source's splits",
        connector.splits(&pipeline.source.config)
    )
    .map_err(|e| e.context("source"))?
    .ok_or_else(|| unshareable(&pipeline.source.connector))?;
    if listed.splits.is_empty()
        && !listed.growing
        && !retrying!(&policy, "checkpoint store", store.knows(&pipeline.name))?
    {
        return Err(Error::not_found(format!(
            "source \"{}\" lists nothing to read (for files: nothing matches the path)",
            pipeline.source.connector
        )));
    }
    retrying!(
        &policy,
        "checkpoint store",
        store.add_splits(&pipeline.name, &listed)
    )?;
    Ok(listed.growing)
}

/// The name a split's run goes by: the pipeline's, and a hash of the split id, so
/// that it is a pipeline name as every sink takes one (in file names, client ids),
/// whatever characters the split id has. Sinks key the offsets they store by it.
fn run_name(pipeline: &str, split: &str) -> String {
    format!(
        "{pipeline}.split-{:016x}",
        connector_api::stable_hash(split.as_bytes())
    )
}

/// Reads the split of `claim` to its end, as its own run, while the lease holds.
/// Some(split) when another runtime's run still held it, or took it: try it later.
async fn read(reader: Arc<Reader>, claim: Claim) -> Result<Option<String>> {
    let Reader {
        pipeline,
        registry,
        control,
        metrics,
        store,
    } = &*reader;
    let name = &pipeline.name;
    let split = claim.split.clone();
    let part = Pipeline {
        name: run_name(name, &split),
        ..pipeline.clone()
    };
    match &claim.from {
        Some(from) => {
            tracing::warn!(pipeline = %name, split = %split, from = %from, epoch = claim.epoch, "taking the split over: the runtime that held it did not renew its lease")
        }
        None => {
            tracing::info!(pipeline = %name, split = %split, epoch = claim.epoch, run = %part.name, "reading split")
        }
    }
    let lease = Arc::new(Lease::default());
    // the split's run stops when the pipeline stops; it is dropped, nothing more
    // written, when the lease is lost
    let (stop_tx, stop) = watch::channel(false);
    let (lost_tx, mut lost) = watch::channel(false);
    let keeper = Aborting(tokio::spawn(keep(
        store.clone(),
        claim.clone(),
        pipeline.checkpoint.lease_timeout,
        control.stop.clone(),
        lease.clone(),
        (stop_tx, lost_tx),
    )));
    let policy = RetryPolicy::of(pipeline);
    let mut backoff = Backoff::new(&policy);
    let mut attempt = 0;
    // the split's checkpoint at the last failure
    let mut failed_at: Option<Option<Offsets>> = None;
    let result = loop {
        // a run that waited for a restart first checks the lease (the claim is new)
        attempt += 1;
        let held = match attempt {
            1 => Ok(true),
            _ => retrying!(&policy, "checkpoint store", store.renew(&claim)),
        };
        match held {
            Ok(true) => {}
            Ok(false) => {
                lease.lost.store(true, Ordering::SeqCst);
                break Ok(());
            }
            Err(e) => break Err(e),
        }
        let run = run_on(
            &part,
            registry,
            Control::with_pause(stop.clone(), control.paused.clone()),
            metrics.clone(),
            Store::Split(store.clone(), claim.clone()),
            Some(vec![split.clone()]),
        );
        let result = tokio::select! {
            biased;
            // (a keeper that ended without a loss closed the channel: not a loss)
            _ = async {
                if lost.wait_for(|lost| *lost).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => break Ok(()),
            r = telemetry::scope(metrics.clone(), run) => r,
        };
        match result {
            Err(e) if e.is_restartable() && !*stop.borrow() => {
                // (a store that does not answer tells nothing either way)
                if let Ok(at) = store.load(&claim).await {
                    if failed_at.as_ref().is_some_and(|last| *last != at) {
                        // it got on: a new failure starts a new count
                        backoff = Backoff::new(&policy);
                    }
                    failed_at = Some(at);
                }
                let Some(delay) = backoff.next_delay() else {
                    break Err(e);
                };
                tracing::warn!(pipeline = %name, split = %split, error = %e, delay_ms = delay.as_millis() as u64, "the split's run failed; restarting it from its last checkpoint");
                metrics.restarts.fetch_add(1, Ordering::Relaxed);
                metrics.set_state(State::Retrying);
                let mut stopped = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = async { drop(stopped.wait_for(|stop| *stop).await) } => break Ok(()),
                }
            }
            other => break other,
        }
    };
    drop(keeper);
    if lease.lost.load(Ordering::SeqCst) {
        tracing::warn!(pipeline = %name, split = %split, "the lease on the split passed to another runtime: this runtime stopped reading it");
        return Ok(Some(split));
    }
    match result {
        Ok(()) if lease.halted.load(Ordering::SeqCst) || *control.stop.borrow() => {
            // the lease runs out by itself if the store is away
            if let Err(e) = store.release(&claim, "stopped").await {
                tracing::warn!(pipeline = %name, split = %split, error = %e, "could not give the split back; it is free again once its lease runs out");
            }
            Ok(None)
        }
        Ok(()) => {
            if !retrying!(&policy, "checkpoint store", store.finish(&claim))? {
                tracing::warn!(pipeline = %name, split = %split, "the split was read to its end, but its lease had passed to another runtime, which reads on from the last checkpoint");
            }
            Ok(None)
        }
        Err(e) if e.kind() == ErrorKind::Conflict => {
            // the lease passed on, or the sink is still held by the split's last owner
            tracing::warn!(pipeline = %name, split = %split, error = %e, "the split is held elsewhere; trying other splits first");
            retrying!(
                &policy,
                "checkpoint store",
                store.release(&claim, "held elsewhere")
            )?;
            Ok(Some(split))
        }
        Err(e) => {
            let _ = store.release(&claim, "failed").await;
            Err(e.context(format!("split \"{split}\"")))
        }
    }
}
