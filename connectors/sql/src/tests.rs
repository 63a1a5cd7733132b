//! The crate's behaviour on real batches: what a query computes, what it refuses and
//! where, and the rows it fails on.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type};
use arrow_array::Array;
use arrow_array::{
    ArrayRef, Decimal128Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, SchemaRef, TimeUnit};

use crate::{Query, SqlError};

fn batch() -> RecordBatch {
    let tags = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
        Some(vec![Some(1), Some(2)]),
        Some(vec![]),
        Some(vec![Some(3)]),
    ]);
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        (
            "amount",
            Arc::new(
                Decimal128Array::from(vec![10050, 25, 999999])
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
        ),
        (
            "status",
            Arc::new(StringArray::from(vec!["paid", "cancelled", "paid"])),
        ),
        (
            "payload",
            Arc::new(StringArray::from(vec![
                r#"{"device":{"os":"ios"}}"#,
                r#"{"device":{}}"#,
                r#"{"device":{"os":"linux"}}"#,
            ])),
        ),
        (
            "at",
            Arc::new(
                TimestampMicrosecondArray::from(vec![3_723_000_000, 0, 7_200_000_001])
                    .with_timezone("Europe/Berlin"),
            ),
        ),
        ("tags", Arc::new(tags)),
    ])
    .unwrap()
}

fn prepare(sql: &str, schema: SchemaRef) -> Result<crate::Prepared, SqlError> {
    Query::parse(sql)?.prepare(schema, 8192)
}

async fn run(sql: &str, input: &RecordBatch) -> RecordBatch {
    let p = prepare(sql, input.schema()).unwrap();
    let out = p.run(input).await.unwrap();
    assert!(out.bad.is_empty(), "{:?}", out.bad);
    out.batch
}

#[tokio::test]
async fn computes_columns_filters_and_keeps_decimals_exact() {
    let out = run(
        "SELECT id, upper(status) AS status, amount * 1.19 AS gross,\n\
         CASE WHEN amount > 100 THEN 'big' ELSE 'small' END AS size,\n\
         json_get_str(payload, 'device', 'os') AS os, date_trunc('hour', at) AS hour\n\
         FROM input WHERE status <> 'cancelled'",
        &batch(),
    )
    .await;
    assert_eq!(out.num_rows(), 2);
    let gross = out.column(2).as_primitive::<Decimal128Type>();
    // decimal(12,2) * decimal(3,2): scale 4, every digit kept
    assert_eq!(gross.data_type(), &DataType::Decimal128(16, 4));
    assert_eq!(gross.values(), &[1_195_950, 118_999_881]);
    let size = out.column(3).as_string::<i32>();
    assert_eq!((size.value(0), size.value(1)), ("big", "big"));
    let os = out.column(4).as_string::<i32>();
    assert_eq!((os.value(0), os.value(1)), ("ios", "linux"));
    assert_eq!(
        out.schema().field(5).data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("Europe/Berlin".into()))
    );
    let hour = out
        .column(5)
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
    assert_eq!(hour.values(), &[3_600_000_000, 7_200_000_000]);
}

#[tokio::test]
async fn unnest_makes_one_row_per_element() {
    let out = run("SELECT id, unnest(tags) AS tag FROM input", &batch()).await;
    let ids = out.column(0).as_primitive::<Int64Type>();
    let tags = out.column(1).as_primitive::<Int32Type>();
    assert_eq!(ids.values(), &[1, 1, 3]);
    assert_eq!(tags.values(), &[1, 2, 3]);
}

#[tokio::test]
async fn the_same_plan_runs_batch_after_batch() {
    let input = batch();
    let p = prepare("SELECT id + 1 AS next FROM input", input.schema()).unwrap();
    for _ in 0..3 {
        let out = p.run(&input).await.unwrap().batch;
        assert_eq!(
            out.column(0).as_primitive::<Int64Type>().values(),
            &[2, 3, 4]
        );
    }
}

#[test]
fn refuses_what_is_not_per_record_where_it_is_written() {
    let schema = batch().schema();
    let cases = [
        (
            "SELECT status, count(*) AS n\nFROM input\nGROUP BY status",
            "an aggregate",
            (3, 1),
        ),
        ("SELECT sum(amount) FROM input", "an aggregate", (1, 8)),
        ("SELECT id FROM input\nORDER BY id", "ORDER BY", (2, 1)),
        ("SELECT id FROM input LIMIT 5", "LIMIT", (1, 22)),
        ("SELECT DISTINCT status FROM input", "DISTINCT", (1, 1)),
        (
            "SELECT a.id FROM input a JOIN input b ON a.id = b.id",
            "a join",
            (1, 31),
        ),
        (
            "SELECT id, row_number() OVER () FROM input",
            "a window function",
            (1, 12),
        ),
    ];
    for (sql, what, at) in cases {
        let e = prepare(sql, schema.clone()).unwrap_err();
        assert!(e.message.starts_with(what), "{sql}: {e}");
        assert!(e.message.contains("batch by batch"), "{sql}: {e}");
        assert_eq!(e.position, Some(at), "{sql}: {e}");
    }
}

#[test]
fn an_unknown_column_is_located_with_a_suggestion() {
    let e = prepare("SELECT id,\n  amout * 2 FROM input", batch().schema()).unwrap_err();
    assert!(e.message.contains("amout"), "{e}");
    assert!(e.message.contains("amount"), "{e}");
    assert_eq!(e.position, Some((2, 3)), "{e}");
}

#[test]
fn syntax_and_type_errors_are_located() {
    let e = Query::parse("SELECT id\nFROM input WHERE id = = 1").unwrap_err();
    assert_eq!(e.position.map(|p| p.0), Some(2), "{e}");
    let e = prepare("SELECT id,\n tags + 1 FROM input", batch().schema()).unwrap_err();
    assert!(e.message.contains("List(Int32) + Int64"), "{e}");
    assert_eq!(e.position, Some((2, 2)), "{e}");
    let e = prepare("SELECT nope(id) FROM input", batch().schema()).unwrap_err();
    assert!(e.message.contains("Invalid function 'nope'"), "{e}");
    assert_eq!(e.position, Some((1, 8)), "{e}");
    assert!(Query::parse("DELETE FROM input").is_err());
}

#[test]
fn a_predicates_errors_are_located_in_the_predicate() {
    let e = Query::filter("sttus = 'paid'")
        .unwrap()
        .prepare(batch().schema(), 8192)
        .unwrap_err();
    assert_eq!(e.position, Some((1, 1)), "{e}");
}

#[tokio::test]
async fn finds_the_rows_that_fail_and_lets_the_others_through() {
    let n = 10_000;
    let text: Vec<String> = (0..n)
        .map(|i| match i {
            17 | 4_242 | 9_999 => format!("x{i}"),
            _ => i.to_string(),
        })
        .collect();
    let input = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef,
        ),
        ("text", Arc::new(StringArray::from(text)) as ArrayRef),
    ])
    .unwrap();
    let p = prepare(
        "SELECT id, CAST(text AS BIGINT) AS number FROM input",
        input.schema(),
    )
    .unwrap();
    let out = p.run(&input).await.unwrap();
    let rows: Vec<usize> = out.bad.iter().map(|b| b.row).collect();
    assert_eq!(rows, [17, 4_242, 9_999]);
    assert!(out
        .bad
        .iter()
        .all(|b| b.column.as_deref() == Some("number")));
    assert!(out.bad[0].error.contains("x17"), "{}", out.bad[0].error);
    assert_eq!(out.batch.num_rows(), n - 3);
    let ids = out.batch.column(0).as_primitive::<Int64Type>();
    assert!(ids.values().windows(2).all(|w| w[0] < w[1]), "order kept");
}

#[test]
fn a_query_datafusion_fails_inside_on_is_an_error_not_a_crash() {
    // DataFusion 52's planner unwraps the value of a typed string it does not expect
    let e = prepare("SELECT tags[1] 9 AS first FROM input", batch().schema()).unwrap_err();
    assert!(
        e.message.starts_with("DataFusion cannot plan this query"),
        "{e}"
    );
}

#[tokio::test]
async fn an_error_of_the_query_itself_is_not_blamed_on_every_row() {
    let input = RecordBatch::try_from_iter(vec![(
        "id",
        Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef,
    )])
    .unwrap();
    let p = prepare("SELECT id, id / 0 AS never FROM input", input.schema()).unwrap();
    let e = p.run(&input).await.unwrap_err();
    assert!(e.message.contains("Divide by zero"), "{e}");
}

#[test]
fn tells_whether_a_query_may_output_a_column() {
    let q = |sql: &str| Query::parse(sql).unwrap();
    assert!(q("SELECT * FROM input").may_output("_op"));
    assert!(q("SELECT id, _op FROM input").may_output("_op"));
    assert!(q("SELECT id, 'c' AS _op FROM input").may_output("_op"));
    assert!(!q("SELECT id, amount FROM input").may_output("_op"));
}

#[tokio::test]
async fn tells_the_columns_a_query_reads_and_gives_the_same_rows_from_only_those() {
    let full = batch();
    let sql = "SELECT id, upper(status) AS s FROM input WHERE amount > 1";
    let read = prepare(sql, full.schema())
        .unwrap()
        .columns_read()
        .map(<[usize]>::to_vec);
    assert_eq!(read, Some(vec![0, 1, 2]));
    let narrow = full.project(&[0, 1, 2]).unwrap();
    assert_eq!(run(sql, &narrow).await, run(sql, &full).await);
    // every column, or none: nothing to leave out
    for sql in [
        "SELECT * FROM input",
        "SELECT *, id + 1 AS next FROM input WHERE status = 'paid'",
        "SELECT 1 AS one FROM input",
    ] {
        let prepared = prepare(sql, full.schema()).unwrap();
        assert_eq!(prepared.columns_read(), None, "{sql}");
    }
}
