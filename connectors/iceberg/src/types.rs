//! Arrow <-> Iceberg types, without loss.
//!
//! | Arrow (batch) | Iceberg (created by the sink) |
//! |---|---|
//! | Boolean | boolean |
//! | Int8, Int16, Int32, UInt8, UInt16 | int |
//! | Int64, UInt32 | long |
//! | UInt64 | decimal(20, 0) |
//! | Float16, Float32 / Float64 | float / double |
//! | Decimal128(p, s), Decimal256(p <= 38, s) | decimal(p, s) |
//! | Utf8, LargeUtf8, Utf8View | string |
//! | Binary, LargeBinary, BinaryView | binary |
//! | FixedSizeBinary(n) | fixed(n) |
//! | Date32, Date64 (whole days) | date |
//! | Time32, Time64 | time (µs) |
//! | Timestamp(unit) | timestamp (µs) |
//! | Timestamp(unit, zone) | timestamptz (µs, the instant in UTC) |
//! | List, LargeList, FixedSizeList | list |
//! | Struct / Map | struct / map |
//! | Dictionary(_, V) | the type of V |
//!
//! Nanoseconds go to microseconds only when they are whole microseconds (a date64 only
//! when it is a whole day); any other value is an error naming the column and the row,
//! never a rounded value. Types with no Iceberg type (durations, intervals, unions)
//! are an error naming the column when the table is created.

use std::sync::Arc;

use arrow_array::{new_null_array, Array, ArrayRef, RecordBatch};
use arrow_cast::CastOptions;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use connector_api::{Error, Result};

/// The zone of a stored `timestamptz` column, in the Arrow form iceberg writes.
const STORED_UTC: &str = "+00:00";

/// The Arrow type a column of type `dt` is stored as: what the table's Iceberg type
/// reads back as in Arrow.
pub fn stored_type(column: &str, dt: &DataType) -> Result<DataType> {
    use DataType::*;
    Ok(match dt {
        Boolean => Boolean,
        Int8 | Int16 | Int32 | UInt8 | UInt16 => Int32,
        Int64 | UInt32 => Int64,
        UInt64 => Decimal128(20, 0),
        Float16 | Float32 => Float32,
        Float64 => Float64,
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) => Decimal128(*p, *s),
        Decimal256(p, s) if *p <= 38 => Decimal128(*p, *s),
        Utf8 | LargeUtf8 | Utf8View => Utf8,
        Binary | LargeBinary | BinaryView => LargeBinary,
        FixedSizeBinary(n) => FixedSizeBinary(*n),
        Date32 | Date64 => Date32,
        Time32(_) | Time64(_) => Time64(TimeUnit::Microsecond),
        Timestamp(_, None) => Timestamp(TimeUnit::Microsecond, None),
        Timestamp(_, Some(_)) => Timestamp(TimeUnit::Microsecond, Some(STORED_UTC.into())),
        List(f) | LargeList(f) | FixedSizeList(f, _) => List(Arc::new(stored_field(column, f)?)),
        Struct(fields) => Struct(
            fields
                .iter()
                .map(|f| stored_field(column, f))
                .collect::<Result<Fields>>()?,
        ),
        Map(entries, sorted) => Map(Arc::new(stored_field(column, entries)?), *sorted),
        Dictionary(_, values) => stored_type(column, values)?,
        other => {
            return Err(Error::schema(format!(
                "column \"{column}\": type {} has no Iceberg type",
                connector_api::type_name(other)
            )))
        }
    })
}

fn stored_field(column: &str, f: &Field) -> Result<Field> {
    Ok(Field::new(
        f.name(),
        stored_type(column, f.data_type())?,
        f.is_nullable(),
    ))
}

/// The schema of a table created for batches of `schema`. Columns of Arrow's `Null`
/// type (inferred from nothing but nulls) are left out: they are added when a batch
/// gives them a type.
pub fn stored_schema(schema: &Schema) -> Result<Schema> {
    let fields = schema
        .fields()
        .iter()
        .filter(|f| f.data_type() != &DataType::Null)
        .map(|f| stored_field(f.name(), f))
        .collect::<Result<Vec<_>>>()?;
    Ok(Schema::new(fields))
}

/// `schema` as the table property that remembers it (JSON, without metadata).
pub fn schema_property(schema: &Schema) -> Result<String> {
    let plain = Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(Default::default()))
            .collect::<Vec<_>>(),
    );
    serde_json::to_string(&plain)
        .map_err(|e| Error::internal(format!("the schema does not serialize: {e}")))
}

/// The schema the sink reports for a table whose Arrow schema is `target`: the
/// batches' own schema kept in `property` while the table still stores exactly what
/// it maps to, else the table's types ([`reported_schema`]).
pub fn schema_to_report(target: &Schema, property: Option<&String>) -> SchemaRef {
    let table = reported_schema(target);
    let kept = property
        .and_then(|p| serde_json::from_str::<Schema>(p).ok())
        .filter(|kept| stored_schema(kept).is_ok_and(|stored| reported_schema(&stored) == table));
    match kept {
        Some(kept) => Arc::new(kept),
        None => table,
    }
}

/// The table's schema as the runtime compares batches with it: the table's Arrow
/// schema without field ids, zones named `UTC`, and Arrow's default names for list
/// items and map entries, so a batch of the types the table was created from fits it.
pub fn reported_schema(table: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .fields()
            .iter()
            .map(|f| reported_field(f, f.name()))
            .collect::<Vec<_>>(),
    ))
}

fn reported_field(f: &Field, name: &str) -> Field {
    use DataType::*;
    let dt = match f.data_type() {
        Timestamp(unit, Some(_)) => Timestamp(*unit, Some(connector_api::types::UTC.into())),
        List(item) => List(Arc::new(reported_field(item, "item"))),
        Struct(fields) => Struct(fields.iter().map(|c| reported_field(c, c.name())).collect()),
        Map(entries, sorted) => {
            let kv = match entries.data_type() {
                Struct(kv) if kv.len() == 2 => Fields::from(vec![
                    reported_field(&kv[0], "keys"),
                    reported_field(&kv[1], "values"),
                ]),
                other => return Field::new(name, other.clone(), f.is_nullable()),
            };
            Map(Arc::new(Field::new("entries", Struct(kv), false)), *sorted)
        }
        other => other.clone(),
    };
    Field::new(name, dt, f.is_nullable())
}

/// `batch` in the table's Arrow schema `target` (with its field ids): columns by name,
/// cast exactly, missing optional columns null.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let exact = CastOptions {
        safe: false,
        ..Default::default()
    };
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let name = field.name();
        let Some(column) = batch.column_by_name(name) else {
            if !field.is_nullable() {
                return Err(Error::schema(format!(
                    "column \"{name}\" is required in the table but missing from the batch"
                )));
            }
            columns.push(new_null_array(field.data_type(), rows));
            continue;
        };
        // a dictionary is compared and cast as its values
        let column = match column.data_type() {
            DataType::Dictionary(_, values) => {
                arrow_cast::cast_with_options(column, values, &exact)
                    .map_err(|e| Error::data(format!("column \"{name}\": {e}")))?
            }
            _ => column.clone(),
        };
        let column = &column;
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(Error::data(format!(
                "column \"{name}\" is required in the table but row {} has no value",
                first_null(column)
            )));
        }
        let cast =
            arrow_cast::cast_with_options(column, field.data_type(), &exact).map_err(|e| {
                Error::data(format!(
                    "column \"{name}\": a value does not fit the table's {}: {e}",
                    connector_api::type_name(field.data_type())
                ))
            })?;
        if coarser(column.data_type(), field.data_type()) {
            check_exact(name, column, &cast)?;
        }
        columns.push(cast);
    }
    RecordBatch::try_new(target.clone(), columns)
        .map_err(|e| Error::internal(format!("a batch does not fit the table's schema: {e}")))
}

fn first_null(column: &ArrayRef) -> usize {
    (0..column.len()).find(|i| column.is_null(*i)).unwrap_or(0)
}

/// The cast from `from` to `to` can drop a part of a value (nanoseconds to
/// microseconds, milliseconds to days) somewhere in the type.
fn coarser(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Timestamp(TimeUnit::Nanosecond, _), _)
        | (Time64(TimeUnit::Nanosecond), _)
        | (Date64, _) => true,
        (List(f) | LargeList(f) | FixedSizeList(f, _), List(t)) => {
            coarser(f.data_type(), t.data_type())
        }
        (Map(f, _), Map(t, _)) => coarser(f.data_type(), t.data_type()),
        (Struct(fs), Struct(ts)) => fs.iter().any(|f| {
            ts.iter()
                .find(|t| t.name() == f.name())
                .is_some_and(|t| coarser(f.data_type(), t.data_type()))
        }),
        (Dictionary(_, v), t) => coarser(v, t),
        _ => false,
    }
}

/// Casting `cast` back gives `column` again, or an error naming the first row that
/// lost a part.
fn check_exact(name: &str, column: &ArrayRef, cast: &ArrayRef) -> Result<()> {
    let back = arrow_cast::cast(cast, column.data_type())
        .map_err(|e| Error::internal(format!("column \"{name}\": cast back: {e}")))?;
    if back.to_data() == column.to_data() {
        return Ok(());
    }
    let row = (0..column.len())
        .find(|i| back.slice(*i, 1).to_data() != column.slice(*i, 1).to_data())
        .unwrap_or(0);
    Err(Error::data(format!(
        "column \"{name}\" row {row}: the value is finer than the table's {} holds (microseconds, whole days); \
         it would be rounded",
        connector_api::type_name(cast.data_type())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{TimestampNanosecondArray, UInt64Array};

    fn target(dt: DataType) -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", dt, true)]))
    }

    #[test]
    fn whole_microseconds_pass_and_a_nanosecond_is_an_error_naming_the_row() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "v",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        )]));
        let t = target(stored_type("v", schema.field(0).data_type()).unwrap());
        let ok = TimestampNanosecondArray::from(vec![Some(1_000), None, Some(-2_000)]);
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(ok)]).unwrap();
        assert_eq!(conform(&b, &t).unwrap().num_rows(), 3);
        let bad = TimestampNanosecondArray::from(vec![Some(1_000), Some(1_001)]);
        let b = RecordBatch::try_new(schema, vec![Arc::new(bad)]).unwrap();
        let e = conform(&b, &t).unwrap_err();
        assert!(e.message().contains("\"v\" row 1"), "{}", e.message());
    }

    #[test]
    fn uint64_is_stored_as_a_decimal_without_loss() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::UInt64, true)]));
        let t = target(stored_type("v", &DataType::UInt64).unwrap());
        let b = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![u64::MAX]))])
            .unwrap();
        let out = conform(&b, &t).unwrap();
        let d = out
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::Decimal128Array>()
            .unwrap();
        assert_eq!(d.value(0), u64::MAX as i128);
    }

    #[test]
    fn a_type_without_iceberg_type_names_the_column() {
        let e = stored_type("d", &DataType::Duration(TimeUnit::Second)).unwrap_err();
        assert!(e.message().contains("column \"d\""), "{}", e.message());
    }
}
