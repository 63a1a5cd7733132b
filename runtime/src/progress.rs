//! Progress while a pipeline runs and the summary at its end.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::PipelineMetrics as Stats;

/// Reports progress of `stats` until the task is aborted: a redrawn line on a
/// terminal, a log line every 10 s otherwise.
pub fn spawn(name: String, stats: Arc<Stats>, terminal: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = terminal && std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let secs = stats.uptime().as_secs_f64().max(1e-9);
            let out = stats.records_out.load(Ordering::Relaxed);
            let rate = out as f64 / secs;
            if tty {
                let mut err = std::io::stderr();
                let _ = write!(
                    err,
                    "\r{name}: {out} records written, {} read, {} rejected, {:.0} records/s, {:.1}s ",
                    stats.records_in.load(Ordering::Relaxed),
                    stats.rejected.load(Ordering::Relaxed),
                    rate,
                    secs
                );
                let _ = err.flush();
            } else {
                tracing::info!(
                    pipeline = %name,
                    records_out = out,
                    records_in = stats.records_in.load(Ordering::Relaxed),
                    rejected = stats.rejected.load(Ordering::Relaxed),
                    records_per_sec = rate as u64,
                    "progress"
                );
            }
        }
    })
}

/// Ends the redrawn progress line, so the next line does not overwrite it.
pub fn end_line(terminal: bool) {
    if terminal && std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// The one-line summary printed when a pipeline ends.
pub fn summary(name: &str, stats: &Stats) -> String {
    let secs = stats.uptime().as_secs_f64();
    let records = stats.records_out.load(Ordering::Relaxed);
    let bytes = stats.bytes_out.load(Ordering::Relaxed);
    format!(
        "{name}: {records} records, {:.2} MB, {:.2} s, {:.0} records/s, {} rejected, {} checkpoints",
        bytes as f64 / 1e6,
        secs,
        records as f64 / secs.max(1e-9),
        stats.rejected.load(Ordering::Relaxed),
        stats.checkpoints.load(Ordering::Relaxed)
    )
}
