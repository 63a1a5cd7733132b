//! A MariaDB failover under CDC. The pipeline read the primary, so its stored position
//! is a binlog file and offset of the primary; pointed at a replica (another server,
//! other binlog files), it resumes by the GTID state kept in its offset, with nothing
//! lost and nothing repeated.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::mysql::{binlog_port, unique, url_at};
use crate::mysql_cdc::{binlog, cdc_pipeline, my};
use crate::support::{finish, signal, spawn, wait_until, workdir, KillOnPanic};

/// The replica's port.
const PORT: u16 = 3318;

/// A private MariaDB replicating the binlog server by GTID from its current
/// position, with its own binlog (`log_slave_updates`); stopped when dropped.
struct Replica {
    server: Child,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start() -> Replica {
        let dir = workdir();
        let data = dir.path().join("data");
        let installed = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db");
        assert!(installed.success());
        let server = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("error.log").display()
            ))
            .args([
                &format!("--port={PORT}"),
                "--bind-address=127.0.0.1",
                "--user=root",
                "--log-bin=replica",
                "--log-slave-updates",
                "--binlog-format=ROW",
                "--binlog-row-metadata=FULL",
                "--server-id=8",
                "--skip-slave-start",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let replica = Replica { server, _dir: dir };
        assert!(
            wait_until(Duration::from_secs(60), || replica
                .try_sql("SELECT 1")
                .is_some()),
            "the replica did not start"
        );
        let from = my("SELECT @@gtid_binlog_pos");
        replica.sql(&format!(
            "SET SESSION sql_log_bin = 0; CREATE DATABASE IF NOT EXISTS test; \
             SET GLOBAL gtid_slave_pos = '{from}'; \
             CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
             MASTER_USE_GTID = slave_pos; START SLAVE",
            binlog_port()
        ));
        replica
    }

    fn run(&self, query: &str) -> std::process::Output {
        Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                &PORT.to_string(),
                "-u",
                "root",
                "-N",
                "-B",
            ])
            .args(["-e", query])
            .output()
            .expect("the mariadb client")
    }

    fn try_sql(&self, query: &str) -> Option<String> {
        let out = self.run(query);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn sql(&self, query: &str) -> String {
        let out = self.run(query);
        assert!(
            out.status.success(),
            "the replica refused {query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn cdc_moved_to_a_replica_resumes_by_gtid_exactly() {
    let _one = binlog();
    let replica = Replica::start();
    let dir = workdir();
    let d = dir.path();
    let table = unique("cdcmove");
    my(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, n INT); INSERT INTO {table} SELECT seq, 0 FROM seq_1_to_100"
    ));
    let sink = "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n";
    let config = cdc_pipeline(&table, &table, sink, "");
    std::fs::write(d.join("p.toml"), &config).unwrap();
    let lines = || crate::support::jsonl_lines(&d.join("out"));
    // on the primary: the snapshot, then changes from its binlog
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let guard = KillOnPanic(child.id());
    assert!(wait_until(Duration::from_secs(30), || lines().len() >= 100));
    my(&format!(
        "INSERT INTO {table} SELECT seq, 0 FROM seq_101_to_150; UPDATE {table} SET n = 1 WHERE id <= 10; \
         DELETE FROM {table} WHERE id = 100"
    ));
    assert!(wait_until(Duration::from_secs(30), || lines().len() >= 161));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    drop(guard);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // while it is stopped the primary goes on, and the replica follows
    my(&format!(
        "INSERT INTO {table} SELECT seq, 0 FROM seq_151_to_200; UPDATE {table} SET n = 2 WHERE id BETWEEN 11 AND 20"
    ));
    let want = my(&format!("SELECT count(*), SUM(n) FROM {table}"));
    assert!(
        wait_until(Duration::from_secs(30), || {
            replica.try_sql(&format!("SELECT count(*), SUM(n) FROM test.{table}"))
                == Some(want.clone())
        }),
        "the replica did not catch up: {}",
        replica.sql("SHOW SLAVE STATUS\\G")
    );
    // the pipeline moves to the replica, whose binlog files are its own
    let moved = config.replace(&url_at(binlog_port()), &url_at(PORT));
    assert_ne!(moved, config);
    std::fs::write(d.join("p.toml"), moved).unwrap();
    let child = spawn(d, &["run", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let arrived = wait_until(Duration::from_secs(30), || lines().len() >= 221);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(arrived, "{}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("resuming by GTID"), "{}", run.stderr);
    let ops: Vec<String> = lines()
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}:{}:{}", v["_op"].as_str().unwrap(), v["id"], v["n"])
        })
        .collect();
    let count = |prefix: &str| ops.iter().filter(|o| o.starts_with(prefix)).count();
    assert_eq!(ops.len(), 221, "{ops:?}");
    assert_eq!(
        (count("r:"), count("c:"), count("u:"), count("d:")),
        (100, 100, 20, 1)
    );
    let mut created: Vec<&String> = ops.iter().filter(|o| o.starts_with("c:")).collect();
    created.sort();
    created.dedup();
    assert_eq!(created.len(), 100, "a create came twice");
    assert_eq!(ops.iter().filter(|o| o.ends_with(":2")).count(), 10);
    // the position is now the replica's own file and offset (the file named by the
    // dump's first event): a restart there goes on by position
    my(&format!(
        "INSERT INTO {table} SELECT seq, 3 FROM seq_201_to_210"
    ));
    assert!(wait_until(Duration::from_secs(30), || {
        replica.try_sql(&format!("SELECT count(*) FROM test.{table}")) == Some("209".into())
    }));
    let child = spawn(d, &["run", "p.toml"]);
    let _guard = KillOnPanic(child.id());
    let arrived = wait_until(Duration::from_secs(30), || lines().len() >= 231);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(arrived, "{}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(!run.stderr.contains("resuming by GTID"), "{}", run.stderr);
    assert_eq!(lines().len(), 231);
}
