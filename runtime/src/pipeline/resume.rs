//! Where a run starts, from what the sinks and the checkpoint store hold.
//!
//! A sink that stores offsets with its data says exactly what it has. One such sink
//! alone: the run resumes from its offsets. Several: a crash between two sinks' flushes
//! leaves some ahead of the others, so the run resumes from the oldest position, and
//! each sink that was ahead catches up: it is handed none of the records up to its own,
//! counted by the ordinal the runtime keeps beside the splits ([`Offsets::RECORDS`]),
//! once the run is confirmed to be where it stored them (`pipeline/catch_up.rs`). The
//! count is worth trying only when the source reads in the same order again
//! ([`connector_api::Source::replays_in_order`]); other sources resume from the
//! checkpoint store, and a sink ahead of it may receive records again. A new or emptied
//! sink beside sinks that hold data starts where they are.

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
pub(super) struct Skip {
    /// The ordinal of the first record the sink does not hold.
    pub(super) until: u64,
    /// The offsets it stored there: the position the run must be at when the count
    /// gets there, for the records read again to be those it has.
    pub(super) stored: Offsets,
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
/// no offsets); `stored`: the checkpoint store's position; `in_order`: the source reads
/// in the same order again.
pub(super) fn plan(
    sinks: &[Option<Offsets>],
    stored: Option<Offsets>,
    in_order: bool,
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
    // empty offsets: the start, before any record
    let ordinal = |c: &&Offsets| match c.is_empty() {
        true => Some(0),
        false => c.records(),
    };
    let ordinals: Option<Vec<u64>> = candidates.iter().map(ordinal).collect();
    let oldest = match ordinals {
        Some(ordinals) if in_order => {
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
            (until > start).then(|| Skip {
                until,
                stored: o.clone(),
            })
        })
        .collect();
    (Resume { from, skips }, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let skip = Skip {
            until: 60,
            stored: at(6, 60),
        };
        assert_eq!(r.skips, vec![Some(skip), None]);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_sink_without_offsets_holds_the_store_back() {
        // the blackhole beside two transactional sinks has what the store says
        let sinks = [Some(at(6, 60)), None, Some(at(7, 70))];
        let (r, _) = plan(&sinks, Some(at(5, 50)), true);
        assert_eq!(r.from, at(5, 50));
        let skips: Vec<_> = r
            .skips
            .iter()
            .map(|s| s.as_ref().map(|s| s.until))
            .collect();
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
        assert_eq!(r.skips[0].as_ref().map(|s| s.until), Some(60));
        assert!(notes.is_empty(), "{notes:?}");
        // a sink keeping no offsets has nothing before the first checkpoint either
        let (r, _) = plan(&[Some(at(6, 60)), None], None, true);
        assert_eq!(r.from, Offsets::new());
        assert_eq!(r.skips[0].as_ref().map(|s| s.until), Some(60));
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
}
