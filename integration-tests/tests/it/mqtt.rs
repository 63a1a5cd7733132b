//! MQTT against Mosquitto: a private broker per test (persistence in the test's
//! directory, no limit on the messages it queues for an offline session), or the
//! machine's on 1883. Every type through a topic and back, kill -9 of the reading and
//! of the writing runtime, a malformed message, a broker restart mid-run; checked with
//! paho-mqtt, the Eclipse project's Python client.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{
    finish, jsonl_ids, jsonl_lines, kill_at_random, python, signal, sluice, spawn, wait_until,
    workdir,
};

/// A Mosquitto of the test's own on `port`, keeping its sessions in `dir` (as the user
/// running the tests: as root it would switch to `mosquitto`, who cannot write there).
fn broker(port: u16, dir: &Path) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             max_queued_messages 0\nautosave_interval 1\nuser root\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let up = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "mosquitto did not start on port {port}");
    child
}

fn stop(mut b: Child) {
    signal(&b, "TERM");
    let _ = b.wait();
}

/// Runs `body` (Python) with `paho` imported and `PORT` set.
fn py(port: u16, body: &str) -> String {
    python(&format!(
        "import json, time\nimport paho.mqtt.client as mqtt\nPORT = {port}\n\
         def client(cid, clean=True):\n\
         \x20   c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean, protocol=mqtt.MQTTv311)\n\
         \x20   c.connect('127.0.0.1', PORT)\n\
         \x20   c.loop_start()\n\
         \x20   return c\n\
         def publish(topic, payloads):\n\
         \x20   c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='pub', protocol=mqtt.MQTTv311)\n\
         \x20   c.max_inflight_messages_set(1000); c.max_queued_messages_set(0)\n\
         \x20   c.connect('127.0.0.1', PORT); c.loop_start()\n\
         \x20   for at in range(0, len(payloads), 10000):\n\
         \x20       infos = [c.publish(topic, p, qos=1) for p in payloads[at:at + 10000]]\n\
         \x20       for i in infos: i.wait_for_publish(60)\n\
         \x20   c.disconnect(); c.loop_stop()\n\
         def drain(cid, topic, quiet=2.0):\n\
         \x20   got = []\n\
         \x20   c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False, protocol=mqtt.MQTTv311)\n\
         \x20   c.on_message = lambda c, u, m: got.append(m.payload)\n\
         \x20   c.connect('127.0.0.1', PORT)\n\
         \x20   c.subscribe(topic, qos=1)\n\
         \x20   c.loop_start()\n\
         \x20   n = -1\n\
         \x20   while n != len(got):\n\
         \x20       n = len(got); time.sleep(quiet)\n\
         \x20   c.disconnect(); c.loop_stop()\n\
         \x20   return got\n\
         {body}\n"
    ))
}

/// Registers a persistent paho session `cid` on `topic`, so the broker keeps what is
/// published there until `drain`.
fn paho_session(port: u16, cid: &str, topic: &str) {
    py(port, &format!("c = client('{cid}', clean=False)\nc.subscribe('{topic}', qos=1)\ntime.sleep(0.5)\nc.disconnect(); c.loop_stop()"));
}

fn paho_ids(port: u16, cid: &str, topic: &str) -> Vec<i64> {
    let out = py(
        port,
        &format!(
            "print(json.dumps(sorted(json.loads(p)['id'] for p in drain('{cid}', '{topic}'))))"
        ),
    );
    serde_json::from_str(out.lines().last().unwrap_or("[]")).unwrap()
}

fn publish_ids(port: u16, topic: &str, ids: std::ops::Range<u64>) {
    py(
        port,
        &format!(
            "publish('{topic}', [json.dumps({{'id': i}}) for i in range({}, {})])",
            ids.start, ids.end
        ),
    );
}

/// A pipeline file reading `topics` (a bounded run first creates the session).
fn reader(d: &Path, file: &str, port: u16, topics: &str, extra: &str) {
    std::fs::write(
        d.join(file),
        format!(
            "name = \"{}\"\n[source]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopics = [{topics}]\nbounded = true\n{extra}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n[batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n",
            file.trim_end_matches(".toml")
        ),
    )
    .unwrap();
}

/// Every type of the round-trip data set, file -> MQTT -> file: the session the
/// reading pipeline made keeps the messages while it is down; the values come back
/// exactly; paho reads what the sink published.
#[test]
fn every_type_goes_through_a_topic_and_back() {
    use crate::roundtrip::SCHEMA;
    let dir = workdir();
    let d = dir.path();
    let port = crate::service::free_port();
    let b = broker(port, &d.join("broker"));
    crate::roundtrip::write_rows(d);
    reader(d, "from.toml", port, "\"rows/#\"", SCHEMA);
    let first = sluice(d, &["run", "from.toml"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    paho_session(port, "check", "rows/#");
    std::fs::write(
        d.join("to.toml"),
        format!(
            "name = \"to\"\n[source]\nconnector = \"file\"\npath = \"in/all.jsonl\"\n{SCHEMA}\n\
             [sink]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic = \"rows/all\"\n"
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "to.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = sluice(d, &["run", "from.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let seen = py(
        port,
        "got = drain('check', 'rows/#')\nprint(len(got), json.loads(got[0])['u64'])",
    );
    stop(b);
    assert_eq!(seen, "3 18446744073709551615");
    let result = crate::roundtrip::compare_out(&d.join("out"));
    assert_eq!(result, "equal 3");
}

/// Avro payloads (Confluent wire format, the schema registered under
/// `{topic}-value`): every type through a topic and back equals file -> file, and
/// fastavro decodes the first message with the schema the registry holds.
#[test]
fn avro_payloads_go_through_a_topic_and_back_with_the_schema_registry() {
    let dir = workdir();
    let d = dir.path();
    let port = crate::service::free_port();
    let b = broker(port, &d.join("broker"));
    let n = 200;
    let (file_source, avro, direct) = crate::kafka_avro::message_avro_input(d, n);
    reader(d, "from.toml", port, "\"avro/#\"", &avro);
    let first = sluice(d, &["run", "from.toml"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    paho_session(port, "check", "avro/#");
    let topic = format!("avro/{}", std::process::id());
    std::fs::write(
        d.join("to.toml"),
        format!(
            "name = \"to\"\n{file_source}[sink]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic = \"{topic}\"\n{avro}record_name = \"Reading\"\n"
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "to.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = sluice(d, &["run", "from.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let first = py(port, "got = drain('check', 'avro/#')\nprint(got[0].hex())");
    stop(b);
    let decoded = crate::kafka_avro::fastavro_decode(&first, &format!("{topic}-value"));
    let via = crate::kafka::sorted_rows(jsonl_lines(&d.join("out")));
    assert_eq!(decoded, "True | 0 -5000.00 plain 2026-11-01");
    // the record is named as the sink's config says
    let named = crate::support::python(&format!(
        "import json, urllib.parse, urllib.request\n\
         latest = json.load(urllib.request.urlopen('{}/subjects/' + urllib.parse.quote('{topic}-value', safe='') + '/versions/latest'))\n\
         s = json.loads(latest['schema'])\n\
         print(s['namespace'] + '.' + s['name'])",
        crate::kafka_avro::registry()
    ));
    assert_eq!(named.trim(), "sluice.Reading");
    assert_eq!(via.len(), n);
    assert_eq!(via, direct);
}

/// The reading runtime killed 10 times while its session holds 100,000 messages:
/// every message arrives, one repeating only if a kill fell between a checkpoint and
/// its acknowledgement. The writing runtime killed 10 times: paho's session gets
/// every record.
#[test]
fn kill_9_of_the_reader_and_of_the_writer_loses_nothing() {
    const N: u64 = 100_000;
    let dir = workdir();
    let d = dir.path();
    let port = crate::service::free_port();
    let b = broker(port, &d.join("broker"));
    reader(
        d,
        "read.toml",
        port,
        "\"in/+\"",
        "schema = [{ name = \"id\", type = \"int64\" }]\nmax_in_flight = 2000",
    );
    let first = sluice(d, &["run", "--quiet", "read.toml"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    publish_ids(port, "in/a", 0..N);
    let killed = kill_at_random(d, &["run", "--quiet", "read.toml"], 10, 200..1200);
    let before = jsonl_ids(&d.join("out")).len();
    eprintln!("killed {killed} times mid-run; {before} records before the last run");
    let run = sluice(d, &["run", "--quiet", "read.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut ids = jsonl_ids(&d.join("out"));
    let total = ids.len();
    ids.dedup();
    assert_eq!(
        ids,
        (0..N as i64).collect::<Vec<_>>(),
        "killed {killed} times"
    );
    // a repeat is a message whose checkpoint was stored and whose PUBACK had not
    // reached the broker when the process died: with the acknowledgements of the last
    // checkpoint possibly not yet sent, at most twice max_in_flight a kill, as the
    // crate's README says (once under that on a quiet machine; a loaded one saw 2,370)
    eprintln!(
        "mqtt reader: {} repeats after {killed} kills",
        total - ids.len()
    );
    assert!(
        total - ids.len() <= killed * 2 * 2000,
        "{} repeats after {killed} kills",
        total - ids.len()
    );

    paho_session(port, "out-check", "out/#");
    let text: String = (0..N).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), text).unwrap();
    std::fs::write(
        d.join("write.toml"),
        format!(
            "name = \"write\"\n[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic = \"out/a\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n"
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "write.toml"], 10, 100..1200);
    let run = sluice(d, &["run", "--quiet", "write.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut stored = paho_ids(port, "out-check", "out/#");
    stop(b);
    let total = stored.len();
    stored.dedup();
    assert_eq!(
        stored,
        (0..N as i64).collect::<Vec<_>>(),
        "killed {killed} times"
    );
    eprintln!(
        "mqtt writer: {} repeats after {killed} kills",
        total - stored.len()
    );
}

/// A message that is not JSON is a dead letter naming its topic, with its bytes; the
/// others arrive, with their topic as a column.
#[test]
fn a_malformed_message_is_a_dead_letter_naming_its_topic() {
    let dir = workdir();
    let d = dir.path();
    let port = crate::service::free_port();
    let b = broker(port, &d.join("broker"));
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"bad\"\n[source]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopics = [\"sensors/+/t\"]\nbounded = true\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\nmetadata = [\"topic\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
             [errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\n"
        ),
    )
    .unwrap();
    let first = sluice(d, &["run", "p.toml"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    publish_ids(port, "sensors/a/t", 0..3);
    py(port, "publish('sensors/b/t', [b'not json \\xff'])");
    publish_ids(port, "sensors/a/t", 3..6);
    let run = sluice(d, &["run", "p.toml"]);
    stop(b);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(jsonl_ids(&d.join("out")), [0, 1, 2, 3, 4, 5]);
    let first: serde_json::Value = serde_json::from_str(&jsonl_lines(&d.join("out"))[0]).unwrap();
    assert_eq!(first["_topic"], "sensors/a/t");
    let letters = jsonl_lines(&d.join("dlq"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter["position"], "topic \"sensors/b/t\"");
    assert_eq!(letter["record_base64"], "bm90IGpzb24g/w==");
}

/// The broker restarted while a pipeline reads a topic and writes another: the
/// pipeline waits, reconnects to its session, and every message arrives.
#[test]
fn a_broker_restart_mid_run_is_waited_out_and_nothing_is_lost() {
    let dir = workdir();
    let d = dir.path();
    let port = crate::service::free_port();
    let data = d.join("broker");
    let mut b = broker(port, &data);
    paho_session(port, "sink-check", "out/#");
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"restart\"\n[source]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopics = [\"in/#\"]\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic = \"out/a\"\n[checkpoint]\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    std::thread::sleep(Duration::from_secs(2));
    publish_ids(port, "in/a", 0..2000);
    std::thread::sleep(Duration::from_secs(3));
    stop(b);
    std::thread::sleep(Duration::from_secs(2));
    b = broker(port, &data);
    std::thread::sleep(Duration::from_secs(3));
    publish_ids(port, "in/a", 2000..4000);
    std::thread::sleep(Duration::from_secs(5));
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    let mut ids = paho_ids(port, "sink-check", "out/#");
    stop(b);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    ids.dedup();
    let missing: Vec<i64> = (0..4000)
        .filter(|i| ids.binary_search(i).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}: {}",
        missing.len(),
        &missing[..missing.len().min(5)],
        run.stderr
    );
    assert_eq!(ids, (0..4000).collect::<Vec<_>>());
}

/// Options that cannot work are named by `validate`; a broker that does not answer
/// by the run.
#[test]
fn bad_options_and_an_unreachable_broker_are_named() {
    let dir = workdir();
    let d = dir.path();
    for (source, expected) in [
        (
            "url = \"mqtts://h\"\ntopics = [\"a\"]",
            "TLS (mqtts://) is not built in",
        ),
        (
            "url = \"mqtt://h\"\ntopics = []",
            "name at least one topic filter",
        ),
        (
            "url = \"mqtt://h\"\ntopics = [\"a\"]\nmetadata = [\"offset\"]",
            "MQTT messages carry a topic",
        ),
    ] {
        std::fs::write(
            d.join("p.toml"),
            format!("[source]\nconnector = \"mqtt\"\n{source}\n[sink]\nconnector = \"file\"\npath = \"out\"\n"),
        )
        .unwrap();
        let run = sluice(d, &["validate", "p.toml"]);
        assert_eq!(run.code, Some(2), "{source}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{source}: {}", run.stderr);
    }
    let port = crate::service::free_port();
    std::fs::write(
        d.join("p.toml"),
        format!("[source]\nconnector = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopics = [\"a\"]\n[sink]\nconnector = \"file\"\npath = \"out\"\n"),
    )
    .unwrap();
    let run = sluice(d, &["check", "p.toml"]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("mqtt: cannot connect to 127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
}
