//! PostgreSQL change data capture (`mode = "cdc"`) against the real server: the
//! snapshot, then inserts, updates, deletes, truncates and schema changes streamed
//! over the replication protocol into an upsert sink or Debezium's envelope; kill -9
//! mid-stream; the slot's WAL; and the ways a publication, a slot or a table can go
//! wrong, each stopping loudly.

use std::time::Duration;

use rand::Rng;

use crate::postgres::{fresh, psql, server, url};
use crate::support::{finish, signal, spawn, workdir};

/// Drops a replication slot and its publication left by an earlier run, if any.
fn drop_stale_slot(slot: &str) {
    psql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}';\
         DROP PUBLICATION IF EXISTS {slot}"
    ));
}

/// Drops the replication slot the test's run made (it must exist) and its publication.
fn drop_slot(slot: &str) {
    psql(&format!(
        "SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION IF EXISTS {slot}"
    ));
}

/// `cdc.toml`: `src` by CDC into `dst`, upserted by `id` (pipeline, slot and
/// publication named after `dst`).
fn cdc_to_upsert(dir: &std::path::Path, src: &str, dst: &str) {
    std::fs::write(
        dir.join("cdc.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\npoll_interval = \"100ms\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [checkpoint]\ninterval = \"200ms\"\n",
            url()
        ),
    )
    .unwrap();
}

#[test]
fn cdc_snapshot_then_inserts_updates_deletes_rollback_and_alter_table_reach_the_target() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_cdc_src"), fresh("it_pg_cdc_dst"));
    let slot = "sluice_it_pg_cdc_dst";
    drop_stale_slot(slot);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v text, amount numeric(10,2), tags text[], at timestamptz); ALTER TABLE \"{src}\" REPLICA IDENTITY FULL;\
         INSERT INTO \"{src}\" VALUES (1, 'one', 1.10, '{{a,b}}', '2024-05-01 10:00:00+02'), (2, 'two', NULL, '{{}}', NULL), (3, 'three', 3.30, NULL, now());"
    ));
    cdc_to_upsert(d, &src, &dst);
    let child = spawn(d, &["run", "--quiet", "cdc.toml"]);
    let same = |cols: &str| {
        psql(&format!(
            "SELECT count(*) FROM ((SELECT {cols} FROM \"{src}\" EXCEPT SELECT {cols} FROM \"{dst}\") UNION ALL \
             (SELECT {cols} FROM \"{dst}\" EXCEPT SELECT {cols} FROM \"{src}\")) x"
        )) == "0"
    };
    let base = "id, v, amount, tags, at";
    let snapshot = crate::support::wait_until(Duration::from_secs(30), || {
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'"
        )) == "1"
            && same(base)
    });
    // one psql call per transaction: a multi-statement -c is one implicit transaction
    for sql in [
        format!("INSERT INTO \"{src}\" VALUES (4, 'four', 4.40, '{{\"x,y\",NULL}}', now()), (5, 'five', 5.50, NULL, NULL)"),
        format!("UPDATE \"{src}\" SET v = 'ONE', amount = 9.99 WHERE id = 1"),
        format!("DELETE FROM \"{src}\" WHERE id = 2"),
        format!("BEGIN; INSERT INTO \"{src}\" VALUES (99, 'rolled back', 0, NULL, NULL); ROLLBACK"),
        format!("INSERT INTO \"{src}\" VALUES (2, 'two again', 2.00, NULL, NULL)"),
        format!("DELETE FROM \"{src}\" WHERE id = 3"),
    ] {
        psql(&sql);
    }
    let changes = crate::support::wait_until(Duration::from_secs(30), || same(base));
    psql(&format!("ALTER TABLE \"{src}\" ADD COLUMN extra integer"));
    psql(&format!(
        "INSERT INTO \"{src}\" VALUES (6, 'six', 6.60, NULL, NULL, 42)"
    ));
    psql(&format!("UPDATE \"{src}\" SET extra = 7 WHERE id = 4"));
    let altered = crate::support::wait_until(Duration::from_secs(30), || {
        psql(&format!("SELECT count(*) FROM pg_attribute WHERE attrelid = '\"{dst}\"'::regclass AND attname = 'extra'")) == "1"
            && same("id, v, amount, tags, at, extra")
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    let advanced = psql(&format!("SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = '{slot}'"));
    drop_slot(slot);
    assert!(snapshot, "the snapshot did not arrive: {}", run.stderr);
    assert!(changes, "the changes did not arrive: {}", run.stderr);
    assert!(altered, "the ALTER TABLE did not arrive: {}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(advanced, "t");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM \"{dst}\" WHERE id IN (3, 99)"
        )),
        "0"
    );
}

#[test]
fn cdc_truncate_and_deletes_of_rows_with_not_null_columns_reach_postgres_and_sqlite() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_cdc_trunc_src"), fresh("it_pg_cdc_trunc_dst"));
    let slot = "sluice_it_pg_cdc_trunc_dst";
    drop_stale_slot(slot);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v text NOT NULL); ALTER TABLE \"{src}\" REPLICA IDENTITY FULL;\
         INSERT INTO \"{src}\" VALUES (1, 'one'), (2, 'two');"
    ));
    // the same changes into PostgreSQL and into SQLite, both upserted by key
    std::fs::write(
        d.join("cdc.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\npoll_interval = \"100ms\"\n\
             [sinks.pg]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [sinks.lite]\nconnector = \"sqlite\"\npath = \"out/t.db\"\ntable = \"t\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [checkpoint]\ninterval = \"200ms\"\n",
            url()
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "cdc.toml"]);
    let db = d.join("out/t.db");
    let rows = |table: &str| {
        let pg = psql(&format!(
            "SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM \"{table}\""
        ));
        if table == src {
            return pg;
        }
        let made = db.exists()
            && crate::support::sqlite(&db, "SELECT count(*) FROM sqlite_master WHERE name = 't'")
                == "1";
        let lite = if made {
            crate::support::sqlite(
                &db,
                "SELECT coalesce(group_concat(id || '=' || v, ','), '') FROM (SELECT * FROM t ORDER BY id)",
            )
        } else {
            "no table yet".into()
        };
        if lite == pg {
            pg
        } else {
            format!("postgres {pg}, sqlite {lite}")
        }
    };
    let dst_exists = || {
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'"
        )) == "1"
    };
    let snapshot = crate::support::wait_until(Duration::from_secs(30), || {
        dst_exists() && rows(&dst) == "1=one,2=two"
    });
    // a delete carries only the key: the NOT NULL column must not stop the stream
    psql(&format!("DELETE FROM \"{src}\" WHERE id = 1"));
    let deleted = crate::support::wait_until(Duration::from_secs(30), || rows(&dst) == "2=two");
    // rows before the truncate go, rows after it stay, within one transaction and across
    psql(&format!(
        "BEGIN; INSERT INTO \"{src}\" VALUES (3, 'three'); TRUNCATE \"{src}\"; INSERT INTO \"{src}\" VALUES (4, 'four'); COMMIT"
    ));
    psql(&format!("INSERT INTO \"{src}\" VALUES (5, 'five')"));
    let truncated =
        crate::support::wait_until(Duration::from_secs(30), || rows(&dst) == "4=four,5=five");
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    drop_slot(slot);
    assert!(
        snapshot,
        "the snapshot did not arrive: {} {}",
        rows(&dst),
        run.stderr
    );
    assert!(
        deleted,
        "the delete did not arrive: {} {}",
        rows(&dst),
        run.stderr
    );
    assert!(
        truncated,
        "the truncate did not arrive: {} {}",
        rows(&dst),
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(rows(&src), "4=four,5=five");
}

/// Every type the source reads arrives from the stream exactly as from the snapshot:
/// numerics beyond a double's digits, dates and timestamps before Christ and after
/// 9999, infinities, arrays with NULLs and quotes; a numeric with more fraction digits
/// than its column holds stops the run naming the column, never rounded.
#[test]
fn cdc_changes_carry_every_type_exactly_as_the_snapshot_does() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_cdc_types_src"), fresh("it_pg_cdc_types_dst"));
    let slot = "sluice_it_pg_cdc_types_dst";
    drop_stale_slot(slot);
    let columns = "n, f, r, b, dt, ts, tz, tm, ttz, u, j, iv, ia, ta, bo";
    let first = r#"'1234567890123456789012345678.0123456789', 0.1, 3.4028235e+38, '\x00ff10', '0044-03-15 BC',
        '0044-03-15 10:00:00.123456 BC', '2024-05-01 10:00:00.5+05:30', '24:00:00', '01:00:00+02',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": [1, 2.50]}', '1 year 2 mons 3 days 04:05:06.5',
        '{1,NULL,-3}', '{"a,b","q\"",NULL,"NULL"}', true"#;
    let second = r#"'-0.0000000001', '-Infinity', 'NaN', '\x', '12345-06-07', '2024-02-29 23:59:59.999999',
        '1900-01-01 00:00:00+00', '00:00:00.000001', '23:30:00-01', NULL, 'null', '-1 days', '{}', NULL, false"#;
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n numeric, f double precision, r real, b bytea, dt date, \
         ts timestamp, tz timestamptz, tm time, ttz timetz, u uuid, j jsonb, iv interval, ia integer[], ta text[], bo boolean);\
         ALTER TABLE \"{src}\" REPLICA IDENTITY FULL;\
         INSERT INTO \"{src}\" (id, {columns}) VALUES (1, {first}), (2, {second});"
    ));
    cdc_to_upsert(d, &src, &dst);
    let child = spawn(d, &["run", "--quiet", "cdc.toml"]);
    // the target's types where they differ: a time with zone, uuid, jsonb and interval
    // are read as their text
    let pairs = [
        "n", "f", "r", "b", "dt", "ts", "tz", "tm", "ttz", "u", "j", "iv", "ia", "ta", "bo",
    ]
    .map(|c| match c {
        "ttz" | "u" | "j" | "iv" => (format!("s.{c}::text"), format!("t.{c}")),
        c => (format!("s.{c}"), format!("t.{c}")),
    });
    let (s_cols, t_cols): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let differing = || {
        psql(&format!(
            "SELECT count(*) FROM \"{src}\" s FULL JOIN \"{dst}\" t USING (id) \
             WHERE s.id IS NULL OR t.id IS NULL OR ({}) IS DISTINCT FROM ({})",
            s_cols.join(", "),
            t_cols.join(", ")
        ))
    };
    let exists = || {
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'"
        )) == "1"
    };
    let snapshot =
        crate::support::wait_until(Duration::from_secs(30), || exists() && differing() == "0");
    // the same values again as inserts, then each row updated to the other's values
    psql(&format!(
        "INSERT INTO \"{src}\" (id, {columns}) VALUES (3, {first}), (4, {second})"
    ));
    psql(&format!(
        "UPDATE \"{src}\" s SET ({columns}) = (SELECT {columns} FROM \"{src}\" o WHERE o.id = 3 - s.id) WHERE s.id IN (1, 2)"
    ));
    let streamed = crate::support::wait_until(Duration::from_secs(30), || {
        exists() && psql(&format!("SELECT count(*) FROM \"{dst}\"")) == "4" && differing() == "0"
    });
    let swapped = psql(&format!("SELECT b FROM \"{dst}\" WHERE id = 1"));
    psql(&format!(
        "INSERT INTO \"{src}\" (id, n) VALUES (9, 1.00000000001)"
    ));
    let run = finish(child, Duration::from_secs(30));
    drop_slot(slot);
    assert!(
        snapshot,
        "the snapshot differs: {} rows; {}",
        differing(),
        run.stderr
    );
    assert!(
        streamed,
        "the changes differ: {} rows; {}",
        differing(),
        run.stderr
    );
    assert_eq!(swapped, "\\x", "the update did not arrive");
    assert_ne!(run.code, Some(0), "a numeric that does not fit was taken");
    assert!(
        run.stderr.contains("column \"n\"") && run.stderr.contains("fraction digits"),
        "{}",
        run.stderr
    );
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{dst}\" WHERE id = 9")),
        "0"
    );
}

/// Ten kills under a writer of inserts, updates and deletes, some updating only a small
/// column of a row with a large out-of-line value.
#[test]
fn kill_9_during_cdc_streaming_loses_and_repeats_nothing() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_cdckill_src"), fresh("it_pg_cdckill_dst"));
    let slot = "sluice_it_pg_cdckill_dst";
    drop_stale_slot(slot);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v text, n integer, big text); ALTER TABLE \"{src}\" REPLICA IDENTITY FULL;\
         INSERT INTO \"{src}\" SELECT g, 'seed', g, CASE WHEN g % 10 = 0 THEN \
             (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 300) i) END \
         FROM generate_series(1, 1000) g;"
    ));
    std::fs::write(
        d.join("cdc.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\npoll_interval = \"50ms\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [batch]\nmax_records = 100\n[checkpoint]\ninterval = \"100ms\"\n",
            url()
        ),
    )
    .unwrap();
    // a writer: 300 transactions of inserts, updates and deletes while sluice is killed
    let writer_src = src.clone();
    let writer = std::thread::spawn(move || {
        for i in 1001..1301 {
            psql(&format!(
                "INSERT INTO \"{writer_src}\" VALUES ({i}, 'new', {i}); UPDATE \"{writer_src}\" SET v = 'upd{i}', n = n + 1 WHERE id = {}; DELETE FROM \"{writer_src}\" WHERE id = {}",
                i - 500,
                i - 900
            ));
            // rows with a large (out-of-line) value: an update of a small column only
            psql(&format!(
                "UPDATE \"{writer_src}\" SET n = n + 1 WHERE id = {}",
                (i % 100) * 10 + 10
            ));
        }
    });
    let mut rng = rand::thread_rng();
    for _ in 0..10 {
        let child = spawn(d, &["run", "--quiet", "cdc.toml"]);
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..900)));
        signal(&child, "KILL");
        let _ = finish(child, Duration::from_secs(10));
    }
    writer.join().expect("writer");
    let child = spawn(d, &["run", "--quiet", "cdc.toml"]);
    let cols = "id, v, n, md5(big)";
    let same = crate::support::wait_until(Duration::from_secs(60), || {
        psql(&format!(
            "SELECT count(*) FROM ((SELECT {cols} FROM \"{src}\" EXCEPT SELECT {cols} FROM \"{dst}\") UNION ALL \
             (SELECT {cols} FROM \"{dst}\" EXCEPT SELECT {cols} FROM \"{src}\")) x"
        )) == "0"
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    drop_slot(slot);
    assert!(
        same,
        "the target differs from the source after 10 kills: {}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{dst}\"")),
        psql(&format!("SELECT count(*) FROM \"{src}\""))
    );
}

/// The snapshot before the changes is read in physical order here; the other CDC
/// tests read it in key order.
#[test]
fn cdc_debezium_envelope_has_before_after_source_op_and_ts() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let src = fresh("it_pg_dbz_src");
    let name = fresh("it_pg_dbz");
    let slot = format!("sluice_{name}");
    drop_stale_slot(&slot);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v text); ALTER TABLE \"{src}\" REPLICA IDENTITY FULL;\
         INSERT INTO \"{src}\" VALUES (1, 'snap');"
    ));
    std::fs::write(
        d.join("dbz.toml"),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\nmode = \"cdc\"\nenvelope = \"debezium\"\npoll_interval = \"100ms\"\nsnapshot_order = \"physical\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[checkpoint]\ninterval = \"200ms\"\n",
            url()
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "dbz.toml"]);
    let out = d.join("out");
    let snap = crate::support::wait_until(Duration::from_secs(30), || {
        crate::support::jsonl_lines(&out).len() == 1
    });
    psql(&format!("INSERT INTO \"{src}\" VALUES (2, 'new')"));
    psql(&format!("UPDATE \"{src}\" SET v = 'changed' WHERE id = 1"));
    psql(&format!("DELETE FROM \"{src}\" WHERE id = 2"));
    let all = crate::support::wait_until(Duration::from_secs(30), || {
        crate::support::jsonl_lines(&out).len() == 4
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    drop_slot(&slot);
    assert!(
        snap && all,
        "records missing: {:?}\n{}",
        crate::support::jsonl_lines(&out),
        run.stderr
    );
    let mut records: Vec<serde_json::Value> = crate::support::jsonl_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // files are named by position hash, not time: order by commit time and LSN
    records.sort_by_key(|r| {
        (
            r["source"]["ts_ms"].as_i64(),
            r["source"]["lsn"].as_i64().unwrap_or(0),
        )
    });
    let ops: Vec<&str> = records.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["r", "c", "u", "d"], "{records:?}");
    assert_eq!(
        records[0]["after"],
        serde_json::json!({"id": 1, "v": "snap"})
    );
    assert_eq!(records[0]["source"]["snapshot"], "true");
    assert_eq!(
        records[1]["after"],
        serde_json::json!({"id": 2, "v": "new"})
    );
    assert_eq!(
        records[2]["after"],
        serde_json::json!({"id": 1, "v": "changed"})
    );
    assert_eq!(records[3]["after"], serde_json::Value::Null);
    assert_eq!(records[3]["before"]["id"], 2);
    assert_eq!(records[3]["source"]["table"], src.as_str());
    assert!(records[3]["source"]["lsn"].as_i64().unwrap() > 0);
    assert!(records[3]["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

/// A CDC slot whose table has no changes still moves to the current WAL position
/// (`heartbeat_interval`), so WAL written for other tables is released; changes after
/// the heartbeat still arrive.
#[test]
fn an_idle_cdc_slot_moves_past_other_tables_wal_and_later_changes_still_arrive() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst, other) = (
        fresh("it_pg_cdc_hb_src"),
        fresh("it_pg_cdc_hb_dst"),
        fresh("it_pg_cdc_hb_other"),
    );
    let slot = "sluice_it_pg_cdc_hb_dst";
    drop_stale_slot(slot);
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, v text); ALTER TABLE \"{src}\" REPLICA IDENTITY FULL; INSERT INTO \"{src}\" VALUES (1, 'one');\
         CREATE TABLE \"{other}\" (id bigint, pad text)"
    ));
    cdc_to_upsert(d, &src, &dst);
    let toml = std::fs::read_to_string(d.join("cdc.toml")).unwrap();
    std::fs::write(
        d.join("cdc.toml"),
        toml.replace(
            "poll_interval = \"100ms\"\n",
            "poll_interval = \"100ms\"\nheartbeat_interval = \"1s\"\n",
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "cdc.toml"]);
    let rows = |table: &str| {
        psql(&format!(
            "SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM \"{table}\""
        ))
    };
    let dst_has = |want: &str| {
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{dst}'"
        )) == "1"
            && rows(&dst) == want
    };
    let snapshot = crate::support::wait_until(Duration::from_secs(30), || dst_has("1=one"));
    // WAL for a table the slot does not publish, then where the server's WAL is
    psql(&format!(
        "INSERT INTO \"{other}\" SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g"
    ));
    let wal = psql("SELECT pg_current_wal_lsn()");
    let past = || {
        psql(&format!(
            "SELECT confirmed_flush_lsn >= '{wal}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )) == "t"
    };
    let moved = crate::support::wait_until(Duration::from_secs(30), past);
    psql(&format!("INSERT INTO \"{src}\" VALUES (2, 'two')"));
    let later = crate::support::wait_until(Duration::from_secs(30), || dst_has("1=one,2=two"));
    let position = psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    drop_slot(slot);
    assert!(snapshot, "the snapshot did not arrive: {}", run.stderr);
    assert!(
        moved,
        "the slot stayed at {position}, before the WAL position {wal}: {}",
        run.stderr
    );
    assert!(
        later,
        "a change after the heartbeat did not arrive: {} {}",
        rows(&dst),
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}
