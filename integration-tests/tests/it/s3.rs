//! The S3 connectors against a real S3 API server (moto, started by run.sh), verified
//! with boto3 and pyarrow.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::support::{finish, kill_at_random, python, signal, sluice, spawn, workdir};

fn endpoint() -> String {
    std::env::var("SLUICE_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:9555".into())
}

/// Runs Python with `s3` (a boto3 client of the test server) and `BUCKET` defined.
pub(crate) fn py(bucket: &str, code: &str) -> String {
    python(&format!(
        "import boto3, io, json\n\
         s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
         BUCKET = '{bucket}'\n{code}",
        endpoint()
    ))
}

/// A new, empty bucket for one test.
pub(crate) fn new_bucket(tag: &str) -> String {
    let name = format!(
        "sluice-{tag}-{}-{:06x}",
        std::process::id(),
        rand::thread_rng().gen::<u32>() & 0xff_ffff
    );
    py(&name, "s3.create_bucket(Bucket=BUCKET)");
    name
}

/// The connection lines of a pipeline's `[source]` or `[sink]`.
pub(crate) fn conn(bucket: &str) -> String {
    format!(
        "bucket = \"{bucket}\"\nendpoint = \"{}\"\nauth = {{ access_key_id = \"test\", secret_access_key = \"test\" }}\n",
        endpoint()
    )
}

const ORDER_SCHEMA: &str = r#"schema = [
  { name = "id", type = "int64", nullable = false },
  { name = "ts", type = "timestamp(us, UTC)" },
  { name = "region", type = "string" },
  { name = "amount", type = "decimal(12,2)" },
  { name = "tags", type = "list<string>" },
  { name = "ok", type = "bool" },
]"#;

/// Orders over three days; regions include a hostile value, unicode and null.
fn write_orders(path: &Path, rows: usize) {
    let regions = [
        "\"eu\"",
        "\"us\"",
        "\"../../escape\"",
        "\"ñandú/east\"",
        "null",
    ];
    let mut out = String::new();
    for i in 0..rows {
        let day = 10 + i % 3;
        out.push_str(&format!(
            "{{\"id\": {i}, \"ts\": \"2024-03-{day:02}T{:02}:{:02}:07.123456Z\", \"region\": {}, \"amount\": \"{}.{:02}\", \"tags\": [\"t{}\", \"ü\"], \"ok\": {}}}\n",
            i % 24,
            i % 60,
            regions[i % regions.len()],
            i * 7,
            i % 100,
            i % 5,
            i % 2 == 0
        ));
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn file_to_s3_parquet_partitioned_by_date_and_region_reads_back_exactly() {
    let bucket = new_bucket("part");
    let dir = workdir();
    let d = dir.path();
    write_orders(&d.join("in/orders.jsonl"), 3000);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"orders-to-s3\"\n[source]\nconnector = \"file\"\npath = \"in/orders.jsonl\"\n{ORDER_SCHEMA}\n\
             [sink]\nconnector = \"s3\"\n{}prefix = \"orders/dt={{ts:%Y-%m-%d}}/region={{region}}/\"\nformat = \"parquet\"\nmax_records = 700\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = py(
        &bucket,
        &format!(
            r#"
import re, datetime, decimal, urllib.parse
import pyarrow as pa, pyarrow.parquet as pq
keys = []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=BUCKET):
    keys += [o['Key'] for o in page.get('Contents', [])]
data = [k for k in keys if not k.startswith('orders/_sluice/')]
folders = sorted({{k.rsplit('/', 1)[0] for k in data}})
expect_regions = ['eu', 'us', '..%2F..%2Fescape', '%C3%B1and%C3%BA%2Feast', '__HIVE_DEFAULT_PARTITION__']
expect = sorted('orders/dt=2024-03-%02d/region=%s' % (d, r) for d in (10, 11, 12) for r in expect_regions)
assert folders == expect, folders
for k in data:
    assert re.fullmatch(r'part-[0-9a-f]{{8}}-[0-9a-f]{{16}}\.parquet', k.rsplit('/', 1)[1]), k
    assert '/../' not in '/' + k + '/', k
assert s3.list_multipart_uploads(Bucket=BUCKET).get('Uploads') is None
want = {{}}
for line in open('{input}'):
    r = json.loads(line)
    want[r['id']] = r
got = {{}}
for k in data:
    t = pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)['Body'].read()))
    assert t.schema.field('id').type == pa.int64(), t.schema
    assert t.schema.field('ts').type == pa.timestamp('us', tz='UTC'), t.schema
    assert t.schema.field('amount').type == pa.decimal128(12, 2), t.schema
    assert t.schema.field('tags').type.value_type == pa.string(), t.schema
    dt = re.search(r'dt=([^/]+)', k).group(1)
    region = urllib.parse.unquote(re.search(r'region=([^/]+)', k).group(1))
    for row in t.to_pylist():
        assert row['id'] not in got, ('duplicate', row['id'])
        got[row['id']] = row
        assert row['ts'].strftime('%Y-%m-%d') == dt, (k, row)
        assert (row['region'] if row['region'] is not None else '__HIVE_DEFAULT_PARTITION__') == region, (k, row)
assert sorted(got) == sorted(want), (len(got), len(want))
for i, w in want.items():
    g = got[i]
    ts = datetime.datetime.strptime(w['ts'], '%Y-%m-%dT%H:%M:%S.%fZ').replace(tzinfo=datetime.timezone.utc)
    assert g['ts'] == ts, (g, w)
    assert g['amount'] == decimal.Decimal(w['amount']), (g, w)
    assert g['region'] == w['region'] and g['tags'] == w['tags'] and g['ok'] == w['ok'], (g, w)
print(len(folders), len(data), len(got))
"#,
            input = d.join("in/orders.jsonl").display()
        ),
    );
    let nums: Vec<usize> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(nums[0], 15, "{out}");
    assert_eq!(nums[2], 3000, "{out}");
    assert!(nums[1] >= 15, "{out}");
}

/// file -> S3 (format, compression) -> file gives what file -> file gives.
fn round_trip(format: &str, compression: &str, ext: &str) {
    let bucket = new_bucket(&format!("rt-{format}"));
    let dir = workdir();
    let d = dir.path();
    write_orders(&d.join("in/orders.jsonl"), 2500);
    // CSV has no lists: round-trip the other columns
    let schema = if format == "csv" {
        ORDER_SCHEMA.replace("  { name = \"tags\", type = \"list<string>\" },\n", "")
    } else {
        ORDER_SCHEMA.to_string()
    };
    let source_schema = if format == "parquet" { "" } else { &schema };
    let files = [
        (
            "direct.toml",
            format!(
                "name = \"direct\"\n[source]\nconnector = \"file\"\npath = \"in/orders.jsonl\"\n{schema}\n\
                 [sink]\nconnector = \"file\"\npath = \"out/direct\"\nformat = \"json\"\n"
            ),
        ),
        (
            "up.toml",
            format!(
                "name = \"up\"\n[source]\nconnector = \"file\"\npath = \"in/orders.jsonl\"\n{schema}\n\
                 [sink]\nconnector = \"s3\"\n{}prefix = \"rt/\"\nformat = \"{format}\"\ncompression = \"{compression}\"\nmax_records = 1000\n[batch]\nmax_records = 300\n",
                conn(&bucket)
            ),
        ),
        (
            "down.toml",
            format!(
                "name = \"down\"\n[source]\nconnector = \"s3\"\n{}path = \"rt/*.{ext}\"\nformat = \"{format}\"\n{source_schema}\n\
                 [sink]\nconnector = \"file\"\npath = \"out/back\"\nformat = \"json\"\n",
                conn(&bucket)
            ),
        ),
    ];
    for (name, text) in &files {
        std::fs::write(d.join(name), text).unwrap();
        let run = sluice(d, &["run", name]);
        assert_eq!(run.code, Some(0), "{name}: {}", run.stderr);
    }
    // check reaches the objects; schema reads the first one (declared for text formats)
    let check = sluice(d, &["check", "down.toml"]);
    assert!(
        check.stdout.contains("source (s3): ok"),
        "{}{}",
        check.stdout,
        check.stderr
    );
    let schema = sluice(d, &["schema", "down.toml"]);
    assert!(
        schema
            .stdout
            .contains("{ name = \"amount\", type = \"decimal(12,2)\""),
        "{}{}",
        schema.stdout,
        schema.stderr
    );
    let sorted = |dir: &str| {
        let mut rows: Vec<serde_json::Value> = crate::support::jsonl_lines(&d.join(dir))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        rows.sort_by_key(|r| r["id"].as_i64());
        rows
    };
    let direct = sorted("out/direct");
    let back = sorted("out/back");
    assert_eq!(direct.len(), 2500);
    assert_eq!(back.len(), direct.len(), "{format}/{compression}");
    assert_eq!(back, direct, "{format}/{compression}");
    let keys = py(
        &bucket,
        "print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix='rt/')['Contents']))",
    );
    assert_eq!(
        keys.lines().filter(|k| k.ends_with(ext)).count(),
        3,
        "2500 records in objects of 1000: {keys}"
    );
}

#[test]
fn s3_round_trip_json_lines_gzip() {
    round_trip("json", "gzip", "jsonl.gz");
}

#[test]
fn s3_round_trip_csv_zstd() {
    round_trip("csv", "zstd", "csv.zst");
}

#[test]
fn s3_round_trip_parquet() {
    round_trip("parquet", "none", "parquet");
}

#[test]
fn s3_round_trip_json_lines_plain() {
    round_trip("json", "none", "jsonl");
}

const KILL_ROWS: usize = 300_000;

#[test]
fn kill_9_mid_upload_leaves_no_duplicates_no_gaps_no_open_uploads() {
    let bucket = new_bucket("kill");
    let dir = workdir();
    let d = dir.path();
    // paced at 30k records/s, so a run takes 10 s and the kills land mid-run; ~300
    // bytes a JSON record: an object of 40k records is three parts of 5 MiB
    std::fs::write(
        d.join("kill.toml"),
        format!(
            "name = \"kill\"\n[source]\nconnector = \"datagen\"\ncount = {KILL_ROWS}\nrate = 30000\n\
             [sink]\nconnector = \"s3\"\n{}prefix = \"k/\"\nformat = \"json\"\nmax_records = 40000\npart_size = 5242880\n\
             [batch]\nmax_records = 5000\n[checkpoint]\ninterval = \"700ms\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    let killed_mid_run = kill_at_random(d, &["run", "--quiet", "kill.toml"], 10, 300..1500);
    let run = sluice(d, &["run", "--quiet", "kill.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        killed_mid_run >= 5,
        "only {killed_mid_run} kills hit a running pipeline"
    );
    let out = py(
        &bucket,
        r#"
ids = []
objects = 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=BUCKET, Prefix='k/'):
    for o in page.get('Contents', []):
        if o['Key'].endswith('.jsonl'):
            objects += 1
            body = s3.get_object(Bucket=BUCKET, Key=o['Key'])['Body'].read()
            ids += [json.loads(l)['id'] for l in body.splitlines()]
uploads = s3.list_multipart_uploads(Bucket=BUCKET).get('Uploads') or []
print(len(ids), len(set(ids)), min(ids), max(ids), len(uploads), objects)
"#,
    );
    let n: Vec<i64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let rows = KILL_ROWS as i64;
    assert_eq!(n[0], rows, "records (with duplicates): {out}");
    assert_eq!(n[1], rows, "distinct records: {out}");
    assert_eq!((n[2], n[3]), (0, rows - 1), "{out}");
    assert_eq!(n[4], 0, "multipart uploads left behind: {out}");
}

#[test]
fn wrong_credentials_stop_at_once_with_an_auth_error() {
    let auth =
        std::env::var("SLUICE_TEST_S3_AUTH").unwrap_or_else(|_| "http://127.0.0.1:9556".into());
    let dir = workdir();
    std::fs::write(
        dir.path().join("p.toml"),
        format!(
            "[source]\nconnector = \"datagen\"\ncount = 10\n[sink]\nconnector = \"s3\"\nbucket = \"lake\"\nendpoint = \"{auth}\"\n\
             auth = {{ access_key_id = \"AKIAWRONG\", secret_access_key = \"nope\" }}\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("access to bucket \"lake\" was refused"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("nope"),
        "the secret leaked: {}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "an auth error is not retried"
    );
}

#[test]
fn missing_bucket_is_named() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("p.toml"),
        format!(
            "[source]\nconnector = \"datagen\"\ncount = 10\n[sink]\nconnector = \"s3\"\n{}",
            conn("sluice-no-such-bucket")
        ),
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("bucket \"sluice-no-such-bucket\" does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreachable_server_is_retried_with_backoff_then_named() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("p.toml"),
        "[source]\nconnector = \"datagen\"\ncount = 10\n[sink]\nconnector = \"s3\"\nbucket = \"lake\"\nendpoint = \"http://127.0.0.1:9\"\n\
         auth = { access_key_id = \"test\", secret_access_key = \"test\" }\n\
         [errors]\nmax_retries = 2\nretry_backoff = \"50ms\"\n",
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("the S3 endpoint cannot be reached"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("retrying"), "{}", run.stderr);
}

/// A good object, a corrupt one and another good one.
fn corrupt_bucket() -> String {
    let bucket = new_bucket("bad");
    py(
        &bucket,
        r#"
import pyarrow as pa, pyarrow.parquet as pq
for name, ids in (('in/a.parquet', [1, 2]), ('in/c.parquet', [3])):
    buf = io.BytesIO()
    pq.write_table(pa.table({'id': pa.array(ids, pa.int64())}), buf)
    s3.put_object(Bucket=BUCKET, Key=name, Body=buf.getvalue())
s3.put_object(Bucket=BUCKET, Key='in/b.parquet', Body=b'PAR1 this is not parquet')
"#,
    );
    bucket
}

#[test]
fn a_corrupt_object_stops_the_pipeline_naming_it() {
    let bucket = corrupt_bucket();
    let dir = workdir();
    std::fs::write(
        dir.path().join("p.toml"),
        format!(
            "[source]\nconnector = \"s3\"\n{}path = \"in/*.parquet\"\nformat = \"parquet\"\n[sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "s3://{bucket}/in/b.parquet is not a readable Parquet file"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn a_corrupt_object_is_dead_lettered_and_the_rest_delivered() {
    let bucket = corrupt_bucket();
    let dir = workdir();
    std::fs::write(
        dir.path().join("p.toml"),
        format!(
            "[source]\nconnector = \"s3\"\n{}path = \"in/*.parquet\"\nformat = \"parquet\"\n[sink]\nconnector = \"file\"\npath = \"out/good\"\nformat = \"json\"\n\
             [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.9\n[errors.dead_letter]\nconnector = \"file\"\npath = \"out/dlq\"\nformat = \"json\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let good = crate::support::jsonl_lines(&dir.path().join("out/good"));
    assert_eq!(good, vec!["{\"id\":1}", "{\"id\":2}", "{\"id\":3}"]);
    let dlq = crate::support::jsonl_lines(&dir.path().join("out/dlq"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let rec: serde_json::Value = serde_json::from_str(&dlq[0]).unwrap();
    assert!(
        rec["position"]
            .as_str()
            .unwrap()
            .contains(&format!("s3://{bucket}/in/b.parquet")),
        "{rec}"
    );
    assert_eq!(rec["error_kind"], "data");
}

#[test]
fn watch_mode_picks_up_new_objects() {
    let bucket = new_bucket("watch");
    py(
        &bucket,
        "s3.put_object(Bucket=BUCKET, Key='w/1.jsonl', Body=b'{\"id\": 1}\\n')",
    );
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[source]\nconnector = \"s3\"\n{}path = \"w/*.jsonl\"\nwatch = true\npoll_interval = \"200ms\"\nschema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n[checkpoint]\ninterval = \"200ms\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let lines = || crate::support::jsonl_lines(&d.join("out")).len();
    assert!(crate::support::wait_until(
        Duration::from_secs(30),
        || lines() == 1
    ));
    py(
        &bucket,
        "s3.put_object(Bucket=BUCKET, Key='w/2.jsonl', Body=b'{\"id\": 2}\\n{\"id\": 3}\\n')",
    );
    assert!(crate::support::wait_until(
        Duration::from_secs(30),
        || lines() == 3
    ));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(20));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // a restart reads nothing twice
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "TERM");
    let _ = finish(child, Duration::from_secs(20));
    assert_eq!(lines(), 3);
}

#[test]
fn the_example_config_runs_as_written_and_pyarrow_reads_the_dataset() {
    let bucket = new_bucket("example");
    let dir = workdir();
    let out = std::process::Command::new(crate::support::sluice_bin())
        .args(["run", "configs/file-to-s3.toml"])
        .current_dir(dir.path())
        .env("S3_BUCKET", &bucket)
        .env("S3_ENDPOINT", endpoint())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = py(
        &bucket,
        &format!(
            r#"
import pyarrow.dataset as ds, pyarrow.fs as pfs
fs = pfs.S3FileSystem(endpoint_override='{}', scheme='http', access_key='test', secret_key='test', region='us-east-1')
t = ds.dataset(BUCKET + '/orders', filesystem=fs, format='parquet', partitioning='hive').to_table()
want = sum(1 for l in open('{}/configs/data/orders.jsonl'))
print(t.num_rows, want, t.schema.field('amount').type)
"#,
            endpoint().trim_start_matches("http://"),
            dir.path().display()
        ),
    );
    let parts: Vec<&str> = counts.split_whitespace().collect();
    assert_eq!(parts[0], parts[1], "{counts}");
    assert_eq!(parts[2], "decimal128(10,", "{counts}");
}

const RESUME_ROWS: usize = 400_000;

#[test]
fn kill_9_while_reading_resumes_inside_plain_and_gzip_objects() {
    let bucket = new_bucket("resume");
    py(
        &bucket,
        &format!(
            r#"
import gzip
rows = ''.join('{{"id": %d, "name": "n%d"}}\n' % (i, i) for i in range({RESUME_ROWS}))
lines = rows.splitlines(keepends=True)
half = len(lines) // 2
s3.put_object(Bucket=BUCKET, Key='r/a.jsonl', Body=''.join(lines[:half]).encode())
s3.put_object(Bucket=BUCKET, Key='r/b.jsonl.gz', Body=gzip.compress(''.join(lines[half:]).encode()))
"#
        ),
    );
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("r.toml"),
        format!(
            "name = \"resume\"\n[source]\nconnector = \"s3\"\n{}path = \"r/*\"\nschema = [{{ name = \"id\", type = \"int64\", nullable = false }}, {{ name = \"name\", type = \"string\" }}]\n\
             [sink]\nconnector = \"sqlite\"\npath = \"out/r.db\"\ntable = \"t\"\n[batch]\nmax_records = 1000\n[checkpoint]\ninterval = \"20ms\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    kill_at_random(d, &["run", "--quiet", "r.toml"], 6, 200..2000);
    let run = sluice(d, &["run", "--quiet", "r.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let db = d.join("out/r.db");
    assert_eq!(
        crate::support::sqlite(
            &db,
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM t"
        ),
        format!("{RESUME_ROWS}|{RESUME_ROWS}|0|{}", RESUME_ROWS - 1)
    );
}

/// The bucket is emptied between two runs (objects and the `_sluice/` state): the
/// second run writes everything again instead of resuming from the checkpoint store.
/// The state object alone deleted: the run stops, naming it, and writes over nothing.
#[test]
fn an_emptied_bucket_gets_every_record_again_and_a_lost_state_stops_the_run() {
    let bucket = new_bucket("emptied");
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"emptied\"\n[source]\nconnector = \"datagen\"\ncount = 3000\n\
             schema = [{{ name = \"id\", type = \"int64\", nullable = false }}]\n\
             [sink]\nconnector = \"s3\"\n{}prefix = \"e/\"\nformat = \"json\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    let count = || {
        py(
            &bucket,
            "ids = []\n\
             for o in s3.list_objects_v2(Bucket=BUCKET, Prefix='e/').get('Contents', []):\n\
             \x20   if o['Key'].endswith('.jsonl'):\n\
             \x20       ids += [json.loads(l)['id'] for l in s3.get_object(Bucket=BUCKET, Key=o['Key'])['Body'].read().splitlines()]\n\
             print(len(ids), len(set(ids)))",
        )
    };
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(count(), "3000 3000");
    py(
        &bucket,
        "for o in s3.list_objects_v2(Bucket=BUCKET).get('Contents', []):\n\
         \x20   s3.delete_object(Bucket=BUCKET, Key=o['Key'])",
    );
    assert_eq!(count(), "0 0");
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(count(), "3000 3000");

    let stamps = || {
        py(
            &bucket,
            "print(sorted((o['Key'], o['ETag'], str(o['LastModified'])) for o in \
             s3.list_objects_v2(Bucket=BUCKET, Prefix='e/').get('Contents', []) if o['Key'].endswith('.jsonl')))",
        )
    };
    let before = stamps();
    py(
        &bucket,
        "s3.delete_object(Bucket=BUCKET, Key='e/_sluice/emptied.state.json')",
    );
    let run = sluice(d, &["run", "--quiet", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("_sluice/emptied.state.json")
            && run.stderr.contains("is missing")
            && run.stderr.contains("was published by pipeline \"emptied\""),
        "{}",
        run.stderr
    );
    assert_eq!(stamps(), before, "published objects were written over");
}

/// CSV objects without a declared schema, read with kills at random points: every run
/// that resumes inside an object (plain: a ranged read; gzip: the stream skipped) takes
/// the columns from the object's header, not from the first unread row.
#[test]
fn kill_9_while_reading_csv_without_a_schema_keeps_the_header() {
    let bucket = new_bucket("csvresume");
    py(
        &bucket,
        &format!(
            r#"
import gzip
lines = ['%d,n%d\n' % (i, i) for i in range({RESUME_ROWS})]
half = len(lines) // 2
s3.put_object(Bucket=BUCKET, Key='c/a.csv', Body=('id,name\n' + ''.join(lines[:half])).encode())
s3.put_object(Bucket=BUCKET, Key='c/b.csv.gz', Body=gzip.compress(('id,name\n' + ''.join(lines[half:])).encode()))
"#
        ),
    );
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("c.toml"),
        format!(
            "name = \"csvresume\"\n[source]\nconnector = \"s3\"\n{}path = \"c/*\"\nformat = \"csv\"\n\
             [sink]\nconnector = \"sqlite\"\npath = \"out/c.db\"\ntable = \"t\"\n[batch]\nmax_records = 1000\n[checkpoint]\ninterval = \"20ms\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    kill_at_random(d, &["run", "--quiet", "c.toml"], 6, 200..2000);
    let run = sluice(d, &["run", "--quiet", "c.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let db = d.join("out/c.db");
    assert_eq!(
        crate::support::sqlite(&db, "SELECT group_concat(name) FROM pragma_table_info('t')"),
        "id,name"
    );
    assert_eq!(
        crate::support::sqlite(
            &db,
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM t"
        ),
        format!("{RESUME_ROWS}|{RESUME_ROWS}|0|{}", RESUME_ROWS - 1)
    );
}

/// A bounded read of a plain and a gzip object reports its progress in bytes of the
/// objects: at the end, done = total = the sizes S3 lists.
#[test]
fn a_bounded_read_reports_progress_in_object_bytes() {
    use crate::service::{free_port, pipeline, serve, stop, wait_state};
    let bucket = new_bucket("progress");
    let sizes = py(
        &bucket,
        r#"
import gzip
rows = ''.join('{"id": %d}\n' % i for i in range(20000)).encode()
s3.put_object(Bucket=BUCKET, Key='p/a.jsonl', Body=rows)
s3.put_object(Bucket=BUCKET, Key='p/b.jsonl.gz', Body=gzip.compress(rows))
print(sum(o['Size'] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix='p/')['Contents']))
"#,
    );
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"progress\"\n[source]\nconnector = \"s3\"\n{}path = \"p/*\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n[sink]\nconnector = \"blackhole\"\n",
            conn(&bucket)
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let (child, _guard) = serve(d, &["run", "--quiet", "p.toml", "--http", &addr], port);
    wait_state(&base, "progress", "finished");
    let p = pipeline(&base, "progress");
    assert_eq!(p["source"]["records"], 40000, "{p:#}");
    let total: u64 = sizes.trim().parse().unwrap();
    assert_eq!(p["progress"]["unit"], "bytes", "{p:#}");
    assert_eq!(p["progress"]["total"], total, "{p:#}");
    assert_eq!(p["progress"]["done"], total, "{p:#}");
    stop(child);
}
