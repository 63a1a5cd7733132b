//! Stream entries: their ids, the replies that carry them, and their decoding into
//! records (a payload field in one of the shared formats, or every field a column).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use connector_api::{Error, Reject, Result};
use redis::Value;
use serde::{Deserialize, Serialize};
use sluice_formats::messages::{with_metadata, Message, MessageDecoder, MessageField};

use crate::config::{EntryFormat, RedisSourceConfig};
use crate::conn::{bytes, items};

/// A stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// Milliseconds since 1970 when the entry was added (unless its writer chose ids).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::data(format!("\"{s}\" is not a stream entry id (ms-seq)"));
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry as read: its id and fields in order (None when it was deleted after it
/// was read and before it was acknowledged).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The id.
    pub id: EntryId,
    /// Field names and values.
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Entry {
    /// The value of the field `name`, the first if it is given twice.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .flatten()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// The entries of one stream's reply to `XREADGROUP` (nil: none), or of the entry list
/// of an `XAUTOCLAIM` reply.
pub fn parse_read(reply: Value) -> Result<Vec<Entry>> {
    // [[stream, [entries]]] (RESP2) or {stream: [entries]} (RESP3)
    let mut top = items(reply);
    if matches!(top.first(), Some(Value::Array(_))) {
        top = items(top.swap_remove(0));
    }
    match top.into_iter().nth(1) {
        Some(list) => parse_entries(list),
        None => Ok(Vec::new()),
    }
}

/// A list of `[id, [field, value, ...]]`.
pub fn parse_entries(list: Value) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in items(list) {
        if e == Value::Nil {
            // a claimed entry deleted since (Redis 6.2 lists it as nil)
            continue;
        }
        let mut parts = items(e).into_iter();
        let id = parts
            .next()
            .as_ref()
            .and_then(bytes)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| Error::internal("redis: an entry without an id in UTF-8 text"))?
            .parse()?;
        let fields = match parts.next() {
            None | Some(Value::Nil) => None,
            Some(v) => {
                let mut flat = items(v).into_iter();
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                while let Some(k) = flat.next() {
                    // the reply's buffers are moved, not copied
                    let (Some(k), Some(v)) = (into_bytes(k), flat.next().and_then(into_bytes))
                    else {
                        return Err(Error::internal(format!(
                            "redis: entry {id} has a field that is not a string"
                        )));
                    };
                    pairs.push((k, v));
                }
                Some(pairs)
            }
        };
        out.push(Entry { id, fields });
    }
    Ok(out)
}

/// The bytes of a reply that is a string, taken.
fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        other => bytes(&other).map(<[u8]>::to_vec),
    }
}

/// Decodes entries of one stream into records.
pub struct EntryDecoder {
    format: EntryFormat,
    body: Vec<u8>,
    payloads: Option<MessageDecoder>,
    declared: Option<SchemaRef>,
    metadata: Vec<MessageField>,
    stream: String,
}

/// Records and dead letters of some entries.
pub struct Decoded {
    /// The entries that decoded, in order (None: none did and no schema is known).
    pub records: Option<RecordBatch>,
    /// The others.
    pub rejects: Vec<Reject>,
}

impl EntryDecoder {
    /// A decoder for `config`'s stream.
    pub fn new(config: &RedisSourceConfig) -> Result<Self> {
        let declared = config.declared_schema()?;
        Ok(EntryDecoder {
            format: config.format,
            body: config.body_field.as_bytes().to_vec(),
            payloads: config
                .format
                .payload()
                .map(|f| {
                    MessageDecoder::new(f, declared.clone(), &config.metadata)
                        .with_registry(config.schema_registry.as_ref())
                })
                .transpose()?,
            declared,
            metadata: config.metadata.clone(),
            stream: config.stream.clone(),
        })
    }

    /// `entries` once the writer schemas of their Avro payloads are fetched (other
    /// formats: at once); a registry that does not answer is an error, and the
    /// entries wait in `pending` for the next call.
    pub async fn fetched(
        &mut self,
        entries: Vec<Entry>,
        pending: &mut Option<Vec<Entry>>,
    ) -> Result<Vec<Entry>> {
        let Some(decoder) = self.payloads.as_mut() else {
            return Ok(entries);
        };
        let body = &self.body;
        decoder
            .fetched(entries, |e| e.field(body).unwrap_or_default(), pending)
            .await
    }

    /// Decodes `entries` (none deleted).
    pub fn decode(&mut self, entries: &[&Entry]) -> Result<Decoded> {
        // ids and the other fields as text only when a metadata column wants them
        let want_ids = self.metadata.contains(&MessageField::Id);
        let ids: Vec<String> = entries
            .iter()
            .map(|e| match want_ids {
                true => e.id.to_string(),
                false => String::new(),
            })
            .collect();
        let stream = self.stream.clone();
        let owned: Vec<Owned> = entries.iter().map(|e| self.owned(e)).collect();
        let msgs: Vec<Message> = owned
            .iter()
            .zip(&ids)
            .zip(entries)
            .map(|((o, id), e)| Message {
                payload: o.payload.unwrap_or_default(),
                topic: &stream,
                headers: o
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                    .collect(),
                offset: 0,
                timestamp_ms: i64::try_from(e.id.ms).ok(),
                id,
            })
            .collect();
        let mut bad: Vec<(usize, Error)> = Vec::new();
        let records = match &mut self.payloads {
            Some(decoder) => {
                // entries without the payload field are dead letters, not empty payloads
                let (with, without): (Vec<usize>, Vec<usize>) =
                    (0..entries.len()).partition(|&i| owned[i].payload.is_some());
                let field = String::from_utf8_lossy(&self.body).into_owned();
                bad.extend(without.into_iter().map(|i| {
                    (
                        i,
                        Error::data(format!("the entry has no field \"{field}\"")),
                    )
                }));
                let some: Vec<Message> = with.iter().map(|&i| msgs[i].clone()).collect();
                let out = decoder.decode(&some)?;
                bad.extend(out.bad.into_iter().map(|(j, e)| (with[j], e)));
                out.records
            }
            None => self.fields(entries, &msgs, &mut bad)?,
        };
        bad.sort_by_key(|(i, _)| *i);
        let rejects = bad
            .into_iter()
            .map(|(i, error)| self.reject(entries[i], error))
            .collect();
        Ok(Decoded { records, rejects })
    }

    /// The payload (the body field) and the other fields as text headers of `e`.
    fn owned<'e>(&self, e: &'e Entry) -> Owned<'e> {
        let mut o = Owned {
            payload: None,
            headers: Vec::new(),
        };
        for (k, v) in e.fields.iter().flatten() {
            if self.payloads.is_some() && o.payload.is_none() && *k == self.body {
                o.payload = Some(v);
            } else if self.metadata.contains(&MessageField::Headers) {
                o.headers.push((
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
        }
        o
    }

    /// `format = "fields"`: each field a column, as text or in the declared type.
    fn fields(
        &mut self,
        entries: &[&Entry],
        msgs: &[Message],
        bad: &mut Vec<(usize, Error)>,
    ) -> Result<Option<RecordBatch>> {
        debug_assert_eq!(self.format, EntryFormat::Fields);
        let schema = match &self.declared {
            Some(s) => s.clone(),
            None => text_schema(entries),
        };
        let mut texts: Vec<StringBuilder> = schema
            .fields()
            .iter()
            .map(|_| StringBuilder::new())
            .collect();
        let mut not_text: Vec<Option<String>> = vec![None; entries.len()];
        for (r, e) in entries.iter().enumerate() {
            for (c, f) in schema.fields().iter().enumerate() {
                let v = e
                    .fields
                    .iter()
                    .flatten()
                    .find(|(k, _)| k.as_slice() == f.name().as_bytes())
                    .map(|(_, v)| v);
                match v.map(|v| std::str::from_utf8(v)) {
                    Some(Ok(t)) => texts[c].append_value(t),
                    Some(Err(_)) => {
                        not_text[r]
                            .get_or_insert(format!("field \"{}\" is not UTF-8 text", f.name()));
                        texts[c].append_null();
                    }
                    None if !f.is_nullable() => {
                        not_text[r]
                            .get_or_insert(format!("the entry has no field \"{}\"", f.name()));
                        texts[c].append_null();
                    }
                    None => texts[c].append_null(),
                }
            }
        }
        let text_fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect();
        let cols: Vec<ArrayRef> = texts
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let text = RecordBatch::try_new(Arc::new(Schema::new(text_fields)), cols)?;
        let cast = sluice_formats::cast_text(&text, &schema, false)?;
        let mut keep = Vec::with_capacity(entries.len());
        for (r, (a, b)) in not_text.into_iter().zip(cast.failed).enumerate() {
            match a.or(b) {
                Some(why) => bad.push((r, Error::data(why))),
                None => keep.push(r as u32),
            }
        }
        let values = RecordBatch::try_new(schema, cast.columns)?;
        let values = arrow_select::take::take_record_batch(
            &values,
            &arrow_array::UInt32Array::from(keep.clone()),
        )?;
        let rows: Vec<&Message> = keep.iter().map(|&r| &msgs[r as usize]).collect();
        with_metadata(&values, &rows, &self.metadata).map(Some)
    }

    /// A dead letter of `e`, named by stream and id.
    fn reject(&self, e: &Entry, error: Error) -> Reject {
        let fields = e.fields.as_deref().unwrap_or_default();
        let shown: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        let mut reject = Reject::new(
            self.stream.clone(),
            format!("stream \"{}\" entry {}", self.stream, e.id),
            shown.join(" "),
            error,
        );
        if let Some(body) = e.field(&self.body) {
            reject.bytes = Some(body.to_vec());
        }
        reject.headers = fields
            .iter()
            .filter(|(k, _)| *k != self.body)
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), Some(v.clone())))
            .collect();
        reject
    }
}

/// An entry's payload and other fields.
struct Owned<'e> {
    payload: Option<&'e [u8]>,
    headers: Vec<(String, String)>,
}

/// Every field name of `entries`, in the order first seen, as nullable text.
fn text_schema(entries: &[&Entry]) -> SchemaRef {
    let mut names: Vec<&[u8]> = Vec::new();
    for (k, _) in entries.iter().flat_map(|e| e.fields.iter().flatten()) {
        if !names.contains(&k.as_slice()) {
            names.push(k);
        }
    }
    Arc::new(Schema::new(
        names
            .into_iter()
            .map(|n| Field::new(String::from_utf8_lossy(n), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}
