//! SQL transforms and routed sinks through the real binary: every SQL feature into
//! PostgreSQL and Parquet (read back with psql and pyarrow), rows routed by `where` to
//! three sinks, the rows a query fails on sent to the dead-letter sink, validate's
//! located errors, and kill -9 between the flushes of routed exactly-once sinks.

use std::path::Path;

use crate::postgres::{fresh, psql, server, slow_offsets, url};
use crate::support::{jsonl_ids, jsonl_lines, kill_at_random, python, sluice, workdir};

const SCHEMA: &str = "schema = [\n  { name = \"id\", type = \"int64\" },\n  { name = \"customer\", type = \"string\" },\n  \
     { name = \"amount\", type = \"decimal(12,2)\" },\n  { name = \"status\", type = \"string\" },\n  \
     { name = \"country\", type = \"string\" },\n  { name = \"payload\", type = \"string\" },\n  \
     { name = \"at\", type = \"timestamp(us, Asia/Kolkata)\" },\n  { name = \"tags\", type = \"list<int64>\" },\n  \
     { name = \"dims\", type = \"struct<w: int64, h: int64>\" },\n]";

/// Four orders: two pass the WHERE, one is cancelled, one is from another country.
const ORDERS: &str = r#"{"id":1,"customer":"ada","amount":120.50,"status":"paid","country":"DE","payload":"{\"device\":{\"os\":\"ios\"}}","at":"2024-03-01T10:15:30Z","tags":[1,2],"dims":{"w":2,"h":3}}
{"id":2,"customer":"bob","amount":99.99,"status":"paid","country":"FR","payload":"{\"device\":{}}","at":"2024-03-01T23:59:59.999999Z","tags":[],"dims":{"w":5,"h":7}}
{"id":3,"customer":"cyd","amount":5.00,"status":"cancelled","country":"DE","payload":"{}","at":"2024-03-02T00:00:00Z","tags":[3],"dims":{"w":1,"h":1}}
{"id":4,"customer":"dan","amount":1000.00,"status":"paid","country":"US","payload":"{}","at":"2024-03-02T00:00:00Z","tags":[4],"dims":{"w":1,"h":1}}
"#;

const QUERY: &str = "query = \"\"\"\nSELECT id,\n       upper(customer) AS customer,\n       amount * 1.19 AS gross,\n       \
     CASE WHEN amount > 100 THEN 'big' ELSE 'small' END AS size,\n       \
     json_get_str(payload, 'device', 'os') AS os,\n       date_trunc('hour', at) AS hour,\n       \
     regexp_replace(customer, '[aeiou]', '*', 'g') AS masked,\n       dims['w'] * dims['h'] AS area\n\
     FROM input\nWHERE status <> 'cancelled' AND country IN ('DE', 'FR')\n\"\"\"\n";

fn orders(dir: &Path) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/orders.jsonl"), ORDERS).unwrap();
}

/// Computed columns, CASE, JSON extraction, a time-zone-aware date_trunc, a regular
/// expression, struct fields and decimal arithmetic at its exact scale, into
/// PostgreSQL and Parquet.
#[test]
fn sql_features_arrive_exact_in_postgres_and_parquet() {
    let _server = server();
    let table = fresh("sql_orders");
    let dir = workdir();
    let d = dir.path();
    orders(d);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/orders.jsonl\"\n{SCHEMA}\n\
             [[transforms]]\ntype = \"sql\"\nname = \"enrich\"\n{QUERY}\
             [sinks.pg]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\n\
             [sinks.lake]\nconnector = \"file\"\npath = \"out\"\nformat = \"parquet\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows = psql(&format!(
        "SELECT id, customer, gross, size, coalesce(os, 'NULL'), to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
         masked, area, format_type(a.atttypid, a.atttypmod) FROM \"{table}\", pg_attribute a \
         WHERE a.attrelid = '\"{table}\"'::regclass AND a.attname = 'gross' ORDER BY id"
    ));
    // 120.50 * 1.19 = 143.3950 and 99.99 * 1.19 = 118.9881, exactly; 15:45:30 in
    // Kolkata (+05:30) truncates to 15:00 there, 09:30 UTC
    assert_eq!(
        rows,
        "1|ADA|143.3950|big|ios|2024-03-01 09:30:00|*d*|6|numeric(16,4)\n\
         2|BOB|118.9881|small|NULL|2024-03-01 23:30:00|b*b|35|numeric(16,4)"
    );
    let out = python(&format!(
        "import pyarrow.parquet as pq, glob\n\
         t = pq.read_table(glob.glob('{}/out/*.parquet')).sort_by('id')\n\
         print(';'.join(f'{{f.name}}:{{f.type}}' for f in t.schema))\n\
         for r in t.to_pylist(): print(r['id'], r['gross'], r['size'], r['os'], r['hour'].isoformat(), r['masked'], r['area'])",
        d.display()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "id:int64;customer:string;gross:decimal128(16, 4);size:string;os:string;\
         hour:timestamp[us, tz=Asia/Kolkata];masked:string;area:int64"
    );
    assert_eq!(
        lines[1],
        "1 143.3950 big ios 2024-03-01T15:00:00+05:30 *d* 6"
    );
    assert_eq!(
        lines[2],
        "2 118.9881 small None 2024-03-02T05:00:00+05:30 b*b 35"
    );
}

/// `unnest` makes one record per element of a list, and mixes with built-in transforms
/// before and after it.
#[test]
fn unnest_makes_a_record_per_element_between_built_in_transforms() {
    let dir = workdir();
    let d = dir.path();
    orders(d);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[source]\nconnector = \"file\"\npath = \"in/orders.jsonl\"\n{SCHEMA}\n\
             [[transforms]]\ntype = \"rename\"\nfields = {{ customer = \"who\" }}\n\
             [[transforms]]\ntype = \"sql\"\nquery = \"SELECT id, who, unnest(tags) AS tag FROM input\"\n\
             [[transforms]]\ntype = \"filter\"\nfield = \"tag\"\nop = \"ne\"\nvalue = 3\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"parquet\"\n"
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = python(&format!(
        "import pyarrow.parquet as pq, glob\n\
         t = pq.read_table(glob.glob('{}/out/*.parquet'))\n\
         print([(r['id'], r['who'], r['tag']) for r in t.to_pylist()])",
        d.display()
    ));
    assert_eq!(out.trim(), "[(1, 'ada', 1), (1, 'ada', 2), (4, 'dan', 4)]");
}

fn numbered(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let lines: String = (0..n)
        .map(|i| {
            let country = ["DE", "FR", "US"][i % 3];
            format!(
                "{{\"id\":{i},\"amount\":{}.{:02},\"country\":\"{country}\"}}\n",
                i % 250,
                i % 100
            )
        })
        .collect();
    std::fs::write(dir.join("in/n.jsonl"), lines).unwrap();
}

const NUMBERED: &str = "[source]\nconnector = \"file\"\npath = \"in/n.jsonl\"\nschema = [{ name = \"id\", type = \"int64\" }, \
     { name = \"amount\", type = \"decimal(10,2)\" }, { name = \"country\", type = \"string\" }]\n";

fn routed(checkpoint: &str) -> String {
    format!(
        "{NUMBERED}[[transforms]]\ntype = \"sql\"\nquery = \"SELECT id, amount, country, amount >= 100 AS big FROM input\"\n\
         [sinks.big]\nconnector = \"file\"\npath = \"out/big\"\nformat = \"json\"\nwhere = \"big\"\n\
         [sinks.small]\nconnector = \"file\"\npath = \"out/small\"\nformat = \"json\"\nwhere = \"NOT big\"\n\
         [sinks.de]\nconnector = \"file\"\npath = \"out/de\"\nformat = \"json\"\nwhere = \"country = 'DE'\"\n\
         [batch]\nmax_records = 700\n{checkpoint}"
    )
}

fn check_routes(d: &Path, n: usize) {
    let all = 0..n as i64;
    let big: Vec<i64> = all.clone().filter(|i| i % 250 >= 100).collect();
    let small: Vec<i64> = all.clone().filter(|i| i % 250 < 100).collect();
    let de: Vec<i64> = all.filter(|i| i % 3 == 0).collect();
    assert_eq!(jsonl_ids(&d.join("out/big")), big);
    assert_eq!(jsonl_ids(&d.join("out/small")), small);
    assert_eq!(jsonl_ids(&d.join("out/de")), de);
}

/// Three sinks, two disjoint predicates and one overlapping both: each row arrives
/// where its predicate says, and nowhere else.
#[test]
fn where_routes_each_row_to_the_sinks_whose_predicate_holds() {
    let dir = workdir();
    let d = dir.path();
    numbered(d, 5_000);
    std::fs::write(d.join("p.toml"), routed("")).unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    check_routes(d, 5_000);
    let schema = sluice(d, &["schema", "p.toml"]);
    assert_eq!(schema.code, Some(0), "{}", schema.stderr);
    assert!(
        schema.stdout.contains("# after transforms[0] (sql):"),
        "{}",
        schema.stdout
    );
    assert!(
        schema
            .stdout
            .contains("#   { name = \"big\", type = \"bool\", nullable = true },"),
        "{}",
        schema.stdout
    );
    assert!(
        schema
            .stdout
            .contains("# [sinks.de] receives the rows where country = 'DE'"),
        "{}",
        schema.stdout
    );
}

/// kill -9 at random points of a run with a SQL transform into three exactly-once
/// sinks: PostgreSQL (every row), a routed file sink, and PostgreSQL routed, whose
/// offsets are stored slowly (a trigger sleeps), so that most kills fall after the
/// other two flushed and before it did; then a last run to the end. Each holds every
/// row its predicate keeps, once: the restarts resume from the sink that was behind,
/// and the others skip what they have.
#[test]
fn routed_exactly_once_sinks_survive_kill_9_between_their_flushes() {
    let _server = server();
    let all = fresh("sql_fan_all");
    let de = fresh("sql_fan_de");
    // the offsets table exists once a PostgreSQL sink has opened
    let dir = workdir();
    let d = dir.path();
    numbered(d, 1);
    std::fs::write(
        d.join("one.toml"),
        format!(
            "name = \"{de}\"\n{NUMBERED}[sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{de}\"\n",
            url()
        ),
    )
    .unwrap();
    let one = sluice(d, &["run", "--quiet", "one.toml"]);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    fresh(&de);
    let _slow = slow_offsets("sql_fan_slow", &all, "de");
    let n = 200_000;
    numbered(d, n);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"{all}\"\n{NUMBERED}[[transforms]]\ntype = \"sql\"\n\
             query = \"SELECT id, amount, country, amount >= 100 AS big FROM input\"\n\
             [sinks.all]\nconnector = \"postgres\"\nurl = \"{url}\"\ntable = \"{all}\"\n\
             [sinks.de]\nconnector = \"postgres\"\nurl = \"{url}\"\ntable = \"{de}\"\nwhere = \"country = 'DE'\"\n\
             [sinks.big]\nconnector = \"file\"\npath = \"out/big\"\nformat = \"json\"\nwhere = \"big\"\n\
             [batch]\nmax_records = 700\n[checkpoint]\ninterval = \"50ms\"\n",
            url = url()
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "p.toml"], 8, 150..900);
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let count = |table: &str| {
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0) FROM \"{table}\""
        ))
    };
    let sum = |ids: &mut dyn Iterator<Item = i64>| {
        let ids: Vec<i64> = ids.collect();
        format!("{}|{}|{}", ids.len(), ids.len(), ids.iter().sum::<i64>())
    };
    assert_eq!(
        count(&all),
        sum(&mut (0..n as i64)),
        "killed mid-run {killed} times"
    );
    assert_eq!(
        count(&de),
        sum(&mut (0..n as i64).filter(|i| i % 3 == 0)),
        "killed mid-run {killed} times"
    );
    let big: Vec<i64> = (0..n as i64).filter(|i| i % 250 >= 100).collect();
    assert_eq!(
        jsonl_ids(&d.join("out/big")),
        big,
        "killed mid-run {killed} times"
    );
}

fn coded(dir: &Path, errors: &str) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let lines: String = (0..10_000)
        .map(|i| match i {
            17 | 5_000 | 9_998 => format!("{{\"id\":{i},\"code\":\"x{i}\"}}\n"),
            _ => format!("{{\"id\":{i},\"code\":\"{}\"}}\n", i * 7),
        })
        .collect();
    std::fs::write(dir.join("in/c.jsonl"), lines).unwrap();
    std::fs::write(
        dir.join("p.toml"),
        format!(
            "[source]\nconnector = \"file\"\npath = \"in/c.jsonl\"\nschema = [{{ name = \"id\", type = \"int64\" }}, \
             {{ name = \"code\", type = \"string\" }}]\n\
             [[transforms]]\ntype = \"sql\"\nname = \"codes\"\nquery = \"SELECT id, CAST(code AS BIGINT) AS code FROM input\"\n\
             [sink]\nconnector = \"file\"\npath = \"out/good\"\nformat = \"json\"\n{errors}"
        ),
    )
    .unwrap();
}

/// 3 rows of 10,000 that a cast fails on go to the dead-letter sink with the record,
/// the transform, the column and the error; the other 9,997 are delivered.
#[test]
fn rows_a_query_fails_on_go_to_the_dead_letter_sink_and_the_rest_goes_on() {
    let dir = workdir();
    let d = dir.path();
    coded(
        d,
        "[errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n[errors.dead_letter]\nconnector = \"file\"\npath = \"out/dlq\"\nformat = \"json\"\n",
    );
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let good = jsonl_ids(&d.join("out/good"));
    assert_eq!(good.len(), 9_997);
    assert!(!good.contains(&17) && !good.contains(&5_000) && !good.contains(&9_998));
    let letters: Vec<serde_json::Value> = jsonl_lines(&d.join("out/dlq"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let records: Vec<&str> = letters
        .iter()
        .map(|l| l["record"].as_str().unwrap())
        .collect();
    assert_eq!(
        records,
        [
            r#"{"code":"x17","id":17}"#,
            r#"{"code":"x5000","id":5000}"#,
            r#"{"code":"x9998","id":9998}"#
        ]
    );
    for l in &letters {
        let error = l["error"].as_str().unwrap();
        assert!(
            error.starts_with("transforms[0] (\"codes\"), column \"code\": "),
            "{error}"
        );
        assert!(error.contains("Cannot cast string"), "{error}");
        assert_eq!(l["error_kind"], "data");
        assert!(
            l["position"]
                .as_str()
                .unwrap()
                .contains("in the batch read up to"),
            "{l}"
        );
    }
    assert!(run.stdout.contains("3 rejected"), "{}", run.stdout);
}

/// Under tolerance none the run stops at the first such row, naming it and the
/// expression; nothing of its batch is written.
#[test]
fn a_failing_row_stops_the_run_under_tolerance_none() {
    let dir = workdir();
    let d = dir.path();
    coded(d, "");
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("transforms[0] (\"codes\"), column \"code\""),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("x17"), "{}", run.stderr);
}

fn validate(toml: &str) -> String {
    let dir = workdir();
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let run = sluice(dir.path(), &["validate", "p.toml"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    run.stderr
}

/// validate plans each query on the declared schema without a connection: unknown
/// column (did you mean), type error, aggregate, join and ORDER BY, at line:col of the
/// file; a valid query passes.
#[test]
fn validate_locates_query_errors_in_the_file() {
    let head = format!("{NUMBERED}[[transforms]]\ntype = \"sql\"\n");
    let sink = "[sink]\nconnector = \"postgres\"\nurl = \"postgres://nobody@127.0.0.1:1/x\"\ntable = \"t\"\n";
    let cases = [
        (
            "query = \"\"\"\nSELECT id,\n  amout * 2 AS twice\nFROM input\n\"\"\"\n",
            "p.toml:9:3:",
            "amount",
        ),
        (
            "query = \"SELECT id FROM input WHERE country + 1 > 2\"\n",
            "p.toml:7:10:",
            "Utf8 + Int64",
        ),
        (
            "query = \"\"\"\nSELECT country, count(*) AS n\nFROM input\nGROUP BY country\n\"\"\"\n",
            "p.toml:10:1:",
            "an aggregate",
        ),
        (
            "query = \"SELECT a.id FROM input a JOIN input b ON a.id = b.id\"\n",
            "p.toml:7:40:",
            "a join",
        ),
        (
            "query = \"\"\"\nSELECT id FROM input\n  ORDER BY id\n\"\"\"\n",
            "p.toml:9:3:",
            "ORDER BY",
        ),
    ];
    for (query, at, what) in cases {
        let err = validate(&format!("{head}{query}{sink}"));
        assert!(err.contains(at), "{at} in {err}");
        assert!(err.contains(what), "{what} in {err}");
    }
    let dir = workdir();
    std::fs::write(
        dir.path().join("p.toml"),
        format!("{head}query = \"SELECT id, amount * 2 AS twice FROM input\"\n{sink}"),
    )
    .unwrap();
    let run = sluice(dir.path(), &["validate", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // a routing predicate is planned too, located inside its string
    let err = validate(&format!(
        "{NUMBERED}[sinks.a]\nconnector = \"file\"\npath = \"out/a\"\nwhere = \"contry = 'DE'\"\n"
    ));
    assert!(err.contains("p.toml:8:10:"), "{err}");
    assert!(err.contains("country"), "{err}");
}

/// A PostgreSQL table's schema is known only by connecting: `validate` passes, and
/// `check` plans the query and the route on the table's columns, errors at line:col.
#[test]
fn check_locates_query_errors_on_the_schema_of_a_connected_source() {
    let _server = server();
    let table = fresh("sql_check_src");
    psql(&format!(
        "CREATE TABLE \"{table}\" (id bigint PRIMARY KEY, amount numeric(10,2), country text)"
    ));
    let dir = workdir();
    let d = dir.path();
    let toml = |query: &str, route: &str| {
        format!(
            "[source]\nconnector = \"postgres\"\nurl = \"{url}\"\ntables = [\"{table}\"]\n\
             [[transforms]]\ntype = \"sql\"\nquery = \"{query}\"\n\
             [sinks.a]\nconnector = \"file\"\npath = \"out/a\"\nwhere = \"{route}\"\n",
            url = url()
        )
    };
    // `sluice check` on a file of that query and route
    let check = |file: &str, query: &str, route: &str| {
        std::fs::write(d.join(file), toml(query, route)).unwrap();
        sluice(d, &["check", file])
    };
    let check_q = check(
        "q.toml",
        "SELECT id, amout * 2 AS twice FROM input",
        "id > 1",
    );
    let valid = sluice(d, &["validate", "q.toml"]);
    assert_eq!(valid.code, Some(0), "{}", valid.stderr);
    assert_ne!(check_q.code, Some(0));
    assert!(
        check_q.stdout.contains("source (postgres): ok"),
        "{}",
        check_q.stdout
    );
    assert!(
        check_q.stdout.contains("q.toml:7:21:"),
        "{}",
        check_q.stdout
    );
    assert!(check_q.stdout.contains("amount"), "{}", check_q.stdout);
    let check_w = check(
        "w.toml",
        "SELECT id, amount * 2 AS twice FROM input",
        "contry = 'DE'",
    );
    assert_ne!(check_w.code, Some(0));
    assert!(
        check_w.stdout.contains("w.toml:11:10:"),
        "{}",
        check_w.stdout
    );
    let check = check(
        "ok.toml",
        "SELECT id, amount * 2 AS twice FROM input",
        "twice > 1",
    );
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
    assert!(
        check
            .stdout
            .contains("transforms, routes and sinks (on the source's schema): ok"),
        "{}",
        check.stdout
    );
}

/// A first query that reads some of the declared columns: the file source reads only
/// those, so a value an unread column could not hold is not looked at, and the
/// output is what the query gives on every column. With a dead-letter sink every
/// column is read, so that a record sent there is whole: the same line is then a bad
/// record.
#[test]
fn the_source_reads_only_the_columns_the_first_query_reads() {
    let pipeline = |d: &Path, errors: &str| {
        std::fs::create_dir_all(d.join("in")).unwrap();
        std::fs::write(
            d.join("in/a.jsonl"),
            "{\"id\":1,\"name\":\"ada\",\"note\":7,\"amount\":\"1.50\"}\n\
             {\"id\":2,\"name\":\"bob\",\"note\":\"not a number\",\"amount\":\"2.25\"}\n\
             {\"id\":3,\"name\":\"cy\",\"note\":9,\"amount\":\"3.00\"}\n",
        )
        .unwrap();
        std::fs::write(
            d.join("p.toml"),
            format!(
                "[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n\
                 schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"name\", type = \"string\" }}, \
                 {{ name = \"note\", type = \"int64\" }}, {{ name = \"amount\", type = \"decimal(10,2)\" }}]\n\
                 [[transforms]]\ntype = \"sql\"\n\
                 query = \"SELECT id, upper(name) AS name, amount * 2 AS twice FROM input WHERE id <> 3\"\n\
                 [sink]\nconnector = \"file\"\npath = \"out/good\"\nformat = \"json\"\n{errors}"
            ),
        )
        .unwrap();
    };
    let dir = workdir();
    let d = dir.path();
    pipeline(d, "");
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("reading only the columns") && run.stderr.contains("\"amount\""),
        "{}",
        run.stderr
    );
    // the decimals as the file sink writes them, their scale kept
    let lines = jsonl_lines(&d.join("out/good"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, (id, name, twice)) in lines.iter().zip([(1, "ADA", "3.00"), (2, "BOB", "4.50")]) {
        for part in [
            format!("\"id\":{id}"),
            format!("\"name\":\"{name}\""),
            format!("\"twice\":{twice}"),
        ] {
            assert!(line.contains(&part), "{part} in {line}");
        }
    }

    let dir = workdir();
    let d = dir.path();
    pipeline(
        d,
        "[errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
         [errors.dead_letter]\nconnector = \"file\"\npath = \"out/dlq\"\nformat = \"json\"\n",
    );
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        !run.stderr.contains("reading only the columns"),
        "{}",
        run.stderr
    );
    assert_eq!(jsonl_ids(&d.join("out/good")), [1]);
    let letters = jsonl_lines(&d.join("out/dlq"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].contains("not a number"), "{}", letters[0]);
}
