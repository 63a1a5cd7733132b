//! Text into numbers, decimals and timestamps, exactly: a value whose digits its type
//! cannot hold is an error naming why, never rounded or cut. Shared by the JSON, CSV and
//! text decoders. The one-pass JSON decoder reads decimals with its own exact parser
//! only (arrow's misreads some), and RFC 3339 timestamps with an offset with a short
//! one, handing other timestamp spellings to arrow's, which reads the same values
//! slower. The paths that decode with arrow (arrow-csv, arrow-json) first ask
//! [`arrow_would_change`] about each value.

use arrow_array::timezone::Tz;
use arrow_cast::parse::string_to_datetime;
use arrow_schema::{DataType, TimeUnit};
use connector_api::{Error, Result};

pub(crate) fn err(msg: impl Into<String>) -> Error {
    Error::data(msg.into())
}

/// True when the decimal number `t` has non-zero digits beyond `scale` decimal places
/// (`1.005` at scale 2; `1.0050` and `1.005e1` fit), which parsing would drop.
pub(crate) fn excess_scale(t: &str, scale: i8) -> bool {
    let t = t.trim();
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().unwrap_or(0)),
        None => (t, 0),
    };
    let fraction = mantissa.split_once('.').map_or("", |(_, f)| f);
    let digits = fraction.trim_end_matches('0').len() as i32;
    digits - exp > scale as i32
}

/// True when the timestamp `t` (ISO 8601 text) has non-zero sub-second digits beyond
/// what `unit` holds (`.9999999` into microseconds; `.1234560` fits), which parsing
/// would drop.
pub(crate) fn excess_precision(t: &str, unit: TimeUnit) -> bool {
    let Some(dot) = t.find('.') else {
        return false;
    };
    let fraction: &str = &t[dot + 1..];
    let digits = fraction.len()
        - fraction
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    let significant = fraction[..digits].trim_end_matches('0').len();
    significant > unit_digits(unit)
}

/// The sub-second digits a timestamp of `unit` holds.
pub fn unit_digits(unit: TimeUnit) -> usize {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    }
}

/// Why the text `t` cannot be read into `data_type` without losing digits, if it
/// cannot: more decimal places than a decimal's scale, or sub-second digits than a
/// timestamp's unit.
pub(crate) fn loses_digits(t: &str, data_type: &DataType) -> Option<String> {
    match data_type {
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) if excess_scale(t, *s) => {
            Some(refused(Refusal::LosesDigits, t, *p, *s))
        }
        DataType::Timestamp(unit, _) if excess_precision(t, *unit) => Some(format!(
            "\"{t}\" has more than {} sub-second digits: a timestamp in {} would cut them off",
            unit_digits(*unit),
            match unit {
                TimeUnit::Second => "seconds",
                TimeUnit::Millisecond => "milliseconds",
                TimeUnit::Microsecond => "microseconds",
                TimeUnit::Nanosecond => "nanoseconds",
            }
        )),
        _ => None,
    }
}

pub(crate) fn text(t: &[u8]) -> Result<&str> {
    std::str::from_utf8(t).map_err(|e| err(format!("not UTF-8: {e}")))
}

/// An integer from its JSON text; a whole number written with a fraction or exponent
/// (`3.0`, `1e3`) is taken, a fractional one is an error, never truncated.
pub(crate) fn int(t: &[u8]) -> Result<i64> {
    let (neg, digits) = match t {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, t),
    };
    if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        let v = digits
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        return Ok(if neg { -v } else { v });
    }
    let s = text(t)?;
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    match s.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => Ok(f as i64),
        Ok(_) => Err(err(format!("{s} is not a whole number in the int64 range"))),
        Err(_) => Err(err(format!("\"{s}\" is not a number"))),
    }
}

pub(crate) fn float(t: &[u8]) -> Result<f64> {
    let s = text(t)?;
    s.parse::<f64>()
        .map_err(|_| err(format!("\"{s}\" is not a number")))
}

/// A decimal of `decimal(precision, scale)` from its text, exactly: more decimal places
/// than the scale or more digits than the precision is an error. Read by our own parser
/// only: arrow's reads zeros past the scale into the number at scale 0 (arrow-rs
/// #8699: "12.0" as 120), and garbage such as "e5" or "1e+" as numbers.
pub(crate) fn decimal(t: &[u8], precision: u8, scale: i8) -> Result<i128> {
    exact_decimal(t, precision, scale).map_err(|refusal| {
        err(refused(
            refusal,
            &String::from_utf8_lossy(t),
            precision,
            scale,
        ))
    })
}

/// Why a text is not read into a decimal column.
#[derive(Debug, PartialEq)]
enum Refusal {
    NotANumber,
    LosesDigits,
    TooManyDigits,
}

/// Why `t` is not read into `decimal(p, s)`, in words.
fn refused(refusal: Refusal, t: &str, p: u8, s: i8) -> String {
    match refusal {
        Refusal::NotANumber => format!("\"{t}\" is not a decimal number"),
        Refusal::LosesDigits => {
            format!("\"{t}\" has more than {s} decimal places: decimal({p},{s}) would round it")
        }
        Refusal::TooManyDigits => format!("\"{t}\" has more digits than decimal({p},{s}) holds"),
    }
}

/// A decimal written as digits with an optional sign, point and exponent (`-12.5`,
/// `12.0`, `.5`, `1.25e2`) read exactly into `decimal(precision, scale)` in one pass:
/// zeros past the scale are dropped, any other digit there is refused.
fn exact_decimal(t: &[u8], precision: u8, scale: i8) -> std::result::Result<i128, Refusal> {
    let (neg, rest) = match t {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, t),
    };
    let (mantissa, exp) = match rest.iter().position(|&c| c == b'e' || c == b'E') {
        Some(i) => (
            &rest[..i],
            exponent(&rest[i + 1..]).ok_or(Refusal::NotANumber)?,
        ),
        None => (rest, 0),
    };
    let (whole, fraction) = match mantissa.iter().position(|&c| c == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &[][..]),
    };
    let digits = || whole.iter().chain(fraction);
    let count = whole.len() + fraction.len();
    if count == 0 || !digits().all(u8::is_ascii_digit) {
        return Err(Refusal::NotANumber);
    }
    // the value is the digits times 10^shift at the column's scale; the digits below
    // the scale must be zeros
    let shift = exp - fraction.len() as i64 + i64::from(scale);
    let below = usize::try_from(-shift).unwrap_or(0).min(count);
    let keep = count - below;
    if digits().skip(keep).any(|&c| c != b'0') {
        return Err(Refusal::LosesDigits);
    }
    let significant = digits().take(keep).skip_while(|&&c| c == b'0').count() as i64;
    if significant == 0 {
        return Ok(0);
    }
    let zeros = shift.max(0);
    if significant + zeros > i64::from(precision) {
        return Err(Refusal::TooManyDigits);
    }
    // at most 38 digits: no overflow of i128
    let v = digits()
        .take(keep)
        .fold(0i128, |acc, &c| acc * 10 + i128::from(c - b'0'))
        * 10i128.pow(zeros as u32);
    Ok(if neg { -v } else { v })
}

/// An exponent's digits with an optional sign; None when there are none, or more than
/// four past leading zeros (no decimal column reaches that far).
fn exponent(t: &[u8]) -> Option<i64> {
    let (neg, digits) = match t {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = &digits[digits.iter().take_while(|&&c| c == b'0').count()..];
    if digits.len() > 4 {
        return None;
    }
    let e = digits
        .iter()
        .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'));
    Some(if neg { -e } else { e })
}

/// Why arrow's parsers (arrow-csv and arrow-json decode with them) would read `t` into
/// `data_type` as another value than it is, if they would: digits past a decimal's
/// scale or a timestamp's unit dropped ([`loses_digits`]), and, in
/// [`parse_decimal`](arrow_cast::parse::parse_decimal), a point at scale 0 taken into
/// the number ("12.0" as 120, arrow-rs #8699), texts that are no number ("e5" as 0)
/// and texts too long (wrapping) read as numbers.
pub(crate) fn arrow_would_change(t: &str, data_type: &DataType) -> Option<String> {
    if let Some(why) = loses_digits(t, data_type) {
        return Some(why);
    }
    let (p, s) = match data_type {
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => (*p, *s),
        _ => return None,
    };
    let b = t.as_bytes();
    if b.is_empty() {
        // a null (CSV's empty field), whatever the column allows
        return None;
    }
    let point_at_scale_0 = s == 0
        && !b.iter().any(|&c| c == b'e' || c == b'E')
        && b.iter()
            .position(|&c| c == b'.')
            .is_some_and(|i| b.get(i + 1).is_some_and(u8::is_ascii_digit));
    if point_at_scale_0 {
        return Some(format!(
            "\"{t}\" has a decimal point, which decimal({p},0) is not read with here; write it as a whole number"
        ));
    }
    match exact_decimal(b, p.min(38), s) {
        Err(refusal @ Refusal::NotANumber) => Some(refused(refusal, t, p, s)),
        Err(refusal @ Refusal::TooManyDigits) if p <= 38 => Some(refused(refusal, t, p, s)),
        _ => None,
    }
}

/// A timestamp of `unit` from its text (ISO 8601; without an offset, a local time of
/// `tz`), exactly: sub-second digits the unit cannot hold are an error.
pub(crate) fn timestamp(t: &[u8], unit: TimeUnit, tz: &Tz) -> Result<i64> {
    if let Some(v) = rfc3339(t, unit) {
        return Ok(v);
    }
    let t = text(t)?;
    let d =
        string_to_datetime(tz, t).map_err(|e| err(format!("\"{t}\" is not a timestamp: {e}")))?;
    if let Some(why) = loses_digits(t, &DataType::Timestamp(unit, None)) {
        return Err(err(why));
    }
    match unit {
        TimeUnit::Second => Ok(d.timestamp()),
        TimeUnit::Millisecond => Ok(d.timestamp_millis()),
        TimeUnit::Microsecond => Ok(d.timestamp_micros()),
        TimeUnit::Nanosecond => d
            .timestamp_nanos_opt()
            .ok_or_else(|| err(format!("\"{t}\" is out of range for nanoseconds"))),
    }
}

/// A timestamp written as RFC 3339 with its offset (`2024-01-01T10:00:00.001Z`,
/// `...+05:30`) and no more sub-second digits than `unit` holds, read in one pass;
/// None for anything else (another spelling, no offset, a leap second, a date that does
/// not exist, out of range), which arrow's parser reads or refuses.
fn rfc3339(t: &[u8], unit: TimeUnit) -> Option<i64> {
    if t.len() < 20
        || t[4] != b'-'
        || t[7] != b'-'
        || t[10] != b'T'
        || t[13] != b':'
        || t[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        t[from..to].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut fraction = 0;
    let digits = unit_digits(unit);
    if t[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < t.len() && t[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > digits {
            return None;
        }
        fraction = num(start, i)? * 10i64.pow((digits - n) as u32);
    }
    let offset = match &t[i..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'-' {
                -(h * 3600 + m * 60)
            } else {
                h * 3600 + m * 60
            }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    seconds
        .checked_mul(10i64.pow(digits as u32))?
        .checked_add(fraction)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // years from March, so the leap day ends one (Howard Hinnant's algorithm)
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::str::FromStr;

    use arrow_array::types::Decimal128Type;
    use arrow_cast::parse::parse_decimal;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_decimal_with_more_places_than_the_scale_is_an_error_not_rounded() {
        assert!(excess_precision(
            "2024-01-01T10:00:00.9999999Z",
            TimeUnit::Microsecond
        ));
        assert!(excess_precision("2024-01-01 10:00:00.5", TimeUnit::Second));
        assert!(!excess_precision(
            "2024-01-01T10:00:00.1234560+05:00",
            TimeUnit::Microsecond
        ));
        assert!(!excess_precision("2024-01-01T10:00:00Z", TimeUnit::Second));
        assert!(!excess_precision(
            "2024-01-01T10:00:00.123456789Z",
            TimeUnit::Nanosecond
        ));
        assert!(excess_scale("1.005", 2));
        assert!(excess_scale("-0.001", 2));
        assert!(excess_scale("1.5e-2", 2));
        assert!(!excess_scale("1.00", 2));
        assert!(!excess_scale("1.0500", 2));
        assert!(!excess_scale("1.005e1", 2));
        assert!(!excess_scale("12", 2));
        assert!(!excess_scale("12", 0));
        assert!(excess_scale("12.5", 0));
    }

    #[test]
    fn plain_decimals_read_as_arrow_reads_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let p = rng.gen_range(1..=38u8);
            let s = rng.gen_range(0..=p.min(6)) as i8;
            let whole: String = (0..rng.gen_range(1..=40))
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect();
            let places: String = (0..rng.gen_range(0..=8))
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect();
            let sign = if rng.gen_bool(0.3) { "-" } else { "" };
            let t = match places.is_empty() {
                true => format!("{sign}{whole}"),
                false => format!("{sign}{whole}.{places}"),
            };
            // arrow reads zeros past the scale into the number at scale 0: its
            // answer for the text without them
            let canonical = match t.split_once('.') {
                Some((w, f)) if f.trim_end_matches('0').is_empty() => w.to_string(),
                Some((w, f)) => format!("{w}.{}", f.trim_end_matches('0')),
                None => t.clone(),
            };
            let slow = match excess_scale(&t, s) {
                true => None,
                false => parse_decimal::<Decimal128Type>(&canonical, p, s).ok(),
            };
            if let Ok(fast) = exact_decimal(t.as_bytes(), p, s) {
                assert_eq!(Some(fast), slow, "{t} as decimal({p},{s})");
            }
            assert_eq!(
                decimal(t.as_bytes(), p, s).ok(),
                slow,
                "{t} as decimal({p},{s})"
            );
        }
        let read = |t: &str| exact_decimal(t.as_bytes(), 4, 2);
        assert_eq!(read("12.50"), Ok(1250));
        assert_eq!(read("-0.5"), Ok(-50));
        assert_eq!(read("1.25e1"), Ok(1250));
        assert_eq!(read("125e-2"), Ok(125));
        assert_eq!(read("+.5"), Ok(50));
        assert_eq!(read("99.99"), Ok(9999));
        assert_eq!(read("0e50"), Ok(0));
        assert_eq!(read("0e-5"), Ok(0));
        assert_eq!(read("1e00001"), Ok(1000));
        for lost in ["1.005", "1.5e-3", "1e-9999"] {
            assert_eq!(read(lost), Err(Refusal::LosesDigits), "{lost}");
        }
        for long in ["100.00", "1e3", &format!("1{}7", "0".repeat(255))] {
            assert_eq!(read(long), Err(Refusal::TooManyDigits), "{long}");
        }
        for other in [
            "", "-", ".", "e5", "-e1", "1e", "1e+", "1e-", "1e65537", "--1", "1_0", " 1",
        ] {
            assert_eq!(read(other), Err(Refusal::NotANumber), "{other}");
        }
    }

    #[test]
    fn zeros_past_the_scale_are_read_not_shifted_in() {
        // arrow's parse_decimal reads "12.0" at scale 0 as 120 (arrow-rs #8699)
        for (t, s, want) in [
            ("12.0", 0, 12),
            ("-1.00", 0, -1),
            ("1.500", 2, 150),
            ("7.", 0, 7),
            ("1.0e1", 0, 10),
            ("120e-1", 0, 12),
        ] {
            assert_eq!(
                decimal(t.as_bytes(), 10, s).unwrap(),
                want,
                "{t} at scale {s}"
            );
        }
    }

    #[test]
    fn rfc3339_timestamps_read_as_arrow_reads_them() {
        let utc = Tz::from_str("+00:00").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let units = [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ];
        let mut read = 0;
        for _ in 0..20_000 {
            let unit = units[rng.gen_range(0..4)];
            let fraction: String = (0..rng.gen_range(0..=10))
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect();
            let t = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}{}",
                rng.gen_range(1..=9999),
                rng.gen_range(0..=13),
                rng.gen_range(0..=32),
                rng.gen_range(0..=24),
                rng.gen_range(0..=60),
                rng.gen_range(0..=60),
                if fraction.is_empty() {
                    String::new()
                } else {
                    format!(".{fraction}")
                },
                ["Z", "z", "+05:30", "-11:45", "+00:00", "", "+24:00", "+0530"]
                    [rng.gen_range(0..8)],
            );
            let slow = || {
                let d = string_to_datetime(&utc, &t).ok()?;
                if excess_precision(&t, unit) {
                    return None;
                }
                match unit {
                    TimeUnit::Second => Some(d.timestamp()),
                    TimeUnit::Millisecond => Some(d.timestamp_millis()),
                    TimeUnit::Microsecond => Some(d.timestamp_micros()),
                    TimeUnit::Nanosecond => d.timestamp_nanos_opt(),
                }
            };
            if let Some(fast) = rfc3339(t.as_bytes(), unit) {
                assert_eq!(Some(fast), slow(), "{t} in {unit:?}");
                read += 1;
            }
            assert_eq!(
                timestamp(t.as_bytes(), unit, &utc).ok(),
                slow(),
                "{t} in {unit:?}"
            );
        }
        assert!(read > 1000, "the short parser read only {read}");
        // the dates and times that do not exist are left to arrow's parser
        for t in [
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T10:00:60Z",
        ] {
            assert_eq!(rfc3339(t.as_bytes(), TimeUnit::Microsecond), None, "{t}");
        }
        assert_eq!(
            rfc3339(b"2024-02-29T23:59:59.5-01:00", TimeUnit::Millisecond),
            Some(1_709_254_799_500)
        );
        assert_eq!(
            rfc3339(b"1969-12-31T23:59:59.999999Z", TimeUnit::Microsecond),
            Some(-1)
        );
    }
}
