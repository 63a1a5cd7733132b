//! Exactly-once into PostgreSQL when a supervisor restarts `sluice run` the moment it
//! was killed, while the server is still committing the killed run's last flush (each
//! commit of the sink's connection held 100 ms by `commit_delay`), and when two runs of
//! one pipeline start at once.

use std::time::Duration;

use crate::postgres::{fresh, psql, server, url};
use crate::support::{
    finish, kill_at_random, python, signal, sluice, spawn, wait_until, workdir, KillOnPanic,
};

/// The test database's URL with every commit of the connection held 100 ms on the
/// server, as with a synchronous standby or network storage (only the sink's own
/// connection is slowed).
fn slow_commit_url() -> String {
    let url = url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20commit_delay%3D100000%20-c%20commit_siblings%3D0")
}

/// Writes `rows` JSON lines `{"id": i, "amount": "i.ii"}` to `in/data.jsonl`.
fn json_lines(dir: &std::path::Path, rows: usize) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    python(&format!(
        "with open('{}/in/data.jsonl', 'w') as f:\n    [f.write('{{\"id\": %d, \"amount\": \"%d.%02d\"}}\\n' % (i, i, i % 100)) for i in range({rows})]",
        dir.display()
    ));
}

const JSON_SOURCE: &str = "[source]\nconnector = \"file\"\npath = \"in/data.jsonl\"\n\
    schema = [{ name = \"id\", type = \"int64\", nullable = false }, { name = \"amount\", type = \"decimal(12,2)\" }]\n";

/// Rows in `table`, 0 while it does not exist yet.
fn rows(table: &str) -> usize {
    psql(&format!(
        "SELECT CASE WHEN to_regclass('\"{table}\"') IS NULL THEN 0 \
         ELSE (xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM \"{table}\"', false, true, '')))[1]::text::bigint END"
    ))
    .parse()
    .unwrap()
}

/// Runs `pg.toml` in `dir` 20 times, each killed with SIGKILL after 100-700 ms and
/// restarted at once, then once to the end; at least half the kills must land mid-run.
fn kill_20_times_then_finish(dir: &std::path::Path) {
    let killed = kill_at_random(dir, &["run", "--quiet", "pg.toml"], 20, 100..700);
    let run = sluice(dir, &["run", "--quiet", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        killed >= 10,
        "only {killed} of 20 kills hit a running pipeline"
    );
}

/// `count(*)|count(DISTINCT id)|min(id)|max(id)` of `table`.
fn counts(table: &str) -> String {
    psql(&format!(
        "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM \"{table}\""
    ))
}

#[test]
fn kill_9_and_an_immediate_restart_during_a_slow_commit_repeat_no_row() {
    let _server = server();
    const ROWS: usize = 1_000_000;
    let dir = workdir();
    let d = dir.path();
    let t = fresh("it_pg_race");
    json_lines(d, ROWS);
    std::fs::write(
        d.join("pg.toml"),
        format!(
            "name = \"{t}\"\n{JSON_SOURCE}[sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{t}\"\n\
             [batch]\nmax_records = 200\n[checkpoint]\ninterval = \"100ms\"\n",
            slow_commit_url()
        ),
    )
    .unwrap();
    kill_20_times_then_finish(d);
    assert_eq!(counts(&t), format!("{ROWS}|{ROWS}|0|{}", ROWS - 1));
}

#[test]
fn kill_9_and_an_immediate_restart_of_postgres_to_postgres_repeat_no_row() {
    let _server = server();
    const ROWS: usize = 1_000_000;
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_race_src"), fresh("it_pg_race_dst"));
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, amount numeric(12,2));\
         INSERT INTO \"{src}\" SELECT g, g / 100.0 FROM generate_series(0, {}) g;",
        ROWS - 1
    ));
    std::fs::write(
        d.join("pg.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{dst}\"\n\
             [batch]\nmax_records = 200\n[checkpoint]\ninterval = \"100ms\"\n",
            url(),
            slow_commit_url()
        ),
    )
    .unwrap();
    kill_20_times_then_finish(d);
    assert_eq!(counts(&dst), format!("{ROWS}|{ROWS}|0|{}", ROWS - 1));
    assert_eq!(
        psql(&format!("SELECT sum(amount) FROM \"{dst}\"")),
        psql(&format!("SELECT sum(amount) FROM \"{src}\""))
    );
}

#[test]
fn a_second_run_of_a_running_pipeline_names_the_holder_or_waits_for_it() {
    let _server = server();
    const ROWS: usize = 5_000;
    let dir = workdir();
    let d = dir.path();
    let t = fresh("it_pg_two_runs");
    json_lines(d, ROWS);
    let toml = |lock_timeout: &str| {
        format!(
            "name = \"{t}\"\n{}watch = true\n[sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{t}\"\n\
             lock_timeout = \"{lock_timeout}\"\n[checkpoint]\ninterval = \"100ms\"\nlock_timeout = \"{lock_timeout}\"\n",
            JSON_SOURCE,
            url()
        )
    };
    std::fs::write(d.join("short.toml"), toml("1s")).unwrap();
    std::fs::write(d.join("long.toml"), toml("60s")).unwrap();
    // the same pipeline with a checkpoint store of its own, as on another machine
    std::fs::create_dir_all(d.join("elsewhere")).unwrap();
    std::fs::write(d.join("elsewhere/short.toml"), toml("1s")).unwrap();

    // the first run delivers everything and keeps watching the file
    let first = spawn(d, &["run", "--quiet", "short.toml"]);
    let _first_guard = KillOnPanic(first.id());
    assert!(
        wait_until(Duration::from_secs(60), || rows(&t) == ROWS),
        "the first run did not deliver"
    );

    // a second one of the same file, started while the first runs, gives up after 1s
    // naming the process that runs it
    let second = sluice(d, &["run", "short.toml"]);
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "pipeline \"{t}\" is already running: process {} on ",
            first.id()
        )),
        "the holder is not named: {}",
        second.stderr
    );
    // one with a store of its own gets past that, and its sink gives up after 1s
    // naming the holder of the target
    let second = sluice(d, &["run", "elsewhere/short.toml"]);
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains("in use by another run")
            && second
                .stderr
                .contains(&format!("application \"sluice {t}/sink\""))
            && second.stderr.contains("pid"),
        "the holder is not named: {}",
        second.stderr
    );

    // a third one waits for the first to stop, then carries on from its offsets
    let third = spawn(d, &["run", "--quiet", "long.toml"]);
    let _third_guard = KillOnPanic(third.id());
    std::thread::sleep(Duration::from_millis(500));
    signal(&first, "TERM");
    let first = finish(first, Duration::from_secs(30));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let more: String = (ROWS..ROWS + 10)
        .map(|i| format!("{{\"id\": {i}, \"amount\": \"1.00\"}}\n"))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("in/data.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut file, more.as_bytes()).unwrap();
    let all = ROWS + 10;
    let arrived = wait_until(Duration::from_secs(60), || rows(&t) == all);
    signal(&third, "TERM");
    let third = finish(third, Duration::from_secs(30));
    assert!(
        arrived,
        "the waiting run did not take over: {}",
        third.stderr
    );
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    assert_eq!(counts(&t), format!("{all}|{all}|0|{}", all - 1));
}
