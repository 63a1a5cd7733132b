//! A table as the source reads it: its columns, order key and offset, and the binary
//! COPY statements that read it in key order or in physical (`ctid`) order.

use arrow_schema::SchemaRef;
use connector_api::{Error, Result};
use sqlx::postgres::PgPool;

use crate::conn::quote;
use crate::error::pg_error;

use super::TableOffset;

/// A row's physical position: block and line pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tid {
    pub(super) block: u32,
    pub(super) line: u16,
}

impl Tid {
    /// `(block,line)`, as PostgreSQL writes a `tid`.
    pub(super) fn parse(text: &str) -> Result<Tid> {
        let tid = || {
            let (block, line) = text.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
            Some(Tid {
                block: block.parse().ok()?,
                line: line.parse().ok()?,
            })
        };
        tid().ok_or_else(|| Error::internal(format!("ctid \"{text}\" is not a tid")))
    }

    pub(super) fn text(self) -> String {
        format!("({},{})", self.block, self.line)
    }
}

pub(super) struct Column {
    pub(super) name: String,
    pub(super) pg: String,
}

pub(super) struct Table {
    pub(super) split: String,
    pub(super) relation: String,
    pub(super) columns: Vec<Column>,
    /// Indices (into `columns`) of the order key.
    pub(super) key: Vec<usize>,
    /// The table's columns as Arrow fields.
    pub(super) table_schema: SchemaRef,
    /// `cdc` records in Debezium's envelope.
    pub(super) debezium: bool,
    pub(super) offset: TableOffset,
    /// `cdc`: rows carry `_op`.
    pub(super) op: bool,
    /// `snapshot_order = "physical"`: read in `ctid` order by one streaming COPY.
    pub(super) physical: bool,
    /// `incremental`: how reads by the cursor are kept exact.
    pub(super) cursor: Option<super::cursor::Cursor>,
}

/// `WHERE` the rows come after the physical position `after` (empty for None): a TID
/// range scan.
fn tid_filter(after: Option<Tid>) -> String {
    match after {
        Some(t) => format!("WHERE __sluice_t.ctid > '{}'::tid", t.text()),
        None => String::new(),
    }
}

/// `WHERE` all of `conditions` (empty for none).
fn where_all<S: AsRef<str>>(conditions: &[S]) -> String {
    match conditions {
        [] => String::new(),
        _ => {
            let all: Vec<&str> = conditions.iter().map(AsRef::as_ref).collect();
            format!("WHERE {}", all.join(" AND "))
        }
    }
}

/// A text value as an SQL literal, whatever `standard_conforming_strings` says.
pub(super) fn literal(v: &str) -> String {
    if v.contains('\\') {
        format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// A snapshot left part-way goes on in the order it was read in: an offset of the
/// other order is an error naming the way out.
pub(super) fn same_order(offset: &TableOffset, physical: bool, what: &str) -> Result<()> {
    let (read_in, up_to) = match (&offset.after, &offset.ctid) {
        _ if offset.done => return Ok(()),
        (Some(key), _) if physical => ("key", format!("key ({})", key.join(", "))),
        (_, Some(ctid)) if !physical => ("physical", format!("ctid {ctid}")),
        _ => return Ok(()),
    };
    Err(Error::config(format!(
        "{what} was being read in {read_in} order (up to {up_to}); finish it with \
         snapshot_order = \"{read_in}\", or run `sluice offsets reset` and start over"
    ))
    .with_field("snapshot_order"))
}

/// Where a physical-order snapshot of `relation` starts: after the stored `ctid`, or
/// from the first block if the table was rewritten since (its rows have moved).
pub(super) async fn open_physical(
    pool: &PgPool,
    relation: &str,
    offset: &mut TableOffset,
) -> Result<()> {
    let file = filenode(pool, relation).await?;
    if offset.ctid.is_some() && !offset.done && offset.filenode != Some(file) {
        tracing::warn!(table = %relation, "the table was rewritten since the last run (VACUUM FULL, CLUSTER or a rewriting ALTER TABLE): its rows have moved, so its snapshot starts again from the first block");
        offset.ctid = None;
    }
    offset.filenode = Some(file);
    Ok(())
}

/// The table's file (`relfilenode`): rewriting the table gives it a new one.
pub(super) async fn filenode(pool: &PgPool, relation: &str) -> Result<u32> {
    let (filenode,): (i64,) =
        sqlx::query_as("SELECT relfilenode::int8 FROM pg_class WHERE oid = $1::regclass")
            .bind(relation)
            .fetch_one(pool)
            .await
            .map_err(|e| pg_error(format!("file of {relation}"), e))?;
    Ok(u32::try_from(filenode).unwrap_or(0))
}

impl Table {
    /// The table's columns as a binary COPY reads them.
    pub(super) fn select_list(&self) -> String {
        let exprs: Vec<String> = self
            .columns
            .iter()
            .zip(self.table_schema.fields())
            .map(|(c, f)| crate::binary::select_expr(&c.name, &c.pg, f.data_type()))
            .collect();
        exprs.join(", ")
    }

    /// The columns after the table's columns in each COPY tuple: the order key as
    /// text, or the `ctid` in physical order.
    pub(super) fn key_columns(&self) -> (usize, crate::binary::KeyForm) {
        if self.physical {
            (1, crate::binary::KeyForm::Tid)
        } else {
            (self.key.len(), crate::binary::KeyForm::Text)
        }
    }

    /// The rows after `after` (None: all), in physical order, as a binary COPY: the
    /// table's columns, then the `ctid` (for the offset). A bound on `ctid`
    /// makes it a TID range scan.
    pub(super) fn copy_physical(&self, after: Option<Tid>) -> String {
        let filter = tid_filter(after);
        format!(
            "COPY (SELECT {}, __sluice_t.ctid AS __sluice_k0 FROM {} AS __sluice_t {filter}) TO STDOUT (FORMAT binary)",
            self.select_list(),
            self.relation
        )
    }

    /// The next `limit` rows after the key values `after` (None: from the start), in
    /// key order, as a binary COPY: the table's columns, then the key columns as text
    /// (for the offset). COPY takes no bind parameters, so the key values are inlined
    /// as quoted literals.
    pub(super) fn copy(&self, after: Option<&[String]>, limit: usize) -> String {
        let keys = self.qualified_key();
        let key_text: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| format!("{k}::text AS __sluice_k{n}"))
            .collect();
        let order = keys.join(", ");
        let mut conditions: Vec<String> = self.key_condition(after).into_iter().collect();
        // a batch never ends inside a run of rows with equal cursor values: the next
        // read starts after them
        let limit = match &self.cursor {
            Some(cursor) => {
                conditions.extend(cursor.conditions());
                format!("FETCH FIRST {limit} ROWS WITH TIES")
            }
            None => format!("LIMIT {limit}"),
        };
        let filter = where_all(&conditions);
        format!(
            "COPY (SELECT {}, {} FROM {} AS __sluice_t {filter} ORDER BY {order} {limit}) TO STDOUT (FORMAT binary)",
            self.select_list(),
            key_text.join(", "),
            self.relation
        )
    }

    /// The order key's columns, qualified, so that ORDER BY never means an output
    /// column cast to text.
    pub(super) fn qualified_key(&self) -> Vec<String> {
        self.key
            .iter()
            .map(|&i| format!("__sluice_t.{}", quote(&self.columns[i].name)))
            .collect()
    }

    /// The rows come after the key values `after` (None: no condition). An offset
    /// stored with fewer values than the key has (an incremental read from before the
    /// primary key broke the cursor's ties) compares the columns it has.
    fn key_condition(&self, after: Option<&[String]>) -> Option<String> {
        let values = after?;
        let marks: Vec<String> = self
            .key
            .iter()
            .zip(values)
            .map(|(&i, v)| format!("{}::{}", literal(v), self.columns[i].pg))
            .collect();
        let keys = self.qualified_key();
        Some(format!(
            "({}) > ({})",
            keys[..marks.len()].join(", "),
            marks.join(", ")
        ))
    }

    /// `EXPLAIN` of the table's rows (`rest`: those after its offset), whose plan's
    /// row estimate costs no scan.
    pub(super) fn explain(&self, rest: bool) -> Result<String> {
        let filter = match (rest, self.physical) {
            (false, _) => String::new(),
            (true, true) => tid_filter(self.offset.ctid.as_deref().map(Tid::parse).transpose()?),
            (true, false) => where_all(self.key_condition(self.offset.after.as_deref()).as_slice()),
        };
        Ok(format!(
            "EXPLAIN SELECT 1 FROM {} AS __sluice_t {filter}",
            self.relation
        ))
    }

    /// Moves the physical-order offset to the row at `ctid` (the last of a part). Rows
    /// come in block order from the scan; one that does not is an error, never a
    /// silently wrong resume point.
    pub(super) fn advance_ctid(&mut self, ctid: &[String]) -> Result<()> {
        let text = ctid.first().map(String::as_str).unwrap_or_default();
        let tid = Tid::parse(text)?;
        if let Some(previous) = self.offset.ctid.as_deref().map(Tid::parse).transpose()? {
            if tid <= previous {
                return Err(Error::internal(format!(
                    "{}: rows arrived out of physical order (ctid {} after {})",
                    self.split,
                    tid.text(),
                    previous.text()
                )));
            }
        }
        self.offset.ctid = Some(text.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_snapshot_left_part_way_goes_on_in_its_own_order() {
        let keyed = TableOffset {
            after: Some(vec!["42".into()]),
            ..TableOffset::default()
        };
        let physical = TableOffset {
            ctid: Some("(7,3)".into()),
            ..TableOffset::default()
        };
        assert!(same_order(&keyed, false, "table t").is_ok());
        assert!(same_order(&physical, true, "table t").is_ok());
        let e = same_order(&keyed, true, "table t").unwrap_err();
        assert_eq!(e.field(), Some("snapshot_order"));
        assert!(
            e.message().contains("read in key order (up to key (42))"),
            "{e}"
        );
        let e = same_order(&physical, false, "table t").unwrap_err();
        assert!(
            e.message()
                .contains("read in physical order (up to ctid (7,3))"),
            "{e}"
        );
        let done = TableOffset {
            done: true,
            ..keyed
        };
        assert!(same_order(&done, true, "table t").is_ok());
    }

    #[test]
    pub(super) fn a_tid_reads_as_postgres_writes_it_and_orders_by_block_then_line() {
        let t = Tid::parse("(12,5)").unwrap();
        assert_eq!((t.block, t.line), (12, 5));
        assert_eq!(t.text(), "(12,5)");
        assert!(Tid::parse("(12,6)").unwrap() > t && Tid::parse("(13,1)").unwrap() > t);
        assert!(Tid::parse("12,5").is_err() && Tid::parse("(12,x)").is_err());
    }
}
