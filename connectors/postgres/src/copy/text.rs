//! The COPY text format: tab-separated, `\\N` for NULL, escaped.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field};
use connector_api::{Error, Result};

use super::{calendar_text, unformattable};

/// Escapes a value for the COPY text format.
fn escape_into(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// A PostgreSQL array literal element: quoted, with `"` and `\` escaped.
fn array_element(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The text of each value of a column as PostgreSQL reads it (None = NULL).
fn column_text(name: &str, array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let n = array.len();
    let err =
        |e: arrow_schema::ArrowError| Error::data(format!("column \"{name}\"")).with_source(e);
    Ok(match array.data_type() {
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..n)
                .map(|i| {
                    a.is_valid(i)
                        .then(|| if a.value(i) { "t" } else { "f" }.to_string())
                })
                .collect()
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let c = arrow_cast::cast(array, &DataType::Binary).map_err(err)?;
            let a = c.as_binary::<i32>();
            (0..n)
                .map(|i| {
                    a.is_valid(i).then(|| {
                        let mut s = String::with_capacity(2 + a.value(i).len() * 2);
                        s.push_str("\\x");
                        for b in a.value(i) {
                            let _ = write!(s, "{b:02x}");
                        }
                        s
                    })
                })
                .collect()
        }
        DataType::Float32 | DataType::Float64 => {
            let c = arrow_cast::cast(array, &DataType::Float64).map_err(err)?;
            let a = c.as_primitive::<arrow_array::types::Float64Type>();
            (0..n)
                .map(|i| {
                    a.is_valid(i).then(|| {
                        let v = a.value(i);
                        if v.is_nan() {
                            "NaN".into()
                        } else if v.is_infinite() {
                            if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
                        } else if array.data_type() == &DataType::Float32 {
                            format!("{}", v as f32)
                        } else {
                            format!("{v}")
                        }
                    })
                })
                .collect()
        }
        DataType::List(_) | DataType::LargeList(_) => {
            let list = arrow_cast::cast(
                array,
                &DataType::List(Arc::new(Field::new("item", list_item(array), true))),
            )
            .map_err(err)?;
            let l = list.as_list::<i32>();
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                if l.is_null(i) {
                    out.push(None);
                    continue;
                }
                let values = l.value(i);
                let texts = column_text(name, &values)?;
                let mut s = String::from("{");
                for (j, t) in texts.iter().enumerate() {
                    if j > 0 {
                        s.push(',');
                    }
                    match t {
                        Some(t) => array_element(&mut s, t),
                        None => s.push_str("NULL"),
                    }
                }
                s.push('}');
                out.push(Some(s));
            }
            out
        }
        DataType::Struct(_) => sluice_formats::json_texts(name, array)?,
        _ => match calendar_text(name, array)? {
            Some(texts) => texts,
            None => {
                let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                    .map_err(err)?;
                (0..n)
                    .map(|i| {
                        array
                            .is_valid(i)
                            .then(|| formatted(name, i, &f))
                            .transpose()
                    })
                    .collect::<Result<_>>()?
            }
        },
    })
}

/// The text of value `row` of a column, or an error naming it: a value Arrow cannot
/// format is never written as the formatter's error text.
fn formatted(name: &str, row: usize, f: &ArrayFormatter) -> Result<String> {
    let mut s = String::new();
    write!(s, "{}", f.value(row)).map_err(|_| unformattable(name, row))?;
    Ok(s)
}

fn list_item(array: &ArrayRef) -> DataType {
    match array.data_type() {
        DataType::List(f) | DataType::LargeList(f) => f.data_type().clone(),
        other => other.clone(),
    }
}

/// How one column's values are written: straight from Arrow's formatter (numbers,
/// decimals, strings, dates, times, timestamps), or through text built per value
/// (booleans, floats, bytea, arrays, JSON).
enum Column<'a> {
    Direct(&'a ArrayRef, ArrayFormatter<'a>),
    Built(Vec<Option<String>>),
}

fn needs_building(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Boolean
            | DataType::Float32
            | DataType::Float64
            | DataType::Float16
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::Struct(_)
    )
}

/// A batch in the COPY text format (tab-separated, `\N` for NULL, escaped).
pub fn copy_text(batch: &RecordBatch) -> Result<Vec<u8>> {
    let schema = batch.schema();
    let options = FormatOptions::default();
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        columns.push(if needs_building(c.data_type()) {
            Column::Built(column_text(f.name(), c)?)
        } else if let Some(texts) = calendar_text(f.name(), c)? {
            Column::Built(texts)
        } else {
            let formatter = ArrayFormatter::try_new(c.as_ref(), &options)
                .map_err(|e| Error::data(format!("column \"{}\"", f.name())).with_source(e))?;
            Column::Direct(c, formatter)
        });
    }
    let mut out = Vec::with_capacity(batch.num_rows() * 64);
    let mut scratch = String::new();
    for row in 0..batch.num_rows() {
        for (i, col) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match col {
                Column::Direct(array, _) if array.is_null(row) => out.extend_from_slice(b"\\N"),
                Column::Direct(_, formatter) => {
                    scratch.clear();
                    write!(scratch, "{}", formatter.value(row))
                        .map_err(|_| unformattable(schema.field(i).name(), row))?;
                    escape_into(&mut out, &scratch);
                }
                Column::Built(values) => match &values[row] {
                    Some(v) => escape_into(&mut out, v),
                    None => out.extend_from_slice(b"\\N"),
                },
            }
        }
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ListArray, StringArray};

    #[test]
    fn copy_text_escapes_and_writes_arrays() {
        let list = ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
        ]);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringArray::from(vec![Some("a\tb\\c\n"), None])) as ArrayRef,
            ),
            ("l", Arc::new(list) as ArrayRef),
        ])
        .unwrap();
        let text = String::from_utf8(copy_text(&batch).unwrap()).unwrap();
        assert_eq!(text, "a\\tb\\\\c\\n\t{\"1\",NULL}\n\\N\t\\N\n");
    }
}
