//! MySQL CDC (on MariaDB) into two exactly-once sinks, killed with SIGKILL between
//! their flushes while transactions larger than a batch and transactions of another
//! table interleave: the sink that was ahead skips by each change's place in the
//! binlog, also where its offsets stand past the last change it holds (the other
//! table's transactions), which a count of records cannot confirm on a read again.

use std::time::Duration;

use crate::mysql::{binlog_port, unique, url_at};
use crate::mysql_cdc::{binlog, my};
use crate::postgres::{fresh, psql, server, slow_offsets, url};
use crate::support::{
    finish, jsonl_lines, kill_after_flushes, signal, spawn, wait_until, workdir, KillOnPanic,
};

/// Stops the writer thread when the test ends, also by a panic.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every change in the changes file, as (op, id), in file order.
fn changes(dir: &std::path::Path) -> Vec<(String, i64)> {
    jsonl_lines(dir)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["_op"].as_str().unwrap().to_string(),
                v["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// A JSON-lines file sink ("changes", every change) and a PostgreSQL upsert sink
/// ("mirror", flushed after it: sinks flush in name order) whose offsets are stored
/// slowly (a trigger sleeps), so that most kills fall after "changes" flushed and
/// before "mirror" did. Each transaction inserts 120 rows in three statements (more
/// than a batch holds, so offsets also stand inside transactions, after some of a
/// rows event's rows) and moves one row's key (a delete and a create, two records of
/// one binlog row); now and then the binlog moves to a new file. "changes" holds every
/// change once, "mirror" equals the source.
#[test]
fn binlog_into_two_exactly_once_sinks_survives_kill_9_between_their_flushes() {
    let _one = binlog();
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, other) = (unique("cdcfan"), unique("cdcfan_other"));
    let copy = fresh("it_my_cdcfan_copy");
    let name = &fresh("it_my_cdcfan");
    my(&format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, n INT); INSERT INTO {src} VALUES (0, 0);\
         CREATE TABLE {other} (id BIGINT)"
    ));
    std::fs::write(
        d.join("cdc.toml"),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\n\
             [sinks.changes]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [sinks.mirror]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{copy}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [batch]\nmax_records = 50\n[checkpoint]\ninterval = \"50ms\"\n",
            url_at(binlog_port()),
            url()
        ),
    )
    .unwrap();
    // the snapshot alone, which also makes the offsets table
    let first = spawn(d, &["run", "cdc.toml"]);
    let guard = KillOnPanic(first.id());
    let snapshot = wait_until(Duration::from_secs(30), || {
        !jsonl_lines(&d.join("out")).is_empty()
    });
    signal(&first, "TERM");
    let first = finish(first, Duration::from_secs(30));
    drop(guard);
    assert!(snapshot, "{}", first.stderr);
    let _slow = slow_offsets("my_cdcfan_slow", name, "mirror");
    // a writer, until the kills are over; after each transaction one on another table
    // (the offsets move past it without a change of the table)
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let (w_src, w_other, w_stop) = (src.clone(), other.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let mut t = 0;
        while !w_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let a = t * 120 + 1;
            let rows = |from: i64| {
                format!(
                    "INSERT INTO {w_src} SELECT seq, seq FROM seq_{from}_to_{};",
                    from + 39
                )
            };
            my(&format!(
                "BEGIN; {} {} {} UPDATE {w_src} SET id = -id WHERE id = {a}; COMMIT; INSERT INTO {w_other} VALUES ({t});{}",
                rows(a),
                rows(a + 40),
                rows(a + 80),
                if t % 10 == 9 { " FLUSH BINARY LOGS;" } else { "" }
            ));
            t += 1;
        }
        t
    });
    let mut logs = kill_after_flushes(d, &["run", "cdc.toml"], &d.join("out"), 8);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let txns = writer.join().expect("writer");
    // the snapshot's row, then per transaction 120 creates, and a delete and a create
    // for the key moved
    let mut want: Vec<(String, i64)> = vec![("r".into(), 0)];
    for t in 0..txns {
        let a = t * 120 + 1;
        want.extend((a..a + 120).map(|id| ("c".to_string(), id)));
        want.extend([("d".to_string(), a), ("c".to_string(), -a)]);
    }
    want.sort();
    let rows = txns * 120;
    let mirrored = format!("{}|{}", rows + 1, rows * (rows + 1) / 2);
    let mirror = || {
        psql(&format!(
            "SELECT count(*), sum(n) FROM \"{copy}\" WHERE n = abs(id)"
        ))
    };
    let last = spawn(d, &["run", "cdc.toml"]);
    let guard = KillOnPanic(last.id());
    let done = wait_until(Duration::from_secs(120), || {
        changes(&d.join("out")).len() >= want.len() && mirror() == mirrored
    });
    signal(&last, "TERM");
    let last = finish(last, Duration::from_secs(30));
    drop(guard);
    my(&format!("DROP TABLE {src}, {other}"));
    let mut got = changes(&d.join("out"));
    assert!(
        done,
        "{} of {} changes, mirror {} for {mirrored}: {}",
        got.len(),
        want.len(),
        mirror(),
        last.stderr
    );
    got.sort();
    let total = got.len();
    got.dedup();
    assert_eq!(got, want, "changes lost or unknown");
    assert_eq!(
        total,
        want.len(),
        "changes repeated into the sink that was ahead"
    );
    assert_eq!(mirror(), mirrored);
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
