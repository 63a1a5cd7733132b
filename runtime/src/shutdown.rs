//! SIGINT/SIGTERM: the first stops the sources (pipelines drain, flush, checkpoint and
//! exit 0); a second exits at once.

use tokio::sync::watch;

/// Exit code after a second signal.
pub const FORCED_EXIT: i32 = 130;

/// Installs the handlers; the receiver turns true on the first signal.
pub fn install() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        let mut first = true;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            if first {
                tracing::info!(
                    "stopping: draining, flushing and checkpointing (signal again to exit at once)"
                );
                let _ = tx.send(true);
                first = false;
            } else {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(FORCED_EXIT);
            }
        }
    });
    rx
}
