//! A malformed record: stop with its position (tolerance none), or dead-letter it and
//! deliver the rest (tolerance all), and stop anyway past the failure rate.

use crate::support::{jsonl_lines, sluice, workdir};

const INPUT: &str = "{\"id\": 1}\n{\"id\": 2}\n{\"id\": oops}\n{\"id\": 4}\n{\"id\": 5}\n";

fn setup(errors: &str) -> tempfile::TempDir {
    let dir = workdir();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/bad.jsonl"), INPUT).unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        format!(
            "[source]\nconnector = \"file\"\npath = \"in/bad.jsonl\"\nschema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out/good\"\nformat = \"json\"\n{errors}"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn tolerance_none_stops_naming_file_and_line() {
    let dir = setup("");
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("file \"in/bad.jsonl\" line 3"),
        "{}",
        run.stderr
    );
    assert!(jsonl_lines(&dir.path().join("out/good")).is_empty());
}

#[test]
fn tolerance_all_dead_letters_the_bad_line_and_delivers_the_rest() {
    let dir = setup(
        "[errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n[errors.dead_letter]\nconnector = \"file\"\npath = \"out/dlq\"\nformat = \"json\"\n",
    );
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let good = jsonl_lines(&dir.path().join("out/good"));
    assert_eq!(
        good,
        vec!["{\"id\":1}", "{\"id\":2}", "{\"id\":4}", "{\"id\":5}"]
    );
    let dlq = jsonl_lines(&dir.path().join("out/dlq"));
    assert_eq!(dlq.len(), 1);
    let rec: serde_json::Value = serde_json::from_str(&dlq[0]).unwrap();
    assert_eq!(rec["record"], "{\"id\": oops}");
    assert_eq!(rec["position"], "file \"in/bad.jsonl\" line 3");
    assert_eq!(rec["error_kind"], "data");
    assert!(
        rec["error"].as_str().unwrap().contains("invalid json"),
        "{rec}"
    );
    assert!(run.stdout.contains("1 rejected"), "{}", run.stdout);
}

#[test]
fn failure_rate_window_stops_even_with_tolerance_all() {
    let dir = workdir();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let input: String = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                format!("{{\"id\": {i}}}\n")
            } else {
                "not json\n".to_string()
            }
        })
        .collect();
    std::fs::write(dir.path().join("in/bad.jsonl"), input).unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        "[source]\nconnector = \"file\"\npath = \"in/bad.jsonl\"\nschema = [{ name = \"id\", type = \"int64\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out/good\"\nformat = \"json\"\n\
         [batch]\nmax_records = 5\n\
         [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.2\nwindow = 10\n\
         [errors.dead_letter]\nconnector = \"file\"\npath = \"out/dlq\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("of the last 10 records were bad"),
        "{}",
        run.stderr
    );
}

/// A decimal with more places than the declared scale is never rounded: the run stops
/// naming the column, the value and the line.
#[test]
fn a_decimal_with_too_many_places_stops_naming_column_and_line() {
    let dir = crate::support::workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/a.jsonl"),
        "{\"id\": 1, \"amount\": \"1.25\"}\n{\"id\": 2, \"amount\": 1.005}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("p.toml"),
        "name = \"dec\"\n[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n\
         schema = [{ name = \"id\", type = \"int64\" }, { name = \"amount\", type = \"decimal(12,2)\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = crate::support::sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("amount")
            && run
                .stderr
                .contains("\"1.005\" has more than 2 decimal places")
            && run.stderr.contains("line 2"),
        "{}",
        run.stderr
    );
    assert!(crate::support::jsonl_lines(&d.join("out")).is_empty());
}

/// Runs `p.toml` over `in/NAME` holding `input`; the run must stop naming `expect`.
fn stops_naming(name: &str, input: &str, source: &str, expect: &[&str]) {
    let dir = crate::support::workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in").join(name), input).unwrap();
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"exact\"\n[source]\nconnector = \"file\"\npath = \"in/{name}\"\n{source}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    let run = crate::support::sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for e in expect {
        assert!(run.stderr.contains(e), "expected {e:?} in {}", run.stderr);
    }
    assert!(crate::support::jsonl_lines(&d.join("out")).is_empty());
}

#[test]
fn a_fraction_for_an_inferred_integer_column_stops_instead_of_truncating() {
    let mut input: String = (0..1200)
        .map(|i| format!("{{\"a\": {i}, \"tags\": [\"x\"]}}\n"))
        .collect();
    input.push_str("{\"a\": 4.5, \"tags\": []}\n");
    stops_naming(
        "a.jsonl",
        &input,
        "",
        &["line 1201", "field \"a\"", "4.5 is not a whole number"],
    );
}

#[test]
fn a_csv_decimal_with_too_many_places_stops_instead_of_rounding() {
    stops_naming(
        "a.csv",
        "id,amount\n1,1.00\n2,1.005\n",
        "format = \"csv\"\nschema = [{ name = \"id\", type = \"int64\" }, { name = \"amount\", type = \"decimal(12,2)\" }]",
        &["line 3", "column \"amount\"", "\"1.005\" has more than 2 decimal places"],
    );
}

/// A timestamp with more sub-second digits than its unit holds is never cut: the run
/// stops naming the column, the value and the line (JSON lines and CSV alike); trailing
/// zeros fit.
#[test]
fn a_timestamp_with_more_digits_than_its_unit_stops_instead_of_cutting_them() {
    let schema =
        "schema = [{ name = \"id\", type = \"int64\" }, { name = \"at\", type = \"timestamptz\" }]";
    stops_naming(
        "a.jsonl",
        "{\"id\": 1, \"at\": \"2024-05-01T10:00:00.1234560Z\"}\n\
         {\"id\": 2, \"at\": \"2024-05-01T10:00:00.9999999Z\"}\n",
        schema,
        &[
            "line 2",
            "\"at\"",
            "\"2024-05-01T10:00:00.9999999Z\" has more than 6 sub-second digits",
        ],
    );
    // a uint32 column: arrow-json decodes these lines, and the digits are checked first
    stops_naming(
        "u.jsonl",
        "{\"id\": 1, \"n\": 7, \"at\": \"2024-05-01T10:00:00.1234560Z\"}\n\
         {\"id\": 2, \"n\": 8, \"at\": \"2024-05-01T10:00:00.9999999Z\"}\n",
        "schema = [{ name = \"id\", type = \"int64\" }, { name = \"n\", type = \"uint32\" }, { name = \"at\", type = \"timestamptz\" }]",
        &[
            "line 2",
            "column \"at\": \"2024-05-01T10:00:00.9999999Z\" has more than 6 sub-second digits",
        ],
    );
    stops_naming(
        "a.csv",
        "id,at\n1,2024-05-01T10:00:00.123456Z\n2,2024-05-01 10:00:00.0000001+02:00\n",
        &format!("format = \"csv\"\n{schema}"),
        &[
            "line 3",
            "column \"at\"",
            "\"2024-05-01 10:00:00.0000001+02:00\" has more than 6 sub-second digits",
        ],
    );
}

/// CSV records with too few or too many fields, or bytes that are not UTF-8, are dead
/// letters naming their line under `tolerance = "all"`; the others arrive.
#[test]
fn csv_records_of_the_wrong_shape_or_encoding_are_dead_letters() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/a.csv"),
        b"id,name\n1,a\n2\n3,c,extra\n4,\xff\xfe\n5,e\n".as_slice(),
    )
    .unwrap();
    std::fs::write(
        d.join("c.toml"),
        "name = \"c\"\n[source]\nconnector = \"file\"\npath = \"in/*.csv\"\nformat = \"csv\"\n\
         schema = [{ name = \"id\", type = \"int64\" }, { name = \"name\", type = \"string\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
         [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.9\n[errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = crate::support::sluice(d, &["run", "c.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut good = crate::support::jsonl_lines(&d.join("out"));
    good.sort();
    assert_eq!(
        good,
        ["{\"id\":1,\"name\":\"a\"}", "{\"id\":5,\"name\":\"e\"}"]
    );
    let dlq = crate::support::jsonl_lines(&d.join("dlq"));
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    for (line, rec) in [3, 4, 5].iter().zip(&dlq) {
        assert!(rec.contains(&format!("line {line}")), "{rec}");
    }
}

/// `in/r.jsonl`: `n` records `{"id", "region", "body"}`, the ones in `big` with a body
/// of `big_len` bytes and a region of `region_len` bytes.
fn refusal_input(d: &std::path::Path, n: usize, big: &[usize], big_len: usize, region_len: usize) {
    std::fs::create_dir_all(d.join("in")).unwrap();
    let lines: String = (0..n)
        .map(|i| {
            let (body, region) = match big.contains(&i) {
                true => ("b".repeat(big_len), "r".repeat(region_len)),
                false => ("small".to_string(), "eu".to_string()),
            };
            format!("{{\"id\": {i}, \"region\": \"{region}\", \"body\": \"{body}\"}}\n")
        })
        .collect();
    std::fs::write(d.join("in/r.jsonl"), lines).unwrap();
}

const REFUSAL_SOURCE: &str = "[source]\nconnector = \"file\"\npath = \"in/r.jsonl\"\n\
    schema = [{ name = \"id\", type = \"int64\" }, { name = \"region\", type = \"string\" }, { name = \"body\", type = \"string\" }]\n";

const DEAD_LETTERS: &str = "[errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
    [errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\nformat = \"json\"\n";

/// A record over the producer's `message.max.bytes` is refused before any record of its
/// write is sent: a dead letter naming the topic under tolerance all (the others
/// delivered once each), a stop naming it otherwise (nothing sent).
#[test]
fn a_message_too_large_for_kafka_is_a_dead_letter_and_the_rest_arrive_once() {
    use crate::kafka::{bootstrap, create_topic, py, read_all, topic};
    let dir = workdir();
    let d = dir.path();
    refusal_input(d, 50, &[20], 2_000_000, 2);
    let sink = |t: &str| {
        format!(
            "[sink]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{t}\"\nformat = \"json\"\n",
            bootstrap()
        )
    };
    let count = |t: &str| {
        py(&format!(
            "{}print(len(msgs), sorted(json.loads(m[3])['id'] for m in msgs) == [i for i in range(50) if i != 20])",
            read_all(t, 49)
        ))
    };
    // tolerance none: stops, nothing of the write sent
    let stopped = topic("refused-none");
    create_topic(&stopped, 1);
    std::fs::write(
        d.join("n.toml"),
        format!("name = \"n\"\n{REFUSAL_SOURCE}{}", sink(&stopped)),
    )
    .unwrap();
    let run = sluice(d, &["run", "n.toml"]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("topic \"{stopped}\" record 20"))
            && run.stderr.contains("message.max.bytes"),
        "{}",
        run.stderr
    );
    assert_eq!(count(&stopped), "0 False");
    // tolerance all: a dead letter, the rest once each
    let t = topic("refused-all");
    create_topic(&t, 1);
    std::fs::write(
        d.join("a.toml"),
        format!("name = \"a\"\n{REFUSAL_SOURCE}{}{DEAD_LETTERS}", sink(&t)),
    )
    .unwrap();
    let run = sluice(d, &["run", "a.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(count(&t), "49 True");
    let dlq = jsonl_lines(&d.join("dlq"));
    assert_eq!(dlq.len(), 1);
    let letter: serde_json::Value = serde_json::from_str(&dlq[0]).unwrap();
    assert_eq!(letter["split"], t.as_str());
    assert!(
        letter["position"]
            .as_str()
            .unwrap()
            .starts_with("sink \"sink\" topic"),
        "{letter}"
    );
    assert!(
        letter["record"].as_str().unwrap().contains("\"id\":20"),
        "{letter}"
    );
    // a Kafka dead-letter sink cannot take the letter of a record too large for Kafka:
    // a stop naming the record and the way out, nothing lost
    let (t, dead) = (topic("refused-dlq"), topic("refused-dlq-letters"));
    create_topic(&t, 1);
    create_topic(&dead, 1);
    std::fs::write(
        d.join("k.toml"),
        format!(
            "name = \"k\"\n{REFUSAL_SOURCE}{}[errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
             [errors.dead_letter]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{dead}\"\n",
            sink(&t),
            bootstrap()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "k.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "the dead-letter sink refused 1 letter(s), first the one of sink \"sink\" topic"
        ) && run.stderr.contains("nothing is lost"),
        "{}",
        run.stderr
    );
    let rerun = sluice(d, &["run", "k.toml"]);
    assert_eq!(
        rerun.code,
        Some(1),
        "the record is still there to refuse: {}",
        rerun.stderr
    );
}

/// A partition value that makes an object key longer than S3 takes (1,024 bytes) is a
/// dead letter; the other rows are written.
#[test]
fn a_row_whose_s3_key_would_be_too_long_is_a_dead_letter_and_the_rest_are_written() {
    use crate::s3::{conn, new_bucket, py};
    let dir = workdir();
    let d = dir.path();
    refusal_input(d, 30, &[3, 17], 10, 1100);
    let bucket = new_bucket("longkey");
    std::fs::write(
        d.join("s.toml"),
        format!(
            "name = \"s\"\n{REFUSAL_SOURCE}[sink]\nconnector = \"s3\"\n{}prefix = \"t/region={{region}}/\"\nformat = \"json\"\n{DEAD_LETTERS}",
            conn(&bucket)
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "s.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ids = py(
        &bucket,
        "ids = []\n\
         for o in s3.list_objects_v2(Bucket=BUCKET, Prefix='t/').get('Contents', []):\n\
         \x20   if '/_sluice/' in o['Key']: continue\n\
         \x20   assert len(o['Key']) <= 1024, o['Key']\n\
         \x20   body = s3.get_object(Bucket=BUCKET, Key=o['Key'])['Body'].read().decode()\n\
         \x20   ids += [json.loads(l)['id'] for l in body.splitlines() if l]\n\
         print(sorted(ids) == [i for i in range(30) if i not in (3, 17)], len(ids))",
    );
    assert_eq!(ids, "True 28");
    let dlq = jsonl_lines(&d.join("dlq"));
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    for letter in &dlq {
        let letter: serde_json::Value = serde_json::from_str(letter).unwrap();
        assert!(
            letter["error"].as_str().unwrap().contains("1024"),
            "{letter}"
        );
    }
}

/// Text with a NUL character, which PostgreSQL cannot store, is refused by the sink
/// before its write: a dead letter naming the column, the other rows written (COPY
/// used to fail the whole write with the server's message, naming neither).
#[test]
fn text_with_a_nul_character_into_postgres_is_a_dead_letter_naming_the_column() {
    use crate::postgres::{fresh, psql, server, url};
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/r.jsonl"),
        "{\"id\": 1, \"v\": \"a\"}\n{\"id\": 2, \"v\": \"b\\u0000c\"}\n{\"id\": 3, \"v\": \"d\"}\n",
    )
    .unwrap();
    let pipeline = |table: &str, errors: &str| {
        std::fs::write(
            d.join(format!("{table}.toml")),
            format!(
                "name = \"{table}\"\n[source]\nconnector = \"file\"\npath = \"in/r.jsonl\"\n\
                 schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"v\", type = \"string\" }}]\n\
                 [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\n{errors}",
                url()
            ),
        )
        .unwrap();
        sluice(d, &["run", &format!("{table}.toml")])
    };
    let stopped = fresh("it_pg_nul_none");
    let run = pipeline(&stopped, "");
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("column \"v\"") && run.stderr.contains("row 1"),
        "{}",
        run.stderr
    );
    let table = fresh("it_pg_nul_all");
    let run = pipeline(&table, DEAD_LETTERS);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM \"{table}\""
        )),
        "1=a,3=d"
    );
    let dlq = jsonl_lines(&d.join("dlq"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let letter: serde_json::Value = serde_json::from_str(&dlq[0]).unwrap();
    assert!(
        letter["error"].as_str().unwrap().contains("column \"v\""),
        "{letter}"
    );
    assert!(
        letter["record"].as_str().unwrap().contains("\"id\":2"),
        "{letter}"
    );
}

/// Floats a destination would change are refused by its sink: NaN and infinities into
/// JSON lines (written as null before), NaN and -0.0 into SQLite (stored as NULL and
/// 0.0 before). Dead letters under tolerance all; the other rows are written.
#[test]
fn floats_json_or_sqlite_would_change_are_dead_letters_not_nulls() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/f.csv"),
        "id,x\n1,1.5\n2,NaN\n3,inf\n4,-0.0\n5,-2.25\n",
    )
    .unwrap();
    let source = "[source]\nconnector = \"file\"\npath = \"in/f.csv\"\nformat = \"csv\"\n\
        schema = [{ name = \"id\", type = \"int64\" }, { name = \"x\", type = \"float64\" }]\n";
    let run = |name: &str, sink: &str| {
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!("name = \"{name}\"\n{source}{sink}[errors]\ntolerance = \"all\"\nmax_failure_rate = 0.9\n\
                     [errors.dead_letter]\nconnector = \"file\"\npath = \"dlq-{name}\"\nformat = \"json\"\n"),
        )
        .unwrap();
        let run = sluice(d, &["run", &format!("{name}.toml")]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        jsonl_lines(&d.join(format!("dlq-{name}")))
    };
    let letters = run(
        "j",
        "[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    );
    let mut good = jsonl_lines(&d.join("out"));
    good.sort();
    assert_eq!(
        good,
        [
            "{\"id\":1,\"x\":1.5}",
            "{\"id\":4,\"x\":-0.0}",
            "{\"id\":5,\"x\":-2.25}"
        ]
    );
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().all(|l| l.contains("no JSON number")),
        "{letters:?}"
    );
    let db = d.join("f.db");
    let letters = run(
        "s",
        &format!(
            "[sink]\nconnector = \"sqlite\"\npath = \"{}\"\ntable = \"f\"\n",
            db.display()
        ),
    );
    assert_eq!(
        crate::support::sqlite(
            &db,
            "SELECT group_concat(id || '=' || x, ',') FROM (SELECT * FROM f ORDER BY id)"
        ),
        "1=1.5,3=Inf,5=-2.25"
    );
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().all(|l| l.contains("SQLite would store")),
        "{letters:?}"
    );
    // nan = "text": NaN kept as the text NaN, read back by the sqlite source as NaN;
    // -0.0 still refused
    let letters = run(
        "t",
        &format!(
            "[sink]\nconnector = \"sqlite\"\npath = \"{}\"\ntable = \"t\"\nnan = \"text\"\n",
            db.display()
        ),
    );
    assert_eq!(
        crate::support::sqlite(
            &db,
            "SELECT group_concat(id || '=' || x || ':' || typeof(x), ',') FROM (SELECT * FROM t ORDER BY id)"
        ),
        "1=1.5:real,2=NaN:text,3=Inf:real,5=-2.25:real"
    );
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].contains("-0.0, which SQLite"), "{letters:?}");
    std::fs::write(
        d.join("back.toml"),
        format!(
            "name = \"back\"\n[source]\nconnector = \"sqlite\"\npath = \"{}\"\ntable = \"t\"\n\
             [sink]\nconnector = \"file\"\npath = \"back\"\nformat = \"csv\"\n",
            db.display()
        ),
    )
    .unwrap();
    let back = sluice(d, &["run", "back.toml"]);
    assert_eq!(back.code, Some(0), "{}", back.stderr);
    let text: String = std::fs::read_dir(d.join("back"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(text.contains("2,NaN"), "{text}");
}

/// Rows of a PostgreSQL table with a value Arrow cannot hold (numeric NaN, an infinite
/// date) are dead letters carrying the whole row as text, in both read orders: each
/// column as read, the failed value as the server writes it, so the row can be
/// replayed; the other rows are written.
#[test]
fn postgres_rows_with_values_arrow_cannot_hold_are_dead_letters_carrying_the_row() {
    use crate::postgres::{fresh, psql, server, url};
    let _server = server();
    let dir = workdir();
    let d = dir.path();
    let src = fresh("it_pg_dlq_rows");
    psql(&format!(
        "CREATE TABLE \"{src}\" (id bigint PRIMARY KEY, n numeric(10,2), d date, tags text[], v text); \
         INSERT INTO \"{src}\" VALUES (1, 1.50, '2024-01-02', '{{a,b}}', 'one'), \
         (2, 'NaN', '2024-01-03', NULL, 'two'), (3, 3.25, 'infinity', '{{c}}', NULL), \
         (4, 4.00, '2024-01-05', '{{}}', 'four'); \
         INSERT INTO \"{src}\" SELECT g, g, '2024-02-01', NULL, 'more' FROM generate_series(5, 20) g"
    ));
    for order in ["key", "physical"] {
        std::fs::write(
            d.join("p.toml"),
            format!(
                "name = \"{src}_{order}\"\n[source]\nconnector = \"postgres\"\nurl = \"{}\"\ntables = [\"{src}\"]\nsnapshot_order = \"{order}\"\n\
                 [sink]\nconnector = \"file\"\npath = \"out/{order}\"\nformat = \"json\"\n{}",
                url(),
                DEAD_LETTERS.replace("path = \"dlq\"", &format!("path = \"dlq/{order}\""))
            ),
        )
        .unwrap();
        let run = sluice(d, &["run", "p.toml"]);
        assert_eq!(run.code, Some(0), "{order}: {}", run.stderr);
        let ids = crate::support::jsonl_ids(&d.join(format!("out/{order}")));
        let expected: Vec<i64> = [1].into_iter().chain(4..=20).collect();
        assert_eq!(ids, expected, "{order}");
        let mut letters: Vec<serde_json::Value> = jsonl_lines(&d.join(format!("dlq/{order}")))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        letters.sort_by_key(|l| l["record"].as_str().unwrap().to_string());
        assert_eq!(letters.len(), 2, "{order}: {letters:?}");
        let rows: Vec<serde_json::Value> = letters
            .iter()
            .map(|l| serde_json::from_str(l["record"].as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(
            rows[0],
            serde_json::json!({"id": "2", "n": "NaN", "d": "2024-01-03", "tags": null, "v": "two"}),
            "{order}"
        );
        assert_eq!(
            rows[1],
            serde_json::json!({"id": "3", "n": "3.25", "d": "infinity", "tags": "[c]", "v": null}),
            "{order}"
        );
        assert!(
            letters[0]["error"]
                .as_str()
                .unwrap()
                .contains("column \"n\""),
            "{order}: {}",
            letters[0]
        );
    }
}

/// Dead letters over many checkpoints, and more of them in one flush than a
/// dead-letter file holds: every letter is kept (their batches carry no position, and
/// each flush's files, and each file rolled within one, used to get the same name).
#[test]
fn dead_letters_of_many_flushes_and_rolled_files_are_all_kept() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let text: String = (0..3000)
        .map(|i| match i % 10 {
            0 => format!("{{\"id\": bad{i}}}\n"),
            _ => format!("{{\"id\": {i}}}\n"),
        })
        .collect();
    std::fs::write(d.join("in/a.jsonl"), text).unwrap();
    std::fs::write(
        d.join("p.toml"),
        "name = \"letters\"\n[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\nschema = [{ name = \"id\", type = \"int64\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\n[batch]\nmax_records = 200\n[checkpoint]\ninterval = \"1ms\"\n\
         [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
         [errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\nformat = \"json\"\nmax_records = 7\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_lines(&d.join("out")).len(), 2700);
    let letters = jsonl_lines(&d.join("dlq"));
    let mut lines: Vec<u64> = letters
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let position = v["position"].as_str().unwrap().to_string();
            position.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    lines.sort();
    lines.dedup();
    assert_eq!(
        lines.len(),
        300,
        "letters lost: {} of 300 kept",
        lines.len()
    );
}
