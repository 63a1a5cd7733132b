//! Running a prepared query on batches; the rows it fails on found by bisection.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use arrow_array::RecordBatch;
use arrow_select::concat::concat_batches;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result as DfResult};
use futures::TryStreamExt;

use crate::error::SqlError;
use crate::plan::Prepared;

/// Runs of a plan before it is renewed.
const RENEW_AFTER: usize = 256;

/// A row the query fails on by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// Its index in the batch given to [`Prepared::run`].
    pub row: usize,
    /// The output column whose expression fails on it, `WHERE` for the condition; None
    /// when no single one fails alone.
    pub column: Option<String>,
    /// DataFusion's error.
    pub error: String,
}

/// What one batch gave.
#[derive(Debug)]
pub struct Outcome {
    /// The rows out, from every row the query did not fail on, in input order.
    pub batch: RecordBatch,
    /// The rows it failed on, in input order.
    pub bad: Vec<BadRow>,
}

impl Prepared {
    /// Runs the query on `batch` (of [`Prepared::input_schema`]). When it fails, the
    /// batch is halved until the rows that fail alone are found: they come back as
    /// [`BadRow`]s and every other row goes through. When every row of a batch of 8
    /// or more fails alone with one same error, that is the query's error.
    pub async fn run(&self, batch: &RecordBatch) -> Result<Outcome, SqlError> {
        let n = batch.num_rows();
        let first = match self.once(batch).await {
            Ok(out) => {
                return Ok(Outcome {
                    batch: out,
                    bad: Vec::new(),
                })
            }
            Err(e) => e,
        };
        if n <= 1 {
            let bad = match n {
                0 => return Err(SqlError::from_df(first)),
                _ => vec![self.diagnose(batch, 0, first).await],
            };
            return Ok(Outcome {
                batch: RecordBatch::new_empty(self.output.clone()),
                bad,
            });
        }
        let mut outs = Vec::new();
        let mut bad = Vec::new();
        // depth first, left half first, so the rows out keep their order
        let mut parts = vec![(n / 2, n - n / 2), (0, n / 2)];
        while let Some((at, len)) = parts.pop() {
            let part = batch.slice(at, len);
            match self.once(&part).await {
                Ok(out) => outs.push(out),
                Err(e) if len == 1 => bad.push(self.diagnose(&part, at, e).await),
                Err(_) => {
                    parts.push((at + len / 2, len - len / 2));
                    parts.push((at, len / 2));
                }
            }
        }
        // every row of a batch of some size failing alone, all alike: the query fails,
        // not the data (a pattern that is no regular expression, say)
        if n >= 8 && bad.len() == n && bad.iter().all(|b| b.error == bad[0].error) {
            return Err(SqlError::from_df(first));
        }
        let batch = concat_batches(&self.output, &outs)
            .map_err(|e| SqlError::from_df(DataFusionError::ArrowError(Box::new(e), None)))?;
        Ok(Outcome { batch, bad })
    }

    /// One pass of the plan over `batch`, its output in one batch.
    pub(crate) async fn once(&self, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let plan = {
            // the lock only swaps the plan: no run holds it while it polls
            let mut plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
            // each run registers its nodes' metrics on them, for good: a fresh plan
            // every RENEW_AFTER runs keeps them from growing with the run
            if self.runs.fetch_add(1, Ordering::Relaxed) % RENEW_AFTER == RENEW_AFTER - 1 {
                *plan = plan
                    .clone()
                    .transform_up(|p| Ok(Transformed::yes(p.reset_state()?)))?
                    .data;
            }
            plan.clone()
        };
        self.feed.put(batch.clone());
        let stream = plan.execute(0, self.task.clone())?;
        let mut parts: Vec<RecordBatch> = stream.try_collect().await?;
        match parts.len() {
            0 => Ok(RecordBatch::new_empty(self.output.clone())),
            1 => Ok(parts.remove(0)),
            _ => Ok(concat_batches(&self.output, &parts)?),
        }
    }

    /// The bad row `row` (a one-row batch, at `at` in the batch run): its error, and the
    /// first probe that fails on it.
    async fn diagnose(&self, row: &RecordBatch, at: usize, error: DataFusionError) -> BadRow {
        let probes = self.probes.get_or_init(|| {
            self.query
                .probes()
                .into_iter()
                .filter_map(|(label, q)| {
                    q.prepare(self.input.clone(), self.batch_size)
                        .ok()
                        .map(|p| (label, p))
                })
                .collect()
        });
        let mut column = None;
        for (label, probe) in probes {
            if probe.once(row).await.is_err() {
                column = Some(label.clone());
                break;
            }
        }
        BadRow {
            row: at,
            column,
            error: SqlError::from_df(error).message,
        }
    }
}
