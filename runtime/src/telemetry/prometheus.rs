//! The Prometheus text exposition format (version 0.0.4) of a [`Telemetry`]: `_total`
//! counters, base units (seconds, bytes), labels `pipeline` and `connector` / `sink`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `sluice_source_records_total`, `sluice_source_bytes_total`, `sluice_source_batches_total` | counter | pipeline, connector |
//! | `sluice_sink_records_total`, `sluice_sink_bytes_total`, `sluice_sink_batches_total`, `sluice_sink_flushes_total` | counter | pipeline, sink, connector |
//! | `sluice_sink_flush_duration_seconds` | histogram | pipeline, sink, connector |
//! | `sluice_pipeline_records_total` (written, each record once), `sluice_pipeline_bytes_total` | counter | pipeline |
//! | `sluice_rejected_records_total`, `sluice_dead_letter_records_total` | counter | pipeline |
//! | `sluice_checkpoints_total` | counter | pipeline |
//! | `sluice_last_checkpoint_timestamp_seconds`, `sluice_checkpoint_age_seconds` | gauge | pipeline |
//! | `sluice_retries_total` | counter | pipeline, kind |
//! | `sluice_pipeline_restarts_total` | counter | pipeline |
//! | `sluice_pipeline_state` (1 for the current state) | gauge | pipeline, state |
//! | `sluice_in_flight_bytes`, `sluice_in_flight_limit_bytes` | gauge | pipeline |
//! | `sluice_source_lag_records` (a Kafka partition: offsets not read yet), `sluice_source_lag_bytes` (PostgreSQL CDC: WAL not read yet; files and objects: their unread bytes), `sluice_source_lag_seconds` (age of the input at the read position), `sluice_source_lag_files` (files or objects found and not read to their end) | gauge | pipeline, connector, split |
//! | `sluice_source_remaining` (records or bytes of a bounded read not read yet), `sluice_source_progress_ratio` | gauge | pipeline, connector, unit |
//! | `sluice_uptime_seconds` | gauge | |

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{State, Telemetry, FLUSH_BUCKETS};

/// Escapes a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `# HELP` and `# TYPE` once, then one sample per `(labels, value)`.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        if value.is_infinite() {
            self.out
                .push_str(if value > 0.0 { " +Inf" } else { " -Inf" });
        } else {
            let _ = write!(self.out, " {value}");
        }
        self.out.push('\n');
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Renders every metric family of `telemetry`.
pub fn render(telemetry: &Telemetry) -> String {
    let pipelines = telemetry.all();
    let mut out = String::with_capacity(4096 + pipelines.len() * 4096);
    let mut f = Family { out: &mut out };

    f.head(
        "sluice_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    );
    f.sample(
        "sluice_uptime_seconds",
        &[],
        telemetry.started.elapsed().as_secs_f64(),
    );

    type Counter = fn(&super::PipelineMetrics) -> u64;
    let source: [(&str, &str, Counter); 3] = [
        (
            "sluice_source_records_total",
            "Records read from the source.",
            |m| m.records_in.load(Ordering::Relaxed),
        ),
        (
            "sluice_source_bytes_total",
            "Arrow bytes of the records read from the source.",
            |m| m.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "sluice_source_batches_total",
            "Batches read from the source.",
            |m| m.batches_in.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in source {
        f.head(name, "counter", help);
        for m in &pipelines {
            let labels = [
                ("pipeline", m.name.as_str()),
                ("connector", m.source.as_str()),
            ];
            f.sample(name, &labels, get(m) as f64);
        }
    }

    type SinkCounter = fn(&super::SinkMetrics) -> u64;
    let sink: [(&str, &str, SinkCounter); 4] = [
        (
            "sluice_sink_records_total",
            "Records written to the sink.",
            |s| s.records.load(Ordering::Relaxed),
        ),
        (
            "sluice_sink_bytes_total",
            "Arrow bytes of the records written to the sink.",
            |s| s.bytes.load(Ordering::Relaxed),
        ),
        (
            "sluice_sink_batches_total",
            "Batches written to the sink.",
            |s| s.batches.load(Ordering::Relaxed),
        ),
        (
            "sluice_sink_flushes_total",
            "Flushes the sink completed (each makes everything written before it durable).",
            |s| s.flushes.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in sink {
        f.head(name, "counter", help);
        for m in &pipelines {
            for s in &m.sinks {
                let labels = [
                    ("pipeline", m.name.as_str()),
                    ("sink", s.name.as_str()),
                    ("connector", s.connector.as_str()),
                ];
                f.sample(name, &labels, get(s) as f64);
            }
        }
    }

    let name = "sluice_sink_flush_duration_seconds";
    f.head(name, "histogram", "How long the sink's flushes took.");
    for m in &pipelines {
        for s in &m.sinks {
            let (buckets, sum, count) = s.flush_seconds.snapshot();
            for (bound, n) in FLUSH_BUCKETS.iter().zip(&buckets) {
                let le = bound.to_string();
                let labels = [
                    ("pipeline", m.name.as_str()),
                    ("sink", s.name.as_str()),
                    ("connector", s.connector.as_str()),
                    ("le", le.as_str()),
                ];
                f.sample(&format!("{name}_bucket"), &labels, *n as f64);
            }
            let base = [
                ("pipeline", m.name.as_str()),
                ("sink", s.name.as_str()),
                ("connector", s.connector.as_str()),
            ];
            let inf = [base[0], base[1], base[2], ("le", "+Inf")];
            f.sample(&format!("{name}_bucket"), &inf, count as f64);
            f.sample(&format!("{name}_sum"), &base, sum);
            f.sample(&format!("{name}_count"), &base, count as f64);
        }
    }

    let per_pipeline: [(&str, &str, Counter); 6] = [
        (
            "sluice_pipeline_records_total",
            "Records written to the pipeline's sinks, each record once.",
            |m| m.records_out.load(Ordering::Relaxed),
        ),
        (
            "sluice_pipeline_bytes_total",
            "Arrow bytes of the records written, each record once.",
            |m| m.bytes_out.load(Ordering::Relaxed),
        ),
        (
            "sluice_rejected_records_total",
            "Records the source could not decode.",
            |m| m.rejected.load(Ordering::Relaxed),
        ),
        (
            "sluice_dead_letter_records_total",
            "Rejected records written to the dead-letter sink.",
            |m| m.dead_lettered.load(Ordering::Relaxed),
        ),
        (
            "sluice_checkpoints_total",
            "Checkpoints stored (every sink flushed, offsets stored).",
            |m| m.checkpoints.load(Ordering::Relaxed),
        ),
        (
            "sluice_pipeline_restarts_total",
            "Restarts of the pipeline from its checkpoint after a failure.",
            |m| m.restarts.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in per_pipeline {
        f.head(name, "counter", help);
        for m in &pipelines {
            f.sample(name, &[("pipeline", m.name.as_str())], get(m) as f64);
        }
    }

    let now = SystemTime::now();
    let checkpoints: Vec<_> = pipelines
        .iter()
        .filter_map(|m| m.last_checkpoint().map(|(at, _)| (m, at)))
        .collect();
    let name = "sluice_last_checkpoint_timestamp_seconds";
    f.head(
        name,
        "gauge",
        "When the last checkpoint was stored (Unix time).",
    );
    for (m, at) in &checkpoints {
        f.sample(name, &[("pipeline", m.name.as_str())], unix_seconds(*at));
    }
    let name = "sluice_checkpoint_age_seconds";
    f.head(
        name,
        "gauge",
        "Seconds since the last checkpoint was stored.",
    );
    for (m, at) in &checkpoints {
        let age = now.duration_since(*at).unwrap_or_default().as_secs_f64();
        f.sample(name, &[("pipeline", m.name.as_str())], age);
    }

    let name = "sluice_retries_total";
    f.head(
        name,
        "counter",
        "Operations retried after an error, by error kind.",
    );
    for m in &pipelines {
        for (kind, n) in m.retries() {
            f.sample(
                name,
                &[("pipeline", m.name.as_str()), ("kind", kind.as_str())],
                n as f64,
            );
        }
    }

    let name = "sluice_pipeline_state";
    f.head(
        name,
        "gauge",
        "1 for the pipeline's current state, 0 for the others.",
    );
    for m in &pipelines {
        let current = m.state();
        for s in State::ALL {
            let v = if s == current { 1.0 } else { 0.0 };
            f.sample(
                name,
                &[("pipeline", m.name.as_str()), ("state", s.name())],
                v,
            );
        }
    }

    let progress: Vec<_> = pipelines
        .iter()
        .filter_map(|m| m.progress().map(|p| (m, p)))
        .collect();
    let name = "sluice_source_remaining";
    f.head(
        name,
        "gauge",
        "What a bounded read has still to read, in records or bytes (unit label).",
    );
    for (m, p) in &progress {
        let labels = [
            ("pipeline", m.name.as_str()),
            ("connector", m.source.as_str()),
            ("unit", p.unit.as_str()),
        ];
        f.sample(name, &labels, p.total.saturating_sub(p.done) as f64);
    }
    let name = "sluice_source_progress_ratio";
    f.head(name, "gauge", "Share of a bounded read done, from 0 to 1.");
    for (m, p) in &progress {
        let labels = [
            ("pipeline", m.name.as_str()),
            ("connector", m.source.as_str()),
            ("unit", p.unit.as_str()),
        ];
        let ratio = if p.total == 0 {
            1.0
        } else {
            (p.done as f64 / p.total as f64).min(1.0)
        };
        f.sample(name, &labels, ratio);
    }

    let lags: Vec<(&super::PipelineMetrics, connector_api::Lag)> = pipelines
        .iter()
        .flat_map(|m| m.lag().into_iter().map(move |l| (m.as_ref(), l)))
        .collect();
    type Measure = fn(&connector_api::Lag) -> Option<f64>;
    let measures: [(&str, &str, Measure); 4] = [
        (
            "sluice_source_lag_records",
            "How far a split of the source is behind the end of its input (Kafka: offsets).",
            |l| l.records.map(|r| r as f64),
        ),
        (
            "sluice_source_lag_bytes",
            "Bytes of a split's input not read yet (PostgreSQL CDC: WAL; files and objects).",
            |l| l.bytes.map(|b| b as f64),
        ),
        (
            "sluice_source_lag_seconds",
            "How old the input at a split's read position is (0 when caught up).",
            |l| l.seconds,
        ),
        (
            "sluice_source_lag_files",
            "Files or objects found and not read to their end.",
            |l| l.files.map(|n| n as f64),
        ),
    ];
    for (name, help, value) in measures {
        f.head(name, "gauge", help);
        for (m, lag) in &lags {
            if let Some(v) = value(lag) {
                let labels = [
                    ("pipeline", m.name.as_str()),
                    ("connector", m.source.as_str()),
                    ("split", lag.split.as_str()),
                ];
                f.sample(name, &labels, v);
            }
        }
    }

    let flights: Vec<_> = pipelines
        .iter()
        .filter_map(|m| m.in_flight().map(|x| (m, x)))
        .collect();
    let name = "sluice_in_flight_bytes";
    f.head(
        name,
        "gauge",
        "Bytes read from the source and not yet written to the sinks.",
    );
    for (m, (used, _)) in &flights {
        f.sample(name, &[("pipeline", m.name.as_str())], *used as f64);
    }
    let name = "sluice_in_flight_limit_bytes";
    f.head(name, "gauge", "The in-flight limit (batch.max_in_flight).");
    for (m, (_, limit)) in &flights {
        f.sample(name, &[("pipeline", m.name.as_str())], *limit as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::telemetry::PipelineMetrics;

    #[test]
    fn labels_are_escaped_and_every_family_has_help_and_type() {
        let t = Telemetry::default();
        let m = PipelineMetrics::new(
            "a\"b\\c",
            PathBuf::from("x.toml"),
            "file",
            &[("sink".into(), "sqlite".into())],
        );
        m.records_out.store(7, Ordering::Relaxed);
        m.sinks[0]
            .flush_seconds
            .observe(std::time::Duration::from_millis(3));
        t.insert(Arc::new(m));
        let text = render(&t);
        assert!(
            text.contains("sluice_pipeline_records_total{pipeline=\"a\\\"b\\\\c\"} 7"),
            "{text}"
        );
        assert!(text.contains(
            "sluice_sink_flush_duration_seconds_bucket{pipeline=\"a\\\"b\\\\c\",sink=\"sink\",connector=\"sqlite\",le=\"+Inf\"} 1"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} has no TYPE"
            );
        }
    }
}
