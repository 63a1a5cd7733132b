//! Rows holding a value a destination cannot keep, found before anything of a batch is
//! written ([`connector_api::Error::refused`]): text with a NUL for PostgreSQL, a float
//! JSON has no number for (NaN, infinities), a NaN or -0.0 that SQLite turns into
//! NULL or 0.0.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, GenericStringArray, OffsetSizeTrait, RecordBatch};
use arrow_schema::DataType;

/// Each row of `batch` where `leaf` finds a value, with the first such column, in row
/// order. `leaf` gives the rows of a plain (not list, not struct) array; lists and
/// structs are searched through.
pub fn rows_where(
    batch: &RecordBatch,
    leaf: &dyn Fn(&ArrayRef) -> Vec<usize>,
) -> Vec<(usize, String)> {
    let mut found: Vec<(usize, usize)> = Vec::new();
    for (i, column) in batch.columns().iter().enumerate() {
        found.extend(rows_of(column, leaf).into_iter().map(|row| (row, i)));
    }
    by_first_column(batch, found)
}

/// `found` (row, column index) as each row once, in row order, named by its first
/// column.
fn by_first_column(batch: &RecordBatch, mut found: Vec<(usize, usize)>) -> Vec<(usize, String)> {
    found.sort_unstable();
    found.dedup_by_key(|(row, _)| *row);
    let schema = batch.schema_ref();
    found
        .into_iter()
        .map(|(row, i)| (row, schema.field(i).name().clone()))
        .collect()
}

fn rows_of(array: &ArrayRef, leaf: &dyn Fn(&ArrayRef) -> Vec<usize>) -> Vec<usize> {
    match array.data_type() {
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            parents(&rows_of(l.values(), leaf), l.value_offsets())
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>();
            parents(&rows_of(l.values(), leaf), l.value_offsets())
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            let mut rows: Vec<usize> = s.columns().iter().flat_map(|c| rows_of(c, leaf)).collect();
            rows.sort_unstable();
            rows.dedup();
            rows
        }
        _ => leaf(array),
    }
}

/// The list rows holding the child rows `children` (sorted), by the list's offsets (a
/// sliced list's children may reach outside its rows: those are left out).
fn parents<O: OffsetSizeTrait>(children: &[usize], offsets: &[O]) -> Vec<usize> {
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

/// The rows of `batch` with a float JSON has no number for (NaN, an infinity), nested
/// too: arrow's JSON writer writes them as null.
pub fn json_non_finite(batch: &RecordBatch) -> Vec<(usize, String)> {
    rows_where(batch, &|a| floats_where(a, |v| !v.is_finite()))
}

/// The rows of `records` with a float JSON has no number for, each a reject at `place`
/// (a JSON sink refuses them: arrow's JSON writer would write null).
pub fn json_refusals(
    records: &RecordBatch,
    place: &str,
) -> connector_api::Result<Vec<(usize, connector_api::Reject)>> {
    refusals(
        records,
        json_non_finite(records),
        place,
        &|row| format!("{place} row {row} of the write"),
        &|column| {
            format!("column \"{column}\": NaN or an infinity has no JSON number (it would be written as null)")
        },
    )
}

/// The rows of `records` a sink writing `format` refuses before writing any, each a
/// reject at `place`: a float JSON has no number for (arrow's JSON writer would
/// write null); in CSV with a `null_value`, a text equal to it (it would read back as
/// null).
pub fn format_refusals(
    format: crate::Format,
    csv: &crate::CsvOptions,
    records: &RecordBatch,
    place: &str,
) -> connector_api::Result<Vec<(usize, connector_api::Reject)>> {
    match (format, csv.null_value.as_deref()) {
        (crate::Format::Json, _) => json_refusals(records, place),
        (crate::Format::Csv, Some(null)) => refusals(
            records,
            null_text_clashes(records, null)?,
            place,
            &|row| format!("{place} row {row} of the write"),
            &|column| {
                format!("column \"{column}\": the text \"{null}\" is csv.null_value (it would read back as null)")
            },
        ),
        _ => Ok(Vec::new()),
    }
}

/// The rows of `batch` whose CSV text in a column would be `null`, so would read back
/// as null: a string equal to it, or a number or boolean written as it (`0`, `true`).
/// Top-level columns only: a nested value is written inside its JSON text, quoted.
fn null_text_clashes(
    batch: &RecordBatch,
    null: &str,
) -> connector_api::Result<Vec<(usize, String)>> {
    let scalar = null.parse::<f64>().is_ok() || null == "true" || null == "false";
    let options = arrow_cast::display::FormatOptions::default();
    let mut found: Vec<(usize, usize)> = Vec::new();
    for (i, column) in batch.columns().iter().enumerate() {
        let rows = match column.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 => text_where(column, &|v| v == null),
            t if scalar && (t.is_numeric() || *t == DataType::Boolean) => {
                let formatter = arrow_cast::display::ArrayFormatter::try_new(column, &options)?;
                (0..column.len())
                    .filter(|&r| column.is_valid(r) && formatter.value(r).to_string() == null)
                    .collect()
            }
            _ => Vec::new(),
        };
        found.extend(rows.into_iter().map(|r| (r, i)));
    }
    Ok(by_first_column(batch, found))
}

/// The rows of a string array whose text `bad` picks (other arrays have none).
pub fn text_where(array: &ArrayRef, bad: &dyn Fn(&str) -> bool) -> Vec<usize> {
    fn pick<O: OffsetSizeTrait>(
        a: &GenericStringArray<O>,
        bad: &dyn Fn(&str) -> bool,
    ) -> Vec<usize> {
        (0..a.len())
            .filter(|&i| a.is_valid(i) && bad(a.value(i)))
            .collect()
    }
    match array.data_type() {
        DataType::Utf8 => pick(array.as_string::<i32>(), bad),
        DataType::LargeUtf8 => pick(array.as_string::<i64>(), bad),
        DataType::Utf8View => {
            let a = array.as_string_view();
            (0..a.len())
                .filter(|&i| a.is_valid(i) && bad(a.value(i)))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// `found` (from [`rows_where`]) as refused rows of `batch`: each a reject of `split`
/// at `position(row)`, with the row as JSON and the error `why(column)`.
pub fn refusals(
    batch: &RecordBatch,
    found: Vec<(usize, String)>,
    split: &str,
    position: &dyn Fn(usize) -> String,
    why: &dyn Fn(&str) -> String,
) -> connector_api::Result<Vec<(usize, connector_api::Reject)>> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let mut texts = crate::row_texts(batch)?;
    Ok(found
        .into_iter()
        .map(|(row, column)| {
            let raw = std::mem::take(&mut texts[row]).unwrap_or_default();
            let error = connector_api::Error::data(why(&column));
            (
                row,
                connector_api::Reject::new(split, position(row), raw, error),
            )
        })
        .collect())
}

/// The rows of a float array whose value `bad` picks (a non-float array has none).
pub fn floats_where(array: &ArrayRef, bad: fn(f64) -> bool) -> Vec<usize> {
    let pick = |values: Vec<Option<f64>>| {
        values
            .into_iter()
            .enumerate()
            .filter(|(_, v)| v.is_some_and(bad))
            .map(|(i, _)| i)
            .collect()
    };
    match array.data_type() {
        DataType::Float16 => pick(
            array
                .as_primitive::<Float16Type>()
                .iter()
                .map(|v| v.map(f64::from))
                .collect(),
        ),
        DataType::Float32 => pick(
            array
                .as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.map(f64::from))
                .collect(),
        ),
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            // the common case, no such value at all, without building anything
            if !a.values().iter().any(|v| bad(*v)) {
                return Vec::new();
            }
            pick(a.iter().collect())
        }
        _ => Vec::new(),
    }
}

/// The rows of a text array with a NUL character.
pub fn text_with_nul(array: &ArrayRef) -> Vec<usize> {
    // the common case, no NUL in the whole buffer, in one pass
    let clean = match array.data_type() {
        DataType::Utf8 => !array.as_string::<i32>().values().contains(&0),
        DataType::LargeUtf8 => !array.as_string::<i64>().values().contains(&0),
        _ => false,
    };
    match clean {
        true => Vec::new(),
        false => text_where(array, &|v| v.contains('\0')),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{Float64Builder, ListBuilder};
    use arrow_array::{Float64Array, StringArray};

    use super::*;

    #[test]
    fn rows_are_found_in_plain_list_and_sliced_columns_and_named_by_their_first_column() {
        let mut lists = ListBuilder::new(Float64Builder::new());
        lists.append_value([Some(1.0)]);
        lists.append_value([Some(f64::NAN)]);
        lists.append_value([None]);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "f",
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    None,
                    Some(f64::INFINITY),
                ])) as ArrayRef,
            ),
            ("l", Arc::new(lists.finish()) as ArrayRef),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("a\0"), None, Some("c")])) as ArrayRef,
            ),
        ])
        .unwrap();
        let non_finite = |a: &ArrayRef| floats_where(a, |v| !v.is_finite());
        let found = rows_where(&batch, &non_finite);
        assert_eq!(found, vec![(1, "l".to_string()), (2, "f".to_string())]);
        assert_eq!(
            rows_where(&batch, &text_with_nul),
            vec![(0, "s".to_string())]
        );
        assert!(rows_where(&batch.slice(0, 1), &non_finite).is_empty());
        assert_eq!(rows_where(&batch.slice(1, 2), &non_finite).len(), 2);
    }

    #[test]
    fn a_csv_value_written_as_the_null_text_is_found_at_the_top_level_only() {
        let mut tags = ListBuilder::new(arrow_array::builder::StringBuilder::new());
        tags.values().append_value("\\N");
        tags.append(true);
        tags.append(true);
        tags.append(true);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringArray::from(vec!["x", "\\N", "y"])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(arrow_array::Int64Array::from(vec![1, 2, 0])) as ArrayRef,
            ),
            ("tags", Arc::new(tags.finish()) as ArrayRef),
        ])
        .unwrap();
        // the list's "\\N" sits quoted inside JSON text: no clash
        let found = null_text_clashes(&batch, "\\N").unwrap();
        assert_eq!(found, vec![(1, "s".to_string())]);
        // a number written as the null text would read back as null
        let found = null_text_clashes(&batch, "0").unwrap();
        assert_eq!(found, vec![(2, "n".to_string())]);
    }
}
