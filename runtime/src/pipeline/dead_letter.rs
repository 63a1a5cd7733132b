//! Bad records: the share of them over a sliding window (`errors.max_failure_rate`)
//! and the batch written to the dead-letter sink.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use connector_api::{Reject, Result};

/// Tracks the share of bad records over the last `window` records.
pub(super) struct FailureWindow {
    window: u64,
    entries: VecDeque<(u64, u64)>,
    total: u64,
    bad: u64,
}

impl FailureWindow {
    pub(super) fn new(window: usize) -> Self {
        FailureWindow {
            window: window.max(1) as u64,
            entries: VecDeque::new(),
            total: 0,
            bad: 0,
        }
    }

    /// Adds a batch's counts; returns the bad share when the window is full.
    pub(super) fn add(&mut self, good: u64, bad: u64) -> Option<f64> {
        self.entries.push_back((good, bad));
        self.total += good + bad;
        self.bad += bad;
        while let Some(&(g, b)) = self.entries.front() {
            if self.total - (g + b) < self.window {
                break;
            }
            self.entries.pop_front();
            self.total -= g + b;
            self.bad -= b;
        }
        (self.total >= self.window).then(|| self.bad as f64 / self.total as f64)
    }

    /// `n` records counted good when read turned out bad (a sink refused them): they
    /// move from good to bad, latest first, without being counted twice. Returns the
    /// bad share when the window is full.
    pub(super) fn refused(&mut self, n: u64) -> Option<f64> {
        let mut left = n;
        for (good, bad) in self.entries.iter_mut().rev() {
            let moved = left.min(*good);
            *good -= moved;
            *bad += moved;
            self.bad += moved;
            left -= moved;
            if left == 0 {
                break;
            }
        }
        // read so long ago they left the window: counted now
        self.add(0, left)
    }
}

/// The schema of the records written to the dead-letter sink.
fn schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        s("pipeline"),
        s("split"),
        s("position"),
        s("error_kind"),
        s("error"),
        s("record"),
        s("record_base64"),
        s("key_base64"),
        s("headers"),
        Field::new(
            "failed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// One dead-letter record per reject: where it was, why, and its raw text; its exact
/// bytes (`record_base64`, where the text may not hold them), key (`key_base64`) and
/// headers (`headers`: JSON, `[{"key": ..., "value_base64": ...}]`) when the source
/// kept them, base64 so that any sink stores them as text, exactly.
pub(super) fn batch(pipeline: &str, rejects: &[Reject]) -> Result<RecordBatch> {
    let col = |f: &dyn Fn(&Reject) -> String| -> Arc<StringArray> {
        Arc::new(StringArray::from_iter_values(rejects.iter().map(f)))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            col(&|_| pipeline.to_string()),
            col(&|r| r.split.clone()),
            col(&|r| r.position.clone()),
            col(&|r| r.error.kind().to_string()),
            col(&|r| r.error.to_string()),
            col(&|r| r.raw.clone()),
            optional(rejects, |r| r.bytes.as_deref().map(|b| BASE64.encode(b))),
            optional(rejects, |r| r.key.as_deref().map(|b| BASE64.encode(b))),
            optional(rejects, |r| {
                (!r.headers.is_empty()).then(|| {
                    let list: Vec<serde_json::Value> = r
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            serde_json::json!({
                                "key": k,
                                "value_base64": v.as_deref().map(|v| BASE64.encode(v)),
                            })
                        })
                        .collect();
                    serde_json::Value::Array(list).to_string()
                })
            }),
            Arc::new(
                TimestampMicrosecondArray::from(vec![now; rejects.len()]).with_timezone("UTC"),
            ),
        ],
    )?)
}

/// A text column of `f` of each reject (null where it gives None).
fn optional(rejects: &[Reject], f: impl Fn(&Reject) -> Option<String>) -> Arc<StringArray> {
    Arc::new(rejects.iter().map(f).collect::<StringArray>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_window_reports_only_when_full() {
        let mut w = FailureWindow::new(10);
        assert_eq!(w.add(5, 1), None);
        let share = w.add(3, 1).unwrap();
        assert!((share - 0.2).abs() < 1e-9);
        // old entries slide out
        let share = w.add(10, 0).unwrap();
        assert_eq!(share, 0.0);
    }

    #[test]
    fn records_refused_after_they_were_counted_good_move_to_bad_once() {
        let mut w = FailureWindow::new(10);
        assert_eq!(w.add(10, 0), Some(0.0));
        // 2 of the 10 turn out bad: 2 in 10, not 2 in 12
        let share = w.refused(2).unwrap();
        assert!((share - 0.2).abs() < 1e-9, "{share}");
        assert_eq!(w.total, 10);
    }
}
