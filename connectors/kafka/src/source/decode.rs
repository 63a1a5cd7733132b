//! Messages into Arrow: the value format, the requested metadata columns, and the
//! messages that become rejects.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Int32Builder, Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use connector_api::{columns, Batch, Error, Offsets, Positions, Reject, Result};

use sluice_formats::messages::{headers_column, timestamp_column};

use crate::config::{KeyFormat, Metadata, ValueFormat};

use super::*;

impl KafkaSource {
    /// Decodes messages into one batch with the requested metadata columns; messages
    /// that do not decode become rejects.
    pub(super) fn decode(&mut self, chunk: &Messages, offsets: Offsets) -> Result<Batch> {
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
                let decoded = avro.decode(msgs.iter().map(|m| chunk.payload(m)), tombstone)?;
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
            let decoded =
                avro.decode(keyed.iter().map(|&r| chunk.key(&msgs[good[r]])), tombstone)?;
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
                checkpoint: false,
                positions: None,
            });
        };
        let values = if keep.len() == values.num_rows() {
            values
        } else {
            let idx = arrow_array::UInt32Array::from_iter_values(keep.iter().map(|&r| r as u32));
            arrow_select_take(&values, &idx)?
        };
        let rows: Vec<&Msg> = keep.iter().map(|&r| &msgs[good[r]]).collect();
        let positions = positions(&rows);
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
                // text, checked above; a null value stays null
                Metadata::Headers => headers_column(rows.iter().map(|r| {
                    r.headers.iter().map(|(k, v)| {
                        let text = v.as_deref().and_then(|v| std::str::from_utf8(v).ok());
                        (k.as_str(), text)
                    })
                })),
                Metadata::Timestamp => timestamp_column(rows.iter().map(|r| r.timestamp)),
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
            checkpoint: false,
            positions,
        })
    }
}

/// Each record's partition and offset: an offset names the same message in every
/// read. (A delivered message's offset is never negative; None if one were.)
fn positions(rows: &[&Msg]) -> Option<Positions> {
    let mut positions = Positions::new();
    // the split of the last partition seen: messages come in runs of one partition
    let mut last: Option<(&str, i32, u32)> = None;
    for m in rows {
        let split = match last {
            Some((topic, partition, split)) if *topic == *m.topic && partition == m.partition => {
                split
            }
            _ => {
                let split = positions.split(&split_id(&m.topic, m.partition));
                last = Some((&m.topic, m.partition, split));
                split
            }
        };
        positions.push_at(split, u128::try_from(m.offset).ok()?);
    }
    Some(positions)
}

pub(super) fn arrow_select_take(
    batch: &RecordBatch,
    idx: &arrow_array::UInt32Array,
) -> Result<RecordBatch> {
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

/// The `_key` column of Avro keys decoded into `batch`, row `take[i]` for message `i`
/// (null: a message without key): a struct of a record key's fields, or the bare value.
/// `last` carries the field from chunk to chunk for the type of a chunk whose keys are
/// all null.
pub(super) fn key_column(
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
pub(super) fn append_utf8(b: &mut StringBuilder, bytes: Option<&[u8]>, what: &str) -> Result<()> {
    match bytes.map(std::str::from_utf8) {
        None => b.append_null(),
        Some(Ok(s)) => b.append_value(s),
        Some(Err(e)) => return Err(Error::data(format!("{what} is not UTF-8: {e}"))),
    }
    Ok(())
}

pub(super) fn value_batch(dt: DataType, col: ArrayRef) -> Result<RecordBatch> {
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
pub(super) fn reject(chunk: &Messages, m: &Msg, error: Error) -> Reject {
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
