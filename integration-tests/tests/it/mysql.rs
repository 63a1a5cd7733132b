//! MySQL/MariaDB against the real server (MariaDB on 3306): every type into a table
//! (checked with the `mariadb` client) and every MySQL type out of one (checked with
//! pyarrow), kill -9 of a load and of a snapshot with every row exactly once,
//! incremental reads with ties and late rows, upserts with deletes, and bad input.

use std::process::Command;
use std::time::Duration;

use crate::roundtrip::{write_rows, SCHEMA};
use crate::support::{
    finish, jsonl_ids, kill_at_random, python, signal, sluice, spawn, wait_until, workdir,
};

/// The server the tests use.
fn port() -> u16 {
    std::env::var("SLUICE_TEST_MYSQL_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3306)
}

/// The private server with the binlog on, which refuses `LOAD DATA LOCAL INFILE`.
pub(crate) fn binlog_port() -> u16 {
    std::env::var("SLUICE_TEST_MYSQL_BINLOG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3307)
}

pub(crate) fn url() -> String {
    url_at(port())
}

pub(crate) fn url_at(port: u16) -> String {
    format!("mysql://root@127.0.0.1:{port}/test")
}

/// A table name unique to this run.
pub(crate) fn unique(tag: &str) -> String {
    use rand::Rng;
    format!(
        "{tag}_{}_{:06x}",
        std::process::id(),
        rand::thread_rng().gen::<u32>() & 0xff_ffff
    )
}

/// `mariadb -N -B` in database `test`: the rows, tab-separated.
pub(crate) fn sql(query: &str) -> String {
    sql_at(port(), query)
}

/// `mariadb -N -B` against the server on `port`.
pub(crate) fn sql_at(port: u16, query: &str) -> String {
    let port = port.to_string();
    let out = Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-P", &port, "-u", "root", "-N", "-B"])
        .args(["--default-character-set=utf8mb4", "test", "-e", query])
        .output()
        .expect("the mariadb client");
    assert!(
        out.status.success(),
        "mariadb -e {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn every_type_loads_into_mysql_exactly() {
    let run = every_type_loads_into(port());
    assert!(!run.stderr.contains("refused"), "{}", run.stderr);
}

/// Where the server refuses `LOAD DATA LOCAL INFILE`, rows go in as `INSERT`s, as
/// exactly, and the log says why.
#[test]
fn every_type_inserts_exactly_where_local_infile_is_off() {
    let _one = crate::mysql_cdc::binlog();
    let run = every_type_loads_into(binlog_port());
    assert!(
        run.stderr
            .contains("LOAD DATA LOCAL INFILE refused by the server; writing with INSERT instead"),
        "{}",
        run.stderr
    );
}

/// Loads the every-type data set into a new table on the server on `port`, checks it
/// with the `mariadb` client, and returns the run.
fn every_type_loads_into(port: u16) -> crate::support::Run {
    let sql = |q: &str| sql_at(port, q);
    let dir = workdir();
    let d = dir.path();
    let table = unique("alltypes");
    write_rows(d);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/all.jsonl\"\n{SCHEMA}\n\
             [sink]\nconnector = \"mysql\"\nurl = \"{}\"\ntable = \"{table}\"\n",
            url_at(port)
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(sql(&format!("SELECT count(*) FROM {table}")), "3");
    let first = sql(&format!(
        "SELECT i8, i16, i32, i64, u32, u64, f32, f64, b+0, HEX(bin), d, t, ts, tstz, tsms, `dec`, \
         JSON_EXTRACT(ls, '$[1]'), li, JSON_EXTRACT(st, '$.b'), HEX(s) FROM {table} WHERE i8 = -128"
    ));
    let s = "h\u{e9}llo \u{2713} \"q\" \\ \u{4e2d}";
    let expected = [
        "-128",
        "32767",
        "-2147483648",
        "9223372036854775807",
        "4294967295",
        "18446744073709551615",
        "1.5",
        "-1.25e300",
        "1",
        "DEADBEEF00",
        "2024-02-29",
        "23:59:59.999999",
        "2024-05-01 10:00:00.123456",
        "2024-05-01 10:00:00.123456",
        "1999-12-31 23:59:59.999000",
        "1234567890123456.7890",
        "\"\"",
        "[1,-2]",
        "\"x\"",
        &hex(s.as_bytes()),
    ]
    .join("\t");
    assert_eq!(first, expected);
    let nulls = sql(&format!(
        "SELECT count(*) FROM {table} WHERE i8 IS NULL AND s IS NULL AND bin IS NULL AND tstz IS NULL AND st IS NULL"
    ));
    assert_eq!(nulls, "1");
    let zeros = sql(&format!(
        "SELECT i64, f64, b+0, s = '', LENGTH(bin), ts, tstz, `dec`, li FROM {table} WHERE i8 = 0"
    ));
    assert_eq!(
        zeros,
        "-9223372036854775808\t0.1\t0\t1\t0\t1900-01-01 00:00:00.000000\t2262-04-11 23:47:16.854775\t-0.0001\t[]"
    );
    let types = sql(&format!(
        "SELECT GROUP_CONCAT(COLUMN_TYPE ORDER BY ORDINAL_POSITION) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = '{table}'"
    ));
    assert_eq!(
        types,
        "tinyint(4),smallint(6),int(11),bigint(20),int(10) unsigned,bigint(20) unsigned,float,double,bit(1),\
         longtext,longblob,date,time(6),datetime(6),datetime(6),datetime(6),decimal(20,4),longtext,longtext,longtext"
    );
    run
}

/// A table of every MySQL type, read into Parquet and checked with pyarrow.
#[test]
fn every_mysql_type_reads_into_arrow_exactly() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("mytypes");
    sql(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, d65 DECIMAL(65,30), u64 BIGINT UNSIGNED, i8 TINYINT, \
         u8 TINYINT UNSIGNED, m MEDIUMINT, mu MEDIUMINT UNSIGNED, f FLOAT, db DOUBLE, dt DATETIME(6), \
         ts TIMESTAMP(6) NULL, dd DATE, tm TIME(6), y YEAR, b1 BIT(1), b12 BIT(12), e ENUM('small','big'), \
         st SET('a','b','c'), j JSON, bl BLOB, vb VARBINARY(8), s VARCHAR(20), tx TEXT, g GEOMETRY) \
         DEFAULT CHARSET = utf8mb4;
         INSERT INTO {table} VALUES
         (1, '12345678901234567890123456789012345.123456789012345678901234567890', 18446744073709551615,
          -128, 255, -8388608, 16777215, 1.5, -1.25e300, '2024-02-29 23:59:59.999999',
          '2038-01-19 03:14:07.999999', '2024-02-29', '-838:59:59', 2155, b'1', b'101010101010', 'big',
          'a,c', '{{\"k\": [1, 2]}}', X'00FF10', X'DEADBEEF', 'h\u{e9}llo \u{1F600}', 'x\\ty',
          ST_GeomFromText('POINT(1 2)', 4326)),
         (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          NULL, NULL, NULL, NULL, NULL, NULL, NULL),
         (3, '-0.000000000000000000000000000001', 0, 0, 0, 0, 0, 0, 0.1, '1000-01-01 00:00:00',
          '1970-01-01 00:00:01', '1000-01-01', '100:00:00.5', 1901, b'0', b'0', 'small', '', '[]', '', '',
          '', '', ST_GeomFromText('POINT(0 0)'));"
    ));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"{table}\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"parquet\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = python(&format!(
        "import pyarrow.parquet as pq, glob\n\
         t = pq.read_table(glob.glob('{}/out/*.parquet')).sort_by('id')\n\
         print(';'.join(str(f.type) for f in t.schema))\n\
         r = t.to_pylist()\n\
         a = r[0]\n\
         print(a['d65'], a['u64'], a['i8'], a['u8'], a['m'], a['mu'], a['f'], a['db'])\n\
         print(a['dt'].isoformat(), a['ts'].isoformat(), a['dd'].isoformat(), a['tm'], a['y'], a['b1'], a['b12'].hex())\n\
         print(a['e'], a['st'], a['j'], a['bl'].hex(), a['vb'].hex(), a['s'] == 'h\\u00e9llo \\U0001F600', repr(a['tx']), a['g'].hex())\n\
         print(sum(v is None for k, v in r[1].items() if k != 'id'))\n\
         c = r[2]\n\
         print(c['d65'], c['db'], c['dt'].isoformat(), c['ts'].isoformat(), c['tm'], c['y'], c['b1'], c['e'], repr(c['st']), c['g'].hex())",
        d.display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "int32;decimal256(65, 30);uint64;int8;uint8;int32;uint32;float;double;timestamp[us];timestamp[us, tz=UTC];\
         date32[day];duration[us];int16;bool;binary;string;string;string;binary;binary;string;string;binary"
    );
    assert_eq!(
        lines[1],
        "12345678901234567890123456789012345.123456789012345678901234567890 18446744073709551615 -128 255 -8388608 16777215 1.5 -1.25e+300"
    );
    assert_eq!(
        lines[2],
        "2024-02-29T23:59:59.999999 2038-01-19T03:14:07.999999+00:00 2024-02-29 -35 days, 1:00:01 2155 True 0aaa"
    );
    // EWKB: little-endian point with the SRID flag, SRID 4326, x = 1, y = 2
    assert_eq!(
        lines[3],
        "big a,c {\"k\": [1, 2]} 00ff10 deadbeef True 'x\\ty' 0101000020e6100000000000000000f03f0000000000000040"
    );
    assert_eq!(lines[4], "23");
    assert_eq!(
        lines[5],
        "-1E-30 0.1 1000-01-01T00:00:00 1970-01-01T00:00:01+00:00 4 days, 4:00:00.500000 1901 False small '' 010100000000000000000000000000000000000000"
    );
}

#[test]
fn a_zero_date_stops_with_its_column_or_reads_as_null() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("zerodate");
    sql(&format!(
        "SET SESSION sql_mode = ''; CREATE TABLE {table} (id INT PRIMARY KEY, born DATE NOT NULL); \
         INSERT INTO {table} VALUES (1, '2020-01-01'), (2, '0000-00-00')"
    ));
    let pipeline = |policy: &str| {
        format!(
            "[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"{table}\"]\n{policy}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
            url()
        )
    };
    std::fs::write(d.join("p.toml"), pipeline("")).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("column \"born\"") && run.stderr.contains("zero date"),
        "{}",
        run.stderr
    );
    std::fs::write(d.join("q.toml"), pipeline("zero_dates = \"null\"")).unwrap();
    let run = sluice(d, &["run", "--quiet", "q.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines = crate::support::jsonl_lines(&d.join("out"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l.contains("\"born\":null") || !l.contains("born")));
}

/// Writes `rows` JSON lines `{"id": i, "amount": "i.ii", "note": "..."}` to
/// `in/data.jsonl`.
fn json_lines(dir: &std::path::Path, rows: usize) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    python(&format!(
        "with open('{}/in/data.jsonl', 'w') as f:\n    [f.write('{{\"id\": %d, \"amount\": \"%d.%02d\", \"note\": \"n\\\\t%d\"}}\\n' % (i, i, i % 100, i)) for i in range({rows})]",
        dir.display()
    ));
}

const JSON_SOURCE: &str = "[source]\nconnector = \"file\"\npath = \"in/data.jsonl\"\n\
    schema = [{ name = \"id\", type = \"int64\", nullable = false }, { name = \"amount\", type = \"decimal(12,2)\" }, { name = \"note\", type = \"string\" }]\n";

#[test]
fn kill_9_during_a_load_into_mysql_repeats_and_loses_no_row() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("killload");
    json_lines(d, 2_000_000);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"{table}\"\n{JSON_SOURCE}[batch]\nmax_records = 5000\n[checkpoint]\ninterval = \"200ms\"\n\
             [sink]\nconnector = \"mysql\"\nurl = \"{}\"\ntable = \"{table}\"\n",
            url()
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "p.toml"], 8, 100..700);
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        killed >= 4,
        "only {killed} of 8 kills hit a running pipeline"
    );
    assert_eq!(
        sql(&format!(
            "SELECT count(*), count(DISTINCT id), min(id), max(id), SUM(amount), SUM(note = CONCAT('n\\t', id)) FROM {table}"
        )),
        format!("2000000\t2000000\t0\t1999999\t{}\t2000000", sum_amounts(2_000_000))
    );
}

/// The sum of the amounts of [`json_lines`].
fn sum_amounts(rows: u64) -> String {
    let cents: u64 = (0..rows).map(|i| i * 100 + i % 100).sum();
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[test]
fn kill_9_during_a_snapshot_resumes_after_the_last_delivered_key() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("killsnap");
    sql(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v VARCHAR(40)); \
         INSERT INTO {table} SELECT seq, CONCAT('value ', seq) FROM seq_1_to_3000000"
    ));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"{table}\"]\n\
             [batch]\nmax_records = 2000\n[checkpoint]\ninterval = \"100ms\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
            url()
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "p.toml"], 6, 50..400);
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        killed >= 3,
        "only {killed} of 6 kills hit a running pipeline"
    );
    let ids = jsonl_ids(&d.join("out"));
    assert_eq!(ids.len(), 3_000_000);
    assert!(ids.iter().enumerate().all(|(i, &id)| id == i as i64 + 1));
}

#[test]
fn incremental_reads_every_row_of_a_run_of_equal_cursors_and_new_rows() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("incr");
    // 50 rows share one time: more than a read, so a read ends inside the run
    sql(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, at DATETIME(6) NOT NULL, v INT); \
         INSERT INTO {table} SELECT seq, '2024-01-01 00:00:00', seq FROM seq_1_to_50; \
         INSERT INTO {table} SELECT seq, '2024-01-01 00:00:01' + INTERVAL seq SECOND, seq FROM seq_51_to_100"
    ));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"{table}\"]\nmode = \"incremental\"\n\
             cursor = [\"at\"]\npoll_interval = \"100ms\"\n\
             [batch]\nmax_records = 16\n[checkpoint]\ninterval = \"100ms\"\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
            url()
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    assert!(wait_until(Duration::from_secs(30), || jsonl_ids(
        &d.join("out")
    )
    .len()
        >= 100));
    sql(&format!(
        "INSERT INTO {table} SELECT seq, '2030-01-01 00:00:00', seq FROM seq_101_to_140"
    ));
    assert!(wait_until(Duration::from_secs(30), || jsonl_ids(
        &d.join("out")
    )
    .len()
        >= 140));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ids = jsonl_ids(&d.join("out"));
    assert_eq!(ids, (1..=140).collect::<Vec<i64>>());
}

#[test]
fn upserts_apply_changes_in_order_and_deletes_delete() {
    upserts_into(port());
}

#[test]
fn upserts_apply_changes_in_order_where_local_infile_is_off() {
    let _one = crate::mysql_cdc::binlog();
    upserts_into(binlog_port());
}

fn upserts_into(port: u16) {
    let dir = workdir();
    let d = dir.path();
    let table = unique("upsert");
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/changes.jsonl"),
        "{\"id\": 1, \"name\": \"a\", \"_op\": \"c\"}\n{\"id\": 2, \"name\": \"b\", \"_op\": \"c\"}\n\
         {\"id\": 1, \"name\": \"a2\", \"_op\": \"u\"}\n{\"id\": 2, \"name\": null, \"_op\": \"d\"}\n\
         {\"id\": 3, \"name\": \"c\", \"_op\": \"c\"}\n{\"id\": 3, \"name\": \"c2\", \"_op\": \"u\"}\n\
         {\"id\": 2, \"name\": \"b2\", \"_op\": \"c\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/changes.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\", nullable = false }}, {{ name = \"name\", type = \"string\" }}, {{ name = \"_op\", type = \"string\" }}]\n\
             [sink]\nconnector = \"mysql\"\nurl = \"{}\"\ntable = \"{table}\"\nmode = \"upsert\"\nkey = [\"id\"]\n",
            url_at(port)
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        sql_at(port, &format!("SELECT id, name FROM {table} ORDER BY id")),
        "1\ta2\n2\tb2\n3\tc2"
    );
}

#[test]
fn bad_input_gets_errors_that_name_the_thing() {
    let dir = workdir();
    let d = dir.path();
    // a server nobody listens on
    std::fs::write(
        d.join("down.toml"),
        "[source]\nconnector = \"mysql\"\nurl = \"mysql://root@127.0.0.1:1/test\"\ntables = [\"t\"]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\n",
    )
    .unwrap();
    let run = sluice(d, &["check", "down.toml"]);
    assert_ne!(run.code, Some(0));
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("cannot connect to MySQL at mysql://****@127.0.0.1:1/test"),
        "{said}"
    );
    // a table that does not exist
    std::fs::write(
        d.join("missing.toml"),
        format!(
            "[source]\nconnector = \"mysql\"\nurl = \"{}\"\ntables = [\"no_such_table_here\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "missing.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("table test.no_such_table_here does not exist"),
        "{}",
        run.stderr
    );
    // a float the server has no value for: the row is named, nothing half-written
    let table = unique("nan");
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/x.jsonl"),
        "{\"id\": 1, \"x\": 1.5}\n{\"id\": 2, \"x\": \"NaN\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("nan.toml"),
        format!(
            "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/x.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"x\", type = \"float64\" }}]\n\
             [sink]\nconnector = \"mysql\"\nurl = \"{}\"\ntable = \"{table}\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "nan.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("column \"x\", row 1: NaN has no MySQL value"),
        "{}",
        run.stderr
    );
    assert_eq!(sql(&format!("SELECT count(*) FROM {table}")), "0");
}

/// `drift = "evolve"`: a second run with a new column adds it to the table, and the
/// rows of both runs are there once.
#[test]
fn a_new_column_is_added_under_evolve() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("evolve");
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
    let pipeline = format!(
        "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n\
         [sink]\nconnector = \"mysql\"\nurl = \"{}\"\ntable = \"{table}\"\ndrift = \"evolve\"\n",
        url()
    );
    std::fs::write(d.join("p.toml"), &pipeline).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    std::fs::write(d.join("in/b.jsonl"), "{\"id\": 3, \"city\": \"Oslo\"}\n").unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        sql(&format!(
            "SELECT id, IFNULL(city, '-') FROM {table} ORDER BY id"
        )),
        "1\t-\n2\t-\n3\tOslo"
    );
}

/// `drift = "evolve"`: a column declared wider in a later run (int32, then int64) is
/// modified in the table, and the value past 32 bits is stored exactly.
#[test]
fn a_widened_column_is_modified_under_evolve() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("widen");
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), "{\"id\": 1, \"n\": 5}\n").unwrap();
    let pipeline = |n: &str| {
        format!(
            "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"n\", type = \"{n}\" }}]\n\
             [sink]\nconnector = \"mysql\"\nurl = \"{}\"\ntable = \"{table}\"\ndrift = \"evolve\"\n",
            url()
        )
    };
    std::fs::write(d.join("p.toml"), pipeline("int32")).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    std::fs::write(d.join("in/b.jsonl"), "{\"id\": 2, \"n\": 5000000000}\n").unwrap();
    std::fs::write(d.join("p.toml"), pipeline("int64")).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        sql(&format!("SELECT id, n FROM {table} ORDER BY id")),
        "1\t5\n2\t5000000000"
    );
    assert_eq!(
        sql(&format!(
            "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_NAME = '{table}' AND COLUMN_NAME = 'n'"
        )),
        "bigint"
    );
}

/// A second run of a pipeline that is running waits for the run lock, then stops
/// naming the holder; nothing is written twice.
#[test]
fn a_second_run_of_a_running_pipeline_stops_naming_the_holder() {
    let dir = workdir();
    let d = dir.path();
    let table = unique("twice");
    json_lines(d, 3_000_000);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"{table}\"\n{JSON_SOURCE}[sink]\nconnector = \"mysql\"\nurl = \"{}\"\ntable = \"{table}\"\nlock_timeout = \"1s\"\n",
            url()
        ),
    )
    .unwrap();
    let first = spawn(d, &["run", "--quiet", "p.toml"]);
    assert!(wait_until(Duration::from_secs(30), || {
        sql(&format!(
            "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_NAME = '{table}'"
        )) == "1"
    }));
    // from another directory, as on another machine (the runtime's own lock file
    // keeps out a second run of the same directory before any connection opens)
    let other = workdir();
    std::fs::copy(d.join("p.toml"), other.path().join("p.toml")).unwrap();
    std::fs::create_dir_all(other.path().join("in")).unwrap();
    std::fs::copy(d.join("in/data.jsonl"), other.path().join("in/data.jsonl")).unwrap();
    let second = sluice(other.path(), &["run", "--quiet", "p.toml"]);
    assert_ne!(second.code, Some(0));
    assert!(
        second
            .stderr
            .contains("is in use by another run (MySQL connection"),
        "{}",
        second.stderr
    );
    let first = finish(first, Duration::from_secs(120));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(
        sql(&format!("SELECT count(*), count(DISTINCT id) FROM {table}")),
        "3000000\t3000000"
    );
}

/// `configs/file-to-mysql.toml` runs as written.
#[test]
fn the_example_config_loads_the_sample_orders() {
    sql("DROP TABLE IF EXISTS orders; DELETE FROM sluice_offsets WHERE pipeline = 'file-to-mysql'");
    // the working directory links configs/ of the repository
    let dir = workdir();
    let d = dir.path();
    let run = crate::support::command_with_env(
        d,
        &["run", "--quiet", "configs/file-to-mysql.toml"],
        &[("MYSQL_URL", &url())],
    );
    let run = finish(run, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let want = python(&format!(
        "print(len(set(__import__('json').loads(l)['order_id'] for l in open('{}/configs/data/orders.jsonl'))))",
        d.display()
    ));
    assert_eq!(sql("SELECT count(*) FROM orders"), want);
}
