//! The one-pass decoder against arrow-json and on bad lines.

use super::*;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Decimal128Type, Int64Type, TimestampMicrosecondType};
use arrow_array::Array;
use arrow_schema::{Field, Schema};
use std::sync::Arc;

fn lines(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.bytes().enumerate() {
        if c == b'\n' {
            out.push((start, i));
            start = i + 1;
        }
    }
    out
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("amount", DataType::Decimal128(10, 2), true),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new(
            "geo",
            DataType::Struct(
                vec![
                    Field::new("lat", DataType::Float64, false),
                    Field::new("ok", DataType::Boolean, true),
                ]
                .into(),
            ),
            true,
        ),
        Field::new("day", DataType::Date32, true),
        Field::new("n32", DataType::Int32, true),
    ]))
}

#[test]
fn decodes_every_covered_type_and_cuts_bad_lines_out() {
    let text = concat!(
        r#"{"id": 1, "name": "a\"b\u00e9\ud83e\udd86", "ts": "2026-01-02T03:04:05.123456Z", "amount": "12.30", "tags": ["x", null], "geo": {"lat": 1.5, "ok": true}, "day": "2026-03-04", "n32": 7, "extra": {"deep": [1, {"x": "}"}]}}"#,
        "\n",
        r#"{"id": 2, "tags": ["half"], "geo": {"lat": "oops"}}"#,
        "\n",
        r#"{"n32": "8", "id": "3", "amount": 5, "ts": 1000, "geo": null, "tags": []}"#,
        "\n",
        r#"{"id": 4.5}"#,
        "\n",
        r#"{"id": 5, "id": 6}"#,
        "\n",
        r#"{"name": "no id"}"#,
        "\n",
        r#"{"id": 7, "n32": 3000000000}"#,
        "\n",
        r#"{"id": 8} trailing"#,
        "\n",
        r#"{"id": 9e0, "name": "ünï"}"#,
        "\n",
    );
    let plan = Plan::new(&schema(), false).unwrap();
    let (batch, bad) = plan.decode(text.as_bytes(), &lines(text)).unwrap();
    let batch = batch.unwrap();
    let bad_lines: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
    assert_eq!(bad_lines, vec![1, 3, 4, 5, 6, 7], "{bad:?}");
    assert!(
        bad[0].1.to_string().contains("field \"lat\""),
        "{}",
        bad[0].1
    );
    assert!(
        bad[1].1.to_string().contains("4.5 is not a whole number"),
        "{}",
        bad[1].1
    );
    assert!(
        bad[2].1.to_string().contains("appears twice"),
        "{}",
        bad[2].1
    );
    assert!(
        bad[3].1.to_string().contains("\"id\" is missing"),
        "{}",
        bad[3].1
    );
    assert_eq!(batch.num_rows(), 3);
    let ids = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(ids.values(), &[1, 3, 9]);
    let names = batch.column(1).as_string::<i32>();
    assert_eq!(names.value(0), "a\"bé🦆");
    assert!(names.is_null(1));
    assert_eq!(names.value(2), "ünï");
    let ts = batch.column(2).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_767_323_045_123_456);
    assert_eq!(ts.value(1), 1000);
    let amount = batch.column(3).as_primitive::<Decimal128Type>();
    assert_eq!((amount.value(0), amount.value(1)), (1230, 500));
    let tags = batch.column(4).as_list::<i32>();
    assert_eq!(tags.value(0).len(), 2);
    assert!(tags.value(0).is_null(1));
    assert_eq!(tags.value(1).len(), 0);
    assert!(tags.is_null(2));
    let geo = batch.column(5).as_struct();
    assert!(geo.is_valid(0) && geo.is_null(1) && geo.is_null(2));
    assert_eq!(
        geo.column(0)
            .as_primitive::<arrow_array::types::Float64Type>()
            .value(0),
        1.5
    );
    assert_eq!(batch.column(6).as_primitive::<Date32Type>().value(0), 20516);
    assert_eq!(
        batch
            .column(7)
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(1),
        8
    );
}

#[test]
fn types_it_does_not_cover_fall_back() {
    let s = Arc::new(Schema::new(vec![Field::new("b", DataType::Binary, true)]));
    assert!(Plan::new(&s, false).is_none());
}

#[test]
fn a_decimal_with_more_places_than_the_scale_is_a_bad_line_naming_the_column() {
    let plan = Plan::new(&schema(), false).unwrap();
    let text = "{\"id\": 1, \"amount\": 1.25}\n{\"id\": 2, \"amount\": 1.005}\n{\"id\": 3, \"amount\": \"2.50\"}\n";
    let (batch, bad) = plan.decode(text.as_bytes(), &lines(text)).unwrap();
    assert_eq!(batch.unwrap().num_rows(), 2);
    assert_eq!(bad.len(), 1);
    let (line, error) = &bad[0];
    assert_eq!(*line, 1);
    let message = error.to_string();
    assert!(
        message.contains("amount") && message.contains("\"1.005\" has more than 2 decimal places"),
        "{message}"
    );
}
