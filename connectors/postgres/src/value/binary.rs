//! Values in the server's binary send format (what `COPY ... (FORMAT binary)` writes
//! per field).

use std::borrow::Cow;

use super::{Kind, Value};
use crate::calendar::{PG_EPOCH_DAYS as EPOCH_DAYS, PG_EPOCH_MICROS as EPOCH_MICROS};

/// `N` bytes of `data` at `at`.
pub fn take<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], String> {
    data.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "value cut short".to_string())
}

fn exact<const N: usize>(data: &[u8]) -> Result<[u8; N], String> {
    if data.len() != N {
        return Err(format!("expected {N} bytes, got {}", data.len()));
    }
    take(data, 0)
}

fn utf8(data: &[u8]) -> Result<Cow<'_, str>, String> {
    std::str::from_utf8(data)
        .map(Cow::Borrowed)
        .map_err(|e| e.to_string())
}

/// The value of a `kind` column from its binary form.
pub fn value<'a>(kind: &Kind, data: &'a [u8]) -> Result<Value<'a>, String> {
    Ok(match kind {
        Kind::Bool => Value::Bool(exact::<1>(data)?[0] != 0),
        Kind::I16 => Value::I16(i16::from_be_bytes(exact(data)?)),
        Kind::I32 => Value::I32(i32::from_be_bytes(exact(data)?)),
        Kind::I64 => Value::I64(i64::from_be_bytes(exact(data)?)),
        Kind::F32 => Value::F32(f32::from_be_bytes(exact(data)?)),
        Kind::F64 => Value::F64(f64::from_be_bytes(exact(data)?)),
        Kind::Text => Value::Text(utf8(data)?),
        Kind::Uuid => Value::Uuid(exact(data)?),
        Kind::Jsonb => match data.split_first() {
            Some((1, json)) => Value::Text(utf8(json)?),
            _ => return Err("jsonb in an unknown binary version".into()),
        },
        Kind::Bytes => Value::Bytes(Cow::Borrowed(data)),
        Kind::Date => {
            let d = i32::from_be_bytes(exact(data)?);
            if d == i32::MAX || d == i32::MIN {
                return Err("date infinity has no Arrow value".into());
            }
            Value::I32(d + EPOCH_DAYS)
        }
        Kind::Time => Value::I64(i64::from_be_bytes(exact(data)?)),
        Kind::Timestamp => {
            let t = i64::from_be_bytes(exact(data)?);
            if t == i64::MAX || t == i64::MIN {
                return Err("timestamp infinity has no Arrow value".into());
            }
            Value::I64(
                t.checked_add(EPOCH_MICROS)
                    .ok_or("timestamp does not fit Arrow's microseconds since 1970")?,
            )
        }
        Kind::Numeric { precision, scale } => Value::Decimal(numeric(data, *precision, *scale)?),
        Kind::List(item) => Value::List(array(item, data)?),
    })
}

/// PostgreSQL's binary numeric (base-10000 digits, weight, sign, display scale) as the
/// unscaled value of Decimal128(precision, scale).
fn numeric(data: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let ndigits = i16::from_be_bytes(take(data, 0)?) as usize;
    let weight = i16::from_be_bytes(take(data, 2)?) as i32;
    let sign = u16::from_be_bytes(take(data, 4)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric NaN has no Decimal128 value".into()),
        _ => return Err("numeric infinity has no Decimal128 value".into()),
    }
    let mut acc: i128 = 0;
    let overflow = || format!("numeric does not fit Decimal128({precision}, {scale})");
    for i in 0..ndigits {
        let digit = i16::from_be_bytes(take(data, 8 + 2 * i)?) as i128;
        let exp = 4 * (weight - i as i32) + scale as i32;
        let term = if exp >= 0 {
            10i128
                .checked_pow(exp as u32)
                .and_then(|p| p.checked_mul(digit))
                .ok_or_else(overflow)?
        } else {
            let div = 10i128.pow((-exp).min(4) as u32);
            if exp < -4 || digit % div != 0 {
                if digit != 0 {
                    return Err(format!(
                        "numeric has more than {scale} fraction digits (the column's scale); not rounded"
                    ));
                }
                0
            } else {
                digit / div
            }
        };
        acc = acc.checked_add(term).ok_or_else(overflow)?;
    }
    if acc >= 10i128.pow(precision as u32) {
        return Err(overflow());
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// A one-dimensional array's elements.
fn array<'a>(item: &Kind, data: &'a [u8]) -> Result<Vec<Value<'a>>, String> {
    let ndim = i32::from_be_bytes(take(data, 0)?);
    if ndim == 0 {
        return Ok(Vec::new());
    }
    if ndim != 1 {
        return Err(format!(
            "a {ndim}-dimensional array has no Arrow list mapping"
        ));
    }
    let len = i32::from_be_bytes(take(data, 12)?).max(0) as usize;
    let mut at = 20;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let n = i32::from_be_bytes(take(data, at)?);
        at += 4;
        if n < 0 {
            out.push(Value::Null);
            continue;
        }
        let end = at + n as usize;
        let bytes = data.get(at..end).ok_or("array element cut short")?;
        out.push(value(item, bytes)?);
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::uuid_text;

    fn numeric_bytes(ndigits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_are_exact_or_refused() {
        // 12345.678 = [1, 2345, 6780] weight 1
        let v = numeric_bytes(&[1, 2345, 6780], 1, 0, 3);
        assert_eq!(numeric(&v, 12, 3), Ok(12_345_678));
        assert_eq!(numeric(&v, 12, 5), Ok(1_234_567_800));
        assert!(numeric(&v, 12, 2).unwrap_err().contains("fraction digits"));
        assert!(numeric(&v, 7, 3).unwrap_err().contains("does not fit"));
        let neg = numeric_bytes(&[5], -1, 0x4000, 4); // -0.0005
        assert_eq!(numeric(&neg, 10, 4), Ok(-5));
        assert_eq!(numeric(&numeric_bytes(&[], 0, 0, 0), 5, 2), Ok(0));
        assert!(numeric(&numeric_bytes(&[], 0, 0xC000, 0), 5, 2)
            .unwrap_err()
            .contains("NaN"));
        // 10^20 at scale 10 in Decimal128(38, 10)
        let big = numeric_bytes(&[1], 5, 0, 0);
        assert_eq!(numeric(&big, 38, 10), Ok(10i128.pow(30)));
    }

    #[test]
    fn uuid_and_jsonb_read_as_postgres_writes_them() {
        let id = [
            0x43, 0xaa, 0x86, 0x52, 0xad, 0x94, 0x43, 0xa2, 0x92, 0x14, 0x23, 0x73, 0x55, 0xc3,
            0x62, 0xf4,
        ];
        assert_eq!(uuid_text(&id), "43aa8652-ad94-43a2-9214-237355c362f4");
        assert_eq!(
            value(&Kind::Jsonb, b"\x01{\"a\": 1}"),
            Ok(Value::Text("{\"a\": 1}".into()))
        );
        assert!(value(&Kind::Jsonb, b"\x02{}").is_err());
        assert!(value(&Kind::Uuid, &id[..15]).is_err());
    }
}
