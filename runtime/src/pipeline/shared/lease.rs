//! A split's lease while its run reads it: renewed by a task of its own, which
//! stops the run when the pipeline stops and drops it when the lease is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::checkpoint::{Claim, SharedStore};

/// How the lease on a split being read ended up.
#[derive(Default)]
pub(super) struct Lease {
    /// It passed to another runtime, or this one lost touch with the store for
    /// longer than it lasts.
    pub(super) lost: AtomicBool,
    /// The run was told to stop (the pipeline stops, or the lease is lost): it did
    /// not read the split to its end.
    pub(super) halted: AtomicBool,
}

/// Aborts its task when dropped: a split's run dropped midway (its runtime failed)
/// leaves no keeper renewing the lease.
pub(super) struct Aborting(pub(super) tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease of `claim` every third of `timeout` until it is aborted (when the
/// split's run ended) or the lease is lost. When the pipeline stops it stops the
/// split's run (`stop`) and goes on renewing while the run drains; on a loss it drops
/// the run (`lost`). A lease that could not be renewed for as long as it lasts (the
/// database is away, or silent) counts as lost: another runtime may have it by now.
pub(super) async fn keep(
    store: SharedStore,
    claim: Claim,
    timeout: Duration,
    mut parent: watch::Receiver<bool>,
    lease: Arc<Lease>,
    (stop, lost): (watch::Sender<bool>, watch::Sender<bool>),
) {
    let every = timeout / 3;
    let mut renewed = Instant::now();
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = async { drop(parent.wait_for(|stop| *stop).await) }, if !stopping => {
                stopping = true;
                lease.halted.store(true, Ordering::SeqCst);
                let _ = stop.send(true);
            }
            _ = tokio::time::sleep(every) => {
                let left = timeout.saturating_sub(renewed.elapsed());
                let renewal = tokio::time::timeout(left, store.renew(&claim)).await;
                match renewal {
                    Ok(Ok(true)) => renewed = Instant::now(),
                    Ok(Ok(false)) => break,
                    Ok(Err(_)) | Err(_) if renewed.elapsed() + every >= timeout => {
                        tracing::warn!(split = %claim.split, "the lease could not be renewed for as long as it lasts: this runtime stops reading the split");
                        break;
                    }
                    Ok(Err(e)) => tracing::warn!(split = %claim.split, error = %e, "lease renewal failed"),
                    Err(_) => tracing::warn!(split = %claim.split, "lease renewal timed out"),
                }
            }
        }
    }
    // lost: the run is dropped first, so it writes nothing more
    lease.lost.store(true, Ordering::SeqCst);
    lease.halted.store(true, Ordering::SeqCst);
    let _ = lost.send(true);
    let _ = stop.send(true);
}
