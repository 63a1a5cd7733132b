//! Encoders for arrow-json's writer where its own ones spend the CPU: object keys,
//! strings, decimals and UTC timestamps.
//!
//! arrow-json escapes every key of every object through `serde_json` again for each row
//! (10 keys a record: 8% of a JSON lines -> JSON lines pipeline's instructions), and
//! every string value byte by byte through an escape table (another 7%). Keys are the
//! same in every row, so [`FastEncoders`] escapes them once per batch. A string column
//! whose bytes hold nothing to escape (no `"`, `\` or control byte, which one vectorised
//! pass over its values buffer tells) is copied value by value between quotes. Decimals
//! and timestamps went through `core::fmt` and a `String` per value (another 11% each);
//! here they are written digit by digit. Any other column, a timestamp in another zone
//! or outside the years 0000-9999, keeps arrow-json's encoder. The output is byte for
//! byte arrow-json's, but for the nulls of a dictionary's values (see [`NULL`]).

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow_array::{Array, ArrowPrimitiveType, GenericStringArray, OffsetSizeTrait, PrimitiveArray};
use arrow_json::writer::{make_encoder, Encoder, EncoderFactory, EncoderOptions, NullableEncoder};
use arrow_json::StructMode;
use arrow_schema::{ArrowError, DataType, FieldRef, TimeUnit};

/// Hands arrow-json's writer the object, string, decimal and UTC timestamp encoders of
/// this module, and leaves every other array (or one they cannot take) to arrow-json.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastEncoders {
    /// Decimals between quotes, as JSON strings (`json.decimals = "string"`).
    pub decimals_as_strings: bool,
}

impl EncoderFactory for FastEncoders {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        let encoder: Option<Box<dyn Encoder + 'a>> = match array.data_type() {
            DataType::Struct(fields) if options.struct_mode() == StructMode::ObjectOnly => {
                let members = fields
                    .iter()
                    .zip(array.as_struct().columns())
                    .map(|(field, column)| {
                        Ok(Member {
                            key: key(field.name()),
                            value: make_encoder(field, column.as_ref(), options)?,
                        })
                    })
                    .collect::<Result<_, ArrowError>>()?;
                Some(Box::new(Object {
                    members,
                    explicit_nulls: options.explicit_nulls(),
                }))
            }
            DataType::Utf8 => clean(array.as_string::<i32>()),
            DataType::LargeUtf8 => clean(array.as_string::<i64>()),
            DataType::Decimal128(precision, scale) => Some(Box::new(Decimal {
                array: array.as_primitive::<Decimal128Type>(),
                precision: *precision as usize,
                scale: *scale,
                quoted: self.decimals_as_strings,
            })),
            DataType::Timestamp(unit, Some(tz))
                if matches!(tz.as_ref(), "+00:00" | "UTC")
                    && options.timestamp_tz_format().is_none() =>
            {
                match unit {
                    TimeUnit::Second => utc::<TimestampSecondType>(array, 1),
                    TimeUnit::Millisecond => utc::<TimestampMillisecondType>(array, 1_000),
                    TimeUnit::Microsecond => utc::<TimestampMicrosecondType>(array, 1_000_000),
                    TimeUnit::Nanosecond => utc::<TimestampNanosecondType>(array, 1_000_000_000),
                }
            }
            _ => None,
        };
        Ok(encoder.map(|e| NullableEncoder::new(e, array.nulls().cloned())))
    }
}

/// `"name":` as arrow-json writes it.
fn key(name: &str) -> Vec<u8> {
    // serde_json's escaping, as arrow-json's; writing into a Vec cannot fail
    let mut out = serde_json::to_vec(name).unwrap_or_default();
    out.push(b':');
    out
}

struct Member<'a> {
    key: Vec<u8>,
    value: NullableEncoder<'a>,
}

/// A struct (or the batch's row) as a JSON object, its keys escaped once.
struct Object<'a> {
    members: Vec<Member<'a>>,
    explicit_nulls: bool,
}

impl Encoder for Object<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for m in &mut self.members {
            let null = m.value.is_null(idx);
            if null && !self.explicit_nulls {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&m.key);
            if null {
                out.extend_from_slice(b"null");
            } else {
                m.value.encode(idx, out);
            }
        }
        out.push(b'}');
    }
}

/// Strings of an array with nothing to escape, copied between quotes.
struct CleanStrings<'a, O: OffsetSizeTrait>(&'a GenericStringArray<O>);

impl<O: OffsetSizeTrait> Encoder for CleanStrings<'_, O> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let s = self.0.value(idx).as_bytes();
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    }
}

/// The clean-string encoder for `array`, or `None` when a value in it needs escaping.
fn clean<'a, O: OffsetSizeTrait>(
    array: &'a GenericStringArray<O>,
) -> Option<Box<dyn Encoder + 'a>> {
    let offsets = array.value_offsets();
    let (first, last) = (offsets[0].as_usize(), offsets[offsets.len() - 1].as_usize());
    let bytes = &array.values()[first..last];
    // fixed-size chunks without an early exit inside them, so the test vectorises
    let dirty = bytes.chunks(64).any(|chunk| {
        chunk.iter().fold(false, |acc, &b| {
            acc | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    });
    (!dirty).then(|| Box::new(CleanStrings(array)) as Box<dyn Encoder + 'a>)
}

/// What a decimal or timestamp encoder writes for a null slot it is asked for. Only a
/// dictionary asks (its values may hold nulls, and it encodes the value a key points
/// to); arrow-json then writes an empty string for a timestamp and nothing at all for a
/// decimal (`{"d":}`, not JSON). Here it is `null`, the one deliberate difference.
const NULL: &[u8] = b"null";

/// Decimal128 values as arrow writes them: the digits, cut to the precision, with the
/// point `scale` digits from the right (zeros padded on either side as needed).
struct Decimal<'a> {
    array: &'a PrimitiveArray<Decimal128Type>,
    precision: usize,
    scale: i8,
    /// Written as a JSON string.
    quoted: bool,
}

impl Encoder for Decimal<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        if self.array.is_null(idx) {
            return out.extend_from_slice(NULL);
        }
        if self.quoted {
            out.push(b'"');
            self.digits(idx, out);
            out.push(b'"');
        } else {
            self.digits(idx, out);
        }
    }
}

impl Decimal<'_> {
    fn digits(&self, idx: usize, out: &mut Vec<u8>) {
        let value = self.array.value(idx);
        let mut buf = [0u8; 40];
        let digits = digits(value.unsigned_abs(), &mut buf);
        if value < 0 {
            out.push(b'-');
        }
        // arrow's format_decimal_str: the digits beyond the precision are cut off
        let kept = &digits[..digits.len().min(self.precision)];
        match self.scale {
            0 => out.extend_from_slice(kept),
            s if s < 0 => {
                out.extend_from_slice(kept);
                out.resize(out.len() + s.unsigned_abs() as usize, b'0');
            }
            s if digits.len() > s as usize => {
                let (whole, fraction) = kept.split_at(kept.len().saturating_sub(s as usize));
                out.extend_from_slice(whole);
                out.push(b'.');
                out.extend_from_slice(fraction);
            }
            s => {
                out.extend_from_slice(b"0.");
                out.resize(out.len() + s as usize - digits.len(), b'0');
                out.extend_from_slice(digits);
            }
        }
    }
}

/// The decimal digits of `v`, written into the end of `buf`.
fn digits(mut v: u128, buf: &mut [u8; 40]) -> &[u8] {
    let mut at = buf.len();
    // u64 arithmetic once the value fits: u128 division is a library call
    while v > u64::MAX as u128 {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let mut v = v as u64;
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[at..]
}

/// UTC timestamps as arrow writes them (chrono's RFC 3339 with `Z`, and 0, 3, 6 or 9
/// digits of fraction, as few as show the value), between quotes.
struct Utc<'a, T: ArrowPrimitiveType<Native = i64>> {
    array: &'a PrimitiveArray<T>,
    per_second: i64,
}

/// The UTC encoder for a timestamp array of `per_second` units a second, or `None`
/// when a value lies outside the years 0000-9999 (chrono writes those with a sign).
fn utc<'a, T: ArrowPrimitiveType<Native = i64>>(
    array: &'a dyn Array,
    per_second: i64,
) -> Option<Box<dyn Encoder + 'a>> {
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z
    const FIRST: i64 = -62_167_219_200;
    const LAST: i64 = 253_402_300_799;
    let array = array.as_primitive::<T>();
    let in_range = array.iter().flatten().all(|v| {
        let secs = v.div_euclid(per_second);
        (FIRST..=LAST).contains(&secs)
    });
    in_range.then(|| Box::new(Utc { array, per_second }) as Box<dyn Encoder + 'a>)
}

impl<T: ArrowPrimitiveType<Native = i64>> Encoder for Utc<'_, T> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        if self.array.is_null(idx) {
            return out.extend_from_slice(NULL);
        }
        let v = self.array.value(idx);
        let secs = v.div_euclid(self.per_second);
        let nanos = v.rem_euclid(self.per_second) * (1_000_000_000 / self.per_second);
        let (year, month, day) = crate::calendar::civil_from_days(secs.div_euclid(86_400));
        let of_day = secs.rem_euclid(86_400);
        // the text is laid out in place, then copied once: `"YYYY-MM-DDTHH:MM:SS.fffffffff`
        let mut text = *b"\"0000-00-00T00:00:00.000000000";
        let mut put = |at: usize, n: i64, width: usize| {
            let mut n = n;
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(1, year, 4);
        put(6, month, 2);
        put(9, day, 2);
        put(12, of_day / 3600, 2);
        put(15, of_day / 60 % 60, 2);
        put(18, of_day % 60, 2);
        put(21, nanos, 9);
        // chrono's AutoSi: as few of 3, 6 or 9 digits as show the value, none for 0
        let shown = if nanos == 0 {
            0
        } else if nanos % 1_000_000 == 0 {
            4
        } else if nanos % 1_000 == 0 {
            7
        } else {
            10
        };
        out.extend_from_slice(&text[..20 + shown]);
        out.extend_from_slice(b"Z\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::Field;
    use std::sync::Arc;

    fn write(batch: &RecordBatch, fast: bool, explicit_nulls: bool) -> String {
        let mut b = arrow_json::WriterBuilder::new().with_explicit_nulls(explicit_nulls);
        if fast {
            b = b.with_encoder_factory(Arc::new(FastEncoders::default()));
        }
        let mut w = b.build::<_, arrow_json::writer::LineDelimited>(Vec::new());
        w.write(batch).unwrap();
        w.finish().unwrap();
        String::from_utf8(w.into_inner()).unwrap()
    }

    fn assert_same(batch: &RecordBatch) {
        for explicit_nulls in [true, false] {
            for offset in 0..batch.num_rows() {
                let b = batch.slice(offset, batch.num_rows() - offset);
                assert_eq!(
                    write(&b, true, explicit_nulls),
                    write(&b, false, explicit_nulls)
                );
            }
        }
    }

    #[test]
    fn every_byte_in_a_string_is_written_as_arrow_json_writes_it() {
        let values: Vec<String> = (0u8..0x80)
            .map(char::from)
            .chain(['é', '€', '😀'])
            .map(|c| format!("ab{c}cd"))
            .collect();
        let batch =
            RecordBatch::try_from_iter([("s", Arc::new(StringArray::from(values)) as ArrayRef)])
                .unwrap();
        assert_same(&batch);
    }

    #[test]
    fn objects_lists_nulls_and_escaped_keys_are_written_as_arrow_json_writes_them() {
        let clean = StringArray::from(vec![Some("plain"), None, Some(""), Some("é€")]);
        // one value to escape, in a slice that can leave it out
        let dirty = StringArray::from(vec![Some("q\"u\\o\nte\u{1}"), Some("x"), None, Some("y")]);
        let large = arrow_array::LargeStringArray::from(vec![Some("a"), None, Some("b\tc"), None]);
        let mut tags = ListBuilder::new(StringBuilder::new());
        for row in [vec!["a\"b", "c"], vec![], vec!["\u{2}"], vec!["d"]] {
            for t in row {
                tags.values().append_value(t);
            }
            tags.append(true);
        }
        let inner = StructArray::from(vec![
            (
                Arc::new(Field::new("n\"ested", arrow_schema::DataType::Int32, true)),
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3), Some(4)])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("s", arrow_schema::DataType::Utf8, true)),
                Arc::new(clean.clone()) as ArrayRef,
            ),
        ]);
        let inner = StructArray::new(
            inner.fields().clone(),
            inner.columns().to_vec(),
            Some(vec![true, false, true, true].into()),
        );
        let batch = RecordBatch::try_from_iter([
            ("clean", Arc::new(clean) as ArrayRef),
            ("dirty", Arc::new(dirty) as _),
            ("large", Arc::new(large) as _),
            ("tags", Arc::new(tags.finish()) as _),
            ("obj\\ect", Arc::new(inner) as _),
        ])
        .unwrap();
        assert_same(&batch);
    }

    /// Pseudo-random values over every magnitude, with their negatives.
    fn spread(n: usize) -> Vec<i128> {
        let mut seed = 7u64;
        (0..n)
            .map(|i| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = (seed >> 1) as i128 * (seed >> 17) as i128;
                let v = v >> (seed % 120);
                if i % 2 == 0 {
                    v
                } else {
                    -v
                }
            })
            .chain([
                0,
                1,
                -1,
                5,
                -5,
                99,
                -100,
                i128::from(i64::MAX) + 1,
                i128::MIN,
                i128::MAX,
            ])
            .collect()
    }

    #[test]
    fn decimals_are_written_as_arrow_writes_them() {
        for (precision, scale) in [
            (12, 2),
            (38, 0),
            (38, 10),
            (5, 5),
            (10, -3),
            (38, 37),
            (3, 1),
        ] {
            let values: Vec<Option<i128>> = spread(400)
                .into_iter()
                // values up to one digit more than the precision: arrow cuts that digit off
                .map(|v| {
                    Some(
                        10i128
                            .checked_pow(precision as u32 + 1)
                            .map_or(v, |m| v % m),
                    )
                })
                .chain([None])
                .collect();
            let array = arrow_array::Decimal128Array::from(values)
                .with_precision_and_scale(precision, scale)
                .unwrap();
            let batch = RecordBatch::try_from_iter([("d", Arc::new(array) as ArrayRef)]).unwrap();
            assert_same_sliced(&batch);
        }
    }

    /// Both writers over a few slices of `batch`, with and without explicit nulls.
    fn assert_same_sliced(batch: &RecordBatch) {
        let n = batch.num_rows();
        for explicit_nulls in [true, false] {
            for offset in [0, 1, 3, n / 2] {
                let b = batch.slice(offset, n - offset);
                assert_eq!(
                    write(&b, true, explicit_nulls),
                    write(&b, false, explicit_nulls)
                );
            }
        }
    }

    #[test]
    fn utc_timestamps_of_every_unit_are_written_as_arrow_writes_them() {
        use arrow_array::{
            TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
            TimestampSecondArray,
        };
        const FIRST: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
        const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
                                           // instants (seconds, nanoseconds) over the years 0000-9999: the edges, day
                                           // boundaries around the epoch and a leap day, then spread values
        let mut instants = vec![(FIRST, 0), (LAST, 999_999_999), (-1, 999_999_999), (0, 0)];
        instants.extend([
            (951_782_399, 1_000),
            (951_782_400, 123_000_000),
            (951_868_800, 5),
        ]);
        let fractions = [0, 7_000_000, 123_456_000, 999_999_999, 1];
        instants.extend(spread(600).into_iter().enumerate().map(|(i, v)| {
            let secs = FIRST + (v.unsigned_abs() % (LAST - FIRST + 1) as u128) as i64;
            (secs, fractions[i % fractions.len()])
        }));
        let unit = |per_second: i128| -> Vec<Option<i64>> {
            instants
                .iter()
                .enumerate()
                .filter_map(|(i, &(secs, nanos))| {
                    let v = i128::from(secs) * per_second
                        + i128::from(nanos) / (1_000_000_000 / per_second);
                    // every seventh a null; nanoseconds fit i64 for 1677-2262 only
                    i64::try_from(v).ok().map(|v| (i % 7 != 3).then_some(v))
                })
                .collect()
        };
        for tz in ["+00:00", "UTC"] {
            let columns: Vec<(&str, ArrayRef)> = vec![
                (
                    "s",
                    Arc::new(TimestampSecondArray::from(unit(1)).with_timezone(tz)),
                ),
                (
                    "ms",
                    Arc::new(TimestampMillisecondArray::from(unit(1_000)).with_timezone(tz)),
                ),
                (
                    "us",
                    Arc::new(TimestampMicrosecondArray::from(unit(1_000_000)).with_timezone(tz)),
                ),
            ];
            for (name, column) in columns {
                let batch = RecordBatch::try_from_iter([(name, column)]).unwrap();
                assert_same_sliced(&batch);
            }
            // nanoseconds: the instants that fit, and i64 values over the whole range
            let mut nanos = unit(1_000_000_000);
            nanos.extend(spread(400).into_iter().map(|v| Some(v as i64)));
            nanos.extend([Some(i64::MIN), Some(i64::MAX)]);
            let ns = TimestampNanosecondArray::from(nanos).with_timezone(tz);
            assert_same_sliced(
                &RecordBatch::try_from_iter([("ns", Arc::new(ns) as ArrayRef)]).unwrap(),
            );
        }
        // a year before 0000 or past 9999, and a zone other than UTC, are arrow's own
        for outside in [FIRST - 1, LAST + 1] {
            let a = TimestampSecondArray::from(vec![0, outside]).with_timezone("+00:00");
            assert!(utc::<TimestampSecondType>(&a, 1).is_none());
        }
        let batch = RecordBatch::try_from_iter([
            (
                "late",
                Arc::new(TimestampSecondArray::from(vec![LAST + 1]).with_timezone("UTC"))
                    as ArrayRef,
            ),
            (
                "cet",
                Arc::new(TimestampSecondArray::from(vec![0]).with_timezone("+01:00")) as _,
            ),
        ])
        .unwrap();
        assert_same(&batch);
    }

    #[test]
    fn decimals_as_strings_keep_every_digit_between_quotes() {
        let amounts = arrow_array::Decimal128Array::from(vec![Some(1250), None, Some(-5)])
            .with_precision_and_scale(12, 2)
            .unwrap();
        let batch = RecordBatch::try_from_iter([("a", Arc::new(amounts) as ArrayRef)]).unwrap();
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .with_encoder_factory(Arc::new(FastEncoders {
                decimals_as_strings: true,
            }))
            .build::<_, arrow_json::writer::LineDelimited>(Vec::new());
        w.write(&batch).unwrap();
        w.finish().unwrap();
        assert_eq!(
            String::from_utf8(w.into_inner()).unwrap(),
            "{\"a\":\"12.50\"}\n{\"a\":null}\n{\"a\":\"-0.05\"}\n"
        );
    }

    #[test]
    fn a_null_among_a_dictionarys_values_is_written_as_null() {
        use arrow_array::types::Int32Type;
        use arrow_array::{DictionaryArray, Int32Array, TimestampSecondArray};
        let keys = Int32Array::from(vec![0, 1, 0]);
        let times = TimestampSecondArray::from(vec![Some(0), None]).with_timezone("UTC");
        let amounts = arrow_array::Decimal128Array::from(vec![Some(123), None])
            .with_precision_and_scale(5, 2)
            .unwrap();
        let batch = RecordBatch::try_from_iter([
            (
                "t",
                Arc::new(
                    DictionaryArray::<Int32Type>::try_new(keys.clone(), Arc::new(times)).unwrap(),
                ) as ArrayRef,
            ),
            (
                "d",
                Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(amounts)).unwrap())
                    as _,
            ),
        ])
        .unwrap();
        assert_eq!(
            write(&batch, true, true),
            "{\"t\":\"1970-01-01T00:00:00Z\",\"d\":1.23}\n\
             {\"t\":null,\"d\":null}\n\
             {\"t\":\"1970-01-01T00:00:00Z\",\"d\":1.23}\n"
        );
    }

    #[test]
    fn a_string_array_is_clean_only_without_bytes_to_escape() {
        assert!(clean(&StringArray::from(vec!["a", "é", "\u{7f}", "/"])).is_some());
        for bad in ["\"", "\\", "\n", "\u{0}", "\u{1f}"] {
            let long = format!("{}{bad}", "x".repeat(100));
            assert!(
                clean(&StringArray::from(vec!["a", bad])).is_none(),
                "{bad:?}"
            );
            assert!(clean(&StringArray::from(vec![long])).is_none(), "{bad:?}");
        }
        // a slice is judged by its own values only
        let a = StringArray::from(vec!["\"", "fine"]);
        assert!(clean(&a.slice(1, 1)).is_some());
    }
}
