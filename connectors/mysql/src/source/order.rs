//! Reading in an order that a restart can resume: positions as typed values, and the
//! `WHERE` and `ORDER BY` that read after one.

use mysql_async::Value;
use serde::{Deserialize, Serialize};

use crate::conn::quote;

/// One column's value in a position, as MySQL compares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A FLOAT or DOUBLE.
    Double(f64),
    /// Text, a decimal's digits, an ENUM's label.
    Text(String),
    /// Bytes that are not UTF-8, as hex.
    Hex(String),
    /// A date or time: year, month, day, hour, minute, second, microsecond.
    Date([u32; 7]),
    /// A TIME: negative, days, hours, minutes, seconds, microseconds.
    Time(bool, [u32; 5]),
}

impl Key {
    /// The position value of `v`; None for NULL, which no position follows.
    pub fn of(v: &Value) -> Option<Key> {
        Some(match v {
            Value::NULL => return None,
            Value::Int(i) => Key::Int(*i),
            Value::UInt(u) => Key::Uint(*u),
            Value::Float(f) => Key::Double(f64::from(*f)),
            Value::Double(f) => Key::Double(*f),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Key::Text(s.to_string()),
                Err(_) => Key::Hex(b.iter().map(|x| format!("{x:02x}")).collect()),
            },
            Value::Date(y, mo, d, h, mi, s, us) => Key::Date([
                u32::from(*y),
                u32::from(*mo),
                u32::from(*d),
                u32::from(*h),
                u32::from(*mi),
                u32::from(*s),
                *us,
            ]),
            Value::Time(neg, d, h, m, s, us) => {
                Key::Time(*neg, [*d, u32::from(*h), u32::from(*m), u32::from(*s), *us])
            }
        })
    }

    /// The value bound as a statement parameter.
    pub fn value(&self) -> Value {
        let narrow = |x: u32| u8::try_from(x).unwrap_or(u8::MAX);
        match self {
            Key::Int(i) => Value::Int(*i),
            Key::Uint(u) => Value::UInt(*u),
            Key::Double(f) => Value::Double(*f),
            Key::Text(s) => Value::Bytes(s.as_bytes().to_vec()),
            Key::Hex(h) => Value::Bytes(
                (0..h.len() / 2)
                    .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect(),
            ),
            Key::Date([y, mo, d, h, mi, s, us]) => Value::Date(
                u16::try_from(*y).unwrap_or(u16::MAX),
                narrow(*mo),
                narrow(*d),
                narrow(*h),
                narrow(*mi),
                narrow(*s),
                *us,
            ),
            Key::Time(neg, [d, h, m, s, us]) => {
                Value::Time(*neg, *d, narrow(*h), narrow(*m), narrow(*s), *us)
            }
        }
    }
}

/// `columns` in order, for `ORDER BY`.
pub fn order_by(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The condition "after `after`" on `columns` compared as a tuple, written as the
/// ranges MySQL and MariaDB both read through an index (`a > ? OR (a = ? AND b > ?)`),
/// and its parameters. `marks` are the columns' placeholders (a DECIMAL's casts its
/// digits, which MySQL would otherwise compare with a string as a double).
pub fn after(columns: &[String], marks: &[String], after: &[Key]) -> (String, Vec<Value>) {
    let mut ors = Vec::new();
    let mut params = Vec::new();
    for i in 0..columns.len().min(after.len()) {
        let mut ands = Vec::new();
        for ((c, m), k) in columns.iter().zip(marks).zip(after).take(i) {
            ands.push(format!("{} = {m}", quote(c)));
            params.push(k.value());
        }
        ands.push(format!("{} > {}", quote(&columns[i]), marks[i]));
        params.push(after[i].value());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    (format!("({})", ors.join(" OR ")), params)
}

/// The condition "equal to `at`" on `columns`, and its parameters.
pub fn equal(columns: &[String], marks: &[String], at: &[Key]) -> (String, Vec<Value>) {
    let conds: Vec<String> = columns
        .iter()
        .zip(marks)
        .map(|(c, m)| format!("{} = {m}", quote(c)))
        .collect();
    (
        format!("({})", conds.join(" AND ")),
        at.iter().map(Key::value).collect(),
    )
}

/// The placeholder of a position value of `column` (its metadata from a prepared
/// `SELECT`); an error for an ENUM or SET, which sorts by its index but compares with
/// a value as text, so a resume would skip or repeat rows.
pub fn mark(column: &mysql_async::Column) -> connector_api::Result<String> {
    use mysql_async::consts::ColumnFlags;
    if column
        .flags()
        .intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG)
    {
        return Err(connector_api::Error::config(format!(
            "column \"{}\" is an ENUM or SET, which sorts by its index but compares as text, so reads in its order \
             cannot resume exactly; order by other columns, or read a query with CAST({0} AS UNSIGNED) AS ...",
            column.name_str()
        )));
    }
    Ok(match crate::types::Kind::of(column)? {
        crate::types::Kind::Decimal { precision, scale } => {
            format!("CAST(? AS DECIMAL({precision},{scale}))")
        }
        _ => "?".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_reads_as_index_ranges() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let marks = vec!["?".to_string(), "?".to_string()];
        let (sql, params) = after(&cols, &marks, &[Key::Int(1), Key::Text("x".into())]);
        assert_eq!(sql, "((`a` > ?) OR (`a` = ? AND `b` > ?))");
        assert_eq!(params.len(), 3);
    }

    #[test]
    fn keys_round_trip_through_json() {
        let keys = vec![
            Key::Uint(u64::MAX),
            Key::Hex("ff00".into()),
            Key::Date([2024, 2, 29, 23, 59, 59, 999_999]),
            Key::Time(true, [1, 2, 3, 4, 5]),
        ];
        let text = serde_json::to_string(&keys).unwrap();
        let back: Vec<Key> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, keys);
        assert_eq!(Key::Hex("ff00".into()).value(), Value::Bytes(vec![0xff, 0]));
    }
}
