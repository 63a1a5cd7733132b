//! How far a read has come, as `/pipelines` and `/metrics` tell it: a PostgreSQL
//! snapshot's progress against the planner's row estimate, also after a resume; the
//! files and objects a watching source has found and not read yet.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::postgres::{fresh, psql, server, url};
use crate::service::{free_port, metric, pipeline, serve, stop, wait_state};
use crate::support::{sluice, wait_until, workdir};

/// A snapshot stopped part-way by a bad value goes on, once the value is mended, from
/// its checkpoint; its bar counts the rows read before as done, so it ends at the
/// table's size, not at the part this run read.
#[test]
fn a_postgres_snapshot_shows_progress_in_rows_also_after_a_resume() {
    const ROWS: u64 = 200_000;
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let src = fresh("it_pg_progress");
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n numeric(10,2) NOT NULL); \
         INSERT INTO \"{src}\" SELECT g, g FROM generate_series(1, {ROWS}) g; \
         UPDATE \"{src}\" SET n = 'NaN' WHERE id = 150000; ANALYZE \"{src}\""
    ));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"{src}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\n\
             [sink]\nconnector = \"blackhole\"\n[batch]\nmax_records = 1000\n\
             [checkpoint]\ninterval = \"50ms\"\n",
            url()
        ),
    )
    .unwrap();
    let first = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_ne!(
        first.code,
        Some(0),
        "NaN has no decimal value: {}",
        first.stderr
    );
    assert!(first.stderr.contains("NaN"), "{}", first.stderr);
    psql(&format!("UPDATE \"{src}\" SET n = 0 WHERE id = 150000"));

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(d, &["run", "--quiet", "p.toml", "--http", &addr], port);
    wait_state(&base, &src, "finished");
    let p = pipeline(&base, &src);
    stop(child);
    let read = p["source"]["records"].as_u64().unwrap();
    assert!(read > 0 && read < ROWS, "not a resume: {p:#}");
    assert_eq!(p["progress"]["unit"], "records", "{p:#}");
    let (done, total) = (
        p["progress"]["done"].as_f64().unwrap(),
        p["progress"]["total"].as_f64().unwrap(),
    );
    // estimates: the table's from ANALYZE, the part left from the key's histogram
    let near = |v: f64| (v - ROWS as f64).abs() < ROWS as f64 * 0.02;
    assert!(near(total) && near(done), "{p:#}");
}

/// Takes `ACCESS EXCLUSIVE` on `table` for `seconds` in a psql session of its own, so
/// that a sink writing to it waits; returns once the lock is held.
fn hold_lock(table: &str, seconds: u32) -> Child {
    let child = Command::new("psql")
        .args(["-X", "-q", "-d", &url(), "-c"])
        .arg(format!(
            "BEGIN; LOCK TABLE \"{table}\" IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); COMMIT;"
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("psql client");
    let held = wait_until(Duration::from_secs(10), || {
        psql(&format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '\"{table}\"'::regclass AND mode = 'AccessExclusiveLock' AND granted"
        )) == "1"
    });
    assert!(held, "the lock on {table} was never granted");
    child
}

/// Runs the watching pipeline `toml` (named after the PostgreSQL table `dst` it writes
/// to) over five inputs of 20,000 rows with its sink blocked, and checks that the
/// source's lag counts the inputs not read to their end while the sink waits, and
/// nothing once all 100,000 rows are in.
fn backlog_shows_as_pending_inputs(d: &Path, dst: &str, toml: &str) {
    psql(&format!("CREATE TABLE \"{dst}\" (id bigint, s text)"));
    std::fs::write(d.join("w.toml"), toml).unwrap();
    let mut lock = hold_lock(dst, 8);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(d, &["run", "--quiet", "w.toml", "--http", &addr], port);
    // the source reads until the in-flight limit, inside the first input
    let mut most = 0.0f64;
    wait_until(Duration::from_secs(6), || {
        most = most.max(metric(&base, "sluice_source_lag_files", dst).unwrap_or(0.0));
        most >= 5.0
    });
    let _ = lock.wait();
    let arrived = wait_until(Duration::from_secs(60), || {
        psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "100000"
    });
    let mut last = (None, None);
    let settled = wait_until(Duration::from_secs(10), || {
        last = (
            metric(&base, "sluice_source_lag_files", dst),
            metric(&base, "sluice_source_lag_bytes", dst),
        );
        last == (Some(0.0), Some(0.0))
    });
    let p = pipeline(&base, dst);
    let log = stop(child);
    assert!(arrived, "{p:#}\n{log}");
    assert_eq!(
        most, 5.0,
        "inputs pending while the sink waited: at most {most}, not all five"
    );
    assert!(settled, "lag stayed at {last:?} (files, bytes): {p:#}");
    assert_eq!(p["lag"][0]["files"], 0, "{p:#}");
}

/// The rows of input `i` of a backlog test: 20,000 JSON lines.
fn rows(i: usize) -> String {
    (0..20_000)
        .map(|n| {
            format!(
                "{{\"id\": {}, \"s\": \"row {n} of input {i}\"}}\n",
                i * 20_000 + n
            )
        })
        .collect()
}

const SINK_AND_LIMITS: &str =
    "[sink]\nconnector = \"postgres\"\nurl = \"{url}\"\ntable = \"{dst}\"\n\
     [batch]\nmax_records = 1000\nmax_in_flight = \"256KiB\"\nlinger = \"20ms\"\n";

fn sink_and_limits(dst: &str) -> String {
    SINK_AND_LIMITS
        .replace("{url}", &url())
        .replace("{dst}", dst)
}

#[test]
fn a_watched_directory_shows_the_files_not_read_yet_as_lag() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let dst = fresh("it_file_pending");
    std::fs::create_dir_all(d.join("in")).unwrap();
    let toml = format!(
        "name = \"{dst}\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\nwatch = true\npoll_interval = \"100ms\"\n\
         schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"s\", type = \"string\" }}]\n{}",
        sink_and_limits(&dst)
    );
    for i in 0..5 {
        std::fs::write(d.join(format!("in/{i}.jsonl")), rows(i)).unwrap();
    }
    backlog_shows_as_pending_inputs(d, &dst, &toml);
}

#[test]
fn a_watched_prefix_shows_the_objects_not_read_yet_as_lag() {
    use crate::s3::{conn, new_bucket, py};
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let dst = fresh("it_s3_pending");
    let bucket = new_bucket("pending");
    let toml = format!(
        "name = \"{dst}\"\n[source]\nconnector = \"s3\"\n{}path = \"in/*.jsonl\"\nwatch = true\npoll_interval = \"100ms\"\n\
         schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"s\", type = \"string\" }}]\n{}",
        conn(&bucket),
        sink_and_limits(&dst)
    );
    let inputs = workdir();
    for i in 0..5 {
        std::fs::write(inputs.path().join(format!("{i}.jsonl")), rows(i)).unwrap();
    }
    py(
        &bucket,
        &format!(
            "for i in range(5):\n    s3.upload_file('{}/%d.jsonl' % i, BUCKET, 'in/%d.jsonl' % i)",
            inputs.path().display()
        ),
    );
    backlog_shows_as_pending_inputs(d, &dst, &toml);
}
