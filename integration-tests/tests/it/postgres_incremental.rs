//! PostgreSQL `incremental` reads made exact: rows sharing a cursor value across a
//! read boundary, a transaction that commits a smaller cursor after a newer one, and
//! a NULL cursor, which is an error naming the column rather than a row never read.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::postgres::{fresh, psql, server, url};
use crate::support::{finish, signal, spawn, wait_until, workdir};

/// An incremental pipeline from `src` by `cursor` into the upsert table `dst` (made
/// here like `src`, so it can be counted before the first write).
fn incremental(d: &Path, src: &str, dst: &str, cursor: &str) {
    psql(&format!(
        "CREATE TABLE \"{dst}\" (LIKE \"{src}\" INCLUDING ALL)"
    ));
    std::fs::write(
        d.join("inc.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\n\
             mode = \"incremental\"\ncursor = [{cursor}]\npoll_interval = \"100ms\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [batch]\nmax_records = 100\n[checkpoint]\ninterval = \"50ms\"\n",
            url()
        ),
    )
    .unwrap();
}

/// 2,500 rows in runs of seven equal cursor values: reads of a few hundred rows end
/// inside runs, and the rows after the boundary still arrive.
#[test]
fn rows_sharing_a_single_column_cursor_across_reads_all_arrive() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_inc_ties_src"), fresh("it_pg_inc_ties_dst"));
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v integer NOT NULL); \
         INSERT INTO \"{src}\" SELECT g, g / 7 FROM generate_series(1, 2500) g"
    ));
    incremental(d, &src, &dst, "\"v\"");
    let child = spawn(d, &["run", "--quiet", "inc.toml"]);
    let all = wait_until(Duration::from_secs(30), || {
        psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "2500"
    });
    // and a new row tied with the last value read is not one the next read skips
    psql(&format!(
        "INSERT INTO \"{src}\" VALUES (2501, 2500 / 7 + 1)"
    ));
    let later = wait_until(Duration::from_secs(30), || {
        psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "2501"
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    let got = psql(&format!("SELECT count(*) FROM \"{dst}\""));
    assert!(all && later, "{got} of 2501 rows: {}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// Ten kills of a run reading 100,000 rows in runs of seven equal cursor values into a
/// plain (insert) table: the primary key breaks the ties, so no row arrives twice or
/// not at all.
#[test]
fn kill_9_inside_runs_of_equal_cursor_values_repeats_and_loses_nothing() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_inc_kill_src"), fresh("it_pg_inc_kill_dst"));
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v integer NOT NULL); \
         INSERT INTO \"{src}\" SELECT g, g / 7 FROM generate_series(1, 100000) g; \
         CREATE TABLE \"{dst}\" (id bigint, v integer)"
    ));
    std::fs::write(
        d.join("inc.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\n\
             mode = \"incremental\"\ncursor = [\"v\"]\npoll_interval = \"100ms\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\n\
             [batch]\nmax_records = 100\nlinger = \"5ms\"\n[checkpoint]\ninterval = \"20ms\"\n",
            url()
        ),
    )
    .unwrap();
    crate::support::kill_at_random(d, &["run", "--quiet", "inc.toml"], 10, 50..500);
    let child = spawn(d, &["run", "--quiet", "inc.toml"]);
    let all = wait_until(Duration::from_secs(60), || {
        psql(&format!("SELECT count(DISTINCT id) FROM \"{dst}\"")) == "100000"
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(all, "{}", run.stderr);
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT id) FROM \"{dst}\""
        )),
        "100000|100000"
    );
}

/// A transaction that wrote a smaller cursor value commits three seconds after a
/// newer one: its row arrives all the same.
#[test]
fn a_row_committed_late_with_a_smaller_cursor_is_not_skipped() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_inc_late_src"), fresh("it_pg_inc_late_dst"));
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v text); INSERT INTO \"{src}\" VALUES (1, 'first')"
    ));
    incremental(d, &src, &dst, "\"id\"");
    let child = spawn(d, &["run", "--quiet", "inc.toml"]);
    let first = wait_until(Duration::from_secs(30), || {
        psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "1"
    });
    let mut slow = Command::new("psql")
        .args(["-X", "-q", "-d", &url(), "-c"])
        .arg(format!(
            "BEGIN; INSERT INTO \"{src}\" VALUES (5, 'slow'); SELECT pg_sleep(3); COMMIT;"
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("psql client");
    // the slow transaction holds its row before the quick one starts
    let holding = wait_until(Duration::from_secs(10), || {
        psql(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = '{src}' AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()"
        )) == "1"
    });
    psql(&format!("INSERT INTO \"{src}\" VALUES (6, 'quick')"));
    std::thread::sleep(Duration::from_secs(1));
    let early = psql(&format!(
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM \"{dst}\""
    ));
    assert!(slow.wait().unwrap().success(), "the slow writer failed");
    let both = wait_until(Duration::from_secs(30), || {
        psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "3"
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(first && holding, "{}", run.stderr);
    // the quick row waited for the older transaction rather than moving past it
    assert_eq!(early, "1", "read before the older transaction ended");
    assert!(
        both,
        "rows {}: {}",
        psql(&format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM \"{dst}\""
        )),
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// A NULL in a nullable cursor column stops the pipeline with the column named.
#[test]
fn a_null_cursor_value_is_an_error_naming_the_column() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_inc_null_src"), fresh("it_pg_inc_null_dst"));
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, updated_at timestamptz); \
         INSERT INTO \"{src}\" SELECT g, '2024-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 300) g; \
         INSERT INTO \"{src}\" VALUES (301, NULL)"
    ));
    incremental(d, &src, &dst, "\"updated_at\", \"id\"");
    let child = spawn(d, &["run", "--quiet", "inc.toml"]);
    let run = finish(child, Duration::from_secs(60));
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("NULL in the cursor column \"updated_at\""),
        "{}",
        run.stderr
    );
}
