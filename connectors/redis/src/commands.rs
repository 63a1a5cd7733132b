//! Records as Redis commands: `XADD` entries, hashes (`DEL` + `HSET`) and strings
//! (`SET`), change records as deletes; rows that cannot be written are found before
//! anything is sent.

use arrow_array::{Array, ArrayRef, RecordBatch};
use connector_api::{columns, Error, ErrorKind, Result};
use redis::{cmd, Cmd};
use sluice_formats::changes::{self, Apply};
use sluice_formats::messages::{sink_payloads, AvroSink, Payloads};

use crate::config::{RedisSinkConfig, SinkMode};

/// The commands of `records`, in order, each with the record it writes; or the rows
/// that cannot be written (a null key, an entry without fields) as a refusal. Avro
/// payloads are encoded by `avro`, which registers their schema.
pub async fn commands(
    config: &RedisSinkConfig,
    sink: &str,
    records: &RecordBatch,
    avro: Option<&mut AvroSink>,
) -> Result<Vec<(Cmd, usize)>> {
    let mut found: Vec<(usize, String)> = Vec::new();
    let out = match config.mode {
        SinkMode::Stream => stream(config, records, avro, &mut found).await?,
        SinkMode::Hash | SinkMode::String => keyed(config, records, avro, &mut found).await?,
    };
    sluice_formats::messages::refuse(records, found, sink)?;
    Ok(out)
}

/// The columns written: all but the reserved ones (unless `include_metadata`); a
/// stream keeps `_op`, so change records stay changes.
fn written(config: &RedisSinkConfig, records: &RecordBatch) -> Vec<usize> {
    (0..records.num_columns())
        .filter(|&i| {
            let name = records.schema().field(i).name().clone();
            config.include_metadata
                || !columns::is_reserved(&name)
                || (config.mode == SinkMode::Stream && name == columns::OP)
        })
        .collect()
}

/// The payloads of `records` (the columns `written` keeps already, metadata ones
/// included) in the sink's format.
async fn payloads(
    config: &RedisSinkConfig,
    records: &RecordBatch,
    avro: Option<&mut AvroSink>,
) -> Result<Payloads> {
    let format = config.format.payload_format();
    sink_payloads(records, format, &config.json, avro, true, &[]).await
}

async fn stream(
    config: &RedisSinkConfig,
    records: &RecordBatch,
    avro: Option<&mut AvroSink>,
    found: &mut Vec<(usize, String)>,
) -> Result<Vec<(Cmd, usize)>> {
    let key = config.stream.clone().unwrap_or_default();
    let records = records.project(&written(config, records))?;
    let xadd = |r: usize| {
        let mut c = cmd("XADD");
        c.arg(&key);
        if let Some(n) = config.maxlen {
            c.arg("MAXLEN").arg("~").arg(n);
        }
        c.arg("*");
        (c, r)
    };
    let mut out: Vec<(Cmd, usize)> = (0..records.num_rows()).map(xadd).collect();
    match config.format.payload() {
        Some(_) => {
            let payloads = payloads(config, &records, avro).await?;
            for (c, r) in &mut out {
                c.arg(&config.body_field).arg(payloads.get(*r));
            }
        }
        None => {
            let mut fields = vec![0usize; records.num_rows()];
            for (i, col) in records.columns().iter().enumerate() {
                let name = records.schema().field(i).name().clone();
                let values = Payloads::column(col)?;
                for (c, r) in &mut out {
                    if col.is_valid(*r) {
                        c.arg(&name).arg(values.get(*r));
                        fields[*r] += 1;
                    }
                }
            }
            for (r, n) in fields.into_iter().enumerate() {
                if n == 0 {
                    found.push((
                        r,
                        "every column is null: a stream entry needs a field".into(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

async fn keyed(
    config: &RedisSinkConfig,
    records: &RecordBatch,
    avro: Option<&mut AvroSink>,
    found: &mut Vec<(usize, String)>,
) -> Result<Vec<(Cmd, usize)>> {
    let (data, runs) = changes::runs(records)?;
    let keys = keys(config, &data, found)?;
    let data = data.project(&written(config, &data))?;
    let values: Option<Payloads> = match config.mode {
        SinkMode::String => Some(payloads(config, &data, avro).await?),
        _ => None,
    };
    let columns: Vec<(String, ArrayRef, Payloads)> = match config.mode {
        SinkMode::Hash => data
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok((
                    data.schema().field(i).name().clone(),
                    c.clone(),
                    Payloads::column(c)?,
                ))
            })
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(data.num_rows() * 2);
    for run in runs {
        if run.apply == Apply::Truncate {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "a truncate (record {} of the write) would empty every key under \"{}\"; the redis sink does not apply truncates: delete the keys, then skip the record",
                    run.start, config.key_prefix
                ),
            ));
        }
        for (r, key) in keys.iter().enumerate().skip(run.start).take(run.len) {
            let Some(key) = key else { continue };
            match (run.apply, config.mode) {
                (Apply::Delete, _) => out.push((cmd("DEL").arg(key).clone(), r)),
                (_, SinkMode::String) => {
                    let v = values.as_ref().map(|p| p.get(r)).unwrap_or_default();
                    out.push((cmd("SET").arg(key).arg(v).clone(), r));
                }
                _ => {
                    // the hash becomes the record: fields of null columns go
                    out.push((cmd("DEL").arg(key).clone(), r));
                    let mut h = cmd("HSET");
                    h.arg(key);
                    let mut any = false;
                    for (name, col, text) in &columns {
                        if col.is_valid(r) {
                            h.arg(name).arg(text.get(r));
                            any = true;
                        }
                    }
                    if any {
                        out.push((h, r));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Each row's key: the prefix and the key columns' text joined by `:`; None (and a
/// refusal) when one is null.
fn keys(
    config: &RedisSinkConfig,
    data: &RecordBatch,
    found: &mut Vec<(usize, String)>,
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut cols = Vec::with_capacity(config.key_columns.len());
    for name in &config.key_columns {
        let col = data.column_by_name(name).ok_or_else(|| {
            Error::schema(format!(
                "key_columns: the records have no column \"{name}\""
            ))
            .with_field("key_columns")
        })?;
        cols.push((name, col.clone(), Payloads::column(col)?));
    }
    let mut out = Vec::with_capacity(data.num_rows());
    for r in 0..data.num_rows() {
        let mut key = config.key_prefix.as_bytes().to_vec();
        let mut null = None;
        for (i, (name, col, text)) in cols.iter().enumerate() {
            if col.is_null(r) {
                null = Some(*name);
                break;
            }
            if i > 0 {
                key.push(b':');
            }
            key.extend_from_slice(text.get(r));
        }
        match null {
            Some(name) => {
                found.push((r, format!("key column \"{name}\" is null")));
                out.push(None);
            }
            None => out.push(Some(key)),
        }
    }
    Ok(out)
}
