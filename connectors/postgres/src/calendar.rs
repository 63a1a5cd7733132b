//! Dates in the proleptic Gregorian calendar PostgreSQL and Arrow share, as day
//! numbers from 1970-01-01 and as the text PostgreSQL reads and writes (`0044-03-15 BC`,
//! `12345-06-07`): Arrow's own formatter writes years before 1 as negative numbers and
//! years after 9999 with a `+`, which PostgreSQL refuses.

pub use sluice_formats::calendar::{civil_from_days, days_from_civil};

/// Microseconds in a day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
pub const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 0001-01-01 to 1970-01-01: the first day written without ` BC`.
const FIRST_AD: i64 = -719_162;
/// Days from 1970-01-01 to 9999-12-31: the last day Arrow's formatter writes as
/// PostgreSQL does.
const LAST_FOUR_DIGITS: i64 = 2_932_896;

/// True when Arrow's formatter writes the day as PostgreSQL reads it (years 1-9999).
pub fn formatter_writes(days: i64) -> bool {
    (FIRST_AD..=LAST_FOUR_DIGITS).contains(&days)
}

/// `days` after 1970-01-01 as PostgreSQL writes a date (`0044-03-15 BC`), and whether
/// it is before Christ (the ` BC` goes last, after a timestamp's time).
fn date_parts(days: i64) -> (String, bool) {
    let (year, month, day) = civil_from_days(days);
    let (year, bc) = if year <= 0 {
        (1 - year, true)
    } else {
        (year, false)
    };
    (format!("{year:04}-{month:02}-{day:02}"), bc)
}

/// A date as PostgreSQL reads it.
pub fn date_text(days: i64) -> String {
    match date_parts(days) {
        (d, true) => format!("{d} BC"),
        (d, false) => d,
    }
}

/// A time of day (microseconds, up to 24:00:00) as PostgreSQL reads it.
pub fn time_text(micros: i64) -> String {
    let (seconds, fraction) = (micros / 1_000_000, micros % 1_000_000);
    format!(
        "{:02}:{:02}:{:02}.{fraction:06}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// A timestamp (microseconds after 1970-01-01, UTC when `zone`) as PostgreSQL reads
/// it: `0044-03-15 10:00:00.123456+00 BC`.
pub fn timestamp_text(micros: i64, zone: bool) -> String {
    let (date, bc) = date_parts(micros.div_euclid(MICROS_PER_DAY));
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let mut s = format!("{date} {}", time_text(of_day));
    if zone {
        s.push_str("+00");
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_in_every_era() {
        for days in [
            -1_000_000,
            FIRST_AD - 1,
            FIRST_AD,
            -1,
            0,
            11_017,
            LAST_FOUR_DIGITS + 1,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{days}");
        }
        assert_eq!(civil_from_days(FIRST_AD), (1, 1, 1));
        assert_eq!(civil_from_days(LAST_FOUR_DIGITS), (9999, 12, 31));
        assert_eq!(date_text(FIRST_AD - 1), "0001-12-31 BC");
        assert_eq!(date_text(days_from_civil(12345, 6, 7)), "12345-06-07");
        assert_eq!(
            timestamp_text(
                days_from_civil(-43, 3, 15) * MICROS_PER_DAY + 36_000_123_456,
                true
            ),
            "0044-03-15 10:00:00.123456+00 BC"
        );
    }
}
