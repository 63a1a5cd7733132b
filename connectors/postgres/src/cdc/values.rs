//! Values of a change (pgoutput's text output) as the JSON the Arrow decoder reads with
//! the table's types.

use arrow_schema::DataType;
use serde_json::Value;

/// PostgreSQL's text output of a value, as the JSON arrow-json reads for `dt`.
pub fn json_value(text: &str, dt: &DataType) -> Value {
    match dt {
        DataType::Boolean => Value::Bool(text == "t"),
        dt if dt.is_numeric() => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(text.to_string()),
        },
        DataType::Binary | DataType::LargeBinary => {
            Value::String(text.trim_start_matches("\\x").to_string())
        }
        DataType::Timestamp(_, Some(_)) => Value::String(full_offset(text)),
        DataType::List(f) | DataType::LargeList(f) => match parse_array(text) {
            Some(items) => Value::Array(
                items
                    .into_iter()
                    .map(|i| i.map_or(Value::Null, |t| json_value(&t, f.data_type())))
                    .collect(),
            ),
            None => Value::String(text.to_string()),
        },
        _ => Value::String(text.to_string()),
    }
}

/// `2024-05-01 10:00:00+02` -> `2024-05-01 10:00:00+02:00` (arrow wants minutes).
fn full_offset(text: &str) -> String {
    let bytes = text.as_bytes();
    let n = bytes.len();
    if n >= 3
        && (bytes[n - 3] == b'+' || bytes[n - 3] == b'-')
        && bytes[n - 2].is_ascii_digit()
        && bytes[n - 1].is_ascii_digit()
    {
        format!("{text}:00")
    } else {
        text.to_string()
    }
}

/// A one-dimensional array literal (`{1,NULL,"a,b"}`) into its elements.
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
        }
        out.push(if !quoted && item == "NULL" {
            None
        } else {
            Some(item)
        });
        match chars.next() {
            Some(',') => continue,
            None => return Some(out),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_array_literals_and_offsets() {
        assert_eq!(
            parse_array("{1,NULL,\"a,b\",\"q\\\"\"}").unwrap(),
            vec![
                Some("1".into()),
                None,
                Some("a,b".into()),
                Some("q\"".into())
            ]
        );
        assert_eq!(parse_array("{}").unwrap(), Vec::<Option<String>>::new());
        assert_eq!(
            full_offset("2024-05-01 10:00:00+02"),
            "2024-05-01 10:00:00+02:00"
        );
        assert_eq!(
            full_offset("2024-05-01 10:00:00+05:30"),
            "2024-05-01 10:00:00+05:30"
        );
    }
}
