//! Several runtimes, one pipeline: with `[checkpoint] store = "postgres"`, every
//! runtime started on the same pipeline file lists the source's splits into the
//! shared store, leases one split at a time and reads it to its end as a run of its
//! own, then takes the next. The split's run is the pipeline under the name
//! `PIPELINE/SPLIT`, so a sink that stores offsets with its data keeps them per split
//! (and the PostgreSQL sink's run lock is per split too).
//!
//! - A lease is renewed every third of `lease_timeout` and by each checkpoint; a
//!   runtime that stops renewing (killed, cut off) loses its splits to the others,
//!   which resume each from its last checkpoint, or from the offsets a sink stored
//!   with its data.
//! - A runtime whose lease passed on (paused past the timeout) stops reading the
//!   split, and its next checkpoint is refused ([`SharedStore::store`]). Where the
//!   sink stores offsets with its data, the new owner cannot write the split until
//!   the old one's run let go of it (the PostgreSQL sink's lock), and then reads on
//!   from what the old one stored: nothing is written twice.
//! - The pipeline ends when every split is done, unless the source's splits grow (a
//!   watched directory): then runtimes keep listing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_api::{Error, ErrorKind, Result};
use tokio::sync::watch;

use super::{run_on, Control};
use crate::checkpoint::{CheckpointStore, Claim, SharedStore, Store};
use crate::config::Pipeline;
use crate::registry::Registry;
use crate::retry::{Backoff, RetryPolicy};
use crate::retrying;
use crate::telemetry::{self, PipelineMetrics, State};

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
    let store = tokio::select! {
        r = async { retrying!(&policy, "checkpoint store open", SharedStore::connect(url, lease)) } => r?,
        _ = stop.wait_for(|stop| *stop) => return Ok(()),
    };
    let heart = tokio::spawn({
        let store = store.clone();
        async move {
            loop {
                if let Err(e) = store.heartbeat().await {
                    tracing::warn!(error = %e, "heartbeat to the checkpoint store failed");
                }
                tokio::time::sleep(lease / 3).await;
            }
        }
    });
    tracing::info!(pipeline = %pipeline.name, runtime = store.runtime(), "sharing the pipeline's splits through the checkpoint store");
    let result = async {
        import_local(pipeline, &store).await?;
        share(pipeline, registry, &control, &metrics, &store).await
    }
    .await;
    heart.abort();
    store.close().await;
    result
}

/// Moves the offsets the pipeline stored in its local file into the shared store,
/// the first time it runs with it.
async fn import_local(pipeline: &Pipeline, store: &SharedStore) -> Result<()> {
    let path = pipeline.checkpoint_path();
    if !path.exists() || store.knows(&pipeline.name).await? {
        return Ok(());
    }
    let local = CheckpointStore::open(&path).await?;
    let offsets = local.load(&pipeline.name).await;
    local.close().await;
    if let Some(offsets) = offsets? {
        if store.import(&pipeline.name, &offsets).await? {
            tracing::info!(pipeline = %pipeline.name, splits = offsets.splits().len(), from = %path.display(), "took the pipeline's offsets from its local checkpoint store into the shared one");
        }
    }
    Ok(())
}

/// Lists, claims and reads splits until none is left (or stopped).
async fn share(
    pipeline: &Pipeline,
    registry: &Registry,
    control: &Control,
    metrics: &Arc<PipelineMetrics>,
    store: &SharedStore,
) -> Result<()> {
    let policy = RetryPolicy::of(pipeline);
    let name = &pipeline.name;
    let connector = registry.source(&pipeline.source.connector).ok_or_else(|| {
        Error::config(format!(
            "unknown connector \"{}\"",
            pipeline.source.connector
        ))
    })?;
    let poll = (pipeline.checkpoint.lease_timeout / 3).min(Duration::from_secs(1));
    // splits another runtime's run still holds (its sink let nobody else in), with
    // when to try them again
    let mut avoid: Vec<(String, Instant)> = Vec::new();
    let mut stop = control.stop.clone();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let listed = retrying!(
            &policy,
            "list the source's splits",
            connector.splits(&pipeline.source.config)
        )
        .map_err(|e| e.context("source"))?
        .ok_or_else(|| {
            Error::config(format!(
                "source connector \"{}\" cannot divide its work between runtimes; use the default [checkpoint] store = \"sqlite\" (one runtime per pipeline)",
                pipeline.source.connector
            ))
        })?;
        if listed.ids.is_empty() && !listed.growing && !store.knows(name).await? {
            return Err(Error::not_found(format!(
                "source \"{}\" lists nothing to read (for files: nothing matches the path)",
                pipeline.source.connector
            )));
        }
        retrying!(
            &policy,
            "checkpoint store",
            store.add_splits(name, &listed.ids)
        )?;
        avoid.retain(|(_, until)| *until > Instant::now());
        let passed: Vec<String> = avoid.iter().map(|(s, _)| s.clone()).collect();
        match retrying!(&policy, "checkpoint store", store.claim(name, &passed))? {
            Some(claim) => {
                if let Some(split) =
                    read(pipeline, registry, control, metrics, store, claim).await?
                {
                    avoid.push((split, Instant::now() + pipeline.checkpoint.lease_timeout));
                }
            }
            None => {
                if !listed.growing
                    && retrying!(&policy, "checkpoint store", store.unfinished(name))? == 0
                {
                    tracing::info!(pipeline = %name, runtime = store.runtime(), "every split of the pipeline is done");
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.wait_for(|stop| *stop) => return Ok(()),
                }
            }
        }
    }
}

/// Reads the split of `claim` to its end, as its own run, while the lease holds.
/// Some(split) when another runtime's run still held it: try it later.
async fn read(
    pipeline: &Pipeline,
    registry: &Registry,
    control: &Control,
    metrics: &Arc<PipelineMetrics>,
    store: &SharedStore,
    claim: Claim,
) -> Result<Option<String>> {
    let name = &pipeline.name;
    let split = claim.split.clone();
    match &claim.from {
        Some(from) => {
            tracing::warn!(pipeline = %name, split = %split, from = %from, epoch = claim.epoch, "taking the split over: the runtime that held it did not renew its lease")
        }
        None => {
            tracing::info!(pipeline = %name, split = %split, epoch = claim.epoch, "reading split")
        }
    }
    let part = Pipeline {
        name: format!("{name}/{split}"),
        ..pipeline.clone()
    };
    // the split's run stops when the pipeline stops or the lease passes on
    let (stop_tx, stop) = watch::channel(false);
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = tokio::spawn({
        let (store, claim, lost) = (store.clone(), claim.clone(), lost.clone());
        let mut parent = control.stop.clone();
        let every = pipeline.checkpoint.lease_timeout / 3;
        async move {
            loop {
                tokio::select! {
                    _ = async { drop(parent.wait_for(|stop| *stop).await) } => break,
                    _ = tokio::time::sleep(every) => match store.renew(&claim).await {
                        Ok(true) => continue,
                        Ok(false) => {
                            tracing::warn!(split = %claim.split, "the lease on the split passed to another runtime: this runtime stops reading it");
                            lost.store(true, Ordering::SeqCst);
                            break;
                        }
                        // the database is away: the checkpoints wait for it too
                        Err(e) => tracing::warn!(split = %claim.split, error = %e, "lease renewal failed"),
                    },
                }
            }
            let _ = stop_tx.send(true);
        }
    });
    let policy = RetryPolicy::of(pipeline);
    let mut backoff = Backoff::new(&policy);
    let result = loop {
        let control = Control::with_pause(stop.clone(), control.paused.clone());
        let store = Store::Split(store.clone(), claim.clone());
        let run = run_on(
            &part,
            registry,
            control,
            metrics.clone(),
            store,
            Some(vec![split.clone()]),
        );
        let result = telemetry::scope(metrics.clone(), run).await;
        match result {
            Err(e) if e.is_restartable() && !*stop.borrow() => {
                let Some(delay) = backoff.next_delay() else {
                    break Err(e);
                };
                tracing::warn!(pipeline = %name, split = %split, error = %e, delay_ms = delay.as_millis() as u64, "the split's run failed; restarting it from its last checkpoint");
                metrics.set_state(State::Retrying);
                tokio::time::sleep(delay).await;
            }
            other => break other,
        }
    };
    keeper.abort();
    let lost = lost.load(Ordering::SeqCst);
    let stopped = *control.stop.borrow();
    match result {
        Ok(()) if lost => Ok(None),
        Ok(()) if stopped => {
            retrying!(
                &policy,
                "checkpoint store",
                store.release(&claim, "stopped")
            )?;
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
