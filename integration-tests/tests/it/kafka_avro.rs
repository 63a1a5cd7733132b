//! Avro values in the Confluent wire format, against the mock Kafka cluster and a
//! Confluent-compatible schema registry (`integration-tests/schema_registry.py`, in
//! memory, compatibility checked by the Apache Avro library). Messages are also
//! written and read with Python `fastavro`, a client this project did not write.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::kafka::{bootstrap, create_topic, every_type_round_trip, py, read_all, topic, write};
use crate::support::{finish, jsonl_lines, repo_root, sluice, spawn, workdir};

/// Starts a registry; it serves until its stdin closes, that is until this process ends.
fn start_registry(args: &[&str]) -> (String, Child) {
    let mut child = Command::new("python3")
        .arg(repo_root().join("integration-tests/schema_registry.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the schema registry");
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    assert!(
        url.starts_with("http://"),
        "schema registry printed {url:?}"
    );
    (url.trim().to_string(), child)
}

/// The registry the tests share.
pub(crate) fn registry() -> &'static str {
    static REGISTRY: OnceLock<(String, Mutex<Child>)> = OnceLock::new();
    &REGISTRY
        .get_or_init(|| {
            let (url, child) = start_registry(&[]);
            (url, Mutex::new(child))
        })
        .0
}

/// Python with `confluent_kafka`, `fastavro` and a `register(subject, schema)` helper.
fn py_avro(code: &str) -> String {
    py(&format!(
        "import io, urllib.request, fastavro\n\
         from decimal import Decimal\n\
         REG = '{}'\n\
         def register(subject, schema):\n\
         \x20   body = json.dumps({{'schema': json.dumps(schema)}}).encode()\n\
         \x20   req = urllib.request.Request(REG + '/subjects/' + subject + '/versions', data=body, method='POST',\n\
         \x20       headers={{'Content-Type': 'application/vnd.schemaregistry.v1+json'}})\n\
         \x20   return json.load(urllib.request.urlopen(req))['id']\n\
         def schema_of(i):\n\
         \x20   return json.load(urllib.request.urlopen(REG + '/schemas/ids/' + str(i)))['schema']\n\
         def frame(sid, schema, rec):\n\
         \x20   b = io.BytesIO()\n\
         \x20   fastavro.schemaless_writer(b, fastavro.parse_schema(schema), rec)\n\
         \x20   return bytes([0]) + sid.to_bytes(4, 'big') + b.getvalue()\n\
         {code}",
        registry()
    ))
}

/// Every type through file -> Kafka (Avro, schema registered) -> file equals file ->
/// file; fastavro decodes the same messages with the registered schema.
#[test]
fn file_to_kafka_avro_to_file_keeps_every_type() {
    let t = topic("avro");
    create_topic(&t, 3);
    let n = 300;
    let registry_line = format!("schema_registry = {{ url = \"{}\" }}", registry());
    let (dir, via_kafka, mut direct) = every_type_round_trip(
        &t,
        n,
        &format!("format = \"avro\"\nrecord_name = \"Row\"\n{registry_line}"),
        &format!("format = \"avro\"\nmetadata = [\"key\"]\n{registry_line}"),
    );
    let d = dir.path();
    for r in &mut direct {
        r.as_object_mut().unwrap().remove("_headers");
    }
    assert_eq!(via_kafka.len(), n);
    assert_eq!(via_kafka, direct);

    // `sluice schema` reads the value schema back from the registry
    let schema = sluice(d, &["schema", "from-kafka.toml"]);
    assert!(
        schema
            .stdout
            .contains("{ name = \"amount\", type = \"decimal(12,2)\""),
        "{}{}",
        schema.stdout,
        schema.stderr
    );

    // the same messages decoded by fastavro with the schema the registry holds
    let out = py_avro(&format!(
        "{}\n\
         import datetime\n\
         assert len(msgs) == {n}, len(msgs)\n\
         ids = set()\n\
         by_id = {{}}\n\
         for (p, o, k, v, h) in msgs:\n\
         \x20   assert v[0] == 0, v[:5]\n\
         \x20   sid = int.from_bytes(v[1:5], 'big')\n\
         \x20   ids.add(sid)\n\
         \x20   schema = json.loads(schema_of(sid))\n\
         \x20   rec = fastavro.schemaless_reader(io.BytesIO(v[5:]), fastavro.parse_schema(schema), None)\n\
         \x20   by_id[rec['id']] = (k, rec)\n\
         assert len(ids) == 1, ids\n\
         assert schema['name'] == 'Row' and schema['namespace'] == 'sluice', schema\n\
         fields = {{f['name']: f['type'] for f in schema['fields']}}\n\
         assert fields['id'] == 'long', fields\n\
         assert fields['amount'][1] == {{'type': 'bytes', 'logicalType': 'decimal', 'precision': 12, 'scale': 2}}, fields\n\
         assert fields['ts'][1] == {{'type': 'long', 'logicalType': 'timestamp-micros'}}, fields\n\
         assert '_key' not in fields and '_headers' not in fields\n\
         k, r = by_id[7]\n\
         assert k == b'k7', k\n\
         assert r['amount'] == Decimal('-4741.07'), r\n\
         assert r['ts'] == datetime.datetime(2026, 11, 8, 10, 7, 0, 123456, tzinfo=datetime.timezone.utc), r\n\
         assert r['day'] == datetime.date(2026, 1, 8), r\n\
         assert r['name'] == 'line\\nbreak 7' and r['ok'] is False and r['ratio'] == 1.0, r\n\
         assert r['tags'] == ['a7', 'b'] and r['geo'] == {{'lat': 7.5, 'lon': -7.25}}, r\n\
         r = by_id[6][1]\n\
         assert r['name'] is None and r['geo'] is None and r['tags'] == ['a6', 'b'] and r['ok'] is True, r\n\
         assert by_id[5][1]['tags'] == [], by_id[5]\n\
         assert by_id[9][1]['ratio'] is None\n\
         assert by_id[1][1]['name'] == 'ñandú 🦆 \"quoted\"'\n\
         print('ok')\n",
        read_all(&t, n)
    ));
    assert_eq!(out.trim(), "ok");
}

/// Messages written by another client with two versions of a schema decode with their
/// own writer schema (older rows get nulls for the new column); a message that is not
/// in the wire format, one with an unknown schema id and a truncated one stop the
/// pipeline naming their offset, or go to the dead-letter sink while the rest lands;
/// so does a tombstone (a row of nulls would overwrite an upsert target).
#[test]
fn avro_from_another_client_evolves_and_rejects_bad_messages() {
    let t = topic("avro-in");
    create_topic(&t, 1);
    let ids = py_avro(&format!(
        "v1 = {{'type': 'record', 'name': 'Order', 'namespace': 'shop', 'fields': [\n\
         \x20   {{'name': 'id', 'type': 'long'}},\n\
         \x20   {{'name': 'status', 'type': {{'type': 'enum', 'name': 'Status', 'symbols': ['NEW', 'PAID']}}}},\n\
         \x20   {{'name': 'note', 'type': ['null', 'string'], 'default': None}}]}}\n\
         v2 = dict(v1, fields=v1['fields'] + [{{'name': 'price', 'type': ['null', {{'type': 'bytes', 'logicalType': 'decimal', 'precision': 9, 'scale': 2}}], 'default': None}}])\n\
         id1 = register('{t}-value', v1)\n\
         id2 = register('{t}-value', v2)\n\
         msgs = [frame(id1, v1, {{'id': 1, 'status': 'NEW', 'note': 'first'}}),\n\
         \x20   frame(id1, v1, {{'id': 2, 'status': 'PAID', 'note': None}}),\n\
         \x20   frame(id2, v2, {{'id': 3, 'status': 'NEW', 'note': 'é', 'price': Decimal('12.34')}}),\n\
         \x20   b'{{\"id\": 4}}',\n\
         \x20   bytes([0, 0, 0, 0x27, 0x0f]) + b'\\x08',\n\
         \x20   frame(id2, v2, {{'id': 6, 'status': 'NEW', 'note': 'x' * 20, 'price': None}})[:-6],\n\
         \x20   frame(id1, v1, {{'id': 7, 'status': 'PAID', 'note': 'last'}}),\n\
         \x20   None]\n\
         p = confluent_kafka.Producer({{'bootstrap.servers': BOOT}})\n\
         for m in msgs:\n\
         \x20   p.produce('{t}', partition=0, key='k', value=m)\n\
         assert p.flush(30) == 0\n\
         print(id1, id2)\n"
    ));
    assert_eq!(ids.split_whitespace().count(), 2, "{ids}");
    let pipeline = |errors: &str| {
        format!(
            "[source]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopics = [\"{t}\"]\ngroup_id = \"g-{t}-{}\"\nbounded = true\n\
             format = \"avro\"\nschema_registry = {{ url = \"{}\" }}\n\
             [sink]\nconnector = \"file\"\npath = \"out/good\"\nformat = \"json\"\n{errors}",
            bootstrap(),
            errors.len(),
            registry()
        )
    };
    let dir = workdir();
    write(dir.path(), "p.toml", &pipeline(""));
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("topic \"{t}\" partition 0 offset 3"))
            && run.stderr.contains("magic byte 123"),
        "{}",
        run.stderr
    );

    let dir = workdir();
    write(
        dir.path(),
        "p.toml",
        &pipeline(
            "[errors]\ntolerance = \"all\"\nmax_failure_rate = 0.9\n[errors.dead_letter]\nconnector = \"file\"\npath = \"out/dlq\"\nformat = \"json\"\n",
        ),
    );
    let run = sluice(dir.path(), &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let good: Vec<serde_json::Value> = jsonl_lines(&dir.path().join("out/good"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<serde_json::Value> = good.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(
        ids,
        vec![
            serde_json::json!(1),
            serde_json::json!(2),
            serde_json::json!(3),
            serde_json::json!(7),
        ],
        "{good:?}"
    );
    assert_eq!(good[0]["status"], "NEW");
    assert_eq!(good[0]["note"], "first");
    assert!(good[0]["price"].is_null(), "{good:?}");
    assert!(good[1]["note"].is_null(), "{good:?}");
    assert_eq!(good[2]["note"], "é");
    assert_eq!(good[2]["price"].to_string().trim_matches('"'), "12.34");
    assert_eq!(good[3]["note"], "last");

    let dlq: Vec<serde_json::Value> = jsonl_lines(&dir.path().join("out/dlq"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dlq.len(), 4, "{dlq:?}");
    for (rec, (offset, why)) in dlq.iter().zip([
        (3, "magic byte 123"),
        (4, "schema id 9999 is not in the schema registry"),
        (5, "ends early"),
        (7, "a tombstone"),
    ]) {
        assert_eq!(
            rec["position"],
            format!("topic \"{t}\" partition 0 offset {offset}")
        );
        assert!(rec.to_string().contains(why), "{rec}");
    }
}

/// Avro keys: key columns written as a record `{record_name}Key` under `{topic}-key`
/// read back as a struct `_key`; keys from another client (a record, a bare string, no
/// key, and one not in the wire format) read as a struct, a string, null and a reject;
/// a `_key` passed on is written with the same schema fastavro reads.
#[test]
fn avro_keys_are_written_and_read_as_records_or_bare_values() {
    let t = topic("avro-key");
    create_topic(&t, 2);
    let dir = workdir();
    let d = dir.path();
    let reg = format!("schema_registry = {{ url = \"{}\" }}", registry());
    let rows: String = (0..50)
        .map(|i| format!("{{\"id\":{i},\"region\":\"r{}\",\"v\":\"x{i}\"}}\n", i % 3))
        .collect();
    std::fs::create_dir_all(d.join("in")).unwrap();
    write(d, "in/rows.jsonl", &rows);
    write(
        d,
        "to-kafka.toml",
        &format!(
            "[source]\nconnector = \"file\"\npath = \"in/*.jsonl\"\nformat = \"json\"\n\
             schema = [{{ name = \"id\", type = \"int64\", nullable = false }}, {{ name = \"region\", type = \"string\" }}, {{ name = \"v\", type = \"string\" }}]\n\
             [sink]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{t}\"\n\
             key = [\"id\", \"region\"]\nkey_format = \"avro\"\nrecord_name = \"Row\"\n{reg}\n",
            bootstrap()
        ),
    );
    let run = sluice(d, &["run", "to-kafka.toml"]);
    assert_eq!(run.code, Some(0), "file -> kafka: {}", run.stderr);
    // another client: the key schema the registry holds decodes every key
    let out = py_avro(&format!(
        "{}\n\
         assert len(msgs) == 50, len(msgs)\n\
         for (p, o, k, v, h) in msgs:\n\
         \x20   assert k[0] == 0, k[:5]\n\
         \x20   schema = json.loads(schema_of(int.from_bytes(k[1:5], 'big')))\n\
         \x20   assert schema['name'] == 'RowKey' and schema['namespace'] == 'sluice', schema\n\
         \x20   key = fastavro.schemaless_reader(io.BytesIO(k[5:]), fastavro.parse_schema(schema), None)\n\
         \x20   val = json.loads(v)\n\
         \x20   assert key == {{'id': val['id'], 'region': val['region']}}, (key, val)\n\
         \x20   assert set(val) == {{'id', 'region', 'v'}}, val\n\
         print('ok')\n",
        read_all(&t, 50)
    ));
    assert_eq!(out.trim(), "ok");

    // read back: `_key` is a struct of the key record
    write(
        d,
        "from-kafka.toml",
        &format!(
            "[source]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopics = [\"{t}\"]\ngroup_id = \"g-{t}\"\nbounded = true\n\
             metadata = [\"key\"]\nkey_format = \"avro\"\n{reg}\n\
             schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"region\", type = \"string\" }}, {{ name = \"v\", type = \"string\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out/read\"\nformat = \"json\"\n",
            bootstrap()
        ),
    );
    let run = sluice(d, &["run", "from-kafka.toml"]);
    assert_eq!(run.code, Some(0), "kafka -> file: {}", run.stderr);
    let read: Vec<serde_json::Value> = jsonl_lines(&d.join("out/read"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(read.len(), 50);
    for r in &read {
        assert_eq!(r["_key"]["id"], r["id"], "{r}");
        assert_eq!(r["_key"]["region"], r["region"], "{r}");
    }
    let schema = sluice(d, &["schema", "from-kafka.toml"]);
    assert!(
        schema
            .stdout
            .contains("name = \"_key\", type = \"struct<id: int64, region: string>\""),
        "{}{}",
        schema.stdout,
        schema.stderr
    );

    // keys from another client, passed on to another topic: record keys, a message
    // without key and one whose key is not in the wire format; then bare string keys
    let t2 = topic("avro-key-in");
    let t3 = topic("avro-key-bare");
    create_topic(&t2, 1);
    create_topic(&t3, 1);
    py_avro(&format!(
        "ks = {{'type': 'record', 'name': 'K', 'fields': [{{'name': 'code', 'type': 'string'}}]}}\n\
         kid = register('{t2}-key', ks)\n\
         sid = register('{t3}-key', 'string')\n\
         p = confluent_kafka.Producer({{'bootstrap.servers': BOOT}})\n\
         p.produce('{t2}', partition=0, key=frame(kid, ks, {{'code': 'a'}}), value=b'{{\"n\": 0}}')\n\
         p.produce('{t2}', partition=0, value=b'{{\"n\": 1}}')\n\
         p.produce('{t2}', partition=0, key=b'plain', value=b'{{\"n\": 2}}')\n\
         p.produce('{t2}', partition=0, key=frame(kid, ks, {{'code': 'd'}}), value=b'{{\"n\": 3}}')\n\
         p.produce('{t3}', partition=0, key=frame(sid, 'string', 'b'), value=b'{{\"n\": 0}}')\n\
         p.produce('{t3}', partition=0, value=b'{{\"n\": 1}}')\n\
         p.produce('{t3}', partition=0, key=frame(sid, 'string', 'c'), value=b'{{\"n\": 2}}')\n\
         assert p.flush(30) == 0\n"
    ));
    let pass = |from: &str| {
        let to = format!("{from}-out");
        create_topic(&to, 1);
        write(
            d,
            "pass.toml",
            &format!(
                "[source]\nconnector = \"kafka\"\nbootstrap_servers = \"{boot}\"\ntopics = [\"{from}\"]\ngroup_id = \"g-{from}\"\nbounded = true\n\
                 metadata = [\"key\"]\nkey_format = \"avro\"\n{reg}\n\
                 [sink]\nconnector = \"kafka\"\nbootstrap_servers = \"{boot}\"\ntopic = \"{to}\"\nkey_format = \"avro\"\n{reg}\n\
                 [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.9\n[errors.dead_letter]\nconnector = \"file\"\npath = \"out/dlq-{from}\"\nformat = \"json\"\n",
                boot = bootstrap()
            ),
        );
        let run = sluice(d, &["run", "pass.toml"]);
        assert_eq!(run.code, Some(0), "kafka -> kafka: {}", run.stderr);
        // each message's value number with its key as fastavro decodes it, and the
        // key schema's type
        let out = py_avro(&format!(
            "{}\n\
             msgs.sort(key=lambda m: json.loads(m[3])['n'])\n\
             seen = []\n\
             for (p, o, k, v, h) in msgs:\n\
             \x20   if k is None:\n\
             \x20       seen.append([json.loads(v)['n'], None, None])\n\
             \x20       continue\n\
             \x20   schema = json.loads(schema_of(int.from_bytes(k[1:5], 'big')))\n\
             \x20   key = fastavro.schemaless_reader(io.BytesIO(k[5:]), fastavro.parse_schema(schema), None)\n\
             \x20   seen.append([json.loads(v)['n'], key, schema if isinstance(schema, str) else schema['type']])\n\
             print(json.dumps(seen))\n",
            read_all(&to, 3)
        ));
        let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (seen, jsonl_lines(&d.join(format!("out/dlq-{from}"))))
    };
    let (seen, dlq) = pass(&t2);
    assert_eq!(
        seen,
        serde_json::json!([[0, {"code": "a"}, "record"], [1, null, null], [3, {"code": "d"}, "record"]]),
    );
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert!(
        dlq[0].contains(&format!("topic \\\"{t2}\\\" partition 0 offset 2"))
            && dlq[0].contains("key: not in the Confluent wire format"),
        "{dlq:?}"
    );
    let (seen, dlq) = pass(&t3);
    assert_eq!(
        seen,
        serde_json::json!([[0, "b", "string"], [1, null, null], [2, "c", "string"]]),
    );
    assert!(dlq.is_empty(), "{dlq:?}");
}

/// A value schema the registry refuses as incompatible stops the sink with the
/// registry's reason and the subject, before any message is sent; a registry that
/// wants credentials refuses wrong ones (an auth error, not retried) and takes right ones.
#[test]
fn incompatible_schema_and_registry_credentials_are_reported() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let t = topic("avro-compat");
    create_topic(&t, 1);
    py_avro(&format!(
        "register('{t}-value', {{'type': 'record', 'name': 'Record', 'namespace': 'sluice', 'fields': [{{'name': 'id', 'type': 'long'}}]}})\n"
    ));
    write(d, "in/rows.jsonl", "{\"id\": \"abc\"}\n");
    let sink = |url: &str, auth: &str| {
        format!(
            "[source]\nconnector = \"file\"\npath = \"in/rows.jsonl\"\n\
             [sink]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{t}\"\n\
             format = \"avro\"\nschema_registry = {{ url = \"{url}\"{auth} }}\n",
            bootstrap()
        )
    };
    write(d, "p.toml", &sink(registry(), ""));
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "subject \"{t}-value\" refused the schema as incompatible"
        )) && run.stderr.contains("reader union lacking writer type long"),
        "{}",
        run.stderr
    );
    let count = py(&format!("{}\nprint(len(msgs))\n", read_all(&t, 1)));
    assert_eq!(count.trim(), "0");

    let (secure, _child) = start_registry(&["--user", "team", "--password", "s3cret"]);
    let t2 = topic("avro-auth");
    create_topic(&t2, 1);
    write(d, "in/rows.jsonl", "{\"id\": 1}\n");
    let with_topic =
        |auth: &str| sink(&secure, auth).replace(&format!("\"{t}\""), &format!("\"{t2}\""));
    write(
        d,
        "wrong.toml",
        &with_topic(", username = \"team\", password = \"nope\""),
    );
    let run = sluice(d, &["run", "wrong.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("401 Unauthorized"), "{}", run.stderr);
    write(
        d,
        "right.toml",
        &with_topic(", username = \"team\", password = \"s3cret\""),
    );
    let run = sluice(d, &["run", "right.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let count = py(&format!("{}\nprint(len(msgs))\n", read_all(&t2, 1)));
    assert_eq!(count.trim(), "1");
}

/// A registry that is down when the messages arrive: the source retries with backoff
/// and says so, the messages wait, and once the registry answers every one lands.
#[test]
fn registry_down_is_retried_and_loses_nothing() {
    let t = topic("avro-down");
    create_topic(&t, 1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let v1 = "{'type': 'record', 'name': 'R', 'fields': [{'name': 'id', 'type': 'long'}]}";
    // id 1 is what a fresh registry gives the first schema
    py_avro(&format!(
        "p = confluent_kafka.Producer({{'bootstrap.servers': BOOT}})\n\
         for i in range(3):\n\
         \x20   p.produce('{t}', value=frame(1, {v1}, {{'id': i}}))\n\
         assert p.flush(30) == 0\n"
    ));
    let dir = workdir();
    write(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopics = [\"{t}\"]\nbounded = true\n\
             format = \"avro\"\nschema_registry = {{ url = \"http://127.0.0.1:{port}\", timeout = \"2s\" }}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [errors]\nmax_retries = 100\nretry_backoff_max = \"1s\"\n",
            bootstrap()
        ),
    );
    let child = spawn(dir.path(), &["run", "p.toml"]);
    registry_comes_up_later(child, port, &format!("{t}-value"), v1);
    assert_eq!(
        crate::support::jsonl_ids(&dir.path().join("out")),
        vec![0, 1, 2]
    );
}

/// Lets `child` (a run reading Avro through a registry at `port` that is down) retry
/// for 6 s, then starts the registry there with `schema` (Python notation) as id 1
/// under `subject`: the run must end well, having said it retried, naming the
/// registry.
pub(crate) fn registry_comes_up_later(child: Child, port: u16, subject: &str, schema: &str) {
    std::thread::sleep(std::time::Duration::from_secs(6));
    let schema = schema.replace('\'', "\"");
    let (_url, _registry) =
        start_registry(&["--port", &port.to_string(), "--preload", subject, &schema]);
    let run = finish(child, std::time::Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("schema registry http://127.0.0.1:{port}"))
            && run.stderr.contains("retrying"),
        "{}",
        run.stderr
    );
}

/// Event-stream sinks and sources other than Kafka (NATS, RabbitMQ, MQTT) with
/// `format = "avro"`: writes `n` rows of every type to `in/rows.jsonl` under `d`, and
/// returns the lines for the pipeline files (the file source of those rows, the
/// registry option) and the rows as file -> file gives them, less the reserved
/// columns a message payload does not carry.
pub(crate) fn message_avro_input(
    d: &std::path::Path,
    n: usize,
) -> (String, String, Vec<serde_json::Value>) {
    std::fs::create_dir_all(d.join("in")).unwrap();
    write(d, "in/rows.jsonl", &crate::kafka::every_type_input(n));
    let file_source = format!(
        "[source]\nconnector = \"file\"\npath = \"in/rows.jsonl\"\n{}\n",
        crate::kafka::ROW_SCHEMA
    );
    write(
        d,
        "direct.toml",
        &format!(
            "name = \"direct\"\n{file_source}[sink]\nconnector = \"file\"\npath = \"direct\"\nformat = \"json\"\n"
        ),
    );
    let run = sluice(d, &["run", "direct.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut direct = crate::kafka::sorted_rows(jsonl_lines(&d.join("direct")));
    for r in &mut direct {
        r.as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with('_'));
    }
    let registry = format!(
        "format = \"avro\"\nschema_registry = {{ url = \"{}\" }}\n",
        registry()
    );
    (file_source, registry, direct)
}

/// A payload (hex) decoded by fastavro with the schema the registry
/// holds under its id, after checking the wire format's magic byte: "REGISTERED |
/// id amount name ts-date", REGISTERED telling whether `subject` holds that schema.
pub(crate) fn fastavro_decode(payload_hex: &str, subject: &str) -> String {
    crate::support::python(&format!(
        "import io, json, urllib.parse, urllib.request, fastavro\n\
         REG = '{}'\n\
         v = bytes.fromhex('{}')\n\
         assert v[0] == 0, v[:5]\n\
         sid = int.from_bytes(v[1:5], 'big')\n\
         schema = json.loads(json.load(urllib.request.urlopen(REG + '/schemas/ids/' + str(sid)))['schema'])\n\
         r = fastavro.schemaless_reader(io.BytesIO(v[5:]), fastavro.parse_schema(schema), None)\n\
         latest = json.load(urllib.request.urlopen(REG + '/subjects/' + urllib.parse.quote('{}', safe='') + '/versions/latest'))\n\
         print(latest['id'] == sid, '|', r['id'], r['amount'], r['name'], r['ts'].date())\n",
        registry(),
        payload_hex.trim(),
        subject
    ))
}
