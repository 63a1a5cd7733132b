//! The COPY binary format, for the types with a native binary form.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use connector_api::Result;

use crate::calendar::{PG_EPOCH_DAYS, PG_EPOCH_MICROS};

use super::{micros, unformattable};

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
    use std::sync::Arc;

    use super::*;
    use arrow_array::StringArray;

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
}
