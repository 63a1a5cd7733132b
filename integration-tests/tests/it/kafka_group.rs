//! Consumer groups: runtimes sharing a group's partitions, rebalances that move
//! partitions between them, and the group's committed offsets they leave behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::kafka::{
    bootstrap, create_topic, produce_in_background, py, topic, write, GROUP_TIMEOUTS,
};
use crate::service::{free_port, pipeline, serve, stop};
use crate::support::{finish, jsonl_lines, signal, spawn, wait_until, workdir};

/// The ids in the JSON lines under `out` of each directory, and how many lines.
fn ids(dirs: &[&Path]) -> (BTreeSet<i64>, usize) {
    let mut ids = BTreeSet::new();
    let mut total = 0;
    for d in dirs {
        for l in jsonl_lines(&d.join("out")) {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            ids.insert(v["id"].as_i64().unwrap());
            total += 1;
        }
    }
    (ids, total)
}

/// Two runtimes in one consumer group split the partitions; one is killed, the other
/// takes its partitions over, and together they deliver every record.
#[test]
fn two_runtimes_share_a_group_and_survive_one_killed() {
    let t = topic("group");
    create_topic(&t, 6);
    const N: usize = 30_000;
    let dirs = [workdir(), workdir()];
    for d in &dirs {
        write(
            d.path(),
            "p.toml",
            &format!(
                "name = \"grouped\"\n\
                 [source]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopics = [\"{t}\"]\ngroup_id = \"g-{t}\"\n\
                 schema = [{{ name = \"id\", type = \"int64\" }}]\n\
                 {GROUP_TIMEOUTS}\n\
                 [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
                 [checkpoint]\ninterval = \"300ms\"\n",
                bootstrap()
            ),
        );
    }
    let mut producer = produce_in_background(&t, N, 6_000);
    let a = spawn(dirs[0].path(), &["run", "p.toml"]);
    let b = spawn(dirs[1].path(), &["run", "p.toml"]);
    // both get partitions and deliver, then A dies
    let started = Instant::now();
    let both = wait_until(Duration::from_secs(30), || {
        !jsonl_lines(&dirs[0].path().join("out")).is_empty()
            && !jsonl_lines(&dirs[1].path().join("out")).is_empty()
    });
    signal(&a, "KILL");
    let _ = finish(a, Duration::from_secs(10));
    assert!(both, "both runtimes should have delivered within 30 s");
    assert!(producer.wait().unwrap().success(), "input producer failed");
    let both = [dirs[0].path(), dirs[1].path()];
    let all = wait_until(Duration::from_secs(90), || ids(&both).0.len() >= N);
    signal(&b, "TERM");
    let run = finish(b, Duration::from_secs(30));
    let (set, total) = ids(&both);
    assert!(
        all,
        "only {} of {N} ids after {:?}: {}",
        set.len(),
        started.elapsed(),
        run.stderr
    );
    assert_eq!(set.len(), N);
    assert_eq!(*set.iter().next().unwrap(), 0);
    assert_eq!(*set.iter().last().unwrap(), N as i64 - 1);
    // redelivery is bounded by what A had read but not committed
    assert!(total < N + N / 2, "{total} deliveries for {N} ids");
    assert!(run.stderr.contains("partitions assigned"), "{}", run.stderr);
}

/// `start = "latest"` places only partitions nobody has read: B joining A's group
/// (a rebalance that moves half of A's partitions to B and gives A the rest back)
/// loses nothing that was produced after A started, and when B leaves and A takes
/// its partitions back, the group's offsets end at the partitions' ends.
#[test]
fn a_rebalance_keeps_committed_positions_and_leaves_the_group_at_the_ends() {
    let t = topic("rebalance");
    create_topic(&t, 6);
    const N: usize = 12_000;
    let dirs = [workdir(), workdir()];
    for d in &dirs {
        write(
            d.path(),
            "p.toml",
            &format!(
                "name = \"latest\"\n\
                 [source]\nconnector = \"kafka\"\nbootstrap_servers = \"{}\"\ntopics = [\"{t}\"]\ngroup_id = \"g-{t}\"\n\
                 start = \"latest\"\nschema = [{{ name = \"id\", type = \"int64\" }}]\n\
                 {GROUP_TIMEOUTS}\n\
                 [sink]\nconnector = \"file\"\npath = \"out\"\nformat = \"json\"\n\
                 [checkpoint]\ninterval = \"300ms\"\n",
                bootstrap()
            ),
        );
    }
    let (pa, pb) = (free_port(), free_port());
    let (a, _ga) = serve(
        dirs[0].path(),
        &["run", "p.toml", "--http", &format!("127.0.0.1:{pa}")],
        pa,
    );
    // A owns the six partitions (each shows its lag) before anything is produced
    let owned = |port: u16| {
        pipeline(&format!("http://127.0.0.1:{port}"), "latest")["lag"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        wait_until(Duration::from_secs(30), || owned(pa) == 6),
        "A never owned the partitions"
    );
    let mut producer = produce_in_background(&t, N, 2_000);
    std::thread::sleep(Duration::from_secs(2));
    let (b, _gb) = serve(
        dirs[1].path(),
        &["run", "p.toml", "--http", &format!("127.0.0.1:{pb}")],
        pb,
    );
    assert!(producer.wait().unwrap().success(), "input producer failed");
    let both = [dirs[0].path(), dirs[1].path()];
    let started = Instant::now();
    let all = wait_until(Duration::from_secs(60), || ids(&both).0.len() >= N);
    // B leaves: A gets B's partitions back, which it read before B came
    let b_log = stop(b);
    assert!(
        wait_until(Duration::from_secs(30), || owned(pa) == 6),
        "A never took the partitions back"
    );
    std::thread::sleep(Duration::from_secs(2));
    let a_log = stop(a);
    let (set, total) = ids(&both);
    assert!(
        all,
        "only {} of {N} ids after {:?}\nA: {a_log}\nB: {b_log}",
        set.len(),
        started.elapsed()
    );
    assert!(
        b_log.contains("partitions assigned"),
        "B never got partitions: {b_log}"
    );
    assert_eq!(set.len(), N);
    // across members delivery is at least once: what was in flight when a revoke
    // timed out (a loaded machine) is read again, never the topic from its start
    assert!(total < 2 * N, "{total} deliveries for {N} ids");
    let behind = py(&format!(
        "c = confluent_kafka.Consumer({{'bootstrap.servers': BOOT, 'group.id': 'g-{t}', 'enable.auto.commit': False}})\n\
         parts = [confluent_kafka.TopicPartition('{t}', p) for p in range(6)]\n\
         for tp in c.committed(parts, timeout=10):\n\
         \x20   lo, hi = c.get_watermark_offsets(tp, timeout=10)\n\
         \x20   if tp.offset != hi: print(tp.partition, tp.offset, hi)\n\
         c.close()\n"
    ));
    assert!(
        behind.trim().is_empty(),
        "group offsets behind the ends (partition, committed, end):\n{behind}"
    );
}
