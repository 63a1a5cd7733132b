//! PostgreSQL CDC under load: one transaction far larger than a batch arrives in
//! batches, in bounded memory, and a kill -9 inside it neither loses nor repeats a row.

use std::time::Duration;

use crate::postgres::{fresh, psql, server, url};
use crate::postgres_cdc_faults::{drop_slot, same};
use crate::support::{finish, jsonl_lines, kill_at_random, signal, spawn, wait_until, workdir};

/// Peak resident memory of a running process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_million_row_transaction_reaches_an_upsert_sink_in_bounded_memory() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_bigtx_src"), fresh("it_pg_bigtx_dst"));
    drop_slot(&dst);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer, amount numeric(12,2)); INSERT INTO \"{src}\" VALUES (0, 0, 0)"
    ));
    std::fs::write(
        d.join("big.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [checkpoint]\ninterval = \"1s\"\n",
            url()
        ),
    )
    .unwrap();
    let run = spawn(d, &["run", "--quiet", "big.toml"]);
    let streaming = wait_until(Duration::from_secs(30), || {
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'"
        )) == "1"
    });
    psql(&format!(
        "INSERT INTO \"{src}\" SELECT g, g, g / 100.0 FROM generate_series(1, 1000000) g"
    ));
    let arrived = wait_until(Duration::from_secs(240), || {
        psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "1000001"
    });
    let peak = peak_kib(run.id());
    signal(&run, "TERM");
    let run = finish(run, Duration::from_secs(30));
    let exact = psql(&format!(
        "SELECT count(*) FROM \"{src}\" s JOIN \"{dst}\" t USING (id) WHERE s.n = t.n AND s.amount = t.amount"
    ));
    drop_slot(&dst);
    assert!(streaming && arrived, "{}", run.stderr);
    assert_eq!(exact, "1000001");
    // the in-flight budget is 32 MiB; decoded transactions must not pile up
    assert!(
        peak > 0 && peak < 300 * 1024,
        "peak resident memory {peak} KiB"
    );
}

#[test]
fn kill_9_inside_one_large_transaction_repeats_and_loses_no_row_of_it() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let src = fresh("it_pg_txkill_src");
    let name = "it_pg_txkill";
    drop_slot(name);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer); INSERT INTO \"{src}\" VALUES (0, 0)"
    ));
    std::fs::write(
        d.join("tx.toml"),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [batch]\nmax_records = 5000\n[checkpoint]\ninterval = \"100ms\"\n",
            url()
        ),
    )
    .unwrap();
    // the snapshot (one row), then one transaction of 200,000 inserts
    let first = spawn(d, &["run", "--quiet", "tx.toml"]);
    let snapshot = wait_until(Duration::from_secs(30), || {
        !jsonl_lines(&d.join("out")).is_empty()
    });
    signal(&first, "TERM");
    let first = finish(first, Duration::from_secs(30));
    assert!(snapshot, "{}", first.stderr);
    psql(&format!(
        "INSERT INTO \"{src}\" SELECT g, g FROM generate_series(1, 200000) g"
    ));
    let killed = kill_at_random(d, &["run", "--quiet", "tx.toml"], 8, 300..1500);
    let last = spawn(d, &["run", "--quiet", "tx.toml"]);
    let ids = || -> Vec<i64> {
        jsonl_lines(&d.join("out"))
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| r["id"].as_i64())
            .collect()
    };
    let done = wait_until(Duration::from_secs(180), || ids().len() >= 200_001);
    // a moment for anything repeated to show
    std::thread::sleep(Duration::from_millis(500));
    signal(&last, "TERM");
    let last = finish(last, Duration::from_secs(30));
    drop_slot(name);
    let mut ids = ids();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert!(done, "{}", last.stderr);
    assert!(killed > 0, "no kill hit a running process");
    assert_eq!(ids.len(), 200_001, "rows lost");
    assert_eq!(total, 200_001, "rows repeated after {killed} kills");
}

#[test]
fn a_postgres_restart_mid_stream_is_retried_and_the_target_equals_the_source() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_cdcrestart_src"), fresh("it_pg_cdcrestart_dst"));
    drop_slot(&dst);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer);\
         INSERT INTO \"{src}\" SELECT g, g FROM generate_series(1, 100) g"
    ));
    std::fs::write(
        d.join("r.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [checkpoint]\ninterval = \"200ms\"\n\
             [errors]\nretry_backoff = \"200ms\"\nretry_backoff_max = \"2s\"\nmax_retries = 30\n",
            url()
        ),
    )
    .unwrap();
    let equal = || same(&src, &dst, "id, n");
    let run = spawn(d, &["run", "--quiet", "r.toml"]);
    let snapshot = wait_until(Duration::from_secs(30), equal);
    psql(&format!(
        "INSERT INTO \"{src}\" SELECT g, g FROM generate_series(101, 50000) g"
    ));
    crate::postgres::restart_postgres();
    psql(&format!("UPDATE \"{src}\" SET n = -n WHERE id % 7 = 0"));
    psql(&format!("DELETE FROM \"{src}\" WHERE id % 11 = 0"));
    let caught_up = wait_until(Duration::from_secs(120), equal);
    signal(&run, "TERM");
    let run = finish(run, Duration::from_secs(30));
    drop_slot(&dst);
    assert!(snapshot && caught_up, "{}", run.stderr);
    crate::postgres::assert_restarted(&run);
}

#[test]
fn a_backlog_shows_as_wal_lag_on_metrics_and_drains_to_nothing() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_cdclag_src"), fresh("it_pg_cdclag_dst"));
    drop_slot(&dst);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer); INSERT INTO \"{src}\" VALUES (0, 0)"
    ));
    std::fs::write(
        d.join("lag.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [batch]\nmax_records = 2000\n[checkpoint]\ninterval = \"200ms\"\n",
            url()
        ),
    )
    .unwrap();
    // the first run takes the snapshot and makes the slot; a backlog then waits in it
    let first = spawn(d, &["run", "--quiet", "lag.toml"]);
    let snapshot = wait_until(Duration::from_secs(30), || {
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'"
        )) == "1"
    });
    signal(&first, "TERM");
    let first = finish(first, Duration::from_secs(30));
    assert!(snapshot, "{}", first.stderr);
    for lo in (1..300_000).step_by(50_000) {
        psql(&format!(
            "INSERT INTO \"{src}\" SELECT g, g FROM generate_series({lo}, {}) g",
            lo + 49_999
        ));
    }
    let port = crate::service::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (run, _guard) = crate::service::serve(
        d,
        &[
            "run",
            "--quiet",
            "lag.toml",
            "--http",
            &format!("127.0.0.1:{port}"),
        ],
        port,
    );
    let mut most = 0.0f64;
    let drained = wait_until(Duration::from_secs(120), || {
        most =
            most.max(crate::service::metric(&base, "sluice_source_lag_bytes", &dst).unwrap_or(0.0));
        psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "300001"
    });
    // caught up: the next check and keepalive bring the lag down to (almost) nothing
    let mut last = None;
    let settled = wait_until(Duration::from_secs(30), || {
        last = crate::service::metric(&base, "sluice_source_lag_bytes", &dst);
        last.is_some_and(|b| b < 65_536.0)
    });
    let seconds = crate::service::metric(&base, "sluice_source_lag_seconds", &dst);
    let run = crate::service::stop(run);
    drop_slot(&dst);
    assert!(drained, "{run}");
    assert!(
        most > 1_000_000.0,
        "the backlog never showed: at most {most} bytes"
    );
    assert!(settled, "lag stayed at {last:?} bytes");
    assert!(seconds.is_some_and(|s| s < 60.0), "lag seconds {seconds:?}");
}

#[test]
fn writes_during_the_initial_copy_arrive_exactly_once() {
    handoff("it_pg_handoff", "", 1);
}

#[test]
fn writes_during_an_initial_copy_by_three_readers_arrive_exactly_once() {
    handoff(
        "it_pg_handoff_ranges",
        "snapshot_order = \"physical\"\nsnapshot_readers = 3\n",
        3,
    );
}

/// A CDC run into JSON lines while rows are inserted and updated during its initial
/// copy (read with `order` by `readers` connections): each row arrives once, each
/// update once.
fn handoff(name: &str, order: &str, readers: usize) {
    const ROWS: i64 = 300_000;
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let src = fresh(&format!("{name}_src"));
    drop_slot(name);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer);\
         INSERT INTO \"{src}\" SELECT g, g FROM generate_series(1, {ROWS}) g"
    ));
    std::fs::write(
        d.join("h.toml"),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\n{order}\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[checkpoint]\ninterval = \"500ms\"\n",
            url()
        ),
    )
    .unwrap();
    let run = spawn(d, &["run", "--quiet", "h.toml"]);
    // once the slot exists, the snapshot is being read: write meanwhile
    let slot = wait_until(Duration::from_secs(30), || {
        psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sluice_{name}'"
        )) == "1"
    });
    for k in 0..30 {
        psql(&format!(
            "INSERT INTO \"{src}\" SELECT g, g FROM generate_series({0}, {0} + 9) g;\
             UPDATE \"{src}\" SET n = -n WHERE id = {1}",
            ROWS + 1 + k * 10,
            ROWS - k * 5_000
        ));
    }
    let expected = ROWS as usize + 300 + 30;
    let records = || -> Vec<serde_json::Value> {
        jsonl_lines(&d.join("out"))
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let arrived = wait_until(Duration::from_secs(180), || records().len() >= expected);
    std::thread::sleep(Duration::from_millis(1500));
    // the source's connections: one per range read at once (a pool opens one only
    // when none is free)
    let connections: usize = psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice {name} source'"
    ))
    .parse()
    .unwrap();
    signal(&run, "TERM");
    let run = finish(run, Duration::from_secs(30));
    drop_slot(name);
    assert!(slot && arrived, "{}", run.stderr);
    assert!(
        connections >= readers,
        "{connections} connections read {readers} ranges"
    );
    let records = records();
    let mut rows: std::collections::HashMap<i64, usize> = Default::default();
    let mut updates: std::collections::HashMap<i64, usize> = Default::default();
    for r in &records {
        let id = r["id"].as_i64().unwrap();
        match r["_op"].as_str() {
            Some("r" | "c") => *rows.entry(id).or_default() += 1,
            Some("u") => *updates.entry(id).or_default() += 1,
            other => panic!("unexpected record {other:?}: {r}"),
        }
    }
    assert_eq!(rows.len(), ROWS as usize + 300, "rows lost");
    let twice: Vec<_> = rows.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "rows read twice: {twice:?}");
    assert_eq!(updates.len(), 30);
    assert!(updates.values().all(|&n| n == 1), "{updates:?}");
    assert_eq!(records.len(), expected);
}
