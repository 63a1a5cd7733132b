//! NATS against the real server (JetStream on 4222, or a private one for a restart):
//! every type through a stream and back, kill -9 of the reading and of the writing
//! runtime, a malformed message, a server restart mid-run; checked with nats-py, the
//! NATS project's Python client.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{
    finish, jsonl_ids, jsonl_lines, kill_at_random, python, signal, sluice, spawn, wait_until,
    workdir,
};

/// The server the tests use.
pub(crate) fn url() -> String {
    std::env::var("SLUICE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream or subject name unique to this run.
fn unique(tag: &str) -> String {
    use rand::Rng;
    format!(
        "{tag}_{}_{:06x}",
        std::process::id(),
        rand::thread_rng().gen::<u32>() & 0xff_ffff
    )
}

/// Runs `body` (Python, indented by the caller's lines) inside an async function with
/// `nc` connected to `server` and `js` its JetStream context.
fn py_at(server: &str, body: &str) -> String {
    let body: String = body.lines().map(|l| format!("    {l}\n")).collect();
    python(&format!(
        "import asyncio, json, nats\n\
         async def main():\n\
         \x20   nc = await nats.connect('{server}')\n\
         \x20   js = nc.jetstream()\n\
         {body}\
         \x20   await nc.close()\n\
         asyncio.run(main())\n"
    ))
}

fn py(body: &str) -> String {
    py_at(&url(), body)
}

/// Creates stream `name` capturing `name.>` (file storage, the default two-minute
/// duplicate window).
fn create_stream(name: &str) {
    py(&format!(
        "await js.add_stream(name='{name}', subjects=['{name}.>'])"
    ));
}

fn delete_stream(name: &str) {
    py(&format!(
        "try:\n    await js.delete_stream('{name}')\nexcept Exception:\n    pass"
    ));
}

/// The ids in every message of `stream`, in order, as Python reads them (an ephemeral
/// pull consumer from the first message, acknowledging nothing).
fn stream_ids(stream: &str) -> Vec<i64> {
    let text = py(&format!(
        "info = await js.stream_info('{stream}')\n\
         from nats.js.api import ConsumerConfig, AckPolicy\n\
         sub = await js.pull_subscribe('{stream}.>', durable=None, stream='{stream}', config=ConsumerConfig(ack_policy=AckPolicy.NONE))\n\
         ids = []\n\
         while len(ids) < info.state.messages:\n\
         \x20   for m in await sub.fetch(min(1000, info.state.messages - len(ids)), timeout=10):\n\
         \x20       ids.append(json.loads(m.data)['id'])\n\
         print(json.dumps(ids))"
    ));
    serde_json::from_str(text.lines().last().unwrap_or("[]")).unwrap()
}

/// Publishes `{"id": i}` for `ids` to `subject` (JetStream, acknowledged).
fn publish(subject: &str, ids: std::ops::Range<u64>) {
    py(&format!(
        "for i in range({}, {}):\n    await js.publish('{subject}', json.dumps({{'id': i}}).encode())",
        ids.start, ids.end
    ));
}

/// Every type of the round-trip data set, file -> NATS -> file: the values come back
/// exactly, and nats-py reads the messages the sink published.
#[test]
fn every_type_goes_through_a_jetstream_stream_and_back() {
    use crate::roundtrip::SCHEMA;
    let dir = workdir();
    let d = dir.path();
    let stream = unique("types");
    create_stream(&stream);
    crate::roundtrip::write_rows(d);
    let nats = format!("connector = \"nats\"\nurl = \"{}\"\n", url());
    std::fs::write(
        d.join("to_nats.toml"),
        format!(
            "name = \"to_nats\"\n[source]\nconnector = \"file\"\npath = \"in/all.jsonl\"\n{SCHEMA}\n\
             [sink]\n{nats}subject = \"{stream}.rows\"\nmsg_id = \"ordinal\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("from_nats.toml"),
        format!(
            "name = \"from_nats\"\n[source]\n{nats}stream = \"{stream}\"\nbounded = true\n{SCHEMA}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n"
        ),
    )
    .unwrap();
    for p in ["to_nats.toml", "from_nats.toml"] {
        let run = sluice(d, &["run", p]);
        assert_eq!(run.code, Some(0), "{p}: {}", run.stderr);
    }
    let seen = py(&format!(
        "info = await js.stream_info('{stream}')\n\
         m = await js.get_msg('{stream}', 1)\n\
         print(info.state.messages, m.subject, json.loads(m.data)['u64'], 'Nats-Msg-Id' in (m.headers or {{}}))"
    ));
    assert_eq!(seen, format!("3 {stream}.rows 18446744073709551615 True"));
    let result = crate::roundtrip::compare_out(&d.join("out"));
    delete_stream(&stream);
    assert_eq!(result, "equal 3");
}

/// Avro payloads (Confluent wire format, the schema registered under
/// `{subject}-value`): every type through a stream and back equals file -> file, and
/// fastavro decodes the first message with the schema the registry holds.
#[test]
fn avro_payloads_go_through_a_stream_and_back_with_the_schema_registry() {
    let dir = workdir();
    let d = dir.path();
    let stream = unique("avro");
    create_stream(&stream);
    let n = 200;
    let (file_source, avro, direct) = crate::kafka_avro::message_avro_input(d, n);
    let nats = format!("connector = \"nats\"\nurl = \"{}\"\n", url());
    std::fs::write(
        d.join("to.toml"),
        format!(
            "name = \"to_nats\"\n{file_source}[sink]\n{nats}subject = \"{stream}.rows\"\n{avro}"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("from.toml"),
        format!(
            "name = \"from_nats\"\n[source]\n{nats}stream = \"{stream}\"\nbounded = true\n{avro}\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    for p in ["to.toml", "from.toml"] {
        let run = sluice(d, &["run", p]);
        assert_eq!(run.code, Some(0), "{p}: {}", run.stderr);
    }
    let first = py(&format!(
        "m = await js.get_msg('{stream}', 1)\nprint(m.data.hex())"
    ));
    let decoded = crate::kafka_avro::fastavro_decode(&first, &format!("{stream}.rows-value"));
    let via = crate::kafka::sorted_rows(jsonl_lines(&d.join("out")));
    delete_stream(&stream);
    assert_eq!(decoded, "True | 0 -5000.00 plain 2026-11-01");
    assert_eq!(via.len(), n);
    assert_eq!(via, direct);
}

/// An Avro stream read while the schema registry is down: the messages wait in the
/// source (the run retries, naming the registry) and arrive, each once, when it is
/// up.
#[test]
fn avro_messages_wait_for_a_registry_that_is_down_and_arrive_once() {
    let dir = workdir();
    let d = dir.path();
    let stream = unique("avro_down");
    create_stream(&stream);
    let port = crate::service::free_port();
    let v1 = "{'type': 'record', 'name': 'R', 'fields': [{'name': 'id', 'type': 'long'}]}";
    // id 1 is what a fresh registry gives the first schema
    py(&format!(
        "import io, fastavro\n\
         schema = fastavro.parse_schema({v1})\n\
         for i in range(3):\n\
         \x20   b = io.BytesIO()\n\
         \x20   fastavro.schemaless_writer(b, schema, {{'id': i}})\n\
         \x20   await js.publish('{stream}.a', bytes([0, 0, 0, 0, 1]) + b.getvalue())"
    ));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"p\"\n[source]\nconnector = \"nats\"\nurl = \"{}\"\nstream = \"{stream}\"\nbounded = true\n\
             format = \"avro\"\nschema_registry = {{ url = \"http://127.0.0.1:{port}\", timeout = \"2s\" }}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [errors]\nmax_retries = 100\nretry_backoff_max = \"1s\"\n",
            url()
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "p.toml"]);
    crate::kafka_avro::registry_comes_up_later(child, port, &format!("{stream}.a-value"), v1);
    delete_stream(&stream);
    assert_eq!(jsonl_ids(&d.join("out")), vec![0, 1, 2]);
}

/// The reading runtime killed 10 times mid-stream into an exactly-once file sink:
/// every message arrives once. The writing runtime (`msg_id = "ordinal"`, a file read
/// in order) killed 10 times: the stream holds every record once, the ids a replay
/// sends again dropped by JetStream.
#[test]
fn kill_9_of_the_reader_and_of_the_writer_loses_and_repeats_nothing() {
    const N: u64 = 20_000;
    let dir = workdir();
    let d = dir.path();
    let (source, sunk) = (unique("kill_src"), unique("kill_dst"));
    create_stream(&source);
    create_stream(&sunk);
    publish(&format!("{source}.in"), 0..N);
    let nats = format!("connector = \"nats\"\nurl = \"{}\"\n", url());
    std::fs::write(
        d.join("read.toml"),
        format!(
            "name = \"read\"\n[source]\n{nats}stream = \"{source}\"\nbounded = true\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n"
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "read.toml"], 10, 150..900);
    let run = sluice(d, &["run", "--quiet", "read.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ids = jsonl_ids(&d.join("out"));
    assert_eq!(ids.len() as u64, N, "killed {killed} times mid-run");
    assert_eq!(ids, (0..N as i64).collect::<Vec<_>>());

    // the writer: a file of 10 N lines (it writes faster than it reads) into the
    // other stream
    let text: String = (0..10 * N).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), text).unwrap();
    std::fs::write(
        d.join("write.toml"),
        format!(
            "name = \"write\"\n[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\n{nats}subject = \"{sunk}.out\"\nmsg_id = \"ordinal\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n"
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "write.toml"], 10, 100..1200);
    let run = sluice(d, &["run", "--quiet", "write.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut stored = stream_ids(&sunk);
    delete_stream(&source);
    delete_stream(&sunk);
    assert_eq!(stored.len() as u64, 10 * N, "killed {killed} times mid-run");
    stored.sort();
    assert_eq!(stored, (0..10 * N as i64).collect::<Vec<_>>());
}

/// A message that is not JSON is a dead letter naming stream and sequence, with its
/// bytes; the others arrive.
#[test]
fn a_malformed_message_is_a_dead_letter_naming_stream_and_sequence() {
    let dir = workdir();
    let d = dir.path();
    let stream = unique("bad");
    create_stream(&stream);
    publish(&format!("{stream}.a"), 0..3);
    py(&format!(
        "await js.publish('{stream}.a', b'not json \\xff')"
    ));
    publish(&format!("{stream}.a"), 3..6);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"bad\"\n[source]\nconnector = \"nats\"\nurl = \"{}\"\nstream = \"{stream}\"\nbounded = true\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\nmetadata = [\"topic\", \"offset\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
             [errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    delete_stream(&stream);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_ids(&d.join("out")), [0, 1, 2, 3, 4, 5]);
    let first: serde_json::Value = serde_json::from_str(&jsonl_lines(&d.join("out"))[0]).unwrap();
    assert_eq!(first["_topic"], format!("{stream}.a"));
    let letters = jsonl_lines(&d.join("dlq"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(
        letter["position"],
        format!("stream \"{stream}\" sequence 4 (subject \"{stream}.a\")")
    );
    assert_eq!(letter["record_base64"], "bm90IGpzb24g/w==");
}

/// A NATS server of the test's own, with JetStream storing under `store`.
fn private_server(port: u16, store: &Path) -> Child {
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server");
    let up = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "nats-server did not start on port {port}");
    child
}

/// The server restarted while a pipeline reads its stream and writes another: the
/// pipeline waits, reconnects, and every message arrives once.
#[test]
fn a_server_restart_mid_run_is_waited_out_and_nothing_is_lost() {
    let dir = workdir();
    let d = dir.path();
    let port = crate::service::free_port();
    let server_url = format!("nats://127.0.0.1:{port}");
    let store = d.join("js");
    let mut server = private_server(port, &store);
    let py_here = |body: &str| py_at(&server_url, body);
    py_here("await js.add_stream(name='R', subjects=['r.>'])");
    let publish_here = |ids: std::ops::Range<u64>| {
        py_at(
            &server_url,
            &format!(
                "for i in range({}, {}):\n    await js.publish('r.in', json.dumps({{'id': i}}).encode())",
                ids.start, ids.end
            ),
        )
    };
    publish_here(0..2000);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"restart\"\n[source]\nconnector = \"nats\"\nurl = \"{server_url}\"\nstream = \"R\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n[checkpoint]\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let first = wait_until(Duration::from_secs(30), || {
        jsonl_ids(&d.join("out")).len() == 2000
    });
    signal(&server, "KILL");
    let _ = server.wait();
    std::thread::sleep(Duration::from_secs(2));
    server = private_server(port, &store);
    publish_here(2000..4000);
    let all = wait_until(Duration::from_secs(60), || {
        jsonl_ids(&d.join("out")).len() >= 4000
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    signal(&server, "TERM");
    let _ = server.wait();
    assert!(first, "the first messages did not arrive: {}", run.stderr);
    assert!(
        all,
        "the messages after the restart did not arrive: {}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_ids(&d.join("out")), (0..4000).collect::<Vec<_>>());
}

/// Core NATS (`jetstream = false`) both ways: what is published while the pipeline
/// runs arrives; and `validate` names what a JetStream source lacks.
#[test]
fn core_nats_subjects_are_read_and_written_at_most_once_and_bad_options_and_streams_are_named() {
    let dir = workdir();
    let d = dir.path();
    let subject = unique("core");
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"core\"\n[source]\nconnector = \"nats\"\nurl = \"{0}\"\njetstream = false\nsubjects = [\"{subject}.in\"]\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"nats\"\nurl = \"{0}\"\njetstream = false\nsubject = \"{subject}.out\"\n",
            url()
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    // a subscriber on the output, then messages on the input until the output has them
    let got = py(&format!(
        "got = []\n\
         async def on(m):\n\
         \x20   got.append(json.loads(m.data)['id'])\n\
         await nc.subscribe('{subject}.out', cb=on)\n\
         for i in range(200):\n\
         \x20   await nc.publish('{subject}.in', json.dumps({{'id': i}}).encode())\n\
         \x20   await asyncio.sleep(0.02)\n\
         \x20   if len(got) >= 50: break\n\
         await asyncio.sleep(1)\n\
         print(len(got) >= 50, got == sorted(got))"
    ));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(got, "True True", "{}", run.stderr);

    std::fs::write(
        d.join("bad.toml"),
        format!(
            "[source]\nconnector = \"nats\"\nurl = \"{}\"\n[sink]\nconnector = \"file\"\npath = \"out\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["validate", "bad.toml"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("jetstream needs the stream"),
        "{}",
        run.stderr
    );

    // an interest stream would lose its unacknowledged messages when the consumer is
    // placed again: refused, naming it
    let interest = unique("interest");
    py(&format!(
        "await js.add_stream(name='{interest}', subjects=['{interest}.>'], retention='interest')"
    ));
    std::fs::write(
        d.join("interest.toml"),
        format!(
            "[source]\nconnector = \"nats\"\nurl = \"{}\"\nstream = \"{interest}\"\n[sink]\nconnector = \"file\"\npath = \"out\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "interest.toml"]);
    delete_stream(&interest);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "stream \"{interest}\" keeps messages by Interest retention"
        )),
        "{}",
        run.stderr
    );
}
