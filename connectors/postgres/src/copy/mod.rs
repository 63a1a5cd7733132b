//! Arrow values in PostgreSQL's COPY formats: text ([`text`], every type) and binary
//! ([`binary`], the types with a native binary form; the batch goes as text
//! otherwise). A value PostgreSQL would refuse or change (a year before 1 in Arrow's
//! formatting, digits below the microsecond) is written as PostgreSQL reads it or is
//! an error naming column and row.

mod binary;
mod text;

pub use binary::copy_binary;
pub use text::copy_text;

use arrow_array::cast::AsArray;
use arrow_array::ArrayRef;
use arrow_schema::{DataType, TimeUnit};
use connector_api::{Error, Result};

/// A timestamp of `unit` in microseconds, PostgreSQL's precision: a value with digits
/// below the microsecond or beyond its range is an error naming column and row, never
/// rounded.
fn micros(name: &str, row: usize, unit: &TimeUnit, v: i64) -> Result<i64> {
    let exact = match unit {
        TimeUnit::Second => v.checked_mul(1_000_000),
        TimeUnit::Millisecond => v.checked_mul(1000),
        TimeUnit::Microsecond => Some(v),
        TimeUnit::Nanosecond => (v % 1000 == 0).then_some(v / 1000),
    };
    exact.ok_or_else(|| {
        Error::data(format!(
            "column \"{name}\" row {row}: timestamp {v} ({unit:?}) has no exact microsecond value for PostgreSQL; not rounded"
        ))
    })
}

/// A date or timestamp column Arrow's formatter would write in a form PostgreSQL
/// refuses (a year before 1 or after 9999), or a timestamp in nanoseconds, as text built
/// per value; None when the formatter's text is right.
fn calendar_text(name: &str, array: &ArrayRef) -> Result<Option<Vec<Option<String>>>> {
    use crate::calendar::{date_text, formatter_writes, time_text, timestamp_text, MICROS_PER_DAY};
    match array.data_type() {
        DataType::Date32 => {
            let a = array.as_primitive::<arrow_array::types::Date32Type>();
            if a.iter().flatten().all(|d| formatter_writes(d.into())) {
                return Ok(None);
            }
            Ok(Some(
                a.iter().map(|d| d.map(|d| date_text(d.into()))).collect(),
            ))
        }
        DataType::Timestamp(unit, zone) => {
            let raw = arrow_cast::cast(array, &DataType::Int64)?;
            let raw = raw.as_primitive::<arrow_array::types::Int64Type>();
            // the formatter writes a zoned column's local day: a day either side of UTC's
            let margin = if zone.is_some() { 1 } else { 0 };
            let fits = |m: i64| {
                let day = m.div_euclid(MICROS_PER_DAY);
                formatter_writes(day - margin) && formatter_writes(day + margin)
            };
            if *unit != TimeUnit::Nanosecond {
                // the common case, every value in range, checked without building anything
                let mut all = true;
                for (row, v) in raw.iter().enumerate() {
                    if let Some(v) = v {
                        if !fits(micros(name, row, unit, v)?) {
                            all = false;
                            break;
                        }
                    }
                }
                if all {
                    return Ok(None);
                }
            }
            let values = raw
                .iter()
                .enumerate()
                .map(|(row, v)| v.map(|v| micros(name, row, unit, v)).transpose())
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(
                values
                    .into_iter()
                    .map(|m| m.map(|m| timestamp_text(m, zone.is_some())))
                    .collect(),
            ))
        }
        DataType::Time64(unit) => {
            let raw = arrow_cast::cast(array, &DataType::Int64)?;
            let raw = raw.as_primitive::<arrow_array::types::Int64Type>();
            let per_micro = if *unit == TimeUnit::Nanosecond {
                1000
            } else {
                1
            };
            if *unit == TimeUnit::Microsecond
                && raw
                    .iter()
                    .flatten()
                    .all(|t| (0..MICROS_PER_DAY).contains(&t))
            {
                return Ok(None);
            }
            // PostgreSQL's time goes to 24:00:00 inclusive, Arrow's formatter stops before
            raw.iter()
                .enumerate()
                .map(|(row, t)| {
                    t.map(|t| match t % per_micro == 0 && (0..=MICROS_PER_DAY).contains(&(t / per_micro)) {
                        true => Ok(time_text(t / per_micro)),
                        false => Err(Error::data(format!(
                            "column \"{name}\" row {row}: time {t} ({unit:?}) has no exact PostgreSQL time; not rounded"
                        ))),
                    })
                    .transpose()
                })
                .collect::<Result<Vec<_>>>()
                .map(Some)
        }
        _ => Ok(None),
    }
}

fn unformattable(name: &str, row: usize) -> Error {
    Error::data(format!(
        "column \"{name}\" row {row}: the value has no text form (out of its type's range)"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, RecordBatch};

    use super::*;

    #[test]
    fn dates_and_times_outside_the_formatters_range_are_written_as_postgres_reads_them() {
        use arrow_array::{Date32Array, Time64MicrosecondArray, TimestampNanosecondArray};
        let bc = crate::calendar::days_from_civil(-43, 3, 15);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "d",
                Arc::new(Date32Array::from(vec![bc as i32])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(Time64MicrosecondArray::from(vec![86_400_000_000])) as ArrayRef,
            ),
        ])
        .unwrap();
        let text = String::from_utf8(copy_text(&batch).unwrap()).unwrap();
        assert_eq!(text, "0044-03-15 BC\t24:00:00.000000\n");
        // digits below the microsecond would be rounded by the server: refused
        let ns = RecordBatch::try_from_iter(vec![(
            "at",
            Arc::new(TimestampNanosecondArray::from(vec![1_000, 1_500])) as ArrayRef,
        )])
        .unwrap();
        let e = copy_text(&ns).unwrap_err();
        assert!(e.message().contains("column \"at\" row 1"), "{e}");
        let pg = vec!["timestamp without time zone".to_string()];
        assert!(copy_binary(&ns, &pg)
            .unwrap_err()
            .message()
            .contains("row 1"));
    }
}
