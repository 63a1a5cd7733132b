//! Kill -9 at random points of a long file -> SQLite run; after restarts every record
//! is in the table exactly once (offsets are stored in the sink's transaction).

use crate::support::{kill_at_random, python, sluice, sqlite, workdir};

/// About 4 s of work for a debug build, so that most of the kills land mid-run.
const ROWS: usize = 2_000_000;

#[test]
fn kill_9_at_random_points_loses_and_duplicates_nothing() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    python(&format!(
        "with open('{}/in/long.jsonl', 'w') as f:\n    [f.write('{{\"id\": %d, \"name\": \"n%d\", \"amount\": \"%d.%02d\"}}\\n' % (i, i, i, i % 100)) for i in range({ROWS})]",
        d.display()
    ));
    std::fs::write(
        d.join("crash.toml"),
        r#"name = "crash"
[source]
connector = "file"
path = "in/long.jsonl"
schema = [
  { name = "id", type = "int64", nullable = false },
  { name = "name", type = "string" },
  { name = "amount", type = "decimal(12,2)" },
]
[sink]
connector = "sqlite"
path = "out/crash.db"
table = "t"
[batch]
max_records = 2000
[checkpoint]
interval = "50ms"
"#,
    )
    .unwrap();
    let db = d.join("out/crash.db");
    let killed_mid_run = kill_at_random(d, &["run", "--quiet", "crash.toml"], 10, 30..500);
    let run = sluice(d, &["run", "--quiet", "crash.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        killed_mid_run >= 5,
        "only {killed_mid_run} kills hit a running pipeline"
    );
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t"), ROWS.to_string());
    assert_eq!(
        sqlite(&db, "SELECT count(DISTINCT id) FROM t"),
        ROWS.to_string()
    );
    assert_eq!(
        sqlite(&db, "SELECT min(id) || ' ' || max(id) FROM t"),
        format!("0 {}", ROWS - 1)
    );
    assert_eq!(
        sqlite(&db, "SELECT amount FROM t WHERE id = 12345"),
        "12345.45"
    );
}
