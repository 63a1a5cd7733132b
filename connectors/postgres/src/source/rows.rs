//! Changes decoded into Arrow builders, in the records the source emits (the row plus
//! `_op`, or Debezium's envelope), until they are returned as one batch.

use std::sync::Arc;

use arrow_array::builder::{make_builder, ArrayBuilder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Fields, SchemaRef};
use connector_api::{Error, Reject, Result};

use super::change::Change;
use super::envelope::record_schema;
use super::table::Table;
use crate::value::{append, append_null, Kind, Value};

/// One row's columns being built: the row envelope's row, or Debezium's `before` or
/// `after` (with whether the record has one).
struct Side {
    builders: Vec<Box<dyn ArrayBuilder>>,
    present: Vec<bool>,
}

impl Side {
    fn new(schema: &SchemaRef) -> Side {
        Side {
            builders: schema
                .fields()
                .iter()
                .map(|f| make_builder(f.data_type(), 0))
                .collect(),
            present: Vec::new(),
        }
    }

    fn push(&mut self, kinds: &[Kind], values: Option<&[Value]>) {
        for (i, (b, kind)) in self.builders.iter_mut().zip(kinds).enumerate() {
            match values {
                Some(v) => append(b.as_mut(), kind, &v[i]),
                None => append_null(b.as_mut(), kind),
            }
        }
        self.present.push(values.is_some());
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.present.clear();
        self.builders.iter_mut().map(|b| b.finish()).collect()
    }

    /// The columns as a struct, null where the record has none.
    fn finish_struct(&mut self, fields: Fields) -> Result<StructArray> {
        let nulls = Some(self.present.clone().into());
        StructArray::try_new(fields, self.finish(), nulls)
            .map_err(|e| Error::internal("change records").with_source(e))
    }
}

/// The changes decoded and not yet returned.
pub(super) struct Rows {
    schema: SchemaRef,
    kinds: Vec<Kind>,
    debezium: bool,
    /// The row (row envelope) or `after` (Debezium).
    after: Side,
    /// Debezium's `before`.
    before: Side,
    op: StringBuilder,
    /// Debezium's source position and times.
    lsn: Int64Builder,
    xid: Int64Builder,
    ts_ms: Int64Builder,
    rejects: Vec<Reject>,
    /// Each record's position in the stream.
    positions: Vec<u128>,
    /// Records and rejects.
    len: usize,
}

impl Rows {
    /// Builders for `table`'s records.
    pub(super) fn new(table: &Table) -> Result<Rows> {
        let pg_types = table.columns.iter().map(|c| c.pg.as_str());
        let kinds = crate::value::kinds(table.table_schema.fields(), pg_types)
            .map_err(|e| e.context(format!("table {}", table.split)))?;
        Ok(Rows {
            schema: record_schema(&table.table_schema, true, table.debezium),
            kinds,
            debezium: table.debezium,
            after: Side::new(&table.table_schema),
            before: Side::new(&table.table_schema),
            op: StringBuilder::new(),
            lsn: Int64Builder::new(),
            xid: Int64Builder::new(),
            ts_ms: Int64Builder::new(),
            rejects: Vec::new(),
            positions: Vec::new(),
            len: 0,
        })
    }

    /// How each of the table's columns is read.
    pub(super) fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// Records and rejects so far.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// One record: `op` with the row after and before the change (the row envelope
    /// carries the one after, or the old key of a delete).
    pub(super) fn push(
        &mut self,
        at: &Change,
        op: &str,
        after: Option<&[Value]>,
        before: Option<&[Value]>,
    ) {
        self.op.append_value(op);
        if self.debezium {
            self.after.push(&self.kinds, after);
            self.before.push(&self.kinds, before);
            self.lsn.append_value(at.lsn as i64);
            self.xid.append_value(i64::from(at.xid));
            self.ts_ms.append_value(at.ts_ms);
        } else {
            self.after.push(&self.kinds, after.or(before));
        }
        // the second record of one change comes just after the first
        let next = self.positions.last().map_or(0, |p| p + 1);
        self.positions.push(at.position.max(next));
        self.len += 1;
    }

    /// The positions of the records [`Rows::finish`] returns; empty after.
    pub(super) fn take_positions(&mut self) -> Vec<u128> {
        std::mem::take(&mut self.positions)
    }

    pub(super) fn reject(&mut self, reject: Reject) {
        self.rejects.push(reject);
        self.len += 1;
    }

    /// The records as one batch, and the rejects; empty after.
    pub(super) fn finish(&mut self, split: &str) -> Result<(RecordBatch, Vec<Reject>)> {
        let records = self.len - self.rejects.len();
        self.len = 0;
        let rejects = std::mem::take(&mut self.rejects);
        let arrow = |e| Error::internal("change records").with_source(e);
        if !self.debezium {
            let mut columns = self.after.finish();
            columns.push(Arc::new(self.op.finish()));
            let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(arrow)?;
            return Ok((batch, rejects));
        }
        let fields = |name: &str| match self.schema.field_with_name(name).map(|f| f.data_type()) {
            Ok(DataType::Struct(f)) => Ok(f.clone()),
            _ => Err(Error::internal(format!("envelope has no {name} struct"))),
        };
        let (row_fields, source_fields) = (fields("after")?, fields("source")?);
        let (schema_name, table) = split.split_once('.').unwrap_or(("", split));
        let text = |v: &str| Arc::new(StringArray::from(vec![v; records])) as ArrayRef;
        let source = StructArray::try_new(
            source_fields,
            vec![
                text("postgresql"),
                text(schema_name),
                text(table),
                Arc::new(self.lsn.finish()),
                Arc::new(self.xid.finish()),
                Arc::new(self.ts_ms.finish()) as ArrayRef,
                text("false"),
            ],
            None,
        )
        .map_err(arrow)?;
        let ts_ms = source.column(5).clone();
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(self.before.finish_struct(row_fields.clone())?),
                Arc::new(self.after.finish_struct(row_fields)?),
                Arc::new(source),
                Arc::new(self.op.finish()),
                ts_ms,
            ],
        )
        .map_err(arrow)?;
        Ok((batch, rejects))
    }
}
