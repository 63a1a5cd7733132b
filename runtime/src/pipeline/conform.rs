//! Schema conformance: makes a batch fit a sink's schema under the sink's
//! [`DriftPolicy`] before the sink sees it (the engine calls [`conform`] for every sink
//! and every batch, so every sink gets the same rules).

use std::sync::Arc;

use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use connector_api::{DriftPolicy, Error, Result};

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
/// target column is not nullable). A column of a narrower type that the target's holds
/// exactly (`int32` into `int64`, `decimal(5,2)` into `decimal(10,2)`) is cast. A column
/// of a wider type (the target's fits into it exactly) widens the target under
/// `evolve`; the sink sees the wider type in the evolved schema. Any other type change
/// is an error that names the column, unless the batch column is all-null (an
/// inferred `Null` type), which is cast.
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
    let mut fields: Vec<Field> = target.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut widened = false;
    for (n, field) in target.fields().iter().enumerate() {
        match source.index_of(field.name()) {
            Ok(i) => {
                let column = batch.column(i);
                if policy == DriftPolicy::Evolve
                    && exact_into(field.data_type(), column.data_type())
                {
                    // the batch's type holds every value of the target's: widen the target
                    check_nulls(column, field)?;
                    fields[n] = field
                        .as_ref()
                        .clone()
                        .with_data_type(column.data_type().clone());
                    columns.push(column.clone());
                    widened = true;
                } else {
                    columns.push(fit_column(column, field)?);
                }
            }
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
                && !connector_api::columns::is_reserved(f.name())
        })
        .map(|(i, _)| i)
        .collect();

    let mut evolved = widened.then(|| Arc::new(Schema::new(fields.clone())));
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
        if connector_api::columns::is_reserved(f.name())
            && target.field_with_name(f.name()).is_err()
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

fn check_nulls(column: &ArrayRef, field: &Field) -> Result<()> {
    if !field.is_nullable() && column.null_count() > 0 {
        return Err(Error::data(format!(
            "column \"{}\" is NOT NULL in the sink but {} of {} records have no value",
            field.name(),
            column.null_count(),
            column.len()
        )));
    }
    Ok(())
}

/// Every value of type `from` is exactly a value of type `to` (and they differ).
fn exact_into(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_digits = |t: &DataType| match t {
        Int8 | UInt8 => Some(3),
        Int16 | UInt16 => Some(5),
        Int32 | UInt32 => Some(10),
        Int64 => Some(19),
        UInt64 => Some(20),
        _ => None,
    };
    match (from, to) {
        _ if from == to => false,
        (Int8, Int16 | Int32 | Int64)
        | (Int16, Int32 | Int64)
        | (Int32, Int64)
        | (UInt8, UInt16 | UInt32 | UInt64 | Int16 | Int32 | Int64)
        | (UInt16, UInt32 | UInt64 | Int32 | Int64)
        | (UInt32, UInt64 | Int64)
        | (Float16, Float32 | Float64)
        | (Float32, Float64)
        | (Int8 | Int16 | UInt8 | UInt16, Float32)
        | (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32, Float64)
        | (Utf8, LargeUtf8)
        | (Binary, LargeBinary) => true,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && (*p2 as i32 - *s2 as i32) >= (*p1 as i32 - *s1 as i32)
        }
        (f, Decimal128(p, s)) => int_digits(f).is_some_and(|d| *p as i32 - *s as i32 >= d),
        // a finer unit, the same zone: a scaling, checked for overflow when cast
        (Timestamp(u1, z1), Timestamp(u2, z2)) => z1 == z2 && unit_rank(u2) > unit_rank(u1),
        _ => false,
    }
}

/// Orders time units from coarse to fine.
fn unit_rank(unit: &arrow_schema::TimeUnit) -> u8 {
    use arrow_schema::TimeUnit::*;
    match unit {
        Second => 0,
        Millisecond => 1,
        Microsecond => 2,
        Nanosecond => 3,
    }
}

fn fit_column(column: &ArrayRef, field: &Field) -> Result<ArrayRef> {
    check_nulls(column, field)?;
    if column.data_type() == field.data_type() {
        return Ok(column.clone());
    }
    if exact_into(column.data_type(), field.data_type()) {
        // not `safe`: a value past the wider type's range (a timestamp in seconds far
        // beyond year 294,000 in microseconds) is an error, never a null
        let exact = arrow_cast::CastOptions {
            safe: false,
            ..Default::default()
        };
        return arrow_cast::cast_with_options(column, field.data_type(), &exact).map_err(|e| {
            Error::data(format!(
                "column \"{}\": a value does not fit {}: {e}",
                field.name(),
                field.data_type()
            ))
        });
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
    fn a_finer_timestamp_widens_the_sink_and_a_coarser_one_fits_unless_it_overflows() {
        use arrow_array::{TimestampMicrosecondArray, TimestampSecondArray};
        use arrow_schema::TimeUnit;
        let schema = |unit| {
            Arc::new(Schema::new(vec![Field::new(
                "at",
                DataType::Timestamp(unit, None),
                true,
            )]))
        };
        let micros = RecordBatch::try_new(
            schema(TimeUnit::Microsecond),
            vec![Arc::new(TimestampMicrosecondArray::from(vec![1_500_000]))],
        )
        .unwrap();
        // a sink of seconds (whole seconds inferred earlier) takes microseconds by widening
        let c = conform(&micros, &schema(TimeUnit::Second), DriftPolicy::Evolve).unwrap();
        assert_eq!(
            c.evolved.unwrap().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert!(conform(&micros, &schema(TimeUnit::Second), DriftPolicy::Freeze).is_err());
        // seconds into a sink of microseconds: scaled exactly, or an error, never null
        let seconds = |v: i64| {
            RecordBatch::try_new(
                schema(TimeUnit::Second),
                vec![Arc::new(TimestampSecondArray::from(vec![v]))],
            )
            .unwrap()
        };
        let c = conform(
            &seconds(2),
            &schema(TimeUnit::Microsecond),
            DriftPolicy::Freeze,
        )
        .unwrap();
        let at = c
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>();
        assert_eq!(at.unwrap().value(0), 2_000_000);
        let err = conform(
            &seconds(i64::MAX / 10),
            &schema(TimeUnit::Microsecond),
            DriftPolicy::Freeze,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("column \"at\": a value does not fit"),
            "{err}"
        );
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
        assert_eq!(err.kind(), connector_api::ErrorKind::Data);
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

    fn decimals(p: u8, s: i8, v: i128) -> RecordBatch {
        let a = arrow_array::Decimal128Array::from(vec![v])
            .with_precision_and_scale(p, s)
            .unwrap();
        RecordBatch::try_from_iter(vec![("amount", Arc::new(a) as ArrayRef)]).unwrap()
    }

    #[test]
    fn a_narrower_type_is_cast_and_a_wider_one_widens_under_evolve() {
        let t = Arc::new(Schema::new(vec![Field::new(
            "amount",
            DataType::Decimal128(10, 2),
            true,
        )]));
        // decimal(5,2) fits decimal(10,2): cast, whatever the policy
        let c = conform(&decimals(5, 2, 12345), &t, DriftPolicy::Freeze).unwrap();
        assert_eq!(
            c.batch.schema().field(0).data_type(),
            &DataType::Decimal128(10, 2)
        );
        assert!(c.evolved.is_none());
        // decimal(12,2) holds decimal(10,2): the target widens under evolve
        let c = conform(&decimals(12, 2, 123_456_789_012), &t, DriftPolicy::Evolve).unwrap();
        let evolved = c.evolved.unwrap();
        assert_eq!(evolved.field(0).data_type(), &DataType::Decimal128(12, 2));
        assert_eq!(
            c.batch.schema().field(0).data_type(),
            &DataType::Decimal128(12, 2)
        );
        // ... and is an error naming the column under freeze
        let err = conform(&decimals(12, 2, 1), &t, DriftPolicy::Freeze).unwrap_err();
        assert!(err.to_string().contains("\"amount\""), "{err}");
        // a scale change that loses digits is never exact
        let err = conform(&decimals(10, 3, 1), &t, DriftPolicy::Evolve).unwrap_err();
        assert!(err.to_string().contains("\"amount\""), "{err}");
        // int32 into int64
        let b = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(arrow_array::Int32Array::from(vec![7])) as ArrayRef,
        )])
        .unwrap();
        let c = conform(&b, &target(), DriftPolicy::Freeze).unwrap();
        assert_eq!(c.batch.schema().field(0).data_type(), &DataType::Int64);
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
