//! Watch mode: files dropped into a directory while sluice runs arrive in the sink;
//! SIGTERM drains, flushes and exits 0; a restart resumes without repeating.

use std::path::Path;
use std::time::Duration;

use crate::support::{finish, jsonl_lines, signal, spawn, wait_until, workdir};

fn count_lines(dir: &Path) -> usize {
    jsonl_lines(dir).len()
}

#[test]
fn files_dropped_while_running_arrive_and_sigterm_exits_cleanly() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("w.toml"),
        "name = \"w\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\nwatch = true\npoll_interval = \"200ms\"\n\
         schema = [{ name = \"id\", type = \"int64\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
         [checkpoint]\ninterval = \"200ms\"\n",
    )
    .unwrap();
    let out = d.join("out");
    let child = spawn(d, &["run", "--quiet", "w.toml"]);
    std::fs::write(d.join("in/a.jsonl"), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || count_lines(&out) == 2),
        "first file did not arrive"
    );
    std::fs::write(
        d.join("in/b.jsonl"),
        "{\"id\": 3}\n{\"id\": 4}\n{\"id\": 5}\n",
    )
    .unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("in/a.jsonl"))
            .unwrap();
        f.write_all(b"{\"id\": 6}\n").unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(20), || count_lines(&out) == 6),
        "later data did not arrive: {}",
        count_lines(&out)
    );
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("w: "),
        "summary missing: {}",
        run.stdout
    );

    // a restart picks up only what is new
    let child = spawn(d, &["run", "--quiet", "w.toml"]);
    std::fs::write(d.join("in/c.jsonl"), "{\"id\": 7}\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || count_lines(&out) == 7),
        "restart: {}",
        count_lines(&out)
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(count_lines(&out), 7, "a restart must not repeat records");
    signal(&child, "TERM");
    assert_eq!(finish(child, Duration::from_secs(20)).code, Some(0));
}

/// A watched directory that does not exist is made so files can be dropped in, and the
/// log says so (a mistyped `path` would otherwise wait in silence); a file dropped
/// into it arrives.
#[test]
fn a_missing_watched_directory_is_made_and_named_in_the_log() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("w.toml"),
        "name = \"w\"\n[source]\nconnector = \"file\"\npath = \"inbox/*.jsonl\"\nwatch = true\npoll_interval = \"200ms\"\n\
         schema = [{ name = \"id\", type = \"int64\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
         [checkpoint]\ninterval = \"200ms\"\n",
    )
    .unwrap();
    let child = spawn(d, &["run", "w.toml"]);
    let made = wait_until(Duration::from_secs(30), || d.join("inbox").is_dir());
    std::fs::write(d.join("inbox/a.jsonl"), "{\"id\": 1}\n").unwrap();
    let arrived = wait_until(Duration::from_secs(30), || count_lines(&d.join("out")) == 1);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    assert!(made && arrived, "{}", run.stderr);
    assert!(
        run.stderr.contains("the watched directory did not exist") && run.stderr.contains("inbox"),
        "{}",
        run.stderr
    );
}

/// A watched CSV file without a declared schema that starts as a header alone: the
/// rows appended later arrive with their values, typed by them.
#[test]
fn a_csv_file_that_starts_as_a_header_gets_its_types_from_the_rows_appended() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("c.toml"),
        "name = \"c\"\n[source]\nconnector = \"file\"\npath = \"in/*.csv\"\nformat = \"csv\"\nwatch = true\npoll_interval = \"100ms\"\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[checkpoint]\ninterval = \"100ms\"\n",
    )
    .unwrap();
    let csv = d.join("in/a.csv");
    std::fs::write(&csv, "id,name,note\n").unwrap();
    let child = spawn(d, &["run", "--quiet", "c.toml"]);
    std::thread::sleep(Duration::from_secs(1));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&csv).unwrap();
        f.write_all(b"1,ann,\n2,bob,x\n").unwrap();
    }
    let arrived = wait_until(Duration::from_secs(20), || count_lines(&d.join("out")) == 2);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(arrived, "{}", run.stderr);
    let mut lines = jsonl_lines(&d.join("out"));
    lines.sort();
    assert_eq!(
        lines,
        [
            "{\"id\":1,\"name\":\"ann\",\"note\":null}",
            "{\"id\":2,\"name\":\"bob\",\"note\":\"x\"}"
        ]
    );
}

/// A Parquet file copied into a watched directory in two halves is read once it is
/// whole, and a file that is not Parquet at all is one dead letter: the pipeline
/// runs on.
#[test]
fn a_parquet_file_still_being_copied_is_waited_for_and_a_corrupt_one_is_a_dead_letter() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let whole = d.join("whole.parquet");
    crate::support::python(&format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n\
         pq.write_table(pa.table({{'id': list(range(5000))}}), '{}')\n",
        whole.display()
    ));
    std::fs::write(
        d.join("p.toml"),
        "name = \"p\"\n[source]\nconnector = \"file\"\npath = \"in/*.parquet\"\nformat = \"parquet\"\nwatch = true\npoll_interval = \"100ms\"\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[checkpoint]\ninterval = \"100ms\"\n\
         [errors]\ntolerance = \"all\"\n[errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\nformat = \"json\"\n",
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let bytes = std::fs::read(&whole).unwrap();
    let (head, rest) = bytes.split_at(bytes.len() / 2);
    let copy = d.join("in/a.parquet");
    std::fs::write(&copy, head).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&copy)
            .unwrap();
        f.write_all(rest).unwrap();
    }
    let arrived = wait_until(Duration::from_secs(20), || {
        count_lines(&d.join("out")) == 5000
    });
    std::fs::write(
        d.join("in/b.parquet"),
        b"not parquet at all, but ends in PAR1",
    )
    .unwrap();
    let dead = wait_until(Duration::from_secs(20), || count_lines(&d.join("dlq")) == 1);
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(
        arrived,
        "{} rows: {}",
        count_lines(&d.join("out")),
        run.stderr
    );
    assert!(dead, "{}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let dlq = jsonl_lines(&d.join("dlq"));
    assert!(dlq[0].contains("in/b.parquet"), "{dlq:?}");
}
