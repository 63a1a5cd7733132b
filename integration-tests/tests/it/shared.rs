//! Several runtimes on one pipeline file with `[checkpoint] store = "postgres"`: they
//! divide its files through leases in PostgreSQL, take over the files of a runtime
//! killed with kill -9, fence a runtime paused past its lease, and together write
//! every record once into a PostgreSQL table (checked with psql).

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::postgres::{fresh, psql, restart_postgres, server, url};
use crate::support::{finish, python, signal, sluice, spawn, wait_until, workdir, KillOnPanic};

/// Writes `files` JSON-lines files `in/fNNN.jsonl` of `rows` records each; ids run
/// from 0 over all of them.
pub(crate) fn files(dir: &Path, files: usize, rows: usize) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    python(&format!(
        "for f in range({files}):\n    with open('{}/in/f%03d.jsonl' % f, 'w') as out:\n        \
         [out.write('{{\"id\": %d, \"file\": %d, \"amount\": \"%d.%02d\"}}\\n' % (f * {rows} + i, f, i, i % 100)) for i in range({rows})]",
        dir.display()
    ));
}

/// `shared.toml`: the files into table `t`, checkpoints and leases in the test
/// database; `sink_extra` goes into `[sink]`.
pub(crate) fn pipeline(dir: &Path, t: &str, lease: &str, sink_extra: &str) {
    let source = format!("[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n{SCHEMA}\n");
    pipeline_from(dir, t, &source, lease, sink_extra);
}

const SCHEMA: &str = "schema = [{ name = \"id\", type = \"int64\", nullable = false }, \
    { name = \"file\", type = \"int32\" }, { name = \"amount\", type = \"decimal(12,2)\" }]";

/// `shared.toml`: `source` into table `t`, checkpoints and leases in the test
/// database; `sink_extra` goes into `[sink]`.
pub(crate) fn pipeline_from(dir: &Path, t: &str, source: &str, lease: &str, sink_extra: &str) {
    std::fs::write(
        dir.join("shared.toml"),
        format!(
            "name = \"{t}\"\n{source}\
             [sink]\nconnector = \"postgres\"\nurl = \"{url}\"\ntable = \"{t}\"\n{sink_extra}\n\
             [batch]\nmax_records = 250\n\
             [checkpoint]\nstore = \"postgres\"\nurl = \"{url}\"\nlease_timeout = \"{lease}\"\ninterval = \"100ms\"\n",
            url = url()
        ),
    )
    .unwrap();
}

/// Forgets what the shared store and the sink hold for pipeline `t`.
pub(crate) fn forget(t: &str) {
    fresh(t);
    psql(&format!(
        "DO $$ BEGIN \
           IF to_regclass('public.sluice_splits') IS NOT NULL THEN \
             DELETE FROM sluice_splits WHERE pipeline = '{t}'; \
             DELETE FROM sluice_split_claims WHERE pipeline = '{t}'; \
             DELETE FROM sluice_imports WHERE pipeline = '{t}'; END IF; \
           IF to_regclass('public.sluice_cuts') IS NOT NULL THEN \
             DELETE FROM sluice_cuts WHERE pipeline = '{t}'; END IF; \
           IF to_regclass('public.sluice_offsets') IS NOT NULL THEN \
             DELETE FROM sluice_offsets WHERE pipeline LIKE '{t}.split-%'; END IF; \
         END $$"
    ));
}

/// Splits of `t` read to their end.
pub(crate) fn done(t: &str) -> usize {
    // (a query naming a table that does not exist fails even where it is not run)
    if psql("SELECT to_regclass('public.sluice_splits') IS NULL") == "t" {
        return 0;
    }
    psql(&format!(
        "SELECT count(*) FROM sluice_splits WHERE pipeline = '{t}' AND done"
    ))
    .parse()
    .unwrap()
}

/// `count(*)|count(DISTINCT id)|min(id)|max(id)` of `t`.
pub(crate) fn counts(t: &str) -> String {
    psql(&format!(
        "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM \"{t}\""
    ))
}

fn start(dir: &Path) -> (Child, KillOnPanic) {
    let child = spawn(dir, &["run", "--quiet", "shared.toml"]);
    let guard = KillOnPanic(child.id());
    (child, guard)
}

/// Runs `shared.toml` in `dir` on three runtimes, kills one with kill -9 once half
/// of the `splits` splits are done, lets the other two finish, and checks that table
/// `t` got `rows` records (ids 0..rows) exactly once, that each runtime finished
/// splits of its own, and that a split of the killed one was taken over.
fn three_share_and_one_is_killed(dir: &Path, t: &str, splits: usize, rows: usize) {
    let runtimes: Vec<(Child, KillOnPanic)> = (0..3).map(|_| start(dir)).collect();
    assert!(
        wait_until(Duration::from_secs(180), || done(t) >= splits / 2),
        "half the splits were not done in 3 minutes"
    );
    let mut runtimes = runtimes.into_iter();
    let (mut killed, _guard) = runtimes.next().unwrap();
    assert!(
        killed.try_wait().unwrap().is_none(),
        "the first runtime ended before half the splits were done"
    );
    signal(&killed, "KILL");
    let _ = finish(killed, Duration::from_secs(10));
    for (child, _guard) in runtimes {
        let run = finish(child, Duration::from_secs(300));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    }
    assert_eq!(counts(t), format!("{rows}|{rows}|0|{}", rows - 1));
    assert_eq!(done(t), splits);
    // the work was shared: each of the three runtimes finished splits of its own
    let owners = psql(&format!(
        "SELECT count(DISTINCT owner) FROM sluice_split_claims WHERE pipeline = '{t}' AND outcome = 'done'"
    ));
    assert_eq!(
        owners, "3",
        "splits were not finished by all three runtimes"
    );
    // the killed runtime's split was taken over by another, from its last checkpoint
    let taken_over = psql(&format!(
        "SELECT count(*) FROM sluice_split_claims a JOIN sluice_split_claims b \
           ON a.pipeline = b.pipeline AND a.split = b.split AND b.epoch > a.epoch \
         WHERE a.pipeline = '{t}' AND a.outcome = 'lease ran out' AND b.outcome = 'done' AND a.owner <> b.owner"
    ));
    assert_ne!(
        taken_over, "0",
        "no split of the killed runtime was taken over"
    );
}

#[test]
fn three_runtimes_share_200_files_and_take_over_those_of_one_killed_with_kill_9() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_files";
    forget(t);
    files(d, 200, 1000);
    pipeline(d, t, "3s", "");
    three_share_and_one_is_killed(d, t, 200, 200_000);
    // `sluice offsets show` lists every file, done, with the runtime that finished it
    let show = sluice(d, &["offsets", "show", "shared.toml"]);
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    let listed: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    let splits = listed["splits"].as_array().unwrap();
    assert_eq!(splits.len(), 200);
    assert!(
        splits
            .iter()
            .all(|s| s["state"] == "done" && s["owner"].is_string() && s["records"] == 1000),
        "{}",
        show.stdout
    );
    // a runtime read two files at once (`splits_at_once`, 2 by default)
    let overlapping = psql(&format!(
        "SELECT count(*) FROM sluice_split_claims a JOIN sluice_split_claims b \
           ON a.pipeline = b.pipeline AND a.owner = b.owner AND a.split < b.split \
         WHERE a.pipeline = '{t}' AND a.claimed_at < b.ended_at AND b.claimed_at < a.ended_at"
    ));
    assert_ne!(overlapping, "0", "no runtime read two files at once");
}

#[test]
fn three_runtimes_share_40_s3_objects_and_take_over_those_of_one_killed() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_objects";
    forget(t);
    let bucket = crate::s3::new_bucket("shared");
    crate::s3::py(
        &bucket,
        "for f in range(40):\n    body = ''.join('{\"id\": %d, \"file\": %d, \"amount\": \"%d.%02d\"}\\n' % (f * 10000 + i, f, i, i % 100) for i in range(10000))\n    s3.put_object(Bucket=BUCKET, Key='in/o%02d.jsonl' % f, Body=body.encode())",
    );
    let source = format!(
        "[source]\nconnector = \"s3\"\npath = \"in/*.jsonl\"\n{}{SCHEMA}\n",
        crate::s3::conn(&bucket)
    );
    pipeline_from(d, t, &source, "3s", "");
    three_share_and_one_is_killed(d, t, 40, 400_000);
}

#[test]
fn three_runtimes_read_one_2m_row_table_by_key_ranges() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_ranges";
    forget(t);
    psql(
        "DROP TABLE IF EXISTS it_shared_big; \
         CREATE TABLE it_shared_big AS SELECT g::int8 AS id, (g % 1000)::int4 AS file, \
           ((g % 100000) / 100.0)::numeric(12,2) AS amount FROM generate_series(0, 1999999) g; \
         ALTER TABLE it_shared_big ADD PRIMARY KEY (id)",
    );
    let source = format!(
        "[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"it_shared_big\"]\nsplit_key_width = 50000\n",
        url()
    );
    pipeline_from(d, t, &source, "3s", "");
    three_share_and_one_is_killed(d, t, 40, 2_000_000);
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM it_shared_big b JOIN \"{t}\" s USING (id) \
             WHERE (b.file, b.amount) IS DISTINCT FROM (s.file, s.amount)"
        )),
        "0"
    );
}

#[test]
fn a_runtime_paused_past_its_lease_is_fenced_and_writes_nothing_twice() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_fenced";
    forget(t);
    files(d, 12, 20_000);
    // the new owner of the paused runtime's file waits 1 s for its sink, then tries
    // other files first
    pipeline(d, t, "2s", "lock_timeout = \"1s\"");
    let (paused, _guard) = start(d);
    assert!(wait_until(Duration::from_secs(30), || psql(
        "SELECT to_regclass('public.sluice_splits') IS NOT NULL"
    ) == "t"));
    // pause it in the middle of a file: leased, with a checkpoint inside it
    let inside = || {
        psql(&format!(
            "SELECT count(*) FROM sluice_splits WHERE pipeline = '{t}' AND NOT done AND offsets IS NOT NULL \
               AND lease_until > now()"
        )) != "0"
    };
    let mut tries = 0;
    loop {
        assert!(
            wait_until(Duration::from_secs(60), inside),
            "the first runtime never checkpointed inside a file"
        );
        signal(&paused, "STOP");
        if inside() {
            break;
        }
        // stopped between two files: try again
        signal(&paused, "CONT");
        tries += 1;
        assert!(tries < 10, "never paused inside a file");
    }
    let (other, _other_guard) = start(d);
    // the other runtime does the rest, and claims the paused runtime's file after its
    // lease ran out (its sink still held by the paused run)
    assert!(
        wait_until(Duration::from_secs(120), || psql(&format!(
            "SELECT count(*) FROM sluice_splits WHERE pipeline = '{t}' AND epoch >= 2"
        )) != "0"),
        "nobody took over the paused runtime's file"
    );
    std::thread::sleep(Duration::from_secs(2));
    signal(&paused, "CONT");
    let other = finish(other, Duration::from_secs(180));
    assert_eq!(other.code, Some(0), "{}", other.stderr);
    let paused = finish(paused, Duration::from_secs(60));
    assert_eq!(paused.code, Some(0), "{}", paused.stderr);
    assert!(
        paused.stderr.contains("passed to another runtime"),
        "the paused runtime did not see its lease pass on:\n{}",
        paused.stderr
    );
    assert_eq!(counts(t), "240000|240000|0|239999");
    assert_eq!(done(t), 12);
}

#[test]
fn three_runtimes_wait_out_a_postgres_restart_and_lose_nothing() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_restart";
    forget(t);
    files(d, 60, 5000);
    pipeline(d, t, "3s", "");
    let mut text = std::fs::read_to_string(d.join("shared.toml")).unwrap();
    text.push_str(
        "[errors]\nretry_backoff = \"200ms\"\nretry_backoff_max = \"2s\"\nmax_retries = 20\n",
    );
    std::fs::write(d.join("shared.toml"), text).unwrap();
    let runtimes: Vec<(Child, KillOnPanic)> = (0..3).map(|_| start(d)).collect();
    assert!(
        wait_until(Duration::from_secs(120), || done(t) >= 10),
        "the runtimes never finished 10 files"
    );
    restart_postgres();
    let mut logs = String::new();
    for (child, _guard) in runtimes {
        let run = finish(child, Duration::from_secs(300));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        logs.push_str(&run.stderr);
    }
    assert!(
        logs.contains("restarting it from its last checkpoint") || logs.contains("retrying"),
        "no runtime noticed the restart:\n{logs}"
    );
    assert_eq!(counts(t), "300000|300000|0|299999");
    assert_eq!(done(t), 60);
}

#[test]
fn a_pipeline_moved_from_its_local_store_reads_only_what_it_had_not_read() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_moved";
    forget(t);
    files(d, 6, 1000);
    let later: Vec<_> = (4..6)
        .map(|f| d.join(format!("in/f{f:03}.jsonl")))
        .collect();
    let aside = d.join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    for f in &later {
        std::fs::rename(f, aside.join(f.file_name().unwrap())).unwrap();
    }
    // four files with the local store
    pipeline(d, t, "3s", "");
    let shared = std::fs::read_to_string(d.join("shared.toml")).unwrap();
    let local = shared[..shared.find("[checkpoint]").unwrap()].to_string();
    std::fs::write(d.join("shared.toml"), &local).unwrap();
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(counts(t), "4000|4000|0|3999");
    // two more files, and the shared store: only those two are read
    for f in &later {
        std::fs::rename(aside.join(f.file_name().unwrap()), f).unwrap();
    }
    std::fs::write(d.join("shared.toml"), &shared).unwrap();
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("took the pipeline's offsets from its local checkpoint store"),
        "{}",
        run.stderr
    );
    assert_eq!(counts(t), "6000|6000|0|5999");
    assert_eq!(done(t), 6);
}

#[test]
fn files_dropped_into_a_watched_directory_are_shared_as_they_come() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_watch";
    forget(t);
    std::fs::create_dir_all(d.join("in")).unwrap();
    let source = format!(
        "[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\nwatch = true\npoll_interval = \"200ms\"\n{SCHEMA}\n"
    );
    pipeline_from(d, t, &source, "3s", "");
    let runtimes: Vec<(Child, KillOnPanic)> = (0..2).map(|_| start(d)).collect();
    // three drops of ten files, written aside and renamed in whole
    let staging = d.join("staging");
    files(&staging, 30, 1000);
    for drop in 0..3 {
        for f in drop * 10..drop * 10 + 10 {
            let name = format!("f{f:03}.jsonl");
            std::fs::rename(staging.join("in").join(&name), d.join("in").join(&name)).unwrap();
        }
        let want = (drop + 1) * 10;
        assert!(
            wait_until(Duration::from_secs(60), || done(t) == want),
            "the files of drop {drop} were not all read"
        );
    }
    // a watched directory never ends: the runtimes run until stopped
    for (child, _guard) in runtimes {
        signal(&child, "TERM");
        let run = finish(child, Duration::from_secs(30));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    }
    assert_eq!(counts(t), "30000|30000|0|29999");
    let owners = psql(&format!(
        "SELECT count(DISTINCT owner) FROM sluice_split_claims WHERE pipeline = '{t}' AND outcome = 'done'"
    ));
    assert_eq!(owners, "2", "the dropped files were not shared");
}

#[test]
fn a_file_that_grew_after_it_was_read_is_read_on_into_a_file_sink() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_grown";
    forget(t);
    files(d, 3, 1000);
    let source = format!("[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n{SCHEMA}\n");
    std::fs::write(
        d.join("shared.toml"),
        format!(
            "name = \"{t}\"\n{source}[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [checkpoint]\nstore = \"postgres\"\nurl = \"{}\"\nlease_timeout = \"3s\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        crate::support::jsonl_ids(&d.join("out")),
        (0..3000).collect::<Vec<i64>>()
    );
    // 500 more lines at the end of the last file: the next run reads only those
    python(&format!(
        "with open('{}/in/f002.jsonl', 'a') as out:\n    [out.write('{{\"id\": %d, \"file\": 2, \"amount\": \"1.00\"}}\\n' % i) for i in range(3000, 3500)]",
        d.display()
    ));
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        crate::support::jsonl_ids(&d.join("out")),
        (0..3500).collect::<Vec<i64>>()
    );
}

#[test]
fn check_names_a_store_out_of_reach_and_a_source_that_cannot_share() {
    let dir = workdir();
    let d = dir.path();
    files(d, 1, 10);
    let write = |source: &str, url: &str| {
        std::fs::write(
            d.join("check.toml"),
            format!(
                "name = \"it_shared_check\"\n{source}[sink]\nconnector = \"blackhole\"\n\
                 [checkpoint]\nstore = \"postgres\"\nurl = \"{url}\"\n"
            ),
        )
        .unwrap();
    };
    let files_source = format!("[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n{SCHEMA}\n");
    write(&files_source, "postgres://postgres@127.0.0.1:1/test");
    let check = sluice(d, &["check", "check.toml"]);
    assert_ne!(check.code, Some(0));
    assert!(
        check
            .stdout
            .contains("checkpoint store (postgres): connect error")
            && check.stdout.contains("127.0.0.1:1"),
        "{}",
        check.stdout
    );
    let datagen = "[source]\nconnector = \"datagen\"\ncount = 10\n";
    write(datagen, &url());
    let check = sluice(d, &["check", "check.toml"]);
    assert_ne!(check.code, Some(0));
    assert!(
        check
            .stdout
            .contains("\"datagen\" cannot divide its work between runtimes"),
        "{}",
        check.stdout
    );
    let run = sluice(d, &["run", "--quiet", "check.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("\"datagen\" cannot divide its work between runtimes"),
        "{}",
        run.stderr
    );
}
