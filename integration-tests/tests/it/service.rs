//! `sluice run` as a service: the HTTP API (metrics checked by the Python Prometheus
//! client's parser, readiness, status, pause/resume/restart/stop), reload of pipeline
//! files, the bearer token and a taken port. Requests go through curl.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::support::{finish, python, signal, spawn, sqlite, wait_until, workdir, KillOnPanic};

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `(status, body)` of a request through curl; status 0 when nothing answered.
pub(crate) fn request(method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "10", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub(crate) fn get_json(url: &str) -> Value {
    let (code, body) = request("GET", url, None);
    assert_eq!(code, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// The JSON of pipeline `name` on `/pipelines` (Null when it is not listed).
pub(crate) fn pipeline(base: &str, name: &str) -> Value {
    get_json(&format!("{base}/pipelines"))
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The value of `metric` for `pipeline` on `/metrics` (None when absent).
pub(crate) fn metric(base: &str, metric: &str, pipeline: &str) -> Option<f64> {
    let text = crate::service::request("GET", &format!("{base}/metrics"), None).1;
    let prefix = format!("{metric}{{pipeline=\"{pipeline}\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub(crate) fn wait_state(base: &str, name: &str, state: &str) {
    let mut last = Value::Null;
    let reached = wait_until(Duration::from_secs(60), || {
        last = pipeline(base, name);
        last["state"] == state
    });
    assert!(reached, "pipeline {name} never became {state}: {last:#}");
}

/// Starts `sluice run ARGS` and waits until its API answers on `port`.
pub(crate) fn serve(dir: &Path, args: &[&str], port: u16) -> (Child, KillOnPanic) {
    let child = spawn(dir, args);
    let guard = KillOnPanic(child.id());
    let url = format!("http://127.0.0.1:{port}/health");
    assert!(
        wait_until(Duration::from_secs(30), || request("GET", &url, None).0
            == 200),
        "the HTTP API did not come up on port {port}"
    );
    (child, guard)
}

pub(crate) fn stop(child: Child) -> String {
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.stderr
}

/// A datagen -> SQLite pipeline file (`count` records, at most `rate` a second).
fn datagen_to_sqlite(name: &str, count: u64, rate: u64, db: &str) -> String {
    format!(
        "name = \"{name}\"\n[source]\nconnector = \"datagen\"\ncount = {count}\nrate = {rate}\n\
         schema = [{{ name = \"id\", type = \"int64\", nullable = false }}, {{ name = \"v\", type = \"string\" }}]\n\
         [sink]\nconnector = \"sqlite\"\npath = \"{db}\"\ntable = \"t\"\n\
         [batch]\nmax_records = 100\nlinger = \"20ms\"\n[checkpoint]\ninterval = \"100ms\"\n"
    )
}

/// `count(*) count(DISTINCT id)` of table `t` in `db` (0 0 while it does not exist).
fn counts(db: &Path) -> (u64, u64) {
    if !db.exists() || sqlite(db, "SELECT count(*) FROM sqlite_master WHERE name = 't'") == "0" {
        return (0, 0);
    }
    let out = sqlite(
        db,
        "SELECT count(*) || ' ' || count(DISTINCT id) FROM t WHERE 1",
    );
    let mut it = out.split(' ').map(|n| n.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn rows(db: &Path) -> u64 {
    counts(db).0
}

#[test]
fn metrics_agree_with_the_sink_and_parse_with_the_prometheus_client() {
    const N: u64 = 25_000;
    let dir = workdir();
    let d = dir.path();
    std::fs::write(d.join("gen.toml"), datagen_to_sqlite("gen", N, 0, "out.db")).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(d, &["run", "--quiet", "gen.toml", "--http", &addr], port);
    // a service keeps serving after a bounded pipeline finished
    wait_state(&base, "gen", "finished");
    assert_eq!(counts(&d.join("out.db")), (N, N));

    let (code, text) = request("GET", &format!("{base}/metrics"), None);
    assert_eq!(code, 200);
    std::fs::write(d.join("metrics.txt"), &text).unwrap();
    // every family parses, and the figures agree with what SQLite holds
    let parsed = python(&format!(
        "from prometheus_client.parser import text_string_to_metric_families as p\n\
         text = open('{}/metrics.txt').read()\n\
         for f in p(text):\n    for s in f.samples:\n        \
         labels = ','.join(f'{{k}}={{v}}' for k, v in sorted(s.labels.items()))\n        \
         print(f'{{s.name}}|{{labels}}|{{s.value}}')",
        d.display()
    ));
    let value = |name: &str, labels: &str| -> f64 {
        parsed
            .lines()
            .find_map(|l| {
                let mut p = l.split('|');
                (p.next() == Some(name) && p.next() == Some(labels))
                    .then(|| p.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{text}"))
    };
    let n = N as f64;
    assert_eq!(value("sluice_pipeline_records_total", "pipeline=gen"), n);
    assert_eq!(
        value(
            "sluice_source_records_total",
            "connector=datagen,pipeline=gen"
        ),
        n
    );
    let sink = "connector=sqlite,pipeline=gen,sink=sink";
    assert_eq!(value("sluice_sink_records_total", sink), n);
    let flushes = value("sluice_sink_flushes_total", sink);
    assert!(flushes >= 1.0);
    assert_eq!(
        value("sluice_sink_flush_duration_seconds_count", sink),
        flushes
    );
    assert_eq!(
        value(
            "sluice_sink_flush_duration_seconds_bucket",
            "connector=sqlite,le=+Inf,pipeline=gen,sink=sink"
        ),
        flushes
    );
    assert_eq!(value("sluice_checkpoints_total", "pipeline=gen"), flushes);
    assert_eq!(
        value("sluice_pipeline_state", "pipeline=gen,state=finished"),
        1.0
    );
    assert_eq!(
        value("sluice_pipeline_state", "pipeline=gen,state=running"),
        0.0
    );
    assert!(value("sluice_checkpoint_age_seconds", "pipeline=gen") >= 0.0);
    let bounded = "connector=datagen,pipeline=gen,unit=records";
    assert_eq!(value("sluice_source_progress_ratio", bounded), 1.0);
    assert_eq!(value("sluice_source_remaining", bounded), 0.0);

    // the status agrees too, and names the file and the last offsets
    let p = pipeline(&base, "gen");
    assert_eq!(p["records_written"], N);
    assert_eq!(p["sinks"][0]["records"], N);
    assert!(p["file"].as_str().unwrap().ends_with("gen.toml"), "{p:#}");
    assert_eq!(p["last_checkpoint"]["offsets"]["datagen"], N, "{p:#}");
    assert_eq!(
        request("GET", &format!("{base}/ready"), None).0,
        200,
        "a finished pipeline is where it was asked to be"
    );
    let (code, body) = request("GET", &format!("{base}/nope"), None);
    assert_eq!(code, 404, "{body}");
    let stderr = stop(child);
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a piped log: {stderr:?}"
    );
}

#[test]
fn pause_resume_restart_and_stop_over_http_lose_and_repeat_nothing() {
    const N: u64 = 6_000;
    let dir = workdir();
    let d = dir.path();
    let db = d.join("out.db");
    std::fs::write(
        d.join("ctl.toml"),
        datagen_to_sqlite("ctl", N, 1_000, "out.db"),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(d, &["run", "--quiet", "ctl.toml", "--http", &addr], port);
    let post = |action: &str| {
        let (code, body) = request("POST", &format!("{base}/pipelines/ctl/{action}"), None);
        assert_eq!(code, 202, "{action}: {body}");
    };
    assert!(wait_until(Duration::from_secs(30), || rows(&db) >= 500));

    // pause: reading stops and what was read is flushed
    post("pause");
    wait_state(&base, "ctl", "paused");
    let read = || {
        pipeline(&base, "ctl")["source"]["records"]
            .as_u64()
            .unwrap()
    };
    // a read in progress when the pause came completes (and is flushed at once)
    std::thread::sleep(Duration::from_millis(300));
    assert!(wait_until(Duration::from_secs(10), || rows(&db) == read()));
    let at_pause = rows(&db);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(rows(&db), at_pause, "rows arrived while paused");
    assert_eq!(read(), at_pause, "the source was read while paused");
    assert!(at_pause < N, "the pipeline finished before the pause");

    // resume: reading goes on
    post("resume");
    wait_state(&base, "ctl", "running");
    assert!(wait_until(Duration::from_secs(30), || rows(&db) >= at_pause + 500));

    // restart: drained and reopened from the checkpoint
    post("restart");
    assert!(wait_until(Duration::from_secs(30), || {
        let p = pipeline(&base, "ctl");
        p["state"] == "running" && p["uptime_seconds"].as_f64().unwrap() < 5.0
    }));

    // stop: drained, flushed, checkpointed; a stopped pipeline reads nothing
    post("stop");
    wait_state(&base, "ctl", "stopped");
    let at_stop = rows(&db);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows(&db), at_stop);
    let (code, _) = request("GET", &format!("{base}/ready"), None);
    assert_eq!(code, 200);

    // resume after a stop starts it again; it runs to the end
    post("resume");
    wait_state(&base, "ctl", "finished");
    assert_eq!(counts(&db), (N, N));
    let (code, body) = request("POST", &format!("{base}/pipelines/nope/pause"), None);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no pipeline named \\\"nope\\\""), "{body}");
    let (code, _) = request("POST", &format!("{base}/pipelines/ctl/explode"), None);
    assert_eq!(code, 404);
    stop(child);
}

#[test]
fn reload_starts_added_restarts_changed_keeps_invalid_and_stops_removed_files() {
    let dir = workdir();
    let d = dir.path();
    let p = d.join("pipelines");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("a.toml"),
        datagen_to_sqlite("a", 1_000_000, 200, "a.db"),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(
        d,
        &["run", "--quiet", "pipelines", "--watch", "--http", &addr],
        port,
    );
    wait_state(&base, "a", "running");
    let a_db = d.join("a.db");
    assert!(wait_until(Duration::from_secs(30), || rows(&a_db) >= 200));

    // added
    std::fs::write(
        p.join("b.toml"),
        datagen_to_sqlite("b", 1_000_000, 1_000, "b.db"),
    )
    .unwrap();
    wait_state(&base, "b", "running");
    assert!(wait_until(Duration::from_secs(30), || rows(
        &d.join("b.db")
    ) >= 100));

    // changed, invalid: the running version stays, the error names file:line:col
    let started = pipeline(&base, "a")["uptime_seconds"].as_f64().unwrap();
    std::fs::write(
        p.join("a.toml"),
        datagen_to_sqlite("a", 1_000_000, 200, "a.db").replace("rate = 200", "rate = -1"),
    )
    .unwrap();
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = pipeline(&base, "a");
            last["config_error"].is_string()
        }),
        "{last:#}"
    );
    let e = last["config_error"].as_str().unwrap();
    assert!(e.contains("a.toml:5:"), "{e}");
    assert_eq!(last["state"], "running");
    assert!(last["uptime_seconds"].as_f64().unwrap() >= started);

    // changed, valid: drained, then the new version goes on from the checkpoint
    std::fs::write(
        p.join("a.toml"),
        datagen_to_sqlite("a", 20_000, 5_000, "a.db"),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(30), || {
        let a = pipeline(&base, "a");
        a["config_error"].is_null() && a["uptime_seconds"].as_f64().unwrap() < 5.0
    }));
    wait_state(&base, "a", "finished");
    assert_eq!(
        counts(&a_db),
        (20_000, 20_000),
        "a record was lost or repeated across the reload"
    );

    // removed: stopped and gone from the list
    std::fs::remove_file(p.join("b.toml")).unwrap();
    assert!(wait_until(Duration::from_secs(30), || pipeline(&base, "b").is_null()));
    let b = counts(&d.join("b.db"));
    assert_eq!(b.0, b.1);

    // a new file that does not validate is listed with its error
    std::fs::write(p.join("c.toml"), "name = \"c\"\n[source\n").unwrap();
    assert!(wait_until(Duration::from_secs(30), || {
        get_json(&format!("{base}/pipelines"))
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["state"] == "invalid" && p["file"].as_str().unwrap().ends_with("c.toml"))
    }));
    let stderr = stop(child);
    assert!(stderr.contains("does not validate"), "{stderr}");
}

#[test]
fn a_second_runtime_on_the_same_port_fails_naming_the_address() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(d.join("g.toml"), datagen_to_sqlite("g", 10, 0, "g.db")).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (child, _guard) = serve(d, &["run", "--quiet", "g.toml", "--http", &addr], port);
    let second = crate::support::sluice(d, &["run", "--quiet", "g.toml", "--http", &addr]);
    assert_eq!(second.code, Some(2), "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("--http {addr}: cannot listen"))
            && second.stderr.contains("another sluice"),
        "{}",
        second.stderr
    );
    stop(child);
}

#[test]
fn the_api_needs_the_right_token_and_a_public_address_needs_one() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(d.join("g.toml"), datagen_to_sqlite("g", 10, 0, "g.db")).unwrap();
    let port = free_port();
    let public = format!("0.0.0.0:{port}");
    let refused = crate::support::sluice(d, &["run", "g.toml", "--http", &public]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("needs a bearer token"),
        "{}",
        refused.stderr
    );
    assert!(!d.join("g.db").exists(), "a refused start wrote data");

    let mut child = crate::support::command_with_env(
        d,
        &[
            "run",
            "--quiet",
            "g.toml",
            "--http",
            &public,
            "--auth-token",
            "${env:SLUICE_TEST_TOKEN}",
        ],
        &[("SLUICE_TEST_TOKEN", "s3cret-token")],
    );
    let _guard = KillOnPanic(child.id());
    let url = format!("http://127.0.0.1:{port}/pipelines");
    assert!(wait_until(Duration::from_secs(30), || request(
        "GET",
        &url,
        Some("s3cret-token")
    )
    .0 == 200));
    assert_eq!(request("GET", &url, None).0, 401);
    assert_eq!(request("GET", &url, Some("s3cret-tokem")).0, 401);
    let (code, body) = request("POST", &format!("{url}/g/stop"), Some("wrong"));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let _ = child.try_wait();
    stop(child);
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, another
/// port), so that stopping it under a running pipeline disturbs no other test.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    /// `BIN/tool ARGS`, as the postgres user when this runs as root (the server
    /// refuses to run as root).
    fn tool(tool: &str, args: &[&str]) -> std::process::Output {
        let path = format!("{}/{tool}", Self::BIN);
        let root = python("import os; print(os.geteuid())") == "0";
        let mut c = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            Command::new(&path)
        };
        c.args(args).output().expect("PostgreSQL server tools")
    }

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        Command::new("chmod")
            .args(["755", &dir.path().display().to_string()])
            .status()
            .unwrap();
        Command::new("chown")
            .args(["postgres:postgres", &data.display().to_string()])
            .status()
            .unwrap();
        let out = Self::tool(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePostgres {
            dir,
            port: free_port(),
        };
        pg.start();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data()
        );
        let log = format!("{}/server.log", self.data());
        let out = Self::tool(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop(&self) {
        Self::tool("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-d", &self.url(), "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn ready_turns_503_while_postgresql_is_down_and_200_when_it_is_back() {
    let pg = PrivatePostgres::new();
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("pg.toml"),
        format!(
            "name = \"pg\"\n[source]\nconnector = \"datagen\"\ncount = 1000000\nrate = 2000\n\
             schema = [{{ name = \"id\", type = \"int64\", nullable = false }}]\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"t\"\n\
             [batch]\nmax_records = 200\nlinger = \"20ms\"\n[checkpoint]\ninterval = \"100ms\"\n\
             [errors]\nmax_retries = 1000\nretry_backoff = \"100ms\"\nretry_backoff_max = \"300ms\"\n",
            pg.url()
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(d, &["run", "--quiet", "pg.toml", "--http", &addr], port);
    let ready = || request("GET", &format!("{base}/ready"), None);
    assert!(
        wait_until(Duration::from_secs(30), || ready().0 == 200),
        "{:?}",
        ready()
    );

    pg.stop();
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = ready();
            last.0 == 503
        }),
        "{last:?}"
    );
    assert!(
        last.1.contains("pipeline \\\"pg\\\" is retrying"),
        "{}",
        last.1
    );
    let metrics = request("GET", &format!("{base}/metrics"), None).1;
    assert!(
        metrics.contains("sluice_retries_total{pipeline=\"pg\",kind=\"connect\"}")
            || metrics.contains("sluice_pipeline_restarts_total{pipeline=\"pg\"} 1"),
        "{metrics}"
    );

    pg.start();
    assert!(
        wait_until(Duration::from_secs(60), || ready().0 == 200),
        "{:?}",
        ready()
    );
    let written = || pg.psql("SELECT count(*) FROM t").parse::<u64>().unwrap();
    let before = written();
    assert!(wait_until(Duration::from_secs(30), || written() > before + 200));
    stop(child);
    assert_eq!(
        pg.psql("SELECT count(*) = count(DISTINCT id) FROM t"),
        "t",
        "a record was repeated across the outage"
    );
}

#[test]
fn a_terminal_shows_a_bar_per_bounded_pipeline_and_a_pipe_gets_no_colour_codes() {
    let dir = workdir();
    let d = dir.path();
    let p = d.join("pipelines");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("gen.toml"),
        "name = \"gen\"\n[source]\nconnector = \"datagen\"\ncount = 200000\nrate = 100000\n\
         [sink]\nconnector = \"blackhole\"\n",
    )
    .unwrap();
    python(&format!(
        "with open('{}/lines.jsonl', 'w') as f:\n    [f.write('{{\"id\": %d}}\\n' % i) for i in range(100000)]",
        d.display()
    ));
    std::fs::write(
        p.join("lines.toml"),
        format!(
            "name = \"lines\"\n[source]\nconnector = \"file\"\npath = \"{}/lines.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n[sink]\nconnector = \"blackhole\"\n",
            d.display()
        ),
    )
    .unwrap();
    // `script` runs the binary on a pseudo-terminal, as a user at a shell would
    let bin = crate::support::sluice_bin();
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{} run pipelines", bin.display()),
            "/dev/null",
        ])
        .current_dir(d)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)");
    let screen = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("100% 200,000/200,000 records") && screen.contains("eta"),
        "no finished records bar: {screen}"
    );
    assert!(
        screen.contains("100% ")
            && screen.contains("MiB/")
            && screen.contains("100000 records written"),
        "no finished bytes bar: {screen}"
    );
    // the summaries start on a line of their own, below the bars
    for summary in ["gen: 200000 records", "lines: 100000 records"] {
        assert!(
            screen.lines().any(|l| l.starts_with(summary)),
            "{summary} shares a line with a bar: {screen}"
        );
    }

    // the same run with stderr into a pipe: plain log lines, no escape codes
    std::fs::remove_dir_all(p.join(".sluice")).unwrap();
    let run = crate::support::sluice(d, &["run", "pipelines"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("pipeline finished"), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
}

/// The sum of `sluice_source_lag_records` of `pipeline` on `/metrics`, and how many
/// splits it has.
fn lag(base: &str, pipeline: &str) -> (u64, usize) {
    let text = request("GET", &format!("{base}/metrics"), None).1;
    let prefix = format!("sluice_source_lag_records{{pipeline=\"{pipeline}\"");
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .collect();
    (values.iter().sum(), values.len())
}

#[test]
fn kafka_lag_per_partition_is_on_metrics_and_grows_while_paused() {
    use crate::kafka::{bootstrap, create_topic, produce_script, py, topic};
    let t = topic("lag");
    create_topic(&t, 2);
    py(&produce_script(&t, 2_000, 0));
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("lag.toml"),
        format!(
            "name = \"lag\"\n[source]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopics = [\"{t}\"]\n\
             group_id = \"g-{t}\"\nschema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"blackhole\"\n[checkpoint]\ninterval = \"200ms\"\n",
            bootstrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(d, &["run", "--quiet", "lag.toml", "--http", &addr], port);
    let read = || {
        pipeline(&base, "lag")["source"]["records"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut last = (0, 0);
    assert!(
        wait_until(Duration::from_secs(60), || {
            last = lag(&base, "lag");
            read() == 2_000 && last == (0, 2)
        }),
        "read {}, lag {last:?}",
        read()
    );

    // paused, the source reads nothing: what is produced shows as lag
    let (code, body) = request("POST", &format!("{base}/pipelines/lag/pause"), None);
    assert_eq!(code, 202, "{body}");
    wait_state(&base, "lag", "paused");
    py(&produce_script(&t, 500, 0));
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = lag(&base, "lag");
            last.0 == 500
        }),
        "lag {last:?}"
    );
    assert_eq!(read(), 2_000);

    let (code, body) = request("POST", &format!("{base}/pipelines/lag/resume"), None);
    assert_eq!(code, 202, "{body}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = lag(&base, "lag");
            read() == 2_500 && last.0 == 0
        }),
        "read {}, lag {last:?}",
        read()
    );
    let p = pipeline(&base, "lag");
    assert_eq!(p["lag"].as_array().unwrap().len(), 2, "{p:#}");
    stop(child);
}
