//! Text PostgreSQL cannot hold: a NUL character (`\0`), which `text`, `varchar` and
//! `jsonb` refuse. COPY would fail the whole write with the server's `invalid byte
//! sequence for encoding "UTF8": 0x00`, naming neither row nor column; the sink refuses
//! such rows before it writes anything instead ([`connector_api::Error::refused`]).

use arrow_array::RecordBatch;
use connector_api::{Reject, Result};

/// The rows of `batch` with a NUL character in any text value (nested in lists and
/// structs too), each a reject naming `table`, the row and the column.
pub fn refused(batch: &RecordBatch, table: &str) -> Result<Vec<(usize, Reject)>> {
    use sluice_formats::scan;
    scan::refusals(
        batch,
        scan::rows_where(batch, &scan::text_with_nul),
        table,
        &|row| format!("table {table} row {row} of the write"),
        &|column| {
            format!(
                "column \"{column}\": text with a NUL character (\\0), which PostgreSQL cannot store"
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, StringArray};

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
    }
}
