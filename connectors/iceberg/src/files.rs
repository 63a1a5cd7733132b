//! The data files of one commit: Parquet encoded on every core (the formats crate's
//! `ParallelParquet`, the writer of the `file` and `s3` sinks), one open file per
//! partition, rolled at the target size, each described for the manifest from its own
//! footer.
//!
//! iceberg-rust's writer encodes a row group's columns one after the other on the
//! caller's thread and computes its statistics again; this writes the same files (the
//! table's Arrow schema with field ids, zstd) at the speed of the plain Parquet sinks.

use std::cmp::Ordering;
use std::collections::HashMap;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use connector_api::{Error, Result};
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::io::{FileIO, FileWrite};
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum, PartitionKey, PrimitiveType,
    Schema, SchemaRef as TableSchemaRef, Struct, Type,
};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;
use sluice_formats::ParallelParquet;

use crate::error::lake_error;

/// One data file being written.
struct OpenFile {
    path: String,
    partition: Option<PartitionKey>,
    parquet: ParallelParquet<Vec<u8>>,
    out: Box<dyn FileWrite>,
}

/// The data files of one commit, open per partition.
pub(crate) struct DataFiles {
    io: FileIO,
    locations: DefaultLocationGenerator,
    names: DefaultFileNameGenerator,
    /// The table's schema, as data files are described in.
    schema: TableSchemaRef,
    /// The same as Arrow with field ids, as data files are written in.
    arrow: SchemaRef,
    spec_id: i32,
    splitter: Option<RecordBatchPartitionSplitter>,
    props: WriterProperties,
    target_size: usize,
    open: HashMap<Struct, OpenFile>,
    closed: Vec<DataFile>,
    table: String,
}

impl DataFiles {
    /// Files for `table` in its current schema and partition spec, written as `arrow`
    /// (the table's schema with field ids) with `props`, each closed at `target_size`
    /// bytes; file names start with `prefix`.
    pub(crate) fn new(
        table: &Table,
        arrow: SchemaRef,
        props: WriterProperties,
        target_size: usize,
        prefix: String,
    ) -> Result<Self> {
        let md = table.metadata();
        let name = table.identifier().to_string();
        let locations =
            DefaultLocationGenerator::new(md.clone()).map_err(|e| lake_error(&name, e))?;
        let spec = md.default_partition_spec();
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(
                RecordBatchPartitionSplitter::try_new_with_computed_values(
                    md.current_schema().clone(),
                    spec.clone(),
                )
                .map_err(|e| lake_error(&name, e))?,
            )
        };
        Ok(DataFiles {
            io: table.file_io().clone(),
            locations,
            names: DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet),
            schema: md.current_schema().clone(),
            arrow,
            spec_id: spec.spec_id(),
            splitter,
            props,
            target_size,
            open: HashMap::new(),
            closed: Vec::new(),
            table: name,
        })
    }

    /// Writes `batch` (in the table's Arrow schema) to the files of its partitions.
    pub(crate) async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        match &self.splitter {
            None => self.write_part(None, &batch).await,
            Some(splitter) => {
                let parts = splitter
                    .split(&batch)
                    .map_err(|e| lake_error(&format!("partitioning rows of {}", self.table), e))?;
                for (key, part) in parts {
                    self.write_part(Some(key), &part).await?;
                }
                Ok(())
            }
        }
    }

    async fn write_part(&mut self, key: Option<PartitionKey>, rows: &RecordBatch) -> Result<()> {
        let slot = key
            .as_ref()
            .map_or_else(Struct::empty, |k| k.data().clone());
        if !self.open.contains_key(&slot) {
            let path = self
                .locations
                .generate_location(key.as_ref(), &self.names.generate_file_name());
            let parquet =
                ParallelParquet::try_new(Vec::new(), self.arrow.clone(), self.props.clone())
                    .map_err(|e| parquet_error(&path, e))?;
            let out = create(self.io.clone(), &path).await?;
            let file = OpenFile {
                path,
                partition: key,
                parquet,
                out,
            };
            self.open.insert(slot.clone(), file);
        }
        let file = self
            .open
            .get_mut(&slot)
            .ok_or_else(|| Error::internal("no data file open"))?;
        // encoding takes the CPU: other tasks (the part uploads) go on meanwhile
        connector_api::blocking(|| file.parquet.write(rows))
            .map_err(|e| parquet_error(&file.path, e))?;
        file.send().await?;
        if file.parquet.bytes() >= self.target_size {
            if let Some(file) = self.open.remove(&slot) {
                let done = file.close(&self.schema, self.spec_id).await?;
                self.closed.push(done);
            }
        }
        Ok(())
    }

    /// Closes every open file; the data files written since the last call.
    pub(crate) async fn close(mut self) -> Result<Vec<DataFile>> {
        for (_, file) in self.open.drain() {
            self.closed
                .push(file.close(&self.schema, self.spec_id).await?);
        }
        Ok(self.closed)
    }
}

/// Opens `path` for writing.
async fn create(io: FileIO, path: &str) -> Result<Box<dyn FileWrite>> {
    io.new_output(path)
        .map_err(|e| lake_error(path, e))?
        .writer()
        .await
        .map_err(|e| lake_error(path, e))
}

impl OpenFile {
    /// Hands the bytes encoded so far to the file.
    async fn send(&mut self) -> Result<()> {
        let bytes = std::mem::take(self.parquet.inner_mut());
        if bytes.is_empty() {
            return Ok(());
        }
        self.out
            .write(Bytes::from(bytes))
            .await
            .map_err(|e| lake_error(&format!("writing {}", self.path), e))
    }

    /// Writes the footer, closes the file, and describes it for the manifest.
    async fn close(mut self, schema: &Schema, spec_id: i32) -> Result<DataFile> {
        let meta = connector_api::blocking(|| self.parquet.finish())
            .map_err(|e| parquet_error(&self.path, e))?;
        self.send().await?;
        self.out
            .close()
            .await
            .map_err(|e| lake_error(&format!("closing {}", self.path), e))?;
        let size = self.parquet.bytes() as u64;
        let partition = self
            .partition
            .as_ref()
            .map_or_else(Struct::empty, |k| k.data().clone());
        describe(schema, &meta, size, self.path, partition, spec_id)
    }
}

fn parquet_error(path: &str, e: parquet::errors::ParquetError) -> Error {
    Error::new(
        connector_api::ErrorKind::Storage,
        format!("encoding {path}: {e}"),
    )
}

/// The manifest entry of a written data file: its size and rows, and per column the
/// bytes, values, nulls and (for columns outside lists and maps) the lower and upper
/// bounds the footer's statistics give, as the readers' file pruning uses them. A
/// bound or null count is left out when one row group lacks it (statistics truncated,
/// as long strings are, or absent): a bound over the other row groups only would
/// prune the file away from a filter its rows match.
fn describe(
    schema: &Schema,
    meta: &ParquetMetaData,
    size: u64,
    path: String,
    partition: Struct,
    spec_id: i32,
) -> Result<DataFile> {
    let mut sizes: HashMap<i32, u64> = HashMap::new();
    let mut values: HashMap<i32, u64> = HashMap::new();
    // None: a row group without a null count
    let mut nulls: HashMap<i32, Option<u64>> = HashMap::new();
    let mut bounds: HashMap<i32, (Bound, Bound)> = HashMap::new();
    for group in meta.row_groups() {
        for chunk in group.columns() {
            let descr = chunk.column_descr();
            let info = descr.self_type().get_basic_info();
            if !info.has_id() {
                continue;
            }
            let id = info.id();
            *sizes.entry(id).or_default() += chunk.compressed_size() as u64;
            *values.entry(id).or_default() += chunk.num_values() as u64;
            let stats = chunk.statistics();
            let count = nulls.entry(id).or_insert(Some(0));
            *count = count
                .zip(stats.and_then(Statistics::null_count_opt))
                .map(|(a, b)| a + b);
            let Some(Type::Primitive(ty)) = schema.field_by_id(id).map(|f| f.field_type.as_ref())
            else {
                continue;
            };
            if descr.max_rep_level() > 0 {
                continue;
            }
            let (lower, upper) = bounds.entry(id).or_default();
            match stats {
                Some(stats) => {
                    let min = (stats.min_bytes_opt(), stats.min_is_exact());
                    lower.merge(ty, stats, min, Ordering::Less);
                    let max = (stats.max_bytes_opt(), stats.max_is_exact());
                    upper.merge(ty, stats, max, Ordering::Greater);
                }
                None => {
                    lower.unknown = true;
                    upper.unknown = true;
                }
            }
        }
    }
    let nulls = nulls
        .into_iter()
        .filter_map(|(id, n)| Some((id, n?)))
        .collect();
    let mut lower = HashMap::new();
    let mut upper = HashMap::new();
    for (id, (l, u)) in bounds {
        lower.extend(l.known().map(|v| (id, v)));
        upper.extend(u.known().map(|v| (id, v)));
    }
    let offsets = meta
        .row_groups()
        .iter()
        .filter_map(|g| g.file_offset())
        .collect();
    DataFileBuilder::default()
        .content(DataContentType::Data)
        .file_path(path.clone())
        .file_format(DataFileFormat::Parquet)
        .partition(partition)
        .partition_spec_id(spec_id)
        .record_count(meta.file_metadata().num_rows() as u64)
        .file_size_in_bytes(size)
        .column_sizes(sizes)
        .value_counts(values)
        .null_value_counts(nulls)
        .lower_bounds(lower)
        .upper_bounds(upper)
        .split_offsets(Some(offsets))
        .build()
        .map_err(|e| Error::internal(format!("describing data file {path}: {e}")))
}

/// One side (lower or upper) of a column's bounds over a file's row groups so far.
#[derive(Default)]
struct Bound {
    value: Option<Datum>,
    /// A row group whose bound is not known exactly: the file has none on this side.
    unknown: bool,
}

impl Bound {
    /// Takes one row group's statistic (its bytes, and whether it is exact); it
    /// replaces the value when it compares as `keep` (`Less` for a lower bound).
    fn merge(
        &mut self,
        ty: &PrimitiveType,
        stats: &Statistics,
        (bytes, exact): (Option<&[u8]>, bool),
        keep: Ordering,
    ) {
        match bound(ty, stats, bytes, exact) {
            Some(v) => {
                if self
                    .value
                    .as_ref()
                    .is_none_or(|m| v.partial_cmp(m) == Some(keep))
                {
                    self.value = Some(v);
                }
            }
            // no bytes: every value of the row group is null (or NaN)
            None => self.unknown |= bytes.is_some(),
        }
    }

    fn known(self) -> Option<Datum> {
        self.value.filter(|_| !self.unknown)
    }
}

/// A statistics bound as an Iceberg value of `ty`, when there is one and it is exact
/// (none: every value of the row group is null or NaN, or the bound is truncated). The
/// bound's bytes are Parquet's plain encoding, which is Iceberg's single-value
/// serialization for every type the table maps to (little-endian numbers and times,
/// UTF-8, big-endian decimals in fixed-length bytes, uuids) except decimals stored as
/// 32 or 64-bit integers.
fn bound(
    ty: &PrimitiveType,
    stats: &Statistics,
    bytes: Option<&[u8]>,
    exact: bool,
) -> Option<Datum> {
    let bytes = bytes.filter(|_| exact)?;
    let decimal = |v: i128| Datum::try_from_bytes(&v.to_be_bytes(), ty.clone());
    let datum = match (ty, stats) {
        (PrimitiveType::Decimal { .. }, Statistics::Int32(_)) => {
            fixed(bytes).and_then(|b| decimal(i32::from_le_bytes(b).into()))
        }
        (PrimitiveType::Decimal { .. }, Statistics::Int64(_)) => {
            fixed(bytes).and_then(|b| decimal(i64::from_le_bytes(b).into()))
        }
        _ => Datum::try_from_bytes(bytes, ty.clone()),
    };
    datum.ok()
}

fn fixed<const N: usize>(bytes: &[u8]) -> iceberg::Result<[u8; N]> {
    bytes.try_into().map_err(|_| {
        iceberg::Error::new(
            iceberg::ErrorKind::DataInvalid,
            format!("a bound of {} bytes where {N} were expected", bytes.len()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Decimal128Array, Int64Array, StringArray};
    use iceberg::arrow::schema_to_arrow_schema;
    use iceberg::spec::NestedField;

    fn primitive(t: PrimitiveType) -> Box<Type> {
        Box::new(Type::Primitive(t))
    }

    #[test]
    fn bounds_cover_every_row_group_or_are_left_out() {
        let decimal = |precision| PrimitiveType::Decimal {
            precision,
            scale: 2,
        };
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", *primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "name", *primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "amount", *primitive(decimal(9))).into(),
                NestedField::optional(4, "big", *primitive(decimal(20))).into(),
            ])
            .build()
            .unwrap();
        let arrow = Arc::new(schema_to_arrow_schema(&schema).unwrap());
        let long = "z".repeat(100);
        let batch = RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(Int64Array::from(vec![5, 3, 9, 1, 4, 2])) as ArrayRef,
                Arc::new(StringArray::from(vec![
                    Some("b"),
                    Some("a"),
                    Some(long.as_str()),
                    Some("c"),
                    None,
                    Some("d"),
                ])),
                Arc::new(
                    Decimal128Array::from(vec![Some(100), Some(-250), None, None, Some(7), None])
                        .with_precision_and_scale(9, 2)
                        .unwrap(),
                ),
                Arc::new(
                    Decimal128Array::from(vec![
                        Some(10),
                        Some(-10i128.pow(19)),
                        Some(-5),
                        Some(10i128.pow(19)),
                        None,
                        Some(0),
                    ])
                    .with_precision_and_scale(20, 2)
                    .unwrap(),
                ),
            ],
        )
        .unwrap();
        // three row groups of two rows; the long name's maximum is truncated
        let props = WriterProperties::builder()
            .set_max_row_group_size(2)
            .build();
        let mut parquet = ParallelParquet::try_new(Vec::new(), arrow, props).unwrap();
        parquet.write(&batch).unwrap();
        let meta = parquet.finish().unwrap();
        assert_eq!(meta.num_row_groups(), 3);
        let size = parquet.bytes() as u64;
        assert_eq!(size, parquet.inner_mut().len() as u64);
        let file = describe(&schema, &meta, size, "f.parquet".into(), Struct::empty(), 0).unwrap();

        assert_eq!(file.record_count(), 6);
        assert_eq!(file.file_size_in_bytes(), size);
        let lower = file.lower_bounds();
        let upper = file.upper_bounds();
        assert_eq!((&lower[&1], &upper[&1]), (&Datum::long(1), &Datum::long(9)));
        assert_eq!(lower[&2], Datum::string("a"));
        assert!(!upper.contains_key(&2), "a truncated maximum is no bound");
        let dec = |v: i128, p| Datum::try_from_bytes(&v.to_be_bytes(), decimal(p)).unwrap();
        // an all-null row group takes nothing from the bounds
        assert_eq!((&lower[&3], &upper[&3]), (&dec(-250, 9), &dec(100, 9)));
        assert_eq!(
            (&lower[&4], &upper[&4]),
            (&dec(-10i128.pow(19), 20), &dec(10i128.pow(19), 20))
        );
        assert_eq!(file.null_value_counts()[&2], 1);
        assert_eq!(file.null_value_counts()[&3], 3);
        assert_eq!(file.value_counts()[&4], 6);
        assert_eq!(file.split_offsets().map(|o| o.len()), Some(3));
    }
}
