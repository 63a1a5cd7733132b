//! A batch encoded as Kafka messages: values (JSON, CSV, Avro, raw bytes, ...), keys,
//! topics, headers, timestamps and partitions per row.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use connector_api::{columns, Error, ErrorKind, Result};
use rdkafka::message::{Header, OwnedHeaders};
use sluice_formats::avro::{confluent_header, AvroWriter};
use sluice_formats::json_lines;

use crate::config::{KafkaSinkConfig, KeyFormat, ValueFormat};

/// A batch turned into message parts.
pub(super) struct Encoded<'a> {
    values: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes between one value and the next in `values` (a newline for JSON).
    sep: usize,
    /// `format = "avro"`: the Avro schema of the values (JSON).
    avro_schema: Option<String>,
    /// `key_format = "avro"`: the Avro schema of the keys (JSON).
    key_schema: Option<String>,
    raw: Option<ArrayRef>,
    keys: Option<KeyData>,
    topics: Option<ArrayRef>,
    headers: Option<&'a ArrayRef>,
    timestamps: Option<ArrayRef>,
    partitions: Option<ArrayRef>,
}

enum KeyData {
    Raw(ArrayRef),
    Json(Vec<u8>, Vec<usize>),
    /// Framed Avro datums, where each ends, and for a nullable `_key` the datum of
    /// each row (None: no key).
    Avro(Vec<u8>, Vec<usize>, Option<Vec<Option<usize>>>),
}

/// Where the Avro key datum of `row` lies in its buffer (None: the row has no key).
fn avro_key_range(
    ends: &[usize],
    map: &Option<Vec<Option<usize>>>,
    row: usize,
) -> Option<std::ops::Range<usize>> {
    let d = match map {
        Some(map) => map[row]?,
        None => row,
    };
    Some(if d == 0 { 0 } else { ends[d - 1] }..ends[d])
}

/// Key columns to write as Avro.
struct KeyBatch {
    /// The keys to encode, one row per message with a key.
    batch: RecordBatch,
    /// Written as the one column's bare type rather than a record.
    bare: bool,
    /// When some messages have no key: each message's row in `batch`.
    rows: Option<Vec<Option<usize>>>,
}

/// The key columns to write as Avro: the `key` columns as a record, or `_key` passed
/// on (a struct as a record, anything else bare; a null `_key` is a message without
/// key). None: no key.
fn avro_key_batch(config: &KafkaSinkConfig, rb: &RecordBatch) -> Result<Option<KeyBatch>> {
    if !config.key.is_empty() {
        let idx = key_indexes(config, rb)?;
        return Ok(Some(KeyBatch {
            batch: rb.project(&idx)?,
            bare: false,
            rows: None,
        }));
    }
    let Some(col) = rb.column_by_name(columns::KEY) else {
        return Ok(None);
    };
    // a null `_key` is a message without key: only the other rows are encoded
    let (col, rows) = match col.logical_nulls().filter(|n| n.null_count() > 0) {
        None => (col.clone(), None),
        Some(nulls) => {
            let keep = arrow_array::BooleanArray::new(nulls.inner().clone(), None);
            let mut next = 0;
            let rows = (0..col.len())
                .map(|r| {
                    nulls.is_valid(r).then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            (arrow_select::filter::filter(col, &keep)?, Some(rows))
        }
    };
    let rows_left = arrow_array::RecordBatchOptions::new().with_row_count(Some(col.len()));
    let (batch, bare) = match col.data_type() {
        DataType::Struct(fields) => (
            RecordBatch::try_new_with_options(
                Arc::new(arrow_schema::Schema::new(fields.clone())),
                col.as_struct().columns().to_vec(),
                &rows_left,
            )?,
            false,
        ),
        // the bare schema is the type itself: the rows left all have a value
        dt => (
            RecordBatch::try_new(
                Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
                    columns::KEY,
                    dt.clone(),
                    false,
                )])),
                vec![col.clone()],
            )?,
            true,
        ),
    };
    Ok(Some(KeyBatch { batch, bare, rows }))
}

/// The indexes of the `key` columns.
fn key_indexes(config: &KafkaSinkConfig, rb: &RecordBatch) -> Result<Vec<usize>> {
    let schema = rb.schema();
    config
        .key
        .iter()
        .map(|k| {
            schema.index_of(k).map_err(|_| {
                Error::new(
                    ErrorKind::Schema,
                    format!("key: the records have no column \"{k}\""),
                )
            })
        })
        .collect()
}

fn column<'b>(rb: &'b RecordBatch, name: &str, option: &str) -> Result<&'b ArrayRef> {
    rb.column_by_name(name).ok_or_else(|| {
        Error::new(
            ErrorKind::Schema,
            format!("{option}: the records have no column \"{name}\""),
        )
    })
}

/// Raw bytes of a string or binary column (other types as their text).
fn raw_column(col: &ArrayRef) -> Result<ArrayRef> {
    Ok(match col.data_type() {
        DataType::Utf8 | DataType::Binary | DataType::LargeUtf8 | DataType::LargeBinary => {
            col.clone()
        }
        _ => arrow_cast::cast(col, &DataType::Utf8)?,
    })
}

fn raw_value(col: &ArrayRef, row: usize) -> Option<&[u8]> {
    if col.is_null(row) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(row).as_bytes(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(row).as_bytes(),
        DataType::Binary => col.as_binary::<i32>().value(row),
        DataType::LargeBinary => col.as_binary::<i64>().value(row),
        _ => return None,
    })
}

impl<'a> Encoded<'a> {
    pub(super) fn new(
        config: &KafkaSinkConfig,
        rb: &'a RecordBatch,
        mut avro: Option<&mut AvroWriter>,
    ) -> Result<Self> {
        let schema = rb.schema();
        let optional = |explicit: &Option<String>,
                        reserved: &str,
                        option: &str|
         -> Result<Option<&'a ArrayRef>> {
            match explicit {
                Some(name) => column(rb, name, option).map(Some),
                None => Ok(rb.column_by_name(reserved)),
            }
        };
        let topics = match &config.topic_column {
            Some(name) => Some(raw_column(column(rb, name, "topic_column")?)?),
            None => None,
        };
        let headers = optional(&config.headers_column, columns::HEADERS, "headers_column")?;
        if let Some(h) = headers {
            check_headers_type(h.data_type())?;
        }
        let timestamps = match optional(
            &config.timestamp_column,
            columns::TIMESTAMP,
            "timestamp_column",
        )? {
            Some(c) => match c.data_type() {
                DataType::Timestamp(_, tz) => {
                    let ms = arrow_cast::cast(
                        c,
                        &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
                    )?;
                    Some(arrow_cast::cast(&ms, &DataType::Int64)?)
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Schema,
                        format!("timestamp_column: the column is {other}, a timestamp is needed"),
                    ))
                }
            },
            None => None,
        };
        let partitions = match &config.partition_column {
            Some(name) => Some(arrow_cast::cast(
                column(rb, name, "partition_column")?,
                &DataType::Int32,
            )?),
            None => None,
        };
        let mut key_schema = None;
        let keys = if config.key_format == KeyFormat::Avro {
            match avro_key_batch(config, rb)? {
                None => None,
                Some(KeyBatch { batch, bare, rows }) => {
                    let encoder = avro
                        .as_deref_mut()
                        .ok_or_else(|| Error::internal("kafka: avro key format without a writer"))?
                        .key_encoder(&batch.schema(), bare)
                        .map_err(|e| e.with_field("key"))?;
                    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 8);
                    // the schema id is set per topic once it is registered
                    let ends = encoder.encode(&batch, &confluent_header(0), &mut out)?;
                    key_schema = Some(encoder.schema_json().to_string());
                    Some(KeyData::Avro(out, ends, rows))
                }
            }
        } else if config.key.is_empty() {
            rb.column_by_name(columns::KEY)
                .map(raw_column)
                .transpose()?
                .map(KeyData::Raw)
        } else if config.key_format == KeyFormat::Json {
            let idx = key_indexes(config, rb)?;
            let (text, ends) = json_lines(&rb.project(&idx)?, &config.json)?;
            Some(KeyData::Json(text, ends))
        } else {
            Some(KeyData::Raw(raw_column(column(
                rb,
                &config.key[0],
                "key",
            )?)?))
        };
        // value: every column but the metadata columns and the routing columns
        let skip = |name: &str| {
            (!config.include_metadata && columns::is_reserved(name))
                || config.topic_column.as_deref() == Some(name)
                || config.headers_column.as_deref() == Some(name)
                || config.partition_column.as_deref() == Some(name)
        };
        let value_idx: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !skip(f.name()))
            .map(|(i, _)| i)
            .collect();
        let mut avro_schema = None;
        let (values, ends, raw) = match config.format {
            ValueFormat::Json => {
                let projected = rb.project(&value_idx)?;
                let (t, e) = json_lines(&projected, &config.json)?;
                (t, e, None)
            }
            ValueFormat::Avro => {
                let projected = rb.project(&value_idx)?;
                let encoder = avro
                    .ok_or_else(|| Error::internal("kafka: avro format without a writer"))?
                    .encoder(&projected.schema())?;
                let mut out = Vec::with_capacity(projected.get_array_memory_size());
                // the schema id is set per topic once it is registered
                let ends = encoder.encode(&projected, &confluent_header(0), &mut out)?;
                avro_schema = Some(encoder.schema_json().to_string());
                (out, ends, None)
            }
            ValueFormat::String | ValueFormat::Bytes => {
                let col = match rb.column_by_name("value") {
                    Some(c) => c,
                    None if value_idx.len() == 1 => rb.column(value_idx[0]),
                    None => {
                        return Err(Error::new(
                            ErrorKind::Schema,
                            "format: a string or bytes value needs a column \"value\" or exactly one column",
                        ))
                    }
                };
                (Vec::new(), Vec::new(), Some(raw_column(col)?))
            }
        };
        Ok(Encoded {
            values,
            ends,
            sep: usize::from(config.format == ValueFormat::Json),
            avro_schema,
            key_schema,
            raw,
            keys,
            topics,
            headers,
            timestamps,
            partitions,
        })
    }

    pub(super) fn topic<'b>(&'b self, row: usize, default: Option<&'b str>) -> Result<&'b str> {
        if let Some(t) = &self.topics {
            if let Some(b) = raw_value(t, row) {
                return std::str::from_utf8(b)
                    .map_err(|_| Error::data(format!("record {row}: the topic is not UTF-8")));
            }
        }
        default.ok_or_else(|| {
            Error::data(format!(
                "record {row}: no topic (the topic column is null and no topic is set)"
            ))
        })
    }

    pub(super) fn payload(&self, row: usize) -> Option<&[u8]> {
        match &self.raw {
            Some(col) => raw_value(col, row),
            None => Some(&self.values[self.start(row)..self.ends[row]]),
        }
    }

    /// Where the value of `row` starts in `values`.
    fn start(&self, row: usize) -> usize {
        if row == 0 {
            0
        } else {
            self.ends[row - 1] + self.sep
        }
    }

    /// Registers the Avro schemas (values, keys) under the subjects of each topic
    /// written to, and writes their ids into the wire-format headers of the topic's
    /// messages.
    pub(super) async fn set_schema_ids(
        &mut self,
        config: &KafkaSinkConfig,
        avro: &mut AvroWriter,
    ) -> Result<()> {
        // the ids of each row's topic (value, key), registered once per topic; a key
        // schema only once a row of the topic has a key
        let mut by_topic: HashMap<&str, (Option<u32>, Option<u32>)> = HashMap::new();
        let mut ids = Vec::with_capacity(self.rows());
        for row in 0..self.rows() {
            let topic = self.topic(row, config.topic.as_deref())?;
            let known = by_topic.get(topic).copied().unwrap_or_default();
            let mut pair = known;
            if let (None, Some(schema)) = (pair.0, &self.avro_schema) {
                pair.0 = Some(avro.id(&config.subject_for(topic), schema).await?);
            }
            let keyed = matches!(&self.keys, Some(KeyData::Avro(_, ends, map))
                if avro_key_range(ends, map, row).is_some());
            if let (None, Some(schema), true) = (pair.1, &self.key_schema, keyed) {
                pair.1 = Some(avro.id(&config.key_subject_for(topic), schema).await?);
            }
            if pair != known {
                by_topic.insert(topic, pair);
            }
            ids.push(pair);
        }
        for (row, (value_id, key_id)) in ids.into_iter().enumerate() {
            if let Some(id) = value_id {
                let start = self.start(row);
                self.values[start..start + 5].copy_from_slice(&confluent_header(id));
            }
            if let (Some(id), Some(KeyData::Avro(out, ends, map))) = (key_id, &mut self.keys) {
                if let Some(datum) = avro_key_range(ends, map, row) {
                    out[datum.start..datum.start + 5].copy_from_slice(&confluent_header(id));
                }
            }
        }
        Ok(())
    }

    /// Records in the batch.
    fn rows(&self) -> usize {
        match &self.raw {
            Some(col) => col.len(),
            None => self.ends.len(),
        }
    }

    pub(super) fn key(&self, row: usize) -> Option<&[u8]> {
        match self.keys.as_ref()? {
            KeyData::Raw(col) => raw_value(col, row),
            KeyData::Json(text, ends) => {
                let start = if row == 0 { 0 } else { ends[row - 1] + 1 };
                Some(&text[start..ends[row]])
            }
            KeyData::Avro(out, ends, map) => Some(&out[avro_key_range(ends, map, row)?]),
        }
    }

    pub(super) fn headers(&self, row: usize) -> Option<OwnedHeaders> {
        let mut h = OwnedHeaders::new();
        let any = self.each_header(row, |key, value| {
            h = std::mem::replace(&mut h, OwnedHeaders::new()).insert(Header { key, value });
        });
        any.then_some(h)
    }

    /// Calls `f` with the name and value of each header of `row`, as they are sent;
    /// false when the row has no headers.
    fn each_header(&self, row: usize, mut f: impl FnMut(&str, Option<&[u8]>)) -> bool {
        let Some(col) = self.headers else {
            return false;
        };
        if col.is_null(row) {
            return false;
        }
        let list = col.as_list::<i32>();
        let entries = list.value(row);
        let s = entries.as_struct();
        let Ok(values) = raw_column(s.column(1)) else {
            return false;
        };
        for i in 0..s.len() {
            let key = raw_value(s.column(0), i)
                .and_then(|k| std::str::from_utf8(k).ok())
                .unwrap_or("");
            f(key, raw_value(&values, i));
        }
        true
    }

    /// The size librdkafka gives the message of `row` to check against
    /// `message.max.bytes` (its record overhead at most, key, value, and each header's
    /// name and value with their varint lengths): a message over it is refused before
    /// anything is sent.
    pub(super) fn wire_size(&self, row: usize) -> usize {
        /// Length, attributes, timestamp, offset, key and value lengths, header count.
        const RECORD_OVERHEAD: usize = 36;
        let varint = |n: usize| {
            let mut z = (n as u64) << 1;
            let mut size = 1;
            while z >= 0x80 {
                z >>= 7;
                size += 1;
            }
            size
        };
        let mut headers = 0;
        self.each_header(row, |name, value| {
            let (name, value) = (name.len(), value.map_or(0, <[u8]>::len));
            headers += name + value + varint(name) + varint(value);
        });
        RECORD_OVERHEAD
            + self.key(row).map_or(0, <[u8]>::len)
            + self.payload(row).map_or(0, <[u8]>::len)
            + headers
    }

    pub(super) fn timestamp(&self, row: usize) -> Option<i64> {
        let t = self.timestamps.as_ref()?;
        (!t.is_null(row)).then(|| t.as_primitive::<Int64Type>().value(row))
    }

    pub(super) fn partition(&self, row: usize) -> Option<i32> {
        let p = self.partitions.as_ref()?;
        (!p.is_null(row)).then(|| p.as_primitive::<Int32Type>().value(row))
    }
}

fn check_headers_type(dt: &DataType) -> Result<()> {
    if let DataType::List(item) = dt {
        if let DataType::Struct(fields) = item.data_type() {
            let text = |t: &DataType| {
                matches!(
                    t,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary
                )
            };
            if fields.len() == 2 && text(fields[0].data_type()) && text(fields[1].data_type()) {
                return Ok(());
            }
        }
    }
    Err(Error::new(
        ErrorKind::Schema,
        format!("headers: the column is {dt}, list<struct<key: string, value: string>> is needed"),
    ))
}
