//! Arrow columns as the text MySQL reads: the tab-separated form of `LOAD DATA`
//! (`\N` for NULL, backslash escapes, raw bytes under `CHARACTER SET binary`), or SQL
//! literals for `INSERT ... VALUES` and key lists. Exact or an error naming the column
//! and the row: floats print their shortest round-trip digits with an exponent (a
//! literal of digits alone is a DECIMAL to MySQL, clipped at 65 digits), timestamps keep their
//! microseconds (a nanosecond part is an error), NaN and infinities are refused
//! (MySQL has no such values).

use std::io::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, DecimalType, Float32Type, Float64Type, Int64Type,
    UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use connector_api::{Error, Result};
use sluice_formats::calendar::civil_from_days;

/// The two text forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A field of `LOAD DATA ... CHARACTER SET binary` with the default escapes.
    Infile,
    /// An SQL literal.
    Sql,
}

/// A column ready to print.
enum Cells {
    /// Booleans, and whether the column is a BIT (else an integer such as
    /// TINYINT(1), which takes `1` and `0`).
    Bool(ArrayRef, bool),
    /// Signed integers, as Int64.
    Int(ArrayRef),
    /// Unsigned integers, as UInt64.
    UInt(ArrayRef),
    /// Decimals up to 38 digits, as Decimal128.
    Decimal(ArrayRef),
    /// Decimals past 38 digits.
    Decimal256(ArrayRef),
    F32(ArrayRef),
    F64(ArrayRef),
    Text(ArrayRef),
    Bytes(ArrayRef),
    Date(ArrayRef),
    /// Microseconds since the epoch (None: null).
    Micros(Vec<Option<i64>>),
    /// Microseconds of a span or time of day.
    Span(Vec<Option<i64>>),
    /// JSON text of nested values.
    Json(Vec<Option<String>>),
}

/// One column of a batch, converted once.
pub struct Column {
    name: String,
    cells: Cells,
    nulls: ArrayRef,
}

/// Microseconds of `v` in `unit`; None when a nanosecond part would be lost.
fn to_micros(v: i64, unit: TimeUnit) -> Option<i64> {
    match unit {
        TimeUnit::Second => v.checked_mul(1_000_000),
        TimeUnit::Millisecond => v.checked_mul(1_000),
        TimeUnit::Microsecond => Some(v),
        TimeUnit::Nanosecond => (v % 1_000 == 0).then_some(v / 1_000),
    }
}

fn micros_of(name: &str, array: &ArrayRef, unit: TimeUnit) -> Result<Vec<Option<i64>>> {
    let ints = arrow_cast::cast(array, &DataType::Int64)?;
    let ints = ints.as_primitive::<Int64Type>();
    (0..ints.len())
        .map(|i| {
            if ints.is_null(i) {
                return Ok(None);
            }
            to_micros(ints.value(i), unit).map(Some).ok_or_else(|| {
                Error::data(format!(
                    "column \"{name}\", row {i}: the value has a nanosecond part, but MySQL keeps microseconds"
                ))
            })
        })
        .collect()
}

impl Column {
    /// Prepares `array` (column `name`) for printing into a column of Arrow type
    /// `target` (None: a column the sink creates).
    pub fn new(name: &str, array: &ArrayRef, target: Option<&DataType>) -> Result<Column> {
        let array = match array.data_type() {
            DataType::Dictionary(_, value) => arrow_cast::cast(array, value)?,
            _ => array.clone(),
        };
        let cast = |to: &DataType| arrow_cast::cast(&array, to);
        let cells = match array.data_type() {
            DataType::Boolean => Cells::Bool(
                array.clone(),
                target.is_none_or(|t| *t == DataType::Boolean),
            ),
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                Cells::Int(cast(&DataType::Int64)?)
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                Cells::UInt(cast(&DataType::UInt64)?)
            }
            // widened without loss: the digits and the scale stay
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => {
                Cells::Decimal(cast(&DataType::Decimal128(*p, *s))?)
            }
            DataType::Decimal128(..) => Cells::Decimal(array.clone()),
            DataType::Decimal256(..) => Cells::Decimal256(array.clone()),
            DataType::Float16 | DataType::Float32 => Cells::F32(cast(&DataType::Float32)?),
            DataType::Float64 => Cells::F64(array.clone()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Cells::Text(cast(&DataType::Utf8)?)
            }
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_) => Cells::Bytes(cast(&DataType::Binary)?),
            DataType::Date32 | DataType::Date64 => Cells::Date(cast(&DataType::Date32)?),
            DataType::Timestamp(unit, _) => Cells::Micros(micros_of(name, &array, *unit)?),
            DataType::Time32(unit) | DataType::Time64(unit) | DataType::Duration(unit) => {
                Cells::Span(micros_of(name, &array, *unit)?)
            }
            DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Struct(_)
            | DataType::Map(..) => Cells::Json(sluice_formats::json_texts(name, &array)?),
            other => {
                return Err(Error::schema(format!(
                    "column \"{name}\" has Arrow type {other}, which has no MySQL text form here"
                )))
            }
        };
        Ok(Column {
            name: name.to_string(),
            cells,
            nulls: array,
        })
    }

    /// The columns of `records`, in order, for a table of `target` columns.
    pub fn all(records: &RecordBatch, target: Option<&SchemaRef>) -> Result<Vec<Column>> {
        let schema = records.schema();
        schema
            .fields()
            .iter()
            .zip(records.columns())
            .map(|(f, a)| {
                let into = target
                    .and_then(|t| t.field_with_name(f.name()).ok())
                    .map(|t| t.data_type());
                Column::new(f.name(), a, into)
            })
            .collect()
    }

    /// Prints row `i` into `out`.
    pub fn print(&self, i: usize, form: Form, out: &mut Vec<u8>) -> Result<()> {
        let null = match &self.cells {
            Cells::Micros(v) | Cells::Span(v) => v[i].is_none(),
            Cells::Json(v) => v[i].is_none(),
            _ => self.nulls.is_null(i),
        };
        if null {
            out.extend_from_slice(match form {
                Form::Infile => b"\\N",
                Form::Sql => b"NULL",
            });
            return Ok(());
        }
        let bad = |why: &str| Error::data(format!("column \"{}\", row {i}: {why}", self.name));
        match &self.cells {
            Cells::Bool(a, bit) => {
                let v = a.as_boolean().value(i);
                match (form, bit) {
                    // the raw byte is BIT(1)'s value under CHARACTER SET binary
                    (Form::Infile, true) => out.push(u8::from(v)),
                    (Form::Sql, true) => out.extend_from_slice(if v { b"b'1'" } else { b"b'0'" }),
                    (_, false) => out.push(if v { b'1' } else { b'0' }),
                }
            }
            Cells::Int(a) => {
                write!(out, "{}", a.as_primitive::<Int64Type>().value(i))
                    .map_err(|e| bad(&e.to_string()))?;
            }
            Cells::UInt(a) => {
                write!(out, "{}", a.as_primitive::<UInt64Type>().value(i))
                    .map_err(|e| bad(&e.to_string()))?;
            }
            Cells::Decimal(a) => {
                let a = a.as_primitive::<Decimal128Type>();
                let text = Decimal128Type::format_decimal(a.value(i), a.precision(), a.scale());
                out.extend_from_slice(text.as_bytes());
            }
            Cells::Decimal256(a) => {
                let a = a.as_primitive::<Decimal256Type>();
                let text = Decimal256Type::format_decimal(a.value(i), a.precision(), a.scale());
                out.extend_from_slice(text.as_bytes());
            }
            Cells::F32(a) => {
                let v = a.as_primitive::<Float32Type>().value(i);
                if !v.is_finite() {
                    return Err(bad(&format!("{v} has no MySQL value")));
                }
                write!(out, "{v:e}").map_err(|e| bad(&e.to_string()))?;
            }
            Cells::F64(a) => {
                let v = a.as_primitive::<Float64Type>().value(i);
                if !v.is_finite() {
                    return Err(bad(&format!("{v} has no MySQL value")));
                }
                write!(out, "{v:e}").map_err(|e| bad(&e.to_string()))?;
            }
            Cells::Text(a) => string(a.as_string::<i32>().value(i).as_bytes(), form, out),
            Cells::Bytes(a) => string(a.as_binary::<i32>().value(i), form, out),
            Cells::Json(v) => string(v[i].as_deref().unwrap_or_default().as_bytes(), form, out),
            Cells::Date(a) => {
                let days = a.as_primitive::<Date32Type>().value(i);
                let (y, m, d) = civil_from_days(i64::from(days));
                if !(0..=9999).contains(&y) {
                    return Err(bad(&format!("year {y} is outside MySQL's 0000 to 9999")));
                }
                quoted(form, out, |o| write!(o, "{y:04}-{m:02}-{d:02}"))?;
            }
            Cells::Micros(v) => {
                let us = v[i].unwrap_or_default();
                let days = us.div_euclid(86_400_000_000);
                let rest = us.rem_euclid(86_400_000_000);
                let (y, m, d) = civil_from_days(days);
                if !(0..=9999).contains(&y) {
                    return Err(bad(&format!("year {y} is outside MySQL's 0000 to 9999")));
                }
                let secs = rest / 1_000_000;
                quoted(form, out, |o| {
                    write!(
                        o,
                        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
                        secs / 3600,
                        secs / 60 % 60,
                        secs % 60,
                        rest % 1_000_000
                    )
                })?;
            }
            Cells::Span(v) => {
                let us = v[i].unwrap_or_default();
                let abs = us.unsigned_abs();
                let secs = abs / 1_000_000;
                if secs / 3600 > 838 {
                    return Err(bad("the span is beyond TIME's 838:59:59"));
                }
                let sign = if us < 0 { "-" } else { "" };
                quoted(form, out, |o| {
                    write!(
                        o,
                        "{sign}{}:{:02}:{:02}.{:06}",
                        secs / 3600,
                        secs / 60 % 60,
                        secs % 60,
                        abs % 1_000_000
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// `f`'s text, in quotes for SQL.
fn quoted(
    form: Form,
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> Result<()> {
    if form == Form::Sql {
        out.push(b'\'');
    }
    f(out).map_err(|e| Error::internal("printing a value").with_source(e))?;
    if form == Form::Sql {
        out.push(b'\'');
    }
    Ok(())
}

/// Text or bytes: escaped for `LOAD DATA`, a hex literal for SQL (no escaping rule of
/// the session can change what it means).
fn string(bytes: &[u8], form: Form, out: &mut Vec<u8>) {
    match form {
        Form::Infile => {
            for &b in bytes {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    0 => out.extend_from_slice(b"\\0"),
                    _ => out.push(b),
                }
            }
        }
        Form::Sql if bytes.is_empty() => out.extend_from_slice(b"''"),
        Form::Sql => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"X'");
            for &b in bytes {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            out.push(b'\'');
        }
    }
}

/// Rows `rows` of `columns` as `LOAD DATA` lines.
pub fn lines(columns: &[Column], rows: std::ops::Range<usize>, out: &mut Vec<u8>) -> Result<()> {
    for i in rows {
        for (c, column) in columns.iter().enumerate() {
            if c > 0 {
                out.push(b'\t');
            }
            column.print(i, Form::Infile, out)?;
        }
        out.push(b'\n');
    }
    Ok(())
}

/// Row `i` of `columns` as an SQL tuple `(a, b, ...)`.
pub fn tuple(columns: &[Column], i: usize, out: &mut Vec<u8>) -> Result<()> {
    out.push(b'(');
    for (c, column) in columns.iter().enumerate() {
        if c > 0 {
            out.push(b',');
        }
        column.print(i, Form::Sql, out)?;
    }
    out.push(b')');
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{BinaryArray, Float64Array, StringArray, TimestampNanosecondArray};

    use super::*;

    fn printed(array: ArrayRef, form: Form) -> Vec<String> {
        let c = Column::new("c", &array, None).unwrap();
        (0..array.len())
            .map(|i| {
                let mut out = Vec::new();
                c.print(i, form, &mut out).unwrap();
                String::from_utf8_lossy(&out).into_owned()
            })
            .collect()
    }

    #[test]
    fn escapes_what_load_data_reads() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a\tb\\c\nd\0"),
            None,
            Some("\\N"),
        ]));
        assert_eq!(
            printed(a, Form::Infile),
            vec!["a\\tb\\\\c\\nd\\0", "\\N", "\\\\N"]
        );
        let b: ArrayRef = Arc::new(BinaryArray::from(vec![&b"\xff\x00"[..]]));
        assert_eq!(printed(b, Form::Sql), vec!["X'ff00'"]);
    }

    #[test]
    fn integers_and_decimals_print_their_exact_digits() {
        use arrow_array::{Decimal128Array, Decimal256Array, Int8Array, UInt64Array};
        let i: ArrayRef = Arc::new(Int8Array::from(vec![-128]));
        assert_eq!(printed(i, Form::Sql), vec!["-128"]);
        let u: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX]));
        assert_eq!(printed(u, Form::Infile), vec!["18446744073709551615"]);
        let d: ArrayRef = Arc::new(
            Decimal128Array::from(vec![-1, 123_456])
                .with_precision_and_scale(10, 4)
                .unwrap(),
        );
        assert_eq!(printed(d, Form::Sql), vec!["-0.0001", "12.3456"]);
        let big =
            arrow_buffer::i256::from_string("12345678901234567890123456789012345678901234567890")
                .unwrap();
        let d: ArrayRef = Arc::new(
            Decimal256Array::from(vec![big])
                .with_precision_and_scale(65, 30)
                .unwrap(),
        );
        assert_eq!(
            printed(d, Form::Infile),
            vec!["12345678901234567890.123456789012345678901234567890"]
        );
    }

    #[test]
    fn floats_print_exactly_and_refuse_nan() {
        let a: ArrayRef = Arc::new(Float64Array::from(vec![0.1, 1e300, -0.0]));
        let text = printed(a, Form::Sql);
        assert_eq!(text[1], "1e300");
        assert_eq!(text[0].parse::<f64>().unwrap(), 0.1);
        assert_eq!(text[1].parse::<f64>().unwrap(), 1e300);
        let nan: ArrayRef = Arc::new(Float64Array::from(vec![f64::NAN]));
        let c = Column::new("x", &nan, None).unwrap();
        let err = c.print(0, Form::Infile, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("column \"x\", row 0"));
    }

    #[test]
    fn timestamps_keep_microseconds_or_fail() {
        let a: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![
            -1_000i64,
            1_700_000_000_123_456_000,
        ]));
        assert_eq!(
            printed(a, Form::Sql),
            vec![
                "'1969-12-31 23:59:59.999999'",
                "'2023-11-14 22:13:20.123456'"
            ]
        );
        let bad: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![1i64]));
        assert!(Column::new("t", &bad, None).is_err());
    }
}
