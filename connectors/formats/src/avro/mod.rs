//! Avro binary datums to and from Arrow, one record at a time (as Kafka messages carry
//! them), with the Confluent wire format's framing.
//!
//! | Avro | Arrow |
//! |---|---|
//! | null, boolean | Null, Boolean |
//! | int / long | Int32 / Int64 |
//! | float / double | Float32 / Float64 |
//! | bytes / fixed(n) | Binary / FixedSizeBinary(n) |
//! | string, enum, uuid | Utf8 |
//! | decimal(p, s) on bytes or fixed | Decimal128(p, s) (p <= 38) |
//! | date | Date32 |
//! | time-millis / time-micros | Time32(ms) / Time64(µs) |
//! | timestamp-millis / -micros / -nanos | Timestamp(unit, "UTC") |
//! | local-timestamp-millis / -micros / -nanos | Timestamp(unit) |
//! | array / map | List / Map<Utf8, _> |
//! | record | Struct (the top-level record's fields are the columns) |
//! | union of null and one type | that type, nullable |
//!
//! Writing maps the other way; Int8/Int16/UInt8/UInt16 widen to int, UInt32/UInt64 to
//! long (a UInt64 above i64::MAX is an error, never wrapped), Float16 to float,
//! Time32(s) and Timestamp(s) to millis, Date64 to date, string dictionaries to string.
//! Unions of several types, recursive types, and Arrow types without an Avro form
//! (intervals, durations, nanosecond times) are refused with an error naming the type
//! and the column.

mod decode;
mod encode;
#[cfg(feature = "registry")]
mod registered;
mod schema;

pub use decode::AvroDecoder;
pub use encode::AvroEncoder;
#[cfg(feature = "registry")]
pub use registered::{AvroReader, AvroWriter, Decoded};
pub use schema::{check_record_name, AvroSchema};

use connector_api::{Error, Result};

/// The Confluent wire format's header: magic byte 0, then the schema id (big-endian).
pub fn confluent_header(schema_id: u32) -> [u8; 5] {
    let id = schema_id.to_be_bytes();
    [0, id[0], id[1], id[2], id[3]]
}

/// The schema id and the Avro datum of a Confluent-framed message.
pub fn confluent_split(message: &[u8]) -> Result<(u32, &[u8])> {
    match message {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [m, ..] if message.len() >= 5 => Err(Error::data(format!(
            "not in the Confluent wire format (magic byte {m}, 0 expected)"
        ))),
        _ => Err(Error::data(format!(
            "not in the Confluent wire format ({} bytes, a 5-byte header expected)",
            message.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{Int32Builder, ListBuilder, MapBuilder, StringBuilder};
    use arrow_array::*;
    use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
    use connector_api::ErrorKind;

    use super::*;

    fn every_type() -> RecordBatch {
        let mut list = ListBuilder::new(Int32Builder::new());
        list.append_value([Some(1), None, Some(3)]);
        list.append_value([]);
        list.append_null();
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        map.keys().append_value("a");
        map.values().append_value("x");
        map.keys().append_value("b");
        map.values().append_null();
        map.append(true).unwrap();
        map.append(true).unwrap();
        map.append(false).unwrap();
        let inner = StructArray::from(vec![
            (
                Arc::new(Field::new("n", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(-1)])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("s", DataType::Utf8, false)),
                Arc::new(StringArray::from(vec!["é", "", "日本"])) as ArrayRef,
            ),
        ]);
        let columns: Vec<(&str, ArrayRef, bool)> = vec![
            (
                "b",
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                true,
            ),
            (
                "i8",
                Arc::new(Int8Array::from(vec![i8::MIN, 0, i8::MAX])),
                false,
            ),
            (
                "i32",
                Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(i32::MAX)])),
                true,
            ),
            (
                "i64",
                Arc::new(Int64Array::from(vec![i64::MIN, 0, i64::MAX])),
                false,
            ),
            (
                "u32",
                Arc::new(UInt32Array::from(vec![0, 1, u32::MAX])),
                false,
            ),
            (
                "f32",
                Arc::new(Float32Array::from(vec![1.5, f32::MIN, f32::NAN])),
                false,
            ),
            (
                "f64",
                Arc::new(Float64Array::from(vec![Some(-0.0), None, Some(f64::MAX)])),
                true,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("a\u{0}b"), Some(""), None])),
                true,
            ),
            (
                "bin",
                Arc::new(BinaryArray::from(vec![
                    Some(&b"\xff\x00"[..]),
                    None,
                    Some(b""),
                ])),
                true,
            ),
            (
                "fixed",
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter([[1u8, 2], [3, 4], [5, 6]].into_iter())
                        .unwrap(),
                ),
                false,
            ),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from(vec![Some(-12345), None, Some(10i128.pow(38) - 1)])
                        .with_precision_and_scale(38, 4)
                        .unwrap(),
                ),
                true,
            ),
            (
                "date",
                Arc::new(Date32Array::from(vec![-719162, 0, 2932896])),
                false,
            ),
            (
                "t_ms",
                Arc::new(Time32MillisecondArray::from(vec![0, 1, 86_399_999])),
                false,
            ),
            (
                "t_us",
                Arc::new(Time64MicrosecondArray::from(vec![0, 1, 86_399_999_999])),
                false,
            ),
            (
                "ts_utc",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(-1),
                        None,
                        Some(1_700_000_000_123_456),
                    ])
                    .with_timezone("UTC"),
                ),
                true,
            ),
            (
                "ts_local",
                Arc::new(TimestampMillisecondArray::from(vec![0, -86_400_000, 1])),
                false,
            ),
            (
                "ts_ns",
                Arc::new(TimestampNanosecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
                false,
            ),
            ("list", Arc::new(list.finish()), true),
            ("map", Arc::new(map.finish()), true),
            ("rec", Arc::new(inner), false),
            ("nothing", Arc::new(NullArray::new(3)), true),
        ];
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a, _)| a).collect(),
        )
        .unwrap()
    }

    fn round_trip(batch: &RecordBatch) -> (RecordBatch, AvroSchema) {
        let enc = AvroEncoder::new(&batch.schema(), "row").unwrap();
        let mut out = Vec::new();
        let ends = enc.encode(batch, &confluent_header(7), &mut out).unwrap();
        let schema = AvroSchema::parse(enc.schema_json()).unwrap();
        let mut dec = AvroDecoder::new(&schema);
        let mut start = 0;
        for end in ends {
            let (id, datum) = confluent_split(&out[start..end]).unwrap();
            assert_eq!(id, 7);
            dec.push(datum).unwrap();
            start = end;
        }
        (dec.flush().unwrap(), schema)
    }

    #[test]
    fn every_type_survives_a_round_trip() {
        let batch = every_type();
        let (back, _) = round_trip(&batch);
        assert_eq!(back.num_rows(), 3);
        for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
            let got = back.column_by_name(f.name()).unwrap();
            let want = arrow_cast::cast(col, got.data_type()).unwrap();
            if f.name() == "f32" {
                let (g, w) = (
                    got.as_any().downcast_ref::<Float32Array>().unwrap(),
                    want.as_any().downcast_ref::<Float32Array>().unwrap(),
                );
                assert_eq!(g.value(0), w.value(0));
                assert!(g.value(2).is_nan());
                continue;
            }
            assert_eq!(got.to_data(), want.to_data(), "column {}", f.name());
        }
        let types: Vec<(String, DataType)> = back
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert!(types.contains(&("i8".into(), DataType::Int32)));
        assert!(types.contains(&("u32".into(), DataType::Int64)));
        assert!(types.contains(&("dec".into(), DataType::Decimal128(38, 4))));
        assert!(types.contains(&(
            "ts_utc".into(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        )));
        assert!(types.contains(&(
            "ts_local".into(),
            DataType::Timestamp(TimeUnit::Millisecond, None)
        )));
        assert!(!back.schema().field_with_name("i64").unwrap().is_nullable());
        assert!(back.schema().field_with_name("s").unwrap().is_nullable());
    }

    #[test]
    fn a_sliced_batch_encodes_only_its_rows() {
        let batch = every_type().slice(1, 2);
        let (back, _) = round_trip(&batch);
        assert_eq!(back.num_rows(), 2);
        let want = arrow_cast::cast(
            batch.column_by_name("list").unwrap(),
            back.column_by_name("list").unwrap().data_type(),
        )
        .unwrap();
        assert_eq!(
            back.column_by_name("list").unwrap().to_data(),
            want.to_data()
        );
        let s = back
            .column_by_name("s")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!((s.value(0), s.is_null(1)), ("", true));
    }

    #[test]
    fn decodes_named_references_enums_fixed_decimals_and_null_second_unions() {
        let schema = AvroSchema::parse(
            r#"{"type": "record", "name": "r", "namespace": "x", "fields": [
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
                {"name": "again", "type": "Kind"},
                {"name": "amount", "type": {"type": "fixed", "name": "Amt", "size": 3, "logicalType": "decimal", "precision": 6, "scale": 2}},
                {"name": "note", "type": ["string", "null"]},
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "odd", "type": {"type": "long", "logicalType": "something-new"}}
            ]}"#,
        )
        .unwrap();
        let mut dec = AvroDecoder::new(&schema);
        // enum 1, enum 0, fixed -1.00 (0xff ff 9c), branch 1 (null), "u", long -2
        dec.push(&[2, 0, 0xff, 0xff, 0x9c, 2, 2, b'u', 3]).unwrap();
        let b = dec.flush().unwrap();
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        assert_eq!(
            col("kind")
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0),
            "B"
        );
        assert_eq!(
            col("again")
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0),
            "A"
        );
        let amount = col("amount");
        let amount = amount.as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!((amount.value(0), amount.scale()), (-100, 2));
        assert!(col("note").is_null(0));
        assert_eq!(
            col("odd")
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            -2
        );
    }

    #[test]
    fn a_bad_datum_leaves_nothing_behind() {
        let schema = AvroSchema::parse(
            r#"{"type": "record", "name": "r", "fields": [
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "n", "type": "int"}
            ]}"#,
        )
        .unwrap();
        let mut dec = AvroDecoder::new(&schema);
        dec.push(&[2, 2, b'a', 0, 4]).unwrap();
        // two items announced, the second is cut short
        let err = dec.push(&[4, 2, b'b', 6, b'c']).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Data);
        assert!(err.to_string().contains("ends early"), "{err}");
        let err = dec.push(&[0, 4, 99]).unwrap_err();
        assert!(err.to_string().contains("left over"), "{err}");
        dec.push(&[0, 6]).unwrap();
        let b = dec.flush().unwrap();
        assert_eq!(b.num_rows(), 2);
        let tags = b.column(0).as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(tags.values().len(), 1);
        let n = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(n.values().as_ref(), &[2, 3]);
    }

    #[test]
    fn refuses_what_it_cannot_map_and_names_it() {
        let err = AvroSchema::parse(
            r#"{"type": "record", "name": "r", "fields": [{"name": "v", "type": ["int", "string"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("union [int32, utf8]"), "{err}");
        let err = AvroSchema::parse(
            r#"{"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("recursive type \"Node\""), "{err}");
        let schema = Arc::new(Schema::new(vec![Field::new("a-b", DataType::Int32, true)]));
        let err = AvroEncoder::new(&schema, "row").err().unwrap();
        assert!(
            err.to_string()
                .contains("column \"a-b\" is not a valid Avro name"),
            "{err}"
        );
        let schema = Arc::new(Schema::new(vec![Field::new(
            "d",
            DataType::Duration(TimeUnit::Second),
            true,
        )]));
        let err = AvroEncoder::new(&schema, "row").err().unwrap();
        assert!(
            err.to_string()
                .starts_with("column \"d\": Duration(s) has no Avro type"),
            "{err}"
        );
        let big = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("u", DataType::UInt64, false)])),
            vec![Arc::new(UInt64Array::from(vec![u64::MAX]))],
        )
        .unwrap();
        let enc = AvroEncoder::new(&big.schema(), "row").unwrap();
        let err = enc.encode(&big, &[], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().starts_with("column \"u\""), "{err}");
    }

    #[test]
    fn a_primitive_schema_is_one_value_column() {
        let schema = AvroSchema::parse(r#""string""#).unwrap();
        assert_eq!(schema.arrow().field(0).name(), "value");
        let mut dec = AvroDecoder::new(&schema);
        dec.push(&[4, b'h', b'i']).unwrap();
        assert_eq!(dec.flush().unwrap().num_rows(), 1);
    }

    #[test]
    fn confluent_framing_is_checked() {
        assert_eq!(
            confluent_split(&[0, 0, 0, 1, 2, 9]).unwrap(),
            (258, &[9u8][..])
        );
        assert!(confluent_split(b"{\"a\":1}")
            .unwrap_err()
            .to_string()
            .contains("magic byte 123"));
        assert!(confluent_split(&[0, 1]).is_err());
        let _ = Fields::empty();
    }
}
