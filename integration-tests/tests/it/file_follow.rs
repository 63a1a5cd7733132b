//! The file source follows files by identity: rotation by rename (whether or not the
//! glob matches the rotated name, while it runs or while it is down), copy-and-truncate, and a file rewritten in place
//! with the same first bytes; every line arrives once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::support::{finish, jsonl_lines, signal, sluice, spawn, wait_until, workdir};

/// Appends lines `{"id": i}` for `ids` to `path`.
fn append(path: &Path, ids: std::ops::Range<u64>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let text: String = ids.map(|i| format!("{{\"id\": {i}}}\n")).collect();
    f.write_all(text.as_bytes()).unwrap();
}

/// How many times each id arrived in the JSON lines under `out`.
fn arrivals(out: &Path) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for l in jsonl_lines(out) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        *seen.entry(v["id"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

fn watch_pipeline(d: &Path, glob: &str) {
    std::fs::create_dir_all(d.join("logs")).unwrap();
    std::fs::write(
        d.join("w.toml"),
        format!(
            "name = \"w\"\n[source]\nconnector = \"file\"\npath = \"{glob}\"\nformat = \"json\"\nwatch = true\npoll_interval = \"100ms\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[checkpoint]\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
}

/// `app.log` is written, renamed to `app.log.1` right after more lines went into it,
/// and a new `app.log` is written: 20,000 ids, each once.
fn rotation_by_rename(glob: &str) {
    let dir = workdir();
    let d = dir.path();
    watch_pipeline(d, glob);
    let log = d.join("logs/app.log");
    let child = spawn(d, &["run", "--quiet", "w.toml"]);
    append(&log, 0..10_000);
    let started = wait_until(Duration::from_secs(30), || {
        arrivals(&d.join("out")).len() == 10_000
    });
    // lines written just before the rename, then the rename, then the new file
    append(&log, 10_000..15_000);
    std::fs::rename(&log, d.join("logs/app.log.1")).unwrap();
    append(&log, 15_000..20_000);
    let all = wait_until(Duration::from_secs(30), || {
        arrivals(&d.join("out")).len() == 20_000
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    let seen = arrivals(&d.join("out"));
    let twice = seen.values().filter(|&&n| n > 1).count();
    assert!(started, "{}", run.stderr);
    assert!(all, "{} of 20000 ids: {}", seen.len(), run.stderr);
    assert_eq!(
        twice, 0,
        "{twice} ids arrived more than once: {}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn a_file_renamed_away_from_the_glob_is_read_to_its_end_first() {
    rotation_by_rename("logs/*.log");
}

#[test]
fn a_file_renamed_within_the_glob_goes_on_from_its_position() {
    rotation_by_rename("logs/app.log*");
}

/// Starts the watch pipeline on `logs/*.log` with 1,000 ids and a half-written line
/// in `app.log`, renames it to `app.log.1` once they arrived, and writes ids up to
/// 1999 (without 1000) into a new `app.log`. Returns the running pipeline, the
/// rotated file's writer, and whether the first 1,000 and then the new file arrived.
fn rotate_with_a_half_line(d: &Path) -> (std::process::Child, std::fs::File, bool, bool) {
    watch_pipeline(d, "logs/*.log");
    let log = d.join("logs/app.log");
    append(&log, 0..1000);
    let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writer.write_all(b"{\"id\": 1000").unwrap();
    let child = spawn(d, &["run", "w.toml"]);
    let out = d.join("out");
    let first = wait_until(Duration::from_secs(30), || arrivals(&out).len() == 1000);
    std::fs::rename(&log, d.join("logs/app.log.1")).unwrap();
    append(&log, 1001..2000);
    let new_read = wait_until(Duration::from_secs(30), || arrivals(&out).len() == 1999);
    (child, writer, first, new_read)
}

/// logrotate's `create`: `app.log` is renamed away (the glob does not match the new
/// name) while its writer has a line half written, a new `app.log` is read to its
/// end, and only then does the writer end the line in the renamed file: it arrives,
/// once, and nothing is reported unread.
#[test]
fn a_line_ended_in_a_rotated_file_after_the_new_file_was_read_arrives_once() {
    let dir = workdir();
    let d = dir.path();
    let (child, mut writer, first, new_read) = rotate_with_a_half_line(d);
    let out = d.join("out");
    writer.write_all(b"}\n").unwrap();
    let ended = wait_until(Duration::from_secs(30), || arrivals(&out).len() == 2000);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    assert!(first && new_read, "{}", run.stderr);
    assert!(
        ended,
        "the line ended after the rotation never arrived: {}",
        run.stderr
    );
    let seen = arrivals(&out);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    assert!(!run.stderr.contains("they are not read"), "{}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// Runs the watch pipeline in `d` until `ids` ids arrived (each once), then stops it
/// with SIGTERM.
fn run_until(d: &Path, ids: usize) {
    let child = spawn(d, &["run", "w.toml"]);
    let out = d.join("out");
    let arrived = wait_until(Duration::from_secs(30), || arrivals(&out).len() >= ids);
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    let seen = arrivals(&out);
    assert!(arrived, "{} of {ids} ids: {}", seen.len(), run.stderr);
    assert_eq!(seen.len(), ids, "{}", run.stderr);
    assert!(
        seen.values().all(|&n| n == 1),
        "ids arrived twice: {}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// logrotate's `create` while the pipeline is down: lines written to `app.log` after
/// the last run, the file renamed to `app.log.1`, more lines written to it there and a
/// new `app.log`; then `runs` runs, each seeing every line once.
fn rotated_while_down(glob: &str, runs: usize) {
    let dir = workdir();
    let d = dir.path();
    watch_pipeline(d, glob);
    let log = d.join("logs/app.log");
    append(&log, 0..1000);
    run_until(d, 1000);
    append(&log, 1000..1500);
    std::fs::rename(&log, d.join("logs/app.log.1")).unwrap();
    append(&d.join("logs/app.log.1"), 1500..2000);
    append(&log, 2000..3000);
    for _ in 0..runs {
        run_until(d, 3000);
    }
}

/// The glob does not match the rotated name: the next run finds the file by inode and
/// reads its rest.
#[test]
fn a_file_rotated_while_the_pipeline_was_down_is_read_to_its_end() {
    rotated_while_down("logs/*.log", 1);
}

/// The glob matches the rotated name: the file is read on there, once, also across a
/// second restart.
#[test]
fn a_file_rotated_within_the_glob_while_down_is_not_read_twice_after_restarts() {
    rotated_while_down("logs/app.log*", 2);
}

/// A file followed under a key of its own (renamed away, a new file under its name)
/// when the pipeline stops: the next run reopens it by inode and reads what its
/// writer added meanwhile, once.
#[test]
fn a_rotated_file_written_to_across_a_restart_is_read_on() {
    let dir = workdir();
    let d = dir.path();
    let (child, mut writer, first, new_read) = rotate_with_a_half_line(d);
    let rotated = d.join("logs/app.log.1");
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    assert!(first && new_read, "{}", run.stderr);
    // the writer of the rotated file ends its line and goes on while the pipeline is down
    writer.write_all(b"}\n").unwrap();
    append(&rotated, 2000..2500);
    run_until(d, 2500);
}

/// Copy-and-truncate: the file is emptied (a warning, once) and written again from
/// its start; the new lines arrive.
#[test]
fn a_truncated_file_is_read_again_from_its_start_with_one_warning() {
    let dir = workdir();
    let d = dir.path();
    watch_pipeline(d, "logs/*.log");
    let log = d.join("logs/app.log");
    append(&log, 0..100);
    let child = spawn(d, &["run", "w.toml"]);
    let first = wait_until(Duration::from_secs(30), || {
        arrivals(&d.join("out")).len() == 100
    });
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    // empty for a while: looked at many times, warned about once
    std::thread::sleep(Duration::from_secs(2));
    append(&log, 100..110);
    let later = wait_until(Duration::from_secs(30), || {
        arrivals(&d.join("out")).len() == 110
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    assert!(first && later, "{}", run.stderr);
    let warnings = run.stderr.matches("from the start").count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings: {}",
        run.stderr
    );
}

/// A file rewritten in place (same inode, same first KiB, longer, other lines after
/// it) is another file: read from its start, not from the old position.
#[test]
fn a_file_rewritten_in_place_with_the_same_start_is_read_from_its_start() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("b.toml"),
        "name = \"b\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n\
         schema = [{ name = \"id\", type = \"int64\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    )
    .unwrap();
    let file = d.join("in/a.jsonl");
    append(&file, 0..200);
    let run = sluice(d, &["run", "--quiet", "b.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // the same first 100 lines (well over 1 KiB), then 300 others
    let mut text: String = (0..100).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    text.extend((1000..1300).map(|i| format!("{{\"id\": {i}}}\n")));
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let run = sluice(d, &["run", "b.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let seen = arrivals(&d.join("out"));
    let new: Vec<u64> = seen.keys().copied().filter(|&i| i >= 1000).collect();
    assert_eq!(new.len(), 300, "{}", run.stderr);
    assert!(run.stderr.contains("rewritten in place"), "{}", run.stderr);
}

/// gzip files are read decompressed next to plain ones, and a rerun reads only the
/// file added since, without decompressing the others again.
#[test]
fn gzip_files_are_read_decompressed_and_not_again_on_a_rerun() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let gzip = |name: &str, ids: std::ops::Range<u64>| {
        let path = d.join("in").join(name);
        let text: String = ids.map(|i| format!("{{\"id\": {i}}}\n")).collect();
        crate::support::python(&format!(
            "import gzip\nopen('{}', 'wb').write(gzip.compress(b'''{text}'''))\n",
            path.display()
        ));
    };
    gzip("a.jsonl.gz", 0..1000);
    append(&d.join("in/b.jsonl"), 1000..2000);
    std::fs::write(
        d.join("z.toml"),
        "name = \"z\"\n[source]\nconnector = \"file\"\npath = \"in/*\"\nformat = \"json\"\n\
         schema = [{ name = \"id\", type = \"int64\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "z.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(arrivals(&d.join("out")).len(), 2000, "{}", run.stderr);
    gzip("c.jsonl.gz", 2000..2500);
    let run = sluice(d, &["run", "z.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let seen = arrivals(&d.join("out"));
    assert_eq!(seen.len(), 2500, "{}", run.stderr);
    assert!(seen.values().all(|&n| n == 1), "{}", run.stderr);
    // a compressed file read to its end is not decompressed again: its gzip trailer
    // broken in place (same inode, first KiB and size) goes unread by a rerun
    let a = d.join("in/a.jsonl.gz");
    let size = std::fs::metadata(&a).unwrap().len();
    assert!(
        size > 1100,
        "a.jsonl.gz is {size} bytes, within its fingerprint"
    );
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        f.seek(SeekFrom::End(-8)).unwrap();
        f.write_all(&[0xff; 4]).unwrap();
    }
    let run = sluice(d, &["run", "z.toml"]);
    assert_eq!(run.code, Some(0), "decompressed again: {}", run.stderr);
    assert_eq!(arrivals(&d.join("out")).len(), 2500, "{}", run.stderr);
}

/// A line longer than `max_line_bytes` is one bad record naming its file and line,
/// skipped without holding it; the lines around it arrive.
#[test]
fn a_line_longer_than_the_limit_is_a_bad_record_and_the_rest_arrives() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    // the long line last: the position after it is where a rerun starts
    let mut text: String = (0..200)
        .filter(|&i| i != 100)
        .map(|i| format!("{{\"id\": {i}}}\n"))
        .collect();
    text.push_str(&format!(
        "{{\"id\": 100, \"pad\": \"{}\"}}\n",
        "x".repeat(3 << 20)
    ));
    std::fs::write(d.join("in/a.jsonl"), text).unwrap();
    std::fs::write(
        d.join("l.toml"),
        "name = \"l\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\nmax_line_bytes = 65536\nread_buffer = 16384\n\
         schema = [{ name = \"id\", type = \"int64\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[batch]\nmax_records = 10\n\
         [errors]\ntolerance = \"all\"\n[errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "l.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let seen = arrivals(&d.join("out"));
    assert_eq!(seen.len(), 199, "{}", run.stderr);
    assert!(!seen.contains_key(&100));
    let dlq = jsonl_lines(&d.join("dlq"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert!(
        dlq[0].contains("in/a.jsonl")
            && dlq[0].contains("line 200")
            && dlq[0].contains("max_line_bytes"),
        "{dlq:?}"
    );
    // a rerun finds the file read to its end: nothing again
    let run = sluice(d, &["run", "l.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_lines(&d.join("out")).len(), 199, "{}", run.stderr);
    assert_eq!(jsonl_lines(&d.join("dlq")).len(), 1, "{}", run.stderr);
}
