//! The checks of [`crate::scalars::arrow_would_change`] for the lines arrow-json
//! decodes instead of the one-pass decoder (a schema it does not cover: more than 64
//! fields, small or unsigned integers, times, binary): arrow-json would cut a decimal's
//! extra fraction digits and a timestamp's extra sub-second digits without a word, and
//! misread some decimals, so the lines holding such values are found first, by the
//! values' own text.

use std::collections::HashMap;

use arrow_schema::{DataType, Fields};
use serde_json::value::RawValue;

use crate::scalars::arrow_would_change;

/// True when `dt` holds, or is, a decimal or timestamp.
pub(crate) fn has_digits(dt: &DataType) -> bool {
    match dt {
        DataType::Decimal128(..) | DataType::Decimal256(..) | DataType::Timestamp(..) => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            has_digits(f.data_type())
        }
        DataType::Struct(fields) => fields.iter().any(|f| has_digits(f.data_type())),
        _ => false,
    }
}

/// The lines (indexes into `lines`) whose object holds a value with more digits than
/// its column of `fields` keeps, and why, naming the column. A line that is not a JSON
/// object is left to the decoder, which reports it.
pub(crate) fn lost(fields: &Fields, buf: &[u8], lines: &[(usize, usize)]) -> Vec<(usize, String)> {
    if !fields.iter().any(|f| has_digits(f.data_type())) {
        return Vec::new();
    }
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, &(s, e))| {
            let object: HashMap<String, &RawValue> = serde_json::from_slice(&buf[s..e]).ok()?;
            in_object(fields, &object, "").map(|why| (i, why))
        })
        .collect()
}

fn in_object(fields: &Fields, object: &HashMap<String, &RawValue>, path: &str) -> Option<String> {
    fields
        .iter()
        .filter(|f| has_digits(f.data_type()))
        .find_map(|f| {
            let name = format!("{path}{}", f.name());
            in_value(f.data_type(), object.get(f.name())?, &name)
        })
}

fn in_value(dt: &DataType, raw: &RawValue, name: &str) -> Option<String> {
    let text = raw.get();
    if text == "null" {
        return None;
    }
    match dt {
        DataType::Struct(fields) => {
            let object: HashMap<String, &RawValue> = serde_json::from_str(text).ok()?;
            in_object(fields, &object, &format!("{name}."))
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            items
                .iter()
                .find_map(|item| in_value(f.data_type(), item, name))
        }
        _ => {
            let value = match text.starts_with('"') {
                true => serde_json::from_str::<String>(text).ok()?,
                false => text.to_string(),
            };
            arrow_would_change(&value, dt).map(|why| format!("column \"{name}\": {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{Field, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn finds_extra_digits_at_any_depth_and_names_the_column() {
        let fields = Fields::from(vec![
            Field::new("n", DataType::UInt32, true),
            Field::new("d", DataType::Decimal128(10, 2), true),
            Field::new(
                "s",
                DataType::Struct(Fields::from(vec![Field::new(
                    "at",
                    DataType::Timestamp(TimeUnit::Millisecond, None),
                    true,
                )])),
                true,
            ),
            Field::new(
                "l",
                DataType::List(Arc::new(Field::new(
                    "item",
                    DataType::Decimal128(5, 1),
                    true,
                ))),
                true,
            ),
        ]);
        let text = concat!(
            "{\"n\": 1, \"d\": 1.25, \"s\": {\"at\": \"2024-01-01T00:00:00.123\"}, \"l\": [1.5]}\n",
            "{\"n\": 2, \"d\": \"1.255\"}\n",
            "{\"n\": 3, \"s\": {\"at\": \"2024-01-01T00:00:00.1234\"}}\n",
            "{\"n\": 4, \"l\": [1.5, 2.25]}\n",
            "not json\n",
            "{\"n\": 6, \"d\": 1.2500}\n"
        );
        let buf = text.as_bytes();
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, b) in buf.iter().enumerate() {
            if *b == b'\n' {
                lines.push((start, i));
                start = i + 1;
            }
        }
        let found = lost(&fields, buf, &lines);
        let rows: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
        assert_eq!(rows, [1, 2, 3], "{found:?}");
        assert!(
            found[0].1.starts_with("column \"d\": \"1.255\""),
            "{found:?}"
        );
        assert!(found[1].1.starts_with("column \"s.at\""), "{found:?}");
        assert!(
            found[2].1.starts_with("column \"l\": \"2.25\""),
            "{found:?}"
        );
    }
}
