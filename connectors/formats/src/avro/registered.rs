//! Avro values in the Confluent wire format (magic byte 0, 4-byte schema id, datum).
//!
//! Source side ([`AvroReader`]): writer schemas are fetched from the registry by id,
//! once each; messages decode with their own writer schema, and when the schema
//! changes within a chunk the runs are merged into one batch (columns of either,
//! nullable where a run lacks them). Sink side ([`AvroWriter`]): the Avro schema is
//! made from the value columns and registered once per subject; a schema change
//! registers the new version (the registry checks its compatibility).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{Error, Result};

use super::{confluent_split, AvroDecoder, AvroEncoder, AvroSchema};
use crate::registry::{Registry, RegistryConfig};

/// Decodes Confluent-framed Avro values.
pub struct AvroReader {
    registry: Registry,
    /// Every id seen: its schema, or why its messages are rejects.
    schemas: HashMap<u32, std::result::Result<AvroSchema, String>>,
    decoders: HashMap<u32, AvroDecoder>,
}

/// What a chunk of values decoded to.
pub struct Decoded {
    /// The rows of the good messages, in message order.
    pub batch: Option<RecordBatch>,
    /// Indexes of the good messages.
    pub good: Vec<usize>,
    /// Indexes of the messages that did not decode, and why.
    pub bad: Vec<(usize, Error)>,
    /// Some message decoded with a schema whose top level is a record (its columns
    /// are that record's fields; otherwise the one column `value` holds bare values).
    pub record: bool,
}

impl AvroReader {
    /// A reader fetching writer schemas from the registry `config` names.
    pub fn new(config: &RegistryConfig) -> Result<Self> {
        Ok(AvroReader {
            registry: Registry::new(config)?,
            schemas: HashMap::new(),
            decoders: HashMap::new(),
        })
    }

    /// Fetches the writer schemas of ids not seen before. A registry that does not
    /// answer is an error (retried; the messages wait); an id it does not know, or a
    /// schema that cannot be read, makes its messages rejects.
    pub async fn fetch<'a>(&mut self, values: impl Iterator<Item = &'a [u8]>) -> Result<()> {
        let missing: BTreeSet<u32> = values
            .filter_map(|v| confluent_split(v).ok())
            .map(|(id, _)| id)
            .filter(|id| !self.schemas.contains_key(id))
            .collect();
        for id in missing {
            let entry = match self.registry.schema(id).await? {
                None => Err(format!("schema id {id} is not in the schema registry")),
                Some(text) => AvroSchema::parse(&text).map_err(|e| format!("schema id {id}: {e}")),
            };
            if let Err(e) = &entry {
                tracing::warn!(error = %e, "avro: messages with this schema id are rejected");
            }
            self.schemas.insert(id, entry);
        }
        Ok(())
    }

    /// Decodes the values of a chunk, each with its writer schema;
    /// [`AvroReader::fetch`] must have seen them. A message without a value (None, a
    /// Kafka tombstone) is a bad value, with the error `missing` gives: it has no
    /// row, and a row of nulls would overwrite an upsert target's values.
    pub fn decode<'a>(
        &mut self,
        values: impl Iterator<Item = Option<&'a [u8]>>,
        missing: impl Fn() -> Error,
    ) -> Result<Decoded> {
        let mut runs: Vec<RecordBatch> = Vec::new();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        // the schema id of the run being decoded
        let mut current: Option<u32> = None;
        let mut record = false;
        for (i, value) in values.enumerate() {
            let Some(value) = value else {
                bad.push((i, missing()));
                continue;
            };
            let (id, datum) = match confluent_split(value) {
                Ok(x) => x,
                Err(e) => {
                    bad.push((i, e));
                    continue;
                }
            };
            let schema = match self.schemas.get(&id) {
                Some(Ok(s)) => s,
                Some(Err(why)) => {
                    bad.push((i, Error::data(why.clone())));
                    continue;
                }
                None => {
                    bad.push((i, Error::data(format!("schema id {id} was not fetched"))));
                    continue;
                }
            };
            if current != Some(id) {
                close_run(&mut self.decoders, current, &mut runs)?;
                current = Some(id);
            }
            record |= schema.is_record();
            let decoder = self
                .decoders
                .entry(id)
                .or_insert_with(|| AvroDecoder::new(schema));
            match decoder.push(datum) {
                Ok(()) => good.push(i),
                Err(e) => bad.push((i, Error::data(format!("schema id {id}: {e}")))),
            }
        }
        close_run(&mut self.decoders, current, &mut runs)?;
        Ok(Decoded {
            batch: merge(runs)?,
            good,
            bad,
            record,
        })
    }
}

/// Ends the run being decoded: its rows become one batch of `runs`.
fn close_run(
    decoders: &mut HashMap<u32, AvroDecoder>,
    run: Option<u32>,
    runs: &mut Vec<RecordBatch>,
) -> Result<()> {
    let batch = match run.and_then(|id| decoders.get_mut(&id)) {
        Some(d) => d.flush()?,
        None => return Ok(()),
    };
    if batch.num_rows() > 0 {
        runs.push(batch);
    }
    Ok(())
}

/// One batch of runs in order: every column of any run (the later run's type wins),
/// nullable and null where a run lacks it.
fn merge(mut runs: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    if runs.len() <= 1 {
        return Ok(runs.pop());
    }
    let mut fields: Vec<Field> = Vec::new();
    for run in &runs {
        for f in run.schema().fields() {
            match fields.iter_mut().find(|g| g.name() == f.name()) {
                Some(g) => {
                    let nullable = g.is_nullable() || f.is_nullable();
                    *g = f.as_ref().clone().with_nullable(nullable);
                }
                None => fields.push(f.as_ref().clone()),
            }
        }
    }
    for f in &mut fields {
        if runs.iter().any(|r| r.schema().index_of(f.name()).is_err()) {
            *f = f.clone().with_nullable(true);
        }
    }
    let target: SchemaRef = Arc::new(Schema::new(fields));
    let mut fitted = Vec::with_capacity(runs.len());
    for run in &runs {
        let cols = target
            .fields()
            .iter()
            .map(|f| match run.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => arrow_cast::cast(c, f.data_type()).map_err(|e| {
                    Error::schema(format!(
                        "column \"{}\" changed from {} to {} between Avro schemas: {e}",
                        f.name(),
                        c.data_type(),
                        f.data_type()
                    ))
                }),
                None => Ok(new_null_array(f.data_type(), run.num_rows())),
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        fitted.push(RecordBatch::try_new_with_options(
            target.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(run.num_rows())),
        )?);
    }
    Ok(Some(arrow_select::concat::concat_batches(
        &target, &fitted,
    )?))
}

/// Encodes value (and key) columns as Confluent-framed Avro and registers their
/// schemas.
pub struct AvroWriter {
    registry: Registry,
    record_name: String,
    encoder: Option<AvroEncoder>,
    key_encoder: Option<AvroEncoder>,
    /// Per subject: the schema registered last and its id.
    ids: HashMap<String, (String, u32)>,
}

impl AvroWriter {
    /// A writer registering in the registry `config` names, the value columns as
    /// the record `record_name` (keys as `{record_name}Key`).
    pub fn new(config: &RegistryConfig, record_name: &str) -> Result<Self> {
        Ok(AvroWriter {
            registry: Registry::new(config)?,
            record_name: record_name.to_string(),
            encoder: None,
            key_encoder: None,
            ids: HashMap::new(),
        })
    }

    /// The encoder for value columns of `schema` (made again when the schema changes).
    pub fn encoder(&mut self, schema: &SchemaRef) -> Result<&AvroEncoder> {
        if self
            .encoder
            .as_ref()
            .is_none_or(|e| e.source_schema() != schema)
        {
            self.encoder = Some(AvroEncoder::new(schema, &self.record_name)?);
        }
        self.encoder
            .as_ref()
            .ok_or_else(|| Error::internal("avro encoder missing"))
    }

    /// The encoder for key columns of `schema`: a record `{record_name}Key`, or with
    /// `bare` the one column's own type (made again when the schema changes).
    pub fn key_encoder(&mut self, schema: &SchemaRef, bare: bool) -> Result<&AvroEncoder> {
        let name = format!("{}Key", self.record_name);
        if self
            .key_encoder
            .as_ref()
            .is_none_or(|e| e.source_schema() != schema)
        {
            self.key_encoder = Some(if bare {
                AvroEncoder::unwrapped(schema, &name)?
            } else {
                AvroEncoder::new(schema, &name)?
            });
        }
        self.key_encoder
            .as_ref()
            .ok_or_else(|| Error::internal("avro key encoder missing"))
    }

    /// The id of `schema` (Avro JSON) under `subject`, registering it on first use.
    pub async fn id(&mut self, subject: &str, schema: &str) -> Result<u32> {
        if let Some((known, id)) = self.ids.get(subject) {
            if known == schema {
                return Ok(*id);
            }
        }
        let id = self.registry.register(subject, schema).await?;
        tracing::info!(subject, id, "avro schema registered");
        self.ids
            .insert(subject.to_string(), (schema.to_string(), id));
        Ok(id)
    }
}
