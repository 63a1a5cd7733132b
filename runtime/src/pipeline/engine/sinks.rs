//! Writing to the sinks: the transforms' output through each sink's route and drift
//! policy, in parts of at most `[batch]`'s size, records a sink refuses, and a sink
//! that was ahead when the run restarted ([`super::super::catch_up`],
//! [`super::super::ahead`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use connector_api::{Batch, Offsets, Positions, Reject, Result};

use super::super::ahead::{Ahead, Keep};
use super::super::catch_up::{Step, HELD_PER_IN_FLIGHT};
use super::super::conform::conform;
use super::{Engine, SinkSlot};
use crate::config::Tolerance;
use crate::retrying;

impl Engine<'_> {
    /// Runs `records` (placed by `positions`, from a source that keeps them) through
    /// the transforms and writes them to every sink; the position moves to `offsets`.
    pub(super) async fn deliver(
        &mut self,
        records: Option<RecordBatch>,
        offsets: Offsets,
        positions: Option<&Positions>,
    ) -> Result<()> {
        // what each sink that was ahead does not hold, told by the records as read
        let rows = records.as_ref().map_or(0, RecordBatch::num_rows);
        let keeps: Vec<Keep> = self
            .sinks
            .iter_mut()
            .map(|s| match s.ahead.as_mut() {
                Some(ahead) => ahead.keep(rows, positions),
                None => Keep::All,
            })
            .collect();
        let read = match keeps.iter().any(|k| matches!(k, Keep::Some(_))) {
            true => records.clone(),
            false => None,
        };
        let records = match records {
            Some(r) => {
                // rows a query fails on are bad records, counted good when they were read
                let (r, rejects) = self.chain.apply(r, &offsets).await?;
                if !rejects.is_empty() {
                    self.reject(None, rejects).await?;
                }
                Some(r)
            }
            None => None,
        };
        // the ordinal sinks name records by: every record after the transforms, taken
        // or refused, so a replay counts the same. The position moves before the
        // writes: a failed write ends the run, and the next plans from the sinks
        let first = self.position.records().unwrap_or(0);
        self.position.merge(&offsets);
        self.position
            .add_records(records.as_ref().map_or(0, |r| r.num_rows() as u64));
        // a batch the transforms emptied moves the run as one without records does
        let Some(records) = records.filter(|r| r.num_rows() > 0) else {
            self.moved();
            self.passed();
            return Ok(());
        };
        let rows = records.num_rows() as u64;
        let bytes = records.get_array_memory_size() as u64;
        // records out: those every sink took or was not meant to take (a refused
        // record is a dead letter)
        let mut taken = rows;
        for (i, keep) in keeps.into_iter().enumerate() {
            if let Some(ahead) = &self.sinks[i].ahead {
                // the sink's own offsets of the splits the run has not passed
                let at = ahead.offsets(&offsets);
                match keep {
                    Keep::All => taken = taken.min(self.write_to(i, &records, &at).await?),
                    Keep::Nothing => {}
                    Keep::Some(keep) => {
                        let Some(read) = &read else { continue };
                        let lacking = arrow_select::filter::filter_record_batch(read, &keep)?;
                        // the same transforms on the records it lacks; their bad rows
                        // were dealt with above
                        let (lacking, _) = self.chain.apply(lacking, &offsets).await?;
                        self.write_to(i, &lacking, &at).await?;
                    }
                }
                continue;
            }
            let Some(c) = self.sinks[i].catch_up.as_mut() else {
                let written = self.write_to(i, &records, &offsets).await?;
                taken = taken.min(written);
                continue;
            };
            let limit = self.pipeline.batch.max_in_flight.0 as usize * HELD_PER_IN_FLIGHT;
            match c.next(first, &records, &offsets, &self.position, limit) {
                Step::Hold => {}
                Step::CaughtUp => self.caught_up(i),
                Step::GiveUp(batches, why) => {
                    let written = self.give_up(i, batches, &why).await?;
                    taken = taken.min(written);
                }
            }
        }
        self.passed();
        self.metrics.records_out.fetch_add(taken, Ordering::Relaxed);
        self.metrics.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Sinks that were ahead and that the run has now passed in every split.
    fn passed(&mut self) {
        for slot in &mut self.sinks {
            if slot.ahead.as_ref().is_some_and(Ahead::passed) {
                slot.ahead = None;
                tracing::info!(pipeline = %self.pipeline.name, sink = %slot.name, "the run has passed the records the sink held before the restart: none of them was written to it again");
            }
        }
    }

    /// Writes `records` to sink `i` through its route and drift policy, in parts of
    /// at most `[batch]`'s size, `offsets` with the last; returns the records it took
    /// or was not meant to take.
    pub(super) async fn write_to(
        &mut self,
        i: usize,
        records: &RecordBatch,
        offsets: &Offsets,
    ) -> Result<u64> {
        let rows = records.num_rows() as u64;
        let per_write = self.rows_per_write(records);
        let mut written_here = 0;
        let routed = match self.sinks[i].route.as_mut() {
            Some(route) => {
                let (kept, rejects) = route.apply(records, offsets).await?;
                written_here += rows - kept.num_rows() as u64 - rejects.len() as u64;
                if !rejects.is_empty() {
                    self.reject(None, rejects).await?;
                }
                kept
            }
            None => records.clone(),
        };
        let fitted = fit(&mut self.sinks[i], &routed)?;
        // a source batch larger than [batch] allows goes out in parts; the offsets go
        // with the last (they hold at its end)
        let mut at = 0;
        while at < fitted.num_rows() {
            let n = per_write.min(fitted.num_rows() - at);
            let part = fitted.slice(at, n);
            at += n;
            // a slice reports its whole buffers: its share of them instead
            let share = fitted.get_array_memory_size() as u128 * n as u128
                / fitted.num_rows().max(1) as u128;
            let part_offsets = match at == fitted.num_rows() {
                true => offsets.clone(),
                false => Offsets::new(),
            };
            let written = self.write_part(i, Batch::new(part, part_offsets)).await?;
            written_here += written as u64;
            if let Some(m) = self.metrics.sink(&self.sinks[i].name) {
                m.records.fetch_add(written as u64, Ordering::Relaxed);
                let bytes = share * written as u128 / n.max(1) as u128;
                m.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                m.batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(written_here)
    }

    /// The position moved without records: a sink whose count is at its ordinal may
    /// now be where it stored its offsets.
    pub(super) fn moved(&mut self) {
        for i in 0..self.sinks.len() {
            if self.sinks[i]
                .catch_up
                .as_ref()
                .is_some_and(|c| c.moved(&self.position))
            {
                self.caught_up(i);
            }
        }
    }

    fn caught_up(&mut self, i: usize) {
        let slot = &mut self.sinks[i];
        if let Some(c) = slot.catch_up.take() {
            tracing::info!(pipeline = %self.pipeline.name, sink = %slot.name, records = c.until(), "the sink has caught up with what it held before the restart: nothing of it was written again");
        }
    }

    /// Sink `i` stops catching up and gets `batches`, the records held for it, with
    /// their offsets; returns what the last one's write took.
    async fn give_up(
        &mut self,
        i: usize,
        batches: Vec<(RecordBatch, Offsets)>,
        why: &str,
    ) -> Result<u64> {
        let slot = &mut self.sinks[i];
        slot.catch_up = None;
        tracing::warn!(pipeline = %self.pipeline.name, sink = %slot.name, "the records read again since the restart are not provably those the sink held ({why}): it gets them all, at least once");
        let mut written = 0;
        for (b, with) in &batches {
            written = self.write_to(i, b, with).await?;
        }
        Ok(written)
    }

    /// The source ended: a sink still catching up gets what was held for it.
    pub(super) async fn settle(&mut self) -> Result<()> {
        for i in 0..self.sinks.len() {
            let Some(c) = self.sinks[i].catch_up.as_mut() else {
                continue;
            };
            let (batches, why) = c.ended();
            self.give_up(i, batches, &why).await?;
            self.dirty = true;
        }
        Ok(())
    }

    /// Writes one part to sink `i`; returns the rows written. Records the sink refused
    /// before writing any of the part ([`Error::refused`]) are bad records: under
    /// `errors.tolerance = "all"` they go to the dead-letter sink and the rest of the
    /// part is written again; otherwise the run stops naming the first.
    pub(super) async fn write_part(&mut self, i: usize, mut batch: Batch) -> Result<usize> {
        loop {
            let slot = &mut self.sinks[i];
            let Err(mut e) = retrying!(self.policy, "sink write", slot.sink.write(&batch)) else {
                return Ok(batch.num_rows());
            };
            let name = slot.name.clone();
            let mut keep = vec![true; batch.num_rows()];
            // one reject per row of the part, whatever the sink sent
            let refused: Vec<Reject> = e
                .take_refused()
                .into_iter()
                .filter_map(|(row, r)| match keep.get_mut(row) {
                    Some(k) if *k => {
                        *k = false;
                        Some(r)
                    }
                    _ => None,
                })
                .collect();
            if refused.is_empty() || self.pipeline.errors.tolerance == Tolerance::None {
                return Err(e.context(format!("sink \"{name}\"")));
            }
            let keep = arrow_array::BooleanArray::from(keep);
            batch.records = arrow_select::filter::filter_record_batch(&batch.records, &keep)?;
            let rejects = refused
                .into_iter()
                .map(|mut r| {
                    r.position = format!("sink \"{name}\" {}", r.position);
                    r
                })
                .collect();
            // counted good when they were read; an emptied part is still written, for
            // its offsets
            self.reject(None, rejects).await?;
        }
    }

    /// Rows of `records` per sink write: `max_records`, fewer when the average row
    /// would make a write larger than `max_bytes`.
    pub(super) fn rows_per_write(&self, records: &RecordBatch) -> usize {
        let batch = &self.pipeline.batch;
        let rows = records.num_rows().max(1) as u128;
        let bytes = records.get_array_memory_size().max(1) as u128;
        let by_bytes = (rows * batch.max_bytes.0 as u128 / bytes).max(1);
        batch
            .max_records
            .max(1)
            .min(by_bytes.min(usize::MAX as u128) as usize)
    }
}

/// `records` fitted to the sink's schema by its drift policy (the first batch sets the
/// schema of a sink that has none).
fn fit(slot: &mut SinkSlot, records: &RecordBatch) -> Result<RecordBatch> {
    match &slot.schema {
        None => {
            // the sink's schema: the data columns, without reserved metadata
            let schema = records.schema();
            let fields: Vec<_> = schema
                .fields()
                .iter()
                .filter(|f| !connector_api::columns::is_reserved(f.name()))
                .cloned()
                .collect();
            slot.schema = Some(Arc::new(Schema::new(fields)));
            Ok(records.clone())
        }
        Some(target) => {
            let c = conform(records, target, slot.drift)
                .map_err(|e| e.context(format!("sink \"{}\"", slot.name)))?;
            if let Some(evolved) = c.evolved {
                tracing::info!(sink = %slot.name, columns = evolved.fields().len(), "schema evolved: new nullable columns, or a column widened");
                slot.schema = Some(evolved);
            }
            if c.dropped_rows > 0 {
                tracing::warn!(sink = %slot.name, rows = c.dropped_rows, "rows with new columns discarded (drift = discard_row)");
            }
            Ok(c.batch)
        }
    }
}
