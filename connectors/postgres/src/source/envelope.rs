//! The shape of the records the source emits: the row (plus `_op` in `cdc`), or
//! Debezium's envelope around it.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{Error, Result};

use super::table::Table;

impl Table {
    /// `rows` of the table as the records this source emits: plus `_op` = `r` in
    /// `cdc`, or inside Debezium's envelope.
    pub(super) fn records(&self, rows: RecordBatch, now_ms: i64) -> Result<RecordBatch> {
        use arrow_array::{Int64Array, StringArray, StructArray};
        if !self.op {
            return Ok(rows);
        }
        let n = rows.num_rows();
        let schema = record_schema(&self.table_schema, true, self.debezium);
        let arrow = |e| Error::internal("snapshot records").with_source(e);
        if !self.debezium {
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec!["r"; n])));
            return RecordBatch::try_new(schema, columns).map_err(arrow);
        }
        let struct_fields = |name: &str| match schema.field_with_name(name).map(|f| f.data_type()) {
            Ok(arrow_schema::DataType::Struct(f)) => Ok(f.clone()),
            _ => Err(Error::internal(format!("envelope has no {name} struct"))),
        };
        let after = StructArray::try_new(struct_fields("after")?, rows.columns().to_vec(), None)
            .map_err(arrow)?;
        let before = arrow_array::new_null_array(schema.field(0).data_type(), n);
        let (schema_name, table) = self.split.split_once('.').unwrap_or(("", &self.split));
        let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let nulls = Arc::new(Int64Array::from(vec![None; n])) as ArrayRef;
        let source = StructArray::try_new(
            struct_fields("source")?,
            vec![
                text("postgresql"),
                text(schema_name),
                text(table),
                nulls.clone(),
                nulls,
                Arc::new(Int64Array::from(vec![now_ms; n])),
                text("true"),
            ],
            None,
        )
        .map_err(arrow)?;
        RecordBatch::try_new(
            schema,
            vec![
                before,
                Arc::new(after),
                Arc::new(source),
                text("r"),
                Arc::new(Int64Array::from(vec![now_ms; n])),
            ],
        )
        .map_err(arrow)
    }
}

/// What the source emits for a table of `schema`: the row (plus `_op` in `cdc`), or
/// Debezium's envelope around it.
pub(super) fn record_schema(schema: &SchemaRef, op: bool, debezium: bool) -> SchemaRef {
    use arrow_schema::DataType;
    if !debezium {
        return if op { with_op(schema) } else { schema.clone() };
    }
    let source = vec![
        Field::new("connector", DataType::Utf8, true),
        Field::new("schema", DataType::Utf8, true),
        Field::new("table", DataType::Utf8, true),
        Field::new("lsn", DataType::Int64, true),
        Field::new("txId", DataType::Int64, true),
        Field::new("ts_ms", DataType::Int64, true),
        Field::new("snapshot", DataType::Utf8, true),
    ];
    sluice_formats::changes::debezium_schema(schema, source.into(), true)
}

/// `schema` plus the `_op` column of change records. Every column is nullable: a
/// delete carries only the key, a truncate no value at all.
pub(super) fn with_op(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(
        connector_api::columns::OP,
        arrow_schema::DataType::Utf8,
        false,
    ));
    Arc::new(Schema::new(fields))
}
