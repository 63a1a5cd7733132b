//! A table as the source reads it: its columns, order key and offset, and the binary
//! COPY statements that read it in key order or in physical (`ctid`) order.

use arrow_schema::SchemaRef;
use connector_api::{Error, Result};
use sqlx::postgres::PgPool;

use crate::conn::quote;
use crate::error::pg_error;

use super::{BlockRange, TableOffset};

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
    /// A key range of the table (`LO <= key < HI` of its one key column), when
    /// runtimes that share the snapshot cut it so ([`super::shares`]).
    pub(super) bounds: Option<super::shares::Bounds>,
}

/// Blocks per range at least when a table is cut into ranges (1 MiB of 8 KiB
/// blocks): a smaller table is one range, as its own COPY would cost more than it
/// saves.
const RANGE_BLOCKS: u64 = 128;

/// The rows of `range` not yet delivered, as conditions on `ctid`: bounds make it a
/// TID range scan.
fn range_conditions(range: &BlockRange) -> Result<Vec<String>> {
    let mut conditions = Vec::with_capacity(2);
    match range.ctid.as_deref().map(Tid::parse).transpose()? {
        Some(t) => conditions.push(format!("__sluice_t.ctid > '{}'::tid", t.text())),
        None if range.from > 0 => {
            conditions.push(format!("__sluice_t.ctid >= '({},0)'::tid", range.from))
        }
        None => {}
    }
    if let Some(to) = range.to {
        conditions.push(format!("__sluice_t.ctid < '({to},0)'::tid"));
    }
    Ok(conditions)
}

/// `blocks` cut into up to `readers` ranges of at least [`RANGE_BLOCKS`]; the last
/// runs to the table's end.
fn plan_ranges(blocks: u64, readers: usize) -> Vec<BlockRange> {
    let n = (blocks / RANGE_BLOCKS).clamp(1, readers as u64);
    let edge = |i: u64| u32::try_from(blocks * i / n).unwrap_or(u32::MAX);
    (0..n)
        .map(|i| BlockRange {
            from: edge(i),
            to: (i + 1 < n).then(|| edge(i + 1)),
            ..BlockRange::default()
        })
        .collect()
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
    let ctid = offset
        .ctid
        .as_ref()
        .or_else(|| offset.ranges.iter().find_map(|r| r.ctid.as_ref()));
    let (read_in, up_to) = match (&offset.after, ctid) {
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

/// Where a physical-order snapshot of `relation` starts: the stored block ranges,
/// each after its last delivered `ctid`; or, on a first run or when the table was
/// rewritten since (its rows have moved), ranges planned afresh for `readers`.
pub(super) async fn open_physical(
    pool: &PgPool,
    relation: &str,
    offset: &mut TableOffset,
    readers: usize,
) -> Result<()> {
    let (file, blocks) = filenode(pool, relation).await?;
    if offset.done {
        return Ok(());
    }
    if let Some(ctid) = offset.ctid.take() {
        offset.ranges = vec![BlockRange {
            ctid: Some(ctid),
            ..BlockRange::default()
        }];
    }
    if offset.started() && offset.filenode != Some(file) {
        tracing::warn!(table = %relation, "the table was rewritten since the last run (VACUUM FULL, CLUSTER or a rewriting ALTER TABLE): its rows have moved, so its snapshot starts again from the first block");
        offset.ranges.clear();
    }
    offset.filenode = Some(file);
    if offset.ranges.is_empty() {
        offset.ranges = plan_ranges(blocks, readers);
    }
    Ok(())
}

/// The table's file (`relfilenode`), which rewriting the table replaces, and its
/// size in blocks.
pub(super) async fn filenode(pool: &PgPool, relation: &str) -> Result<(u32, u64)> {
    let (filenode, blocks): (i64, i64) = sqlx::query_as(
        "SELECT relfilenode::int8, pg_relation_size(oid) / current_setting('block_size')::int8 \
         FROM pg_class WHERE oid = $1::regclass",
    )
    .bind(relation)
    .fetch_one(pool)
    .await
    .map_err(|e| pg_error(format!("file of {relation}"), e))?;
    Ok((
        u32::try_from(filenode).unwrap_or(0),
        u64::try_from(blocks).unwrap_or(0),
    ))
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

    /// The rows of block range `range` not yet delivered, in physical order, as a
    /// binary COPY: the table's columns, then the `ctid` (for the offset).
    pub(super) fn copy_range(&self, range: usize) -> Result<String> {
        let range = self.range(range)?;
        Ok(format!(
            "COPY (SELECT {}, __sluice_t.ctid AS __sluice_k0 FROM {} AS __sluice_t {}) TO STDOUT (FORMAT binary)",
            self.select_list(),
            self.relation,
            where_all(&range_conditions(range)?)
        ))
    }

    /// Block range `at` of the offset.
    fn range(&self, at: usize) -> Result<&BlockRange> {
        self.offset
            .ranges
            .get(at)
            .ok_or_else(|| Error::internal(format!("{}: no block range {at}", self.split)))
    }

    /// `table.schema.name blocks 0..1024`, for messages.
    pub(super) fn range_name(&self, at: usize) -> String {
        match self.offset.ranges.get(at) {
            Some(BlockRange {
                from, to: Some(to), ..
            }) => {
                format!("{} blocks {from}..{to}", self.split)
            }
            Some(BlockRange {
                from: 0, to: None, ..
            })
            | None => self.split.clone(),
            Some(BlockRange { from, .. }) => format!("{} blocks {from}..", self.split),
        }
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
        if let (Some((lo, hi)), [key]) = (self.bounds, keys.as_slice()) {
            conditions.extend(lo.map(|lo| format!("{key} >= {lo}")));
            conditions.extend(hi.map(|hi| format!("{key} < {hi}")));
        }
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

    /// `EXPLAIN`s of the table's rows (`rest`: those after its offset), whose plans'
    /// row estimates cost no scan and add up: one per block range not done (the
    /// planner would take ranges joined by OR as overlapping), else one.
    pub(super) fn explain(&self, rest: bool) -> Result<Vec<String>> {
        let explain = |filter: String| {
            format!(
                "EXPLAIN SELECT 1 FROM {} AS __sluice_t {filter}",
                self.relation
            )
        };
        match (rest, self.physical) {
            (false, _) => Ok(vec![explain(String::new())]),
            (true, true) => self
                .offset
                .ranges
                .iter()
                .filter(|r| !r.done)
                .map(|r| Ok(explain(where_all(&range_conditions(r)?))))
                .collect(),
            (true, false) => Ok(vec![explain(where_all(
                self.key_condition(self.offset.after.as_deref()).as_slice(),
            ))]),
        }
    }

    /// Moves block range `at` to the row at `ctid` (the last of a part). Rows come in
    /// block order from the scan and stay inside the range; one that does not is an
    /// error, never a silently wrong resume point.
    pub(super) fn advance(&mut self, at: usize, ctid: &[String]) -> Result<()> {
        let text = ctid.first().map(String::as_str).unwrap_or_default();
        let tid = Tid::parse(text)?;
        let name = self.range_name(at);
        let range = self.range(at)?;
        let previous = range.ctid.as_deref().map(Tid::parse).transpose()?;
        if previous.is_some_and(|p| tid <= p)
            || tid.block < range.from
            || range.to.is_some_and(|to| tid.block >= to)
        {
            return Err(Error::internal(format!(
                "{name}: rows arrived out of physical order (ctid {} after {})",
                tid.text(),
                previous.map_or("the range's start".to_owned(), Tid::text),
            )));
        }
        if let Some(range) = self.offset.ranges.get_mut(at) {
            range.ctid = Some(text.to_owned());
        }
        Ok(())
    }

    /// Block range `at` was read to its end; the table is done with its last range.
    pub(super) fn finish(&mut self, at: usize) {
        if let Some(range) = self.offset.ranges.get_mut(at) {
            range.done = true;
        }
        self.offset.done = self.offset.ranges.iter().all(|r| r.done);
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
            ranges: vec![BlockRange {
                ctid: Some("(7,3)".into()),
                ..BlockRange::default()
            }],
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

    #[test]
    fn a_table_is_cut_into_ranges_of_at_least_1_mib_the_last_open_ended() {
        let one = plan_ranges(127, 4);
        assert_eq!(one, vec![BlockRange::default()]);
        let two = plan_ranges(256 + 5, 4);
        assert_eq!(
            two.iter().map(|r| (r.from, r.to)).collect::<Vec<_>>(),
            vec![(0, Some(130)), (130, None)]
        );
        let four = plan_ranges(100_000, 4);
        assert_eq!(
            four.iter().map(|r| (r.from, r.to)).collect::<Vec<_>>(),
            vec![
                (0, Some(25_000)),
                (25_000, Some(50_000)),
                (50_000, Some(75_000)),
                (75_000, None)
            ]
        );
        assert_eq!(plan_ranges(0, 4).len(), 1);
    }

    #[test]
    fn a_range_resumes_after_its_last_row_and_stops_before_the_next() {
        let fresh = BlockRange {
            from: 10,
            to: Some(20),
            ..BlockRange::default()
        };
        assert_eq!(
            range_conditions(&fresh).unwrap(),
            vec![
                "__sluice_t.ctid >= '(10,0)'::tid",
                "__sluice_t.ctid < '(20,0)'::tid"
            ]
        );
        let resumed = BlockRange {
            ctid: Some("(12,7)".into()),
            to: None,
            ..fresh
        };
        assert_eq!(
            range_conditions(&resumed).unwrap(),
            vec!["__sluice_t.ctid > '(12,7)'::tid"]
        );
        assert!(range_conditions(&BlockRange::default()).unwrap().is_empty());
    }
}
