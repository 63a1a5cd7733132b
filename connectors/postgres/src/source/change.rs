//! One change of the stream as the records the source emits: the row envelope (the
//! row plus `_op`) or Debezium's, typed by the table's schema.

use connector_api::{Error, Result};
use serde_json::{Map, Value};

use super::envelope::source_json;
use super::table::Table;
use crate::cdc::lsn_text;
use crate::cdc::pgoutput::{Datum, Message, Old, RelationColumn};
use crate::cdc::values::json_value;

/// One change message and where it stands.
pub(super) struct Change<'a> {
    pub(super) table: &'a Table,
    pub(super) layout: &'a [RelationColumn],
    pub(super) lsn: u64,
    pub(super) xid: u32,
    pub(super) ts_ms: i64,
}

impl Change<'_> {
    /// The records of a change: one, or for an update that changed the key, a
    /// delete of the old key and a create of the new row (as Debezium does), so
    /// that an upsert sink ends with the source's rows.
    pub(super) fn records(&self, message: Message) -> Result<Vec<Value>> {
        Ok(match message {
            Message::Insert { new, .. } => {
                vec![self.record("c", Some(self.row(&new, None)?), None)]
            }
            Message::Update { old, new, .. } => {
                let after = self.row(&new, old.as_ref())?;
                let before = old
                    .as_ref()
                    .map(|o| self.row(o.values(), None))
                    .transpose()?;
                match (&old, before) {
                    (Some(old), Some(before)) if self.key_changed(old.values(), &new) => vec![
                        self.record("d", None, Some(before)),
                        self.record("c", Some(after), None),
                    ],
                    (_, before) => vec![self.record("u", Some(after), before)],
                }
            }
            Message::Delete { old, .. } => {
                let before = self.row(old.values(), None)?;
                vec![self.record("d", None, Some(before))]
            }
            Message::Truncate { .. } => vec![self.record("t", None, None)],
            Message::Relation(_) | Message::Other => Vec::new(),
        })
    }

    /// A key column has another value in `new` than in `old`.
    fn key_changed(&self, old: &[Datum], new: &[Datum]) -> bool {
        self.table.key.iter().any(|&k| {
            let name = &self.table.columns[k].name;
            self.layout
                .iter()
                .position(|c| &c.name == name)
                .is_some_and(|i| match (old.get(i), new.get(i)) {
                    (_, Some(Datum::Unchanged)) => false,
                    (a, b) => a != b,
                })
        })
    }

    /// A record in the source's envelope.
    fn record(
        &self,
        op: &str,
        after: Option<Map<String, Value>>,
        before: Option<Map<String, Value>>,
    ) -> Value {
        if self.table.debezium {
            return serde_json::json!({
                "before": before.map(Value::Object),
                "after": after.map(Value::Object),
                "op": op,
                "ts_ms": self.ts_ms,
                "source": source_json(&self.table.split, Some(self.lsn), Some(self.xid), self.ts_ms, false),
            });
        }
        // the row envelope: the new row, or the old key of a delete
        let mut row = after.or(before).unwrap_or_default();
        row.insert(
            connector_api::columns::OP.to_string(),
            Value::String(op.to_string()),
        );
        Value::Object(row)
    }

    /// A tuple as JSON typed by the table's schema. An unchanged out-of-line value is
    /// taken from the old row when the server sent it, and is an error otherwise:
    /// never written as NULL.
    fn row(&self, values: &[Datum], old: Option<&Old>) -> Result<Map<String, Value>> {
        let mut row = Map::new();
        for (i, column) in self.layout.iter().enumerate() {
            let value = match values.get(i) {
                Some(Datum::Unchanged) => match old.and_then(|o| o.values().get(i)) {
                    Some(Datum::Text(t)) => Some(t),
                    Some(Datum::Null) if matches!(old, Some(Old::Full(_))) => None,
                    _ => return Err(self.unchanged(&column.name)),
                },
                Some(Datum::Text(t)) => Some(t),
                _ => None,
            };
            let Some(text) = value else {
                continue;
            };
            let dt = self
                .table
                .table_schema
                .field_with_name(&column.name)
                .map(|f| f.data_type().clone())
                .unwrap_or(arrow_schema::DataType::Utf8);
            row.insert(column.name.clone(), json_value(text, &dt));
        }
        Ok(row)
    }

    fn unchanged(&self, column: &str) -> Error {
        Error::schema(format!(
            "table {}: the change at LSN {} left column \"{column}\" unchanged (an out-of-line TOAST value) and the \
             server did not send its value, so it cannot be written without losing it. Run ALTER TABLE {} REPLICA \
             IDENTITY FULL; then re-snapshot: `sluice offsets reset` and clear the target",
            self.table.split,
            lsn_text(self.lsn),
            self.table.relation
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_schema::{DataType, Field, Schema};
    use sluice_formats::JsonDecoder;

    use super::*;
    use crate::source::table::Column;

    fn table(debezium: bool) -> Table {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("body", DataType::Utf8, true),
        ]));
        Table {
            split: "public.t".into(),
            relation: "\"public\".\"t\"".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    pg: "bigint".into(),
                },
                Column {
                    name: "body".into(),
                    pg: "text".into(),
                },
            ],
            key: vec![0],
            decoder: JsonDecoder::new(Some(schema.clone())),
            table_schema: schema.clone(),
            row_schema: schema,
            debezium,
            offset: Default::default(),
            op: true,
            physical: false,
            cursor: None,
        }
    }

    fn layout() -> Vec<RelationColumn> {
        ["id", "body"]
            .iter()
            .map(|n| RelationColumn {
                key: *n == "id",
                name: n.to_string(),
                type_oid: 0,
                typmod: -1,
            })
            .collect()
    }

    fn text(v: &str) -> Datum {
        Datum::Text(v.into())
    }

    #[test]
    fn a_key_update_is_a_delete_of_the_old_key_then_a_create() {
        let (t, l) = (table(false), layout());
        let at = Change {
            table: &t,
            layout: &l,
            lsn: 1,
            xid: 2,
            ts_ms: 3,
        };
        let update = Message::Update {
            rel: 1,
            old: Some(Old::Key(vec![text("5"), Datum::Null])),
            new: vec![text("100"), text("b")],
        };
        let records = at.records(update).unwrap();
        assert_eq!(
            records,
            vec![
                serde_json::json!({"id": 5, "_op": "d"}),
                serde_json::json!({"id": 100, "body": "b", "_op": "c"}),
            ]
        );
        let same_key = Message::Update {
            rel: 1,
            old: Some(Old::Full(vec![text("7"), text("a")])),
            new: vec![text("7"), text("b")],
        };
        assert_eq!(
            at.records(same_key).unwrap(),
            vec![serde_json::json!({"id": 7, "body": "b", "_op": "u"})]
        );
    }

    #[test]
    fn an_unchanged_toasted_value_comes_from_the_old_row_or_is_an_error_never_null() {
        let (t, l) = (table(true), layout());
        let at = Change {
            table: &t,
            layout: &l,
            lsn: 0x10,
            xid: 2,
            ts_ms: 3,
        };
        let full = Message::Update {
            rel: 1,
            old: Some(Old::Full(vec![text("1"), text("big")])),
            new: vec![text("1"), Datum::Unchanged],
        };
        let records = at.records(full).unwrap();
        assert_eq!(records[0]["after"]["body"], "big");
        assert_eq!(records[0]["op"], "u");
        let without_old = Message::Update {
            rel: 1,
            old: None,
            new: vec![text("1"), Datum::Unchanged],
        };
        let e = at.records(without_old).unwrap_err();
        assert!(
            e.message().contains("column \"body\"")
                && e.message().contains("REPLICA IDENTITY FULL"),
            "{e}"
        );
    }
}
