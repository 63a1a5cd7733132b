//! MySQL/MariaDB CDC against the private MariaDB with the binlog on (3307): every
//! type read by the snapshot and by the binlog gives the same Arrow values, changes
//! into PostgreSQL under kill -9 while a writer inserts, updates and deletes, a purged
//! binlog position, and a server with the binlog off.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::mysql::{binlog_port, sql, sql_at, unique, url_at};
use crate::support::{finish, python, signal, spawn, wait_until, workdir, KillOnPanic};

/// CDC tests run one at a time: the purge test removes binlog files the others read.
static BINLOG: Mutex<()> = Mutex::new(());

/// Holds the binlog server for one test (CDC, or a restart of it).
pub(crate) fn binlog() -> std::sync::MutexGuard<'static, ()> {
    BINLOG.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn my(query: &str) -> String {
    sql_at(binlog_port(), query)
}

pub(crate) fn cdc_pipeline(name: &str, table: &str, sink: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\n[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"{table}\"]\nmode = \"cdc\"\n{extra}\n\
         [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"200ms\"\n{sink}",
        url_at(binlog_port())
    )
}

/// The every-type table of `crate::mysql`, on the binlog server.
const ROW: &str = "'12345678901234567890123456789012345.123456789012345678901234567890', 18446744073709551615, \
    -128, 255, -8388608, 16777215, 1.5, -1.25e300, '2024-02-29 23:59:59.999999', '2038-01-19 03:14:07.999999', \
    '2024-02-29', '-838:59:59', 2155, b'1', b'101010101010', 'big', 'a,c', '{\"k\": [1, 2]}', X'00FF10', \
    X'DEADBEEF', 'h\u{e9}llo \u{1F600}', 'x\\ty', ST_GeomFromText('POINT(1 2)', 4326)";
const EDGE: &str = "'-0.000000000000000000000000000001', 0, 0, 0, 0, 0, 0, 0.1, '1000-01-01 00:00:00', \
    '1970-01-01 00:00:01', '1000-01-01', '100:00:00.5', 0, b'0', b'0', 'small', '', '[]', '', '', '', '', \
    ST_GeomFromText('POINT(0 0)')";
const NULLS: &str =
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL";

#[test]
fn every_type_reads_the_same_from_the_snapshot_and_from_the_binlog() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdctypes");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, d65 DECIMAL(65,30), u64 BIGINT UNSIGNED, i8 TINYINT, \
         u8 TINYINT UNSIGNED, m MEDIUMINT, mu MEDIUMINT UNSIGNED, f FLOAT, db DOUBLE, dt DATETIME(6), \
         ts TIMESTAMP(6) NULL, dd DATE, tm TIME(6), y YEAR, b1 BIT(1), b12 BIT(12), e ENUM('small','big'), \
         st SET('a','b','c'), j JSON, bl BLOB, vb VARBINARY(8), s VARCHAR(20), tx TEXT, g GEOMETRY) \
         DEFAULT CHARSET = utf8mb4; \
         INSERT INTO {table} VALUES (1, {ROW}), (2, {NULLS}), (3, {EDGE})"
    ));
    std::fs::write(
        d.join("p.toml"),
        cdc_pipeline(
            &table,
            &table,
            "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"parquet\"\n",
            "",
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let count = || {
        python(&format!(
            "import pyarrow.parquet as pq, glob\nfiles = glob.glob('{}/out/*.parquet')\n\
             print(sum(pq.read_metadata(f).num_rows for f in files))",
            d.display()
        ))
        .parse::<usize>()
        .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || count() >= 3),
        "no snapshot"
    );
    my(&format!(
        "INSERT INTO {table} VALUES (11, {ROW}), (12, {NULLS}), (13, {EDGE}); \
         UPDATE {table} SET s = 'upd' WHERE id = 1; DELETE FROM {table} WHERE id = 2"
    ));
    assert!(
        wait_until(Duration::from_secs(30), || count() >= 8),
        "no changes"
    );
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = python(&format!(
        "import pyarrow as pa, pyarrow.parquet as pq, glob\n\
         t = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob('{}/out/*.parquet'))])\n\
         rows = t.to_pylist()\n\
         by = {{(r['id'], r['_op']): r for r in rows}}\n\
         strip = lambda r: {{k: v for k, v in r.items() if k not in ('id', '_op')}}\n\
         print(strip(by[(1, 'r')]) == strip(by[(11, 'c')]), strip(by[(2, 'r')]) == strip(by[(12, 'c')]), \
               strip(by[(3, 'r')]) == strip(by[(13, 'c')]))\n\
         print(by[(1, 'u')]['s'], (2, 'd') in by, len(rows))\n\
         print([(k, v, by[(11, 'c')][k]) for k, v in strip(by[(1, 'r')]).items() if by[(11, 'c')][k] != v])\n\
         print(str(t.schema.field('ts').type), str(t.schema.field('d65').type), str(t.schema.field('tm').type))",
        d.display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "True True True", "{out}");
    assert_eq!(lines[1], "upd True 8");
    // the values that differ between the snapshot's row and the binlog's: none
    assert_eq!(lines[2], "[]");
    assert_eq!(
        lines[3],
        "timestamp[us, tz=UTC] decimal256(65, 30) duration[us]"
    );
}

/// A writer inserting, updating and deleting on its own while the runtime is killed
/// with kill -9 ten times: at the end the PostgreSQL table equals the MariaDB one.
#[test]
fn cdc_into_postgres_upsert_survives_kill_9_under_a_writer() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdckill");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(40), n BIGINT) DEFAULT CHARSET = utf8mb4; \
         INSERT INTO {table} SELECT seq, CONCAT('v', seq), seq FROM seq_1_to_20000"
    ));
    crate::postgres::fresh(&table);
    std::fs::write(
        d.join("p.toml"),
        cdc_pipeline(
            &table,
            &table,
            &format!(
                "[sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\nmode = \"upsert\"\nkey = [\"id\"]\n",
                crate::postgres::url()
            ),
            "",
        ),
    )
    .unwrap();
    let writer = writer(&table, 12);
    let killed = crate::support::kill_at_random(d, &["run", "--quiet", "p.toml"], 10, 300..1200);
    let status = finish_writer(writer);
    assert!(status, "the writer failed");
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let source = || {
        my(&format!(
            "SELECT count(*), COALESCE(SUM(n), 0), COALESCE(SUM(CRC32(v)), 0) FROM {table}"
        ))
    };
    let same = || {
        let want = my(&format!("SELECT id, v, n FROM {table} ORDER BY id"));
        let got = crate::postgres::psql(&format!(
            "SELECT string_agg(id || E'\\t' || v || E'\\t' || n, E'\\n' ORDER BY id) FROM \"{table}\""
        ));
        want == got
    };
    let converged = wait_until(Duration::from_secs(60), same);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(
        converged,
        "the target never equalled the source: {}",
        source()
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        killed >= 5,
        "only {killed} of 10 kills hit a running pipeline"
    );
}

/// A Python writer doing inserts, updates and deletes on `table` for `secs` seconds.
fn writer(table: &str, secs: u64) -> Child {
    let code = format!(
        "import random, subprocess, time\n\
         end = time.time() + {secs}\n\
         next_id = 20001\n\
         while time.time() < end:\n\
         \x20   stmts = []\n\
         \x20   for _ in range(20):\n\
         \x20       k = random.random()\n\
         \x20       if k < 0.4:\n\
         \x20           stmts.append(\"INSERT INTO {table} VALUES (%d, 'w%d', %d)\" % (next_id, next_id, next_id)); next_id += 1\n\
         \x20       elif k < 0.8:\n\
         \x20           i = random.randint(1, next_id)\n\
         \x20           stmts.append(\"UPDATE {table} SET v = CONCAT('u', n), n = n + 1 WHERE id = %d\" % i)\n\
         \x20       else:\n\
         \x20           stmts.append('DELETE FROM {table} WHERE id = %d' % random.randint(1, next_id))\n\
         \x20   sql = 'START TRANSACTION; ' + '; '.join(stmts) + '; COMMIT'\n\
         \x20   subprocess.run(['mariadb', '-h', '127.0.0.1', '-P', '{port}', '-u', 'root', 'test', '-e', sql], check=True)\n",
        port = binlog_port()
    );
    Command::new("python3")
        .args(["-c", &code])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

fn finish_writer(child: Child) -> bool {
    let out = child.wait_with_output().expect("writer");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// The stored position's binlog file purged: a clear error with the way out, and the
/// way out (`snapshot_on_purge`) reads the table again.
#[test]
fn a_purged_binlog_position_stops_with_the_way_out() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdcpurge");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v INT); INSERT INTO {table} VALUES (1, 1), (2, 2)"
    ));
    let sink = "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n";
    std::fs::write(d.join("p.toml"), cdc_pipeline(&table, &table, sink, "")).unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    assert!(wait_until(
        Duration::from_secs(30),
        || crate::support::jsonl_lines(&d.join("out")).len() >= 2
    ));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // new changes go to a new file, and every older one is purged
    my(&format!(
        "FLUSH BINARY LOGS; INSERT INTO {table} VALUES (3, 3); FLUSH BINARY LOGS"
    ));
    let last = my("SHOW MASTER STATUS");
    let current = last.split('\t').next().unwrap().to_string();
    my(&format!("PURGE BINARY LOGS TO '{current}'"));
    let run = crate::support::sluice(d, &["run", "--quiet", "p.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("binlog no longer available")
            && run.stderr.contains("snapshot_on_purge = true"),
        "{}",
        run.stderr
    );
    std::fs::write(
        d.join("p.toml"),
        cdc_pipeline(&table, &table, sink, "snapshot_on_purge = true"),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    assert!(wait_until(Duration::from_secs(30), || {
        crate::support::jsonl_lines(&d.join("out"))
            .iter()
            .any(|l| l.contains("\"id\":3"))
    }));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("reading the table again from a new snapshot"),
        "{}",
        run.stderr
    );
}

/// Text in another character set than UTF-8 is refused at start, naming the column:
/// the binlog carries it as it is stored.
#[test]
fn a_latin1_column_is_refused_before_the_snapshot() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdclatin");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(10)) DEFAULT CHARSET = latin1"
    ));
    let sink = "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n";
    std::fs::write(d.join("p.toml"), cdc_pipeline(&table, &table, sink, "")).unwrap();
    let run = crate::support::sluice(d, &["run", "--quiet", "p.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("column \"name\" is in character set latin1"),
        "{}",
        run.stderr
    );
}

#[test]
fn cdc_on_a_server_with_the_binlog_off_names_the_setting() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("nobinlog");
    sql(&format!("CREATE TABLE {table} (id INT PRIMARY KEY)"));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"{table}\"]\nmode = \"cdc\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n",
            crate::mysql::url()
        ),
    )
    .unwrap();
    let run = crate::support::sluice(d, &["run", "--quiet", "p.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("the server's binlog is off (log_bin = OFF)"),
        "{}",
        run.stderr
    );
}

/// The binlog server restarted under a running CDC pipeline: the stream reconnects
/// from the last delivered position and nothing is lost or repeated.
#[test]
fn cdc_resumes_after_the_server_restarts() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdcrestart");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, n INT); INSERT INTO {table} SELECT seq, 0 FROM seq_1_to_100"
    ));
    let sink = "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n";
    std::fs::write(d.join("p.toml"), cdc_pipeline(&table, &table, sink, "")).unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let lines = || crate::support::jsonl_lines(&d.join("out")).len();
    assert!(wait_until(Duration::from_secs(30), || lines() >= 100));
    my(&format!("UPDATE {table} SET n = 1 WHERE id <= 10"));
    restart_binlog_server();
    my(&format!("UPDATE {table} SET n = 2 WHERE id > 90"));
    // a key update inside a transaction with a savepoint: a delete and a create
    my(&format!(
        "START TRANSACTION; SAVEPOINT a; UPDATE {table} SET id = 1050 WHERE id = 50; RELEASE SAVEPOINT a; COMMIT"
    ));
    assert!(
        wait_until(Duration::from_secs(60), || lines() >= 122),
        "{} lines",
        lines()
    );
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ops: Vec<String> = crate::support::jsonl_lines(&d.join("out"))
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}:{}:{}", v["_op"].as_str().unwrap(), v["id"], v["n"])
        })
        .collect();
    assert_eq!(ops.len(), 122, "{ops:?}");
    // (the output files are named by position, not in time order)
    assert!(
        ops.iter().any(|o| o == "d:50:0") && ops.iter().any(|o| o == "c:1050:0"),
        "{ops:?}"
    );
    assert_eq!(
        ops.iter()
            .filter(|o| o.starts_with("u:") && o.ends_with(":1"))
            .count(),
        10
    );
    assert_eq!(
        ops.iter()
            .filter(|o| o.starts_with("u:") && o.ends_with(":2"))
            .count(),
        10
    );
}

/// Shuts the binlog server down and starts it again with the command line it runs with.
fn restart_binlog_server() {
    let pid_file = my("SELECT @@pid_file");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    my("SHUTDOWN");
    assert!(wait_until(Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
    }));
    // setsid --fork returns at once and leaves the server running on its own
    let started = Command::new("setsid")
        .arg("--fork")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start mariadbd");
    assert!(started.success());
    assert!(wait_until(Duration::from_secs(30), || {
        Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                &binlog_port().to_string(),
                "-u",
                "root",
                "-e",
                "SELECT 1",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }));
}

/// `envelope = "debezium"`: before, after, op and Debezium's MySQL source block.
#[test]
fn debezium_envelope_carries_before_after_and_the_binlog_position() {
    let _one = binlog();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdcdbz");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(10)) DEFAULT CHARSET = utf8mb4; \
         INSERT INTO {table} VALUES (1, 'a')"
    ));
    let sink = "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n";
    std::fs::write(
        d.join("p.toml"),
        cdc_pipeline(&table, &table, sink, "envelope = \"debezium\""),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let lines = || crate::support::jsonl_lines(&d.join("out"));
    assert!(wait_until(Duration::from_secs(30), || !lines().is_empty()));
    my(&format!(
        "INSERT INTO {table} VALUES (2, 'b'); UPDATE {table} SET name = 'a2' WHERE id = 1; DELETE FROM {table} WHERE id = 2"
    ));
    assert!(wait_until(Duration::from_secs(30), || lines().len() >= 4));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // (the output files are named by position, not in time order)
    let mut got: Vec<String> = lines()
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = &v["source"];
            assert_eq!(s["connector"], "mysql");
            assert_eq!(s["db"], "test");
            assert_eq!(s["table"], table.as_str());
            assert!(s["file"].as_str().unwrap().starts_with("binlog."), "{l}");
            assert!(s["pos"].as_i64().unwrap() > 0, "{l}");
            if v["op"] != "r" {
                assert_eq!(s["snapshot"], "false");
                assert_eq!(s["server_id"], 7, "{l}");
                assert!(
                    s["gtid"].as_str().is_some_and(|g| g.starts_with("0-7-")),
                    "{l}"
                );
            }
            format!(
                "{} {} {}",
                v["op"].as_str().unwrap(),
                v["before"],
                v["after"]
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "c null {\"id\":2,\"name\":\"b\"}",
            "d {\"id\":2,\"name\":\"b\"} null",
            "r null {\"id\":1,\"name\":\"a\"}",
            "u {\"id\":1,\"name\":\"a\"} {\"id\":1,\"name\":\"a2\"}",
        ]
    );
}
