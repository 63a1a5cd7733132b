//! A row-wise builder, so a simple connector can push rows without Arrow builders.
//!
//! Values are collected per column and converted once per batch with `arrow-cast`, so a
//! connector may push a timestamp or a decimal as text (`"2024-05-01T10:00:00Z"`,
//! `"12.30"`) or a timestamp as an integer in the column's unit.

use std::sync::Arc;

use arrow_array::{
    new_null_array, ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::{DataType, SchemaRef};

use crate::error::{Error, Result};

/// One value of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer (also a timestamp or date in the column's unit).
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A float.
    Float(f64),
    /// Text, or any type written as text (decimal, timestamp, date).
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// Builds a `RecordBatch` of a fixed schema from rows of [`Value`]s.
pub struct RowBuilder {
    schema: SchemaRef,
    columns: Vec<Vec<Value>>,
    rows: usize,
}

impl RowBuilder {
    /// An empty builder for `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        let columns = schema.fields().iter().map(|_| Vec::new()).collect();
        RowBuilder {
            schema,
            columns,
            rows: 0,
        }
    }

    /// The schema rows are built for.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows pushed since the last [`RowBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends a row; it must have one value per column.
    pub fn push_row(&mut self, row: Vec<Value>) -> Result<()> {
        if row.len() != self.columns.len() {
            return Err(Error::data(format!(
                "row has {} values but the schema has {} columns",
                row.len(),
                self.columns.len()
            )));
        }
        for (col, v) in self.columns.iter_mut().zip(row) {
            col.push(v);
        }
        self.rows += 1;
        Ok(())
    }

    /// Converts the pending rows into a batch and starts over. A value that does not
    /// convert is a data error naming the column, its type and the row.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let rows = std::mem::replace(&mut self.rows, 0);
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (field, values) in self.schema.fields().iter().zip(self.columns.iter_mut()) {
            let values = std::mem::take(values);
            let array = column_array(field.name(), field.data_type(), values, rows)?;
            arrays.push(array);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

fn column_array(
    name: &str,
    target: &DataType,
    values: Vec<Value>,
    rows: usize,
) -> Result<ArrayRef> {
    let kind = values.iter().find(|v| !matches!(v, Value::Null)).cloned();
    let natural: ArrayRef = match kind {
        None => return Ok(new_null_array(target, rows)),
        Some(Value::Bool(_)) => Arc::new(
            values
                .iter()
                .map(|v| {
                    typed(name, v, |v| {
                        if let Value::Bool(b) = v {
                            Some(*b)
                        } else {
                            None
                        }
                    })
                })
                .collect::<Result<BooleanArray>>()?,
        ),
        Some(Value::Int(_)) => Arc::new(
            values
                .iter()
                .map(|v| {
                    typed(name, v, |v| {
                        if let Value::Int(b) = v {
                            Some(*b)
                        } else {
                            None
                        }
                    })
                })
                .collect::<Result<Int64Array>>()?,
        ),
        Some(Value::UInt(_)) => Arc::new(
            values
                .iter()
                .map(|v| {
                    typed(name, v, |v| {
                        if let Value::UInt(b) = v {
                            Some(*b)
                        } else {
                            None
                        }
                    })
                })
                .collect::<Result<UInt64Array>>()?,
        ),
        Some(Value::Float(_)) => Arc::new(
            values
                .iter()
                .map(|v| {
                    typed(name, v, |v| {
                        if let Value::Float(b) = v {
                            Some(*b)
                        } else {
                            None
                        }
                    })
                })
                .collect::<Result<Float64Array>>()?,
        ),
        Some(Value::Str(_)) => Arc::new(
            values
                .iter()
                .map(|v| {
                    typed(name, v, |v| {
                        if let Value::Str(s) = v {
                            Some(s.as_str())
                        } else {
                            None
                        }
                    })
                })
                .collect::<Result<StringArray>>()?,
        ),
        Some(Value::Bytes(_)) => Arc::new(
            values
                .iter()
                .map(|v| {
                    typed(name, v, |v| {
                        if let Value::Bytes(s) = v {
                            Some(s.as_slice())
                        } else {
                            None
                        }
                    })
                })
                .collect::<Result<BinaryArray>>()?,
        ),
        Some(Value::Null) => unreachable!("filtered above"),
    };
    if natural.data_type() == target {
        return Ok(natural);
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(&natural, target, &options).map_err(|e| {
        Error::data(format!(
            "column \"{name}\": cannot convert {} values to {target}",
            natural.data_type()
        ))
        .with_source(e)
    })
}

fn typed<'a, T>(
    name: &str,
    v: &'a Value,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>> {
    match v {
        Value::Null => Ok(None),
        other => get(other).map(Some).ok_or_else(|| {
            Error::data(format!(
                "column \"{name}\": mixed value kinds in one column ({other:?})"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Decimal128Array, TimestampMicrosecondArray};
    use arrow_schema::{Field, Schema, TimeUnit};

    #[test]
    fn builds_typed_columns_from_text_and_ints() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Decimal128(12, 2), true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("n", DataType::Int32, true),
        ]));
        let mut b = RowBuilder::new(schema);
        b.push_row(vec![
            Value::Str("12.30".into()),
            Value::Int(1_000_000),
            Value::Int(7),
        ])
        .unwrap();
        b.push_row(vec![Value::Null, Value::Null, Value::Null])
            .unwrap();
        let batch = b.finish().unwrap();
        let d = batch
            .column(0)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(d.value(0), 1230);
        assert!(d.is_null(1));
        let t = batch
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(t.value(0), 1_000_000);
        assert!(b.is_empty());
    }

    #[test]
    fn unconvertible_value_names_the_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, true)]));
        let mut b = RowBuilder::new(schema);
        b.push_row(vec![Value::Str("abc".into())]).unwrap();
        let err = b.finish().unwrap_err();
        assert!(err.to_string().contains("column \"n\""), "{err}");
    }
}
