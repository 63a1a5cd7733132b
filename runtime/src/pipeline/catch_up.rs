//! A sink catching up after a restart that began before its own offsets.
//!
//! The run resumes from the oldest sink's position ([`super::resume`]); a sink further
//! on is handed none of the records up to its own ordinal. Counting alone would trust
//! the source to read the same records again, so the records are held, not dropped,
//! until the count reaches the sink's ordinal at the end of a batch with the run at
//! exactly the position the sink stored: then it is caught up, and what was held is
//! what it has. Anything else (a batch across that ordinal, another position there, a
//! source that ends first, more held than [`HELD_PER_IN_FLIGHT`] times
//! `batch.max_in_flight`) means the records read again are not provably those it has:
//! it gets everything held, at least once, never fewer.

use arrow_array::RecordBatch;
use connector_api::Offsets;

use super::resume::Count;

/// How much a sink catching up may hold, in `batch.max_in_flight`s: about what one
/// checkpoint interval reads, which is how far one sink can be ahead of another.
pub(super) const HELD_PER_IN_FLIGHT: usize = 16;

/// What a sink holds and the records read again while it catches up.
pub(super) struct CatchUp {
    skip: Count,
    /// Each batch read again with the offsets it advanced.
    held: Vec<(RecordBatch, Offsets)>,
    bytes: usize,
    /// The count is at the ordinal; the position may still move to the stored one
    /// (offsets that advance without records).
    reached: bool,
}

/// What the sink is to do with a batch read while it catches up.
#[derive(Debug)]
pub(super) enum Step {
    /// Nothing: it has these records (still to be confirmed).
    Hold,
    /// Nothing: confirmed, it has everything held and this batch; it is caught up.
    CaughtUp,
    /// Write these batches with their offsets, in order (the held ones, this one
    /// last): the records read again are not provably those it has. Says why.
    GiveUp(Vec<(RecordBatch, Offsets)>, String),
}

impl CatchUp {
    pub(super) fn new(skip: Count) -> Self {
        CatchUp {
            skip,
            held: Vec::new(),
            bytes: 0,
            reached: false,
        }
    }

    /// The ordinal it catches up to.
    pub(super) fn until(&self) -> u64 {
        self.skip.until
    }

    /// `records` (ordinals from `first` on, advancing `offsets`) were read; the run is
    /// now at `at`. `limit`: the bytes it may hold. Records, not an empty batch: the
    /// run moving without records is [`CatchUp::moved`].
    pub(super) fn next(
        &mut self,
        first: u64,
        records: &RecordBatch,
        offsets: &Offsets,
        at: &Offsets,
        limit: usize,
    ) -> Step {
        let end = first + records.num_rows() as u64;
        let until = self.skip.until;
        self.bytes += records.get_array_memory_size();
        self.held.push((records.clone(), offsets.clone()));
        if self.reached {
            return self.give_up(format!(
                "at record {until} the run was at {} but the sink stored {}",
                show(at),
                show(&self.skip.stored)
            ));
        }
        if end > until {
            return self.give_up(format!(
                "a batch of records {first} to {} crosses record {until}, where the sink stored its offsets",
                end - 1
            ));
        }
        if end == until {
            if at.splits() == self.skip.stored.splits() {
                return Step::CaughtUp;
            }
            self.reached = true;
            return Step::Hold;
        }
        if self.bytes > limit {
            return self.give_up(format!(
                "{} bytes read again before record {until}, more than {HELD_PER_IN_FLIGHT} times batch.max_in_flight",
                self.bytes
            ));
        }
        Step::Hold
    }

    /// The run moved to `at` without records: true when that is where the sink
    /// stored its offsets, after its last record (it is caught up).
    pub(super) fn moved(&self, at: &Offsets) -> bool {
        self.reached && at.splits() == self.skip.stored.splits()
    }

    /// The source ended before the sink was caught up: everything held, and why.
    pub(super) fn ended(&mut self) -> (Vec<(RecordBatch, Offsets)>, String) {
        let until = self.skip.until;
        let why = format!("the source ended before record {until}");
        (std::mem::take(&mut self.held), why)
    }

    fn give_up(&mut self, why: String) -> Step {
        self.bytes = 0;
        Step::GiveUp(std::mem::take(&mut self.held), why)
    }
}

fn show(o: &Offsets) -> String {
    serde_json::to_string(&o.splits()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_api::testkit::id_batches;

    fn at(n: u64) -> Offsets {
        let mut o = Offsets::new();
        o.set("s", serde_json::json!(n));
        o.add_records(n);
        o
    }

    fn catch_up_to(n: u64) -> CatchUp {
        CatchUp::new(Count {
            until: n,
            stored: at(n),
        })
    }

    #[test]
    fn the_same_records_to_the_same_position_catch_up() {
        let b = id_batches(10, 10).remove(0);
        let mut c = catch_up_to(20);
        assert!(matches!(
            c.next(0, &b, &Offsets::new(), &at(10), 1 << 20),
            Step::Hold
        ));
        assert!(matches!(
            c.next(10, &b, &Offsets::new(), &at(20), 1 << 20),
            Step::CaughtUp
        ));
    }

    #[test]
    fn a_position_that_moves_there_without_records_catches_up() {
        let b = id_batches(10, 10).remove(0);
        let mut c = catch_up_to(10);
        let mut before = at(9);
        before.add_records(1);
        assert!(matches!(
            c.next(0, &b, &Offsets::new(), &before, 1 << 20),
            Step::Hold
        ));
        assert!(!c.moved(&before));
        assert!(c.moved(&at(10)));
    }

    #[test]
    fn another_position_there_gives_everything_held() {
        let b = id_batches(10, 10).remove(0);
        let mut c = catch_up_to(10);
        let mut other = at(12);
        other.add_records(0);
        assert!(matches!(
            c.next(0, &b, &Offsets::new(), &other, 1 << 20),
            Step::Hold
        ));
        match c.next(10, &b, &Offsets::new(), &at(20), 1 << 20) {
            Step::GiveUp(batches, why) => {
                assert_eq!(batches.len(), 2);
                assert!(why.contains("the sink stored"), "{why}");
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_batch_across_the_ordinal_or_too_much_held_gives_everything_held() {
        let b = id_batches(10, 10).remove(0);
        let mut c = catch_up_to(15);
        assert!(matches!(
            c.next(0, &b, &Offsets::new(), &at(10), 1 << 20),
            Step::Hold
        ));
        assert!(
            matches!(c.next(10, &b, &Offsets::new(), &at(20), 1 << 20), Step::GiveUp(v, _) if v.len() == 2)
        );
        let mut c = catch_up_to(100);
        assert!(
            matches!(c.next(0, &b, &Offsets::new(), &at(10), 1), Step::GiveUp(v, _) if v.len() == 1)
        );
        let mut c = catch_up_to(100);
        assert!(matches!(
            c.next(0, &b, &Offsets::new(), &at(10), 1 << 20),
            Step::Hold
        ));
        assert_eq!(c.ended().0.len(), 1);
    }
}
