//! PostgreSQL CDC where values or changes could be lost without a sound: out-of-line
//! (TOAST) values an update leaves out, key updates, a publication that does not cover
//! the table, a table dropped and created again, a slot gone after the snapshot, and
//! one transaction far larger than memory.

use std::process::Child;
use std::time::Duration;

use crate::postgres::{fresh, psql, server, url};
use crate::support::{finish, jsonl_lines, signal, spawn, wait_until, workdir, Run};

/// Drops the slot, publication and stored offsets of pipeline `name` left by an
/// earlier run, if any.
pub(crate) fn drop_slot(name: &str) {
    fresh(name);
    psql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sluice_{name}';\
         DROP PUBLICATION IF EXISTS sluice_{name}"
    ));
}

/// `NAME.toml`: `src` by CDC into `sink` (TOML of the `[sink]` table), with `extra`
/// source options; the pipeline, its slot and publication are named `NAME`.
fn cdc(dir: &std::path::Path, name: &str, src: &str, extra: &str, sink: &str) {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\n{extra}\n\
             [sink]\n{sink}\n[checkpoint]\ninterval = \"200ms\"\n",
            url()
        ),
    )
    .unwrap();
}

/// A PostgreSQL upsert sink into `dst` by `key`.
fn upsert(dst: &str, key: &str) -> String {
    format!(
        "connector = \"postgres\"\nurl = \"{}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [{key}]\n",
        url()
    )
}

/// `src` and `dst` hold the same rows of `cols`.
pub(crate) fn same(src: &str, dst: &str, cols: &str) -> bool {
    psql(&format!("SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'")) == "1"
        && psql(&format!(
            "SELECT count(*) FROM ((SELECT {cols} FROM \"{src}\" EXCEPT SELECT {cols} FROM \"{dst}\") UNION ALL \
             (SELECT {cols} FROM \"{dst}\" EXCEPT SELECT {cols} FROM \"{src}\")) x"
        )) == "0"
}

/// Runs pipeline `name` to its end (a minute at most).
fn ended(dir: &std::path::Path, name: &str) -> Run {
    finish(
        spawn(dir, &["run", "--quiet", &format!("{name}.toml")]),
        Duration::from_secs(60),
    )
}

/// The statement that makes `src` with five rows of `(id, n)`.
fn five_rows(src: &str) -> String {
    format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer);\
         INSERT INTO \"{src}\" SELECT g, g FROM generate_series(1, 5) g"
    )
}

/// `src` with five rows, streamed by pipeline `name` into an upsert of `dst`: the run,
/// and whether its snapshot arrived.
fn five_rows_streaming(dir: &std::path::Path, name: &str, src: &str, dst: &str) -> (Child, bool) {
    psql(&five_rows(src));
    cdc(dir, name, src, "", &upsert(dst, "\"id\""));
    let run = spawn(dir, &["run", "--quiet", &format!("{name}.toml")]);
    let snapshot = wait_until(Duration::from_secs(30), || same(src, dst, "id, n"));
    (run, snapshot)
}

/// The confirmed position of pipeline `name`'s slot.
fn slot_position(name: &str) -> String {
    psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_{name}'"
    ))
}

#[test]
fn an_update_that_leaves_a_toasted_value_out_never_writes_it_as_null() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_toast_src"), fresh("it_pg_toast_dst"));
    let (name, files) = ("it_pg_toast", "it_pg_toast_files");
    drop_slot(name);
    drop_slot(files);
    // 12.8 KB of hex: compressed still far above the 2 KB that moves a value out of line
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, small text, big text);\
         INSERT INTO \"{src}\" SELECT 1, 'a', string_agg(md5(random()::text), '') FROM generate_series(1, 400)"
    ));
    assert_eq!(
        psql(&format!(
            "SELECT pg_column_size(big) > 2048 AND octet_length(big) = 12800 FROM \"{src}\""
        )),
        "t"
    );
    // without REPLICA IDENTITY FULL the update would not carry `big`: refused at start
    cdc(d, name, &src, "", &upsert(&dst, "\"id\""));
    let refused = ended(d, name);
    assert_ne!(refused.code, Some(0), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("big") && refused.stderr.contains("REPLICA IDENTITY FULL"),
        "{}",
        refused.stderr
    );
    psql(&format!("ALTER TABLE \"{src}\" REPLICA IDENTITY FULL"));
    // into a table and into files: both must keep the value
    cdc(
        d,
        files,
        &src,
        "",
        "connector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    );
    let table_run = spawn(d, &["run", "--quiet", &format!("{name}.toml")]);
    let file_run = spawn(d, &["run", "--quiet", &format!("{files}.toml")]);
    let snapshot = wait_until(Duration::from_secs(30), || {
        same(&src, &dst, "id, small, big")
    });
    psql(&format!("UPDATE \"{src}\" SET small = 'x' WHERE id = 1"));
    let updated = wait_until(Duration::from_secs(30), || {
        psql(&format!("SELECT small FROM \"{dst}\" WHERE id = 1")) == "x"
    });
    let kept = psql(&format!(
        "SELECT (SELECT md5(big) FROM \"{dst}\") = (SELECT md5(big) FROM \"{src}\")"
    ));
    let lines = wait_until(Duration::from_secs(30), || {
        jsonl_lines(&d.join("out"))
            .iter()
            .any(|l| l.contains("\"u\""))
    });
    signal(&table_run, "TERM");
    signal(&file_run, "TERM");
    let (table_run, file_run) = (
        finish(table_run, Duration::from_secs(30)),
        finish(file_run, Duration::from_secs(30)),
    );
    drop_slot(name);
    drop_slot(files);
    assert!(snapshot && updated, "{}", table_run.stderr);
    assert_eq!(kept, "t", "the big value was lost: {}", table_run.stderr);
    assert!(lines, "no update in the files: {}", file_run.stderr);
    let update = jsonl_lines(&d.join("out"))
        .into_iter()
        .find(|l| l.contains("\"u\""))
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&update).unwrap();
    assert_eq!(record["small"], "x");
    assert_eq!(
        record["big"].as_str().map(str::len),
        Some(12800),
        "{update}"
    );
}

#[test]
fn key_updates_arrive_as_a_delete_and_a_create_so_the_target_equals_the_source() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_key_src"), fresh("it_pg_key_dst"));
    let (pair, pair_dst) = (fresh("it_pg_key2_src"), fresh("it_pg_key2_dst"));
    let (one, two, env) = ("it_pg_key", "it_pg_key2", "it_pg_key_env");
    for slot in [one, two, env] {
        drop_slot(slot);
    }
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n integer);\
         INSERT INTO \"{src}\" SELECT g, g FROM generate_series(1, 10) g;\
         CREATE TABLE \"{pair}\" (a integer, b integer, n integer, PRIMARY KEY (a, b));\
         INSERT INTO \"{pair}\" SELECT g, g, g FROM generate_series(1, 10) g"
    ));
    cdc(d, one, &src, "", &upsert(&dst, "\"id\""));
    cdc(d, two, &pair, "", &upsert(&pair_dst, "\"a\", \"b\""));
    cdc(
        d,
        env,
        &src,
        "envelope = \"debezium\"",
        "connector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    );
    let runs: Vec<_> = [one, two, env]
        .iter()
        .map(|n| spawn(d, &["run", "--quiet", &format!("{n}.toml")]))
        .collect();
    let snapshot = wait_until(Duration::from_secs(30), || {
        same(&src, &dst, "id, n") && same(&pair, &pair_dst, "a, b, n")
    });
    psql(&format!("UPDATE \"{src}\" SET id = 100 WHERE id = 5"));
    psql(&format!(
        "UPDATE \"{src}\" SET id = id + 1000, n = 0 WHERE id > 8"
    ));
    psql(&format!("UPDATE \"{pair}\" SET b = 20 WHERE a = 2"));
    psql(&format!("UPDATE \"{pair}\" SET a = 30, n = 31 WHERE a = 3"));
    let equal = wait_until(Duration::from_secs(30), || {
        same(&src, &dst, "id, n") && same(&pair, &pair_dst, "a, b, n")
    });
    let enveloped = wait_until(Duration::from_secs(30), || {
        jsonl_lines(&d.join("out"))
            .iter()
            .any(|l| l.contains("\"id\":1010"))
    });
    let stderr: Vec<String> = runs
        .into_iter()
        .map(|r| {
            signal(&r, "TERM");
            finish(r, Duration::from_secs(30)).stderr
        })
        .collect();
    for slot in [one, two, env] {
        drop_slot(slot);
    }
    assert!(snapshot && equal, "{stderr:?}");
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{dst}\" WHERE id = 5")),
        "0"
    );
    assert!(enveloped, "{stderr:?}");
    // Debezium's envelope: the old key deleted, then the new row created
    let events: Vec<serde_json::Value> = jsonl_lines(&d.join("out"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["op"] != "r")
        .collect();
    // file names are not in write order: the changes in commit order (stable, so a
    // key update's delete stays before its create)
    let mut events = events;
    events.sort_by_key(|e| e["source"]["lsn"].as_u64());
    let first: Vec<(String, serde_json::Value, serde_json::Value)> = events
        .iter()
        .take(2)
        .map(|e| {
            (
                e["op"].as_str().unwrap_or("").to_string(),
                e["before"]["id"].clone(),
                e["after"]["id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        first,
        vec![
            ("d".into(), 5.into(), serde_json::Value::Null),
            ("c".into(), serde_json::Value::Null, 100.into())
        ],
        "{events:?}"
    );
}

#[test]
fn a_left_over_publication_without_the_re_created_table_stops_the_next_run_and_holds_the_slot() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_pub_src"), fresh("it_pg_pub_dst"));
    let name = "it_pg_pub";
    drop_slot(name);
    let (run, snapshot) = five_rows_streaming(d, name, &src, &dst);
    psql(&format!("INSERT INTO \"{src}\" VALUES (6, 6)"));
    let streamed = wait_until(Duration::from_secs(30), || same(&src, &dst, "id, n"));
    signal(&run, "TERM");
    let first = finish(run, Duration::from_secs(30));
    assert!(snapshot && streamed, "{}", first.stderr);
    // a migration drops and re-creates the table: it leaves the publication
    psql(&format!("DROP TABLE \"{src}\""));
    psql(&five_rows(&src));
    psql(&format!(
        "INSERT INTO \"{src}\" SELECT g, g FROM generate_series(100, 2000) g"
    ));
    let held = slot_position(name);
    let second = ended(d, name);
    let after = slot_position(name);
    drop_slot(name);
    assert_ne!(second.code, Some(0), "{}", second.stderr);
    assert!(
        second.stderr.contains(&src)
            && second.stderr.contains("dropped and created again")
            && second
                .stderr
                .contains(&format!("publication \"sluice_{name}\"")),
        "{}",
        second.stderr
    );
    assert_eq!(held, after, "the slot moved past undelivered changes");
}

#[test]
fn a_table_dropped_and_re_created_while_streaming_stops_the_pipeline_within_seconds() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_drop_src"), fresh("it_pg_drop_dst"));
    let name = "it_pg_drop";
    drop_slot(name);
    let (run, snapshot) = five_rows_streaming(d, name, &src, &dst);
    let held = slot_position(name);
    psql(&format!("DROP TABLE \"{src}\""));
    psql(&five_rows(&src));
    psql(&format!("INSERT INTO \"{src}\" VALUES (7, 7)"));
    let run = finish(run, Duration::from_secs(20));
    let after = slot_position(name);
    drop_slot(name);
    assert!(snapshot, "{}", run.stderr);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("dropped"), "{}", run.stderr);
    assert_eq!(held, after, "the slot moved past the new table's changes");
}

#[test]
fn a_user_named_publication_without_the_table_fails_with_the_fix_and_changes_nothing() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, other, dst) = (
        fresh("it_pg_upub_src"),
        fresh("it_pg_upub_other"),
        fresh("it_pg_upub_dst"),
    );
    let name = "it_pg_upub";
    drop_slot(name);
    psql("DROP PUBLICATION IF EXISTS it_pg_upub_mine");
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY); CREATE TABLE \"{other}\" (id bigint PRIMARY KEY);\
         CREATE PUBLICATION it_pg_upub_mine FOR TABLE \"{other}\""
    ));
    cdc(
        d,
        name,
        &src,
        "publication = \"it_pg_upub_mine\"",
        &upsert(&dst, "\"id\""),
    );
    let run = ended(d, name);
    let tables = psql(
        "SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'it_pg_upub_mine'",
    );
    let slot = psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sluice_{name}'"
    ));
    psql("DROP PUBLICATION it_pg_upub_mine");
    drop_slot(name);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "ALTER PUBLICATION \"it_pg_upub_mine\" ADD TABLE \"public\".\"{src}\""
        )),
        "{}",
        run.stderr
    );
    assert_eq!(tables, other, "the user's publication was changed");
    assert_eq!(slot, "0", "a slot was created");
}

#[test]
fn a_slot_dropped_after_a_snapshot_only_run_is_named_gone_after_the_snapshot() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_gone_src"), fresh("it_pg_gone_dst"));
    let name = "it_pg_gone";
    drop_slot(name);
    let (run, snapshot) = five_rows_streaming(d, name, &src, &dst);
    // a checkpoint after the snapshot's last batch
    std::thread::sleep(Duration::from_millis(800));
    signal(&run, "TERM");
    let first = finish(run, Duration::from_secs(30));
    assert!(snapshot, "{}", first.stderr);
    psql(&format!("SELECT pg_drop_replication_slot('sluice_{name}')"));
    let second = ended(d, name);
    drop_slot(name);
    assert_ne!(second.code, Some(0), "{}", second.stderr);
    assert!(
        second.stderr.contains("is gone after the snapshot") && !second.stderr.contains("0/0"),
        "{}",
        second.stderr
    );
}
