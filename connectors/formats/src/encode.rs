//! Encoders: Arrow batches to JSON lines, CSV or Parquet on any `Write`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use connector_api::{Error, Result};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::json_encoders::FastEncoders;
use crate::parquet_writer::ParallelParquet;
use crate::{CsvOptions, DecimalJson, Format, JsonOptions, ParquetCompression, ParquetOptions};

/// Counts bytes on their way to the inner writer.
struct Counting<W> {
    inner: W,
    bytes: Arc<AtomicU64>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Inner<W: Write + Send> {
    /// The writer, and how its encoders write (for the parallel path's writers).
    Json(arrow_json::LineDelimitedWriter<Counting<W>>, FastEncoders),
    /// With `csv.nested = "json"`: nested columns become their JSON text first.
    Csv(Box<arrow_csv::Writer<Counting<W>>>, bool),
    Parquet(Box<ParallelParquet<Counting<W>>>),
}

/// `batch` with each nested (list, struct, map) column replaced by a string column of
/// its values' JSON text, for a CSV writer.
fn nested_as_json(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let texts = crate::json_texts(field.name(), column)?;
        fields.push(arrow_schema::Field::new(
            field.name(),
            arrow_schema::DataType::Utf8,
            field.is_nullable(),
        ));
        columns.push(Arc::new(arrow_array::StringArray::from(texts)) as arrow_array::ArrayRef);
    }
    Ok(RecordBatch::try_new(
        Arc::new(arrow_schema::Schema::new(fields)),
        columns,
    )?)
}

/// Writes batches of one schema in one format.
pub struct Encoder<W: Write + Send> {
    inner: Inner<W>,
    rows: u64,
    bytes: Arc<AtomicU64>,
}

impl<W: Write + Send> Encoder<W> {
    /// An encoder writing `format` for `schema` into `out`, with the options of that
    /// format.
    pub fn new(
        format: Format,
        schema: SchemaRef,
        out: W,
        (json, csv, parquet): (&JsonOptions, &CsvOptions, &ParquetOptions),
    ) -> Result<Self> {
        let bytes = Arc::new(AtomicU64::new(0));
        let out = Counting {
            inner: out,
            bytes: bytes.clone(),
        };
        let inner = match format {
            Format::Json => {
                let encoders = FastEncoders {
                    decimals_as_strings: json.decimals == DecimalJson::String,
                };
                Inner::Json(json_writer(out, encoders), encoders)
            }
            Format::Csv => {
                csv.refuse_nested(&schema)?;
                Inner::Csv(
                    Box::new(
                        arrow_csv::WriterBuilder::new()
                            .with_header(csv.header)
                            .with_delimiter(csv.delimiter as u8)
                            .with_quote(csv.quote as u8)
                            .with_null(csv.null_value.clone().unwrap_or_default())
                            .build(out),
                    ),
                    csv.nested == crate::NestedCsv::Json,
                )
            }
            Format::Parquet => {
                let compression = match parquet.compression {
                    ParquetCompression::Zstd => {
                        Compression::ZSTD(ZstdLevel::try_new(1).map_err(parquet_error)?)
                    }
                    ParquetCompression::Snappy => Compression::SNAPPY,
                    ParquetCompression::None => Compression::UNCOMPRESSED,
                };
                let props = WriterProperties::builder()
                    .set_compression(compression)
                    .set_max_row_group_size(parquet.row_group_size.max(1))
                    .build();
                Inner::Parquet(Box::new(
                    ParallelParquet::try_new(out, schema, props).map_err(parquet_error)?,
                ))
            }
        };
        Ok(Encoder {
            inner,
            rows: 0,
            bytes,
        })
    }

    /// Encodes one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Json(w, encoders) if batch.num_rows() >= PARALLEL_JSON_ROWS => {
                let out = w.get_mut();
                for part in encode_json_parallel(batch, *encoders)? {
                    out.write_all(&part)?;
                }
            }
            Inner::Json(w, _) => w.write(batch)?,
            Inner::Csv(w, true) => w.write(&nested_as_json(batch)?)?,
            Inner::Csv(w, false) => w.write(batch)?,
            Inner::Parquet(w) => w.write(batch).map_err(parquet_error)?,
        }
        Ok(())
    }

    /// Rows encoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of output so far, including what a Parquet writer still buffers.
    pub fn bytes(&self) -> u64 {
        match &self.inner {
            Inner::Json(..) | Inner::Csv(..) => self.bytes.load(Ordering::Relaxed),
            Inner::Parquet(w) => w.bytes() as u64,
        }
    }

    /// Writes any footer and returns the writer, flushed.
    pub fn finish(self) -> Result<W> {
        let mut out = match self.inner {
            Inner::Json(mut w, _) => {
                w.finish()?;
                w.into_inner()
            }
            Inner::Csv(w, _) => w.into_inner(),
            Inner::Parquet(w) => w.into_inner().map_err(parquet_error)?,
        };
        out.flush()?;
        Ok(out.inner)
    }
}

/// Batches at least this long are JSON-encoded on parallel threads.
const PARALLEL_JSON_ROWS: usize = 4096;

fn json_writer<W: Write>(out: W, encoders: FastEncoders) -> arrow_json::LineDelimitedWriter<W> {
    arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_encoder_factory(Arc::new(encoders))
        .build::<_, arrow_json::writer::LineDelimited>(out)
}

/// Encodes slices of `batch` as JSON lines on parallel threads, in order. JSON lines
/// have no header or footer, so the parts concatenate to the same bytes as one pass.
fn encode_json_parallel(batch: &RecordBatch, encoders: FastEncoders) -> Result<Vec<Vec<u8>>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let rows = batch.num_rows();
    let per = rows.div_ceil(threads);
    let slices: Vec<RecordBatch> = (0..rows)
        .step_by(per)
        .map(|s| batch.slice(s, per.min(rows - s)))
        .collect();
    let encode = |b: &RecordBatch| -> Result<Vec<u8>> {
        let mut w = json_writer(Vec::with_capacity(b.num_rows() * 256), encoders);
        w.write(b)?;
        w.finish()?;
        Ok(w.into_inner())
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = slices[1..]
            .iter()
            .map(|b| scope.spawn(move || encode(b)))
            .collect();
        let mut parts = vec![encode(&slices[0])?];
        for h in handles {
            parts.push(
                h.join()
                    .map_err(|_| Error::internal("json encoding thread panicked"))??,
            );
        }
        Ok(parts)
    })
}

fn parquet_error(err: parquet::errors::ParquetError) -> Error {
    Error::data("parquet").with_source(err)
}

/// `batch` as JSON lines, one per record: the text and where each line ends (at its
/// newline), for writers of one message per record.
pub fn json_lines(batch: &RecordBatch, json: &JsonOptions) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut enc = Encoder::new(
        Format::Json,
        batch.schema(),
        Vec::with_capacity(batch.get_array_memory_size()),
        (json, &CsvOptions::default(), &ParquetOptions::default()),
    )?;
    enc.write(batch)?;
    let text = enc.finish()?;
    let ends: Vec<usize> = memchr::memchr_iter(b'\n', &text).collect();
    if ends.len() != batch.num_rows() {
        return Err(Error::internal(
            "json encoding: one line per record expected",
        ));
    }
    Ok((text, ends))
}
