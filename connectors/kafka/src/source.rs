//! The Kafka source: a consumer-group member whose partitions are splits.
//!
//! A dedicated thread polls the consumer and hands chunks of messages to
//! `next_batch`, which decodes them into Arrow. Offsets (`{"next": N}` per
//! `TOPIC/PARTITION` split, exclusive) are committed to Kafka only from
//! [`Source::commit`], that is after every sink has flushed and the checkpoint is
//! stored, so group lag tools see the durable position.
//!
//! Rebalances: when partitions are revoked the poll thread stops handing out their
//! messages and waits (up to `revoke_timeout`) until the runtime has committed every
//! record it already handed out, then releases them; the new owner starts exactly
//! there, and what is durable is committed to the group before they go, also when the
//! runtime's own commit failed. When they are assigned, each starts at the further of
//! the pipeline's own checkpoint and the group's committed offset, so neither a restart
//! nor a partition moving between runtimes reads a committed record again; `start`
//! applies only to a partition with neither. A commit never moves a group offset
//! backwards (a partition that comes back finds the position its other owner reached).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use connector_api::{columns, Batch, Error, Offsets, Reject, Result, Source, SourceContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_formats::JsonDecoder;
use tokio::sync::mpsc;

use crate::avro::AvroReader;
use crate::config::{KafkaSourceConfig, KeyFormat, Metadata, Start, ValueFormat};
use crate::{kafka_error, log_to_tracing, Tp};

/// The position of a partition: the offset of the next message to read (exclusive of
/// everything before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// Offset of the next message to read.
    pub next: i64,
}

/// The split id of a partition.
pub fn split_id(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The topic and partition of a split id (topic names never contain `/`).
pub fn parse_split(split: &str) -> Option<Tp> {
    let (topic, partition) = split.rsplit_once('/')?;
    Some((topic.to_string(), partition.parse().ok()?))
}

/// What the poll thread, the rebalance callback, `next_batch` and `commit` share.
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Assigned and not being revoked: their messages may be handed out.
    owned: HashSet<Tp>,
    /// Per partition assigned or being revoked: the offset after the last record
    /// handed to the runtime.
    handed: HashMap<Tp, i64>,
    /// Same keys as `handed`: the offset up to which the runtime has committed.
    durable: HashMap<Tp, i64>,
    /// Same keys as `handed`: the group's committed offset as last read or written.
    in_group: HashMap<Tp, i64>,
    /// Bounded mode: the end offset of each partition when it was assigned.
    ends: HashMap<Tp, i64>,
    /// Bounded mode: the consumer's position, read when no message was waiting.
    positions: HashMap<Tp, i64>,
    /// Positions handed to `open` (the checkpoint store or a transactional sink).
    stored: HashMap<Tp, i64>,
    /// At least one partition was assigned (bounded mode waits for one).
    assigned_once: bool,
    /// The source is closing: a revoke releases at once.
    closing: bool,
    /// A fatal client error, reported by the next `next_batch`.
    fatal: Option<String>,
    /// Each partition's end as the last statistics told it (the last stable offset,
    /// what a read_committed consumer can reach).
    latest: HashMap<Tp, i64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The consumer's callbacks: logs, errors and rebalances.
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    start: Start,
    start_ms: Option<i64>,
    bounded: bool,
    revoke_timeout: Duration,
    errors: crate::ErrorLog,
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
    fn ends_from(&self, stats: rdkafka::Statistics) {
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
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
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
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
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

/// One message as the poll thread hands it over.
struct Msg {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    /// Where the key is in the chunk's `data` (None: no key).
    key: Option<std::ops::Range<usize>>,
    /// Where the payload is in the chunk's `data` (None: a null payload).
    payload: Option<std::ops::Range<usize>>,
    /// Header keys and values as sent (a value may be null): kept for every message,
    /// as the key is, so that a dead letter holds them.
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Messages polled together; payloads are copied once, into one buffer.
#[derive(Default)]
struct Messages {
    msgs: Vec<Msg>,
    data: Vec<u8>,
}

impl Messages {
    fn payload(&self, m: &Msg) -> Option<&[u8]> {
        m.payload.clone().map(|r| &self.data[r])
    }

    fn key(&self, m: &Msg) -> Option<&[u8]> {
        m.key.clone().map(|r| &self.data[r])
    }
}

/// A poll-thread result: messages, or a fatal error.
enum Chunk {
    Messages(Messages),
    Failed(Error),
}

/// The handle a transactional Kafka sink in the same pipeline uses to commit this
/// source's offsets inside its transaction.
pub(crate) struct GroupHandle {
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
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

fn groups() -> &'static Mutex<HashMap<String, Weak<GroupHandle>>> {
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

/// The `kafka` source.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    decoder: JsonDecoder,
    /// `format = "avro"`: schemas by id and their decoders.
    avro: Option<AvroReader>,
    /// `key_format = "avro"`: the same for keys, and the `_key` field decoded last (the
    /// type of a chunk whose keys are all null).
    key_avro: Option<(AvroReader, Option<Field>)>,
    /// A chunk whose Avro schemas could not be fetched yet (the registry did not
    /// answer): decoded on the next call, so it is never lost.
    pending: Option<(Messages, Offsets)>,
    batch_size: usize,
    idle: Duration,
    shared: Arc<Shared>,
    consumer: Option<Arc<BaseConsumer<Ctx>>>,
    handle: Option<Arc<GroupHandle>>,
    rx: Option<mpsc::Receiver<Chunk>>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaSource {
    /// A source for `config` (validated); connects in `open`.
    pub fn new(config: KafkaSourceConfig) -> Result<Self> {
        let declared = config.declared_schema()?;
        let avro = match (&config.format, &config.schema_registry) {
            (ValueFormat::Avro, Some(r)) => Some(AvroReader::new(r)?),
            _ => None,
        };
        let key_avro = match (&config.key_format, &config.schema_registry) {
            (KeyFormat::Avro, Some(r)) => Some((AvroReader::new(r)?, None)),
            _ => None,
        };
        Ok(KafkaSource {
            decoder: JsonDecoder::new(declared),
            avro,
            key_avro,
            pending: None,
            config,
            batch_size: 8192,
            idle: Duration::from_secs(1),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            consumer: None,
            handle: None,
            rx: None,
            thread: None,
        })
    }

    fn wants(&self, m: Metadata) -> bool {
        self.config.metadata.contains(&m)
    }
}

/// Connects a consumer and checks the brokers answer.
pub(crate) fn connect(
    config: &KafkaSourceConfig,
    pipeline: &str,
    ctx: Ctx,
) -> Result<BaseConsumer<Ctx>> {
    let consumer: BaseConsumer<Ctx> = config
        .client_config(pipeline)
        .create_with_context(ctx)
        .map_err(|e| kafka_error("creating the consumer", e))?;
    crate::broker_metadata(consumer.client(), &config.bootstrap_servers)?;
    Ok(consumer)
}

#[connector_api::async_trait]
impl Source for KafkaSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle = ctx.idle_timeout;
        {
            let mut st = self.shared.lock();
            st.stored.clear();
            for (split, _) in committed.iter() {
                if let (Some(tp), Some(pos)) = (
                    parse_split(split),
                    committed.get_typed::<PartitionOffset>(split)?,
                ) {
                    st.stored.insert(tp, pos.next);
                }
            }
        }
        let context = Ctx {
            shared: self.shared.clone(),
            start: self.config.start,
            start_ms: match self.config.start {
                Start::Timestamp => Some(self.config.start_millis()?),
                _ => None,
            },
            bounded: self.config.bounded,
            revoke_timeout: self.config.revoke_timeout,
            errors: Default::default(),
        };
        let config = self.config.clone();
        let pipeline = ctx.pipeline.clone();
        let consumer = tokio::task::spawn_blocking(move || connect(&config, &pipeline, context))
            .await
            .map_err(|e| Error::internal("kafka connect task failed").with_source(e))??;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| kafka_error("subscribing", e))?;
        let consumer = Arc::new(consumer);
        let handle = Arc::new(GroupHandle {
            consumer: consumer.clone(),
            shared: self.shared.clone(),
        });
        groups()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ctx.pipeline.clone(), Arc::downgrade(&handle));
        let (tx, rx) = mpsc::channel(2);
        let poller = Poller {
            consumer: consumer.clone(),
            shared: self.shared.clone(),
            tx,
            batch_size: self.batch_size,
            bounded: self.config.bounded,
        };
        self.thread = Some(
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || poller.run())
                .map_err(|e| Error::internal("starting the kafka poll thread").with_source(e))?,
        );
        self.consumer = Some(consumer);
        self.handle = Some(handle);
        self.rx = Some(rx);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        if let Some(fatal) = self.shared.lock().fatal.take() {
            return Err(Error::new(
                connector_api::ErrorKind::Internal,
                format!("kafka: {fatal}"),
            ));
        }
        if self.pending.is_none() && self.config.bounded && self.finished() {
            return Ok(None);
        }
        let (msgs, offsets) = match self.pending.take() {
            Some(p) => p,
            None => match self.receive().await? {
                Some(p) => p,
                None => return Ok(Some(Batch::idle())),
            },
        };
        if let Some(avro) = &mut self.avro {
            let payloads = msgs.msgs.iter().filter_map(|m| msgs.payload(m));
            if let Err(e) = avro.fetch(payloads).await {
                self.pending = Some((msgs, offsets));
                return Err(e);
            }
        }
        if let Some((avro, _)) = &mut self.key_avro {
            let keys = msgs.msgs.iter().filter_map(|m| msgs.key(m));
            if let Err(e) = avro.fetch(keys).await {
                self.pending = Some((msgs, offsets));
                return Err(e);
            }
        }
        let batch = connector_api::blocking(|| self.decode(&msgs, offsets))?;
        Ok(Some(batch))
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let Some(consumer) = self.consumer.clone() else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        {
            let mut st = self.shared.lock();
            for (split, _) in offsets.iter() {
                let (Some(tp), Some(pos)) = (
                    parse_split(split),
                    offsets.get_typed::<PartitionOffset>(split)?,
                ) else {
                    continue;
                };
                // only owned partitions, and never backwards: the offsets of a partition
                // that went to another member and came back are older than where that
                // member left it
                if let Some(d) = st.durable.get_mut(&tp) {
                    if pos.next >= *d {
                        *d = pos.next;
                        let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(pos.next));
                    }
                }
            }
        }
        self.shared.changed.notify_all();
        if tpl.count() == 0 {
            return Ok(());
        }
        let sent = tpl.clone();
        let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| Error::internal("kafka commit task failed").with_source(e))?;
        match result {
            Ok(()) => {
                let mut st = self.shared.lock();
                for e in sent.elements() {
                    let tp = (e.topic().to_string(), e.partition());
                    if let (Offset::Offset(n), true) = (e.offset(), st.durable.contains_key(&tp)) {
                        let g = st.in_group.entry(tp).or_insert(n);
                        *g = (*g).max(n);
                    }
                }
            }
            // the checkpoint store holds the position; the group's copy catches up with
            // the next commit, or when the partitions are revoked
            Err(e) => tracing::warn!(error = %e, "kafka: committing offsets to the group failed"),
        }
        Ok(())
    }

    /// Per owned partition: its end (the last stable offset, from the statistics
    /// librdkafka sends every second) less the offset after the last record handed
    /// out. Offsets, not records: a transaction marker takes an offset too.
    fn lag(&self) -> Vec<connector_api::Lag> {
        let st = self.shared.lock();
        let mut lag: Vec<connector_api::Lag> = st
            .owned
            .iter()
            .filter_map(|tp| {
                let end = *st.latest.get(tp)?;
                let at = *st.handed.get(tp)?;
                Some(connector_api::Lag {
                    split: format!("{}/{}", tp.0, tp.1),
                    records: Some((end - at).max(0) as u64),
                    ..Default::default()
                })
            })
            .collect();
        lag.sort_by(|a, b| a.split.cmp(&b.split));
        lag
    }

    async fn close(&mut self) -> Result<()> {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        self.rx = None;
        self.handle = None;
        let thread = self.thread.take();
        let consumer = self.consumer.take();
        tokio::task::spawn_blocking(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            if let Some(c) = consumer {
                c.unsubscribe();
                drop(c);
            }
        })
        .await
        .map_err(|e| Error::internal("kafka close task failed").with_source(e))?;
        Ok(())
    }
}

impl KafkaSource {
    /// The next chunk of messages from the poll thread, with the offsets it advances
    /// (None: nothing came within the idle time, or nothing left that is still owned).
    async fn receive(&mut self) -> Result<Option<(Messages, Offsets)>> {
        let rx = self
            .rx
            .as_mut()
            .ok_or_else(|| Error::internal("kafka source used before open"))?;
        let chunk = match tokio::time::timeout(self.idle, rx.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(Error::internal("kafka poll thread ended")),
            Ok(Some(Chunk::Failed(e))) => return Err(e),
            Ok(Some(Chunk::Messages(m))) => m,
        };
        // keep only partitions still owned, and note what is handed out
        let mut msgs = chunk;
        let mut offsets = Offsets::new();
        {
            let mut st = self.shared.lock();
            let mut owned: HashMap<(*const u8, i32), bool> = HashMap::new();
            msgs.msgs.retain(|m| {
                *owned
                    .entry((m.topic.as_ptr(), m.partition))
                    .or_insert_with(|| st.owned.contains(&(m.topic.to_string(), m.partition)))
            });
            let mut last: HashMap<(*const u8, i32), (Arc<str>, i32, i64)> = HashMap::new();
            for m in &msgs.msgs {
                last.entry((m.topic.as_ptr(), m.partition))
                    .and_modify(|e| e.2 = m.offset + 1)
                    .or_insert_with(|| (m.topic.clone(), m.partition, m.offset + 1));
            }
            for (topic, partition, next) in last.into_values() {
                st.handed.insert((topic.to_string(), partition), next);
                offsets.set_typed(split_id(&topic, partition), &PartitionOffset { next })?;
            }
        }
        if msgs.msgs.is_empty() {
            return Ok(None);
        }
        Ok(Some((msgs, offsets)))
    }

    /// Bounded mode: every assigned partition has been handed out up to its end (the
    /// consumer's position counts too: it moves past transaction markers).
    fn finished(&self) -> bool {
        if !self.rx.as_ref().is_some_and(|rx| rx.is_empty()) {
            return false;
        }
        let st = self.shared.lock();
        st.assigned_once
            && st.owned.iter().all(|tp| {
                let at = st.handed.get(tp).copied().unwrap_or(0);
                let polled = st.positions.get(tp).copied().unwrap_or(0);
                at.max(polled) >= st.ends.get(tp).copied().unwrap_or(0)
            })
    }

    /// Decodes messages into one batch with the requested metadata columns; messages
    /// that do not decode become rejects.
    fn decode(&mut self, chunk: &Messages, offsets: Offsets) -> Result<Batch> {
        let msgs = &chunk.msgs[..];
        let mut rejects = Vec::new();
        let mut good: Vec<usize> = Vec::with_capacity(msgs.len());
        let values: Option<RecordBatch> = match self.config.format {
            ValueFormat::Json => {
                // one line per message: newlines inside a JSON value are whitespace
                let mut buf = Vec::with_capacity(chunk.data.len() + 3 * msgs.len());
                let mut lines = Vec::with_capacity(msgs.len());
                // in message order: the first of them is the one a stop names
                let mut bad_at: Vec<(usize, Error)> = Vec::new();
                for (i, m) in msgs.iter().enumerate() {
                    match chunk.payload(m) {
                        None => {
                            bad_at.push((i, tombstone()));
                            continue;
                        }
                        Some(p) if p.iter().all(u8::is_ascii_whitespace) => {
                            bad_at.push((i, Error::data("empty message")));
                            continue;
                        }
                        Some(p) => {
                            let start = buf.len();
                            buf.extend_from_slice(p);
                            for b in &mut buf[start..] {
                                if *b == b'\n' || *b == b'\r' {
                                    *b = b' ';
                                }
                            }
                        }
                    }
                    buf.push(b'\n');
                    lines.push(i);
                }
                let decoded = self.decoder.decode(&buf, lines.len().max(1), true)?;
                let mut bad = HashSet::new();
                for b in decoded.bad {
                    if let Some(&i) = lines.get(b.index) {
                        bad.insert(i);
                        bad_at.push((i, b.error));
                    }
                }
                bad_at.sort_by_key(|&(i, _)| i);
                rejects.extend(bad_at.into_iter().map(|(i, e)| reject(chunk, &msgs[i], e)));
                good.extend(lines.into_iter().filter(|i| !bad.contains(i)));
                match decoded.batch {
                    Some(b) => Some(b),
                    None => self
                        .decoder
                        .schema()
                        .map(|s| RecordBatch::new_empty(s.clone())),
                }
            }
            ValueFormat::String => {
                let mut b = StringBuilder::new();
                for (i, m) in msgs.iter().enumerate() {
                    match append_utf8(&mut b, chunk.payload(m), "value") {
                        Ok(()) => good.push(i),
                        Err(e) => rejects.push(reject(chunk, m, e)),
                    }
                }
                Some(value_batch(DataType::Utf8, Arc::new(b.finish()))?)
            }
            ValueFormat::Bytes => {
                let mut b = BinaryBuilder::new();
                for (i, m) in msgs.iter().enumerate() {
                    b.append_option(chunk.payload(m));
                    good.push(i);
                }
                Some(value_batch(DataType::Binary, Arc::new(b.finish()))?)
            }
            ValueFormat::Avro => {
                let avro = self
                    .avro
                    .as_mut()
                    .ok_or_else(|| Error::internal("kafka: avro format without a reader"))?;
                let decoded = avro.decode(msgs.iter().map(|m| chunk.payload(m)))?;
                for (i, e) in decoded.bad {
                    rejects.push(reject(chunk, &msgs[i], e));
                }
                good.extend(decoded.good);
                decoded.batch
            }
        };
        // metadata columns, for the good messages only; a bad key or a header value
        // that is not text rejects the message
        let mut bad_headers = HashSet::new();
        if self.wants(Metadata::Headers) {
            for (row, &i) in good.iter().enumerate() {
                let m = &msgs[i];
                let not_text = m.headers.iter().find(|(_, v)| {
                    v.as_deref()
                        .is_some_and(|v| std::str::from_utf8(v).is_err())
                });
                if let Some((k, _)) = not_text {
                    bad_headers.insert(row);
                    let e = Error::data(format!(
                        "header \"{k}\": the value is not UTF-8 text, and _headers holds text"
                    ));
                    rejects.push(reject(chunk, m, e));
                }
            }
        }
        let mut keep = Vec::with_capacity(good.len());
        let mut key_strings = StringBuilder::new();
        let mut key_bytes = BinaryBuilder::new();
        let mut avro_keys = None;
        if let (true, Some((avro, last))) = (self.wants(Metadata::Key), &mut self.key_avro) {
            // only messages with a key decode; a message without one gets a null `_key`
            let keyed: Vec<usize> = (0..good.len())
                .filter(|&r| msgs[good[r]].key.is_some() && !bad_headers.contains(&r))
                .collect();
            let decoded = avro.decode(keyed.iter().map(|&r| chunk.key(&msgs[good[r]])))?;
            let mut row_of: HashMap<usize, u32> = HashMap::with_capacity(decoded.good.len());
            for (at, &k) in decoded.good.iter().enumerate() {
                row_of.insert(keyed[k], at as u32);
            }
            let mut bad = HashSet::with_capacity(decoded.bad.len());
            for (k, e) in decoded.bad {
                bad.insert(keyed[k]);
                let m = &msgs[good[keyed[k]]];
                rejects.push(reject(chunk, m, Error::data(format!("key: {e}"))));
            }
            keep = (0..good.len())
                .filter(|r| !bad.contains(r) && !bad_headers.contains(r))
                .collect();
            let take: arrow_array::UInt32Array =
                keep.iter().map(|r| row_of.get(r).copied()).collect();
            avro_keys = Some(key_column(decoded.batch, decoded.record, &take, last)?);
        }
        // string and bytes keys (Avro keys are decoded above)
        if avro_keys.is_none() {
            for (row, &i) in good.iter().enumerate() {
                let m = &msgs[i];
                if bad_headers.contains(&row) {
                    continue;
                }
                if self.wants(Metadata::Key) {
                    match self.config.key_format {
                        KeyFormat::Bytes => key_bytes.append_option(chunk.key(m)),
                        _ => {
                            if let Err(e) = append_utf8(&mut key_strings, chunk.key(m), "key") {
                                rejects.push(reject(chunk, m, e));
                                continue;
                            }
                        }
                    }
                }
                keep.push(row);
            }
        }
        let Some(values) = values else {
            return Ok(Batch {
                records: RecordBatch::new_empty(Arc::new(Schema::empty())),
                offsets,
                rejects,
            });
        };
        let values = if keep.len() == values.num_rows() {
            values
        } else {
            let idx = arrow_array::UInt32Array::from_iter_values(keep.iter().map(|&r| r as u32));
            arrow_select_take(&values, &idx)?
        };
        let rows: Vec<&Msg> = keep.iter().map(|&r| &msgs[good[r]]).collect();
        let mut fields: Vec<Arc<Field>> = values.schema().fields().iter().cloned().collect();
        let mut cols: Vec<ArrayRef> = values.columns().to_vec();
        for m in [
            Metadata::Key,
            Metadata::Headers,
            Metadata::Timestamp,
            Metadata::Topic,
            Metadata::Partition,
            Metadata::Offset,
        ] {
            if !self.wants(m) {
                continue;
            }
            let (field, col): (Field, ArrayRef) = match m {
                Metadata::Key => match self.config.key_format {
                    KeyFormat::Avro => avro_keys
                        .take()
                        .ok_or_else(|| Error::internal("kafka: avro keys not decoded"))?,
                    KeyFormat::Bytes => (
                        Field::new(columns::KEY, DataType::Binary, true),
                        Arc::new(key_bytes.finish()),
                    ),
                    _ => (
                        Field::new(columns::KEY, DataType::Utf8, true),
                        Arc::new(key_strings.finish()),
                    ),
                },
                Metadata::Headers => {
                    let mut b = headers_builder();
                    for r in &rows {
                        for (k, v) in &r.headers {
                            let s = b.values();
                            s.field_builder::<StringBuilder>(0)
                                .expect("key builder")
                                .append_value(k);
                            // text, checked above; a null value stays null
                            s.field_builder::<StringBuilder>(1)
                                .expect("value builder")
                                .append_option(
                                    v.as_deref().and_then(|v| std::str::from_utf8(v).ok()),
                                );
                            s.append(true);
                        }
                        b.append(true);
                    }
                    (
                        Field::new(columns::HEADERS, headers_type(), true),
                        Arc::new(b.finish()),
                    )
                }
                Metadata::Timestamp => {
                    let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
                    for r in &rows {
                        b.append_option(r.timestamp);
                    }
                    (
                        Field::new(
                            columns::TIMESTAMP,
                            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                            true,
                        ),
                        Arc::new(b.finish()),
                    )
                }
                Metadata::Topic => {
                    let mut b = StringBuilder::new();
                    for r in &rows {
                        b.append_value(&r.topic);
                    }
                    (
                        Field::new(columns::TOPIC, DataType::Utf8, false),
                        Arc::new(b.finish()),
                    )
                }
                Metadata::Partition => {
                    let mut b = Int32Builder::new();
                    for r in &rows {
                        b.append_value(r.partition);
                    }
                    (
                        Field::new(columns::PARTITION, DataType::Int32, false),
                        Arc::new(b.finish()),
                    )
                }
                Metadata::Offset => {
                    let mut b = Int64Builder::new();
                    for r in &rows {
                        b.append_value(r.offset);
                    }
                    (
                        Field::new(columns::OFFSET, DataType::Int64, false),
                        Arc::new(b.finish()),
                    )
                }
            };
            fields.push(Arc::new(field));
            cols.push(col);
        }
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            values.schema().metadata().clone(),
        ));
        let records = RecordBatch::try_new_with_options(
            schema,
            cols,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        Ok(Batch {
            records,
            offsets,
            rejects,
        })
    }
}

fn arrow_select_take(batch: &RecordBatch, idx: &arrow_array::UInt32Array) -> Result<RecordBatch> {
    let cols = batch
        .columns()
        .iter()
        .map(|c| arrow_select::take::take(c.as_ref(), idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        cols,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(idx.len())),
    )?)
}

/// The type of the `_headers` column.
pub fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new_struct("item", header_fields(), true)))
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ])
}

fn headers_builder() -> ListBuilder<StructBuilder> {
    ListBuilder::new(StructBuilder::from_fields(header_fields(), 0))
        .with_field(Arc::new(Field::new_struct("item", header_fields(), true)))
}

/// The `_key` column of Avro keys decoded into `batch`, row `take[i]` for message `i`
/// (null: a message without key): a struct of a record key's fields, or the bare value.
/// `last` carries the field from chunk to chunk for the type of a chunk whose keys are
/// all null.
fn key_column(
    batch: Option<RecordBatch>,
    record: bool,
    take: &arrow_array::UInt32Array,
    last: &mut Option<Field>,
) -> Result<(Field, ArrayRef)> {
    let rows = take.len();
    let batch = match batch {
        Some(b) if b.num_columns() > 0 => b,
        _ => {
            let field = last
                .clone()
                .unwrap_or_else(|| Field::new(columns::KEY, DataType::Null, true));
            let col = arrow_array::new_null_array(field.data_type(), rows);
            return Ok((field, col));
        }
    };
    let columns = batch
        .columns()
        .iter()
        .map(|c| arrow_select::take::take(c, take, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (field, col): (Field, ArrayRef) = if record {
        // a child keeps its own nullability: its nulls from `take` lie under null keys
        let s = arrow_array::StructArray::try_new(
            batch.schema().fields().clone(),
            columns,
            take.nulls().cloned(),
        )?;
        (
            Field::new(columns::KEY, s.data_type().clone(), true),
            Arc::new(s),
        )
    } else {
        let col = columns[0].clone();
        (Field::new(columns::KEY, col.data_type().clone(), true), col)
    };
    *last = Some(field.clone());
    Ok((field, col))
}

/// Appends `bytes` as text (None: null); an error naming `what` when it is not UTF-8.
fn append_utf8(b: &mut StringBuilder, bytes: Option<&[u8]>, what: &str) -> Result<()> {
    match bytes.map(std::str::from_utf8) {
        None => b.append_null(),
        Some(Ok(s)) => b.append_value(s),
        Some(Err(e)) => return Err(Error::data(format!("{what} is not UTF-8: {e}"))),
    }
    Ok(())
}

fn value_batch(dt: DataType, col: ArrayRef) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("value", dt, true)])),
        vec![col],
    )?)
}

/// A tombstone (a message with no value) in a row format: it has no row, and a row of
/// nulls would overwrite an upsert target's values.
pub(crate) fn tombstone() -> Error {
    Error::data(
        "a tombstone (a message with no value): no row to decode; a row of nulls would overwrite the target's \
         values (dead-letter tombstones with [errors] tolerance = \"all\", or read format = \"bytes\")",
    )
}

/// The message `m` as a reject: its position, its payload as text and exactly, its
/// key and headers.
fn reject(chunk: &Messages, m: &Msg, error: Error) -> Reject {
    let payload = chunk.payload(m);
    Reject {
        bytes: payload.map(<[u8]>::to_vec),
        key: chunk.key(m).map(<[u8]>::to_vec),
        headers: m.headers.clone(),
        ..Reject::new(
            split_id(&m.topic, m.partition),
            format!(
                "topic \"{}\" partition {} offset {}",
                m.topic, m.partition, m.offset
            ),
            payload
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            error,
        )
    }
}

/// The poll loop, on its own thread.
struct Poller {
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Chunk>,
    batch_size: usize,
    bounded: bool,
}

impl Poller {
    fn run(self) {
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        let mut chunk = Messages::default();
        loop {
            if self.shared.lock().closing {
                return;
            }
            let timeout = if chunk.msgs.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                None => {
                    if !chunk.msgs.is_empty()
                        && !self.send(Chunk::Messages(std::mem::take(&mut chunk)))
                    {
                        return;
                    }
                    if self.bounded {
                        // everything polled so far is in the channel or handed out
                        if let Ok(p) = self.consumer.position() {
                            let mut st = self.shared.lock();
                            for e in p.elements() {
                                if let Offset::Offset(n) = e.offset() {
                                    st.positions
                                        .insert((e.topic().to_string(), e.partition()), n);
                                }
                            }
                        }
                    }
                }
                Some(Ok(m)) => {
                    let topic = match topics.get(m.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = Arc::from(m.topic());
                            topics.insert(m.topic().to_string(), t.clone());
                            t
                        }
                    };
                    let headers = match m.headers() {
                        Some(h) => h
                            .iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let payload = m.payload().map(|p| {
                        let start = chunk.data.len();
                        chunk.data.extend_from_slice(p);
                        start..chunk.data.len()
                    });
                    chunk.msgs.push(Msg {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key().map(|k| {
                            let start = chunk.data.len();
                            chunk.data.extend_from_slice(k);
                            start..chunk.data.len()
                        }),
                        payload,
                        headers,
                    });
                    if chunk.msgs.len() >= self.batch_size
                        && !self.send(Chunk::Messages(std::mem::take(&mut chunk)))
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    if let Some(err) = classify_poll_error(&e) {
                        let _ = self.send(Chunk::Failed(err));
                        return;
                    }
                    tracing::warn!(error = %e, "kafka consumer");
                }
            }
        }
    }

    /// Sends, waiting for room; false when the source is gone.
    fn send(&self, chunk: Chunk) -> bool {
        self.tx.blocking_send(chunk).is_ok()
    }
}

/// Poll errors that stop the source; the rest (broker down, partition EOF) are logged
/// while librdkafka retries.
fn classify_poll_error(e: &KafkaError) -> Option<Error> {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::TopicAuthorizationFailed | C::GroupAuthorizationFailed) => Some(Error::new(
            connector_api::ErrorKind::Auth,
            format!("kafka: {e}"),
        )),
        Some(C::Fatal) => Some(Error::internal(format!("kafka: {e}"))),
        _ => None,
    }
}
