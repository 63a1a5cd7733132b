//! A Kafka-protocol broker for local runs and benchmarks: librdkafka's mock cluster
//! (real TCP, consumer groups, idempotence, transactions) on loopback.
//!
//! `kafka-mock [BROKERS] [TOPIC:PARTITIONS ...]` prints the bootstrap address on the
//! first line of stdout and serves until its stdin closes or it is killed. Each
//! partition keeps only about the last 100k messages or 5 MB: spread large runs over
//! many partitions.

use std::io::{BufRead, Write};

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let brokers = match args.peek().and_then(|a| a.parse::<i32>().ok()) {
        Some(n) => {
            args.next();
            n
        }
        None => 1,
    };
    let cluster = rdkafka::mocking::MockCluster::new(brokers).expect("start the mock cluster");
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
