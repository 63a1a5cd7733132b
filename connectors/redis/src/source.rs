//! The Redis source: one stream read by a consumer group, acknowledged (`XACK`) only
//! after every sink flushed and the checkpoint was stored.
//!
//! The group is placed at the pipeline's checkpoint when the pipeline owns it (no
//! other consumer of the group has entries pending or was active within
//! `claim_idle`): `XGROUP SETID`, so a restart reads exactly the entries after the
//! checkpoint, whatever the group remembers. When other consumers share the group,
//! the group's position rules: this consumer first reads again what it read and did
//! not acknowledge before it stopped, and claims what dead consumers left
//! (`XAUTOCLAIM`): at least once, an entry repeating only if a crash fell between a
//! checkpoint and its acknowledgement, or it was claimed from a consumer that was only
//! slow.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use connector_api::{Batch, Error, Offsets, Result, Source, SourceContext};
use redis::aio::MultiplexedConnection;
use redis::{cmd, Value};
use serde::{Deserialize, Serialize};

use crate::config::{RedisSourceConfig, Start};
use crate::conn::{connect, items, query, redis_error, text};
use crate::entries::{parse_entries, parse_read, Entry, EntryDecoder, EntryId};

/// The offset of a stream: the last entry read in order, and the ordinal of the batch
/// it came in (which entries a commit acknowledges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOffset {
    /// The last entry id read by `XREADGROUP` (claimed entries do not move it);
    /// None before the first.
    pub id: Option<EntryId>,
    /// The batch's ordinal.
    pub batch: u64,
}

/// What the source reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// This consumer's own pending entries, after this id.
    Own(EntryId),
    /// New entries (`>`).
    New,
}

/// Reads one stream through a consumer group.
pub struct RedisSource {
    config: RedisSourceConfig,
    con: Option<MultiplexedConnection>,
    decoder: EntryDecoder,
    group: String,
    consumer: String,
    phase: Phase,
    /// The last entry read in order.
    last: Option<EntryId>,
    /// Batches handed out.
    batches: u64,
    /// The ids of each batch handed out and not yet acknowledged.
    unacked: VecDeque<(u64, Vec<EntryId>)>,
    /// Every entry id in `unacked`, in a shared group: a claim of one of them (idle
    /// past `claim_idle` because its checkpoint is slow) is not a new entry.
    in_flight: HashSet<EntryId>,
    /// Pending entries to read again by id (delivered more than once before the
    /// checkpoint, so maybe claimed and not written).
    redo: Vec<EntryId>,
    /// Other consumers share the group: claim what dead ones left.
    shared: bool,
    /// When to look for entries to claim next, and the scan's cursor.
    next_claim: Instant,
    claim_cursor: EntryId,
    /// `bounded`: the stream's last entry when the source opened.
    end: Option<EntryId>,
    batch_size: usize,
    idle_timeout: Duration,
    /// A read of new entries sent while the batch before it is decoded and written,
    /// so the server finds them as the source decodes (never blocking: a blocked
    /// read would hold up the acknowledgements behind it on the connection).
    ahead: Option<Ahead>,
    /// Entries read whose Avro writer schemas the registry did not give yet (and
    /// whether they were claimed): the next call decodes them, never drops them.
    pending: Option<Vec<Entry>>,
    /// The entries in `pending` were claimed from another consumer.
    pending_claimed: bool,
}

/// A read sent ahead; aborted when dropped.
struct Ahead(tokio::task::JoinHandle<Result<Value>>);

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RedisSource {
    /// A source for `config` (validated).
    pub fn new(config: RedisSourceConfig) -> Result<Self> {
        config.validate()?;
        Ok(RedisSource {
            decoder: EntryDecoder::new(&config)?,
            config,
            con: None,
            group: String::new(),
            consumer: String::new(),
            phase: Phase::New,
            last: None,
            batches: 0,
            unacked: VecDeque::new(),
            in_flight: HashSet::new(),
            redo: Vec::new(),
            shared: false,
            next_claim: Instant::now(),
            claim_cursor: EntryId::default(),
            end: None,
            batch_size: 8192,
            idle_timeout: Duration::from_secs(1),
            ahead: None,
            pending: None,
            pending_claimed: false,
        })
    }

    fn con(&mut self) -> Result<&mut MultiplexedConnection> {
        self.con
            .as_mut()
            .ok_or_else(|| Error::internal("redis source is not open"))
    }

    /// Creates the group when missing, places it, and says what to read first.
    async fn place(&mut self, stored: Option<StreamOffset>) -> Result<()> {
        let at = stored.and_then(|s| s.id);
        let key = self.config.stream.clone();
        let (group, consumer) = (self.group.clone(), self.consumer.clone());
        let from = match (at, self.config.start) {
            (Some(id), _) => id.to_string(),
            (None, Start::All) => "0".into(),
            (None, Start::New) => "$".into(),
        };
        let create = cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(&group)
            .arg(&from)
            .arg("MKSTREAM")
            .query_async::<Value>(self.con()?)
            .await;
        let created = match create {
            Ok(_) => true,
            Err(e) if e.code() == Some("BUSYGROUP") => false,
            Err(e) if e.code() == Some("WRONGTYPE") => {
                return Err(Error::schema(format!(
                    "redis: key \"{key}\" holds no stream (WRONGTYPE)"
                ))
                .with_field("stream"))
            }
            Err(e) => {
                return Err(redis_error(
                    format!("creating group \"{group}\" on stream \"{key}\""),
                    e,
                ))
            }
        };
        self.shared = !created && self.others_active().await?;
        self.phase = match (stored, created, self.shared) {
            (_, true, _) => Phase::New,
            (Some(StreamOffset { id: Some(id), .. }), false, false) => {
                // the pipeline owns the group: its checkpoint is the position
                self.set_id(&id.to_string()).await?;
                self.ack_own_through(id, false).await?;
                Phase::New
            }
            (None, false, false) => {
                // the pipeline owns the group and has no checkpoint at all (a first
                // run, or a sink whose data is gone): from where `start` says, and
                // what it read before is superseded
                self.set_id(&from).await?;
                self.ack_own_through(
                    EntryId {
                        ms: u64::MAX,
                        seq: u64::MAX,
                    },
                    true,
                )
                .await?;
                Phase::New
            }
            // a shared group, or a checkpoint of claimed entries only: the group's
            // position, this consumer's own pending entries first
            _ => Phase::Own(EntryId::default()),
        };
        self.last = at;
        tracing::info!(stream = %key, %group, %consumer, at = ?at.map(|a| a.to_string()), shared = self.shared, "redis: reading the stream");
        Ok(())
    }

    /// Places the group at `id` (`XGROUP SETID`).
    async fn set_id(&mut self, id: &str) -> Result<()> {
        let setid = cmd("XGROUP")
            .arg("SETID")
            .arg(&self.config.stream)
            .arg(&self.group)
            .arg(id)
            .clone();
        let what = format!("placing group \"{}\" at {id}", self.group);
        query(self.con()?, &setid, what).await.map(|_| ())
    }

    /// True when another consumer of the group has entries pending or was active
    /// within `claim_idle`.
    async fn others_active(&mut self) -> Result<bool> {
        let info = cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.config.stream)
            .arg(&self.group)
            .clone();
        let what = format!("the consumers of group \"{}\"", self.group);
        let reply = query(self.con()?, &info, what).await?;
        let idle_ms = self.config.claim_idle.as_millis() as i64;
        for c in items(reply) {
            let mut name = String::new();
            let (mut pending, mut idle) = (0i64, i64::MAX);
            for kv in items(c).chunks(2) {
                let value = kv.get(1);
                match kv.first().and_then(text).as_deref() {
                    Some("name") => name = value.and_then(text).unwrap_or_default(),
                    Some("pending") => pending = int(value),
                    Some("idle") => idle = int(value),
                    _ => {}
                }
            }
            if name != self.consumer && (pending > 0 || idle < idle_ms) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Acknowledges this consumer's pending entries up to `id` that it read once, in
    /// order: the checkpoint holds them. Ones delivered more than once may have been
    /// claimed from another consumer and not written: they are read again (with
    /// `all`, they are acknowledged too: the group starts over).
    async fn ack_own_through(&mut self, id: EntryId, all: bool) -> Result<()> {
        let mut from = "-".to_string();
        loop {
            let pending = cmd("XPENDING")
                .arg(&self.config.stream)
                .arg(&self.group)
                .arg(&from)
                .arg(id.to_string())
                .arg(ACK_CHUNK)
                .arg(&self.consumer)
                .clone();
            let reply = query(self.con()?, &pending, "this consumer's pending entries").await?;
            // [id, consumer, idle ms, deliveries] each
            let mut once = Vec::new();
            let mut seen = 0;
            for e in items(reply) {
                let e = items(e);
                let Some(pid) = e.first().and_then(text) else {
                    continue;
                };
                let pid: EntryId = pid.parse()?;
                seen += 1;
                from = format!("({pid}");
                match int(e.get(3)) {
                    _ if all => once.push(pid),
                    1 => once.push(pid),
                    _ => self.redo.push(pid),
                }
            }
            self.ack(&once).await?;
            if seen < ACK_CHUNK {
                return Ok(());
            }
        }
    }

    async fn ack(&mut self, ids: &[EntryId]) -> Result<()> {
        let mut id_text = String::new();
        for chunk in ids.chunks(ACK_CHUNK) {
            let mut c = cmd("XACK");
            c.arg(&self.config.stream).arg(&self.group);
            for id in chunk {
                id_text.clear();
                // writing to a String cannot fail
                let _ = write!(id_text, "{id}");
                c.arg(id_text.as_str());
            }
            query(self.con()?, &c, "acknowledging entries").await?;
        }
        Ok(())
    }

    /// Up to `count` entries: own pending ones first, then new ones (waiting up to
    /// `block`), and, in a shared group, ones claimed from dead consumers.
    async fn read(&mut self, count: usize, block: Duration) -> Result<(Vec<Entry>, bool)> {
        if !self.redo.is_empty() {
            let ids: Vec<EntryId> = self.redo.drain(..self.redo.len().min(count)).collect();
            return Ok((self.read_ids(ids).await?, true));
        }
        // claimed entries join this consumer's pending ones: claim only once those
        // are read again, or they would come twice
        if self.shared && self.phase == Phase::New && Instant::now() >= self.next_claim {
            let claimed = self.claim(count).await?;
            if !claimed.is_empty() {
                return Ok((claimed, true));
            }
        }
        if let Phase::Own(after) = self.phase {
            let entries = self.read_group(count, &after.to_string(), None).await?;
            match entries.last() {
                Some(e) => {
                    self.phase = Phase::Own(e.id);
                    return Ok((entries, false));
                }
                // none left: on to new entries
                None => self.phase = Phase::New,
            }
        }
        if let Some(mut ahead) = self.ahead.take() {
            let reply = (&mut ahead.0)
                .await
                .map_err(|e| Error::internal(format!("redis: a read sent ahead failed: {e}")))??;
            let entries = parse_read(reply)?;
            if !entries.is_empty() {
                self.read_ahead(count, &entries);
                return Ok((entries, false));
            }
        }
        let entries = self.read_group(count, ">", Some(block)).await?;
        self.read_ahead(count, &entries);
        Ok((entries, false))
    }

    /// Sends the next read of new entries, unless `entries` (just read) were none or
    /// reached the end of a bounded read. Not in a shared group: entries read ahead
    /// wait in this consumer's pending list, where a claim could take them too.
    fn read_ahead(&mut self, count: usize, entries: &[Entry]) {
        let Some(last) = entries.last() else {
            return;
        };
        if self.shared {
            return;
        }
        if self.end.is_some_and(|end| last.id >= end) {
            return;
        }
        let Some(con) = self.con.as_ref() else {
            return;
        };
        let (mut con, c) = (con.clone(), self.xreadgroup(count, ">", None));
        let what = format!("reading stream \"{}\"", self.config.stream);
        self.ahead = Some(Ahead(tokio::spawn(async move {
            query(&mut con, &c, what).await
        })));
    }

    /// The entries `ids` (`XRANGE`), in order; one deleted since comes without fields.
    async fn read_ids(&mut self, ids: Vec<EntryId>) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let c = cmd("XRANGE")
                .arg(&self.config.stream)
                .arg(id.to_string())
                .arg(id.to_string())
                .clone();
            let what = format!("reading entry {id} again");
            let found = parse_entries(query(self.con()?, &c, what).await?)?;
            out.push(
                found
                    .into_iter()
                    .next()
                    .unwrap_or(Entry { id, fields: None }),
            );
        }
        Ok(out)
    }

    /// `XREADGROUP` from `from` (`>`: new entries; an id: this consumer's pending
    /// entries after it), blocking up to `block`.
    async fn read_group(
        &mut self,
        count: usize,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        let c = self.xreadgroup(count, from, block);
        let what = format!("reading stream \"{}\"", self.config.stream);
        let reply = query(self.con()?, &c, what).await?;
        parse_read(reply)
    }

    /// The `XREADGROUP` command of [`Self::read_group`].
    fn xreadgroup(&self, count: usize, from: &str, block: Option<Duration>) -> redis::Cmd {
        let mut c = cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            // well inside the connection's response timeout
            let ms = block.min(Duration::from_secs(30)).as_millis().max(1) as u64;
            c.arg("BLOCK").arg(ms);
        }
        c.arg("STREAMS").arg(&self.config.stream).arg(from);
        c
    }

    /// Entries other consumers left pending longer than `claim_idle`, now this one's.
    async fn claim(&mut self, count: usize) -> Result<Vec<Entry>> {
        let c = cmd("XAUTOCLAIM")
            .arg(&self.config.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.config.claim_idle.as_millis() as u64)
            .arg(self.claim_cursor.to_string())
            .arg("COUNT")
            .arg(count)
            .clone();
        let reply = query(self.con()?, &c, "claiming entries of stopped consumers").await?;
        let mut parts = items(reply).into_iter();
        let cursor: EntryId = parts
            .next()
            .and_then(|v| text(&v))
            .unwrap_or_default()
            .parse()
            .unwrap_or_default();
        let mut entries = parts
            .next()
            .map(parse_entries)
            .transpose()?
            .unwrap_or_default();
        // this consumer's own entries whose checkpoint is slow are idle too: they are
        // out already, not claimed
        entries.retain(|e| !self.in_flight.contains(&e.id));
        if cursor == EntryId::default() {
            // the scan went round: look again after a while
            self.next_claim = Instant::now() + self.config.claim_idle / 2;
        }
        self.claim_cursor = cursor;
        if !entries.is_empty() {
            tracing::warn!(stream = %self.config.stream, entries = entries.len(), "redis: claimed entries a stopped consumer left");
        }
        Ok(entries)
    }

    /// `entries` as a batch, once the registry gave the Avro writer schemas they need;
    /// until it does they wait in `pending`.
    async fn decoded(&mut self, entries: Vec<Entry>, claimed: bool) -> Result<Batch> {
        self.pending_claimed = claimed;
        let entries = self.decoder.fetched(entries, &mut self.pending).await?;
        self.batch(entries, claimed)
    }

    /// The entries as a batch: records, dead letters, and the offset.
    fn batch(&mut self, entries: Vec<Entry>, claimed: bool) -> Result<Batch> {
        let live: Vec<&Entry> = entries.iter().filter(|e| e.fields.is_some()).collect();
        // on a thread of its own: the worker's other tasks (the read sent ahead, the
        // connection's writer and reader) go on meanwhile
        let decoder = &mut self.decoder;
        let decoded = connector_api::blocking(|| decoder.decode(&live))?;
        if !claimed {
            if let Some(e) = entries.last() {
                self.last = Some(e.id);
            }
        }
        self.batches += 1;
        if self.shared {
            // only a shared group claims
            self.in_flight.extend(entries.iter().map(|e| e.id));
        }
        self.unacked
            .push_back((self.batches, entries.iter().map(|e| e.id).collect()));
        let mut offsets = Offsets::new();
        offsets.set_typed(
            self.config.stream.clone(),
            &StreamOffset {
                id: self.last,
                batch: self.batches,
            },
        )?;
        let records = decoded
            .records
            .unwrap_or_else(|| RecordBatch::new_empty(Schema::empty().into()));
        let mut batch = Batch::new(records, offsets);
        batch.rejects = decoded.rejects;
        Ok(batch)
    }
}

/// Entries one `XACK` or `XPENDING` names at most.
const ACK_CHUNK: usize = 10_000;

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(other) => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
        None => 0,
    }
}

#[connector_api::async_trait]
impl Source for RedisSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.batch_size = ctx.batch_size.max(1);
        self.idle_timeout = ctx.idle_timeout;
        self.group = self.config.group_name(&ctx.pipeline);
        self.consumer = self.config.consumer_name(&ctx.pipeline);
        self.ahead = None;
        self.pending = None;
        self.con =
            Some(connect(&self.config.url, &format!("sluice {} source", ctx.pipeline)).await?);
        let stored: Option<StreamOffset> = committed.get_typed(&self.config.stream)?;
        if let Some(at) = stored {
            self.batches = at.batch;
        }
        self.place(stored).await?;
        if self.config.bounded {
            let info = cmd("XINFO").arg("STREAM").arg(&self.config.stream).clone();
            let what = format!("stream \"{}\"", self.config.stream);
            let reply = query(self.con()?, &info, what).await?;
            for kv in items(reply).chunks(2) {
                if kv.first().and_then(text).as_deref() == Some("last-generated-id") {
                    self.end = kv.get(1).and_then(text).map(|t| t.parse()).transpose()?;
                }
            }
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let done = |s: &Self| match (s.end, s.phase) {
            (Some(end), Phase::New) => s.redo.is_empty() && s.last.unwrap_or_default() >= end,
            _ => false,
        };
        if let Some(entries) = self.pending.take() {
            return self.decoded(entries, self.pending_claimed).await.map(Some);
        }
        if done(self) {
            return Ok(None);
        }
        let (entries, claimed) = self.read(self.batch_size, self.idle_timeout).await?;
        if entries.is_empty() {
            if self.end.is_some() && self.phase == Phase::New {
                // nothing new arrived within the idle timeout: the stream's end
                return Ok(None);
            }
            return Ok(Some(Batch::idle()));
        }
        self.decoded(entries, claimed).await.map(Some)
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let Some(at) = offsets.get_typed::<StreamOffset>(&self.config.stream)? else {
            return Ok(());
        };
        let mut ids = Vec::new();
        while self.unacked.front().is_some_and(|(n, _)| *n <= at.batch) {
            if let Some((_, batch)) = self.unacked.pop_front() {
                if !self.in_flight.is_empty() {
                    for id in &batch {
                        self.in_flight.remove(id);
                    }
                }
                ids.extend(batch);
            }
        }
        self.ack(&ids).await
    }

    async fn close(&mut self) -> Result<()> {
        self.ahead = None;
        self.pending = None;
        self.con = None;
        Ok(())
    }
}

/// `sluice check`: the server answers, and the key is a stream or absent.
pub async fn check(config: &RedisSourceConfig) -> Result<()> {
    let mut con = connect(&config.url, "sluice check").await?;
    let t = cmd("TYPE").arg(&config.stream).clone();
    match query(&mut con, &t, format!("key \"{}\"", config.stream))
        .await
        .map(|v| text(&v))
    {
        Ok(Some(t)) if t != "stream" && t != "none" => Err(Error::schema(format!(
            "redis: key \"{}\" holds a {t}, not a stream",
            config.stream
        ))
        .with_field("stream")),
        other => other.map(|_| ()),
    }
}
