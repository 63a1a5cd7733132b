//! The PostgreSQL sink against the real server, verified with psql: every type, upsert
//! (last record of a key wins), schema evolution, a NOT NULL violation, a missing
//! database, and kill -9 at random points with exactly-once results.

use std::process::Command;
use std::time::Duration;

use rand::Rng;

use crate::support::{finish, python, signal, sluice, spawn, workdir};

/// The PostgreSQL tests run one at a time: one of them restarts the server.
static SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn server() -> std::sync::MutexGuard<'static, ()> {
    SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The test database (run.sh exports it after making sure the server runs).
pub(crate) fn url() -> String {
    std::env::var("SLUICE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs SQL through psql; returns the unaligned, tuples-only output.
pub(crate) fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-q", "-d", &url(), "-c", sql])
        .output()
        .expect("psql client");
    assert!(
        out.status.success(),
        "psql failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Makes the storing of sink `sink`'s offsets of pipeline `pipeline` take 200 ms (a
/// trigger named `name` sleeps in the offsets table), so that kills fall between that
/// sink's flush and the others'; dropped with the returned guard, also when the test
/// fails. The offsets table must exist (a PostgreSQL sink has opened).
pub(crate) fn slow_offsets(name: &str, pipeline: &str, sink: &str) -> SlowOffsets {
    psql(&format!(
        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;\
         CREATE OR REPLACE TRIGGER {name} AFTER INSERT OR UPDATE ON sluice_offsets FOR EACH ROW \
         WHEN (NEW.pipeline = '{pipeline}' AND NEW.sink = '{sink}') EXECUTE FUNCTION {name}();"
    ));
    SlowOffsets(name.to_string())
}

/// Drops the trigger of [`slow_offsets`].
pub(crate) struct SlowOffsets(String);

impl Drop for SlowOffsets {
    fn drop(&mut self) {
        psql(&format!(
            "DROP TRIGGER IF EXISTS {0} ON sluice_offsets",
            self.0
        ));
    }
}

/// A table name of this test, dropped first (with its offsets row).
pub(crate) fn fresh(table: &str) -> String {
    psql(&format!(
        "DROP TABLE IF EXISTS \"{table}\"; DO $$ BEGIN IF to_regclass('public.sluice_offsets') IS NOT NULL THEN \
         DELETE FROM sluice_offsets WHERE pipeline = '{table}'; END IF; END $$"
    ));
    table.to_string()
}

fn pipeline(dir: &std::path::Path, table: &str, input: &str, schema: &str, sink_extra: &str) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/data.jsonl"), input).unwrap();
    std::fs::write(
        dir.join("pg.toml"),
        format!(
            "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/data.jsonl\"\n{schema}\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\n{sink_extra}\n",
            url()
        ),
    )
    .unwrap();
}

#[test]
fn every_type_arrives_with_its_postgres_type_and_value() {
    let _server = server();
    let dir = workdir();
    let t = fresh("it_pg_types");
    let schema = r#"schema = [
  { name = "id", type = "int64", nullable = false }, { name = "small", type = "int16" },
  { name = "i", type = "int32" }, { name = "f", type = "float64" }, { name = "r", type = "float32" },
  { name = "b", type = "bool" }, { name = "s", type = "string" }, { name = "bin", type = "binary" },
  { name = "amount", type = "decimal(20,4)" }, { name = "d", type = "date" }, { name = "t", type = "time" },
  { name = "ts", type = "timestamp" }, { name = "tstz", type = "timestamptz" },
  { name = "tags", type = "list<string>" }, { name = "nums", type = "list<int64>" },
  { name = "obj", type = "struct<a: int64, b: string>" },
]"#;
    let input = concat!(
        r#"{"id":1,"small":-32768,"i":2147483647,"f":-1.25e300,"r":1.5,"b":true,"s":"tab\there \"q\" \\ back\nslash ✓","bin":"deadbeef00","amount":"1234567890123456.7890","d":"2024-02-29","t":"23:59:59.999999","ts":"2024-05-01T10:00:00.123456","tstz":"2024-05-01T10:00:00.123456Z","tags":["a","b,c","",null],"nums":[1,-2],"obj":{"a":1,"b":"x"}}"#,
        "\n",
        r#"{"id":2}"#,
        "\n",
        r#"{"id":3,"tags":[],"nums":[],"s":""}"#,
        "\n"
    );
    pipeline(dir.path(), &t, input, schema, "");
    let run = sluice(dir.path(), &["run", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let types = psql(&format!(
        "SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = '\"{t}\"'::regclass AND attnum > 0"
    ));
    assert_eq!(
        types,
        "bigint,smallint,integer,double precision,real,boolean,text,bytea,numeric(20,4),date,time without time zone,\
         timestamp without time zone,timestamp with time zone,text[],bigint[],jsonb"
    );
    let row = psql(&format!(
        "SET TIME ZONE 'UTC'; SELECT small, i, f, r, b, s, encode(bin, 'hex'), amount, d, t, ts, tstz, tags, nums, obj FROM \"{t}\" WHERE id = 1"
    ));
    assert_eq!(
        row,
        "-32768|2147483647|-1.25e+300|1.5|t|tab\there \"q\" \\ back\nslash ✓|deadbeef00|1234567890123456.7890|2024-02-29|23:59:59.999999|\
         2024-05-01 10:00:00.123456|2024-05-01 10:00:00.123456+00|{a,\"b,c\",\"\",NULL}|{1,-2}|{\"a\": 1, \"b\": \"x\"}"
    );
    assert_eq!(psql(&format!("SELECT count(*) FROM \"{t}\" WHERE id = 2 AND s IS NULL AND tags IS NULL AND amount IS NULL")), "1");
    assert_eq!(
        psql(&format!(
            "SELECT cardinality(tags), s = '' FROM \"{t}\" WHERE id = 3"
        )),
        "0|t"
    );
}

#[test]
fn upsert_keeps_the_last_record_of_each_key_and_evolve_adds_columns() {
    let _server = server();
    let dir = workdir();
    let t = fresh("it_pg_upsert");
    let input = "{\"id\":1,\"v\":\"a\"}\n{\"id\":2,\"v\":\"b\"}\n{\"id\":1,\"v\":\"c\"}\n";
    pipeline(
        dir.path(),
        &t,
        input,
        "",
        "mode = \"upsert\"\nkey = [\"id\"]",
    );
    let run = sluice(dir.path(), &["run", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM \"{t}\""
        )),
        "1=c,2=b"
    );
    // a later file with a new field: the column is added, old rows get NULL
    std::fs::write(
        dir.path().join("in/more.jsonl"),
        "{\"id\":2,\"v\":\"d\",\"extra\":7}\n",
    )
    .unwrap();
    let toml = std::fs::read_to_string(dir.path().join("pg.toml"))
        .unwrap()
        .replace("in/data.jsonl", "in/*.jsonl");
    std::fs::write(dir.path().join("pg.toml"), toml).unwrap();
    let run = sluice(dir.path(), &["run", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(psql(&format!("SELECT string_agg(id || '=' || v || '/' || coalesce(extra::text, '-'), ',' ORDER BY id) FROM \"{t}\"")), "1=c/-,2=d/7");
}

#[test]
fn a_not_null_violation_stops_and_a_missing_database_is_named() {
    let _server = server();
    let dir = workdir();
    let t = fresh("it_pg_notnull");
    psql(&format!(
        "CREATE TABLE \"{t}\" (id bigint NOT NULL, v text)"
    ));
    pipeline(
        dir.path(),
        &t,
        "{\"id\":1,\"v\":\"a\"}\n{\"v\":\"no id\"}\n",
        "",
        "",
    );
    let run = sluice(dir.path(), &["run", "pg.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("column \"id\" is NOT NULL in the sink but 1 of 2 records have no value"),
        "{}",
        run.stderr
    );
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{t}\"")),
        "0",
        "nothing of the failed transaction is visible"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[source]\nconnector = \"datagen\"\ncount = 1\n[sink]\nconnector = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/no_such_db_sluice\"\ntable = \"x\"\n",
    )
    .unwrap();
    let run = sluice(dir.path(), &["check", "bad.toml"]);
    assert_eq!(run.code, Some(1));
    // refused credentials are an auth error (local auth is trust here, so an unknown
    // role stands in for a wrong password: both are SQLSTATE class 28)
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[source]\nconnector = \"datagen\"\ncount = 1\n[sink]\nconnector = \"postgres\"\nurl = \"postgres://no_such_role_sluice@127.0.0.1:5432/test\"\ntable = \"x\"\n",
    )
    .unwrap();
    let run_auth = sluice(dir.path(), &["check", "auth.toml"]);
    assert_eq!(run_auth.code, Some(1));
    assert!(
        run_auth
            .stdout
            .contains("auth error: cannot connect to PostgreSQL")
            && run_auth.stdout.contains("no_such_role_sluice"),
        "{}",
        run_auth.stdout
    );
    assert!(
        run.stdout
            .contains("not_found error: cannot connect to PostgreSQL")
            && run.stdout.contains("no_such_db_sluice"),
        "{}",
        run.stdout
    );
}

#[test]
fn kill_9_into_postgres_delivers_every_record_exactly_once() {
    let _server = server();
    const ROWS: usize = 200_000;
    let dir = workdir();
    let d = dir.path();
    let t = fresh("it_pg_crash");
    std::fs::create_dir_all(d.join("in")).unwrap();
    python(&format!(
        "with open('{}/in/data.jsonl', 'w') as f:\n    [f.write('{{\"id\": %d, \"amount\": \"%d.%02d\"}}\\n' % (i, i, i % 100)) for i in range({ROWS})]",
        d.display()
    ));
    std::fs::write(
        d.join("pg.toml"),
        format!(
            "name = \"{t}\"\n[source]\nconnector = \"file\"\npath = \"in/data.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\", nullable = false }}, {{ name = \"amount\", type = \"decimal(12,2)\" }}]\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{t}\"\n[batch]\nmax_records = 2000\n[checkpoint]\ninterval = \"50ms\"\n",
            url()
        ),
    )
    .unwrap();
    let mut rng = rand::thread_rng();
    for _ in 0..10 {
        let child = spawn(d, &["run", "--quiet", "pg.toml"]);
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..900)));
        signal(&child, "KILL");
        let _ = finish(child, Duration::from_secs(10));
    }
    let run = sluice(d, &["run", "--quiet", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM \"{t}\""
        )),
        format!("{ROWS}|{ROWS}|0|{}", ROWS - 1)
    );
    assert_eq!(
        psql(&format!("SELECT amount FROM \"{t}\" WHERE id = 12345")),
        "12345.45"
    );
}

#[test]
fn postgres_to_parquet_to_postgres_gives_identical_rows() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_fidelity_src"), fresh("it_pg_fidelity_dst"));
    psql(&format!(
        "DO $$ BEGIN CREATE TYPE it_mood AS ENUM ('sad', 'ok', 'happy'); EXCEPTION WHEN duplicate_object THEN NULL; END $$;\
         CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, sm smallint, i integer, big bigint, amount numeric(20,4), r real,\
           f double precision, b boolean, t text, v varchar(20), bin bytea, d date, tm time, ts timestamp, tstz timestamptz,\
           u uuid, j json, jb jsonb, ints integer[], texts text[], mood it_mood, span interval);\
         INSERT INTO \"{src}\" VALUES\
           (1, -32768, 2147483647, 9223372036854775807, 1234567890123456.7890, 1.5, -1.25e300, true, 'h\u{e9}llo \"q\" \\\\ \u{4e2d}\ttab',\
            'vc', '\\xdeadbeef00', '2024-02-29', '23:59:59.999999', '2024-05-01 10:00:00.123456', '2024-05-01 10:00:00.123456+02',\
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2]}}', '{{\"b\": {{\"c\": null}}}}', '{{1,NULL,-3}}', '{{\"x,y\",\"\",NULL}}', 'happy', '1 day 02:03:04'),\
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),\
           (3, 0, 0, -9223372036854775808, -0.0001, 0, 0.1, false, '', '', '\\x', '1970-01-01', '00:00:00', '1900-01-01 00:00:00',\
            '1970-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000', '[]', '{{}}', '{{}}', '{{}}', 'sad', '0 seconds');"
    ));
    std::fs::write(
        d.join("out.toml"),
        format!(
            "name = \"{src}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out/parquet\"\nformat = \"parquet\"\n[batch]\nmax_records = 2\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "out.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let types = python(&format!(
        "import pyarrow.parquet as pq, glob\nt = pq.read_table(glob.glob('{}/out/parquet/*.parquet'))\nprint(t.num_rows)\nprint(t.schema.field('amount').type, t.schema.field('tstz').type, t.schema.field('ints').type)",
        d.display()
    ));
    assert_eq!(
        types,
        "3\ndecimal128(20, 4) timestamp[us, tz=UTC] list<item: int32>"
    );

    std::fs::write(
        d.join("back.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"file\"\npath = \"out/parquet/*.parquet\"\nformat = \"parquet\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{dst}\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "back.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let cols = "id, sm, i, big, amount, r, f, b, t, v::text, encode(bin, 'hex'), d, tm, ts, tstz, u::text, j::text, jb::text, ints, texts, mood::text, span::text";
    let diff = psql(&format!(
        "SELECT count(*) FROM ((SELECT {cols} FROM \"{src}\" EXCEPT SELECT {cols} FROM \"{dst}\") UNION ALL (SELECT {cols} FROM \"{dst}\" EXCEPT SELECT {cols} FROM \"{src}\")) x"
    ));
    assert_eq!(
        diff, "0",
        "rows differ after Postgres -> Parquet -> Postgres"
    );
    assert_eq!(psql(&format!("SELECT count(*) FROM \"{dst}\"")), "3");
    assert_eq!(psql(&format!("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '\"{dst}\"'::regclass AND attname = 'amount'")), "numeric(20,4)");
}

#[test]
fn kill_9_during_a_snapshot_then_upsert_gives_every_row_once_and_incremental_picks_up_new_rows() {
    let _server = server();
    const ROWS: usize = 100_000;
    let dir = workdir();
    let d = dir.path();
    let (src, dst) = (fresh("it_pg_snap_src"), fresh("it_pg_snap_dst"));
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, amount numeric(12,2));\
         INSERT INTO \"{src}\" SELECT g, '2024-01-01'::timestamptz + (g / 100) * interval '1 second', g / 100.0 FROM generate_series(1, {ROWS}) g;"
    ));
    let toml = |mode: &str| {
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\n{mode}\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{dst}\"\nmode = \"upsert\"\nkey = [\"id\"]\n\
             [batch]\nmax_records = 1000\n[checkpoint]\ninterval = \"50ms\"\n",
            url()
        )
    };
    std::fs::write(d.join("snap.toml"), toml("mode = \"snapshot\"")).unwrap();
    let mut rng = rand::thread_rng();
    for _ in 0..10 {
        let child = spawn(d, &["run", "--quiet", "snap.toml"]);
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..600)));
        signal(&child, "KILL");
        let _ = finish(child, Duration::from_secs(10));
    }
    let run = sluice(d, &["run", "--quiet", "snap.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), sum(amount) FROM \"{dst}\""
        )),
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), sum(amount) FROM \"{src}\""
        ))
    );

    // incremental by (updated_at, id): rows sharing the last timestamp are not skipped
    let inc = fresh("it_pg_snap_inc");
    std::fs::write(
        d.join("inc.toml"),
        toml(
            "mode = \"incremental\"\ncursor = [\"updated_at\", \"id\"]\npoll_interval = \"100ms\"",
        )
        .replace(&format!("name = \"{dst}\""), &format!("name = \"{inc}\"")),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "inc.toml"]);
    assert!(
        crate::support::wait_until(Duration::from_secs(30), || psql(&format!(
            "SELECT count(*) FROM sluice_offsets WHERE pipeline = '{inc}'"
        )) == "1"),
        "incremental did not checkpoint"
    );
    let last = psql(&format!("SELECT max(updated_at) FROM \"{src}\""));
    psql(&format!("INSERT INTO \"{src}\" VALUES ({}, '{last}', 1.00), ({}, '{last}'::timestamptz + interval '1 hour', 2.00)", ROWS + 1, ROWS + 2));
    let arrived = crate::support::wait_until(Duration::from_secs(30), || {
        psql(&format!("SELECT count(*) FROM \"{dst}\" WHERE id > {ROWS}")) == "2"
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert!(arrived, "new rows did not arrive: {}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn a_physical_snapshot_of_a_keyless_table_survives_kill_9_exactly_once_and_rereads_a_rewritten_table(
) {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (src, dst, again) = (
        fresh("it_pg_phys_src"),
        fresh("it_pg_phys_dst"),
        fresh("it_pg_phys_again"),
    );
    // no primary key; a hole of deleted rows, vacuumed, leaves block ranges with no rows
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint NOT NULL, v text);\
         INSERT INTO \"{src}\" SELECT g, md5(g::text) FROM generate_series(1, 300000) g;\
         DELETE FROM \"{src}\" WHERE id BETWEEN 100001 AND 200000;"
    ));
    psql(&format!("VACUUM ANALYZE \"{src}\""));
    // in key order the table cannot be read, and `check` says so
    std::fs::write(
        d.join("keyed.toml"),
        format!(
            "name = \"{dst}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\n\
             [sink]\nconnector = \"blackhole\"\n",
            url()
        ),
    )
    .unwrap();
    let check = sluice(d, &["check", "keyed.toml"]);
    assert_ne!(check.code, Some(0));
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(
        said.contains(&format!("table \"public\".\"{src}\" has no primary key"))
            && said.contains("snapshot_order = \"physical\""),
        "{said}"
    );
    let toml = |name: &str, max_records: usize, readers: usize| {
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"postgres\"\nurl = \"{0}\"\ntables = [\"{src}\"]\nsnapshot_order = \"physical\"\n\
             snapshot_readers = {readers}\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{0}\"\ntable = \"{name}\"\n\
             [batch]\nmax_records = {max_records}\n[checkpoint]\ninterval = \"50ms\"\n",
            url()
        )
    };
    // insert mode, offsets in the sink's transaction: a resume point one row off would
    // show as a missing or a repeated id. Three readers cut the table into three block
    // ranges, the middle one of (almost) deleted rows only; the last run, with one reader,
    // resumes the three ranges stored
    std::fs::write(d.join("snap.toml"), toml(&dst, 1000, 3)).unwrap();
    let mut rng = rand::thread_rng();
    let offsets = || {
        psql(&format!(
            "SELECT offsets FROM sluice_offsets WHERE pipeline = '{dst}'"
        ))
    };
    for k in 0..10 {
        let child = spawn(d, &["run", "--quiet", "snap.toml"]);
        match k {
            9 => {
                crate::support::wait_until(Duration::from_secs(30), || offsets().contains("ctid"));
            }
            _ => std::thread::sleep(Duration::from_millis(rng.gen_range(50..600))),
        }
        signal(&child, "KILL");
        let _ = finish(child, Duration::from_secs(10));
    }
    assert_eq!(offsets().matches("\"from\"").count(), 3, "{}", offsets());
    std::fs::write(d.join("snap.toml"), toml(&dst, 1000, 1)).unwrap();
    let run = sluice(d, &["run", "--quiet", "snap.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let totals = |table: &str| {
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), sum(id), count(*) FILTER (WHERE v = md5(id::text)) FROM \"{table}\""
        ))
    };
    assert_eq!(totals(&dst), "200000|200000|30000100000|200000");
    assert_eq!(totals(&dst), totals(&src));

    // stopped part-way, then VACUUM FULL gives every row a new place: the snapshot
    // starts over (rows delivered before come again) and none is missed
    std::fs::write(d.join("again.toml"), toml(&again, 100, 1)).unwrap();
    let child = spawn(d, &["run", "again.toml"]);
    let stored = || {
        psql(&format!(
            "SELECT offsets FROM sluice_offsets WHERE pipeline = '{again}'"
        ))
    };
    assert!(
        crate::support::wait_until(Duration::from_secs(30), || stored().contains("ctid")),
        "no physical offset was stored"
    );
    signal(&child, "KILL");
    let _ = finish(child, Duration::from_secs(10));
    assert!(!stored().contains("\"done\":true"), "{}", stored());
    let before: usize = psql(&format!("SELECT count(*) FROM \"{again}\""))
        .parse()
        .unwrap();
    assert!(
        before > 0 && before < 200_000,
        "{before} rows before the rewrite"
    );
    psql(&format!("VACUUM FULL \"{src}\""));
    let run = sluice(d, &["run", "again.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("rewritten"), "{}", run.stderr);
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT id) FROM \"{again}\""
        )),
        format!("{}|200000", 200_000 + before)
    );

    // three readers in a `snapshot` run read in one snapshot, exported by a
    // transaction that stays open while the ranges are read (here held up by a sink
    // waiting for a lock)
    let held = fresh("it_pg_phys_held");
    psql(&format!(
        "CREATE TABLE \"{held}\" (id bigint NOT NULL, v text)"
    ));
    let lock = Command::new("psql")
        .args(["-X", "-q", "-d", &url(), "-c"])
        .arg(format!(
            "BEGIN; LOCK TABLE \"{held}\" IN SHARE MODE; SELECT pg_sleep(4); COMMIT"
        ))
        .spawn()
        .unwrap();
    std::fs::write(d.join("held.toml"), toml(&held, 1000, 3)).unwrap();
    let child = spawn(d, &["run", "--quiet", "held.toml"]);
    let exporter = || {
        psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice {held} source' \
             AND state = 'idle in transaction' AND query LIKE '%pg_export_snapshot()%'"
        ))
    };
    let exported = crate::support::wait_until(Duration::from_secs(10), || exporter() == "1");
    let run = finish(child, Duration::from_secs(60));
    let _ = lock.wait_with_output();
    assert!(exported, "no exported snapshot was held: {}", run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(totals(&held), totals(&src));
    assert_eq!(exporter(), "0");
}

#[test]
fn a_postgres_restart_mid_run_is_retried_and_nothing_is_lost() {
    const ROWS: usize = 30_000;
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = fresh("it_pg_restart");
    std::fs::write(
        d.join("r.toml"),
        format!(
            "name = \"{t}\"\n[source]\nconnector = \"datagen\"\ncount = {ROWS}\nrate = 8000\n\
             schema = [{{ name = \"id\", type = \"int64\", nullable = false }}, {{ name = \"v\", type = \"string\" }}]\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{t}\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"200ms\"\n\
             [errors]\nretry_backoff = \"200ms\"\nretry_backoff_max = \"2s\"\nmax_retries = 20\n",
            url()
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "r.toml"]);
    assert!(
        crate::support::wait_until(Duration::from_secs(30), || {
            psql(&format!(
                "SELECT count(*) > 0 FROM pg_tables WHERE tablename = '{t}'"
            )) == "t"
                && psql(&format!("SELECT count(*) FROM \"{t}\"")) != "0"
        }),
        "the pipeline never wrote"
    );
    restart_postgres();
    let run = finish(child, Duration::from_secs(120));
    assert_restarted(&run);
    assert_eq!(
        psql(&format!("SELECT count(*), count(DISTINCT id) FROM \"{t}\"")),
        format!("{ROWS}|{ROWS}")
    );
}

/// Restarts the PostgreSQL server (the tests hold `server()`).
pub(crate) fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version.to_string_lossy(),
            "main",
            "restart",
        ])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "restarting PostgreSQL failed");
}

/// The run ended well and its log shows the retry or restart.
pub(crate) fn assert_restarted(run: &crate::support::Run) {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("retrying")
            || run.stderr.contains("restarting from its last checkpoint"),
        "the restart left no trace in the log: {}",
        run.stderr
    );
}

#[test]
fn a_postgres_restart_during_a_physical_snapshot_is_retried_and_nothing_is_lost() {
    const ROWS: usize = 2_000_000;
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let src = fresh("it_pg_phys_restart_src");
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint NOT NULL, v text);\
         INSERT INTO \"{src}\" SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
    ));
    // into files, so that only the source loses its connection: its COPY stream
    // breaks mid-table, and the retried read must go on after the last row delivered
    std::fs::write(
        d.join("r.toml"),
        format!(
            "name = \"{src}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\nsnapshot_order = \"physical\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [checkpoint]\ninterval = \"100ms\"\n\
             [errors]\nretry_backoff = \"200ms\"\nretry_backoff_max = \"2s\"\nmax_retries = 20\n",
            url()
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "r.toml"]);
    let out = d.join("out");
    assert!(
        crate::support::wait_until(Duration::from_secs(60), || {
            std::fs::read_dir(&out).is_ok_and(|mut files| files.next().is_some())
        }),
        "the pipeline never wrote"
    );
    restart_postgres();
    let run = finish(child, Duration::from_secs(180));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("source read failed, retrying"),
        "the source did not retry (the snapshot ended before the restart?): {}",
        run.stderr
    );
    let counted = python(&format!(
        "import glob, json\nids = [json.loads(l)['id'] for f in glob.glob('{}/*.jsonl') for l in open(f)]\n\
         print(len(ids), len(set(ids)), sum(ids))",
        out.display()
    ));
    assert_eq!(
        counted,
        format!("{ROWS} {ROWS} {}", ROWS * (ROWS + 1) / 2),
        "every row once"
    );
}

#[test]
fn a_query_is_read_in_key_order_and_a_bad_query_is_named() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let (orders, customers) = (fresh("it_pg_q_orders"), fresh("it_pg_q_customers"));
    psql(&format!(
        "CREATE TABLE \"{customers}\" (cid int PRIMARY KEY, country text NOT NULL);\
         CREATE TABLE \"{orders}\" (id bigint PRIMARY KEY, cid int, total numeric(10,2));\
         INSERT INTO \"{customers}\" VALUES (1, 'DE'), (2, 'FR');\
         INSERT INTO \"{orders}\" SELECT g, 1 + g % 2, g * 1.25 FROM generate_series(1, 7) g;"
    ));
    let pipeline = |name: &str, query: &str| {
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\nquery = \"{query}\"\nkey = [\"id\"]\n\
                 [sink]\nconnector = \"file\"\npath = \"{name}\"\nformat = \"json\"\n[batch]\nmax_records = 2\n",
                url()
            ),
        )
        .unwrap();
    };
    pipeline(
        "joined",
        &format!(
            "SELECT o.id, o.total, c.country FROM \\\"{orders}\\\" o JOIN \\\"{customers}\\\" c USING (cid) WHERE o.id <> 4;"
        ),
    );
    let run = sluice(d, &["run", "joined.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut rows: Vec<serde_json::Value> = crate::support::jsonl_lines(&d.join("joined"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    let got: Vec<String> = rows
        .iter()
        .map(|r| format!("{}:{}:{}", r["id"], r["total"], r["country"]))
        .collect();
    assert_eq!(
        got,
        [
            "1:1.25:\"FR\"",
            "2:2.5:\"DE\"",
            "3:3.75:\"FR\"",
            "5:6.25:\"FR\"",
            "6:7.5:\"DE\"",
            "7:8.75:\"FR\""
        ]
    );
    // the types come from the query: numeric(10,2) stays a decimal
    let schema = sluice(d, &["schema", "joined.toml"]);
    assert!(
        schema
            .stdout
            .contains(r#"{ name = "total", type = "decimal(10,2)", nullable = true }"#),
        "{}",
        schema.stdout
    );

    pipeline("broken", "SELECT nope FROM it_pg_q_nowhere");
    let run = sluice(d, &["run", "broken.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("query") && run.stderr.contains("it_pg_q_nowhere"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_wider_numeric_widens_the_column_without_a_rewrite() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = fresh("it_pg_widen");
    let schema = |p: u8| {
        format!(
            r#"schema = [{{ name = "id", type = "int64", nullable = false }}, {{ name = "amount", type = "decimal({p},2)" }}]"#
        )
    };
    pipeline(d, &t, "{\"id\":1,\"amount\":\"123.45\"}\n", &schema(5), "");
    let run = sluice(d, &["run", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let column_type = || {
        psql(&format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '\"{t}\"'::regclass AND attname = 'amount'"
        ))
    };
    assert_eq!(column_type(), "numeric(5,2)");
    let relfile = || {
        psql(&format!(
            "SELECT relfilenode FROM pg_class WHERE oid = '\"{t}\"'::regclass"
        ))
    };
    let before = relfile();

    // a later run brings decimal(8,2) values: the column widens, the table is not rewritten
    std::fs::write(
        d.join("in/more.jsonl"),
        "{\"id\":2,\"amount\":\"123456.78\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("more.toml"),
        format!(
            "name = \"{t}-more\"\n[source]\nconnector = \"file\"\npath = \"in/more.jsonl\"\n{}\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{t}\"\n",
            schema(8),
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "more.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(column_type(), "numeric(8,2)");
    assert_eq!(relfile(), before, "the table was rewritten");
    assert_eq!(
        psql(&format!("SELECT id, amount FROM \"{t}\" ORDER BY id")),
        "1|123.45\n2|123456.78"
    );
    psql(&format!(
        "DELETE FROM sluice_offsets WHERE pipeline = '{t}-more'"
    ));
}

#[test]
fn binary_copy_writes_every_scalar_type_exactly() {
    let _server = server();
    let dir = workdir();
    let t = fresh("it_pg_binary");
    // no list or struct column: the sink uses the binary COPY format
    let schema = r#"schema = [
  { name = "id", type = "int64", nullable = false }, { name = "small", type = "int16" }, { name = "i", type = "int32" },
  { name = "f", type = "float64" }, { name = "r", type = "float32" }, { name = "b", type = "bool" },
  { name = "s", type = "string" }, { name = "bin", type = "binary" }, { name = "amount", type = "decimal(20,4)" },
  { name = "d", type = "date" }, { name = "t", type = "time" }, { name = "ts", type = "timestamp" },
  { name = "tstz", type = "timestamptz" }, { name = "ms", type = "timestamp(ms)" },
]"#;
    let input = concat!(
        r#"{"id":1,"small":-32768,"i":2147483647,"f":-1.25e300,"r":1.5,"b":true,"s":"h\u00e9llo \t \\ ✓","bin":"deadbeef00","amount":"1234567890123456.7890","d":"1969-07-20","t":"23:59:59.999999","ts":"1900-01-01T00:00:00.000001","tstz":"2024-05-01T10:00:00.123456Z","ms":"2000-01-01T00:00:00.001"}"#,
        "\n",
        r#"{"id":2,"amount":"-0.0001","b":false,"s":"","bin":""}"#,
        "\n",
        r#"{"id":3,"amount":"0","f":0.1,"r":-0.5,"d":"2000-01-01","tstz":"1999-12-31T23:59:59.999999Z"}"#,
        "\n",
        r#"{"id":4,"amount":"10000.0000","small":0}"#,
        "\n"
    );
    pipeline(dir.path(), &t, input, schema, "");
    let run = sluice(dir.path(), &["run", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows = psql(&format!(
        "SET TIME ZONE 'UTC'; SELECT id, small, i, f, r, b, s, encode(bin, 'hex'), amount, d, t, ts, tstz, ms FROM \"{t}\" ORDER BY id"
    ));
    assert_eq!(
        rows,
        "1|-32768|2147483647|-1.25e+300|1.5|t|h\u{e9}llo \t \\ ✓|deadbeef00|1234567890123456.7890|1969-07-20|23:59:59.999999|1900-01-01 00:00:00.000001|2024-05-01 10:00:00.123456+00|2000-01-01 00:00:00.001\n\
         2|||||f|||-0.0001|||||\n\
         3|||0.1|-0.5||||0.0000|2000-01-01|||1999-12-31 23:59:59.999999+00|\n\
         4|0|||||||10000.0000|||||"
    );
}

#[test]
fn uuid_text_array_and_jsonb_columns_of_an_existing_table_are_written_exactly() {
    let _server = server();
    let dir = workdir();
    let t = fresh("it_pg_binary_uuid");
    psql(&format!(
        "CREATE TABLE \"{t}\" (id bigint PRIMARY KEY, u uuid, tags text[], doc jsonb)"
    ));
    let schema = r#"schema = [
  { name = "id", type = "int64", nullable = false }, { name = "u", type = "string" },
  { name = "tags", type = "list<string>" }, { name = "doc", type = "json" },
]"#;
    let input = concat!(
        r#"{"id":1,"u":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11","tags":["a,b","say \"hi\"",null,"\\","{}"],"doc":"{\"k\": [1, null]}"}"#,
        "\n",
        r#"{"id":2,"u":"00000000-0000-0000-0000-000000000000","tags":[],"doc":"null"}"#,
        "\n",
        r#"{"id":3}"#,
        "\n"
    );
    pipeline(dir.path(), &t, input, schema, "");
    let run = sluice(dir.path(), &["run", "pg.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows = psql(&format!(
        "SELECT id, u, tags, cardinality(tags), doc FROM \"{t}\" ORDER BY id"
    ));
    assert_eq!(
        rows,
        "1|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|{\"a,b\",\"say \\\"hi\\\"\",NULL,\"\\\\\",\"{}\"}|5|{\"k\": [1, null]}\n\
         2|00000000-0000-0000-0000-000000000000|{}|0|null\n\
         3||||"
    );

    // a value that is not a uuid: the text format lets the server name it
    let t2 = fresh("it_pg_binary_baduuid");
    psql(&format!(
        "CREATE TABLE \"{t2}\" (id bigint PRIMARY KEY, u uuid)"
    ));
    let schema = r#"schema = [{ name = "id", type = "int64", nullable = false }, { name = "u", type = "string" }]"#;
    pipeline(
        dir.path(),
        &t2,
        "{\"id\":1,\"u\":\"not-a-uuid\"}\n",
        schema,
        "",
    );
    let run = sluice(dir.path(), &["run", "pg.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("uuid") && run.stderr.contains("not-a-uuid"),
        "{}",
        run.stderr
    );
}

/// Two runtimes that create the same new table at the same moment: `IF NOT EXISTS`
/// can fail on the catalog for one of them; it retries instead of stopping.
#[test]
fn two_writers_creating_one_table_at_once_both_finish() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = fresh("it_pg_race");
    for name in ["it_pg_race_a", "it_pg_race_b"] {
        fresh(name);
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\n[source]\nconnector = \"datagen\"\ncount = 2000\nseed = {}\n\
                 schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"v\", type = \"string\" }}]\n\
                 [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{t}\"\n\
                 [errors]\nretry_backoff = \"100ms\"\n",
                name.len() + usize::from(name.ends_with('b')),
                url()
            ),
        )
        .unwrap();
    }
    for _ in 0..3 {
        psql(&format!("DROP TABLE IF EXISTS \"{t}\"; DELETE FROM sluice_offsets WHERE pipeline LIKE 'it_pg_race_%'"));
        let a = spawn(d, &["run", "--quiet", "it_pg_race_a.toml"]);
        let b = spawn(d, &["run", "--quiet", "it_pg_race_b.toml"]);
        let (a, b) = (
            finish(a, Duration::from_secs(60)),
            finish(b, Duration::from_secs(60)),
        );
        assert_eq!(a.code, Some(0), "{}", a.stderr);
        assert_eq!(b.code, Some(0), "{}", b.stderr);
        assert_eq!(psql(&format!("SELECT count(*) FROM \"{t}\"")), "4000");
    }
}

/// `sluice check` asks each sink whether it takes the columns the source will read,
/// transforms or not: a list column into CSV is named before anything runs.
#[test]
fn check_asks_the_sink_whether_it_takes_the_tables_columns() {
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let t = fresh("it_pg_check_nested");
    psql(&format!(
        "CREATE TABLE \"{t}\" (id bigint PRIMARY KEY, tags text[]);\
         INSERT INTO \"{t}\" VALUES (1, ARRAY['a', 'b'])"
    ));
    let toml = |csv: &str| {
        format!(
            "[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{t}\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"csv\"\n{csv}",
            url()
        )
    };
    std::fs::write(d.join("p.toml"), toml("")).unwrap();
    let check = sluice(d, &["check", "p.toml"]);
    assert_ne!(check.code, Some(0), "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("sinks (on the source's schema): error: ")
            && check.stdout.contains("column \"tags\"")
            && check.stdout.contains("csv.nested"),
        "{}",
        check.stdout
    );
    std::fs::write(d.join("p.toml"), toml("csv = { nested = \"json\" }\n")).unwrap();
    let check = sluice(d, &["check", "p.toml"]);
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("sinks (on the source's schema): ok"),
        "{}",
        check.stdout
    );
}
