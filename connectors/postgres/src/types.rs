//! Arrow <-> PostgreSQL types, and the COPY text encoding of Arrow values.
//!
//! | Arrow | PostgreSQL (created by the sink) |
//! |---|---|
//! | Boolean | boolean |
//! | Int8, Int16 / Int32 / Int64 | smallint / integer / bigint |
//! | UInt8, UInt16 / UInt32 / UInt64 | integer / bigint / numeric(20,0) |
//! | Float32 / Float64 | real / double precision |
//! | Utf8 | text |
//! | Binary | bytea |
//! | Decimal128(p,s) | numeric(p,s) |
//! | Date32 | date |
//! | Time64(µs) | time |
//! | Timestamp(unit) | timestamp |
//! | Timestamp(unit, zone) | timestamptz |
//! | List<T> | T[] |
//! | Struct | jsonb |
//!
//! Reading a table's types back (for the drift policy): the inverse, with `uuid`,
//! `json`, `jsonb`, `character varying(n)`, enums and other types PostgreSQL reads
//! from text mapped to Utf8 (the sink writes them as text and PostgreSQL parses them);
//! unconstrained `numeric` maps to Decimal128(38, 10).

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, TimeUnit};
use connector_api::{Error, Result};

/// The PostgreSQL type the sink creates for a column of `dt`.
pub fn pg_type(column: &str, dt: &DataType) -> Result<String> {
    Ok(match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 | DataType::UInt8 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Date32 => "date".into(),
        DataType::Time64(_) => "time".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("{}[]", pg_type(column, f.data_type())?)
        }
        DataType::Struct(_) => "jsonb".into(),
        other => {
            return Err(Error::schema(format!(
                "column \"{column}\": type {} has no PostgreSQL mapping",
                connector_api::type_name(other)
            )))
        }
    })
}

/// The Arrow type of a PostgreSQL type as `format_type()` writes it.
pub fn arrow_type(pg: &str) -> DataType {
    let t = pg.trim();
    if let Some(inner) = t.strip_suffix("[]") {
        return DataType::List(Arc::new(Field::new("item", arrow_type(inner), true)));
    }
    let base = crate::value::base(t);
    match base {
        "boolean" => DataType::Boolean,
        "smallint" => DataType::Int16,
        "integer" => DataType::Int32,
        "bigint" => DataType::Int64,
        "real" => DataType::Float32,
        "double precision" => DataType::Float64,
        "bytea" => DataType::Binary,
        "date" => DataType::Date32,
        "numeric" => {
            let args: Vec<i64> = t
                .trim_start_matches(base)
                .trim_matches(|c| c == '(' || c == ')')
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            match args.as_slice() {
                [p, s] if (1..=38).contains(p) => DataType::Decimal128(*p as u8, *s as i8),
                [p] if (1..=38).contains(p) => DataType::Decimal128(*p as u8, 0),
                _ => DataType::Decimal128(38, 10),
            }
        }
        _ if t.starts_with("timestamp") && t.ends_with("with time zone") => DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(connector_api::types::UTC.into()),
        ),
        _ if t.starts_with("timestamp") => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ if t.starts_with("time") => DataType::Time64(TimeUnit::Microsecond),
        _ => DataType::Utf8,
    }
}

/// The Arrow type the source reads a column of PostgreSQL type `pg` (as
/// `format_type()` writes it; `typtype` from pg_type) as; `None` when it has none.
pub fn source_type(pg: &str, typtype: &str) -> Option<DataType> {
    if let Some(inner) = pg.strip_suffix("[]") {
        let item = source_type(inner, "b")?;
        return Some(DataType::List(Arc::new(Field::new("item", item, true))));
    }
    if typtype == "e" {
        return Some(DataType::Utf8); // enum labels
    }
    let base = crate::value::base(pg);
    let known_text = [
        "text",
        "character varying",
        "character",
        "\"char\"",
        "name",
        "uuid",
        "json",
        "jsonb",
        "interval",
        "inet",
        "cidr",
        "macaddr",
        "xml",
        "money",
        "citext",
    ];
    match base {
        "boolean" | "smallint" | "integer" | "bigint" | "real" | "double precision" | "bytea"
        | "date" | "numeric" => Some(arrow_type(pg)),
        // a time with zone keeps its offset as text (`04:05:06.789-08`): Arrow's times
        // have no zone, and converting to UTC would lose it
        _ if pg.starts_with("time ") || pg.starts_with("time(") => {
            match pg.ends_with("with time zone") {
                true => Some(DataType::Utf8),
                false => Some(arrow_type(pg)),
            }
        }
        _ if pg.starts_with("timestamp") || pg.starts_with("time") => Some(arrow_type(pg)),
        _ if known_text.contains(&base) => Some(DataType::Utf8),
        _ => None,
    }
}

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

fn unformattable(name: &str, row: usize) -> Error {
    Error::data(format!(
        "column \"{name}\" row {row}: the value has no text form (out of its type's range)"
    ))
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

use crate::calendar::{PG_EPOCH_DAYS, PG_EPOCH_MICROS};

/// How one column is written in the binary COPY format, or None when it is not
/// supported (the batch then goes as text).
fn binary_kind(dt: &DataType, pg: &str) -> Option<u8> {
    let base = crate::value::base(pg);
    Some(match (dt, base) {
        (DataType::Boolean, "boolean") => b'b',
        (DataType::Int8 | DataType::Int16, "smallint") => b'2',
        (
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16,
            "integer",
        ) => b'4',
        (dt, "bigint") if dt.is_integer() && *dt != DataType::UInt64 => b'8',
        (DataType::Float32, "real") => b'f',
        (DataType::Float32 | DataType::Float64, "double precision") => b'd',
        (DataType::Utf8, "text" | "character varying" | "name") => b's',
        (DataType::Utf8, "json") => b's',
        (DataType::Utf8, "jsonb") => b'j',
        (DataType::Utf8, "uuid") => b'u',
        (DataType::List(f), "text[]") if *f.data_type() == DataType::Utf8 => b'a',
        (DataType::Binary, "bytea") => b'y',
        (DataType::Date32, "date") => b'D',
        (DataType::Time64(TimeUnit::Microsecond), _)
            if pg.starts_with("time") && !pg.contains("zone") || pg == "time without time zone" =>
        {
            b't'
        }
        (DataType::Timestamp(_, None), _)
            if pg.starts_with("timestamp") && pg.ends_with("without time zone") =>
        {
            b'T'
        }
        (DataType::Timestamp(_, Some(_)), _)
            if pg.starts_with("timestamp") && pg.ends_with("with time zone") =>
        {
            b'T'
        }
        (DataType::Decimal128(_, _), "numeric") => b'n',
        _ => return None,
    })
}

/// A uuid in its 16 bytes; `None` when `text` is not one (hyphens optional, any case).
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut digits = text.bytes().filter(|&b| b != b'-');
    for byte in &mut out {
        let hi = (digits.next()? as char).to_digit(16)?;
        let lo = (digits.next()? as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    (digits.next().is_none() && matches!(text.len(), 32 | 36)).then_some(out)
}

/// A one-dimensional `text[]` in the binary array format, with its length prefix.
fn text_array(out: &mut Vec<u8>, items: &arrow_array::StringArray) {
    const TEXT_OID: u32 = 25;
    let at = out.len();
    out.extend_from_slice(&0i32.to_be_bytes()); // length, set below
    let ndim: i32 = if items.is_empty() { 0 } else { 1 };
    out.extend_from_slice(&ndim.to_be_bytes());
    out.extend_from_slice(&i32::from(items.null_count() > 0).to_be_bytes());
    out.extend_from_slice(&TEXT_OID.to_be_bytes());
    if ndim == 1 {
        out.extend_from_slice(&(items.len() as i32).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        for item in items {
            match item {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v.as_bytes());
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
    }
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// PostgreSQL's binary `numeric`: base-10000 digits, weight, sign, display scale.
fn numeric_bytes(out: &mut Vec<u8>, unscaled: i128, scale: i8) {
    let scale = scale.max(0) as usize;
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let (int_part, frac_part) = if digits.len() > scale {
        (
            digits[..digits.len() - scale].to_string(),
            digits[digits.len() - scale..].to_string(),
        )
    } else {
        (String::new(), format!("{digits:0>scale$}"))
    };
    // integer part grouped from the right, fraction from the left
    let mut groups: Vec<i16> = Vec::new();
    let int_len = int_part.len();
    let lead = int_len % 4;
    let mut weight: i16 = if int_len == 0 {
        -1
    } else {
        int_len.div_ceil(4) as i16 - 1
    };
    let mut i = 0;
    if lead > 0 {
        groups.push(int_part[..lead].parse().unwrap_or(0));
        i = lead;
    }
    while i < int_len {
        groups.push(int_part[i..i + 4].parse().unwrap_or(0));
        i += 4;
    }
    let mut f = 0;
    while f < frac_part.len() {
        let chunk = &frac_part[f..(f + 4).min(frac_part.len())];
        groups.push(format!("{chunk:0<4}").parse().unwrap_or(0));
        f += 4;
    }
    // drop leading zero groups (each lowers the weight) and trailing ones
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign: u16 = if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    };
    let len = 8 + 2 * groups.len();
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

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
            let values = raw
                .iter()
                .enumerate()
                .map(|(row, v)| v.map(|v| micros(name, row, unit, v)).transpose())
                .collect::<Result<Vec<_>>>()?;
            // the formatter writes a zoned column's local day: a day either side of UTC's
            let margin = if zone.is_some() { 1 } else { 0 };
            let in_range = values.iter().flatten().all(|m| {
                let day = m.div_euclid(MICROS_PER_DAY);
                formatter_writes(day - margin) && formatter_writes(day + margin)
            });
            if in_range && *unit != TimeUnit::Nanosecond {
                return Ok(None);
            }
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

/// A batch in the binary COPY format, when every column has a binary form for its
/// PostgreSQL type (`pg_types`, as `format_type()` writes them); None otherwise.
pub fn copy_binary(batch: &RecordBatch, pg_types: &[String]) -> Result<Option<Vec<u8>>> {
    let mut kinds = Vec::with_capacity(batch.num_columns());
    for (c, pg) in batch.columns().iter().zip(pg_types) {
        match binary_kind(c.data_type(), pg) {
            Some(k) => kinds.push(k),
            None => return Ok(None),
        }
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(&kinds)
        .map(|(c, k)| match k {
            b'2' => arrow_cast::cast(c, &DataType::Int16),
            b'4' => arrow_cast::cast(c, &DataType::Int32),
            b'8' => arrow_cast::cast(c, &DataType::Int64),
            b'd' => arrow_cast::cast(c, &DataType::Float64),
            _ => Ok(c.clone()),
        })
        .collect::<std::result::Result<_, _>>()?;
    let mut out = Vec::with_capacity(19 + batch.num_rows() * (2 + columns.len() * 12));
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for row in 0..batch.num_rows() {
        out.extend_from_slice(&(columns.len() as i16).to_be_bytes());
        for (i, (c, k)) in columns.iter().zip(&kinds).enumerate() {
            if c.is_null(row) {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let mut fixed = |bytes: &[u8]| {
                out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                out.extend_from_slice(bytes);
            };
            match k {
                b'b' => fixed(&[u8::from(c.as_boolean().value(row))]),
                b'2' => fixed(
                    &c.as_primitive::<arrow_array::types::Int16Type>()
                        .value(row)
                        .to_be_bytes(),
                ),
                b'4' => fixed(
                    &c.as_primitive::<arrow_array::types::Int32Type>()
                        .value(row)
                        .to_be_bytes(),
                ),
                b'8' => fixed(
                    &c.as_primitive::<arrow_array::types::Int64Type>()
                        .value(row)
                        .to_be_bytes(),
                ),
                b'f' => fixed(
                    &c.as_primitive::<arrow_array::types::Float32Type>()
                        .value(row)
                        .to_be_bytes(),
                ),
                b'd' => fixed(
                    &c.as_primitive::<arrow_array::types::Float64Type>()
                        .value(row)
                        .to_be_bytes(),
                ),
                b's' => fixed(c.as_string::<i32>().value(row).as_bytes()),
                b'j' => {
                    let text = c.as_string::<i32>().value(row).as_bytes();
                    out.extend_from_slice(&((text.len() + 1) as i32).to_be_bytes());
                    out.push(1);
                    out.extend_from_slice(text);
                }
                b'u' => match uuid_bytes(c.as_string::<i32>().value(row)) {
                    Some(bytes) => fixed(&bytes),
                    // not a uuid: the text format lets the server name the value
                    None => return Ok(None),
                },
                b'a' => {
                    let list = c.as_list::<i32>();
                    let items = list.value(row);
                    let items = items.as_string::<i32>();
                    text_array(&mut out, items);
                }
                b'y' => fixed(c.as_binary::<i32>().value(row)),
                b'D' => fixed(
                    &(c.as_primitive::<arrow_array::types::Date32Type>()
                        .value(row)
                        - PG_EPOCH_DAYS)
                        .to_be_bytes(),
                ),
                b't' => fixed(
                    &c.as_primitive::<arrow_array::types::Time64MicrosecondType>()
                        .value(row)
                        .to_be_bytes(),
                ),
                b'T' => {
                    let DataType::Timestamp(unit, _) = c.data_type() else {
                        return Ok(None);
                    };
                    let v = match unit {
                        TimeUnit::Second => c
                            .as_primitive::<arrow_array::types::TimestampSecondType>()
                            .value(row),
                        TimeUnit::Millisecond => c
                            .as_primitive::<arrow_array::types::TimestampMillisecondType>()
                            .value(row),
                        TimeUnit::Microsecond => c
                            .as_primitive::<arrow_array::types::TimestampMicrosecondType>()
                            .value(row),
                        TimeUnit::Nanosecond => c
                            .as_primitive::<arrow_array::types::TimestampNanosecondType>()
                            .value(row),
                    };
                    let name = batch.schema_ref().field(i).name();
                    let pg = micros(name, row, unit, v)?
                        .checked_sub(PG_EPOCH_MICROS)
                        .ok_or_else(|| unformattable(name, row))?;
                    fixed(&pg.to_be_bytes());
                }
                b'n' => {
                    let DataType::Decimal128(_, scale) = c.data_type() else {
                        return Ok(None);
                    };
                    numeric_bytes(
                        &mut out,
                        c.as_primitive::<arrow_array::types::Decimal128Type>()
                            .value(row),
                        *scale,
                    );
                }
                _ => return Ok(None),
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ListArray, StringArray};

    #[test]
    fn created_types_map_back() {
        for dt in [
            DataType::Boolean,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Utf8,
            DataType::Binary,
            DataType::Decimal128(12, 2),
            DataType::Date32,
            DataType::Time64(TimeUnit::Microsecond),
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ] {
            let pg = pg_type("c", &dt).unwrap();
            let pg = match pg.as_str() {
                "timestamptz" => "timestamp with time zone".to_string(),
                "timestamp" => "timestamp without time zone".to_string(),
                "time" => "time without time zone".to_string(),
                _ => pg,
            };
            assert_eq!(arrow_type(&pg), dt, "{pg}");
        }
        assert_eq!(arrow_type("numeric"), DataType::Decimal128(38, 10));
        // the source keeps the offset of a time with zone, as text
        assert_eq!(
            source_type("time with time zone", "b"),
            Some(DataType::Utf8)
        );
        assert_eq!(
            source_type("time(3) with time zone", "b"),
            Some(DataType::Utf8)
        );
        assert_eq!(
            arrow_type("time(3) without time zone"),
            DataType::Time64(TimeUnit::Microsecond)
        );
        assert!(matches!(arrow_type("integer[]"), DataType::List(_)));
    }

    #[test]
    fn uuids_parse_or_fall_back() {
        let b = uuid_bytes("A0EEBC99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(b[0], 0xa0);
        assert_eq!(b[15], 0x11);
        assert_eq!(uuid_bytes("a0eebc999c0b4ef8bb6d6bb9bd380a11"), Some(b));
        assert_eq!(uuid_bytes("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"), None);
        assert_eq!(uuid_bytes("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"), None);
        assert_eq!(uuid_bytes("not a uuid"), None);
    }

    #[test]
    fn uuid_and_text_array_columns_use_the_binary_format() {
        let mut tags =
            arrow_array::builder::ListBuilder::new(arrow_array::builder::StringBuilder::new());
        tags.values().append_value("a");
        tags.values().append_null();
        tags.append(true);
        tags.append(true);
        let tags = tags.finish();
        let batch = RecordBatch::try_from_iter(vec![
            (
                "u",
                Arc::new(StringArray::from(vec![
                    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                    "00000000-0000-0000-0000-000000000000",
                ])) as ArrayRef,
            ),
            ("tags", Arc::new(tags) as ArrayRef),
        ])
        .unwrap();
        let types = ["uuid".to_string(), "text[]".to_string()];
        let out = copy_binary(&batch, &types).unwrap().expect("binary");
        // row 1: 2 fields; uuid (16 bytes); text[] of ["a", NULL]
        let row = &out[19..];
        assert_eq!(&row[..2], &2i16.to_be_bytes());
        assert_eq!(&row[2..6], &16i32.to_be_bytes());
        assert_eq!(row[6], 0xa0);
        let array = &row[22..];
        let want: Vec<u8> = [
            29i32.to_be_bytes(), // length
            1i32.to_be_bytes(),  // ndim
            1i32.to_be_bytes(),  // has nulls
            25i32.to_be_bytes(), // text
            2i32.to_be_bytes(),  // items
            1i32.to_be_bytes(),  // lower bound
            1i32.to_be_bytes(),  // "a"
        ]
        .concat();
        assert_eq!(&array[..28], &want[..]);
        assert_eq!(array[28], b'a');
        assert_eq!(&array[29..33], &(-1i32).to_be_bytes());
        // not a uuid: the text format (the server names the value)
        let bad = RecordBatch::try_from_iter(vec![(
            "u",
            Arc::new(StringArray::from(vec!["nope"])) as ArrayRef,
        )])
        .unwrap();
        assert!(copy_binary(&bad, &types[..1]).unwrap().is_none());
    }

    #[test]
    fn numeric_binary_matches_postgres_layout() {
        let mut out = Vec::new();
        numeric_bytes(&mut out, 12_345_678_901_234_567_890, 4); // 1234567890123456.7890
                                                                // ndigits 5: 1234 5678 9012 3456 7890; weight 3; dscale 4
        assert_eq!(&out[4..12], &[0, 5, 0, 3, 0, 0, 0, 4]);
        let mut out = Vec::new();
        numeric_bytes(&mut out, -1, 4); // -0.0001
        assert_eq!(&out[4..14], &[0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 1]);
        let mut out = Vec::new();
        numeric_bytes(&mut out, 0, 2);
        assert_eq!(&out[4..12], &[0, 0, 0, 0, 0, 0, 0, 2]);
    }

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
