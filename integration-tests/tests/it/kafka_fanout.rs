//! Kafka into two exactly-once PostgreSQL sinks, one routed, killed with SIGKILL
//! between their flushes: each run interleaves the partitions its own way, and each
//! sink still holds every message its predicate keeps, once (checked with psql).

use crate::kafka::{
    bootstrap, create_topic, kill_once_assigned, produce_in_background, topic, write,
};
use crate::postgres::{fresh, psql, server, slow_offsets, url};
use crate::support::{sluice, workdir};

/// 4 partitions, 40,000 messages, a SQL transform, sinks "all" and "even" (`where`);
/// a trigger makes the storing of "even"'s offsets slow, so most kills fall after
/// "all" flushed and before "even" did. The restarts resume each partition from
/// "even"'s offset, and "all" is handed none of the messages it holds, by their
/// offsets. (Resuming from the checkpoint store instead, as before, repeats thousands
/// into "all".)
#[test]
fn kafka_into_two_exactly_once_sinks_survives_kill_9_between_their_flushes() {
    let _server = server();
    let all = fresh("kfan_all");
    let even = fresh("kfan_even");
    let dir = workdir();
    let d = dir.path();
    // the offsets table exists once a PostgreSQL sink has opened
    std::fs::create_dir_all(d.join("in")).unwrap();
    write(d, "in/one.jsonl", "{\"id\": 1}\n");
    write(
        d,
        "one.toml",
        &format!(
            "name = \"{even}\"\n[source]\nconnector = \"file\"\npath = \"in/one.jsonl\"\n\
             [sink]\nconnector = \"postgres\"\nurl = \"{}\"\ntable = \"{even}\"\n",
            url()
        ),
    );
    let one = sluice(d, &["run", "--quiet", "one.toml"]);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    fresh(&even);
    let _slow = slow_offsets("kfan_slow", &all, "even");
    let input = topic("fan-in");
    create_topic(&input, 4);
    const N: i64 = 40_000;
    let mut producer = produce_in_background(&input, N as usize, 0);
    assert!(producer.wait().unwrap().success(), "input producer failed");
    write(
        d,
        "p.toml",
        &format!(
            "name = \"{all}\"\n[source]\nconnector = \"kafka\"\nbootstrap_servers = \"{b}\"\ntopics = [\"{input}\"]\n\
             group_id = \"g-{input}\"\nbounded = true\n\
             schema = [{{ name = \"id\", type = \"int64\" }}, {{ name = \"v\", type = \"string\" }}]\n\
             options = {{ \"session.timeout.ms\" = \"4000\", \"heartbeat.interval.ms\" = \"500\", \"max.poll.interval.ms\" = \"10000\" }}\n\
             revoke_timeout = \"3s\"\n\
             [[transforms]]\ntype = \"sql\"\nquery = \"SELECT id, length(v) AS len FROM input\"\n\
             [sinks.all]\nconnector = \"postgres\"\nurl = \"{url}\"\ntable = \"{all}\"\n\
             [sinks.even]\nconnector = \"postgres\"\nurl = \"{url}\"\ntable = \"{even}\"\nwhere = \"id % 2 = 0\"\n\
             [batch]\nmax_records = 500\n[checkpoint]\ninterval = \"50ms\"\n",
            b = bootstrap(),
            url = url()
        ),
    );
    // killed only once messages flow: after the partitions are assigned
    // and once "all" flushes in this run (on a loaded machine the first flush can
    // come after any fixed pause): the kill then lands within a few flushes
    let flushing = || {
        psql(&format!(
            "SELECT count(*) FROM sluice_offsets WHERE pipeline = '{all}' AND sink = 'all' \
             AND updated_at > now() - interval '300 milliseconds'"
        )) == "1"
    };
    let kills = kill_once_assigned(d, "p.toml", 6, 0..600, flushing);
    assert!(
        kills >= 4,
        "only {kills} of 6 runs got partitions before the kill"
    );
    let run = sluice(d, &["run", "p.toml"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let count = |table: &str| {
        psql(&format!(
            "SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0), coalesce(sum(len), 0) FROM \"{table}\""
        ))
    };
    let expect = |ids: Vec<i64>| {
        let len: i64 = ids.iter().map(|i| i % 7).sum();
        format!(
            "{}|{}|{}|{len}",
            ids.len(),
            ids.len(),
            ids.iter().sum::<i64>()
        )
    };
    assert_eq!(
        count(&all),
        expect((0..N).collect()),
        "killed {kills} times"
    );
    assert_eq!(
        count(&even),
        expect((0..N).filter(|i| i % 2 == 0).collect()),
        "killed {kills} times"
    );
    // and not by chance: some restart found "all" ahead of "even" and skipped by position
    let logs: String = (0..6)
        .filter_map(|round| std::fs::read_to_string(d.join(format!("run-{round}.log"))).ok())
        .chain([run.stderr.clone()])
        .collect();
    assert!(
        logs.contains("not written to it again (by their positions)"),
        "no restart found a sink ahead; killed {kills} times"
    );
}
