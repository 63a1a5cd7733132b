//! Values in PostgreSQL's text output, as pgoutput streams them: what the type's
//! output function writes with the settings the replication session pins (`DateStyle`
//! ISO, `bytea_output` hex, floats written to round-trip exactly). A value in another
//! form is refused with what was expected, never guessed at.

use std::borrow::Cow;

use super::{Kind, Value};
use crate::calendar::{days_from_civil, MICROS_PER_DAY};

/// The value of a `kind` column from its text output.
pub fn value<'a>(kind: &Kind, text: Cow<'a, str>) -> Result<Value<'a>, String> {
    let number = |what: &str| format!("\"{text}\" is not {what}");
    Ok(match kind {
        Kind::Bool => match &*text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(number("a boolean (t or f)")),
        },
        Kind::I16 => Value::I16(text.parse().map_err(|_| number("a smallint"))?),
        Kind::I32 => Value::I32(text.parse().map_err(|_| number("an integer"))?),
        Kind::I64 => Value::I64(text.parse().map_err(|_| number("a bigint"))?),
        // Infinity, -Infinity and NaN parse as themselves
        Kind::F32 => Value::F32(text.parse().map_err(|_| number("a real"))?),
        Kind::F64 => Value::F64(text.parse().map_err(|_| number("a double precision"))?),
        Kind::Text | Kind::Uuid | Kind::Jsonb => Value::Text(text),
        Kind::Bytes => Value::Bytes(Cow::Owned(hex(&text)?)),
        Kind::Date => Value::I32(date(&text)?),
        Kind::Time => Value::I64(time(&text)?),
        Kind::Timestamp => Value::I64(timestamp(&text)?),
        Kind::Numeric { precision, scale } => Value::Decimal(numeric(&text, *precision, *scale)?),
        Kind::List(item) => Value::List(
            array(&text)?
                .into_iter()
                .map(|element| match element {
                    Some(t) => value(item, Cow::Owned(t)),
                    None => Ok(Value::Null),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// `\x0aff` -> its bytes.
fn hex(text: &str) -> Result<Vec<u8>, String> {
    let digits = text
        .strip_prefix("\\x")
        .filter(|d| d.len() % 2 == 0)
        .ok_or("bytea not in hex output (bytea_output = 'hex')")?;
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Option<_>>()
        .ok_or_else(|| "bytea with a non-hex digit".to_string())
}

/// A number of exactly the digits in `s`.
fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `2024-05-01` or `0044-03-15 BC` (DateStyle ISO) -> days since 1970-01-01.
fn date(text: &str) -> Result<i32, String> {
    let (text, bc) = era(text);
    let days = civil_days(text, bc).ok_or_else(|| not_iso(text, "date"))?;
    i32::try_from(days).map_err(|_| format!("date {text} does not fit Date32"))
}

/// The text without its ` BC` suffix, and whether it had one.
fn era(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

fn not_iso(text: &str, what: &str) -> String {
    if text.ends_with("infinity") {
        return format!("{what} {text} has no Arrow value");
    }
    format!("\"{text}\" is not an ISO {what} (DateStyle ISO)")
}

/// `YYYY-MM-DD` (the year may have more digits) -> days since 1970-01-01.
fn civil_days(text: &str, bc: bool) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let year: i64 = digits(parts.next()?)?;
    let month: i64 = digits(parts.next()?)?;
    let day: i64 = digits(parts.next()?)?;
    // PostgreSQL's dates end in year 5874897
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year > 10_000_000 {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    Some(days_from_civil(year, month, day))
}

/// `HH:MM:SS[.ffffff]` -> microseconds of the day.
fn clock(text: &str) -> Option<i64> {
    let (hms, fraction) = match text.split_once('.') {
        Some((hms, f)) if f.len() <= 6 => (hms, digits::<i64>(f)? * 10i64.pow(6 - f.len() as u32)),
        Some(_) => return None,
        None => (text, 0),
    };
    let mut parts = hms.splitn(3, ':');
    let h: i64 = digits(parts.next()?)?;
    let m: i64 = digits(parts.next()?)?;
    let s: i64 = digits(parts.next()?)?;
    (h <= 24 && m < 60 && s <= 60).then_some(((h * 60 + m) * 60 + s) * 1_000_000 + fraction)
}

/// A zone offset (`+02`, `-05:30`, `+00:53:28`) -> seconds east of UTC.
fn offset(text: &str) -> Option<i64> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let mut seconds = 0;
    let mut unit = 3600;
    for part in rest.split(':') {
        if unit == 0 || part.len() != 2 {
            return None;
        }
        seconds += digits::<i64>(part)? * unit;
        unit /= 60;
    }
    Some(sign * seconds)
}

/// The clock and the zone offset after it, if any (`10:00:00.5+02`).
fn split_zone(text: &str) -> (&str, Option<&str>) {
    match text.find(['+', '-']) {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    }
}

/// `time` -> microseconds of the day (a time with zone is read as text).
fn time(text: &str) -> Result<i64, String> {
    clock(text).ok_or_else(|| format!("\"{text}\" is not a time (HH:MM:SS)"))
}

/// `timestamp` (`2024-05-01 10:00:00.123456`) or `timestamptz` (with an offset, as
/// the server's TimeZone wrote it) -> microseconds since 1970-01-01 UTC.
fn timestamp(text: &str) -> Result<i64, String> {
    let (body, bc) = era(text);
    let parse = || {
        let (day, rest) = body.split_once(' ')?;
        let (clock_text, zone) = split_zone(rest);
        let days = civil_days(day, bc)?;
        let zone = match zone {
            Some(z) => offset(z)?,
            None => 0,
        };
        Some(
            days.checked_mul(MICROS_PER_DAY)
                .and_then(|d| d.checked_add(clock(clock_text)?))
                .and_then(|d| d.checked_sub(zone * 1_000_000)),
        )
    };
    match parse() {
        Some(Some(micros)) => Ok(micros),
        Some(None) => Err(format!(
            "timestamp {text} does not fit Arrow's microseconds since 1970"
        )),
        None => Err(not_iso(text, "timestamp")),
    }
}

/// `-12345.6700` -> the unscaled value of Decimal128(precision, scale), exactly.
fn numeric(text: &str, precision: u8, scale: i8) -> Result<i128, String> {
    match text {
        "NaN" => return Err("numeric NaN has no Decimal128 value".into()),
        "Infinity" | "-Infinity" => return Err("numeric infinity has no Decimal128 value".into()),
        _ => {}
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let valid = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !valid(whole) || !valid(fraction) {
        return Err(format!("\"{text}\" is not a numeric"));
    }
    let overflow = || format!("numeric {text} does not fit Decimal128({precision}, {scale})");
    // trailing zeros of the fraction carry no value
    let fraction = fraction.trim_end_matches('0');
    let mut acc: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(i128::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    // acc is the value times 10^places; the column wants it times 10^scale
    let shift = i32::from(scale) - fraction.len() as i32;
    if shift >= 0 {
        acc = 10i128
            .checked_pow(shift as u32)
            .and_then(|p| acc.checked_mul(p))
            .ok_or_else(overflow)?;
    } else {
        let div = 10i128
            .checked_pow(shift.unsigned_abs())
            .ok_or_else(overflow)?;
        if acc % div != 0 {
            return Err(format!(
                "numeric {text} has more than {scale} fraction digits (the column's scale); not rounded"
            ));
        }
        acc /= div;
    }
    if acc >= 10i128.pow(u32::from(precision)) {
        return Err(overflow());
    }
    Ok(if negative { -acc } else { acc })
}

/// A one-dimensional array literal (`{1,NULL,"a,b"}`) -> its elements (None: NULL).
fn array(text: &str) -> Result<Vec<Option<String>>, String> {
    let refused = || {
        if text.starts_with("{{") {
            "a multi-dimensional array has no Arrow list mapping".to_string()
        } else {
            format!("\"{text}\" is not a one-dimensional array literal")
        }
    };
    // explicit bounds (`[0:1]={1,2}`) are left out, as the binary reading does
    let text = match text.starts_with('[') {
        true => text.split_once("]=").map(|(_, t)| t).ok_or_else(refused)?,
        false => text,
    };
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(refused)?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next().ok_or_else(refused)? {
                    '\\' => item.push(chars.next().ok_or_else(refused)?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                match c {
                    ',' => break,
                    '{' | '}' | '"' => return Err(refused()),
                    c => item.push(c),
                }
                chars.next();
            }
        }
        out.push((quoted || item != "NULL").then_some(item));
        match chars.next() {
            Some(',') => continue,
            None => return Ok(out),
            Some(_) => return Err(refused()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: &Kind, text: &str) -> Result<Value<'static>, String> {
        value(kind, Cow::Owned(text.to_string()))
    }

    #[test]
    fn numerics_are_exact_or_refused() {
        let n = |p, s| Kind::Numeric {
            precision: p,
            scale: s,
        };
        let digits28 = "1234567890123456789012345678";
        assert_eq!(
            parse(&n(38, 10), &format!("{digits28}.0123456789")),
            Ok(Value::Decimal(
                format!("{digits28}0123456789").parse().unwrap()
            ))
        );
        assert_eq!(
            parse(&n(12, 5), "-12345.6780"),
            Ok(Value::Decimal(-1_234_567_800))
        );
        assert_eq!(parse(&n(5, 2), "0"), Ok(Value::Decimal(0)));
        assert!(parse(&n(12, 2), "1.005")
            .unwrap_err()
            .contains("fraction digits"));
        assert!(parse(&n(4, 2), "100.00")
            .unwrap_err()
            .contains("does not fit"));
        assert!(parse(&n(5, 2), "NaN").unwrap_err().contains("NaN"));
        assert!(parse(&n(5, 2), "-Infinity")
            .unwrap_err()
            .contains("infinity"));
        assert!(parse(&n(38, 0), &"9".repeat(40))
            .unwrap_err()
            .contains("does not fit"));
        // a negative scale rounds to tens, hundreds...: only exact multiples fit
        assert_eq!(parse(&n(5, -2), "12300"), Ok(Value::Decimal(123)));
        assert!(parse(&n(5, -2), "12345")
            .unwrap_err()
            .contains("fraction digits"));
    }

    #[test]
    fn dates_and_timestamps_to_the_microsecond_in_any_era() {
        assert_eq!(parse(&Kind::Date, "1970-01-01"), Ok(Value::I32(0)));
        assert_eq!(parse(&Kind::Date, "2000-03-01"), Ok(Value::I32(11_017)));
        // 1 BC is year 0: 0001-01-01 BC is 366 days before 0001-01-01
        assert_eq!(
            parse(&Kind::Date, "0001-01-01 BC"),
            Ok(Value::I32(-719_528))
        );
        assert!(parse(&Kind::Date, "infinity")
            .unwrap_err()
            .contains("no Arrow value"));
        assert!(parse(&Kind::Date, "05/01/2024")
            .unwrap_err()
            .contains("DateStyle ISO"));
        assert_eq!(
            parse(&Kind::Timestamp, "2024-05-01 10:00:00.5"),
            Ok(Value::I64(1_714_557_600_500_000))
        );
        assert_eq!(
            parse(&Kind::Timestamp, "2024-05-01 12:00:00.5+02"),
            Ok(Value::I64(1_714_557_600_500_000))
        );
        assert_eq!(
            parse(&Kind::Timestamp, "2024-05-01 04:30:00.5-05:30"),
            Ok(Value::I64(1_714_557_600_500_000))
        );
        assert_eq!(
            parse(&Kind::Timestamp, "12345-01-01 00:00:00"),
            Ok(Value::I64((days_from_civil(12345, 1, 1)) * MICROS_PER_DAY))
        );
        assert!(parse(&Kind::Timestamp, "-infinity").is_err());
        assert_eq!(
            parse(&Kind::Time, "24:00:00"),
            Ok(Value::I64(MICROS_PER_DAY))
        );
        assert_eq!(
            parse(&Kind::Time, "01:00:00.000001"),
            Ok(Value::I64(3_600_000_001))
        );
        assert!(parse(&Kind::Time, "01:00:00+02").is_err());
    }

    #[test]
    fn arrays_bytes_and_the_rest() {
        let texts = Kind::List(Box::new(Kind::Text));
        assert_eq!(
            parse(&texts, "{1,NULL,\"a,b\",\"q\\\"\",\"NULL\"}"),
            Ok(Value::List(vec![
                Value::Text("1".into()),
                Value::Null,
                Value::Text("a,b".into()),
                Value::Text("q\"".into()),
                Value::Text("NULL".into()),
            ]))
        );
        assert_eq!(parse(&texts, "{}"), Ok(Value::List(Vec::new())));
        assert!(parse(&texts, "{{a,b},{c,d}}")
            .unwrap_err()
            .contains("multi-dimensional"));
        assert_eq!(
            parse(&texts, "[0:1]={a,b}"),
            Ok(Value::List(vec![
                Value::Text("a".into()),
                Value::Text("b".into())
            ]))
        );
        assert_eq!(
            parse(&Kind::List(Box::new(Kind::I32)), "{1,NULL,-3}"),
            Ok(Value::List(vec![
                Value::I32(1),
                Value::Null,
                Value::I32(-3)
            ]))
        );
        assert_eq!(
            parse(&Kind::Bytes, "\\x00ff"),
            Ok(Value::Bytes(vec![0, 255].into()))
        );
        assert!(parse(&Kind::Bytes, "\\000").unwrap_err().contains("hex"));
        assert_eq!(
            parse(&Kind::F64, "-Infinity"),
            Ok(Value::F64(f64::NEG_INFINITY))
        );
        assert_eq!(parse(&Kind::F64, "0.1"), Ok(Value::F64(0.1)));
        assert!(parse(&Kind::I16, "70000").unwrap_err().contains("smallint"));
        assert_eq!(parse(&Kind::Bool, "t"), Ok(Value::Bool(true)));
    }
}
