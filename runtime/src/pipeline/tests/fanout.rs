//! Several sinks that store offsets with their data: a crash between two sinks'
//! flushes, a sink added to a pipeline that has run, and a source that does not read
//! again in the same order.

use super::*;

/// The ids a store has flushed, sorted (repeats kept).
fn flushed(sink: &MemorySink) -> Vec<i64> {
    ids(&sink.store.lock().unwrap().flushed)
}

/// Stores "a" and "b"; with `faulty`, that store's flush of that index (0-based)
/// loses its connection: the run restarts with "a" one checkpoint ahead of "b".
fn stores(faulty: Option<(&str, usize)>) -> HashMap<String, MemorySink> {
    ["a", "b"]
        .into_iter()
        .map(|name| {
            let mut sink = MemorySink::new();
            if let Some((_, at)) = faulty.filter(|(f, _)| *f == name) {
                sink.faults.fail_flush_at = Some((at, ErrorKind::Aborted));
            }
            (name.to_string(), sink)
        })
        .collect()
}

/// A SQL transform keeps two ids in three; "a" takes the even ones of those.
const ROUTED: &str = "[batch]\nmax_records = 10\n[checkpoint]\ninterval = \"5ms\"\n\
    [[transforms]]\ntype = \"sql\"\nquery = \"SELECT id FROM input WHERE id % 3 <> 0\"\n\
    [sinks.a]\nconnector = \"memory\"\nstore = \"a\"\nwhere = \"id % 2 = 0\"\n\
    [sinks.b]\nconnector = \"memory\"\nstore = \"b\"\n";

fn kept(n: i64, even: bool) -> Vec<i64> {
    (0..n)
        .filter(|i| i % 3 != 0 && (!even || i % 2 == 0))
        .collect()
}

/// Runs `src` (paced, so checkpoints fall between batches) into [`ROUTED`]'s sinks
/// under supervision while "b"'s flush `lost` (0-based) loses its connection: one
/// restart. Returns the stores.
async fn restarted_once(mut src: TestSource, lost: usize) -> HashMap<String, MemorySink> {
    let named = stores(Some(("b", lost)));
    src.paced = true;
    let s = setup_named(src, &named, ROUTED);
    supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_eq!(s.metrics.restarts.load(Ordering::Relaxed), 1);
    named
}

#[tokio::test]
async fn a_crash_between_two_sinks_flushes_resumes_from_the_oldest_and_repeats_into_neither() {
    let named = restarted_once(source(300, 10), 2).await;
    assert_eq!(flushed(&named["a"]), kept(300, true));
    assert_eq!(flushed(&named["b"]), kept(300, false));
    // "a" was not flushed while it caught up: its stored offsets never went back
    let a = named["a"].store.lock().unwrap().offsets.clone().unwrap();
    assert_eq!(a.records(), Some(kept(300, false).len() as u64));
}

#[tokio::test]
async fn a_crash_between_two_sinks_first_flushes_resumes_from_the_start() {
    // no checkpoint is stored yet: "b" holding nothing is at the start, not new
    let named = restarted_once(source(300, 10), 0).await;
    assert_eq!(flushed(&named["a"]), kept(300, true));
    assert_eq!(flushed(&named["b"]), kept(300, false));
}

#[tokio::test]
async fn a_sink_added_later_starts_where_the_others_are() {
    let named = stores(None);
    let only_a = ROUTED.split("[sinks.b]").next().unwrap();
    let s = setup_named(source(300, 10), &named, only_a);
    run(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_eq!(flushed(&named["a"]), kept(300, true));
    let s = setup_named_in(s._dir, source(600, 10), &named, ROUTED);
    run(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_eq!(flushed(&named["a"]), kept(600, true));
    let b: Vec<i64> = kept(600, false).into_iter().filter(|i| *i >= 300).collect();
    assert_eq!(flushed(&named["b"]), b);
}

#[tokio::test]
async fn records_that_changed_before_the_restart_reach_the_sink_that_was_ahead_at_least_once() {
    // the restart reads one id fewer in each batch (deleted meanwhile): the count
    // cannot end where the sink stored its offsets, so it gets what was read for it
    // again rather than skip records it does not have
    let mut src = source(300, 10);
    src.rerun = Some(id_batches(300, 10).iter().map(|b| b.slice(0, 9)).collect());
    let named = restarted_once(src, 2).await;
    let a = flushed(&named["a"]);
    let mut once = a.clone();
    once.dedup();
    assert!(a.len() > once.len(), "nothing repeated: {a:?}");
    let missing: Vec<i64> = kept(300, true)
        .into_iter()
        .filter(|i| i % 10 != 9 && once.binary_search(i).is_err())
        .collect();
    assert!(missing.is_empty(), "lost {missing:?}");
}

#[tokio::test]
async fn a_source_that_reads_in_another_order_again_resumes_from_the_checkpoint() {
    let mut src = source(300, 10);
    src.in_order = false;
    let named = restarted_once(src, 2).await;
    // "b" was at the checkpoint: exactly once; "a" gets its last flush again
    assert_eq!(flushed(&named["b"]), kept(300, false));
    let mut a = flushed(&named["a"]);
    assert!(a.len() > kept(300, true).len(), "nothing repeated: {a:?}");
    a.dedup();
    assert_eq!(a, kept(300, true));
}

/// Two partitions whose records keep their positions, as Kafka's do: "t/0" holds the
/// even ids, "t/1" the odd ones, an id's position being id / 2. Each run interleaves
/// them in its own rhythm: the first reads 6 of "t/0" then 4 of "t/1" per batch, the
/// later ones 3 of "t/1" then 7 of "t/0", so batches read again straddle what a sink
/// holds in other places.
struct Partitioned {
    n: u64,
    runs: std::sync::atomic::AtomicUsize,
}

struct PartitionedRun {
    n: u64,
    next: [u64; 2],
    /// Per batch: (partition, records) twice.
    rhythm: [(usize, u64); 2],
}

#[async_trait]
impl Source for PartitionedRun {
    async fn open(&mut self, _: &SourceContext, committed: &Offsets) -> Result<()> {
        for (k, next) in self.next.iter_mut().enumerate() {
            let at = committed.get(&format!("t/{k}"));
            *next = at.and_then(|v| v["next"].as_u64()).unwrap_or(0);
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut ids = Vec::new();
        let mut offsets = Offsets::new();
        let mut positions = connector_api::Positions::new();
        for (k, count) in self.rhythm {
            let split = format!("t/{k}");
            for _ in 0..count {
                let id = self.next[k] * 2 + k as u64;
                if id >= self.n {
                    break;
                }
                ids.push(id as i64);
                positions.push(&split, self.next[k].into());
                self.next[k] += 1;
                offsets.set(split.clone(), serde_json::json!({ "next": self.next[k] }));
            }
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "id",
            arrow_schema::DataType::Int64,
            false,
        )]));
        let ids = Arc::new(arrow_array::Int64Array::from(ids));
        let records = arrow_array::RecordBatch::try_new(schema, vec![ids]).unwrap();
        let mut batch = Batch::new(records, offsets);
        batch.positions = Some(positions);
        Ok(Some(batch))
    }

    fn covered_below(&self, _: &str, offset: &serde_json::Value) -> Option<u128> {
        offset["next"].as_u64().map(u128::from)
    }
}

#[async_trait]
impl DynSourceConnector for Partitioned {
    fn name(&self) -> &str {
        "memory"
    }
    fn description(&self) -> &str {
        "two partitions whose records keep their positions"
    }
    fn config_schema(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn validate(&self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    fn create_source(&self, _: &serde_json::Value) -> Result<Box<dyn Source>> {
        let rhythm = match self.runs.fetch_add(1, Ordering::Relaxed) {
            0 => [(0, 6), (1, 4)],
            _ => [(1, 3), (0, 7)],
        };
        Ok(Box::new(PartitionedRun {
            n: self.n,
            next: [0, 0],
            rhythm,
        }))
    }
    async fn check(&self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    async fn discover(&self, _: &serde_json::Value) -> Result<Option<SchemaRef>> {
        Ok(None)
    }
}

/// [`restarted_once`] with [`Partitioned`] over `n` ids; checks that no flush of
/// either store moved a split back.
async fn partitioned_restarted_once(n: u64, lost: usize) -> HashMap<String, MemorySink> {
    let named = stores(Some(("b", lost)));
    let source = Arc::new(Partitioned {
        n,
        runs: Default::default(),
    });
    let log = Log::default();
    let s = setup_source_in(
        tempfile::tempdir().unwrap(),
        source,
        log.clone(),
        &named,
        ROUTED,
    );
    supervise(&s.pipeline, &s.registry, never(), s.metrics.clone())
        .await
        .unwrap();
    assert_eq!(s.metrics.restarts.load(Ordering::Relaxed), 1);
    // each store's offsets of each split, flush after flush, never go back
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut flushes = 0;
    for event in log.lock().unwrap().iter() {
        let Some((store, envelope)) = event
            .strip_prefix("flushed ")
            .and_then(|e| e.split_once(' '))
        else {
            continue;
        };
        flushes += 1;
        let offsets = Offsets::from_envelope(envelope).unwrap();
        for (split, at) in offsets.splits().iter() {
            let at = at["next"].as_u64().unwrap();
            let key = (store.to_string(), split.clone());
            let before = last.insert(key, at).unwrap_or(0);
            assert!(
                at >= before,
                "{store} went back in {split}: {before} -> {at}"
            );
        }
    }
    assert!(flushes > 4, "{flushes} flushes");
    named
}

#[tokio::test]
async fn records_that_keep_their_positions_repeat_into_neither_sink_whatever_the_order_read_again()
{
    let named = partitioned_restarted_once(300, 2).await;
    assert_eq!(flushed(&named["a"]), kept(300, true));
    assert_eq!(flushed(&named["b"]), kept(300, false));
    // "a" was flushed while the run passed it, never with offsets behind its own
    let a = named["a"].store.lock().unwrap().offsets.clone().unwrap();
    assert_eq!(a.get("t/0"), Some(&serde_json::json!({ "next": 150 })));
    assert_eq!(a.get("t/1"), Some(&serde_json::json!({ "next": 150 })));
}

#[tokio::test]
async fn records_that_keep_their_positions_after_a_crash_in_the_first_flushes_repeat_into_neither()
{
    // "b" holds nothing: every split starts where the source starts it
    let named = partitioned_restarted_once(300, 0).await;
    assert_eq!(flushed(&named["a"]), kept(300, true));
    assert_eq!(flushed(&named["b"]), kept(300, false));
}
