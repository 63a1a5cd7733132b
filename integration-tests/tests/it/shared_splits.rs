//! Several runtimes on one pipeline, the splits one runtime reads: two at once by
//! default (one whose run fails stops the other), one at a time on request, and a
//! table cut into other key ranges than those stored, refused until a reset.

use crate::postgres::{psql, server, url};
use crate::shared::{counts, done, files, forget, pipeline, pipeline_from};
use crate::support::{sluice, workdir};

#[test]
fn a_table_cut_by_another_key_width_than_its_stored_splits_is_refused_until_reset() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_cut";
    forget(t);
    psql(
        "DROP TABLE IF EXISTS it_shared_cut_src; \
         CREATE TABLE it_shared_cut_src AS SELECT g::int8 AS id, 1::int4 AS file, \
           1.00::numeric(12,2) AS amount FROM generate_series(0, 9999) g; \
         ALTER TABLE it_shared_cut_src ADD PRIMARY KEY (id)",
    );
    let cut = |width: u32| {
        let source = format!(
            "[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"it_shared_cut_src\"]\nsplit_key_width = {width}\n",
            url()
        );
        pipeline_from(d, t, &source, "3s", "");
    };
    cut(5000);
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(counts(t), "10000|10000|0|9999");
    // ranges 2000 wide would overlap the two read: refused, nothing read twice
    cut(2000);
    let check = sluice(d, &["check", "shared.toml"]);
    assert_ne!(check.code, Some(0), "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("checkpoint store (postgres): config error")
            && check.stdout.contains("split_key_width = 5000"),
        "{}",
        check.stdout
    );
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("split_key_width = 2000")
            && run.stderr.contains("split_key_width = 5000")
            && run.stderr.contains("sluice offsets reset"),
        "{}",
        run.stderr
    );
    assert_eq!(counts(t), "10000|10000|0|9999");
    // after a reset the table is read again, in the new ranges
    let reset = sluice(d, &["offsets", "reset", "shared.toml"]);
    assert_eq!(reset.code, Some(0), "{}", reset.stderr);
    psql(&format!("TRUNCATE \"{t}\""));
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(counts(t), "10000|10000|0|9999");
    assert_eq!(done(t), 5);
}

#[test]
fn a_split_that_fails_stops_the_one_read_beside_it_and_is_read_on_once_fixed() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_failed";
    forget(t);
    files(d, 6, 20_000);
    // a line that is not JSON in the middle of the fourth file
    let bad = d.join("in/f003.jsonl");
    let good = std::fs::read_to_string(&bad).unwrap();
    let at = good.match_indices('\n').nth(9_999).unwrap().0 + 1;
    std::fs::write(&bad, format!("{}not json\n{}", &good[..at], &good[at..])).unwrap();
    pipeline(d, t, "3s", "");
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("f003.jsonl"),
        "the error does not name the file:\n{}",
        run.stderr
    );
    // the split read beside it was given back or finished; none is left leased
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM sluice_splits WHERE pipeline = '{t}' AND lease_until > now()"
        )),
        "0"
    );
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM sluice_split_claims WHERE pipeline = '{t}' AND outcome = 'failed'"
        )),
        "1"
    );
    // it was read beside another file, whose run ended with it (given back, or done)
    let beside = psql(&format!(
        "SELECT count(*) FROM sluice_split_claims f JOIN sluice_split_claims o \
           ON o.pipeline = f.pipeline AND o.owner = f.owner AND o.split <> f.split \
         WHERE f.pipeline = '{t}' AND f.outcome = 'failed' \
           AND o.claimed_at < f.ended_at AND f.claimed_at < o.ended_at \
           AND o.outcome IN ('stopped', 'done')"
    ));
    assert_ne!(beside, "0", "no file was read beside the one that failed");
    assert!(done(t) < 6);
    // fixed, the file is read on from its last checkpoint, the rest after it
    std::fs::write(&bad, good).unwrap();
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(counts(t), "120000|120000|0|119999");
    assert_eq!(done(t), 6);
}

#[test]
fn a_runtime_reading_one_split_at_a_time_reads_them_all() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_one_at_a_time";
    forget(t);
    files(d, 5, 2000);
    pipeline(d, t, "3s", "");
    let mut text = std::fs::read_to_string(d.join("shared.toml")).unwrap();
    text.push_str("splits_at_once = 1\n");
    std::fs::write(d.join("shared.toml"), text).unwrap();
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(counts(t), "10000|10000|0|9999");
    let overlapping = psql(&format!(
        "SELECT count(*) FROM sluice_split_claims a JOIN sluice_split_claims b \
           ON a.pipeline = b.pipeline AND a.split < b.split \
         WHERE a.pipeline = '{t}' AND a.claimed_at < b.ended_at AND b.claimed_at < a.ended_at"
    ));
    assert_eq!(overlapping, "0", "two files were read at once");
}

#[test]
fn a_table_read_with_the_local_store_is_not_moved_into_key_ranges() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = "it_shared_cut_moved";
    forget(t);
    psql(
        "DROP TABLE IF EXISTS it_shared_cut_moved_src; \
         CREATE TABLE it_shared_cut_moved_src AS SELECT g::int8 AS id, 1::int4 AS file, \
           1.00::numeric(12,2) AS amount FROM generate_series(0, 999) g; \
         ALTER TABLE it_shared_cut_moved_src ADD PRIMARY KEY (id)",
    );
    let source = |extra: &str| {
        format!(
            "[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"it_shared_cut_moved_src\"]\n{extra}",
            url()
        )
    };
    // read whole with the local store
    let local = format!(
        "name = \"{t}\"\n{}[sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{t}\"\n",
        source(""),
        url()
    );
    std::fs::write(d.join("shared.toml"), local).unwrap();
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // then shared, in key ranges: its offsets are one split for the whole table
    pipeline_from(d, t, &source("split_key_width = 100\n"), "3s", "");
    let run = sluice(d, &["run", "--quiet", "shared.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("split_key_width = 100")
            && run.stderr.contains("one split per table, file or object"),
        "{}",
        run.stderr
    );
    assert_eq!(counts(t), "1000|1000|0|999");
}
