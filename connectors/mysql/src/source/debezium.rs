//! Debezium's envelope around change records (`envelope = "debezium"`): `before`,
//! `after`, `source`, `op` and `ts_ms`, with the `source` block of Debezium's MySQL
//! connector (`server_id`, `gtid`, `file`, `pos`, `row`, `thread`, `ts_ms`, `db`,
//! `table`), so Debezium consumers read the records unchanged.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Fields, SchemaRef};
use connector_api::{Error, Result};

/// Where one change came from.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// When the server wrote it (ms since the epoch; the read time in a snapshot).
    pub ts_ms: i64,
    /// The server that wrote it (0 in a snapshot).
    pub server_id: i64,
    /// Its transaction's GTID.
    pub gtid: Option<String>,
    /// Binlog file and position of its event (of the snapshot, in a snapshot).
    pub file: String,
    /// See `file`.
    pub pos: i64,
    /// Its row within the event.
    pub row: i32,
    /// The thread (connection) that wrote it, when the binlog says.
    pub thread: Option<i64>,
    /// Read by the snapshot.
    pub snapshot: bool,
}

/// The table and pipeline the records are of.
#[derive(Clone, Debug)]
pub struct Place {
    /// Debezium's logical server name: the pipeline's.
    pub name: String,
    /// Database.
    pub db: String,
    /// Table.
    pub table: String,
}

fn source_fields() -> Fields {
    vec![
        Field::new("version", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new("snapshot", DataType::Utf8, false),
        Field::new("db", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("server_id", DataType::Int64, false),
        Field::new("gtid", DataType::Utf8, true),
        Field::new("file", DataType::Utf8, false),
        Field::new("pos", DataType::Int64, false),
        Field::new("row", DataType::Int32, false),
        Field::new("thread", DataType::Int64, true),
    ]
    .into()
}

/// The schema of the records for rows of `row`.
pub fn schema(row: &SchemaRef) -> SchemaRef {
    sluice_formats::changes::debezium_schema(row, source_fields(), false)
}

/// One image of each row (`present[i]` false: the row has none, its values are
/// nulls) as a struct column of the envelope's `schema` (its `before`, or `after`).
fn image(schema: &SchemaRef, values: Vec<ArrayRef>, present: &[bool]) -> Result<ArrayRef> {
    let DataType::Struct(fields) = schema.field(0).data_type() else {
        return Err(Error::internal("an envelope whose before is no struct"));
    };
    let nulls = NullBuffer::from(present.to_vec());
    Ok(Arc::new(StructArray::try_new(
        fields.clone(),
        values,
        Some(nulls),
    )?))
}

/// The records: `before` and `after` images (columns of `row`, with which rows have
/// one), their `ops`, where each came from, and the time they are read (`now_ms`).
pub fn records(
    row: &SchemaRef,
    (before, has_before): (Vec<ArrayRef>, &[bool]),
    (after, has_after): (Vec<ArrayRef>, &[bool]),
    ops: Vec<&'static str>,
    origins: &[Origin],
    place: &Place,
    now_ms: i64,
) -> Result<RecordBatch> {
    let n = ops.len();
    let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
    let source = StructArray::try_new(
        source_fields(),
        vec![
            text(env!("CARGO_PKG_VERSION")),
            text("mysql"),
            text(&place.name),
            Arc::new(Int64Array::from_iter_values(
                origins.iter().map(|o| o.ts_ms),
            )),
            Arc::new(StringArray::from_iter_values(origins.iter().map(|o| {
                if o.snapshot {
                    "true"
                } else {
                    "false"
                }
            }))),
            text(&place.db),
            text(&place.table),
            Arc::new(Int64Array::from_iter_values(
                origins.iter().map(|o| o.server_id),
            )),
            Arc::new(StringArray::from_iter(
                origins.iter().map(|o| o.gtid.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                origins.iter().map(|o| o.file.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(origins.iter().map(|o| o.pos))),
            Arc::new(Int32Array::from_iter_values(origins.iter().map(|o| o.row))),
            Arc::new(Int64Array::from_iter(origins.iter().map(|o| o.thread))),
        ],
        None,
    )?;
    let schema = schema(row);
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            image(&schema, before, has_before)?,
            image(&schema, after, has_after)?,
            Arc::new(source),
            Arc::new(StringArray::from(ops)),
            Arc::new(Int64Array::from(vec![now_ms; n])),
        ],
    )?)
}

/// Snapshot rows (`records`, read at `file` `pos` of the binlog) as `r` records.
pub fn snapshot(records: RecordBatch, file: &str, pos: u64, place: &Place) -> Result<RecordBatch> {
    let row = records.schema();
    let n = records.num_rows();
    let nulls: Vec<ArrayRef> = row
        .fields()
        .iter()
        .map(|f| arrow_array::new_null_array(f.data_type(), n))
        .collect();
    let now = now_ms();
    let origin = Origin {
        ts_ms: now,
        file: file.to_string(),
        pos: i64::try_from(pos).unwrap_or(i64::MAX),
        snapshot: true,
        ..Origin::default()
    };
    self::records(
        &row,
        (nulls, &vec![false; n]),
        (records.columns().to_vec(), &vec![true; n]),
        vec!["r"; n],
        &vec![origin; n],
        place,
        now,
    )
}

/// The time now, in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
