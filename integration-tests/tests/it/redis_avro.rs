//! Redis with Avro payloads (Confluent wire format, schema registry): every type
//! through a stream and back, string values by key, and entries that wait for a
//! registry that is down; payloads checked with fastavro.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::redis::{cli, port, unique, url_at};
use crate::support::{jsonl_ids, jsonl_lines, sluice, spawn, workdir};

/// Lua returning the value of the field `body` of a stream's first entry (`KEYS[1]`),
/// or of a string key (`ARGV[1]` = "get"), as hex: binary through redis-cli intact.
const HEX: &str = "local v\n\
    if ARGV[1] == 'get' then v = redis.call('GET', KEYS[1])\n\
    else local e = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][2]\n\
    for i = 1, #e, 2 do if e[i] == 'body' then v = e[i + 1] end end end\n\
    return (v:gsub('.', function(c) return string.format('%02x', c:byte()) end))";

/// Avro payloads in stream entries (the schema registered under `{stream}-value`) and
/// in string values by key (under the `schema_subject` named): every type through a
/// stream and back equals file -> file, and fastavro decodes an entry and a value
/// with the schema the registry holds.
#[test]
fn avro_payloads_go_through_a_stream_and_back_with_the_schema_registry() {
    let dir = workdir();
    let d = dir.path();
    let stream = unique("avro");
    let n = 200;
    let (file_source, avro, direct) = crate::kafka_avro::message_avro_input(d, n);
    let redis = format!("connector = \"redis\"\nurl = \"{}\"\n", url_at(port()));
    let strings = format!("{stream}:row:");
    std::fs::write(
        d.join("to.toml"),
        format!(
            "name = \"to_redis\"\n{file_source}[sinks.entries]\n{redis}stream = \"{stream}\"\n{avro}\
             [sinks.values]\n{redis}mode = \"string\"\nkey_columns = [\"id\"]\nkey_prefix = \"{strings}\"\n\
             schema_subject = \"{stream}-strings\"\n{avro}"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("from.toml"),
        format!(
            "name = \"from_redis\"\n[source]\n{redis}stream = \"{stream}\"\nbounded = true\n{avro}\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    for p in ["to.toml", "from.toml"] {
        let run = sluice(d, &["run", p]);
        assert_eq!(run.code, Some(0), "{p}: {}", run.stderr);
    }
    let entry = cli(&["EVAL", HEX, "1", &stream, "xrange"]);
    let entry = crate::kafka_avro::fastavro_decode(&entry, &format!("{stream}-value"));
    let value = cli(&["EVAL", HEX, "1", &format!("{strings}0"), "get"]);
    let value = crate::kafka_avro::fastavro_decode(&value, &format!("{stream}-strings"));
    let via = crate::kafka::sorted_rows(jsonl_lines(&d.join("out")));
    let keys = cli(&[
        "EVAL",
        "return #redis.call('KEYS', ARGV[1])",
        "0",
        &format!("{strings}*"),
    ]);
    cli(&[
        "DEL",
        &stream,
        "sluice:offsets:to_redis:entries",
        "sluice:offsets:to_redis:values",
    ]);
    cli(&[
        "EVAL",
        "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end",
        "0",
        &format!("{strings}*"),
    ]);
    assert_eq!(entry, "True | 0 -5000.00 plain 2026-11-01");
    assert_eq!(value, "True | 0 -5000.00 plain 2026-11-01");
    assert_eq!(keys, n.to_string());
    assert_eq!(via.len(), n);
    assert_eq!(via, direct);
}

/// Avro entries read while the schema registry is down: they wait in the source (the
/// run retries, naming the registry) and arrive, each once, when it is up.
#[test]
fn avro_entries_wait_for_a_registry_that_is_down_and_arrive_once() {
    let dir = workdir();
    let d = dir.path();
    let stream = unique("avro_down");
    let registry = crate::service::free_port();
    let v1 = "{'type': 'record', 'name': 'R', 'fields': [{'name': 'id', 'type': 'long'}]}";
    // id 1 is what a fresh registry gives the first schema
    let payloads = crate::support::python(&format!(
        "import io, fastavro\n\
         schema = fastavro.parse_schema({v1})\n\
         for i in range(3):\n\
         \x20   b = io.BytesIO()\n\
         \x20   fastavro.schemaless_writer(b, schema, {{'id': i}})\n\
         \x20   print((bytes([0, 0, 0, 0, 1]) + b.getvalue()).hex())"
    ));
    for hex in payloads.lines() {
        xadd_body(&stream, &decode_hex(hex));
    }
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"p\"\n[source]\nconnector = \"redis\"\nurl = \"{}\"\nstream = \"{stream}\"\nbounded = true\n\
             format = \"avro\"\nschema_registry = {{ url = \"http://127.0.0.1:{registry}\", timeout = \"2s\" }}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [errors]\nmax_retries = 100\nretry_backoff_max = \"1s\"\n",
            url_at(port())
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "p.toml"]);
    crate::kafka_avro::registry_comes_up_later(child, registry, &format!("{stream}-value"), v1);
    cli(&["DEL", &stream]);
    assert_eq!(jsonl_ids(&d.join("out")), vec![0, 1, 2]);
}

/// `XADD stream * body PAYLOAD` with the payload's bytes as they are (`redis-cli -x`
/// reads the last argument from its input).
fn xadd_body(stream: &str, payload: &[u8]) {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port().to_string(), "-x", "XADD", stream, "*", "body"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    assert!(child.wait().unwrap().success(), "redis-cli -x XADD");
}

fn decode_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
