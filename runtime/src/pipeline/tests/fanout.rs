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
