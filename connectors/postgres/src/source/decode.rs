//! What both snapshot orders do with a chunk of binary COPY: decode its tuples into
//! Arrow on every core, and make batches of them that carry the table's offset.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use connector_api::{Batch, Error, Offsets, Reject, Result};

use crate::binary::Decoded;

use super::table::Table;

/// An empty batch carrying `table`'s offset as it stands (a table or range done).
pub(super) fn offset_batch(table: &Table) -> Result<Batch> {
    let mut offsets = Offsets::new();
    offsets.set_typed(table.split.clone(), &table.offset)?;
    Ok(Batch::new(
        RecordBatch::new_empty(Arc::new(Schema::empty())),
        offsets,
    ))
}

/// Decodes the tuples of `buf` in `parts` (from [`crate::binary::tuples`]) on up to
/// `cores` threads at a time, each part its own batch. CPU-heavy: off the runtime's
/// queue, so the sink's task runs meanwhile.
pub(super) fn decode_parts(
    table: &Table,
    buf: &[u8],
    parts: &[&[usize]],
    cores: usize,
) -> Vec<Result<Decoded>> {
    let schema = &table.table_schema;
    let keys = table.key_columns();
    let pg_types: Vec<&str> = table.columns.iter().map(|c| c.pg.as_str()).collect();
    let pg_types = &pg_types[..];
    connector_api::blocking(|| {
        let mut decoded = Vec::with_capacity(parts.len());
        for wave in parts.chunks(cores.max(1)) {
            if let [part] = wave {
                decoded.push(crate::binary::decode(buf, part, schema, pg_types, keys));
                continue;
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|part| {
                        scope
                            .spawn(move || crate::binary::decode(buf, part, schema, pg_types, keys))
                    })
                    .collect();
                decoded.extend(handles.into_iter().map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::internal("binary COPY decoder panicked")))
                }));
            });
        }
        decoded
    })
}

/// The batch of a decoded part, with `table`'s offset as it stands (advanced past the
/// part) and the part's rejects, each named by its key or `ctid` and carrying its
/// row as text.
pub(super) fn part_batch(table: &Table, part: Decoded, now_ms: i64) -> Result<Batch> {
    let mut offsets = Offsets::new();
    offsets.set_typed(table.split.clone(), &table.offset)?;
    let mut batch = Batch::new(table.records(part.batch, now_ms)?, offsets);
    batch.rejects = part
        .rejects
        .into_iter()
        .map(|(key, why, row)| {
            let position = match table.physical {
                true => format!("table {} ctid {}", table.split, key.join(", ")),
                false => format!("table {} key ({})", table.split, key.join(", ")),
            };
            Reject::new(table.split.clone(), position, row, Error::data(why))
        })
        .collect();
    Ok(batch)
}
