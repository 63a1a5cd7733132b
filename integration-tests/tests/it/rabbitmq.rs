//! RabbitMQ against the real broker (5672, guest/guest): every type through a queue
//! and back, kill -9 of the reading and of the writing runtime, a stream queue read
//! exactly once across kills, a malformed message, the broker application restarted
//! mid-run; checked with pika. The tests take a lock: the restart would cut the
//! others' connections.

use std::sync::Mutex;
use std::time::Duration;

use crate::support::{
    finish, jsonl_ids, jsonl_lines, kill_at_random, python, signal, sluice, spawn, wait_until,
    workdir,
};

static BROKER: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    BROKER.lock().unwrap_or_else(|e| e.into_inner())
}

fn url() -> String {
    std::env::var("SLUICE_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A queue name unique to this run.
fn unique(tag: &str) -> String {
    use rand::Rng;
    format!(
        "{tag}.{}.{:06x}",
        std::process::id(),
        rand::thread_rng().gen::<u32>() & 0xff_ffff
    )
}

/// Runs `body` (Python) with `ch`, a pika channel.
fn py(body: &str) -> String {
    python(&format!(
        "import json, pika\n\
         conn = pika.BlockingConnection(pika.URLParameters('{}'))\n\
         ch = conn.channel()\n\
         {body}\n\
         conn.close()\n",
        url()
    ))
}

/// Declares a durable queue (a stream queue with `stream`).
fn declare(queue: &str, stream: bool) {
    let args = if stream {
        "{'x-queue-type': 'stream'}"
    } else {
        "None"
    };
    py(&format!(
        "ch.queue_declare('{queue}', durable=True, arguments={args})"
    ));
}

fn delete(queue: &str) {
    py(&format!("ch.queue_delete('{queue}')"));
}

/// Publishes `{"id": i}` for `ids` to `queue` (persistent, confirmed).
fn publish(queue: &str, ids: std::ops::Range<u64>) {
    py(&format!(
        "ch.confirm_delivery()\n\
         for i in range({}, {}):\n\
         \x20   ch.basic_publish('', '{queue}', json.dumps({{'id': i}}).encode(), pika.BasicProperties(delivery_mode=2))",
        ids.start, ids.end
    ));
}

/// Publishes `{"id": i}` for `ids` to `queue` fast (persistent, not confirmed one by
/// one), then waits until the queue holds them all.
fn publish_many(queue: &str, ids: std::ops::Range<u64>) {
    py(&format!(
        "props = pika.BasicProperties(delivery_mode=2)\n\
         for i in range({0}, {1}):\n\
         \x20   ch.basic_publish('', '{queue}', json.dumps({{'id': i}}).encode(), props)\n\
         import time\n\
         for _ in range(300):\n\
         \x20   if ch.queue_declare('{queue}', passive=True).method.message_count >= {1} - {0}: break\n\
         \x20   time.sleep(0.1)",
        ids.start, ids.end
    ));
}

/// The ids of every message of `queue`, consumed and acknowledged by pika.
fn drain(queue: &str) -> Vec<i64> {
    let out = py(&format!(
        "ids = []\n\
         while True:\n\
         \x20   m, props, body = ch.basic_get('{queue}', auto_ack=True)\n\
         \x20   if m is None: break\n\
         \x20   ids.append(json.loads(body)['id'])\n\
         print(json.dumps(ids))"
    ));
    let mut ids: Vec<i64> = serde_json::from_str(out.lines().last().unwrap_or("[]")).unwrap();
    ids.sort();
    ids
}

/// Every type of the round-trip data set, file -> queue -> file: the values come
/// back exactly; pika sees three persistent JSON messages.
#[test]
fn every_type_goes_through_a_queue_and_back() {
    use crate::roundtrip::{COMPARE, ROWS, SCHEMA};
    let _guard = lock();
    let dir = workdir();
    let d = dir.path();
    let queue = unique("types");
    declare(&queue, false);
    crate::roundtrip::write_rows(d);
    let amqp = format!("connector = \"rabbitmq\"\nurl = \"{}\"\n", url());
    std::fs::write(
        d.join("to.toml"),
        format!(
            "name = \"to_rabbit\"\n[source]\nconnector = \"file\"\npath = \"in/all.jsonl\"\n{SCHEMA}\n\
             [sink]\n{amqp}routing_key = \"{queue}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("from.toml"),
        format!(
            "name = \"from_rabbit\"\n[source]\n{amqp}queue = \"{queue}\"\nbounded = true\n{SCHEMA}\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n"
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "to.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let seen = py(&format!(
        "q = ch.queue_declare('{queue}', passive=True)\n\
         m, props, body = ch.basic_get('{queue}')\n\
         ch.basic_nack(m.delivery_tag, requeue=True)\n\
         print(q.method.message_count, props.delivery_mode, props.content_type, json.loads(body)['u64'])"
    ));
    assert_eq!(seen, "3 2 application/json 18446744073709551615");
    let run = sluice(d, &["run", "from.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let left = py(&format!(
        "print(ch.queue_declare('{queue}', passive=True).method.message_count)"
    ));
    let out = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("a json file");
    // the requeued message comes back in another place: compare in id order
    let result = python(&format!(
        "{ROWS}\nOUT = '{0}.sorted'\nimport json\nls = open('{0}').read().splitlines()\n\
         key = lambda r: (r['i64'] is None, r['i64'] or 0)\n\
         rows.sort(key=key)\nls.sort(key=lambda l: key(json.loads(l)))\nopen(OUT, 'w').write(''.join(l + '\\n' for l in ls))\n{COMPARE}",
        out.display()
    ));
    delete(&queue);
    assert_eq!(left, "0", "every message acknowledged");
    assert_eq!(result, "equal 3");
}

/// Avro payloads (Confluent wire format, the schema registered under
/// `{routing_key}-value`): every type through a queue and back equals file -> file,
/// and fastavro decodes the first message with the schema the registry holds. The
/// bounded read ends once caught up, not at the (hour-long) checkpoint interval.
#[test]
fn avro_payloads_go_through_a_queue_and_back_with_the_schema_registry() {
    let _guard = lock();
    let dir = workdir();
    let d = dir.path();
    let queue = unique("avro");
    declare(&queue, false);
    let n = 200;
    let (file_source, avro, direct) = crate::kafka_avro::message_avro_input(d, n);
    let amqp = format!("connector = \"rabbitmq\"\nurl = \"{}\"\n", url());
    std::fs::write(
        d.join("to.toml"),
        format!(
            "name = \"to_rabbit\"\n{file_source}[sink]\n{amqp}routing_key = \"{queue}\"\n{avro}"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("from.toml"),
        format!(
            "name = \"from_rabbit\"\n[source]\n{amqp}queue = \"{queue}\"\nbounded = true\n{avro}\
             [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
             [checkpoint]\ninterval = \"1h\"\n"
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "to.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let first = py(&format!(
        "m, props, body = ch.basic_get('{queue}')\n\
         ch.basic_nack(m.delivery_tag, requeue=True)\n\
         print(body.hex())"
    ));
    // caught up, the bounded read checkpoints at once to acknowledge what it holds:
    // it does not wait for the hour-long interval
    let run = finish(spawn(d, &["run", "from.toml"]), Duration::from_secs(120));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let decoded = crate::kafka_avro::fastavro_decode(&first, &format!("{queue}-value"));
    let via = crate::kafka::sorted_rows(jsonl_lines(&d.join("out")));
    delete(&queue);
    assert_eq!(decoded, "True | 0 -5000.00 plain 2026-11-01");
    assert_eq!(via.len(), n);
    assert_eq!(via, direct);
}

/// The reading runtime killed 10 times mid-queue into an exactly-once file sink:
/// every message arrives, a message repeating only if a kill fell between a
/// checkpoint and its acknowledgement. The writing runtime killed 10 times: the queue
/// holds every record, repeats bounded by what was published after a checkpoint.
#[test]
fn kill_9_of_the_reader_and_of_the_writer_loses_nothing() {
    const N: u64 = 100_000;
    let _guard = lock();
    let dir = workdir();
    let d = dir.path();
    let (source, sunk) = (unique("kill_src"), unique("kill_dst"));
    declare(&source, false);
    declare(&sunk, false);
    publish_many(&source, 0..N);
    let amqp = format!("connector = \"rabbitmq\"\nurl = \"{}\"\n", url());
    std::fs::write(
        d.join("read.toml"),
        format!(
            "name = \"read\"\n[source]\n{amqp}queue = \"{source}\"\nbounded = true\nmax_in_flight = 2000\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n"
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "read.toml"], 10, 150..900);
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
    // a repeat needs a kill between a checkpoint and its ack: at most a batch or two
    // each
    assert!(
        total - ids.len() <= killed * 2000,
        "{} repeats after {killed} kills",
        total - ids.len()
    );

    let text: String = (0..N).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), text).unwrap();
    std::fs::write(
        d.join("write.toml"),
        format!(
            "name = \"write\"\n[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\n{amqp}routing_key = \"{sunk}\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n"
        ),
    )
    .unwrap();
    let killed = kill_at_random(d, &["run", "--quiet", "write.toml"], 10, 100..1200);
    let run = sluice(d, &["run", "--quiet", "write.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut stored = drain(&sunk);
    delete(&source);
    delete(&sunk);
    let total = stored.len();
    stored.dedup();
    assert_eq!(
        stored,
        (0..N as i64).collect::<Vec<_>>(),
        "killed {killed} times"
    );
    eprintln!(
        "rabbitmq writer: {} repeats after {killed} kills",
        total - stored.len()
    );
}

/// A stream queue read by offset: the reader killed 10 times into an exactly-once
/// file sink gets every message exactly once, resuming at the checkpoint's offset.
#[test]
fn a_stream_queue_is_read_exactly_once_across_kills() {
    const N: u64 = 20_000;
    let _guard = lock();
    let dir = workdir();
    let d = dir.path();
    let queue = unique("stream");
    declare(&queue, true);
    publish(&queue, 0..N);
    std::fs::write(
        d.join("read.toml"),
        format!(
            "name = \"stream\"\n[source]\nconnector = \"rabbitmq\"\nurl = \"{}\"\nqueue = \"{queue}\"\nstream = true\n\
             bounded = true\nmetadata = [\"offset\"]\nschema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"20ms\"\n",
            url()
        ),
    )
    .unwrap();
    // a large stream starts delivering after about two seconds
    let killed = kill_at_random(d, &["run", "--quiet", "read.toml"], 10, 1500..4000);
    let before = jsonl_ids(&d.join("out")).len() as u64;
    let run = sluice(d, &["run", "--quiet", "read.toml"]);
    delete(&queue);
    assert!(
        before > 0,
        "the killed runs read nothing: the kills fell before the stream delivered"
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ids = jsonl_ids(&d.join("out"));
    assert_eq!(ids.len() as u64, N, "killed {killed} times mid-run");
    assert_eq!(ids, (0..N as i64).collect::<Vec<_>>());
}

/// A message that is not JSON is a dead letter naming queue and routing key, with its
/// bytes; it is acknowledged, not requeued; the others arrive.
#[test]
fn a_malformed_message_is_a_dead_letter_and_is_not_requeued() {
    let _guard = lock();
    let dir = workdir();
    let d = dir.path();
    let queue = unique("bad");
    declare(&queue, false);
    publish(&queue, 0..3);
    py(&format!(
        "ch.basic_publish('', '{queue}', b'not json \\xff')"
    ));
    publish(&queue, 3..6);
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"bad\"\n[source]\nconnector = \"rabbitmq\"\nurl = \"{}\"\nqueue = \"{queue}\"\nbounded = true\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\nmetadata = [\"topic\"]\n\
             [sink]\nconnector = \"file\"\npath = \"out\"\n\
             [errors]\ntolerance = \"all\"\nmax_failure_rate = 0.5\n\
             [errors.dead_letter]\nconnector = \"file\"\npath = \"dlq\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "p.toml"]);
    let left = py(&format!(
        "print(ch.queue_declare('{queue}', passive=True).method.message_count)"
    ));
    delete(&queue);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(left, "0");
    assert_eq!(jsonl_ids(&d.join("out")), [0, 1, 2, 3, 4, 5]);
    let letters = jsonl_lines(&d.join("dlq"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(
        letter["position"],
        format!("queue \"{queue}\" (routing key \"{queue}\")")
    );
    assert_eq!(letter["record_base64"], "bm90IGpzb24g/w==");
}

/// The broker application stopped and started again while a pipeline reads a queue
/// and writes another: the pipeline waits, reconnects, and every message arrives.
#[test]
fn a_broker_restart_mid_run_is_waited_out_and_nothing_is_lost() {
    let _guard = lock();
    let dir = workdir();
    let d = dir.path();
    let (source, sunk) = (unique("restart_src"), unique("restart_dst"));
    declare(&source, false);
    declare(&sunk, false);
    publish(&source, 0..2000);
    let amqp = format!("connector = \"rabbitmq\"\nurl = \"{}\"\n", url());
    std::fs::write(
        d.join("p.toml"),
        format!(
            "name = \"restart\"\n[source]\n{amqp}queue = \"{source}\"\n\
             schema = [{{ name = \"id\", type = \"int64\" }}]\n\
             [sink]\n{amqp}routing_key = \"{sunk}\"\n[checkpoint]\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let child = spawn(d, &["run", "--quiet", "p.toml"]);
    let count = |q: &str| {
        py(&format!(
            "print(ch.queue_declare('{q}', passive=True).method.message_count)"
        ))
        .parse::<u64>()
        .unwrap_or(0)
    };
    let first = wait_until(Duration::from_secs(30), || count(&sunk) >= 2000);
    let ctl = |what: &str| {
        let out = std::process::Command::new("rabbitmqctl")
            .arg(what)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl("stop_app");
    std::thread::sleep(Duration::from_secs(2));
    ctl("start_app");
    let _ = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", 5672)).is_ok()
    });
    publish(&source, 2000..4000);
    let all = wait_until(Duration::from_secs(90), || {
        count(&sunk) >= 4000 && count(&source) == 0
    });
    signal(&child, "TERM");
    let run = finish(child, Duration::from_secs(30));
    let mut ids = drain(&sunk);
    delete(&source);
    delete(&sunk);
    assert!(first, "the first messages did not arrive: {}", run.stderr);
    assert!(
        all,
        "the messages after the restart did not arrive: {}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    ids.dedup();
    assert_eq!(ids, (0..4000).collect::<Vec<_>>());
}

/// Options that cannot work are named: by `validate`, and at open a queue that does
/// not exist and a message no queue takes.
#[test]
fn bad_options_missing_queues_and_unroutable_messages_are_named() {
    let _guard = lock();
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("v.toml"),
        "[source]\nconnector = \"rabbitmq\"\nurl = \"amqp://h\"\nqueue = \"q\"\nmetadata = [\"offset\"]\n[sink]\nconnector = \"file\"\npath = \"out\"\n",
    )
    .unwrap();
    let run = sluice(d, &["validate", "v.toml"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("only a stream queue"), "{}", run.stderr);

    let missing = unique("missing");
    std::fs::write(
        d.join("m.toml"),
        format!(
            "[source]\nconnector = \"rabbitmq\"\nurl = \"{}\"\nqueue = \"{missing}\"\n[sink]\nconnector = \"file\"\npath = \"out\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "m.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("queue \"{missing}\"")) && run.stderr.contains("NOT_FOUND"),
        "{}",
        run.stderr
    );

    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.jsonl"), "{\"id\": 1}\n").unwrap();
    std::fs::write(
        d.join("r.toml"),
        format!(
            "[source]\nconnector = \"file\"\npath = \"in/a.jsonl\"\n[sink]\nconnector = \"rabbitmq\"\nurl = \"{}\"\nrouting_key = \"{missing}\"\n",
            url()
        ),
    )
    .unwrap();
    let run = sluice(d, &["run", "r.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("routing key \"{missing}\" to no queue")),
        "{}",
        run.stderr
    );
}
