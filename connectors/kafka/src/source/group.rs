//! The consumer group side of the Kafka source: the state the poll thread, the
//! rebalance callback and the source share, the callbacks that place and release
//! partitions, and the handle a transactional sink commits the consumed offsets by.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use connector_api::Offsets;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Start;
use crate::{log_to_tracing, Tp};

use super::*;

/// What the poll thread, the rebalance callback, `next_batch` and `commit` share.
pub(crate) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
}

#[derive(Default)]
pub(super) struct State {
    /// Assigned and not being revoked: their messages may be handed out.
    pub(super) owned: HashSet<Tp>,
    /// Per partition assigned or being revoked: the offset after the last record
    /// handed to the runtime.
    pub(super) handed: HashMap<Tp, i64>,
    /// Same keys as `handed`: the offset up to which the runtime has committed.
    pub(super) durable: HashMap<Tp, i64>,
    /// Same keys as `handed`: the group's committed offset as last read or written.
    pub(super) in_group: HashMap<Tp, i64>,
    /// Bounded mode: the end offset of each partition when it was assigned.
    pub(super) ends: HashMap<Tp, i64>,
    /// Bounded mode: the consumer's position, read when no message was waiting.
    pub(super) positions: HashMap<Tp, i64>,
    /// Positions handed to `open` (the checkpoint store or a transactional sink).
    pub(super) stored: HashMap<Tp, i64>,
    /// At least one partition was assigned (bounded mode waits for one).
    pub(super) assigned_once: bool,
    /// The source is closing: a revoke releases at once.
    pub(super) closing: bool,
    /// A fatal client error, reported by the next `next_batch`.
    pub(super) fatal: Option<String>,
    /// Each partition's end as the last statistics told it (the last stable offset,
    /// what a read_committed consumer can reach).
    pub(super) latest: HashMap<Tp, i64>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The consumer's callbacks: logs, errors and rebalances.
pub(crate) struct Ctx {
    pub(super) shared: Arc<Shared>,
    pub(super) start: Start,
    pub(super) start_ms: Option<i64>,
    pub(super) bounded: bool,
    pub(super) revoke_timeout: Duration,
    pub(super) errors: crate::ErrorLog,
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::Fatal)
        );
        self.errors.report("consumer", &error, reason);
        if fatal {
            self.shared.lock().fatal = Some(format!("{error}: {reason}"));
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.ends_from(statistics);
    }
}

impl Ctx {
    /// Keeps each partition's end offset from librdkafka's statistics.
    pub(super) fn ends_from(&self, stats: rdkafka::Statistics) {
        let mut st = self.shared.lock();
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                // partition -1 is librdkafka's internal "unassigned" one
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if partition >= 0 && end >= 0 {
                    st.latest.insert((topic.clone(), partition), end);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::warn!(error = ?other, "kafka rebalance failed; releasing the assignment");
                self.revoke(consumer, tpl);
            }
        }
    }
}

impl Ctx {
    /// Positions every newly assigned partition, then takes it.
    pub(super) fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let timeout = Duration::from_secs(30);
        let committed = consumer
            .committed_offsets(tpl.clone(), timeout)
            .map(|t| t.to_topic_map())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "kafka: reading the group's committed offsets failed; using the checkpoint");
                HashMap::new()
            });
        let stored = self.shared.lock().stored.clone();
        let mut by_time = TopicPartitionList::new();
        let mut starts: BTreeMap<Tp, Offset> = BTreeMap::new();
        let mut in_group = HashMap::new();
        for e in tpl.elements() {
            let tp: Tp = (e.topic().to_string(), e.partition());
            let group = match committed.get(&tp) {
                Some(Offset::Offset(n)) => Some(*n),
                _ => None,
            };
            let mine = stored.get(&tp).copied();
            let resume = match (mine, group) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if let Some(n) = group {
                in_group.insert(tp.clone(), n);
            }
            // `start` is where a partition nobody has read starts, never a reset: a
            // rebalance that moves a partition here keeps its committed position
            let start = match (resume, self.start) {
                (Some(n), _) => Offset::Offset(n),
                (None, Start::Committed | Start::Earliest) => Offset::Beginning,
                (None, Start::Latest) => Offset::End,
                (None, Start::Timestamp) => {
                    let _ = by_time.add_partition_offset(
                        &tp.0,
                        tp.1,
                        Offset::Offset(self.start_ms.unwrap_or(0)),
                    );
                    Offset::End
                }
            };
            starts.insert(tp, start);
        }
        if by_time.count() > 0 {
            match consumer.offsets_for_times(by_time, timeout) {
                Ok(found) => {
                    for e in found.elements() {
                        if let Offset::Offset(n) = e.offset() {
                            starts
                                .insert((e.topic().to_string(), e.partition()), Offset::Offset(n));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka: looking up offsets by time failed; starting at the end")
                }
            }
        }
        // resolve logical starts to numbers, so `handed` and bounded ends are exact; one
        // watermark query per partition serves both
        let mut st_starts = HashMap::new();
        let mut ends = HashMap::new();
        for (tp, start) in &starts {
            let logical = matches!(start, Offset::Beginning | Offset::End);
            let marks =
                (logical || self.bounded).then(|| consumer.fetch_watermarks(&tp.0, tp.1, timeout));
            let n = match (*start, &marks) {
                (Offset::Offset(n), _) => Some(n),
                (Offset::Beginning, Some(Ok((lo, _)))) => Some(*lo),
                (Offset::End, Some(Ok((_, hi)))) => Some(*hi),
                _ => None,
            };
            if let Some(n) = n {
                let _ = tpl.set_partition_offset(&tp.0, tp.1, Offset::Offset(n));
                st_starts.insert(tp.clone(), n);
            } else {
                let _ = tpl.set_partition_offset(&tp.0, tp.1, *start);
            }
            match marks {
                Some(Ok((_, hi))) if self.bounded => {
                    ends.insert(tp.clone(), hi);
                }
                Some(Err(e)) if self.bounded => {
                    self.shared.lock().fatal = Some(format!(
                        "topic \"{}\" partition {}: reading the end offset failed: {e}",
                        tp.0, tp.1
                    ));
                }
                _ => {}
            }
        }
        {
            let mut st = self.shared.lock();
            for tp in starts.keys() {
                let n = st_starts.get(tp).copied().unwrap_or(0);
                st.owned.insert(tp.clone());
                st.handed.insert(tp.clone(), n);
                st.durable.insert(tp.clone(), n);
            }
            st.ends.extend(ends);
            st.in_group.extend(in_group);
            // a regex subscription first joins with no topics resolved: wait for partitions
            st.assigned_once |= !starts.is_empty();
        }
        let positions: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
            .collect();
        tracing::info!(partitions = %positions.join(" "), "kafka: partitions assigned");
        if let Err(e) = consumer.assign(tpl) {
            self.shared.lock().fatal = Some(format!("assigning partitions failed: {e}"));
        }
        self.shared.changed.notify_all();
    }

    /// Waits until what was handed out of the revoked partitions is committed, then
    /// releases them.
    pub(super) fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let deadline = Instant::now() + self.revoke_timeout;
        let mut st = self.shared.lock();
        for tp in &revoked {
            st.owned.remove(tp);
        }
        loop {
            let pending: Vec<&Tp> = revoked
                .iter()
                .filter(|tp| st.handed.get(*tp) > st.durable.get(*tp))
                .collect();
            if pending.is_empty() || st.closing {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    partitions = pending.len(),
                    "kafka: revoked partitions released before their records in flight were committed; the next owner reads them again"
                );
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // what is durable goes to the group before the partitions do, so the next owner
        // starts there even when the runtime's last commit to the group failed
        let mut tpl = TopicPartitionList::new();
        for tp in &revoked {
            if let Some(&d) = st.durable.get(tp) {
                // (0 with no group offset: nothing read, or a start never resolved;
                // committing it would move the next owner to the partition's start)
                let behind = st.in_group.get(tp).map_or(d > 0, |&g| g < d);
                if behind {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(d));
                }
            }
            st.handed.remove(tp);
            st.durable.remove(tp);
            st.in_group.remove(tp);
            st.ends.remove(tp);
            st.positions.remove(tp);
        }
        drop(st);
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "kafka: committing the revoked partitions' positions to the group failed; their next owner reads again from the group's older offsets");
            }
        }
        tracing::info!(partitions = revoked.len(), "kafka: partitions revoked");
        if let Err(e) = consumer.unassign() {
            tracing::warn!(error = %e, "kafka: unassign failed");
        }
    }
}

/// The handle a transactional Kafka sink in the same pipeline uses to commit this
/// source's offsets inside its transaction.
pub(crate) struct GroupHandle {
    pub(super) consumer: Arc<BaseConsumer<Ctx>>,
    pub(super) shared: Arc<Shared>,
}

impl GroupHandle {
    /// The group metadata and the offsets of `offsets` that belong to partitions this
    /// member still holds.
    pub(crate) fn txn_offsets(
        &self,
        offsets: &Offsets,
    ) -> Option<(TopicPartitionList, rdkafka::consumer::ConsumerGroupMetadata)> {
        let meta = self.consumer.group_metadata()?;
        let st = self.shared.lock();
        let mut tpl = TopicPartitionList::new();
        for (split, value) in offsets.iter() {
            let (Some(tp), Ok(pos)) = (
                parse_split(split),
                serde_json::from_value::<PartitionOffset>(value.clone()),
            ) else {
                continue;
            };
            if st.handed.contains_key(&tp) {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(pos.next));
            }
        }
        Some((tpl, meta))
    }
}

pub(super) fn groups() -> &'static Mutex<HashMap<String, Weak<GroupHandle>>> {
    static GROUPS: std::sync::OnceLock<Mutex<HashMap<String, Weak<GroupHandle>>>> =
        std::sync::OnceLock::new();
    GROUPS.get_or_init(Default::default)
}

/// The consumer group handle of the Kafka source of `pipeline`, if it runs here.
pub(crate) fn group_of(pipeline: &str) -> Option<Arc<GroupHandle>> {
    groups()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(pipeline)
        .and_then(Weak::upgrade)
}
