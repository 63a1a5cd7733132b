//! The README's first command: the quickstart pipeline, as a user runs it.

use crate::support::{python, sluice, sqlite, workdir};

#[test]
fn quickstart_writes_parquet_and_sqlite_with_exact_types() {
    let dir = workdir();
    let run = sluice(dir.path(), &["run", "configs/quickstart.toml"]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    // 500 sample orders, of which the filter drops the cancelled ones
    let expected = python(
        "import json\nprint(sum(1 for l in open('configs/data/orders.jsonl') if json.loads(l)['status'] != 'cancelled'))"
            .replace("configs/", &format!("{}/configs/", dir.path().display()))
            .as_str(),
    );
    assert!(
        run.stdout
            .contains(&format!("quickstart: {expected} records")),
        "{}",
        run.stdout
    );

    let db = dir.path().join("out/quickstart/orders.db");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM orders"), expected);
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*) FROM orders WHERE status = 'cancelled'"
        ),
        "0"
    );
    // decimals are stored exactly, declared types carry the Arrow type
    assert_eq!(
        sqlite(&db, "SELECT amount_eur FROM orders WHERE order_id = 2"),
        "124.37"
    );
    assert_eq!(
        sqlite(
            &db,
            "SELECT type FROM pragma_table_info('orders') WHERE name = 'amount_eur'"
        ),
        "DECIMAL TEXT(10,2)"
    );

    let parquet = dir.path().join("out/quickstart/parquet");
    let out = python(&format!(
        "import pyarrow.parquet as pq, glob\n\
         t = pq.read_table(sorted(glob.glob('{}/*.parquet')))\n\
         s = t.schema\n\
         print(t.num_rows, s.field('amount_eur').type, s.field('ordered_at').type, s.field('items').type)\n\
         r = [x for x in t.to_pylist() if x['order_id'] == 2][0]\n\
         print(r['amount_eur'], r['ordered_at'].isoformat(), r['country'])",
        parquet.display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("{expected} decimal128(10, 2) timestamp[us, tz=UTC] list<item: string>")
    );
    assert_eq!(lines[1], "124.37 2024-05-01T08:01:14.000246+00:00 BR");

    // a second run resumes from the checkpoint: nothing is written twice
    let again = sluice(dir.path(), &["run", "configs/quickstart.toml"]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again.stdout.contains("quickstart: 0 records"),
        "{}",
        again.stdout
    );
    assert_eq!(sqlite(&db, "SELECT count(*) FROM orders"), expected);
}
