//! The transforms of one run, in order, and the routing predicates of its sinks. A
//! SQL stage keeps its plan for the schema it last saw: planned once, again only
//! when the records' schema changes (a source's schema evolved, `drift = "evolve"`).

use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use arrow_select::take::take_record_batch;
use connector_api::{Error, Offsets, Reject, Result};
use sluice_sql::{BadRow, Prepared, Query};

use super::TransformSpec;

/// A query and its plan for the last schema it saw.
pub(crate) struct SqlStage {
    /// How messages name it: `transforms[1] ("enrich")`, `sink "big" where`.
    label: String,
    query: Query,
    batch_size: usize,
    /// A route: the rows out keep the records' schema exactly (field metadata too).
    route: bool,
    plan: Option<Prepared>,
    /// Plans made, for the test that planning is once per schema.
    planned: usize,
}

impl SqlStage {
    fn new(label: String, query: Query, batch_size: usize) -> Self {
        SqlStage {
            label,
            query,
            batch_size,
            route: false,
            plan: None,
            planned: 0,
        }
    }

    /// The routing stage of a sink: the rows its `where` predicate keeps.
    pub(crate) fn route(sink: &str, predicate: &str, batch_size: usize) -> Result<Self> {
        let label = format!("sink \"{sink}\" where");
        let query = Query::filter(predicate).map_err(|e| Error::config(format!("{label}: {e}")))?;
        Ok(SqlStage {
            route: true,
            ..SqlStage::new(label, query, batch_size)
        })
    }

    /// The plan for `schema`, made when the schema is new.
    fn plan(&mut self, schema: &SchemaRef) -> Result<&Prepared> {
        let plan = match self.plan.take() {
            Some(p) if p.input_schema() == schema => p,
            _ => {
                let p = self
                    .query
                    .prepare(schema.clone(), self.batch_size)
                    .map_err(|e| Error::schema(format!("{}: {e}", self.label)))?;
                self.planned += 1;
                p
            }
        };
        Ok(self.plan.insert(plan))
    }

    /// The query's rows for `batch`, and the rows it failed on as rejects (the record as
    /// the stage got it, the column, the error); `at` is where the batch ends.
    pub(crate) async fn apply(
        &mut self,
        batch: &RecordBatch,
        at: &Offsets,
    ) -> Result<(RecordBatch, Vec<Reject>)> {
        let label = self.label.clone();
        let plan = self.plan(&batch.schema())?;
        let out = plan
            .run(batch)
            .await
            .map_err(|e| Error::data(format!("{label}: {e}")))?;
        let rejects = match out.bad.is_empty() {
            true => Vec::new(),
            false => rejects(&label, batch, &out.bad, at)?,
        };
        let rows = match self.route {
            // SELECT * gives the same columns, which take back the records' own fields
            true => {
                RecordBatch::try_new(batch.schema(), out.batch.columns().to_vec()).map_err(|e| {
                    Error::internal(format!("{label}: the rows kept changed type")).with_source(e)
                })?
            }
            false => out.batch,
        };
        Ok((rows, rejects))
    }

    #[cfg(test)]
    pub(crate) fn planned(&self) -> usize {
        self.planned
    }
}

/// The rows a stage failed on, as rejects for the dead-letter sink: each record as the
/// stage got it, named by its row there and where the batch ends (the split too, when
/// the batch read one only).
fn rejects(label: &str, batch: &RecordBatch, bad: &[BadRow], at: &Offsets) -> Result<Vec<Reject>> {
    let rows = UInt32Array::from_iter_values(bad.iter().map(|b| b.row as u32));
    let texts = sluice_formats::row_texts(&take_record_batch(batch, &rows)?)?;
    let splits = at.splits();
    let split = match splits.iter().count() {
        1 => splits.iter().next().map(|(s, _)| s.clone()),
        _ => None,
    };
    let ending = describe(at);
    Ok(bad
        .iter()
        .zip(texts)
        .map(|(b, text)| {
            let column = match &b.column {
                Some(c) => format!(", column \"{c}\""),
                None => String::new(),
            };
            Reject::new(
                split.clone().unwrap_or_default(),
                format!(
                    "row {} of its input, in the batch read up to {ending}",
                    b.row
                ),
                text.unwrap_or_default(),
                Error::data(format!("{label}{column}: {}", b.error)),
            )
        })
        .collect())
}

/// Where a batch ends, as its offsets say: `split "a" at 17, split "b" at 3`.
fn describe(at: &Offsets) -> String {
    let splits = at.splits();
    let mut parts: Vec<String> = splits
        .iter()
        .take(3)
        .map(|(s, v)| format!("split \"{s}\" at {v}"))
        .collect();
    let more = splits.iter().count().saturating_sub(3);
    if more > 0 {
        parts.push(format!("{more} more splits"));
    }
    match parts.is_empty() {
        true => "the start".to_string(),
        false => parts.join(", "),
    }
}

enum Stage {
    Builtin(TransformSpec),
    Sql(SqlStage),
}

/// The transforms of a pipeline, for one run.
pub(crate) struct Chain {
    stages: Vec<Stage>,
}

impl Chain {
    /// The stages of `specs`; a SQL stage plans at its first batch. `batch_size`: the
    /// most rows a query's output gives at once before it is put back together.
    pub(crate) fn new(specs: &[TransformSpec], batch_size: usize) -> Result<Self> {
        let stages = specs
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                TransformSpec::Sql { name, query } => {
                    let label = super::sql_label(i, name.as_deref());
                    let query =
                        Query::parse(query).map_err(|e| Error::config(format!("{label}: {e}")))?;
                    Ok(Stage::Sql(SqlStage::new(label, query, batch_size)))
                }
                other => Ok(Stage::Builtin(other.clone())),
            })
            .collect::<Result<_>>()?;
        Ok(Chain { stages })
    }

    /// `batch` through every stage; rows a SQL stage failed on come back as rejects.
    /// `at`: where the batch ends, to name the rows by.
    pub(crate) async fn apply(
        &mut self,
        mut batch: RecordBatch,
        at: &Offsets,
    ) -> Result<(RecordBatch, Vec<Reject>)> {
        let mut rejects = Vec::new();
        for stage in &mut self.stages {
            batch = match stage {
                Stage::Builtin(t) => t.apply(batch)?,
                Stage::Sql(s) => {
                    let (out, bad) = s.apply(&batch, at).await?;
                    rejects.extend(bad);
                    out
                }
            };
        }
        Ok((batch, rejects))
    }

    /// The columns of `schema` (every record's, known before reading) the chain reads,
    /// when its first stage is a query that reads some of them and not all: the source
    /// may leave the others out. None otherwise, or when the query does not plan (the
    /// first batch then reports why).
    pub(crate) fn columns_read(&self, schema: &SchemaRef) -> Option<Vec<String>> {
        let Some(Stage::Sql(first)) = self.stages.first() else {
            return None;
        };
        let plan = first.query.prepare(schema.clone(), first.batch_size).ok()?;
        let reads = plan.columns_read()?;
        // planned again on those columns alone, it must give the same records (a
        // `* EXCLUDE (c)` names a column it does not read, and plans without it fail)
        let narrow = Arc::new(schema.project(reads).ok()?);
        let again = first.query.prepare(narrow, first.batch_size).ok()?;
        (again.output_schema() == plan.output_schema()).then(|| {
            reads
                .iter()
                .map(|&i| schema.field(i).name().clone())
                .collect()
        })
    }

    #[cfg(test)]
    pub(crate) fn sql(&self, i: usize) -> Option<&SqlStage> {
        match self.stages.get(i) {
            Some(Stage::Sql(s)) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    fn batch(extra: bool) -> RecordBatch {
        let mut cols = vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "text",
                Arc::new(StringArray::from(vec!["1", "x", "3"])) as ArrayRef,
            ),
        ];
        if extra {
            cols.push((
                "more",
                Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef,
            ));
        }
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[tokio::test]
    async fn plans_once_per_schema_not_per_batch() {
        let specs = [TransformSpec::Sql {
            query: "SELECT id * 2 AS twice FROM input".into(),
            name: None,
        }];
        let mut chain = Chain::new(&specs, 1024).unwrap();
        for _ in 0..5 {
            chain.apply(batch(false), &Offsets::new()).await.unwrap();
        }
        assert_eq!(chain.sql(0).unwrap().planned(), 1);
        // the source's schema evolved: planned again, once
        for _ in 0..3 {
            chain.apply(batch(true), &Offsets::new()).await.unwrap();
        }
        assert_eq!(chain.sql(0).unwrap().planned(), 2);
    }

    #[test]
    fn names_the_columns_a_first_query_reads_when_they_alone_give_its_records() {
        let schema = batch(true).schema();
        let read = |query: &str| {
            let specs = [TransformSpec::Sql {
                query: query.into(),
                name: None,
            }];
            Chain::new(&specs, 1024).unwrap().columns_read(&schema)
        };
        assert_eq!(
            read("SELECT id * 2 AS twice FROM input WHERE more > 7"),
            Some(vec!["id".to_string(), "more".to_string()])
        );
        assert_eq!(read("SELECT * FROM input"), None);
        // names a column it does not read: planned without it, it fails
        assert_eq!(read("SELECT * EXCLUDE (text) FROM input"), None);
        let builtin_first = [
            TransformSpec::Drop {
                fields: vec!["more".into()],
            },
            TransformSpec::Sql {
                query: "SELECT id FROM input".into(),
                name: None,
            },
        ];
        let chain = Chain::new(&builtin_first, 1024).unwrap();
        assert_eq!(chain.columns_read(&schema), None);
    }

    #[tokio::test]
    async fn a_failing_row_is_a_reject_naming_transform_column_and_place() {
        let specs = [TransformSpec::Sql {
            query: "SELECT id, CAST(text AS BIGINT) AS n FROM input".into(),
            name: Some("numbers".into()),
        }];
        let mut chain = Chain::new(&specs, 1024).unwrap();
        let mut at = Offsets::new();
        at.set("in/a.jsonl", serde_json::json!(3));
        let (out, rejects) = chain.apply(batch(false), &at).await.unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(rejects.len(), 1);
        let r = &rejects[0];
        assert_eq!(r.split, "in/a.jsonl");
        assert_eq!(
            r.position,
            "row 1 of its input, in the batch read up to split \"in/a.jsonl\" at 3"
        );
        assert_eq!(r.raw, r#"{"id":2,"text":"x"}"#);
        let e = r.error.to_string();
        assert!(
            e.contains("transforms[0] (\"numbers\"), column \"n\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_route_keeps_the_rows_its_predicate_holds_for() {
        let mut route = SqlStage::route("big", "id >= 2", 1024).unwrap();
        let (kept, rejects) = route.apply(&batch(false), &Offsets::new()).await.unwrap();
        assert!(rejects.is_empty());
        assert_eq!(kept.schema(), batch(false).schema());
        assert_eq!(kept.num_rows(), 2);
    }
}
