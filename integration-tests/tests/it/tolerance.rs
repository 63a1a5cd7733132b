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
