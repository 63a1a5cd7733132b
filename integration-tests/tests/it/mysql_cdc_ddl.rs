//! DDL on a table under MySQL/MariaDB CDC: a column widened, added, renamed or given
//! more digits while the pipeline runs flows into a PostgreSQL sink under
//! `drift = "evolve"` with every value exact; a change the stream cannot apply (rows
//! of the old shape still to read after the table changed) stops naming the column.

use std::time::Duration;

use crate::mysql::unique;
use crate::mysql_cdc::{binlog, cdc_pipeline, my};
use crate::postgres::psql;
use crate::support::{finish, signal, spawn, wait_until, workdir, KillOnPanic};

/// `binlog_row_metadata` of the binlog server, set back to FULL when dropped (also
/// when a test fails).
struct RowMetadata;

impl RowMetadata {
    fn set(value: &str) -> RowMetadata {
        my(&format!("SET GLOBAL binlog_row_metadata = {value}"));
        RowMetadata
    }
}

impl Drop for RowMetadata {
    fn drop(&mut self) {
        my("SET GLOBAL binlog_row_metadata = FULL");
    }
}

/// Rows in the PostgreSQL table (0 before it exists).
fn rows_in(table: &str) -> u64 {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-q", "-d", &crate::postgres::url(), "-c"])
        .arg(format!("SELECT count(*) FROM \"{table}\""))
        .output()
        .expect("psql client");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn pipeline(table: &str) -> String {
    cdc_pipeline(
        table,
        table,
        &format!(
            "[sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             drift = \"evolve\"\n",
            crate::postgres::url()
        ),
        "",
    )
}

#[test]
fn widened_added_and_renamed_columns_flow_into_postgres_under_evolve() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdcddl");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL, price DECIMAL(10,2), note VARCHAR(20)) DEFAULT CHARSET = utf8mb4; \
         INSERT INTO {table} SELECT seq, seq, seq / 4, NULL FROM seq_1_to_100"
    ));
    crate::postgres::fresh(&table);
    std::fs::write(d.join("p.toml"), pipeline(&table)).unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let count = || rows_in(&table);
    assert!(wait_until(Duration::from_secs(30), || count() == 100));
    // each change in its own transaction, with rows on both sides of it
    my(&format!(
        "INSERT INTO {table} VALUES (101, 101, 1.25, 'before'); \
         ALTER TABLE {table} MODIFY n BIGINT NOT NULL; \
         INSERT INTO {table} VALUES (102, 1099511627776, 2.50, 'wide'); \
         UPDATE {table} SET n = -1099511627776 WHERE id = 1; \
         ALTER TABLE {table} ADD COLUMN extra SMALLINT; \
         INSERT INTO {table} VALUES (103, 3, 3.75, 'added', -7); \
         ALTER TABLE {table} MODIFY price DECIMAL(16,2); \
         INSERT INTO {table} VALUES (104, 4, 12345678901234.56, 'digits', 8); \
         ALTER TABLE {table} RENAME COLUMN note TO remark; \
         INSERT INTO {table} VALUES (105, 5, 5.00, 'renamed', 9)"
    ));
    let last = || psql(&format!("SELECT count(*) FROM \"{table}\" WHERE id = 105"));
    let arrived = wait_until(Duration::from_secs(30), || last() == "1");
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(arrived, "{}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows = psql(&format!(
        "SELECT string_agg(concat_ws('|', id, n, price, note, extra, remark), ',' ORDER BY id) \
         FROM \"{table}\" WHERE id = 1 OR id > 100"
    ));
    assert_eq!(
        rows,
        "1|-1099511627776|0.25,101|101|1.25|before,102|1099511627776|2.50|wide,103|3|3.75|added|-7,\
         104|4|12345678901234.56|digits|8,105|5|5.00|9|renamed"
    );
    let types = psql(&format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
         FROM pg_attribute WHERE attrelid = '\"{table}\"'::regclass AND attnum > 0 AND NOT attisdropped"
    ));
    assert!(types.contains("n bigint"), "{types}");
    assert!(types.contains("price numeric(16,2)"), "{types}");
    assert!(types.contains("extra smallint"), "{types}");
    assert!(
        types.contains("remark character varying") || types.contains("remark text"),
        "{types}"
    );
    assert_eq!(count(), 105);
}

/// Rows written before a type change, not read before the pipeline stopped: the
/// binlog's table map describes them with the old type and they are read with it;
/// then the column turns to text, which the PostgreSQL `integer` column cannot take,
/// and the run stops naming the column. Without column names in the binlog
/// (`binlog_row_metadata = MINIMAL`) the old rows cannot be told apart from the table
/// as it is now, and the run stops before reading them, naming the way out.
#[test]
fn a_type_change_the_sink_cannot_take_stops_the_run_naming_the_column() {
    let _one = binlog();
    for metadata in ["FULL", "MINIMAL"] {
        let dir = workdir();
        let d = dir.path();
        let table = unique("cdcstale");
        my(&format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, n INT) DEFAULT CHARSET = utf8mb4; INSERT INTO {table} VALUES (1, 1)"
        ));
        crate::postgres::fresh(&table);
        std::fs::write(d.join("p.toml"), pipeline(&table)).unwrap();
        let child = spawn(d, &["run", "--quiet", "p.toml"]);
        let guard = KillOnPanic(child.id());
        assert!(wait_until(Duration::from_secs(30), || rows_in(&table) == 1));
        signal(&child, "TERM");
        let run = finish(child, Duration::from_secs(20));
        drop(guard);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        // while it is stopped: a row of the old shape, then the column turned to text
        {
            let _metadata = RowMetadata::set(metadata);
            my(&format!(
                "INSERT INTO {table} VALUES (2, 2); ALTER TABLE {table} MODIFY n VARCHAR(10); \
                 INSERT INTO {table} VALUES (3, 'three')"
            ));
        }
        let run = finish(
            spawn(d, &["run", "--quiet", "p.toml"]),
            Duration::from_secs(60),
        );
        assert_ne!(run.code, Some(0), "{metadata}");
        let named = match metadata {
            "FULL" => run
                .stderr
                .contains("column \"n\" is Int32 in the sink but Utf8"),
            _ => {
                run.stderr.contains("does not name its columns")
                    && run.stderr.contains("new snapshot")
            }
        };
        assert!(named, "{metadata}: {}", run.stderr);
        assert_eq!(
            psql(&format!("SELECT count(*) FROM \"{table}\" WHERE id = 3")),
            "0",
            "{metadata}"
        );
    }
}

/// Columns read from the binlog's table map (`binlog_row_metadata = FULL`) get their
/// own signedness, character set and labels, whatever columns come before them
/// (YEAR, GEOMETRY and ENUM count in neither list the server writes, or in one):
/// a row from the binlog equals the same row from the snapshot.
#[test]
fn the_table_maps_signedness_and_character_sets_land_on_their_columns() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdcmeta");
    let row = "2024, 4294967295, ST_GeomFromText('POINT(1 2)'), 'text', X'00FF', 'bLue', \
               18446744073709551615, 'Red', 'tail'";
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, y YEAR, u INT UNSIGNED, g GEOMETRY, s VARCHAR(10), \
         b VARBINARY(10), e ENUM('Red','bLue'), u2 BIGINT UNSIGNED, e2 ENUM('Red','bLue'), t TEXT) \
         DEFAULT CHARSET = utf8mb4; INSERT INTO {table} VALUES (1, {row})"
    ));
    let sink = "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n";
    std::fs::write(d.join("p.toml"), cdc_pipeline(&table, &table, sink, "")).unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let lines = || crate::support::jsonl_lines(&d.join("out"));
    assert!(wait_until(Duration::from_secs(30), || lines().len() == 1));
    my(&format!("INSERT INTO {table} VALUES (2, {row})"));
    let arrived = wait_until(Duration::from_secs(30), || lines().len() == 2);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(arrived, "{}", run.stderr);
    let mut rows: Vec<serde_json::Value> = lines()
        .iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("id");
            o.remove("_op");
            v
        })
        .collect();
    let second = rows.pop().unwrap();
    assert_eq!(rows[0], second, "snapshot and binlog differ");
    assert_eq!(second["u"], 4294967295u64);
    assert_eq!(second["u2"], 18446744073709551615u64);
    assert_eq!(second["e"], "bLue");
    assert_eq!(second["s"], "text");
}
