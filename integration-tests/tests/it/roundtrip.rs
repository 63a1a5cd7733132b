//! Type fidelity: JSON lines -> Parquet -> JSON lines with every supported type,
//! extreme values, unicode and nulls; the Parquet file is read back with pyarrow.

use crate::support::{python, sluice, workdir};

pub(crate) const SCHEMA: &str = r#"schema = [
  { name = "i8", type = "int8" }, { name = "i16", type = "int16" },
  { name = "i32", type = "int32" }, { name = "i64", type = "int64" },
  { name = "u32", type = "uint32" }, { name = "u64", type = "uint64" },
  { name = "f32", type = "float32" }, { name = "f64", type = "float64" },
  { name = "b", type = "bool" }, { name = "s", type = "string" },
  { name = "bin", type = "binary" }, { name = "d", type = "date" },
  { name = "t", type = "time" }, { name = "ts", type = "timestamp" },
  { name = "tstz", type = "timestamptz" }, { name = "tsms", type = "timestamp(ms)" },
  { name = "dec", type = "decimal(20,4)" }, { name = "ls", type = "list<string>" },
  { name = "li", type = "list<int64>" }, { name = "st", type = "struct<a: int64, b: string>" },
]"#;

pub(crate) const ROWS: &str = r#"
import json
rows = [
  {"i8": -128, "i16": 32767, "i32": -2147483648, "i64": 9223372036854775807, "u32": 4294967295,
   "u64": 18446744073709551615, "f32": 1.5, "f64": -1.25e300, "b": True, "s": "h\u00e9llo \u2713 \"q\" \\ \u4e2d",
   "bin": "deadbeef00", "d": "2024-02-29", "t": "23:59:59.999999", "ts": "2024-05-01T10:00:00.123456",
   "tstz": "2024-05-01T10:00:00.123456Z", "tsms": "1999-12-31T23:59:59.999", "dec": "1234567890123456.7890",
   "ls": ["a", "", None], "li": [1, -2], "st": {"a": 1, "b": "x"}},
  {k: None for k in ["i8","i16","i32","i64","u32","u64","f32","f64","b","s","bin","d","t","ts","tstz","tsms","dec","ls","li","st"]},
  {"i8": 0, "i16": 0, "i32": 0, "i64": -9223372036854775808, "u32": 0, "u64": 0, "f32": 0.0, "f64": 0.1,
   "b": False, "s": "", "bin": "", "d": "1970-01-01", "t": "00:00:00", "ts": "1900-01-01T00:00:00",
   "tstz": "2262-04-11T23:47:16.854775Z", "tsms": "1970-01-01T00:00:00", "dec": "-0.0001",
   "ls": [], "li": [], "st": {"a": None, "b": None}},
]
"#;

pub(crate) const COMPARE: &str = r#"
import json, datetime
from decimal import Decimal
def norm(col, v):
    if v is None: return None
    if col == "dec": return Decimal(str(v))
    if col in ("ts", "tsms", "tstz"): return datetime.datetime.fromisoformat(v)
    if col == "t": return datetime.time.fromisoformat(v)
    if col == "bin": return v.lower()
    if col in ("f32", "f64"): return float(v)
    return v
def load(p):
    out = []
    for line in open(p):
        r = json.loads(line, parse_float=Decimal)
        out.append({k: norm(k, v) for k, v in r.items()})
    return out
a = [{k: norm(k, v) for k, v in r.items()} for r in rows]
b = load(OUT)
assert len(a) == len(b), (len(a), len(b))
for x, y in zip(a, b):
    for k in x:
        assert x[k] == y.get(k), (k, x[k], y.get(k))
print("equal", len(b))
"#;

/// Writes the data set to `dir/in/all.jsonl`.
pub(crate) fn write_rows(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    python(&format!(
        "{ROWS}\nwith open('{}/in/all.jsonl', 'w') as f:\n    [f.write(json.dumps(r) + '\\n') for r in rows]",
        dir.display()
    ));
}

/// Compares the JSON lines file under `out` with the data set, value by value:
/// "equal 3" when every value came back exactly.
pub(crate) fn compare_out(out: &std::path::Path) -> String {
    let file = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("a json file");
    python(&format!("{ROWS}\nOUT = '{}'\n{COMPARE}", file.display()))
}

#[test]
fn every_type_survives_json_to_parquet_to_json() {
    let dir = workdir();
    let d = dir.path();
    write_rows(d);
    std::fs::write(
        d.join("to_parquet.toml"),
        format!(
            "[source]\nconnector = \"file\"\npath = \"in/all.jsonl\"\n{SCHEMA}\n[sink]\nconnector = \"file\"\npath = \"out/parquet\"\nformat = \"parquet\"\n"
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "to_parquet.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let types = python(&format!(
        "import pyarrow.parquet as pq, glob\n\
         t = pq.read_table(glob.glob('{}/out/parquet/*.parquet'))\n\
         print(t.num_rows)\n\
         print(';'.join(str(f.type) for f in t.schema))\n\
         r = t.to_pylist()[0]\n\
         print(r['dec'], r['u64'], r['i64'], r['tstz'].isoformat(), r['bin'].hex(), r['s'])\n\
         print(t.to_pylist()[1]['st'], t.to_pylist()[2]['ls'])",
        d.display()
    ));
    let lines: Vec<&str> = types.lines().collect();
    assert_eq!(lines[0], "3");
    assert_eq!(
        lines[1],
        "int8;int16;int32;int64;uint32;uint64;float;double;bool;string;binary;date32[day];time64[us];\
         timestamp[us];timestamp[us, tz=UTC];timestamp[ms];decimal128(20, 4);list<item: string>;\
         list<item: int64>;struct<a: int64, b: string>"
    );
    assert_eq!(
        lines[2],
        "1234567890123456.7890 18446744073709551615 9223372036854775807 2024-05-01T10:00:00.123456+00:00 deadbeef00 h\u{e9}llo \u{2713} \"q\" \\ \u{4e2d}"
    );
    assert_eq!(lines[3], "None []");

    std::fs::write(
        d.join("to_json.toml"),
        "[source]\nconnector = \"file\"\npath = \"out/parquet/*.parquet\"\nformat = \"parquet\"\n[sink]\nconnector = \"file\"\npath = \"out/json\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "to_json.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(compare_out(&d.join("out/json")), "equal 3");
}

/// CSV files of one glob whose headers list the same columns in another order: each
/// is read by its header's names, never by position (which would swap the values).
#[test]
fn csv_files_with_columns_in_another_order_keep_each_value_in_its_column() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.csv"), "id,city,amount\n1,Oslo,10.50\n").unwrap();
    std::fs::write(d.join("in/b.csv"), "amount,id,city\n20.25,2,Lima\n").unwrap();
    std::fs::write(
        d.join("p.toml"),
        "name = \"order\"\n[source]\nconnector = \"file\"\npath = \"in/*.csv\"\nformat = \"csv\"\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut rows: Vec<serde_json::Value> = crate::support::jsonl_lines(&d.join("out"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"id": 1, "city": "Oslo", "amount": 10.5}),
            serde_json::json!({"id": 2, "city": "Lima", "amount": 20.25}),
        ]
    );
}

/// A UTF-8 byte order mark (as some editors write) at the start of a JSON lines or CSV
/// file is skipped, not a bad first line or part of the first column's name.
#[test]
fn a_byte_order_mark_at_a_files_start_is_skipped() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(
        d.join("in/a.jsonl"),
        b"\xEF\xBB\xBF{\"id\": 1}\n{\"id\": 2}\n",
    )
    .unwrap();
    std::fs::write(d.join("in/b.csv"), b"\xEF\xBB\xBFid\n3\n").unwrap();
    for (name, path, format) in [("j", "in/*.jsonl", "json"), ("c", "in/*.csv", "csv")] {
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\n[source]\nconnector = \"file\"\npath = \"{path}\"\nformat = \"{format}\"\n\
                 [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n"
            ),
        )
        .unwrap();
        let run = sluice(d, &["run", "--quiet", &format!("{name}.toml")]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    }
    let mut lines = crate::support::jsonl_lines(&d.join("out"));
    lines.sort();
    assert_eq!(lines, vec!["{\"id\":1}", "{\"id\":2}", "{\"id\":3}"]);
}

/// A list or struct column into CSV: with a declared schema `validate` names the
/// column and `csv.nested`; without one the run stops at the first write naming it;
/// with `csv.nested = "json"` each value is its JSON text, read back by Python's csv
/// and json modules.
#[test]
fn nested_columns_into_csv_are_named_or_written_as_json_text() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("in.jsonl"),
        "{\"id\": 1, \"tags\": [\"a\", \"b,c\"], \"at\": {\"x\": 1.5}}\n{\"id\": 2, \"tags\": null, \"at\": {\"x\": null}}\n",
    )
    .unwrap();
    let declared = "schema = [{ name = \"id\", type = \"int64\" }, { name = \"tags\", type = \"list<string>\" }, \
                    { name = \"at\", type = \"struct<x: float64>\" }]\n";
    let pipeline = |name: &str, schema: &str, nested: &str| {
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"file\"\npath = \"in.jsonl\"\n{schema}\
             [sink]\nconnector = \"file\"\npath = \"{name}\"\nformat = \"csv\"\n{nested}"
        )
    };
    std::fs::write(d.join("declared.toml"), pipeline("declared", declared, "")).unwrap();
    let run = sluice(d, &["validate", "declared.toml"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("[sink]: column \"tags\" is list<string>")
            && run.stderr.contains("csv.nested = \"json\""),
        "{}",
        run.stderr
    );
    std::fs::write(d.join("inferred.toml"), pipeline("inferred", "", "")).unwrap();
    let run = sluice(d, &["run", "--quiet", "inferred.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("column \"at\" is struct<x: float64>: CSV holds no nested values"),
        "{}",
        run.stderr
    );
    std::fs::write(
        d.join("json.toml"),
        pipeline("json", declared, "csv = { nested = \"json\" }\n"),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "json.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = python(&format!(
        "import csv, glob, json\n\
         rows = [r for f in sorted(glob.glob('{}/json/*.csv')) for r in csv.DictReader(open(f))]\n\
         print(json.dumps([[r['id'], json.loads(r['tags']) if r['tags'] else None, json.loads(r['at'])] for r in rows]))",
        d.display()
    ));
    assert_eq!(out, r#"[["1", ["a", "b,c"], {"x": 1.5}], ["2", null, {}]]"#);
}

/// An empty string and a null survive JSON lines -> CSV -> JSON lines when both CSV
/// ends set `null_value`; a text equal to it is refused, naming the column.
#[test]
fn csv_null_value_keeps_empty_strings_apart_from_nulls() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("in.jsonl"),
        "{\"id\": 1, \"s\": \"\"}\n{\"id\": 2, \"s\": null}\n{\"id\": 3, \"s\": \"x\"}\n",
    )
    .unwrap();
    let schema =
        "schema = [{ name = \"id\", type = \"int64\" }, { name = \"s\", type = \"string\" }]\n";
    let nulls = "csv = { null_value = \"\\\\N\" }\n";
    std::fs::write(
        d.join("to_csv.toml"),
        format!(
            "name = \"to_csv\"\n[source]\nconnector = \"file\"\npath = \"in.jsonl\"\n{schema}\
             [sink]\nconnector = \"file\"\npath = \"csv\"\nformat = \"csv\"\n{nulls}"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("back.toml"),
        format!(
            "name = \"back\"\n[source]\nconnector = \"file\"\npath = \"csv/*.csv\"\nformat = \"csv\"\n{schema}{nulls}\
             [sink]\nconnector = \"file\"\npath = \"back\"\n"
        ),
    )
    .unwrap();
    for p in ["to_csv.toml", "back.toml"] {
        let run = sluice(d, &["run", "--quiet", p]);
        assert_eq!(run.code, Some(0), "{p}: {}", run.stderr);
    }
    let mut back: Vec<String> = crate::support::jsonl_lines(&d.join("back"));
    back.sort();
    assert_eq!(
        back,
        vec![
            r#"{"id":1,"s":""}"#.to_string(),
            r#"{"id":2,"s":null}"#.to_string(),
            r#"{"id":3,"s":"x"}"#.to_string()
        ]
    );
    // the null text itself as a value would come back as null: refused
    std::fs::write(d.join("in.jsonl"), "{\"id\": 4, \"s\": \"\\\\N\"}\n").unwrap();
    std::fs::write(
        d.join("clash.toml"),
        format!(
            "name = \"clash\"\n[source]\nconnector = \"file\"\npath = \"in.jsonl\"\n{schema}\
             [sink]\nconnector = \"file\"\npath = \"clash\"\nformat = \"csv\"\n{nulls}"
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "--quiet", "clash.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("column \"s\": the text \"\\N\" is csv.null_value"),
        "{}",
        run.stderr
    );
}

/// A field inside a declared struct that the struct does not declare is not dropped
/// without a word: the log names it once, however many lines hold it.
#[test]
fn a_nested_field_the_declared_struct_lacks_is_named_once_in_the_log() {
    let dir = workdir();
    let d = dir.path();
    let lines: String = (0..500)
        .map(|i| format!("{{\"id\": {i}, \"at\": {{\"x\": 1.5, \"y\": {i}}}}}\n"))
        .collect();
    std::fs::write(d.join("in.jsonl"), lines).unwrap();
    std::fs::write(
        d.join("p.toml"),
        "[source]\nconnector = \"file\"\npath = \"in.jsonl\"\n\
         schema = [{ name = \"id\", type = \"int64\" }, { name = \"at\", type = \"struct<x: float64>\" }]\n\
         [sink]\nconnector = \"file\"\npath = \"out\"\n[batch]\nmax_records = 100\n",
    )
    .unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let said = "field \"y\" inside struct column \"at\" is not in its declared type: dropped";
    assert_eq!(run.stderr.matches(said).count(), 1, "{}", run.stderr);
    assert_eq!(crate::support::jsonl_lines(&d.join("out")).len(), 500);
}

/// Decimals written as JSON strings (`json.decimals = "string"`) keep their digits and
/// scale through a reader without a declared schema (as numbers they come back as
/// floats), and read back into the declared decimal column exactly.
#[test]
fn decimals_as_json_strings_survive_a_schemaless_round_trip() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("in.jsonl"),
        "{\"id\": 1, \"a\": \"12345678901234.50\"}\n{\"id\": 2, \"a\": 0.10}\n{\"id\": 3, \"a\": null}\n",
    )
    .unwrap();
    let decimal =
        "schema = [{ name = \"id\", type = \"int64\" }, { name = \"a\", type = \"decimal(18,2)\" }]\n";
    let steps = [
        (
            "out",
            format!("path = \"in.jsonl\"\n{decimal}"),
            "json = { decimals = \"string\" }\n",
        ),
        ("schemaless", "path = \"out/*.jsonl\"\n".to_string(), ""),
        (
            "typed",
            format!("path = \"schemaless/*.jsonl\"\n{decimal}"),
            "",
        ),
    ];
    for (out, source, sink) in &steps {
        std::fs::write(
            d.join(format!("{out}.toml")),
            format!(
                "name = \"{out}\"\n[source]\nconnector = \"file\"\n{source}\
                 [sink]\nconnector = \"file\"\npath = \"{out}\"\n{sink}"
            ),
        )
        .unwrap();
        let run = sluice(d, &["run", "--quiet", &format!("{out}.toml")]);
        assert_eq!(run.code, Some(0), "{out}: {}", run.stderr);
    }
    // the text of each value, as written (a schemaless read orders fields by name)
    let read = |dir: &str| {
        let mut values: Vec<(i64, String)> = crate::support::jsonl_lines(&d.join(dir))
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["id"].as_i64().unwrap(), v["a"].to_string())
            })
            .collect();
        values.sort();
        values
    };
    let strings = vec![
        (1, "\"12345678901234.50\"".to_string()),
        (2, "\"0.10\"".to_string()),
        (3, "null".to_string()),
    ];
    assert_eq!(read("out"), strings);
    assert_eq!(
        read("schemaless"),
        strings,
        "the schemaless read changed them"
    );
    let mut typed = crate::support::jsonl_lines(&d.join("typed"));
    typed.sort();
    assert_eq!(
        typed,
        vec![
            r#"{"id":1,"a":12345678901234.50}"#.to_string(),
            r#"{"id":2,"a":0.10}"#.to_string(),
            r#"{"id":3,"a":null}"#.to_string(),
        ]
    );
}

/// Zeros after the point of a whole-number decimal (`12.0` into `decimal(10,0)`) are
/// read as what they are, from CSV and from JSON lines, not taken into the number (the
/// parser arrow-csv uses reads "12.0" at scale 0 as 120); pyarrow reads the Parquet.
#[test]
fn zeros_after_the_point_of_a_whole_number_decimal_keep_its_value() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(d.join("n.csv"), "id,n\n1,12.0\n2,-3.00\n3,7\n").unwrap();
    std::fs::write(
        d.join("n.jsonl"),
        "{\"id\":1,\"n\":12.0}\n{\"id\":2,\"n\":\"-3.00\"}\n{\"id\":3,\"n\":7}\n",
    )
    .unwrap();
    for format in ["csv", "json"] {
        let file = if format == "csv" { "n.csv" } else { "n.jsonl" };
        std::fs::write(
            d.join(format!("{format}.toml")),
            format!(
                "name = \"zeros_{format}\"\n[source]\nconnector = \"file\"\npath = \"{file}\"\nformat = \"{format}\"\n\
                 schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"n\", type = \"decimal(10,0)\" }}]\n\
                 [sink]\nconnector = \"file\"\npath = \"out_{format}\"\nformat = \"parquet\"\n"
            ),
        )
        .unwrap();
        let run = sluice(d, &["run", "--quiet", &format!("{format}.toml")]);
        assert_eq!(run.code, Some(0), "{format}: {}", run.stderr);
        let got = python(&format!(
            "import pyarrow.parquet as pq, glob\n\
             t = pq.read_table(sorted(glob.glob('{}/out_{format}/*.parquet'))).sort_by('id')\n\
             print(t.schema.field('n').type, [str(v) for v in t.column('n').to_pylist()])",
            d.display()
        ));
        assert_eq!(got, "decimal128(10, 0) ['12', '-3', '7']", "{format}");
    }
}
