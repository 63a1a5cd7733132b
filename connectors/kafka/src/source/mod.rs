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
//!
//! Every batch says where each record lies (its partition and offset), so after a
//! crash between two sinks' flushes each sink that was ahead skips exactly the
//! messages it holds ([`Source::covered_below`]).
//!
//! `group` holds the shared state and the rebalance callbacks, `poll` the poll thread,
//! `decode` the messages into Arrow.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow_schema::Field;
use connector_api::{Batch, Error, Offsets, Result, Source, SourceContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_formats::avro::AvroReader;
use sluice_formats::JsonDecoder;
use tokio::sync::mpsc;

use crate::config::{KafkaSourceConfig, KeyFormat, Metadata, Start, ValueFormat};
use crate::{kafka_error, Tp};

mod decode;
mod group;
mod poll;

pub(crate) use self::group::group_of;
use self::group::*;
use self::poll::*;
pub use sluice_formats::messages::headers_type;

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

    /// An offset `{"next": N}` covers the partition's messages below offset N, and a
    /// message's offset never names another: a sink that was ahead after a crash is
    /// handed none of the messages it holds, however the partitions interleave.
    fn covered_below(&self, split: &str, offset: &serde_json::Value) -> Option<u128> {
        parse_split(split)?;
        let at = PartitionOffset::deserialize(offset).ok()?;
        u128::try_from(at.next).ok()
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
}
