//! Progress while a pipeline runs and the summary at its end.
//!
//! On a terminal, a bar per pipeline (indicatif): percentage, rate and ETA when the
//! source knows its total (datagen's `count`, the bytes of the files or S3 objects a
//! glob matched),
//! else a spinner with counts and rate. Log lines are written above the bars
//! ([`LogWriter`]), and a finished bar stays on screen. Elsewhere (a file, a pipe), a
//! log line every 10 s.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use connector_api::ProgressUnit;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::telemetry::PipelineMetrics;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// The log writer: stderr, with the progress bars (if any) lifted while a line is
/// written, so that a log line never lands inside a bar.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A running progress display; [`Reporter::finish`] ends it.
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<(ProgressBar, Arc<PipelineMetrics>)>,
}

impl Reporter {
    /// Stops updating; a bar is drawn one last time and stays on screen, and what is
    /// printed next starts on the line below it.
    pub fn finish(self) {
        self.task.abort();
        if let Some((bar, m)) = self.bar {
            draw(&bar, &m, &mut None);
            bar.abandon();
            bars().remove(&bar);
            eprintln!();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Updates `bar` from `m`; `unit` is the unit the bar's style shows (None: a spinner).
fn draw(bar: &ProgressBar, m: &PipelineMetrics, unit: &mut Option<ProgressUnit>) {
    let out = m.records_out.load(Ordering::Relaxed);
    let secs = m.uptime().as_secs_f64().max(1e-9);
    match m.progress() {
        Some(p) => {
            if *unit != Some(p.unit) {
                *unit = Some(p.unit);
                bar.set_style(style(match p.unit {
                    ProgressUnit::Records => {
                        "{prefix} [{bar:30}] {percent:>3}% {human_pos}/{human_len} records, {msg}, eta {eta}"
                    }
                    ProgressUnit::Bytes => {
                        "{prefix} [{bar:30}] {percent:>3}% {bytes}/{total_bytes}, {msg}, eta {eta}"
                    }
                }));
            }
            bar.set_length(p.total.max(p.done));
            bar.set_position(p.done);
            let read = m.records_in.load(Ordering::Relaxed) as f64;
            bar.set_message(match p.unit {
                ProgressUnit::Records => format!("{:.0} records/s", read / secs),
                ProgressUnit::Bytes => {
                    format!("{out} records written, {:.0} records/s", read / secs)
                }
            });
        }
        None => {
            if unit.take().is_some() || bar.length().is_some() {
                bar.set_style(style("{prefix} {spinner} {msg}"));
            }
            bar.set_message(format!(
                "{out} records written, {} read, {} rejected, {:.0} records/s, {:.1}s",
                m.records_in.load(Ordering::Relaxed),
                m.rejected.load(Ordering::Relaxed),
                out as f64 / secs,
                secs
            ));
            bar.tick();
        }
    }
}

/// Reports the progress of `m` until [`Reporter::finish`]: a bar on a terminal (when
/// `terminal`: the human log format), a log line every 10 s otherwise.
pub fn spawn(name: String, m: Arc<PipelineMetrics>, terminal: bool) -> Reporter {
    if terminal && std::io::stderr().is_terminal() {
        let bar = bars().add(ProgressBar::new_spinner());
        bar.set_style(style("{prefix} {spinner} {msg}"));
        bar.set_prefix(name);
        let (shown, metrics) = (bar.clone(), m.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut unit = None;
            loop {
                tick.tick().await;
                draw(&shown, &metrics, &mut unit);
            }
        });
        return Reporter {
            task,
            bar: Some((bar, m)),
        };
    }
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            let secs = m.uptime().as_secs_f64().max(1e-9);
            let out = m.records_out.load(Ordering::Relaxed);
            let percent = m
                .progress()
                .filter(|p| p.total > 0)
                .map(|p| (p.done as f64 * 100.0 / p.total as f64).min(100.0));
            tracing::info!(
                pipeline = %name,
                records_out = out,
                records_in = m.records_in.load(Ordering::Relaxed),
                rejected = m.rejected.load(Ordering::Relaxed),
                records_per_sec = (out as f64 / secs) as u64,
                percent = percent.map(|p| format!("{p:.1}")),
                "progress"
            );
        }
    });
    Reporter { task, bar: None }
}

/// The one-line summary printed when a pipeline ends.
pub fn summary(name: &str, stats: &PipelineMetrics) -> String {
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
