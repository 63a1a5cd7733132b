//! Value generation: every value is a pure function of (seed, row, column).

use std::fmt::Write;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, PrimitiveArray, StringArray};
use arrow_schema::{DataType, Field, TimeUnit};
use connector_api::{Error, Result};

const EVENTS: [&str; 6] = [
    "view",
    "click",
    "add_to_cart",
    "purchase",
    "signup",
    "logout",
];
const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "JP", "BR", "IN", "GB", "ES"];
const TAGS: [&str; 5] = ["new", "promo", "returning", "mobile", "vip"];
/// 2024-01-01T00:00:00Z in microseconds.
const BASE_MICROS: i64 = 1_704_067_200_000_000;

/// SplitMix64: a fast, well-mixed hash of the cell coordinates.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fails for types the generator cannot produce.
pub fn check_supported(dt: &DataType) -> Result<()> {
    match dt {
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::Binary
        | DataType::Date32
        | DataType::Timestamp(_, _)
        | DataType::Decimal128(_, _) => Ok(()),
        DataType::List(f) if f.data_type() == &DataType::Utf8 => Ok(()),
        other => Err(Error::config(format!(
            "datagen cannot generate {}",
            connector_api::type_name(other)
        ))),
    }
}

/// Generates one column for rows `start..start+len`.
pub struct Generator {
    pub seed: u64,
    pub null_rate: f64,
}

impl Generator {
    fn cell(&self, row: u64, col: usize) -> u64 {
        mix(self.seed ^ mix(row.wrapping_mul(1_000_003).wrapping_add(col as u64)))
    }

    fn is_null(&self, field: &Field, row: u64, col: usize) -> bool {
        field.is_nullable()
            && self.null_rate > 0.0
            && (mix(self.cell(row, col) ^ 0xA5A5) % 1_000_000) as f64 / 1_000_000.0 < self.null_rate
    }

    pub fn column(&self, field: &Field, col: usize, start: u64, len: usize) -> ArrayRef {
        let rows = start..start + len as u64;
        let null = |r: u64| self.is_null(field, r, col);
        let name = field.name().as_str();
        macro_rules! prim {
            ($t:ty, $f:expr) => {
                Arc::new(PrimitiveArray::<$t>::from_iter(rows.clone().map(|r| {
                    if null(r) {
                        None
                    } else {
                        Some($f(r, self.cell(r, col)))
                    }
                }))) as ArrayRef
            };
        }
        match field.data_type() {
            DataType::Int64 if name == "id" => prim!(Int64Type, |r: u64, _| r as i64),
            DataType::Int64 if name == "user_id" => {
                prim!(Int64Type, |_, h: u64| (h % 100_000) as i64)
            }
            DataType::Boolean => Arc::new(BooleanArray::from_iter(rows.clone().map(|r| {
                if null(r) {
                    None
                } else {
                    Some(self.cell(r, col) & 1 == 1)
                }
            }))),
            DataType::Int8 => prim!(Int8Type, |_, h: u64| h as i8),
            DataType::Int16 => prim!(Int16Type, |_, h: u64| h as i16),
            DataType::Int32 => prim!(Int32Type, |_, h: u64| h as i32),
            DataType::Int64 => prim!(Int64Type, |_, h: u64| h as i64),
            DataType::UInt8 => prim!(UInt8Type, |_, h: u64| h as u8),
            DataType::UInt16 => prim!(UInt16Type, |_, h: u64| h as u16),
            DataType::UInt32 => prim!(UInt32Type, |_, h: u64| h as u32),
            DataType::UInt64 => prim!(UInt64Type, |_, h: u64| h),
            DataType::Float32 => prim!(Float32Type, |_, h: u64| (h % 1_000_000) as f32 / 100.0),
            DataType::Float64 => prim!(Float64Type, |_, h: u64| (h % 100_000_000) as f64 / 1000.0),
            DataType::Date32 => prim!(Date32Type, |_, h: u64| 19_723 + (h % 365) as i32),
            DataType::Timestamp(unit, tz) => {
                // one event per millisecond from 2024-01-01, so timestamps increase with rows
                let micros = |r: u64| BASE_MICROS + r as i64 * 1000;
                let scale = |m: i64| match unit {
                    TimeUnit::Second => m / 1_000_000,
                    TimeUnit::Millisecond => m / 1000,
                    TimeUnit::Microsecond => m,
                    TimeUnit::Nanosecond => m * 1000,
                };
                let values = rows.clone().map(|r| (!null(r)).then(|| scale(micros(r))));
                let arr: ArrayRef = match unit {
                    TimeUnit::Second => {
                        Arc::new(PrimitiveArray::<TimestampSecondType>::from_iter(values))
                    }
                    TimeUnit::Millisecond => Arc::new(
                        PrimitiveArray::<TimestampMillisecondType>::from_iter(values),
                    ),
                    TimeUnit::Microsecond => Arc::new(
                        PrimitiveArray::<TimestampMicrosecondType>::from_iter(values),
                    ),
                    TimeUnit::Nanosecond => {
                        Arc::new(PrimitiveArray::<TimestampNanosecondType>::from_iter(values))
                    }
                };
                match tz {
                    // the times are UTC already: only the zone is set (no pass over them)
                    Some(tz) if matches!(tz.as_ref(), "UTC" | "+00:00") => arr
                        .to_data()
                        .into_builder()
                        .data_type(field.data_type().clone())
                        .build()
                        .map(arrow_array::make_array)
                        .unwrap_or(arr),
                    // the times are wall-clock times in the zone
                    Some(tz) => {
                        arrow_cast::cast(&arr, &DataType::Timestamp(*unit, Some(tz.clone())))
                            .unwrap_or(arr)
                    }
                    None => arr,
                }
            }
            DataType::Decimal128(p, s) => {
                let max = 10i128.pow((*p as u32).min(18));
                Arc::new(
                    PrimitiveArray::<Decimal128Type>::from_iter(rows.clone().map(|r| {
                        if null(r) {
                            None
                        } else {
                            Some((self.cell(r, col) as i128) % max)
                        }
                    }))
                    .with_precision_and_scale(*p, *s)
                    .unwrap_or_else(|_| PrimitiveArray::<Decimal128Type>::from(Vec::<i128>::new())),
                )
            }
            DataType::Binary => Arc::new(BinaryArray::from_iter(rows.clone().map(|r| {
                if null(r) {
                    None
                } else {
                    Some(self.cell(r, col).to_le_bytes())
                }
            }))),
            DataType::Utf8 => Arc::new(self.strings(name, col, rows.clone(), null)),
            DataType::List(_) => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for r in rows.clone() {
                    if null(r) {
                        b.append(false);
                        continue;
                    }
                    let h = self.cell(r, col);
                    for i in 0..(h % 3) {
                        b.values()
                            .append_value(TAGS[((h >> (8 * i)) % TAGS.len() as u64) as usize]);
                    }
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            // check_supported rejects every other type at validate time
            _ => arrow_array::new_null_array(field.data_type(), len),
        }
    }

    /// A text column, each value written straight into the array's buffer (no string
    /// per value: this is the generator's hot path).
    fn strings(
        &self,
        name: &str,
        col: usize,
        rows: std::ops::Range<u64>,
        null: impl Fn(u64) -> bool,
    ) -> StringArray {
        let len = (rows.end - rows.start) as usize;
        let mut b = StringBuilder::with_capacity(len, len * 16);
        for r in rows {
            if null(r) {
                b.append_null();
                continue;
            }
            let h = self.cell(r, col);
            match name {
                "uuid" => b.append_value(uuid_text(h, mix(h)).as_str()),
                "event" => b.append_value(EVENTS[(h % EVENTS.len() as u64) as usize]),
                "country" => b.append_value(COUNTRIES[(h % COUNTRIES.len() as u64) as usize]),
                "payload" => {
                    // writing to a StringBuilder cannot fail
                    let _ = write!(b, "{{\"page\":\"/p/{}\",\"ms\":{}}}", h % 1000, h % 5000);
                    b.append_value("");
                }
                _ => {
                    let _ = write!(b, "s{:x}", h % 0xFFFF_FFFF);
                    b.append_value("");
                }
            }
        }
        b.finish()
    }
}

/// A version 4 UUID's text of the bits `a` and `b`, as `{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}`
/// of `a >> 32`, `a >> 16`, `a`, `0x8000 | b >> 48` and `b` would print it.
fn uuid_text(a: u64, b: u64) -> Uuid {
    let mut out = [b'-'; 36];
    hex(&mut out[0..8], a >> 32);
    hex(&mut out[9..13], (a >> 16) & 0xFFFF);
    out[14] = b'4';
    hex(&mut out[15..18], a & 0xFFF);
    hex(&mut out[19..23], 0x8000 | (b >> 48) & 0x3FFF);
    hex(&mut out[24..36], b & 0xFFFF_FFFF_FFFF);
    Uuid(out)
}

/// The text of a UUID, on the stack.
struct Uuid([u8; 36]);

impl Uuid {
    fn as_str(&self) -> &str {
        // only ASCII hex digits and dashes were written
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Fills `out` with the low hex digits of `v`, zero-padded, most significant first.
fn hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for d in out.iter_mut().rev() {
        *d = DIGITS[(v & 0xF) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values() {
        let g = Generator {
            seed: 1,
            null_rate: 0.1,
        };
        let f = Field::new("x", DataType::Int32, true);
        assert_eq!(
            g.column(&f, 0, 100, 50).as_ref(),
            g.column(&f, 0, 100, 50).as_ref()
        );
        let other = Generator {
            seed: 2,
            null_rate: 0.1,
        };
        assert_ne!(
            g.column(&f, 0, 100, 50).as_ref(),
            other.column(&f, 0, 100, 50).as_ref()
        );
    }

    #[test]
    fn uuid_text_is_the_formatted_text() {
        for (a, b) in [
            (0u64, 0u64),
            (u64::MAX, u64::MAX),
            (0x0123_4567_89ab_cdef, 42),
        ] {
            let want = format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xFFFF,
                a & 0xFFF,
                0x8000 | (b >> 48) & 0x3FFF,
                b & 0xFFFF_FFFF_FFFF
            );
            assert_eq!(uuid_text(a, b).as_str(), want);
        }
    }
}
