//! Redis against the real server (6379, or a private one for a restart): every type
//! through a stream and back, kill -9 of the reading and of the writing runtime,
//! hashes and strings by key with deletes, a malformed entry, entries claimed from a
//! dead consumer, a server restart mid-run; checked with redis-cli.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{
    finish, jsonl_ids, jsonl_lines, kill_at_random, signal, sluice, spawn, wait_until, workdir,
};

/// The server the tests use.
pub(crate) fn port() -> u16 {
    std::env::var("SLUICE_TEST_REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(6379)
}

pub(crate) fn url_at(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A key unique to this run.
pub(crate) fn unique(tag: &str) -> String {
    use rand::Rng;
    format!(
        "{tag}:{}:{:06x}",
        std::process::id(),
        rand::thread_rng().gen::<u32>() & 0xff_ffff
    )
}

/// `redis-cli --raw ARGS` against `port`, its output.
fn cli_at(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

pub(crate) fn cli(args: &[&str]) -> String {
    cli_at(port(), args)
}

/// Runs the commands of `lines` (one per line) through redis-cli.
fn cli_lines_at(port: u16, lines: &str) {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Adds entries `id i` for `ids` to `stream` (`redis-cli --pipe`, the protocol
/// written out).
fn add_at(port: u16, stream: &str, ids: std::ops::Range<u64>) {
    let bulk = |s: &str| format!("${}\r\n{s}\r\n", s.len());
    let mut wire = String::new();
    for i in ids {
        wire.push_str("*5\r\n");
        for part in ["XADD", stream, "*", "id", &i.to_string()] {
            wire.push_str(&bulk(part));
        }
    }
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(wire.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The `id` field of every entry of `stream`, in stream order.
fn stream_ids(stream: &str) -> Vec<i64> {
    let out = cli(&["XRANGE", stream, "-", "+"]);
    let lines: Vec<&str> = out.lines().collect();
    let mut ids = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if *l == "id" {
            ids.push(lines[i + 1].parse().unwrap());
        }
    }
    ids
}

/// Every type of the round-trip data set, file -> Redis stream -> file: the values
/// come back exactly, and redis-cli reads what the sink added.
#[test]
fn every_type_goes_through_a_stream_and_back() {
    use crate::roundtrip::SCHEMA;
    let dir = workdir();
    let d = dir.path();
    let stream = unique("types");
    crate::roundtrip::write_rows(d);
    let redis = format!("connector = \"redis\"\nurl = \"{}\"\n", url_at(port()));
    std::fs::write(
        d.join("to.toml"),
        format!(
            "name = \"to_redis\"\n[source]\nconnector = \"file\"\npath = \"in/all.jsonl\"\n{SCHEMA}\n\
             [sink]\n{redis}stream = \"{stream}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("from.toml"),
        format!(
            "name = \"from_redis\"\n[source]\n{redis}stream = \"{stream}\"\nbounded = true\n{SCHEMA}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n"
        ),
    )
    .unwrap();
    for p in ["to.toml", "from.toml"] {
        let run = sluice(d, &["run", p]);
        assert_eq!(run.code, Some(0), "{p}: {}", run.stderr);
    }
    assert_eq!(cli(&["XLEN", &stream]), "3");
    let first = cli(&["XRANGE", &stream, "-", "+", "COUNT", "1"]);
    let body: serde_json::Value =
        serde_json::from_str(first.lines().nth(2).expect("a body")).unwrap();
    assert_eq!(body["u64"].to_string(), "18446744073709551615", "{first}");
    // the group read everything and acknowledged it
    let pending = cli(&["XPENDING", &stream, "sluice-from_redis"]);
    assert!(pending.starts_with('0'), "{pending}");
    let result = crate::roundtrip::compare_out(&d.join("out"));
    cli(&["DEL", &stream, "sluice:offsets:to_redis:sink"]);
    assert_eq!(result, "equal 3");
}

/// The reading runtime killed 10 times mid-stream into an exactly-once file sink:
/// every entry arrives once. The writing runtime killed 10 times: the stream holds
/// every record once, its transactions holding the offsets with the entries.
#[test]
fn kill_9_of_the_reader_and_of_the_writer_loses_and_repeats_nothing() {
    const N: u64 = 200_000;
    let dir = workdir();
    let d = dir.path();
    let (source, sunk) = (unique("kill_src"), unique("kill_dst"));
    add_at(port(), &source, 0..N);
    let redis = format!("connector = \"redis\"\nurl = \"{}\"\n", url_at(port()));
    std::fs::write(
        d.join("read.toml"),
        format!(
            "name = \"read\"\n[source]\n{redis}stream = \"{source}\"\nbounded = true\nformat = \"fields\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n"
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "read.toml"], 10, 100..600);
    let before = jsonl_ids(&d.join("out")).len();
    eprintln!("killed {killed} times mid-run; {before} records before the last run");
    let run = sluice(d, &["run", "--quiet", "read.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ids = jsonl_ids(&d.join("out"));
    assert_eq!(ids.len() as u64, N, "killed {killed} times mid-run");
    assert_eq!(ids, (0..N as i64).collect::<Vec<_>>());

    let text: String = (0..N).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), text).unwrap();
    std::fs::write(
        d.join("write.toml"),
        format!(
            "name = \"write\"\n[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\n{redis}stream = \"{sunk}\"\nformat = \"fields\"\noffsets_key = \"{sunk}:offsets\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n"
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "write.toml"], 10, 100..1200);
    let run = sluice(d, &["run", "--quiet", "write.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let stored = stream_ids(&sunk);
    cli(&["DEL", &source, &sunk, &format!("{sunk}:offsets")]);
    assert_eq!(stored.len() as u64, N, "killed {killed} times mid-run");
    // one writer reading a file in order: the stream holds the lines in order
    assert_eq!(stored, (0..N as i64).collect::<Vec<_>>());
}

/// Records into hashes and strings by key: a later record replaces the hash (a null
/// column's field goes), a change record `d` deletes the key; redis-cli reads them.
#[test]
fn hashes_and_strings_by_key_take_upserts_and_deletes() {
    let dir = workdir();
    let d = dir.path();
    let prefix = unique("user");
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/a.jsonl"),
        "{\"id\": 1, \"name\": \"ada\", \"score\": 1.5, \"_op\": \"c\"}\n\
         {\"id\": 2, \"name\": \"bob\", \"score\": 2.25, \"_op\": \"c\"}\n\
         {\"id\": 3, \"name\": \"cy\", \"score\": 3.0, \"_op\": \"c\"}\n\
         {\"id\": 1, \"name\": \"ada l\", \"score\": null, \"_op\": \"u\"}\n\
         {\"id\": 2, \"_op\": \"d\"}\n",
    )
    .unwrap();
    let schema = "schema = [{ name = \"id\", type = \"int64\" }, { name = \"name\", type = \"string\" }, \
                  { name = \"score\", type = \"decimal(10,2)\" }, { name = \"_op\", type = \"string\" }]";
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"keys\"\n[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n{schema}\n\
             [sinks.hash]\nconnector = \"redis\"\nurl = \"{0}\"\nmode = \"hash\"\nkey_columns = [\"id\"]\nkey_prefix = \"{prefix}:h:\"\n\
             [sinks.string]\nconnector = \"redis\"\nurl = \"{0}\"\nmode = \"string\"\nkey_columns = [\"id\"]\nkey_prefix = \"{prefix}:s:\"\n",
            url_at(port())
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let h1 = cli(&["HGETALL", &format!("{prefix}:h:1")]);
    let h2 = cli(&["EXISTS", &format!("{prefix}:h:2")]);
    let h3 = cli(&["HGET", &format!("{prefix}:h:3"), "score"]);
    let s1 = cli(&["GET", &format!("{prefix}:s:1")]);
    let s2 = cli(&["EXISTS", &format!("{prefix}:s:2")]);
    let keys = cli(&["KEYS", &format!("{prefix}:*")]);
    for k in keys.lines() {
        cli(&["DEL", k]);
    }
    cli(&[
        "DEL",
        "sluice:offsets:keys:hash",
        "sluice:offsets:keys:string",
    ]);
    assert_eq!(h1, "id\n1\nname\nada l", "the update replaced the hash");
    assert_eq!(h2, "0", "the delete removed the hash");
    assert_eq!(h3, "3.00");
    assert_eq!(s1, "{\"id\":1,\"name\":\"ada l\",\"score\":null}");
    assert_eq!(s2, "0");
}

/// An entry whose body is not JSON, and one without the body field, are dead letters
/// naming stream and entry id; the others arrive.
#[test]
fn a_malformed_entry_is_a_dead_letter_naming_stream_and_id() {
    let dir = workdir();
    let d = dir.path();
    let stream = unique("bad");
    let mut lines = String::new();
    for i in 0..3 {
        lines.push_str(&format!("XADD {stream} * body '{{\"id\":{i}}}'\n"));
    }
    lines.push_str(&format!(
        "XADD {stream} 9999999999999-1 body \"not json\"\n"
    ));
    lines.push_str(&format!("XADD {stream} 9999999999999-2 other 1\n"));
    for i in 3..6 {
        lines.push_str(&format!("XADD {stream} * body '{{\"id\":{i}}}'\n"));
    }
    cli_lines_at(port(), &lines);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"bad\"\n[source]\nconnector = \"redis\"\nurl = \"{}\"\nstream = \"{stream}\"\nbounded = true\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\nmetadata = [\"topic\", \"id\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
             [errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\n",
            url_at(port())
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    cli(&["DEL", &stream]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_ids(&d.join("out")), [0, 1, 2, 3, 4, 5]);
    let first: serde_json::Value = serde_json::from_str(&jsonl_lines(&d.join("out"))[0]).unwrap();
    assert_eq!(first["_topic"], stream.as_str());
    assert!(
        first["_id"].as_str().is_some_and(|id| id.contains('-')),
        "{first}"
    );
    let letters = jsonl_lines(&d.join("dlq"));
    assert_eq!(letters.len(), 2, "{letters:?}");
    let a: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    let b: serde_json::Value = serde_json::from_str(&letters[1]).unwrap();
    assert_eq!(
        a["position"],
        format!("stream \"{stream}\" entry 9999999999999-1")
    );
    assert_eq!(
        b["position"],
        format!("stream \"{stream}\" entry 9999999999999-2")
    );
    assert!(
        b["error"].as_str().unwrap().contains("no field \"body\""),
        "{b}"
    );
}

/// Entries a consumer of the group read and never acknowledged (it died) are claimed
/// after `claim_idle` and arrive; the runtime shares the group with it.
#[test]
fn entries_a_dead_consumer_left_are_claimed() {
    let dir = workdir();
    let d = dir.path();
    let stream = unique("claim");
    add_at(port(), &stream, 0..100);
    cli(&["XGROUP", "CREATE", &stream, "g", "0"]);
    // "dead" reads the first 40 and never acknowledges them
    cli(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "dead",
        "COUNT",
        "40",
        "STREAMS",
        &stream,
        ">",
    ]);
    std::thread::sleep(Duration::from_millis(1200));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"claim\"\n[source]\nconnector = \"redis\"\nurl = \"{}\"\nstream = \"{stream}\"\ngroup = \"g\"\n\
             format = \"fields\"\nschema = [{{ name = \"id\", type = \"int64\" }}]\nclaim_idle = \"1s\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n[checkpoint]\ninterval = \"100ms\"\n",
            url_at(port())
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let all = wait_until(Duration::from_secs(30), || {
        jsonl_ids(&d.join("out")).len() >= 100
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    let pending = cli(&["XPENDING", &stream, "g"]);
    cli(&["DEL", &stream]);
    assert!(all, "{}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_ids(&d.join("out")), (0..100).collect::<Vec<_>>());
    assert!(
        pending.starts_with('0'),
        "everything acknowledged: {pending}"
    );
}

/// A Redis server of the test's own, keeping its data in `dir` (append-only file,
/// every write synced), so a restart keeps the stream.
fn private_server(port: u16, dir: &Path) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let up = wait_until(Duration::from_secs(20), || {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    });
    assert!(up, "redis-server did not start on port {port}");
    child
}

/// The server killed and restarted while a pipeline reads its stream: the pipeline
/// waits, reconnects, and every entry arrives once.
#[test]
fn a_server_restart_mid_run_is_waited_out_and_nothing_is_lost() {
    let dir = workdir();
    let d = dir.path();
    let port = crate::service::free_port();
    let data = d.join("redis");
    let mut server = private_server(port, &data);
    add_at(port, "r", 0..2000);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"restart\"\n[source]\nconnector = \"redis\"\nurl = \"{}\"\nstream = \"r\"\n\
             format = \"fields\"\nschema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n[checkpoint]\ninterval = \"100ms\"\n",
            url_at(port)
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let first = wait_until(Duration::from_secs(30), || {
        jsonl_ids(&d.join("out")).len() == 2000
    });
    signal(&server, "KILL");
    let _ = server.wait();
    std::thread::sleep(Duration::from_secs(2));
    server = private_server(port, &data);
    add_at(port, "r", 2000..4000);
    let all = wait_until(Duration::from_secs(60), || {
        jsonl_ids(&d.join("out")).len() >= 4000
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    signal(&server, "TERM");
    let _ = server.wait();
    assert!(first, "the first entries did not arrive: {}", run.stderr);
    assert!(
        all,
        "the entries after the restart did not arrive: {}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_ids(&d.join("out")), (0..4000).collect::<Vec<_>>());
}

/// Options that cannot work are named by `validate`.
#[test]
fn bad_options_are_named() {
    let dir = workdir();
    let d = dir.path();
    for (sink, expected) in [
        ("mode = \"hash\"", "need key_columns"),
        ("stream = \"s\"\nurl2 = 1", "unknown field `url2`"),
        (
            "mode = \"string\"\nkey_columns = [\"id\"]\nformat = \"fields\"",
            "format = \\\"fields\\\" writes stream entries",
        ),
        ("stream = \"s\"\nformat = \"avro\"", "needs schema_registry"),
        (
            "mode = \"hash\"\nkey_columns = [\"id\"]\nformat = \"avro\"\nschema_registry = { url = \"http://r\" }",
            "format = \\\"avro\\\" writes stream entries or string values",
        ),
        (
            "mode = \"string\"\nkey_columns = [\"id\"]\nformat = \"avro\"\nschema_registry = { url = \"http://r\" }",
            "needs schema_subject",
        ),
    ] {
        std::fs::write(
            d.join("p.toml"),
            format!(
                "[source]\nconnector = \"file\"\npath = \"in\"\n[sink]\nconnector = \"redis\"\nurl = \"{}\"\n{sink}\n",
                url_at(port())
            ),
        )
        .unwrap();
        let run = sluice(d, &["validate", "p.toml"]);
        assert_eq!(run.code, Some(2), "{sink}: {}", run.stderr);
        assert!(
            run.stderr.contains(expected.replace("\\\"", "\"").as_str()),
            "{sink}: {}",
            run.stderr
        );
    }
    std::fs::write(
        d.join("p.toml"),
        "[source]\nconnector = \"redis\"\nurl = \"rediss://h:6380\"\nstream = \"s\"\n[sink]\nconnector = \"file\"\npath = \"out\"\n",
    )
    .unwrap();
    let run = sluice(d, &["validate", "p.toml"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("TLS (rediss://) is not built in"),
        "{}",
        run.stderr
    );
    // a list declared for text fields would be read as a one-item list of the text
    std::fs::write(
        d.join("p.toml"),
        "[source]\nconnector = \"redis\"\nurl = \"redis://h\"\nstream = \"s\"\nformat = \"fields\"\n\
         schema = [{ name = \"tags\", type = \"list<string>\" }]\n[sink]\nconnector = \"file\"\npath = \"out\"\n",
    )
    .unwrap();
    let run = sluice(d, &["validate", "p.toml"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("column \"tags\" is list<string>"),
        "{}",
        run.stderr
    );
}

/// PostgreSQL CDC into Redis hashes, as `configs/postgres-cdc-to-redis.toml` does: the
/// snapshot, then an insert, an update and a delete reach the keys; redis-cli reads them.
#[test]
fn postgres_changes_reach_redis_hashes_and_deletes_remove_keys() {
    use crate::postgres::{fresh, psql, server, url};
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let src = fresh("it_redis_cdc");
    let slot = format!("sluice_{src}");
    psql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'; DROP PUBLICATION IF EXISTS {slot}"
    ));
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, name text, amount numeric(10,2)); \
         ALTER TABLE \"{src}\" REPLICA IDENTITY FULL; \
         INSERT INTO \"{src}\" VALUES (1, 'ada', 1.50), (2, 'bob', 2.25)"
    ));
    let prefix = unique("order");
    std::fs::write(
        d.join("cdc.toml"),
        format!(
            "name = \"{src}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\npoll_interval = \"100ms\"\n\
             [sink]\nconnector = \"redis\"\nurl = \"{}\"\nmode = \"hash\"\nkey_columns = [\"id\"]\nkey_prefix = \"{prefix}:\"\n\
             [checkpoint]\ninterval = \"200ms\"\n",
            url(),
            url_at(port())
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "cdc.toml"]);
    let key = |id: u32| format!("{prefix}:{id}");
    let snapshot = wait_until(Duration::from_secs(30), || {
        cli(&["HGET", &key(2), "name"]) == "bob"
    });
    psql(&format!("INSERT INTO \"{src}\" VALUES (3, 'cy', 3.00)"));
    psql(&format!(
        "UPDATE \"{src}\" SET name = 'ada l', amount = NULL WHERE id = 1"
    ));
    psql(&format!("DELETE FROM \"{src}\" WHERE id = 2"));
    let changes = wait_until(Duration::from_secs(30), || {
        cli(&["EXISTS", &key(2)]) == "0" && cli(&["HGET", &key(3), "amount"]) == "3.00"
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    let one = cli(&["HGETALL", &key(1)]);
    for k in cli(&["KEYS", &format!("{prefix}:*")]).lines() {
        cli(&["DEL", k]);
    }
    cli(&["DEL", &format!("sluice:offsets:{src}:sink")]);
    psql(&format!(
        "SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION IF EXISTS {slot}; DROP TABLE \"{src}\""
    ));
    assert!(snapshot, "the snapshot did not arrive: {}", run.stderr);
    assert!(changes, "the changes did not arrive: {}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(one, "id\n1\nname\nada l", "the update replaced the hash");
}
