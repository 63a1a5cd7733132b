//! A rejected row as text, for its dead letter: each column as the text of its value
//! (as Arrow would print it), or, for the value that failed, the server's own text
//! form where it has one (`NaN`, `Infinity`, every digit of a numeric, `infinity`
//! dates), so the row can be read and replayed.

use arrow_array::builder::make_builder;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::Fields;

use super::binary::{take, value};
use super::{append, Kind};

/// The row of binary `fields` (columns of `schema`, read as `kinds`) as a JSON object
/// of column name to text (null for SQL NULL).
pub fn row_text(fields: &[Option<&[u8]>], kinds: &[Kind], schema: &Fields) -> String {
    let row: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .zip(kinds)
        .zip(schema.iter())
        .map(|((field, kind), f)| {
            let text = field.map(|data| field_text(kind, f.data_type(), data));
            (
                f.name().clone(),
                text.map_or(serde_json::Value::Null, Into::into),
            )
        })
        .collect();
    serde_json::Value::Object(row).to_string()
}

fn field_text(kind: &Kind, dt: &arrow_schema::DataType, data: &[u8]) -> String {
    let decoded = value(kind, data).ok().and_then(|v| {
        let mut b = make_builder(dt, 1);
        append(b.as_mut(), kind, &v);
        let array = b.finish();
        let shown = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).ok()?;
        Some(shown.value(0).to_string())
    });
    decoded.unwrap_or_else(|| undecoded_text(kind, data))
}

/// A value with no Arrow form in its column's type, as PostgreSQL writes it; bytes
/// the server's text form is not rebuilt for (a many-dimensional array) as `\x` hex.
fn undecoded_text(kind: &Kind, data: &[u8]) -> String {
    let infinity = |high: bool| if high { "infinity" } else { "-infinity" }.to_string();
    let text = match kind {
        Kind::Numeric { .. } => numeric_text(data),
        Kind::Date => take::<4>(data, 0)
            .ok()
            .map(i32::from_be_bytes)
            .filter(|d| *d == i32::MAX || *d == i32::MIN)
            .map(|d| infinity(d == i32::MAX)),
        Kind::Timestamp => take::<8>(data, 0)
            .ok()
            .map(i64::from_be_bytes)
            .filter(|t| *t == i64::MAX || *t == i64::MIN)
            .map(|t| infinity(t == i64::MAX)),
        _ => None,
    };
    text.unwrap_or_else(|| {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        format!("\\x{hex}")
    })
}

/// PostgreSQL's text of a binary numeric: every digit, to its display scale.
fn numeric_text(data: &[u8]) -> Option<String> {
    let word = |at: usize| take::<2>(data, at).ok().map(i16::from_be_bytes);
    let (ndigits, weight) = (word(0)?.max(0) as usize, word(2)? as i64);
    let (sign, dscale) = (word(4)? as u16, word(6)?.max(0) as usize);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let digits: Vec<i16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    let digit = |i: i64| match usize::try_from(i) {
        Ok(i) => digits.get(i).copied().unwrap_or(0),
        Err(_) => 0,
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    }
    for i in 0..=weight {
        match i {
            0 => out.push_str(&digit(0).to_string()),
            _ => out.push_str(&format!("{:04}", digit(i))),
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        out.push('.');
        out.push_str(&fraction);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: &[i16], weight: i16, sign: u16, dscale: i16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((ndigits.len() as i16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in ndigits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_keep_every_digit_and_their_special_values() {
        // 12345678.9012 = [1234, 5678, 9012], weight 1
        assert_eq!(
            numeric_text(&numeric(&[1234, 5678, 9012], 1, 0, 4)).unwrap(),
            "12345678.9012"
        );
        assert_eq!(
            numeric_text(&numeric(&[1000], -2, 0x4000, 5)).unwrap(),
            "-0.00001"
        );
        assert_eq!(numeric_text(&numeric(&[7], 0, 0, 0)).unwrap(), "7");
        assert_eq!(numeric_text(&numeric(&[7], 1, 0, 2)).unwrap(), "70000.00");
        assert_eq!(numeric_text(&numeric(&[], 0, 0, 3)).unwrap(), "0.000");
        assert_eq!(numeric_text(&numeric(&[], 0, 0xC000, 0)).unwrap(), "NaN");
        assert_eq!(
            numeric_text(&numeric(&[], 0, 0xF000, 0)).unwrap(),
            "-Infinity"
        );
    }

    #[test]
    fn a_row_shows_decoded_values_and_the_failed_one_as_the_server_writes_it() {
        use arrow_schema::{DataType, Field, TimeUnit};
        let schema = Fields::from(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("n", DataType::Decimal128(10, 2), true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("v", DataType::Utf8, true),
        ]);
        let kinds: Vec<Kind> = schema
            .iter()
            .map(|f| Kind::of_column(f.data_type(), "").unwrap())
            .collect();
        let id = 7i64.to_be_bytes();
        let nan = numeric(&[], 0, 0xC000, 0);
        let at = i64::MAX.to_be_bytes();
        let fields = [Some(&id[..]), Some(&nan[..]), Some(&at[..]), None];
        let row: serde_json::Value =
            serde_json::from_str(&row_text(&fields, &kinds, &schema)).unwrap();
        assert_eq!(
            row,
            serde_json::json!({"id": "7", "n": "NaN", "at": "infinity", "v": null})
        );
        let n = numeric(&[12, 3400], 0, 0, 2);
        let fields = [Some(&id[..]), Some(&n[..]), None, None];
        let row: serde_json::Value =
            serde_json::from_str(&row_text(&fields, &kinds, &schema)).unwrap();
        assert_eq!(row["n"], "12.34");
    }
}
