//! One change of the stream as the records the source emits: the row envelope (the
//! row plus `_op`) or Debezium's, typed by the table's schema. Values go from
//! pgoutput's text output straight into Arrow builders ([`crate::value::text`]), as the
//! snapshot's go from binary COPY, so a column reads the same in both: a value that
//! does not fit its column is a reject naming the column and the change's LSN, and the
//! changes around it stay.

use std::borrow::Cow;

use connector_api::{Error, Reject, Result};
use serde_json::{Map, Value as Json};

use super::rows::Rows;
use super::table::Table;
use crate::cdc::lsn_text;
use crate::cdc::pgoutput::{Datum, Message, Old, RelationColumn};
use crate::value::{text, Kind, Value};

/// The table's columns as the stream describes them (a Relation message), and where
/// each one is in the table's schema.
pub(super) struct Layout {
    pub(super) columns: Vec<RelationColumn>,
    /// Per column of the stream: its index in the table's schema (None: not in it).
    slots: Vec<Option<usize>>,
}

impl Layout {
    pub(super) fn new(columns: Vec<RelationColumn>, table: &Table) -> Layout {
        let slots = columns
            .iter()
            .map(|c| table.table_schema.index_of(&c.name).ok())
            .collect();
        Layout { columns, slots }
    }
}

/// One change message and where it stands.
pub(super) struct Change<'a> {
    pub(super) table: &'a Table,
    pub(super) layout: &'a Layout,
    pub(super) lsn: u64,
    pub(super) xid: u32,
    pub(super) ts_ms: i64,
    /// Where the change lies in the stream for good ([`change_position`]).
    pub(super) position: u128,
}

/// The position of the `index`th change (0-based) of the table in the transaction
/// that commits at `final_lsn`: that LSN above, the index shifted by one (the second
/// record of an update that changed the key takes the odd one). Positions rise in
/// commit order, and the same change has the same one in every read.
pub(super) fn change_position(final_lsn: u64, index: u64) -> u128 {
    (u128::from(final_lsn) << 64) | (u128::from(index) << 1)
}

/// A row in the table's column order, or why one of its values does not fit.
type Row<'m> = std::result::Result<Vec<Value<'m>>, Error>;

impl Change<'_> {
    /// Appends the records of a change to `rows`: one, or for an update that changed
    /// the key, a delete of the old key and a create of the new row (as Debezium does),
    /// so that an upsert sink ends with the source's rows. A value that does not fit
    /// its column makes its record a reject.
    pub(super) fn append(&self, message: &Message, rows: &mut Rows) -> Result<()> {
        match message {
            Message::Insert { new, .. } => match self.row(rows.kinds(), new, None, false)? {
                Ok(after) => rows.push(self, "c", Some(&after), None),
                Err(e) => rows.reject(self.reject("c", Some(new), None, e)),
            },
            Message::Update { old, new, .. } => {
                let old_values = old.as_ref().map(Old::values);
                let key_changed = old_values.is_some_and(|o| self.key_changed(o, new));
                let after = self.row(rows.kinds(), new, old.as_ref(), false)?;
                let before = match old_values {
                    Some(o) if key_changed || self.table.debezium => {
                        Some(self.before(rows.kinds(), o)?)
                    }
                    _ => None,
                };
                match (after, before) {
                    (after, Some(before)) if key_changed => {
                        match before {
                            Ok(b) => rows.push(self, "d", None, Some(&b)),
                            Err(e) => rows.reject(self.reject("d", None, old_values, e)),
                        }
                        match after {
                            Ok(a) => rows.push(self, "c", Some(&a), None),
                            Err(e) => rows.reject(self.reject("c", Some(new), None, e)),
                        }
                    }
                    (Ok(after), None) => rows.push(self, "u", Some(&after), None),
                    (Ok(after), Some(Ok(before))) => {
                        rows.push(self, "u", Some(&after), Some(&before))
                    }
                    (Err(e), _) | (_, Some(Err(e))) => {
                        rows.reject(self.reject("u", Some(new), old_values, e))
                    }
                }
            }
            Message::Delete { old, .. } => match self.before(rows.kinds(), old.values())? {
                Ok(before) => rows.push(self, "d", None, Some(&before)),
                Err(e) => rows.reject(self.reject("d", None, Some(old.values()), e)),
            },
            Message::Truncate { .. } => rows.push(self, "t", None, None),
            Message::Relation(_) | Message::Other => {}
        }
        Ok(())
    }

    /// The old row of an update or a delete as its record carries it: whole in
    /// Debezium's `before`; in the row envelope whole when it fits, else its key (all a
    /// delete needs: a value of the old row that did not fit was a reject when the row
    /// was written, and must not hold back its update or delete).
    fn before<'m>(&self, kinds: &[Kind], old: &'m [Datum]) -> Result<Row<'m>> {
        match self.row(kinds, old, None, false)? {
            Err(_) if !self.table.debezium => self.row(kinds, old, None, true),
            whole => Ok(whole),
        }
    }

    /// A key column has another value in `new` than in `old`.
    fn key_changed(&self, old: &[Datum], new: &[Datum]) -> bool {
        self.table.key.iter().any(|&k| {
            let name = &self.table.columns[k].name;
            self.layout
                .columns
                .iter()
                .position(|c| &c.name == name)
                .is_some_and(|i| match (old.get(i), new.get(i)) {
                    (_, Some(Datum::Unchanged)) => false,
                    (a, b) => a != b,
                })
        })
    }

    /// A tuple's values in the table's column order (a column the tuple lacks is
    /// null; with `key_only`, all but the key columns). An unchanged out-of-line value
    /// is taken from the old row when the server sent it, and stops the stream
    /// otherwise: never written as NULL.
    fn row<'m>(
        &self,
        kinds: &[Kind],
        values: &'m [Datum],
        old: Option<&'m Old>,
        key_only: bool,
    ) -> Result<Row<'m>> {
        let mut row: Vec<Value> = (0..self.table.columns.len()).map(|_| Value::Null).collect();
        for (i, (column, slot)) in self
            .layout
            .columns
            .iter()
            .zip(&self.layout.slots)
            .enumerate()
        {
            let text = match values.get(i) {
                Some(Datum::Unchanged) => match old.and_then(|o| o.values().get(i)) {
                    Some(Datum::Text(t)) => Some(t),
                    Some(Datum::Null) if matches!(old, Some(Old::Full(_))) => None,
                    _ => return Err(self.unchanged(&column.name)),
                },
                Some(Datum::Text(t)) => Some(t),
                _ => None,
            };
            let (Some(text), Some(slot)) = (text, *slot) else {
                continue;
            };
            if key_only && !self.table.key.contains(&slot) {
                continue;
            }
            match text::value(&kinds[slot], Cow::Borrowed(text)) {
                Ok(v) => row[slot] = v,
                Err(e) => return Ok(Err(Error::data(format!("column \"{}\": {e}", column.name)))),
            }
        }
        Ok(Ok(row))
    }

    /// The dead letter of a change whose value did not fit: its values as the server
    /// wrote them.
    fn reject(
        &self,
        op: &str,
        new: Option<&[Datum]>,
        old: Option<&[Datum]>,
        error: Error,
    ) -> Reject {
        let tuple = |values: &[Datum]| {
            let columns = self.layout.columns.iter().zip(values).map(|(c, d)| {
                let v = match d {
                    Datum::Null => Json::Null,
                    Datum::Unchanged => Json::String("__unchanged_toast".into()),
                    Datum::Text(t) => Json::String(t.clone()),
                };
                (c.name.clone(), v)
            });
            Json::Object(columns.collect::<Map<_, _>>())
        };
        let raw = serde_json::json!({
            "op": op,
            "after": new.map(tuple),
            "before": old.map(tuple),
        });
        let position = format!(
            "table {} change at LSN {}",
            self.table.split,
            lsn_text(self.lsn)
        );
        Reject::new(self.table.split.clone(), position, raw.to_string(), error)
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

    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use crate::source::table::Column;

    fn table(debezium: bool) -> Table {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("body", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(38, 10), true),
        ]));
        let column = |name: &str, pg: &str| Column {
            name: name.into(),
            pg: pg.into(),
        };
        Table {
            split: "public.t".into(),
            relation: "\"public\".\"t\"".into(),
            columns: vec![
                column("id", "bigint"),
                column("body", "text"),
                column("amount", "numeric(38,10)"),
            ],
            key: vec![0],
            table_schema: schema,
            debezium,
            offset: Default::default(),
            op: true,
            physical: false,
            cursor: None,
            bounds: None,
        }
    }

    fn layout(t: &Table) -> Layout {
        let columns = ["id", "body", "amount"]
            .iter()
            .map(|n| RelationColumn {
                key: *n == "id",
                name: n.to_string(),
                type_oid: 0,
                typmod: -1,
            })
            .collect();
        Layout::new(columns, t)
    }

    fn text(v: &str) -> Datum {
        Datum::Text(v.into())
    }

    /// The records of `messages`, and the rejects.
    fn records(t: &Table, messages: &[Message]) -> Result<(RecordBatch, Vec<Reject>)> {
        let l = layout(t);
        let at = Change {
            table: t,
            layout: &l,
            lsn: 0x10,
            xid: 2,
            ts_ms: 3,
            position: 0,
        };
        let mut rows = Rows::new(t)?;
        for m in messages {
            at.append(m, &mut rows)?;
        }
        rows.finish(&t.split)
    }

    fn column_text(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let c = batch.column_by_name(name).unwrap();
        let c = arrow_cast::cast(c, &DataType::Utf8).unwrap();
        c.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn a_key_update_is_a_delete_of_the_old_key_then_a_create() {
        let t = table(false);
        let update = Message::Update {
            rel: 1,
            old: Some(Old::Key(vec![text("5"), Datum::Null, Datum::Null])),
            new: vec![text("100"), text("b"), text("1.5")],
        };
        let same_key = Message::Update {
            rel: 1,
            old: Some(Old::Full(vec![text("7"), text("a"), Datum::Null])),
            new: vec![text("7"), text("b"), Datum::Null],
        };
        let (batch, rejects) = records(&t, &[update, same_key]).unwrap();
        assert!(rejects.is_empty());
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![5, 100, 7]);
        assert_eq!(
            column_text(&batch, "_op"),
            ["d", "c", "u"].map(|s| Some(s.to_string()))
        );
        assert_eq!(
            column_text(&batch, "body"),
            vec![None, Some("b".into()), Some("b".into())]
        );
    }

    #[test]
    fn an_unchanged_toasted_value_comes_from_the_old_row_or_is_an_error_never_null() {
        let t = table(true);
        let full = Message::Update {
            rel: 1,
            old: Some(Old::Full(vec![text("1"), text("big"), Datum::Null])),
            new: vec![text("1"), Datum::Unchanged, Datum::Null],
        };
        let (batch, _) = records(&t, &[full]).unwrap();
        let after = batch.column_by_name("after").unwrap().as_struct();
        assert_eq!(after.column(1).as_string::<i32>().value(0), "big");
        assert!(batch.column_by_name("before").unwrap().is_valid(0));
        let source = batch.column_by_name("source").unwrap().as_struct();
        assert_eq!(source.column(3).as_primitive::<Int64Type>().value(0), 0x10);
        let without_old = Message::Update {
            rel: 1,
            old: None,
            new: vec![text("1"), Datum::Unchanged, Datum::Null],
        };
        let e = records(&t, &[without_old]).unwrap_err();
        assert!(
            e.message().contains("column \"body\"")
                && e.message().contains("REPLICA IDENTITY FULL"),
            "{e}"
        );
    }

    #[test]
    fn numerics_stay_exact_and_a_value_that_does_not_fit_is_a_reject_naming_its_column() {
        let t = table(false);
        let wide = "1234567890123456789012345678.0123456789";
        let insert = |id: &str, amount: &str| Message::Insert {
            rel: 1,
            new: vec![text(id), Datum::Null, text(amount)],
        };
        let (batch, rejects) = records(
            &t,
            &[
                insert("1", wide),
                insert("2", "1.00000000001"),
                insert("3", "-0.5"),
            ],
        )
        .unwrap();
        assert_eq!(
            column_text(&batch, "amount"),
            vec![Some(wide.into()), Some("-0.5000000000".into())]
        );
        assert_eq!(rejects.len(), 1);
        let r = &rejects[0];
        assert!(
            r.error.message().contains("column \"amount\""),
            "{}",
            r.error
        );
        assert!(r.position.contains("LSN 0/10"), "{}", r.position);
        assert!(r.raw.contains("1.00000000001"), "{}", r.raw);
    }

    #[test]
    fn an_old_value_that_does_not_fit_holds_back_neither_the_update_nor_the_delete() {
        let t = table(false);
        let update = Message::Update {
            rel: 1,
            old: Some(Old::Full(vec![text("1"), Datum::Null, text("NaN")])),
            new: vec![text("1"), Datum::Null, text("1.5")],
        };
        let delete = Message::Delete {
            rel: 1,
            old: Old::Full(vec![text("1"), Datum::Null, text("NaN")]),
        };
        // a key update whose new row does not fit still deletes the old key
        let moved = Message::Update {
            rel: 1,
            old: Some(Old::Key(vec![text("2"), Datum::Null, Datum::Null])),
            new: vec![text("3"), Datum::Null, text("NaN")],
        };
        let (batch, rejects) = records(&t, &[update, delete, moved]).unwrap();
        assert_eq!(
            column_text(&batch, "_op"),
            ["u", "d", "d"].map(|s| Some(s.to_string()))
        );
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 1, 2]);
        assert_eq!(rejects.len(), 1);
        assert!(
            rejects[0].raw.contains("\"op\":\"c\""),
            "{}",
            rejects[0].raw
        );
    }
}
