//! Messages of an event stream (NATS, and the brokers after it) into Arrow: the
//! payload in one of the shared formats, plus the metadata columns a source adds on
//! request. A message that does not decode is reported by its index; the others
//! decode. The `_headers` column type is Kafka's too, so sinks take either.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use connector_api::{columns, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::avro::{confluent_header, AvroReader, AvroWriter};
use crate::registry::RegistryConfig;
use crate::JsonDecoder;

/// How a message payload is read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON object per message; its fields are columns (declared in `schema` or
    /// inferred from the first messages).
    #[default]
    Json,
    /// The payload as UTF-8 text, in one column `value`.
    String,
    /// The payload as raw bytes, in one column `value`.
    Bytes,
    /// Avro in the Confluent wire format (magic byte 0, schema id, datum): a source
    /// decodes each message with its writer schema, fetched from `schema_registry` by
    /// id; a sink registers the schema of the columns it writes under
    /// `schema_subject`.
    Avro,
}

/// A metadata column a message source adds on request (`metadata = [...]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageField {
    /// `_topic`: the subject, topic or routing key the message was published to.
    Topic,
    /// `_headers`: `list<struct<key: string, value: string>>`, in message order.
    Headers,
    /// `_offset`: the message's position in its stream (int64).
    Offset,
    /// `_timestamp`: when the broker stored the message, `timestamp(ms, UTC)`.
    Timestamp,
    /// `_id`: the message's id as text, where ids are not numbers (a Redis entry id).
    Id,
}

/// One message as a source read it.
#[derive(Debug, Clone, Default)]
pub struct Message<'a> {
    /// The payload.
    pub payload: &'a [u8],
    /// Subject, topic or routing key.
    pub topic: &'a str,
    /// Header names and values (a value may be absent).
    pub headers: Vec<(&'a str, Option<&'a str>)>,
    /// Position in the stream.
    pub offset: i64,
    /// When the broker stored it, milliseconds since 1970.
    pub timestamp_ms: Option<i64>,
    /// Its id as text, where ids are not numbers.
    pub id: &'a str,
}

/// Decodes batches of messages.
pub struct MessageDecoder {
    format: PayloadFormat,
    json: JsonDecoder,
    metadata: Vec<MessageField>,
    /// Avro payloads: the writer schemas by id.
    avro: Option<AvroReader>,
}

/// What one call of [`MessageDecoder::decode`] produced.
#[derive(Debug)]
pub struct DecodedMessages {
    /// The messages that decoded, in order, with the metadata columns; None when no
    /// schema is known yet (an inferred JSON schema and no message decoded).
    pub records: Option<RecordBatch>,
    /// The messages that did not, by index, with why.
    pub bad: Vec<(usize, Error)>,
}

impl MessageDecoder {
    /// A decoder of `format` payloads (`schema`: the declared JSON columns; None
    /// infers them) adding the `metadata` columns.
    pub fn new(
        format: PayloadFormat,
        schema: Option<SchemaRef>,
        metadata: &[MessageField],
    ) -> Self {
        MessageDecoder {
            format,
            json: JsonDecoder::new(schema),
            metadata: metadata.to_vec(),
            avro: None,
        }
    }

    /// The decoder with the schema registry that Avro payloads need (their writer
    /// schemas are fetched from it); other formats ignore it.
    pub fn with_registry(mut self, registry: Option<&RegistryConfig>) -> Result<Self> {
        if let (PayloadFormat::Avro, Some(r)) = (self.format, registry) {
            self.avro = Some(AvroReader::new(r)?);
        }
        Ok(self)
    }

    /// `msgs` once the writer schemas of their Avro payloads (`payload` of each) are
    /// fetched; call before [`MessageDecoder::decode`] of them. An id the registry
    /// does not know makes its messages bad ones. A registry that does not answer is
    /// an error the runtime retries: the messages wait in `pending` for the source's
    /// next call, never dropped.
    pub async fn fetched<T>(
        &mut self,
        msgs: Vec<T>,
        payload: impl Fn(&T) -> &[u8],
        pending: &mut Option<Vec<T>>,
    ) -> Result<Vec<T>> {
        let Some(reader) = &mut self.avro else {
            return Ok(msgs);
        };
        match reader.fetch(msgs.iter().map(payload)).await {
            Ok(()) => Ok(msgs),
            Err(e) => {
                *pending = Some(msgs);
                Err(e)
            }
        }
    }

    /// Decodes `msgs`.
    pub fn decode(&mut self, msgs: &[Message]) -> Result<DecodedMessages> {
        let mut bad: Vec<(usize, Error)> = Vec::new();
        let mut good: Vec<usize> = Vec::with_capacity(msgs.len());
        let values = match self.format {
            PayloadFormat::Json => self.json_values(msgs, &mut good, &mut bad)?,
            PayloadFormat::String => {
                let mut b = StringBuilder::new();
                for (i, m) in msgs.iter().enumerate() {
                    match std::str::from_utf8(m.payload) {
                        Ok(s) => {
                            b.append_value(s);
                            good.push(i);
                        }
                        Err(e) => bad.push((
                            i,
                            Error::data(format!("the payload is not UTF-8 text: {e}")),
                        )),
                    }
                }
                Some(value_batch(DataType::Utf8, Arc::new(b.finish()))?)
            }
            PayloadFormat::Bytes => {
                let mut b = BinaryBuilder::new();
                for m in msgs {
                    b.append_value(m.payload);
                }
                good.extend(0..msgs.len());
                Some(value_batch(DataType::Binary, Arc::new(b.finish()))?)
            }
            PayloadFormat::Avro => {
                let reader = self.avro.as_mut().ok_or_else(|| {
                    Error::config("format = \"avro\" needs schema_registry")
                        .with_field("schema_registry")
                })?;
                let decoded = reader.decode(msgs.iter().map(|m| Some(m.payload)), || {
                    Error::data("a message without a value")
                })?;
                good.extend(decoded.good);
                bad.extend(decoded.bad);
                decoded.batch
            }
        };
        bad.sort_by_key(|(i, _)| *i);
        let Some(values) = values else {
            return Ok(DecodedMessages { records: None, bad });
        };
        let rows: Vec<&Message> = good.iter().map(|&i| &msgs[i]).collect();
        Ok(DecodedMessages {
            records: Some(with_metadata(&values, &rows, &self.metadata)?),
            bad,
        })
    }

    /// JSON payloads, one line each (a newline inside a JSON value is whitespace).
    fn json_values(
        &mut self,
        msgs: &[Message],
        good: &mut Vec<usize>,
        bad: &mut Vec<(usize, Error)>,
    ) -> Result<Option<RecordBatch>> {
        let mut buf = Vec::with_capacity(msgs.iter().map(|m| m.payload.len() + 1).sum());
        let mut lines = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            // a byte order mark alone counts as empty, as the JSON decoder skips it
            let text = m.payload.strip_prefix(b"\xef\xbb\xbf").unwrap_or(m.payload);
            if text.iter().all(u8::is_ascii_whitespace) {
                bad.push((i, Error::data("empty message")));
                continue;
            }
            let start = buf.len();
            buf.extend_from_slice(m.payload);
            for b in &mut buf[start..] {
                if *b == b'\n' || *b == b'\r' {
                    *b = b' ';
                }
            }
            buf.push(b'\n');
            lines.push(i);
        }
        let decoded = self.json.decode(&buf, lines.len().max(1), true)?;
        let mut failed = vec![false; lines.len()];
        for b in decoded.bad {
            if let Some(&i) = lines.get(b.index) {
                failed[b.index] = true;
                bad.push((i, b.error));
            }
        }
        good.extend(
            lines
                .iter()
                .zip(&failed)
                .filter(|(_, f)| !**f)
                .map(|(&i, _)| i),
        );
        Ok(match decoded.batch {
            Some(b) => Some(b),
            None => self
                .json
                .schema()
                .map(|s| RecordBatch::new_empty(s.clone())),
        })
    }
}

fn value_batch(dt: DataType, col: ArrayRef) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("value", dt, false)])),
        vec![col],
    )?)
}

/// `values` (one row per message of `rows`) with the `metadata` columns after them.
pub fn with_metadata(
    values: &RecordBatch,
    rows: &[&Message],
    metadata: &[MessageField],
) -> Result<RecordBatch> {
    let mut fields: Vec<Arc<Field>> = values.schema().fields().iter().cloned().collect();
    let mut cols: Vec<ArrayRef> = values.columns().to_vec();
    for m in metadata {
        let (field, col) = metadata_column(*m, rows);
        fields.push(Arc::new(field));
        cols.push(col);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

fn metadata_column(m: MessageField, rows: &[&Message]) -> (Field, ArrayRef) {
    match m {
        MessageField::Topic => {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_value(r.topic);
            }
            (
                Field::new(columns::TOPIC, DataType::Utf8, false),
                Arc::new(b.finish()),
            )
        }
        MessageField::Headers => headers_column(rows.iter().map(|r| r.headers.iter().copied())),
        MessageField::Offset => {
            let mut b = Int64Builder::new();
            for r in rows {
                b.append_value(r.offset);
            }
            (
                Field::new(columns::OFFSET, DataType::Int64, false),
                Arc::new(b.finish()),
            )
        }
        MessageField::Timestamp => timestamp_column(rows.iter().map(|r| r.timestamp_ms)),
        MessageField::Id => {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_value(r.id);
            }
            (
                Field::new(columns::ID, DataType::Utf8, false),
                Arc::new(b.finish()),
            )
        }
    }
}

/// The `_timestamp` column of message times in milliseconds since 1970 (UTC).
pub fn timestamp_column(millis: impl Iterator<Item = Option<i64>>) -> (Field, ArrayRef) {
    let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
    for ms in millis {
        b.append_option(ms);
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

/// Records as message payloads, one per row.
pub struct Payloads {
    data: Vec<u8>,
    bounds: Vec<(usize, usize)>,
}

impl Payloads {
    /// The rows of `batch` in `format`: a JSON object of every column, or the bytes of
    /// the column `value` (else the only column; other types than text and binary as
    /// their text) for `string` and `bytes`. A null becomes an empty payload.
    pub fn encode(
        batch: &RecordBatch,
        format: PayloadFormat,
        json: &crate::JsonOptions,
    ) -> Result<Payloads> {
        if format == PayloadFormat::Avro {
            return Err(Error::internal(
                "avro payloads are encoded with their schema's registry id (AvroSink::payloads)",
            ));
        }
        if format == PayloadFormat::Json {
            let (data, ends) = crate::json_lines(batch, json)?;
            let mut start = 0;
            let bounds = ends
                .into_iter()
                .map(|end| {
                    let b = (start, end);
                    start = end + 1;
                    b
                })
                .collect();
            return Ok(Payloads { data, bounds });
        }
        let column = match (batch.column_by_name("value"), batch.num_columns()) {
            (Some(c), _) => c.clone(),
            (None, 1) => batch.column(0).clone(),
            (None, n) => {
                return Err(Error::schema(format!(
                    "a {} payload is the column \"value\" or the only column; the records have {n} columns and no \"value\"",
                    match format {
                        PayloadFormat::String => "string",
                        _ => "bytes",
                    }
                )))
            }
        };
        Payloads::column(&column)
    }

    /// Each value of `column` as bytes: text and binary as they are, lists, structs
    /// and maps as JSON, other types as their text (`12.50`, `2024-01-01T10:00:00Z`).
    /// A null becomes an empty payload (the column's null mask tells them apart).
    pub fn column(column: &ArrayRef) -> Result<Payloads> {
        let mut data = Vec::new();
        let mut bounds = Vec::with_capacity(column.len());
        let mut push = |v: Option<&[u8]>| {
            let start = data.len();
            data.extend_from_slice(v.unwrap_or_default());
            bounds.push((start, data.len()));
        };
        use arrow_array::cast::AsArray;
        match column.data_type() {
            DataType::Binary => column.as_binary::<i32>().iter().for_each(&mut push),
            DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
                arrow_cast::cast(column, &DataType::Binary)?
                    .as_binary::<i32>()
                    .iter()
                    .for_each(&mut push)
            }
            DataType::Utf8 => column
                .as_string::<i32>()
                .iter()
                .for_each(|v| push(v.map(str::as_bytes))),
            t if t.is_nested() => crate::json_texts("value", column)?
                .iter()
                .for_each(|v| push(v.as_deref().map(str::as_bytes))),
            _ => arrow_cast::cast(column, &DataType::Utf8)?
                .as_string::<i32>()
                .iter()
                .for_each(|v| push(v.map(str::as_bytes))),
        }
        Ok(Payloads { data, bounds })
    }

    /// The payload of `row`.
    pub fn get(&self, row: usize) -> &[u8] {
        let (s, e) = self.bounds[row];
        &self.data[s..e]
    }

    /// How many payloads.
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }
}

/// The declared JSON columns of a message source's `schema`, when there are any.
pub fn declared_schema(schema: &[connector_api::FieldSpec]) -> Result<Option<SchemaRef>> {
    match schema.is_empty() {
        true => Ok(None),
        false => connector_api::schema_from_specs(schema).map(Some),
    }
}

/// Every record's schema when a message source's config tells it: declared columns
/// and no metadata columns.
pub fn record_schema(
    schema: &[connector_api::FieldSpec],
    metadata: &[MessageField],
) -> Option<SchemaRef> {
    match metadata.is_empty() {
        true => declared_schema(schema).ok().flatten(),
        false => None,
    }
}

/// Checks a message source's declared `schema`: valid, and only with JSON payloads.
pub fn check_schema(format: PayloadFormat, schema: &[connector_api::FieldSpec]) -> Result<()> {
    if format != PayloadFormat::Json && !schema.is_empty() {
        return Err(
            Error::config("schema declares JSON columns: it needs format = \"json\"")
                .with_field("schema"),
        );
    }
    declared_schema(schema).map(|_| ())
}

/// The column a sink option names (`headers_column = "h"`), or an error naming both.
pub fn named_column<'a>(
    records: &'a RecordBatch,
    name: &str,
    option: &str,
) -> Result<&'a ArrayRef> {
    records.column_by_name(name).ok_or_else(|| {
        Error::schema(format!("{option}: the records have no column \"{name}\"")).with_field(option)
    })
}

/// Each row's text in the column a sink option names (a subject, routing key or
/// topic column), None for a null.
pub fn column_texts(
    records: &RecordBatch,
    name: &str,
    option: &str,
) -> Result<Vec<Option<String>>> {
    let col = named_column(records, name, option)?;
    let text = Payloads::column(col)?;
    // logical nulls: a column of type null has no null mask, every row is null
    let nulls = col.logical_nulls();
    (0..records.num_rows())
        .map(|r| {
            if nulls.as_ref().is_some_and(|n| n.is_null(r)) {
                return Ok(None);
            }
            String::from_utf8(text.get(r).to_vec())
                .map(Some)
                .map_err(|_| {
                    Error::data(format!(
                        "{option}: row {r} of column \"{name}\" is not UTF-8 text"
                    ))
                    .with_field(option)
                })
        })
        .collect()
}

/// Each row's headers from a sink's `headers_column` (none without one).
pub fn record_headers(records: &RecordBatch, headers_column: Option<&str>) -> Result<Vec<Pairs>> {
    match headers_column {
        Some(name) => header_pairs(named_column(records, name, "headers_column")?),
        None => Ok(vec![Vec::new(); records.num_rows()]),
    }
}

/// The payloads a message sink publishes: every column but the reserved ones (unless
/// `include_metadata`) and the `routing` columns the sink consumes (subject, headers),
/// in `format`.
pub fn record_payloads(
    records: &RecordBatch,
    format: PayloadFormat,
    json: &crate::JsonOptions,
    include_metadata: bool,
    routing: &[Option<&str>],
) -> Result<Payloads> {
    Payloads::encode(
        &payload_columns(records, include_metadata, routing)?,
        format,
        json,
    )
}

/// The payloads a message sink publishes in its `format`: through `avro` for Avro
/// (see [`AvroSink::payloads`]), else as [`record_payloads`] encodes them.
pub async fn sink_payloads(
    records: &RecordBatch,
    format: PayloadFormat,
    json: &crate::JsonOptions,
    avro: Option<&mut AvroSink>,
    include_metadata: bool,
    routing: &[Option<&str>],
) -> Result<Payloads> {
    match avro {
        Some(avro) => avro.payloads(records, include_metadata, routing).await,
        None => record_payloads(records, format, json, include_metadata, routing),
    }
}

/// Every column of `records` but the reserved ones (unless `include_metadata`) and
/// the `routing` columns the sink consumes.
fn payload_columns(
    records: &RecordBatch,
    include_metadata: bool,
    routing: &[Option<&str>],
) -> Result<RecordBatch> {
    let skip = |name: &str| {
        (!include_metadata && columns::is_reserved(name)) || routing.contains(&Some(name))
    };
    let keep: Vec<usize> = (0..records.num_columns())
        .filter(|&i| !skip(records.schema().field(i).name()))
        .collect();
    Ok(records.project(&keep)?)
}

/// What a message sink needs to write Avro payloads: the registry client and the
/// subject its schema is registered under.
pub struct AvroSink {
    writer: AvroWriter,
    subject: String,
}

impl AvroSink {
    /// For `format = "avro"` (None for other formats): the registry of the sink's
    /// `schema_registry`, and its `schema_subject`, else `{destination}-value` (the
    /// subject, topic or routing key the sink always publishes to).
    pub fn new(
        format: PayloadFormat,
        registry: Option<&RegistryConfig>,
        subject: Option<&str>,
        destination: Option<&str>,
        record_name: &str,
    ) -> Result<Option<AvroSink>> {
        check_avro_sink(format, registry, subject, destination, record_name)?;
        let (PayloadFormat::Avro, Some(registry)) = (format, registry) else {
            return Ok(None);
        };
        let subject = match (subject, destination) {
            (Some(s), _) => s.to_string(),
            (None, Some(d)) => format!("{d}-value"),
            (None, None) => return Err(Error::internal("avro sink without a subject")),
        };
        Ok(Some(AvroSink {
            writer: AvroWriter::new(registry, record_name)?,
            subject,
        }))
    }

    /// The payloads of `records` (the columns [`record_payloads`] keeps) in the
    /// Confluent wire format, their schema registered under the subject (once, and
    /// again when the columns change: the registry checks the change is compatible).
    pub async fn payloads(
        &mut self,
        records: &RecordBatch,
        include_metadata: bool,
        routing: &[Option<&str>],
    ) -> Result<Payloads> {
        let projected = payload_columns(records, include_metadata, routing)?;
        let schema = self
            .writer
            .encoder(&projected.schema())?
            .schema_json()
            .to_string();
        let id = self.writer.id(&self.subject, &schema).await?;
        let mut data = Vec::with_capacity(projected.get_array_memory_size() + 8);
        let ends = self.writer.encoder(&projected.schema())?.encode(
            &projected,
            &confluent_header(id),
            &mut data,
        )?;
        let mut start = 0;
        let bounds = ends
            .into_iter()
            .map(|end| (std::mem::replace(&mut start, end), end))
            .collect();
        Ok(Payloads { data, bounds })
    }
}

/// Checks a message source's or sink's Avro options without I/O: `format = "avro"` and
/// `schema_registry` together.
pub fn check_registry(format: PayloadFormat, registry: Option<&RegistryConfig>) -> Result<()> {
    let avro = "format = \"avro\"";
    let needed_by = (format == PayloadFormat::Avro).then_some(avro);
    crate::registry::check_avro(needed_by, avro, registry)
}

/// The Avro record name a sink writes when its config names none.
pub fn default_record_name() -> String {
    "Record".into()
}

/// Checks a message sink's Avro options without I/O: `format = "avro"` and
/// `schema_registry` together, and a subject to register under (`schema_subject`, or
/// the fixed `destination` the default is made of).
pub fn check_avro_sink(
    format: PayloadFormat,
    registry: Option<&RegistryConfig>,
    subject: Option<&str>,
    destination: Option<&str>,
    record_name: &str,
) -> Result<()> {
    check_registry(format, registry)?;
    let avro = format == PayloadFormat::Avro;
    if avro {
        crate::avro::check_record_name(record_name)?;
    }
    match (avro, subject) {
        (false, Some(_)) => {
            Err(Error::config("only applies with format = \"avro\"").with_field("schema_subject"))
        }
        (true, Some(s)) if s.trim().is_empty() => {
            Err(Error::config("is empty").with_field("schema_subject"))
        }
        (true, None) if destination.is_none() => Err(Error::config(
            "format = \"avro\" with a destination from a column needs schema_subject, \
             the registry subject the schema is registered under",
        )
        .with_field("schema_subject")),
        _ => Ok(()),
    }
}

/// Refuses the rows of `records` in `found` (row, why) before a message sink sends
/// any of its write: the runtime makes them dead letters or stops, naming them.
pub fn refuse(records: &RecordBatch, mut found: Vec<(usize, String)>, sink: &str) -> Result<()> {
    if found.is_empty() {
        return Ok(());
    }
    found.sort_by_key(|(r, _)| *r);
    found.dedup_by_key(|(r, _)| *r);
    let place = format!("sink \"{sink}\"");
    let refused = crate::scan::refusals(
        records,
        found,
        &place,
        &|row| format!("{place} record {row} of the write"),
        &|why| why.to_string(),
    )?;
    Err(Error::refused(refused))
}

/// A dead letter of a message a source could not decode: its payload as text and
/// bytes, and its headers.
pub fn message_reject(
    split: &str,
    position: String,
    payload: &[u8],
    headers: &[(String, Option<String>)],
    error: Error,
) -> connector_api::Reject {
    let mut reject = connector_api::Reject::new(
        split.to_string(),
        position,
        String::from_utf8_lossy(payload).into_owned(),
        error,
    );
    reject.bytes = Some(payload.to_vec());
    reject.headers = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.as_bytes().to_vec())))
        .collect();
    reject
}

/// A source that reads one message at a time from its broker.
pub trait Pull {
    /// One message as read.
    type Item;

    /// The next message, waiting at most `wait`; None when none came.
    fn pull(
        &mut self,
        wait: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<Option<Self::Item>>> + Send;
}

/// Up to `max` messages of `source`: the first waits up to `idle`, the rest only
/// take what has arrived. An error after some messages came is returned beside them,
/// for the next call: they go out first, and nothing after the failed message is
/// read (a later cumulative acknowledgement would cover it).
pub async fn gather<P: Pull + Send>(
    source: &mut P,
    max: usize,
    idle: std::time::Duration,
) -> Result<(Vec<P::Item>, Option<Error>)> {
    let started = std::time::Instant::now();
    let mut items = Vec::new();
    while items.len() < max {
        let wait = match items.is_empty() {
            true => idle.saturating_sub(started.elapsed()),
            false => std::time::Duration::ZERO,
        };
        match source.pull(wait).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => break,
            Err(e) if items.is_empty() => return Err(e),
            Err(e) => return Ok((items, Some(e))),
        }
    }
    Ok((items, None))
}

/// The type of the `_headers` column: `list<struct<key: string, value: string>>`.
pub fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new_struct("item", header_fields(), true)))
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ])
}

/// The `_headers` column of each message's headers, in order (a null value stays
/// null).
pub fn headers_column<'a, H>(messages: impl Iterator<Item = H>) -> (Field, ArrayRef)
where
    H: Iterator<Item = (&'a str, Option<&'a str>)>,
{
    let mut b = ListBuilder::new(StructBuilder::from_fields(header_fields(), 0))
        .with_field(Arc::new(Field::new_struct("item", header_fields(), true)));
    for headers in messages {
        for (k, v) in headers {
            let s = b.values();
            // the struct builder is made from header_fields: key and value, both text
            s.field_builder::<StringBuilder>(0)
                .expect("key builder")
                .append_value(k);
            s.field_builder::<StringBuilder>(1)
                .expect("value builder")
                .append_option(v);
            s.append(true);
        }
        b.append(true);
    }
    (
        Field::new(columns::HEADERS, headers_type(), true),
        Arc::new(b.finish()),
    )
}

/// A record's headers: names and values (a value may be null).
pub type Pairs = Vec<(String, Option<String>)>;

/// The header pairs of each row of a `list<struct<key, value>>` column (`_headers`,
/// as the message sources write it), for a sink's `headers_column`.
pub fn header_pairs(col: &ArrayRef) -> Result<Vec<Pairs>> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    let DataType::List(_) = col.data_type() else {
        return Err(Error::schema(format!(
            "headers_column is {}, not list<struct<key: string, value: string>>",
            col.data_type()
        ))
        .with_field("headers_column"));
    };
    let list = col.as_list::<i32>();
    let mut out = Vec::with_capacity(list.len());
    for r in 0..list.len() {
        let mut pairs = Vec::new();
        if list.is_valid(r) {
            let item = list.value(r);
            let item = item.as_struct_opt().ok_or_else(|| {
                Error::schema("headers_column items are not struct<key, value>")
                    .with_field("headers_column")
            })?;
            let (Some(k), Some(v)) = (item.column_by_name("key"), item.column_by_name("value"))
            else {
                return Err(
                    Error::schema("headers_column items need fields key and value")
                        .with_field("headers_column"),
                );
            };
            let (k, v) = (
                arrow_cast::cast(k, &DataType::Utf8)?,
                arrow_cast::cast(v, &DataType::Utf8)?,
            );
            let (k, v) = (k.as_string::<i32>(), v.as_string::<i32>());
            for i in 0..item.len() {
                pairs.push((
                    k.value(i).to_string(),
                    v.is_valid(i).then(|| v.value(i).to_string()),
                ));
            }
        }
        out.push(pairs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;

    #[test]
    fn an_avro_record_name_is_checked_before_anything_is_written() {
        let registry: RegistryConfig =
            serde_json::from_value(serde_json::json!({"url": "http://registry:8081"})).unwrap();
        let check = |name: &str| {
            check_avro_sink(PayloadFormat::Avro, Some(&registry), None, Some("t"), name)
        };
        assert!(check("Reading").is_ok());
        let err = check("9 readings").unwrap_err();
        assert_eq!(err.field(), Some("record_name"));
        assert!(
            err.message()
                .contains("\"9 readings\" is not a valid Avro name"),
            "{err}"
        );
        // not avro: the name is not used
        assert!(check_avro_sink(PayloadFormat::Json, None, None, Some("t"), "9").is_ok());
    }

    #[test]
    fn payloads_decode_with_metadata_and_bad_ones_are_named_by_index() {
        let msgs: Vec<Message> = [&b"{\"id\": 1}"[..], b"oops", b"  ", b"{\"id\":\n2}"]
            .iter()
            .enumerate()
            .map(|(i, p)| Message {
                payload: p,
                topic: "orders.eu",
                headers: vec![("h", Some("v"))],
                offset: 10 + i as i64,
                timestamp_ms: Some(1_000),
                id: "",
            })
            .collect();
        let mut d = MessageDecoder::new(
            PayloadFormat::Json,
            None,
            &[
                MessageField::Topic,
                MessageField::Offset,
                MessageField::Headers,
            ],
        );
        let out = d.decode(&msgs).unwrap();
        let records = out.records.unwrap();
        assert_eq!(records.num_rows(), 2);
        let offsets = records.column_by_name("_offset").unwrap();
        assert_eq!(
            offsets
                .as_primitive::<arrow_array::types::Int64Type>()
                .values(),
            &[10, 13]
        );
        assert_eq!(out.bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
        let mut s = MessageDecoder::new(PayloadFormat::String, None, &[]);
        let bad_text = [Message {
            payload: b"\xff",
            ..Default::default()
        }];
        assert_eq!(s.decode(&bad_text).unwrap().bad.len(), 1);
    }
}
