//! SQLite reads by cursor and by query made exact: a single-column cursor whose runs
//! of equal values cross read boundaries, a NULL cursor (an error naming the column),
//! and a query without cursor, which resumes by position only in its own order.

use std::path::Path;

use crate::support::{jsonl_lines, sluice, sqlite, workdir};

/// The ids in the JSON lines under `out`, sorted, and how many lines.
fn ids(out: &Path) -> (Vec<i64>, usize) {
    let mut ids = crate::support::jsonl_ids(out);
    let lines = ids.len();
    ids.dedup();
    (ids, lines)
}

fn pipeline(d: &Path, name: &str, source: &str, max_records: usize) {
    std::fs::write(
        d.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"sqlite\"\npath = \"src.db\"\n{source}\n\
             [sink]\nconnector = \"file\"\npath = \"{name}\"\nformat = \"json\"\n[batch]\nmax_records = {max_records}\n"
        ),
    )
    .unwrap();
}

/// Runs of 20 equal values read 30 rows at a time (reads end inside runs), and 10 at
/// a time (a read is all one run): every row arrives once.
#[test]
fn rows_sharing_a_single_column_cursor_across_reads_all_arrive_once() {
    let dir = workdir();
    let d = dir.path();
    sqlite(
        &d.join("src.db"),
        "CREATE TABLE ev (id INTEGER NOT NULL, v INTEGER NOT NULL);\
         WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 250) \
         INSERT INTO ev SELECT i, i / 20 FROM g;",
    );
    for (name, max) in [("thirty", 30), ("ten", 10)] {
        pipeline(d, name, "table = \"ev\"\ncursor = [\"v\"]", max);
        let run = sluice(d, &["run", &format!("{name}.toml")]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let (ids, lines) = ids(&d.join(name));
        assert_eq!((ids.len(), lines), (250, 250), "{name}: {ids:?}");
    }
}

#[test]
fn a_null_cursor_value_is_an_error_naming_the_column() {
    let dir = workdir();
    let d = dir.path();
    sqlite(
        &d.join("src.db"),
        "CREATE TABLE ev (id INTEGER NOT NULL, at TEXT);\
         INSERT INTO ev VALUES (1, '2024-01-01'), (2, NULL), (3, '2024-01-03');",
    );
    pipeline(d, "nulls", "table = \"ev\"\ncursor = [\"at\", \"id\"]", 100);
    let run = sluice(d, &["run", "nulls.toml"]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("NULL in the cursor column \"at\""),
        "{}",
        run.stderr
    );
    // a NULL that appears after a position was stored is found as well
    sqlite(
        &d.join("src.db"),
        "UPDATE ev SET at = '2024-01-02' WHERE id = 2",
    );
    let run = sluice(d, &["run", "nulls.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    sqlite(&d.join("src.db"), "INSERT INTO ev VALUES (4, NULL)");
    let run = sluice(d, &["run", "nulls.toml"]);
    assert!(
        run.code != Some(0) && run.stderr.contains("NULL in the cursor column \"at\""),
        "{}",
        run.stderr
    );
}

/// A query without cursor resumes by skipping the rows read before: refused without
/// ORDER BY (the first rows might be others), exact with one.
#[test]
fn a_query_without_cursor_resumes_only_in_its_own_order() {
    let dir = workdir();
    let d = dir.path();
    let db = d.join("src.db");
    sqlite(
        &db,
        "CREATE TABLE ev (id INTEGER NOT NULL, k TEXT NOT NULL); CREATE INDEX ev_k ON ev (k);\
         WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 100) \
         INSERT INTO ev SELECT i, printf('k%03d', i) FROM g;",
    );
    pipeline(
        d,
        "bare",
        "query = \"SELECT id, k FROM ev WHERE k > ''\"",
        1000,
    );
    pipeline(
        d,
        "ordered",
        "query = \"SELECT id, k FROM ev ORDER BY id\"",
        1000,
    );
    for name in ["bare", "ordered"] {
        let run = sluice(d, &["run", &format!("{name}.toml")]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    }
    // new rows that an index on k puts first
    sqlite(
        &db,
        "WITH RECURSIVE g(i) AS (SELECT 101 UNION ALL SELECT i + 1 FROM g WHERE i < 150) \
         INSERT INTO ev SELECT i, printf('a%03d', i) FROM g;",
    );
    let run = sluice(d, &["run", "bare.toml"]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("no ORDER BY"), "{}", run.stderr);
    let run = sluice(d, &["run", "ordered.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (ids, lines) = ids(&d.join("ordered"));
    assert_eq!((ids.len(), lines), (150, 150));
}

/// Timestamps written by the sink sort as the times do, so a cursor on them (or any
/// ORDER BY) sees them in time order: a whole second after a fraction of it.
#[test]
fn stored_timestamps_sort_in_time_order_for_a_cursor() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/t.jsonl"),
        "{\"id\": 3, \"at\": \"2024-05-01T10:00:01Z\"}\n{\"id\": 1, \"at\": \"2024-05-01T10:00:00Z\"}\n\
         {\"id\": 2, \"at\": \"2024-05-01T10:00:00.500Z\"}\n{\"id\": 0, \"at\": \"2024-05-01T09:59:59.999Z\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("w.toml"),
        "name = \"w\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n\
         schema = [{ name = \"id\", type = \"int64\" }, { name = \"at\", type = \"timestamp(ms, UTC)\" }]\n\
         [sink]\nconnector = \"sqlite\"\npath = \"src.db\"\ntable = \"ev\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "w.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        sqlite(
            &d.join("src.db"),
            "SELECT group_concat(id) FROM (SELECT id FROM ev ORDER BY at)"
        ),
        "0,1,2,3"
    );
    // read back by a cursor on the timestamp, two rows at a time: all four, in order
    pipeline(d, "bytime", "table = \"ev\"\ncursor = [\"at\"]", 2);
    let run = sluice(d, &["run", "bytime.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines = jsonl_lines(&d.join("bytime"));
    let order: Vec<i64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(order, [0, 1, 2, 3], "{lines:?}");
}

/// `evolve` widening int32 to int64 builds the table again with the wider declared
/// type (SQLite cannot alter it), keeping its rows and indexes, so it reads back.
#[test]
fn evolve_widening_a_column_builds_the_table_again_and_it_reads_back() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let write = |ty: &str, line: &str| {
        std::fs::write(d.join("in/a.jsonl"), line).unwrap();
        std::fs::write(
            d.join("w.toml"),
            format!(
                "name = \"w\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n\
                 schema = [{{ name = \"id\", type = \"{ty}\" }}, {{ name = \"v\", type = \"string\" }}]\n\
                 [sink]\nconnector = \"sqlite\"\npath = \"src.db\"\ntable = \"ev\"\ndrift = \"evolve\"\n"
            ),
        )
        .unwrap();
        let run = sluice(d, &["run", "w.toml"]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    };
    write("int32", "{\"id\": 1, \"v\": \"a\"}\n");
    sqlite(&d.join("src.db"), "CREATE INDEX ev_v ON ev (v)");
    std::fs::remove_file(d.join("in/a.jsonl")).unwrap();
    write("int64", "{\"id\": 5000000000, \"v\": \"b\"}\n");
    assert_eq!(
        sqlite(
            &d.join("src.db"),
            "SELECT type FROM pragma_table_info('ev') WHERE name = 'id'"
        ),
        "BIGINT"
    );
    assert_eq!(
        sqlite(
            &d.join("src.db"),
            "SELECT count(*) FROM sqlite_master WHERE name = 'ev_v'"
        ),
        "1"
    );
    pipeline(d, "back", "table = \"ev\"", 100);
    let run = sluice(d, &["run", "back.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (ids, _) = ids(&d.join("back"));
    assert_eq!(ids, [1, 5_000_000_000]);
}

/// `lag`: a row whose time is younger than the lag waits; a row written later with an
/// earlier time (a transaction that committed after a later one) is still read, which
/// without the lag the cursor would have passed; a cursor value that is no time stops
/// the run naming it, instead of being held back for ever.
#[test]
fn lag_holds_back_young_rows_so_a_late_commit_with_an_earlier_time_is_read() {
    let dir = workdir();
    let d = dir.path();
    let db = d.join("src.db");
    let at = |ago: &str| format!("strftime('%Y-%m-%d %H:%M:%f', 'now', '-{ago} seconds')");
    sqlite(
        &db,
        &format!(
            "CREATE TABLE ev (at TIMESTAMP(3) NOT NULL, id INTEGER NOT NULL);\
             INSERT INTO ev VALUES ({}, 1), ({}, 2);",
            at("120"),
            at("0")
        ),
    );
    pipeline(
        d,
        "lag",
        "table = \"ev\"\ncursor = [\"at\", \"id\"]\nlag = \"3s\"",
        100,
    );
    let run = sluice(d, &["run", "lag.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        ids(&d.join("lag")).0,
        vec![1],
        "row 2 is younger than the lag"
    );
    // written now with a time before row 2's: what a slow transaction commits
    sqlite(
        &db,
        "INSERT INTO ev SELECT strftime('%Y-%m-%d %H:%M:%f', at, '-0.5 seconds'), 3 FROM ev WHERE id = 2",
    );
    // both rows must age past the lag: no event tells when, so the test waits it out
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let run = sluice(d, &["run", "lag.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(ids(&d.join("lag")), (vec![1, 2, 3], 3));

    sqlite(&db, "INSERT INTO ev VALUES ('yesterday', 4)");
    let run = sluice(d, &["run", "lag.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cursor column \"at\" holds \"yesterday\""),
        "{}",
        run.stderr
    );
}
