//! PostgreSQL CDC into two exactly-once sinks, killed with SIGKILL between their
//! flushes while transactions of the table and of another table of the publication
//! interleave: the sink that was ahead skips by each change's position in the
//! WAL, also where its offsets stand past the last change it holds (the other
//! transactions), which a count of records cannot confirm on a read again.

use std::time::Duration;

use crate::postgres::{fresh, psql, server, slow_offsets, url};
use crate::support::{
    finish, jsonl_ids, jsonl_lines, kill_after_flushes, signal, spawn, wait_until, workdir,
};

/// A JSON-lines file sink ("changes", every change) and a PostgreSQL upsert sink
/// ("mirror", flushed after it: sinks flush in name order) whose offsets are stored
/// slowly (a trigger sleeps), so that most kills fall after "changes" flushed and
/// before "mirror" did. "changes" holds every inserted id once, "mirror" equals the
/// source.
#[test]
fn cdc_into_two_exactly_once_sinks_survives_kill_9_between_their_flushes() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, copy, other) = (
        fresh("it_pg_cdcfan_src"),
        fresh("it_pg_cdcfan_copy"),
        fresh("it_pg_cdcfan_other"),
    );
    // the pipeline's offsets of an earlier run go too
    let name = &fresh("it_pg_cdcfan");
    let slot = format!("sluice_{name}");
    psql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}';\
         DROP PUBLICATION IF EXISTS {slot};\
         CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer); INSERT INTO \"{src}\" VALUES (0, 0);\
         CREATE TABLE \"{other}\" (id bigint);\
         DROP PUBLICATION IF EXISTS it_pg_cdcfan_pub; CREATE PUBLICATION it_pg_cdcfan_pub FOR TABLE \"{src}\", \"{other}\""
    ));
    std::fs::write(
        d.join("cdc.toml"),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\npublication = \"it_pg_cdcfan_pub\"\n\
             [sinks.changes]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [sinks.mirror]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{copy}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [batch]\nmax_records = 50\n[checkpoint]\ninterval = \"50ms\"\n",
            url()
        ),
    )
    .unwrap();
    // the snapshot alone, which also makes the offsets table: the kills then start
    // with both sinks at the offsets that end it, the stream's start, which has a
    // position like any change's
    let first = spawn(d, &["run", "cdc.toml"]);
    let snapshot = wait_until(Duration::from_secs(30), || {
        !jsonl_lines(&d.join("out")).is_empty()
    });
    signal(&first, "TERM");
    let first = finish(first, Duration::from_secs(30));
    assert!(snapshot, "{}", first.stderr);
    let _slow = slow_offsets("cdcfan_slow", name, "mirror");
    // a writer, until the kills are over: transactions of 10 inserts, each followed
    // by one on another table of the publication (the stream's offsets move past it
    // without a change of the table)
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w_src, w_other, w_stop) = (src.clone(), other.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let mut t = 0;
        while !w_stop.load(std::sync::atomic::Ordering::Relaxed) {
            psql(&format!(
                "INSERT INTO \"{w_src}\" SELECT g, g FROM generate_series({}, {}) g",
                t * 10 + 1,
                t * 10 + 10
            ));
            psql(&format!("INSERT INTO \"{w_other}\" VALUES ({t})"));
            t += 1;
        }
        t
    });
    let mut logs = kill_after_flushes(d, &["run", "cdc.toml"], &d.join("out"), 8);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let txns = writer.join().expect("writer");
    let last = spawn(d, &["run", "cdc.toml"]);
    let n = txns * 10 + 1;
    let ids = || jsonl_ids(&d.join("out"));
    let done = wait_until(Duration::from_secs(120), || {
        ids().len() >= n && psql(&format!("SELECT count(*) FROM \"{copy}\"")) == n.to_string()
    });
    // a moment for anything repeated to show
    std::thread::sleep(Duration::from_millis(500));
    signal(&last, "TERM");
    let last = finish(last, Duration::from_secs(30));
    psql(&format!(
        "SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION it_pg_cdcfan_pub"
    ));
    let copied = psql(&format!("SELECT count(*) FROM \"{copy}\""));
    assert!(
        done,
        "{} of {n} in the changes file, {copied} mirrored: {}",
        ids().len(),
        last.stderr
    );
    let mut ids = ids();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "changes lost");
    assert_eq!(total, n, "changes repeated into the sink that was ahead");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM ((SELECT * FROM \"{src}\" EXCEPT SELECT * FROM \"{copy}\") UNION ALL \
             (SELECT * FROM \"{copy}\" EXCEPT SELECT * FROM \"{src}\")) x"
        )),
        "0"
    );
    // and not by chance: some restart found "changes" ahead of "mirror"
    logs += &last.stderr;
    assert!(
        logs.contains("not written to it again (by their positions)"),
        "no restart found a sink ahead: {}",
        logs.lines()
            .filter(|l| l.contains("resuming") || l.contains("ahead") || l.contains("beyond"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
