//! Schema drift: what a sink does when a batch does not have the sink's schema.
//!
//! After dlt's schema contracts, each sink declares a [`DriftPolicy`]; the runtime calls
//! [`conform`] on every batch before the sink sees it, so every sink gets the same rules.

use std::sync::Arc;

use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What to do with columns a sink has not seen before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftPolicy {
    /// Add the new columns, nullable (the sink adds a table column or rolls its file).
    #[default]
    Evolve,
    /// Stop the pipeline with an error that names the new column.
    Freeze,
    /// Drop every row that has a value in a new column; keep the others.
    DiscardRow,
    /// Drop the new columns' values; keep the rows.
    DiscardValue,
}

/// A batch made to fit a sink's schema.
#[derive(Debug)]
pub struct Conformed {
    /// The batch, with the target's columns in the target's order (plus, under
    /// `evolve`, the new columns at the end).
    pub batch: RecordBatch,
    /// The sink's schema after this batch, when `evolve` added columns.
    pub evolved: Option<SchemaRef>,
    /// Rows dropped by `discard_row`.
    pub dropped_rows: usize,
}

/// Makes `batch` fit `target` under `policy`.
///
/// Columns of `target` missing from the batch are filled with nulls (an error when the
/// target column is not nullable). A column whose type differs is an error that names
/// it, unless the batch column is all-null (an inferred `Null` type), which is cast.
pub fn conform(batch: &RecordBatch, target: &SchemaRef, policy: DriftPolicy) -> Result<Conformed> {
    if batch.schema().as_ref() == target.as_ref() {
        return Ok(Conformed {
            batch: batch.clone(),
            evolved: None,
            dropped_rows: 0,
        });
    }
    let rows = batch.num_rows();
    let source = batch.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        match source.index_of(field.name()) {
            Ok(i) => columns.push(fit_column(batch.column(i), field)?),
            Err(_) if field.is_nullable() => columns.push(new_null_array(field.data_type(), rows)),
            Err(_) => {
                return Err(Error::schema(format!(
                    "column \"{}\" ({}) is required by the sink but missing from the batch",
                    field.name(),
                    field.data_type()
                )))
            }
        }
    }
    let new_fields: Vec<usize> = source
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            target.field_with_name(f.name()).is_err()
                && !crate::batch::columns::is_reserved(f.name())
        })
        .map(|(i, _)| i)
        .collect();

    let mut fields: Vec<Field> = target.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut evolved = None;
    let mut dropped_rows = 0;
    let mut keep: Option<BooleanArray> = None;
    if !new_fields.is_empty() {
        match policy {
            DriftPolicy::Freeze => {
                let names: Vec<String> = new_fields
                    .iter()
                    .map(|&i| {
                        let f = source.field(i);
                        format!("\"{}\" ({})", f.name(), f.data_type())
                    })
                    .collect();
                return Err(Error::schema(format!(
                    "new column {} is not in the sink's schema and the drift policy is freeze",
                    names.join(", ")
                )));
            }
            DriftPolicy::Evolve => {
                for &i in &new_fields {
                    let f = source.field(i);
                    fields.push(Field::new(f.name(), f.data_type().clone(), true));
                    columns.push(batch.column(i).clone());
                }
                evolved = Some(Arc::new(Schema::new(fields.clone())));
            }
            DriftPolicy::DiscardValue => {}
            DriftPolicy::DiscardRow => {
                let mask: BooleanArray = (0..rows)
                    .map(|r| Some(new_fields.iter().all(|&i| batch.column(i).is_null(r))))
                    .collect();
                dropped_rows = mask.false_count();
                keep = Some(mask);
            }
        }
    }
    // reserved metadata columns (`_op`, `_key`, ...) travel along, outside the policy
    for (i, f) in source.fields().iter().enumerate() {
        if crate::batch::columns::is_reserved(f.name()) && target.field_with_name(f.name()).is_err()
        {
            fields.push(f.as_ref().clone());
            columns.push(batch.column(i).clone());
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, target.metadata().clone()));
    let mut out = RecordBatch::try_new(schema, columns)?;
    if let Some(mask) = keep {
        if dropped_rows > 0 {
            out = arrow_select::filter::filter_record_batch(&out, &mask)?;
        }
    }
    Ok(Conformed {
        batch: out,
        evolved,
        dropped_rows,
    })
}

fn fit_column(column: &ArrayRef, field: &Field) -> Result<ArrayRef> {
    if !field.is_nullable() && column.null_count() > 0 {
        return Err(Error::data(format!(
            "column \"{}\" is NOT NULL in the sink but {} of {} records have no value",
            field.name(),
            column.null_count(),
            column.len()
        )));
    }
    if column.data_type() == field.data_type() {
        return Ok(column.clone());
    }
    if column.data_type() == &DataType::Null || column.null_count() == column.len() {
        return Ok(new_null_array(field.data_type(), column.len()));
    }
    Err(Error::schema(format!(
        "column \"{}\" is {} in the sink but {} in the batch",
        field.name(),
        field.data_type(),
        column.data_type()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

    fn target() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
    }

    fn wider() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn evolve_adds_nullable_column() {
        let c = conform(&wider(), &target(), DriftPolicy::Evolve).unwrap();
        let evolved = c.evolved.unwrap();
        assert_eq!(evolved.fields().len(), 2);
        assert!(evolved.field(1).is_nullable());
        assert_eq!(c.batch.num_columns(), 2);
    }

    #[test]
    fn freeze_names_the_new_column() {
        let err = conform(&wider(), &target(), DriftPolicy::Freeze).unwrap_err();
        assert!(err.to_string().contains("\"note\""), "{err}");
    }

    #[test]
    fn discard_row_drops_rows_with_new_values() {
        let c = conform(&wider(), &target(), DriftPolicy::DiscardRow).unwrap();
        assert_eq!(c.batch.num_rows(), 1);
        assert_eq!(c.dropped_rows, 1);
        assert_eq!(c.batch.num_columns(), 1);
    }

    #[test]
    fn discard_value_keeps_rows() {
        let c = conform(&wider(), &target(), DriftPolicy::DiscardValue).unwrap();
        assert_eq!(c.batch.num_rows(), 2);
        assert_eq!(c.batch.num_columns(), 1);
    }

    #[test]
    fn missing_nullable_column_is_filled_with_nulls() {
        let t = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("gone", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
        .unwrap();
        let c = conform(&b, &t, DriftPolicy::Freeze).unwrap();
        assert_eq!(c.batch.column(1).null_count(), 1);
    }

    #[test]
    fn nulls_into_a_not_null_column_are_a_data_error() {
        let b = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
        )])
        .unwrap();
        let err = conform(&b, &target(), DriftPolicy::Evolve).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Data);
        assert!(
            err.to_string().contains("column \"id\" is NOT NULL"),
            "{err}"
        );
    }

    #[test]
    fn reserved_columns_pass_even_under_freeze() {
        let b = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("_op", Arc::new(StringArray::from(vec!["d"])) as ArrayRef),
        ])
        .unwrap();
        let c = conform(&b, &target(), DriftPolicy::Freeze).unwrap();
        assert_eq!(c.batch.schema().field(1).name(), "_op");
        assert!(c.evolved.is_none());
    }

    #[test]
    fn type_change_is_an_error_naming_the_column() {
        let b = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
        )])
        .unwrap();
        let err = conform(&b, &target(), DriftPolicy::Evolve).unwrap_err();
        assert!(err.to_string().contains("column \"id\" is Int64"), "{err}");
    }
}
