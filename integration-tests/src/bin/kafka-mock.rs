//! A Kafka-protocol broker for local runs and benchmarks: librdkafka's mock cluster
//! (real TCP, consumer groups, idempotence, transactions) on loopback.
//!
//! `kafka-mock [--rebalance-delay-ms MS] [BROKERS] [TOPIC:PARTITIONS ...]` prints the
//! bootstrap address on the first line of stdout and serves until its stdin closes or
//! it is killed. `--rebalance-delay-ms` is the broker's
//! `group.initial.rebalance.delay.ms` (3000 by default, as in Kafka). Each partition
//! keeps only about the last 100k messages or 5 MB: spread large runs over many
//! partitions.

use std::io::{BufRead, Write};

use rdkafka::producer::{BaseProducer, Producer};

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let mut delay_ms: Option<i32> = None;
    if args.peek().map(String::as_str) == Some("--rebalance-delay-ms") {
        args.next();
        let ms = args.next().and_then(|v| v.parse().ok());
        delay_ms = Some(ms.expect("--rebalance-delay-ms needs a number of milliseconds"));
    }
    let brokers = match args.peek().and_then(|a| a.parse::<i32>().ok()) {
        Some(n) => {
            args.next();
            n
        }
        None => 1,
    };
    // the cluster lives as long as the client that created it
    let owner: BaseProducer = rdkafka::ClientConfig::new()
        .set("test.mock.num.brokers", brokers.to_string())
        .create()
        .expect("start the mock cluster");
    let cluster = owner
        .client()
        .mock_cluster()
        .expect("the client has a mock cluster");
    if let Some(ms) = delay_ms {
        // the one setting the mock cluster's safe wrapper does not offer
        // SAFETY: the handle is the live mock cluster of `owner`, which outlives this call
        #[allow(unsafe_code)]
        unsafe {
            let handle =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(handle, ms);
        }
    }
    for spec in args {
        let (name, parts) = spec.rsplit_once(':').unwrap_or((spec.as_str(), "1"));
        let parts: i32 = parts.parse().expect("TOPIC:PARTITIONS");
        cluster.create_topic(name, parts, 1).expect("create topic");
    }
    let mut out = std::io::stdout();
    writeln!(out, "{}", cluster.bootstrap_servers()).expect("stdout");
    out.flush().expect("stdout");
    // serve until stdin closes
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
}
