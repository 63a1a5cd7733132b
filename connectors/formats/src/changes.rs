//! Change records (`_op`: `r`, `c`, `u`, `d`, `t`) as runs to apply to a keyed
//! destination (an upsert table, Redis keys), in their order: runs of reads, inserts
//! and updates are upserted, deletes delete by key (a delete carries only its key), a
//! truncate empties the destination. And the schema of Debezium's envelope, which
//! CDC sources emit on request.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use connector_api::{columns, Error, Result};

/// Debezium's envelope around rows of `row`: `before` and `after` (structs of the
/// row's columns, every one nullable: a delete has no `after`), `source` (the
/// connector's own block, of `source` fields), `op` and `ts_ms`.
pub fn debezium_schema(row: &SchemaRef, source: Fields, source_nullable: bool) -> SchemaRef {
    let image = DataType::Struct(
        row.fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect(),
    );
    Arc::new(Schema::new(vec![
        Field::new("before", image.clone(), true),
        Field::new("after", image, true),
        Field::new("source", DataType::Struct(source), source_nullable),
        Field::new("op", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
    ]))
}

/// What a run of change records does to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Insert or update by key (`r`, `c`, `u`).
    Upsert,
    /// Delete by key (`d`).
    Delete,
    /// Delete every row (`t`).
    Truncate,
}

/// Rows next to each other that do the same to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// What they do.
    pub apply: Apply,
    /// The first row.
    pub start: usize,
    /// How many rows.
    pub len: usize,
}

/// The records without `_op`, and their runs in order; None when `records` are not
/// changes.
pub fn split(records: &RecordBatch) -> Result<Option<(RecordBatch, Vec<Run>)>> {
    let Ok(at) = records.schema().index_of(columns::OP) else {
        return Ok(None);
    };
    let ops = records.column(at).as_string_opt::<i32>().ok_or_else(|| {
        Error::schema(format!(
            "column \"{}\" is {}, not text",
            columns::OP,
            records.column(at).data_type()
        ))
    })?;
    let mut runs: Vec<Run> = Vec::new();
    for row in 0..ops.len() {
        let apply = match ops.is_valid(row).then(|| ops.value(row)) {
            Some("r" | "c" | "u") => Apply::Upsert,
            Some("d") => Apply::Delete,
            Some("t") => Apply::Truncate,
            other => {
                return Err(Error::data(format!(
                    "row {row}: column \"{}\" is {other:?}, not one of r, c, u, d, t",
                    columns::OP
                )))
            }
        };
        match runs.last_mut() {
            Some(run) if run.apply == apply => run.len += 1,
            _ => runs.push(Run {
                apply,
                start: row,
                len: 1,
            }),
        }
    }
    let mut data = records.clone();
    data.remove_column(at);
    Ok(Some((data, runs)))
}

/// The records without `_op` and their runs; records that are not changes are one
/// run of upserts.
pub fn runs(records: &RecordBatch) -> Result<(RecordBatch, Vec<Run>)> {
    Ok(split(records)?.unwrap_or_else(|| {
        let all = Run {
            apply: Apply::Upsert,
            start: 0,
            len: records.num_rows(),
        };
        (records.clone(), vec![all])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn rows_split_into_runs_in_order_and_lose_op() {
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2, 1, 3, 4, 4])) as _,
            ),
            (
                columns::OP,
                Arc::new(StringArray::from(vec!["r", "c", "d", "t", "u", "d"])) as _,
            ),
        ])
        .unwrap();
        let (data, runs) = split(&batch).unwrap().unwrap();
        assert_eq!(data.num_columns(), 1);
        let runs: Vec<(Apply, usize, usize)> =
            runs.iter().map(|r| (r.apply, r.start, r.len)).collect();
        assert_eq!(
            runs,
            vec![
                (Apply::Upsert, 0, 2),
                (Apply::Delete, 2, 1),
                (Apply::Truncate, 3, 1),
                (Apply::Upsert, 4, 1),
                (Apply::Delete, 5, 1),
            ]
        );
        let bad = RecordBatch::try_from_iter([(
            columns::OP,
            Arc::new(StringArray::from(vec![Some("x")])) as _,
        )])
        .unwrap();
        assert!(split(&bad).unwrap_err().to_string().contains("\"x\""));
    }
}
