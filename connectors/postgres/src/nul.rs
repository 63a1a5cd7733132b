//! Text PostgreSQL cannot hold: a NUL character (`\0`), which `text`, `varchar` and
//! `jsonb` refuse. COPY would fail the whole write with the server's `invalid byte
//! sequence for encoding "UTF8": 0x00`, naming neither row nor column; the sink refuses
//! such rows before it writes anything instead ([`connector_api::Error::refused`]).

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use connector_api::{Error, Reject, Result};

/// The rows of `batch` with a NUL character in any text value (nested in lists and
/// structs too), each a reject naming `table`, the row and the column.
pub fn refused(batch: &RecordBatch, table: &str) -> Result<Vec<(usize, Reject)>> {
    let schema = batch.schema_ref();
    // (row, column): the first column with a NUL names the row
    let mut found: Vec<(usize, usize)> = Vec::new();
    for (i, column) in batch.columns().iter().enumerate() {
        found.extend(rows_with_nul(column).into_iter().map(|row| (row, i)));
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    found.sort_unstable();
    found.dedup_by_key(|(row, _)| *row);
    let texts = sluice_formats::row_texts(batch)?;
    Ok(found
        .into_iter()
        .map(|(row, column)| {
            let column = schema.field(column).name();
            let error = Error::data(format!(
                "column \"{column}\": text with a NUL character (\\0), which PostgreSQL cannot store"
            ));
            let position = format!("table {table} row {row} of the write");
            let raw = texts[row].clone().unwrap_or_default();
            (row, Reject::new(table, position, raw, error))
        })
        .collect())
}

/// The rows of `array` with a NUL in a text value.
fn rows_with_nul(array: &ArrayRef) -> Vec<usize> {
    let has_nul = |s: Option<&str>| s.is_some_and(|s| s.as_bytes().contains(&0));
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            if !a.values().contains(&0) {
                return Vec::new();
            }
            (0..a.len())
                .filter(|&i| has_nul(a.is_valid(i).then(|| a.value(i))))
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            if !a.values().contains(&0) {
                return Vec::new();
            }
            (0..a.len())
                .filter(|&i| has_nul(a.is_valid(i).then(|| a.value(i))))
                .collect()
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            (0..a.len())
                .filter(|&i| has_nul(a.is_valid(i).then(|| a.value(i))))
                .collect()
        }
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            parents(&rows_with_nul(l.values()), l.value_offsets())
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>();
            parents(&rows_with_nul(l.values()), l.value_offsets())
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            let mut rows: Vec<usize> = s.columns().iter().flat_map(rows_with_nul).collect();
            rows.sort_unstable();
            rows.dedup();
            rows
        }
        _ => Vec::new(),
    }
}

/// The list rows holding the child rows `children` (sorted), by the list's offsets (a
/// sliced list's children may reach outside its rows: those are left out).
fn parents<O: arrow_array::OffsetSizeTrait>(children: &[usize], offsets: &[O]) -> Vec<usize> {
    let (Some(first), Some(end)) = (offsets.first(), offsets.last()) else {
        return Vec::new();
    };
    let mut out: Vec<usize> = children
        .iter()
        .filter(|&&c| first.as_usize() <= c && c < end.as_usize())
        .map(|&c| offsets.partition_point(|o| o.as_usize() <= c) - 1)
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::StringArray;

    use super::*;

    #[test]
    fn rows_with_a_nul_in_text_or_in_a_list_of_text_are_refused_by_column() {
        let mut lists = ListBuilder::new(StringBuilder::new());
        lists.append_value([Some("a"), Some("b")]);
        lists.append_value([Some("c\0")]);
        lists.append_value([None::<&str>]);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringArray::from(vec![Some("ok"), None, Some("x\0y")])) as ArrayRef,
            ),
            ("l", Arc::new(lists.finish()) as ArrayRef),
        ])
        .unwrap();
        let refused = refused(&batch, "\"public\".\"t\"").unwrap();
        let rows: Vec<usize> = refused.iter().map(|(r, _)| *r).collect();
        assert_eq!(rows, [1, 2]);
        assert!(refused[0].1.error.message().contains("column \"l\""));
        assert!(refused[1].1.error.message().contains("column \"s\""));
        assert!(refused[1].1.position.contains("row 2"));
        // a slice sees only its own rows
        assert_eq!(
            rows_with_nul(&batch.column(1).slice(0, 1)),
            Vec::<usize>::new()
        );
        assert_eq!(rows_with_nul(&batch.column(1).slice(1, 2)), [0]);
    }
}
