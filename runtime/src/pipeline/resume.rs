//! Where a run starts, from what the sinks and the checkpoint store hold.
//!
//! A sink that stores offsets with its data says exactly what it has. One such sink
//! alone: the run resumes from its offsets. Several: a crash between two sinks' flushes
//! leaves some ahead of the others, so the run resumes from the oldest position, and
//! each sink that was ahead is handed none of the records it holds. Two ways to tell
//! them apart:
//!
//! - by position, for a source whose records keep theirs for good
//!   ([`connector_api::Source::covered_below`], a Kafka partition's offsets): each split
//!   resumes from the oldest sink's offset of it, and a sink further on skips the
//!   split's records below its own (`pipeline/ahead.rs`);
//! - by count, for a source that reads in the same order again
//!   ([`connector_api::Source::replays_in_order`]): the run resumes from the oldest
//!   sink's offsets, and a sink further on skips the records up to the ordinal the
//!   runtime keeps beside the splits ([`Offsets::RECORDS`]), once the run is confirmed
//!   to be where it stored them (`pipeline/catch_up.rs`).
//!
//! Other sources resume from the checkpoint store, and a sink ahead of it may receive
//! records again. A new or emptied sink beside sinks that hold data starts where they
//! are.

use std::collections::BTreeMap;

use connector_api::Offsets;

/// Where a run starts, and what each sink skips.
#[derive(Debug, PartialEq)]
pub(super) struct Resume {
    /// The position the source resumes from.
    pub(super) from: Offsets,
    /// Per sink, in the pipeline's order: what it already holds beyond `from`.
    pub(super) skips: Vec<Option<Skip>>,
}

/// Records a sink already holds beyond where the run starts.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Skip {
    /// Counted, for a source that reads in the same order again.
    Count(Count),
    /// By position, for a source whose records keep theirs.
    Below(Below),
}

impl Skip {
    /// The offsets the sink stored: where its records resume from.
    pub(super) fn stored(&self) -> &Offsets {
        match self {
            Skip::Count(c) => &c.stored,
            Skip::Below(b) => &b.stored,
        }
    }
}

/// The records up to an ordinal.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Count {
    /// The ordinal of the first record the sink does not hold.
    pub(super) until: u64,
    /// The offsets it stored there: the position the run must be at when the count
    /// gets there, for the records read again to be those it has.
    pub(super) stored: Offsets,
}

/// Per split, the records below a position.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Below {
    /// The offsets the sink stored.
    pub(super) stored: Offsets,
    /// Per split it is ahead in: the position of the first record it does not hold.
    pub(super) below: BTreeMap<String, u128>,
}

/// How the source reads again, to compare positions by.
pub(super) struct Replay<'a> {
    /// It reads in the same order again ([`connector_api::Source::replays_in_order`]).
    pub(super) in_order: bool,
    /// Where an offset of a split stands among the split's record positions
    /// ([`connector_api::Source::covered_below`]).
    pub(super) covered: &'a dyn Fn(&str, &serde_json::Value) -> Option<u128>,
}

/// A note for the log about the choice made.
#[derive(Debug, PartialEq)]
pub(super) enum Note {
    /// A sink holds nothing although the checkpoint store or other sinks have a
    /// position: new, or its data was removed or replaced. Alone, it gets everything
    /// from the start; beside sinks that hold data, the records from where they are.
    Emptied(usize),
    /// Sinks stored different positions and the source does not read in the same order
    /// again (or a position has no ordinal): these sinks, ahead of where the run starts,
    /// may receive records again.
    MayRepeat(Vec<usize>),
}

/// The start of a run. `sinks`: what each sink reported from `open` (`None`: it stores
/// no offsets); `stored`: the checkpoint store's position; `replay`: how the source
/// reads again.
pub(super) fn plan(
    sinks: &[Option<Offsets>],
    stored: Option<Offsets>,
    replay: &Replay<'_>,
) -> (Resume, Vec<Note>) {
    let stored = stored.unwrap_or_default();
    // every sink gets records from `from` on
    let all_from = |from: Offsets| Resume {
        from,
        skips: vec![None; sinks.len()],
    };
    let mut notes = Vec::new();
    // a sink that keeps no offsets has at least what the checkpoint store says
    let mut candidates: Vec<&Offsets> = sinks.iter().flatten().collect();
    if candidates.len() < sinks.len() {
        candidates.push(&stored);
    }
    // once a checkpoint is stored every sink has flushed: one holding nothing is new
    // or was emptied, and beside sinks that hold data it starts where they are
    // (reading everything again for it would have them hold back all they have).
    // Before the first checkpoint, holding nothing is being at the start.
    if !stored.is_empty() {
        for (i, offsets) in sinks.iter().enumerate() {
            if offsets.as_ref().is_some_and(Offsets::is_empty) {
                notes.push(Note::Emptied(i));
            }
        }
        let held: Vec<&Offsets> = candidates
            .iter()
            .copied()
            .filter(|c| !c.is_empty())
            .collect();
        if !held.is_empty() {
            candidates = held;
        }
    }
    // all at one position (or no sink at all)
    if candidates.windows(2).all(|w| w[0] == w[1]) {
        let first = candidates.first().map(|c| (*c).clone());
        return (all_from(first.unwrap_or(stored)), notes);
    }
    if let Some(by_position) = by_position(sinks, &candidates, replay.covered) {
        return (by_position, notes);
    }
    // empty offsets: the start, before any record
    let ordinal = |c: &&Offsets| match c.is_empty() {
        true => Some(0),
        false => c.records(),
    };
    let ordinals: Option<Vec<u64>> = candidates.iter().map(ordinal).collect();
    let oldest = match ordinals {
        Some(ordinals) if replay.in_order => {
            let at = (0..ordinals.len())
                .min_by_key(|&i| ordinals[i])
                .unwrap_or(0);
            Some((candidates[at].clone(), ordinals[at]))
        }
        _ => None,
    };
    let Some((from, start)) = oldest else {
        let ahead: Vec<usize> = sinks
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_ref().is_some_and(|o| *o != stored && !o.is_empty()))
            .map(|(i, _)| i)
            .collect();
        if !ahead.is_empty() {
            notes.push(Note::MayRepeat(ahead));
        }
        return (all_from(stored), notes);
    };
    let skips = sinks
        .iter()
        .map(|o| {
            let o = o.as_ref()?;
            let until = o.records()?;
            (until > start).then(|| {
                Skip::Count(Count {
                    until,
                    stored: o.clone(),
                })
            })
        })
        .collect();
    (Resume { from, skips }, notes)
}

/// Each split from the oldest candidate's offset of it, and each sink skipping the
/// records below its own: when every split of every candidate has a position. A split
/// some candidate has not read yet starts where the source starts it.
fn by_position(
    sinks: &[Option<Offsets>],
    candidates: &[&Offsets],
    covered: &dyn Fn(&str, &serde_json::Value) -> Option<u128>,
) -> Option<Resume> {
    let positions = |o: &Offsets| -> Option<BTreeMap<String, u128>> {
        o.splits()
            .iter()
            .map(|(split, v)| Some((split.clone(), covered(split, v)?)))
            .collect()
    };
    let each: Vec<BTreeMap<String, u128>> = candidates
        .iter()
        .map(|c| positions(c))
        .collect::<Option<_>>()?;
    // nothing to ask the source about: not a sign that it keeps positions
    if each.iter().all(BTreeMap::is_empty) {
        return None;
    }
    let mut from = Offsets::new();
    let mut at = BTreeMap::new();
    for split in each[0].keys() {
        let oldest = (0..candidates.len())
            .map(|c| each[c].get(split).map(|&p| (p, c)))
            .collect::<Option<Vec<_>>>()
            .and_then(|all| all.into_iter().min());
        let Some((p, c)) = oldest else { continue };
        if let Some(value) = candidates[c].get(split) {
            from.set(split.clone(), value.clone());
            at.insert(split.clone(), p);
        }
    }
    // the count at `from` (none when every split starts where the source starts it,
    // as at the very start): exact when one candidate is oldest in every split, else
    // the least of theirs, which is at least what it is (only a count by position
    // would need it exact, and it is not used with positions)
    if !from.is_empty() {
        let oldest_everywhere = (0..candidates.len()).find(|&c| {
            each[c].len() == at.len() && at.iter().all(|(split, p)| each[c].get(split) == Some(p))
        });
        let records = match oldest_everywhere {
            Some(c) => candidates[c].records(),
            None => candidates.iter().filter_map(|c| c.records()).min(),
        };
        if let Some(n) = records {
            from.add_records(n);
        }
    }
    Some(Resume {
        skips: skips(sinks, &at, &positions),
        from,
    })
}

/// Per sink, the splits it is further on in than `at` (a split absent from `at`
/// starts where the source starts it: anything the sink holds of it is further on).
fn skips(
    sinks: &[Option<Offsets>],
    at: &BTreeMap<String, u128>,
    positions: &dyn Fn(&Offsets) -> Option<BTreeMap<String, u128>>,
) -> Vec<Option<Skip>> {
    sinks
        .iter()
        .map(|o| {
            let o = o.as_ref()?;
            let below: BTreeMap<String, u128> = positions(o)?
                .into_iter()
                .filter(|(split, p)| *p > at.get(split).copied().unwrap_or(0))
                .collect();
            (!below.is_empty()).then(|| {
                Skip::Below(Below {
                    stored: o.clone(),
                    below,
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source without record positions.
    fn plan(
        sinks: &[Option<Offsets>],
        stored: Option<Offsets>,
        in_order: bool,
    ) -> (Resume, Vec<Note>) {
        let covered = |_: &str, _: &serde_json::Value| None;
        let replay = Replay {
            in_order,
            covered: &covered,
        };
        super::plan(sinks, stored, &replay)
    }

    fn at(split: u64, records: u64) -> Offsets {
        let mut o = Offsets::new();
        o.set("s", serde_json::json!(split));
        o.add_records(records);
        o
    }

    #[test]
    fn one_sink_with_offsets_resumes_from_them() {
        let (r, notes) = plan(&[Some(at(5, 50))], Some(at(4, 40)), false);
        assert_eq!(r.from, at(5, 50));
        assert_eq!(r.skips, vec![None]);
        assert!(notes.is_empty());
    }

    #[test]
    fn sinks_without_offsets_resume_from_the_store() {
        let (r, _) = plan(&[None, None], Some(at(4, 40)), true);
        assert_eq!(r.from, at(4, 40));
        let (r, _) = plan(&[None], None, true);
        assert_eq!(r.from, Offsets::new());
    }

    #[test]
    fn sinks_apart_resume_from_the_oldest_and_the_others_skip_what_they_hold() {
        let (r, notes) = plan(&[Some(at(6, 60)), Some(at(5, 50))], Some(at(5, 50)), true);
        assert_eq!(r.from, at(5, 50));
        let skip = Skip::Count(Count {
            until: 60,
            stored: at(6, 60),
        });
        assert_eq!(r.skips, vec![Some(skip), None]);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_sink_without_offsets_holds_the_store_back() {
        // the blackhole beside two transactional sinks has what the store says
        let sinks = [Some(at(6, 60)), None, Some(at(7, 70))];
        let (r, _) = plan(&sinks, Some(at(5, 50)), true);
        assert_eq!(r.from, at(5, 50));
        let skips: Vec<_> = r.skips.iter().map(|s| s.as_ref().map(until)).collect();
        assert_eq!(skips, vec![Some(60), None, Some(70)]);
    }

    #[test]
    fn an_emptied_or_new_sink_beside_others_starts_where_they_are() {
        let sinks = [Some(at(6, 60)), Some(Offsets::new())];
        let (r, notes) = plan(&sinks, Some(at(6, 60)), true);
        assert_eq!(r.from, at(6, 60));
        assert_eq!(r.skips, vec![None, None]);
        assert_eq!(notes, vec![Note::Emptied(1)]);
        // alone, it reads from the start: its data is gone
        let (r, notes) = plan(&[Some(Offsets::new())], Some(at(6, 60)), true);
        assert_eq!(r.from, Offsets::new());
        assert_eq!(notes, vec![Note::Emptied(0)]);
    }

    #[test]
    fn before_the_first_checkpoint_holding_nothing_is_being_at_the_start() {
        // the first sink flushed, the second had not when the run died
        let (r, notes) = plan(&[Some(at(6, 60)), Some(Offsets::new())], None, true);
        assert_eq!(r.from, Offsets::new());
        assert_eq!(r.skips[0].as_ref().map(until), Some(60));
        assert!(notes.is_empty(), "{notes:?}");
        // a sink keeping no offsets has nothing before the first checkpoint either
        let (r, _) = plan(&[Some(at(6, 60)), None], None, true);
        assert_eq!(r.from, Offsets::new());
        assert_eq!(r.skips[0].as_ref().map(until), Some(60));
    }

    #[test]
    fn a_source_that_does_not_replay_in_order_resumes_from_the_store() {
        let sinks = [Some(at(6, 60)), Some(at(5, 50))];
        let (r, notes) = plan(&sinks, Some(at(5, 50)), false);
        assert_eq!(r.from, at(5, 50));
        assert_eq!(r.skips, vec![None, None]);
        assert_eq!(notes, vec![Note::MayRepeat(vec![0])]);
        // nothing to say when no sink is ahead of the checkpoint
        let (_, notes) = plan(&[None, Some(at(5, 50))], Some(at(5, 50)), false);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn positions_without_an_ordinal_cannot_be_compared() {
        let mut old = Offsets::new();
        old.set("s", serde_json::json!(6));
        let (r, notes) = plan(&[Some(old), Some(at(5, 50))], Some(at(5, 50)), true);
        assert_eq!(r.from, at(5, 50));
        assert_eq!(notes, vec![Note::MayRepeat(vec![0])]);
    }

    fn until(s: &Skip) -> u64 {
        match s {
            Skip::Count(c) => c.until,
            Skip::Below(_) => panic!("{s:?}"),
        }
    }

    /// Offsets of two partitions, `{"next": n}` each (absent: None).
    fn parts(p0: Option<u64>, p1: Option<u64>, records: u64) -> Offsets {
        let mut o = Offsets::new();
        for (split, next) in [("t/0", p0), ("t/1", p1)] {
            if let Some(n) = next {
                o.set(split, serde_json::json!({ "next": n }));
            }
        }
        o.add_records(records);
        o
    }

    fn by_position(sinks: &[Option<Offsets>], stored: Option<Offsets>) -> (Resume, Vec<Note>) {
        let covered = |_: &str, v: &serde_json::Value| v["next"].as_u64().map(u128::from);
        let replay = Replay {
            in_order: false,
            covered: &covered,
        };
        super::plan(sinks, stored, &replay)
    }

    #[test]
    fn records_that_keep_their_positions_resume_each_split_from_the_oldest() {
        // "a" flushed last in partition 0, "b" in partition 1 (interleaved reads)
        let a = parts(Some(120), Some(80), 200);
        let b = parts(Some(100), Some(90), 190);
        let (r, notes) = by_position(
            &[Some(a.clone()), Some(b.clone())],
            Some(parts(Some(90), Some(70), 160)),
        );
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(r.from, parts(Some(100), Some(80), 190));
        let below = |sink: &Offsets, splits: &[(&str, u128)]| {
            Some(Skip::Below(Below {
                stored: sink.clone(),
                below: splits.iter().map(|(s, p)| (s.to_string(), *p)).collect(),
            }))
        };
        assert_eq!(
            r.skips,
            vec![below(&a, &[("t/0", 120)]), below(&b, &[("t/1", 90)])]
        );
    }

    #[test]
    fn a_split_one_sink_has_not_read_starts_where_the_source_starts_it() {
        let a = parts(Some(120), Some(5), 125);
        let b = parts(Some(100), None, 100);
        let (r, _) = by_position(&[Some(a.clone()), Some(b)], None);
        assert_eq!(r.from, parts(Some(100), None, 100));
        let Some(Skip::Below(skip)) = &r.skips[0] else {
            panic!("{:?}", r.skips)
        };
        let want: BTreeMap<String, u128> =
            [("t/0".to_string(), 120), ("t/1".to_string(), 5)].into();
        assert_eq!(skip.below, want);
        assert_eq!(r.skips[1], None);
        // a sink that keeps no offsets holds the checkpoint store's position
        let (r, _) = by_position(&[Some(a.clone()), None], Some(parts(Some(90), Some(5), 95)));
        assert_eq!(r.from, parts(Some(90), Some(5), 95));
        // one that holds nothing before the first checkpoint is at the start: so is
        // the run, with no count to store as a position
        let (r, _) = by_position(&[Some(a), Some(Offsets::new())], None);
        assert_eq!(r.from, Offsets::new());
        assert!(matches!(&r.skips[0], Some(Skip::Below(b)) if b.below.len() == 2));
        assert_eq!(r.skips[1], None);
    }

    #[test]
    fn the_count_at_the_start_is_the_oldest_sinks_when_it_is_oldest_everywhere() {
        let a = parts(Some(120), Some(90), 210);
        let b = parts(Some(100), Some(90), 190);
        let (r, _) = by_position(&[Some(a), Some(b.clone())], None);
        assert_eq!(r.from, b);
    }
}
