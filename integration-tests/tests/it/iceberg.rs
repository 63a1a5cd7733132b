//! The Iceberg sink, read back with pyiceberg (installed by run.sh): every type exact,
//! partition pruning, offsets in the snapshot summary, kill -9, and S3 (moto) with a
//! PostgreSQL catalog.

use std::path::Path;
use std::time::Duration;

use crate::support::{finish, kill_at_random, python, sluice, spawn, workdir};

const SCHEMA: &str = r#"schema = [
  { name = "id", type = "int64", nullable = false },
  { name = "big", type = "uint64" },
  { name = "small", type = "int16" },
  { name = "ts", type = "timestamp(us, UTC)" },
  { name = "local", type = "timestamp(ns)" },
  { name = "day", type = "date" },
  { name = "amount", type = "decimal(12,2)" },
  { name = "name", type = "string" },
  { name = "tags", type = "list<string>" },
  { name = "attrs", type = "struct<a: int32, b: string>" },
  { name = "ratio", type = "float64" },
  { name = "ok", type = "bool" },
]"#;

/// Events over three days, with nulls, unicode, u64::MAX and whole-µs nanoseconds.
fn write_events(path: &Path, rows: usize) {
    let mut out = String::with_capacity(rows * 300);
    for i in 0..rows {
        let day = 10 + i % 3;
        let big = if i % 7 == 0 {
            u64::MAX
        } else {
            i as u64 * 1_000_003
        };
        let name = match i % 4 {
            0 => "null".to_string(),
            1 => format!("\"ñandú 🦜 {i}\""),
            _ => format!("\"n{i}\""),
        };
        out.push_str(&format!(
            "{{\"id\": {i}, \"big\": {big}, \"small\": {}, \"ts\": \"2024-03-{day:02}T{:02}:{:02}:07.{:06}Z\", \
             \"local\": \"2024-03-{day:02}T01:02:03.{:06}000\", \"day\": \"2024-03-{day:02}\", \"amount\": \"{}.{:02}\", \
             \"name\": {name}, \"tags\": [\"t{}\", \"ü\"], \"attrs\": {{\"a\": {}, \"b\": \"x{i}\"}}, \"ratio\": {}, \"ok\": {}}}\n",
            (i % 60000) as i64 - 30000,
            i % 24,
            i % 60,
            i % 1_000_000,
            i % 1_000_000,
            i * 7,
            i % 100,
            i % 5,
            i as i64 - 5,
            i as f64 / 8.0,
            i % 2 == 0
        ));
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

fn pipeline(d: &Path, name: &str, sink: &str, extra: &str) {
    std::fs::write(
        d.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\n[source]\nconnector = \"file\"\npath = \"in/events.jsonl\"\n{SCHEMA}\n\
             [sink]\nconnector = \"iceberg\"\n{sink}\n[checkpoint]\npath = \"state-{name}.db\"\n{extra}"
        ),
    )
    .unwrap();
}

fn local_sink(d: &Path, partition_by: &str) -> String {
    format!(
        "catalog = {{ type = \"sql\", url = \"sqlite://{}/catalog.db\" }}\nwarehouse = \"wh\"\nnamespace = \"analytics\"\n\
         table = \"events\"\npartition_by = {partition_by}\n",
        d.display()
    )
}

/// pyiceberg's catalog of the local test setup, as `cat`, with `t` the table.
fn local_py(d: &Path, code: &str) -> String {
    python(&format!(
        "import json, datetime, decimal\nfrom pyiceberg.catalog.sql import SqlCatalog\n\
         cat = SqlCatalog('sluice', uri='sqlite:///{d}/catalog.db', warehouse='file://{d}/wh')\n\
         t = cat.load_table('analytics.events')\nINPUT = '{d}/in/events.jsonl'\n{code}",
        d = d.display()
    ))
}

/// Checks every row of `t` against INPUT, exactly once each; prints the row count.
const CHECK_ALL: &str = r#"
rows = t.scan().to_arrow().to_pylist()
ids = [r['id'] for r in rows]
assert len(ids) == len(set(ids)), ('duplicates', len(ids) - len(set(ids)))
got = {r['id']: r for r in rows}
want = [json.loads(l) for l in open(INPUT)]
assert sorted(got) == [w['id'] for w in want], (len(got), len(want))
utc = datetime.timezone.utc
for w in want:
    g = got[w['id']]
    assert g['big'] == decimal.Decimal(w['big']), (g['big'], w['big'])
    assert g['small'] == w['small']
    assert g['ts'] == datetime.datetime.strptime(w['ts'], '%Y-%m-%dT%H:%M:%S.%fZ').replace(tzinfo=utc), (g['ts'], w['ts'])
    assert g['local'] == datetime.datetime.strptime(w['local'][:26], '%Y-%m-%dT%H:%M:%S.%f'), (g['local'], w['local'])
    assert g['day'] == datetime.date.fromisoformat(w['day'])
    assert g['amount'] == decimal.Decimal(w['amount']), (g['amount'], w['amount'])
    assert g['name'] == w['name'] and g['tags'] == w['tags'] and g['attrs'] == w['attrs'], (g, w)
    assert g['ratio'] == w['ratio'] and g['ok'] == w['ok'], (g, w)
print(len(got))
"#;

/// Checks each data file's manifest entry (rows, nulls, values, bounds) against the
/// file as pyarrow reads it, and that the bounds prune: no file is planned for ids or
/// amounts beyond every row's. Needs `tasks`, every file of `t`.
const CHECK_STATS: &str = r#"
import pyarrow as pa, pyarrow.compute as pc
from pyiceberg.conversions import from_bytes
as_int = {'day': pa.int32(), 'ts': pa.int64(), 'local': pa.int64()}
for x in tasks:
    data = pq.read_table(x.file.file_path[len('file://'):])
    assert x.file.record_count == data.num_rows, (x.file.record_count, data.num_rows)
    for name in ['id', 'big', 'small', 'ts', 'local', 'day', 'amount', 'name', 'ratio', 'ok']:
        f = t.schema().find_field(name)
        col = data.column(name)
        assert x.file.null_value_counts[f.field_id] == col.null_count, (name, x.file.null_value_counts)
        assert x.file.value_counts[f.field_id] == len(col), (name, x.file.value_counts)
        mm = pc.min_max(col.cast(as_int[name]) if name in as_int else col)
        got = (from_bytes(f.field_type, x.file.lower_bounds[f.field_id]), from_bytes(f.field_type, x.file.upper_bounds[f.field_id]))
        assert got == (mm['min'].as_py(), mm['max'].as_py()), (name, got, mm)
assert list(t.scan(row_filter="id >= 1000000").plan_files()) == []
assert list(t.scan(row_filter="amount > 1000000").plan_files()) == []
"#;

#[test]
fn file_to_iceberg_reads_back_exactly_with_pyiceberg_and_prunes_by_day() {
    let dir = workdir();
    let d = dir.path();
    write_events(&d.join("in/events.jsonl"), 6000);
    pipeline(
        d,
        "events",
        &local_sink(d, "[\"day(ts)\", \"bucket(4, id)\"]"),
        "[batch]\nmax_records = 1000\n",
    );
    let run = sluice(d, &["run", "events.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = local_py(
        d,
        &format!(
            r#"
types = {{f.name: str(f.field_type) for f in t.schema().fields}}
attrs = types.pop('attrs')
assert types == {{'id': 'long', 'big': 'decimal(20, 0)', 'small': 'int', 'ts': 'timestamptz', 'local': 'timestamp',
    'day': 'date', 'amount': 'decimal(12, 2)', 'name': 'string', 'tags': 'list<string>', 'ratio': 'double', 'ok': 'boolean'}}, types
assert attrs.startswith('struct<') and 'a: optional int' in attrs and 'b: optional string' in attrs, attrs
assert t.schema().find_field('id').required
assert [str(f.transform) for f in t.spec().fields] == ['day', 'bucket[4]'], t.spec()
snap = t.current_snapshot()
assert 'sluice.offsets.events.sink' in snap.summary.additional_properties, snap.summary
{CHECK_ALL}
import pyarrow.parquet as pq
tasks = list(t.scan().plan_files())
assert all(pq.ParquetFile(x.file.file_path[len('file://'):]).metadata.row_group(0).column(0).compression == 'ZSTD' for x in tasks)
day = list(t.scan(row_filter="ts >= '2024-03-11T00:00:00+00:00' and ts < '2024-03-12T00:00:00+00:00'").plan_files())
assert 0 < len(day) < len(tasks), (len(day), len(tasks))
epoch = datetime.date(1970, 1, 1)
assert all(epoch + datetime.timedelta(days=x.file.partition[0]) == datetime.date(2024, 3, 11) for x in day), [x.file.partition for x in day]
rows = t.scan(row_filter="ts >= '2024-03-11T00:00:00+00:00' and ts < '2024-03-12T00:00:00+00:00'").to_arrow()
assert rows.num_rows == 2000, rows.num_rows
{CHECK_STATS}
print(len(tasks), len(day))
"#
        ),
    );
    assert!(out.starts_with("6000"), "{out}");

    // the checkpoint store lost: the table's own offsets stop a second copy
    std::fs::remove_file(d.join("state-events.db")).unwrap();
    let again = sluice(d, &["run", "events.toml"]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let out = local_py(d, CHECK_ALL);
    assert_eq!(out, "6000");
}

/// About 4 s of work for a debug build, so that most of the kills land mid-run.
const LONG_ROWS: usize = 2_000_000;

#[test]
fn kill_9_during_a_long_file_to_iceberg_run_keeps_every_record_once() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    python(&format!(
        "with open('{}/in/long.jsonl', 'w') as f:\n    [f.write('{{\"id\": %d, \"ts\": \"2024-03-%02dT01:02:03.%06dZ\", \"name\": \"n%d\"}}\\n' % (i, 10 + i % 3, i % 999999, i)) for i in range({LONG_ROWS})]",
        d.display()
    ));
    std::fs::write(
        d.join("crash.toml"),
        format!(
            "name = \"crash\"\n[source]\nconnector = \"file\"\npath = \"in/long.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\", nullable = false }}, {{ name = \"ts\", type = \"timestamp(us, UTC)\" }}, {{ name = \"name\", type = \"string\" }}]\n\
             [sink]\nconnector = \"iceberg\"\n{}\n[batch]\nmax_records = 2000\n[checkpoint]\ninterval = \"50ms\"\n",
            local_sink(d, "[\"day(ts)\"]")
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "crash.toml"], 10, 50..500);
    let last = finish(
        spawn(d, &["run", "--quiet", "crash.toml"]),
        Duration::from_secs(300),
    );
    assert_eq!(last.code, Some(0), "{}", last.stderr);
    assert!(killed >= 5, "only {killed} kills hit a running process");
    let out = local_py(
        d,
        &format!(
            r#"
import os
files = [x.file.file_path for x in t.scan().plan_files()]
assert len(files) == len(set(files)), 'a data file committed twice'
assert all(os.path.exists(f[len('file://'):]) for f in files)
import pyarrow.compute as pc
ids = t.scan(selected_fields=('id',)).to_arrow().column('id')
assert len(ids) == {LONG_ROWS}, len(ids)
assert pc.count_distinct(ids).as_py() == {LONG_ROWS}, ('duplicates', {LONG_ROWS} - pc.count_distinct(ids).as_py())
mm = pc.min_max(ids).as_py()
assert (mm['min'], mm['max']) == (0, {LONG_ROWS} - 1), mm
print(len(t.snapshots()), len(files))
"#
        ),
    );
    let nums: Vec<usize> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(nums[0] > 10, "{out}");
    eprintln!("{killed} kills mid-run; snapshots and data files: {out}");
}

#[test]
fn a_second_run_adds_a_column_and_promotes_int_to_long() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let sink = local_sink(d, "[]").replace("events", "evolving");
    let write = |name: &str, schema: &str, lines: &str| {
        std::fs::write(d.join(format!("in/{name}.jsonl")), lines).unwrap();
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\n[source]\nconnector = \"file\"\npath = \"in/{name}.jsonl\"\nschema = {schema}\n\
                 [sink]\nconnector = \"iceberg\"\n{sink}\n[checkpoint]\npath = \"state-{name}.db\"\n"
            ),
        )
        .unwrap();
        let run = sluice(d, &["run", &format!("{name}.toml")]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    };
    write(
        "first",
        r#"[{ name = "id", type = "int32" }, { name = "v", type = "float32" }]"#,
        "{\"id\": 1, \"v\": 0.5}\n{\"id\": 2, \"v\": 1.5}\n",
    );
    write(
        "second",
        r#"[{ name = "id", type = "int64" }, { name = "v", type = "float64" }, { name = "note", type = "string" }]"#,
        "{\"id\": 9000000000, \"v\": 0.1, \"note\": \"new\"}\n",
    );
    let out = python(&format!(
        r#"
from pyiceberg.catalog.sql import SqlCatalog
t = SqlCatalog('sluice', uri='sqlite:///{d}/catalog.db', warehouse='file://{d}/wh').load_table('analytics.evolving')
types = {{f.name: str(f.field_type) for f in t.schema().fields}}
assert types == {{'id': 'long', 'v': 'double', 'note': 'string'}}, types
rows = sorted(t.scan().to_arrow().to_pylist(), key=lambda r: r['id'])
assert rows == [{{'id': 1, 'v': 0.5, 'note': None}}, {{'id': 2, 'v': 1.5, 'note': None}}, {{'id': 9000000000, 'v': 0.1, 'note': 'new'}}], rows
print(len(rows))
"#,
        d = d.display()
    ));
    assert_eq!(out, "3");
}

/// The table metadata files under `dir`: one per create and per commit.
fn metadata_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                metadata_files(&path)
            } else {
                usize::from(path.to_string_lossy().ends_with(".metadata.json"))
            }
        })
        .sum()
}

#[test]
fn commit_interval_spaces_the_commits_and_a_stop_commits_what_was_read() {
    let dir = workdir();
    let d = dir.path();
    write_events(&d.join("in/events.jsonl"), 1000);
    std::fs::write(
        d.join("paced.toml"),
        format!(
            "name = \"paced\"\n[source]\nconnector = \"file\"\npath = \"in/events.jsonl\"\nwatch = true\n{SCHEMA}\n\
             [sink]\nconnector = \"iceberg\"\n{}commit_interval = \"1h\"\n\
             [checkpoint]\npath = \"state.db\"\ninterval = \"100ms\"\n",
            local_sink(d, "[]")
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "paced.toml"]);
    let _guard = crate::support::KillOnPanic(child.id());
    // the table is created at the first write; ten checkpoint intervals later it
    // still has no commit
    assert!(crate::support::wait_until(Duration::from_secs(60), || {
        metadata_files(&d.join("wh")) > 0
    }));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        metadata_files(&d.join("wh")),
        1,
        "a commit before commit_interval"
    );
    crate::support::signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = local_py(
        d,
        &format!("assert len(t.snapshots()) == 1, t.snapshots()\n{CHECK_ALL}"),
    );
    assert_eq!(out, "1000");
}

#[test]
fn a_bad_partition_column_and_an_unreachable_catalog_are_named() {
    let dir = workdir();
    let d = dir.path();
    write_events(&d.join("in/events.jsonl"), 10);
    pipeline(d, "bad", &local_sink(d, "[\"day(nope)\"]"), "");
    let run = sluice(d, &["run", "bad.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("column \"nope\" is not in the data"),
        "{}",
        run.stderr
    );
    pipeline(d, "week", &local_sink(d, "[\"week(ts)\"]"), "");
    let run = sluice(d, &["run", "week.toml"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("unknown transform \"week\""),
        "{}",
        run.stderr
    );
    pipeline(
        d,
        "down",
        "catalog = { type = \"sql\", url = \"postgres://postgres@127.0.0.1:1/test\" }\nwarehouse = \"wh\"\nnamespace = \"a\"\ntable = \"t\"\n",
        "",
    );
    let run = sluice(d, &["check", "down.toml"]);
    assert!(
        run.stdout.contains("catalog postgres://") || run.stderr.contains("catalog postgres://"),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn file_to_iceberg_on_s3_with_a_postgresql_catalog() {
    let bucket = crate::s3::new_bucket("ice");
    let pg = std::env::var("SLUICE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let dir = workdir();
    let d = dir.path();
    write_events(&d.join("in/events.jsonl"), 3000);
    let catalog = format!("s3cat_{}", std::process::id());
    let endpoint =
        std::env::var("SLUICE_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:9555".into());
    pipeline(
        d,
        "ons3",
        &format!(
            "catalog = {{ type = \"sql\", url = \"{pg}\", name = \"{catalog}\" }}\nwarehouse = \"s3://{bucket}/wh\"\n\
             namespace = \"lake.raw\"\ntable = \"events\"\npartition_by = [\"month(ts)\", \"truncate(2, name)\"]\n\
             s3 = {{ endpoint = \"{endpoint}\", auth = {{ access_key_id = \"test\", secret_access_key = \"test\" }} }}\n"
        ),
        "[batch]\nmax_records = 700\n",
    );
    let run = sluice(d, &["run", "ons3.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let sa_url = pg.replacen("postgres://", "postgresql+psycopg2://", 1);
    let out = python(&format!(
        "import json, datetime, decimal\nfrom pyiceberg.catalog.sql import SqlCatalog\n\
         cat = SqlCatalog('{catalog}', uri='{sa_url}', warehouse='s3://{bucket}/wh', **{{'s3.endpoint': '{endpoint}', \
         's3.access-key-id': 'test', 's3.secret-access-key': 'test', 's3.region': 'us-east-1'}})\n\
         t = cat.load_table('lake.raw.events')\nINPUT = '{d}/in/events.jsonl'\n\
         assert t.metadata_location.startswith('s3://{bucket}/wh/lake/raw/events/metadata/'), t.metadata_location\n\
         assert all(x.file.file_path.startswith('s3://{bucket}/wh/lake/raw/events/data/') for x in t.scan().plan_files())\n{CHECK_ALL}",
        d = d.display()
    ));
    assert_eq!(out, "3000");
}

/// A data file larger than one 8 MiB part goes up as a multipart upload whose parts
/// are uploaded side by side: the object reads back whole and no upload stays open.
#[test]
fn a_data_file_of_several_parts_reads_back_whole_from_s3() {
    use rand::Rng;
    const N: usize = 30_000;
    let bucket = crate::s3::new_bucket("iceparts");
    let endpoint =
        std::env::var("SLUICE_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:9555".into());
    let dir = workdir();
    let d = dir.path();
    // 600 random characters a row: about 13 MB of Parquet that zstd cannot shrink much
    let mut rng = rand::thread_rng();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut input = String::with_capacity(N * 620);
    for i in 0..N {
        let blob: String = (0..600)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
            .collect();
        input.push_str(&format!("{{\"id\": {i}, \"blob\": \"{blob}\"}}\n"));
    }
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/blobs.jsonl"), &input).unwrap();
    std::fs::write(
        d.join("blobs.toml"),
        format!(
            "name = \"blobs\"\n[source]\nconnector = \"file\"\npath = \"in/blobs.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"blob\", type = \"string\" }}]\n\
             [sink]\nconnector = \"iceberg\"\ncatalog = {{ type = \"sql\", url = \"sqlite://{}/catalog.db\" }}\n\
             warehouse = \"s3://{bucket}/wh\"\nnamespace = \"raw\"\ntable = \"blobs\"\n\
             s3 = {{ endpoint = \"{endpoint}\", auth = {{ access_key_id = \"test\", secret_access_key = \"test\" }} }}\n\
             [checkpoint]\npath = \"state.db\"\n",
            d.display()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "blobs.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = crate::s3::py(
        &bucket,
        &format!(
            r#"
import hashlib
from pyiceberg.catalog.sql import SqlCatalog
cat = SqlCatalog('sluice', uri='sqlite:///{d}/catalog.db', warehouse='s3://{bucket}/wh', **{{'s3.endpoint': '{endpoint}',
    's3.access-key-id': 'test', 's3.secret-access-key': 'test', 's3.region': 'us-east-1'}})
t = cat.load_table('raw.blobs')
files = [x.file for x in t.scan().plan_files()]
assert max(f.file_size_in_bytes for f in files) > 8 * 1024 * 1024, [f.file_size_in_bytes for f in files]
rows = sorted(t.scan().to_arrow().to_pylist(), key=lambda r: r['id'])
want = [json.loads(l) for l in open('{d}/in/blobs.jsonl')]
assert rows == want, (len(rows), len(want))
assert s3.list_multipart_uploads(Bucket=BUCKET).get('Uploads', []) == []
print(len(rows))
"#,
            d = d.display()
        ),
    );
    assert_eq!(out, N.to_string());
}
