//! SQLite both ways against the real sqlite3 client: incremental reads by cursor with
//! many rows sharing a timestamp, upserts, schema drift (evolve, freeze), and the
//! offsets commands.

use crate::support::{jsonl_lines, sluice, sqlite, workdir};

fn lines(dir: &std::path::Path) -> Vec<String> {
    let mut out = jsonl_lines(dir);
    out.sort();
    out
}

#[test]
fn incremental_cursor_reads_only_new_rows_and_skips_none_sharing_a_timestamp() {
    let dir = workdir();
    let d = dir.path();
    let db = d.join("src.db");
    sqlite(
        &db,
        "CREATE TABLE ev (id BIGINT NOT NULL, at TEXT NOT NULL, v DECIMAL(8,2));\
         INSERT INTO ev VALUES (1,'2024-01-01 00:00:00','1.10'),(2,'2024-01-01 00:00:00','2.20'),(3,'2024-01-01 00:00:01','3.30');",
    );
    std::fs::write(
        d.join("inc.toml"),
        "[source]\nconnector = \"sqlite\"\npath = \"src.db\"\ntable = \"ev\"\ncursor = [\"at\", \"id\"]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[batch]\nmax_records = 2\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "inc.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(lines(&d.join("out")).len(), 3);
    // a late row with the same timestamp as the last delivered one, and a newer one
    sqlite(
        &db,
        "INSERT INTO ev VALUES (4,'2024-01-01 00:00:01','4.40'),(5,'2024-01-01 00:00:02',NULL);",
    );
    let run = sluice(d, &["run", "inc.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains(": 2 records"), "{}", run.stdout);
    let all = lines(&d.join("out"));
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(
        all.iter()
            .any(|l| l.contains("\"id\":4") && l.contains("4.40")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|l| l.contains("\"id\":5") && l.contains("\"v\":null")),
        "{all:?}"
    );

    let show = sluice(d, &["offsets", "show", "inc.toml"]);
    assert_eq!(show.code, Some(0));
    assert!(
        show.stdout.contains("table:ev") && show.stdout.contains("\"by\": \"cursor\""),
        "{}",
        show.stdout
    );
    let reset = sluice(d, &["offsets", "reset", "inc.toml"]);
    assert!(reset.stdout.contains("reset"), "{}", reset.stdout);
    assert!(sluice(d, &["offsets", "show", "inc.toml"])
        .stdout
        .contains("no stored offsets"));
}

#[test]
fn csv_upsert_example_updates_instead_of_duplicating() {
    let dir = workdir();
    let d = dir.path();
    let run = sluice(d, &["run", "configs/csv-to-sqlite.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let db = d.join("out/customers.db");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM customers"), "80");
    assert_eq!(
        sqlite(&db, "SELECT email FROM customers WHERE id = 1"),
        "****"
    );
    assert_eq!(
        sqlite(
            &db,
            "SELECT signed_up, typeof(credit) FROM customers WHERE id = 1"
        ),
        "2023-02-02|text"
    );
    // start over from the beginning of the file: the same keys are updated, not added
    sluice(d, &["offsets", "reset", "configs/csv-to-sqlite.toml"]);
    sqlite(&db, "DELETE FROM _sluice_offsets");
    let run = sluice(d, &["run", "configs/csv-to-sqlite.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("csv-to-sqlite: 80 records"),
        "{}",
        run.stdout
    );
    assert_eq!(sqlite(&db, "SELECT count(*) FROM customers"), "80");
}

fn drift_setup(drift: &str) -> tempfile::TempDir {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/1.jsonl"), "{\"id\": 1, \"name\": \"a\"}\n").unwrap();
    std::fs::write(
        d.join("in/2.jsonl"),
        "{\"id\": 2, \"name\": \"b\", \"score\": 9.5}\n{\"id\": 3, \"name\": \"c\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("drift.toml"),
        format!(
            "[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n[sink]\nconnector = \"sqlite\"\npath = \"out/t.db\"\ntable = \"t\"\ndrift = \"{drift}\"\n[batch]\nlinger = \"1ms\"\nmax_records = 1\n"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn drift_evolve_adds_a_nullable_column() {
    let dir = drift_setup("evolve");
    let run = sluice(dir.path(), &["run", "drift.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let db = dir.path().join("out/t.db");
    assert_eq!(
        sqlite(
            &db,
            "SELECT id || ':' || ifnull(score, 'null') FROM t ORDER BY id"
        ),
        "1:null\n2:9.5\n3:null"
    );
}

#[test]
fn drift_freeze_stops_naming_the_new_column() {
    let dir = drift_setup("freeze");
    let run = sluice(dir.path(), &["run", "drift.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("new column \"score\""),
        "{}",
        run.stderr
    );
}

#[test]
fn drift_discard_value_keeps_rows_without_the_new_column() {
    let dir = drift_setup("discard_value");
    let run = sluice(dir.path(), &["run", "drift.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let db = dir.path().join("out/t.db");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t"), "3");
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'score'"
        ),
        "0"
    );
}

#[test]
fn check_and_schema_commands_report_what_they_find() {
    let dir = workdir();
    let d = dir.path();
    let run = sluice(d, &["check", "configs/quickstart.toml"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("source (file): ok"), "{}", run.stdout);
    let run = sluice(d, &["schema", "configs/csv-to-sqlite.toml"]);
    assert!(
        run.stdout
            .contains("{ name = \"credit\", type = \"decimal(10,2)\", nullable = true }"),
        "{}",
        run.stdout
    );
    std::fs::write(
        d.join("missing.toml"),
        "[source]\nconnector = \"sqlite\"\npath = \"nope.db\"\ntable = \"t\"\n[sink]\nconnector = \"blackhole\"\n",
    )
    .unwrap();
    let run = sluice(d, &["check", "missing.toml"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout
            .contains("not_found error: database \"nope.db\" does not exist"),
        "{}",
        run.stdout
    );
}

/// The sink's table is deleted between two runs: the second run reads from the start
/// (the offsets stored with the data are gone with it), not from the checkpoint store.
#[test]
fn a_deleted_sink_database_gets_every_record_again() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        "name = \"lost\"\n[source]\nconnector = \"datagen\"\ncount = 5000\n\
         schema = [{ name = \"id\", type = \"int64\", nullable = false }]\n\
         [sink]\nconnector = \"sqlite\"\npath = \"out.db\"\ntable = \"t\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let db = d.join("out.db");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t"), "5000");
    std::fs::remove_file(&db).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("the sink has no stored offsets"),
        "{}",
        run.stderr
    );
    assert_eq!(
        sqlite(&db, "SELECT count(*) || ' ' || count(DISTINCT id) FROM t"),
        "5000 5000"
    );
    // and a third run, with everything there, writes nothing more
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t"), "5000");
}

/// Two runs of one pipeline file at once: the second fails at start naming the first
/// (it wrote every row a second time before); after a kill -9 of the first, the lock
/// is free and the next run finishes the rows exactly once.
#[test]
fn a_second_run_of_a_running_pipeline_fails_naming_it_and_a_killed_one_frees_the_lock() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        "name = \"twice\"\n[source]\nconnector = \"datagen\"\ncount = 3000\nrate = 1000\n\
         schema = [{ name = \"id\", type = \"int64\", nullable = false }]\n\
         [sink]\nconnector = \"sqlite\"\npath = \"out.db\"\ntable = \"t\"\n\
         [checkpoint]\ninterval = \"100ms\"\n",
    )
    .unwrap();
    let first = crate::support::spawn(d, &["run", "--quiet", "p.toml"]);
    let lock = d.join(".sluice/twice.lock");
    let held = crate::support::wait_until(std::time::Duration::from_secs(30), || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("process"))
    });
    let second = sluice(d, &["run", "--quiet", "p.toml"]);
    // a reset now would be undone by the running pipeline's next checkpoint
    let reset = sluice(d, &["offsets", "reset", "p.toml"]);
    crate::support::signal(&first, "KILL");
    let _ = crate::support::finish(first, std::time::Duration::from_secs(10));
    assert!(held, "no lock file");
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("pipeline \"twice\" is already running: process")
            && second.stderr.contains("twice.lock"),
        "{}",
        second.stderr
    );
    assert_ne!(reset.code, Some(0), "{}", reset.stdout);
    assert!(
        reset.stderr.contains("is already running"),
        "{}",
        reset.stderr
    );
    let third = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    assert_eq!(
        sqlite(
            &d.join("out.db"),
            "SELECT count(*) || ' ' || count(DISTINCT id) FROM t"
        ),
        "3000 3000"
    );
}

/// Two pipelines write JSON lines into one directory at the same time: neither takes
/// the other's file names nor removes its temporary files.
#[test]
fn two_pipelines_share_an_output_directory_without_losing_a_record() {
    let dir = workdir();
    let d = dir.path();
    for name in ["a", "b"] {
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\n[source]\nconnector = \"datagen\"\ncount = 3000\nrate = 3000\n\
                 schema = [{{ name = \"id\", type = \"int64\", nullable = false }}]\n\
                 [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\nmax_records = 500\n\
                 [checkpoint]\ninterval = \"100ms\"\n"
            ),
        )
        .unwrap();
    }
    let a = crate::support::spawn(d, &["run", "--quiet", "a.toml"]);
    let b = crate::support::spawn(d, &["run", "--quiet", "b.toml"]);
    for child in [a, b] {
        let run = crate::support::finish(child, std::time::Duration::from_secs(60));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    }
    let lines = jsonl_lines(&d.join("out"));
    assert_eq!(
        lines.len(),
        6000,
        "two pipelines' files overwrote each other"
    );
}

/// A CSV file without a declared schema, read, then grown: the run that resumes inside
/// it takes the column names from the file's header, not from the first unread row.
#[test]
fn a_csv_read_resumed_inside_the_file_keeps_its_header() {
    let dir = workdir();
    let d = dir.path();
    let rows =
        |from: usize, to: usize| -> String { (from..to).map(|i| format!("{i},n{i}\n")).collect() };
    std::fs::write(d.join("in.csv"), format!("id,name\n{}", rows(0, 100))).unwrap();
    std::fs::write(
        d.join("p.toml"),
        "name = \"csv\"\n[source]\nconnector = \"file\"\npath = \"in.csv\"\nformat = \"csv\"\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("in.csv"))
        .unwrap();
    std::io::Write::write_all(&mut f, rows(100, 150).as_bytes()).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut ids: Vec<i64> = jsonl_lines(&d.join("out"))
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                v.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["id", "name"],
                "{l}"
            );
            v["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..150).collect::<Vec<_>>());
}
