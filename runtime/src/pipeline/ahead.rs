//! A sink ahead of where the run starts, told apart record by record.
//!
//! After a crash between two sinks' flushes, a source whose records keep their
//! positions for good ([`connector_api::Source::covered_below`]) resumes each split
//! from the oldest sink's offset ([`super::resume`]), and a sink further on in a split
//! is handed none of that split's records below its own position. No record needs
//! confirming, as the count does (`catch_up.rs`): a position names the same record in
//! every read. Until the run has passed what the sink holds in a split, the sink's
//! offsets keep its own offset of that split, so they never go back, and it flushes
//! at every checkpoint like the others.

use std::collections::BTreeMap;

use arrow_array::BooleanArray;
use connector_api::{Offsets, Positions};

use super::resume::Below;

/// A sink ahead in some splits.
pub(super) struct Ahead {
    /// The offsets the sink stored.
    stored: Offsets,
    /// Per split the run has not yet passed the sink in: the position of the first
    /// record the sink does not hold.
    below: BTreeMap<String, u128>,
}

/// Which records of a batch the sink is to get.
#[derive(Debug, PartialEq)]
pub(super) enum Keep {
    /// All of them.
    All,
    /// None: it holds them all.
    Nothing,
    /// Those marked true.
    Some(BooleanArray),
}

impl Ahead {
    pub(super) fn new(skip: Below) -> Self {
        Ahead {
            stored: skip.stored,
            below: skip.below,
        }
    }

    /// Which of `rows` records, placed by `positions`, the sink does not hold yet.
    /// A split is passed once a record at the sink's position or the one before it
    /// comes (positions rise within a split); where positions step by more than one
    /// (a WAL change's), at the first record it does not hold. Records without
    /// positions cannot be told apart: they all go, with a warning, and the sink
    /// stops skipping.
    pub(super) fn keep(&mut self, rows: usize, positions: Option<&Positions>) -> Keep {
        if rows == 0 || self.below.is_empty() {
            return Keep::All;
        }
        let Some(positions) = positions.filter(|p| p.len() == rows) else {
            tracing::warn!(
                records = rows,
                "records read again came without their positions: the sink that was ahead gets them, at least once"
            );
            self.below.clear();
            return Keep::All;
        };
        let mut passed = Vec::new();
        let keep: BooleanArray = positions
            .iter()
            .map(|(split, at)| match self.below.get(split) {
                Some(&below) => {
                    if at + 1 >= below {
                        passed.push(split);
                    }
                    Some(at >= below)
                }
                None => Some(true),
            })
            .collect();
        for split in passed {
            self.below.remove(split);
        }
        match keep.true_count() {
            n if n == rows => Keep::All,
            0 => Keep::Nothing,
            _ => Keep::Some(keep),
        }
    }

    /// The offsets the sink is at when the run is at `run`: the run's, but its own of
    /// each split the run has not passed it in, and its own count of records while
    /// that is the larger, where `run` has one (the count at a start taken split by
    /// split is not known).
    pub(super) fn offsets(&self, run: &Offsets) -> Offsets {
        let mut at = run.clone();
        for split in self.below.keys() {
            if let Some(own) = self.stored.get(split) {
                at.set(split.clone(), own.clone());
            }
        }
        if let (Some(own), Some(now)) = (self.stored.records(), run.records()) {
            at.add_records(own.saturating_sub(now));
        }
        at
    }

    /// The run has passed the sink in every split: it is an ordinary sink again.
    pub(super) fn passed(&self) -> bool {
        self.below.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ahead() -> Ahead {
        let mut stored = Offsets::new();
        stored.set("t/0", serde_json::json!({ "next": 12 }));
        stored.set("t/1", serde_json::json!({ "next": 3 }));
        Ahead::new(Below {
            stored,
            below: [("t/0".to_string(), 12), ("t/1".to_string(), 3)].into(),
        })
    }

    fn placed(records: &[(&str, u64)]) -> Positions {
        let mut p = Positions::new();
        for (split, at) in records {
            p.push(split, u128::from(*at));
        }
        p
    }

    #[test]
    fn records_below_the_sinks_positions_are_not_handed_to_it_in_any_order() {
        let mut a = ahead();
        let p = placed(&[("t/1", 1), ("t/0", 10), ("t/2", 0), ("t/1", 2), ("t/1", 3)]);
        let Keep::Some(keep) = a.keep(5, Some(&p)) else {
            panic!()
        };
        assert_eq!(
            keep,
            BooleanArray::from(vec![false, false, true, false, true])
        );
        // t/1 is passed (record 2 came, the last the sink holds); t/0 is not
        assert!(!a.passed());
        let mut run = Offsets::new();
        run.set("t/0", serde_json::json!({ "next": 11 }));
        run.set("t/1", serde_json::json!({ "next": 4 }));
        let at = a.offsets(&run);
        assert_eq!(at.get("t/0"), Some(&serde_json::json!({ "next": 12 })));
        assert_eq!(at.get("t/1"), Some(&serde_json::json!({ "next": 4 })));
        assert_eq!(a.keep(1, Some(&placed(&[("t/0", 11)]))), Keep::Nothing);
        assert!(a.passed());
        assert_eq!(a.offsets(&run), run);
        assert_eq!(a.keep(1, Some(&placed(&[("t/0", 11)]))), Keep::All);
    }

    #[test]
    fn the_sinks_count_does_not_go_back_while_it_is_ahead() {
        let mut a = ahead();
        a.stored.add_records(200);
        let mut run = Offsets::new();
        run.add_records(190);
        assert_eq!(a.offsets(&run).records(), Some(200));
        run.add_records(20);
        assert_eq!(a.offsets(&run).records(), Some(210));
        // a batch's offsets carry no count: none is added
        assert_eq!(a.offsets(&Offsets::new()).records(), None);
    }

    #[test]
    fn a_split_is_passed_by_a_record_past_a_gap() {
        // compaction or a transaction marker took the offsets just below the bound
        let mut a = ahead();
        let p = placed(&[("t/0", 9), ("t/0", 14)]);
        let Keep::Some(keep) = a.keep(2, Some(&p)) else {
            panic!()
        };
        assert_eq!(keep, BooleanArray::from(vec![false, true]));
        assert_eq!(a.below.keys().collect::<Vec<_>>(), ["t/1"]);
    }

    #[test]
    fn records_without_positions_all_go_to_the_sink() {
        let mut a = ahead();
        assert_eq!(a.keep(2, None), Keep::All);
        assert!(a.passed());
        let mut a = ahead();
        assert_eq!(a.keep(2, Some(&placed(&[("t/0", 1)]))), Keep::All);
        assert!(a.passed());
    }
}
