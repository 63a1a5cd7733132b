//! PostgreSQL CDC under load: one transaction far larger than a batch arrives in
//! batches, in bounded memory, and a kill -9 inside it neither loses nor repeats a row.

use std::time::Duration;

use crate::postgres::{fresh, psql, server, url};
use crate::support::{finish, jsonl_lines, kill_at_random, signal, spawn, wait_until, workdir};

/// Drops the slot, publication and stored offsets of pipeline `name`, if any.
fn drop_slot(name: &str) {
    fresh(name);
    psql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sluice_{name}';\
         DROP PUBLICATION IF EXISTS sluice_{name}"
    ));
}

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
    let same = || {
        psql(&format!("SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'")) == "1"
            && psql(&format!(
                "SELECT count(*) FROM ((SELECT id, n FROM \"{src}\" EXCEPT SELECT id, n FROM \"{dst}\") UNION ALL \
                 (SELECT id, n FROM \"{dst}\" EXCEPT SELECT id, n FROM \"{src}\")) x"
            )) == "0"
    };
    let run = spawn(d, &["run", "--quiet", "r.toml"]);
    let snapshot = wait_until(Duration::from_secs(30), same);
    psql(&format!(
        "INSERT INTO \"{src}\" SELECT g, g FROM generate_series(101, 50000) g"
    ));
    crate::postgres::restart_postgres();
    psql(&format!("UPDATE \"{src}\" SET n = -n WHERE id % 7 = 0"));
    psql(&format!("DELETE FROM \"{src}\" WHERE id % 11 = 0"));
    let equal = wait_until(Duration::from_secs(120), same);
    signal(&run, "TERM");
    let run = finish(run, Duration::from_secs(30));
    drop_slot(&dst);
    assert!(snapshot && equal, "{}", run.stderr);
    crate::postgres::assert_restarted(&run);
}
