//! Arrow rows to Avro binary datums.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    Time32MillisecondType, Time64MicrosecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_buffer::NullBuffer;
use arrow_cast::CastOptions;
use arrow_schema::{DataType, SchemaRef};
use connector_api::{Error, ErrorKind, Result};

/// Writes the rows of batches of one Arrow schema as Avro datums of the schema made
/// from it ([`AvroEncoder::schema_json`]).
pub struct AvroEncoder {
    source: SchemaRef,
    target: SchemaRef,
    json: String,
}

impl AvroEncoder {
    /// An encoder for batches of `schema`; the Avro record is named `name` (namespace
    /// `sluice`). Fails naming the column when a type has no Avro form.
    pub fn new(schema: &SchemaRef, name: &str) -> Result<Self> {
        let (json, target) = super::schema::from_arrow(schema, name)?;
        Ok(AvroEncoder {
            source: schema.clone(),
            target,
            json: json.to_string(),
        })
    }

    /// An encoder for batches of exactly one column whose Avro schema is that column's
    /// type rather than a record (a primitive message key such as `"string"` or
    /// `["null", "long"]`). A record of one field is written with the same bytes as
    /// the field alone, so only the schema differs from [`AvroEncoder::new`].
    pub fn unwrapped(schema: &SchemaRef, name: &str) -> Result<Self> {
        if schema.fields().len() != 1 {
            return Err(Error::schema(format!(
                "a bare Avro value needs exactly one column, not {}",
                schema.fields().len()
            )));
        }
        let (json, target) = super::schema::from_arrow(schema, name)?;
        let json = json["fields"][0]["type"].to_string();
        Ok(AvroEncoder {
            source: schema.clone(),
            target,
            json,
        })
    }

    /// The Arrow schema this encoder was made for.
    pub fn source_schema(&self) -> &SchemaRef {
        &self.source
    }

    /// The Avro schema, as JSON text (what a schema registry stores).
    pub fn schema_json(&self) -> &str {
        &self.json
    }

    /// Appends `prefix` and the datum of each row to `out`; returns where each row's
    /// message ends in `out`.
    pub fn encode(
        &self,
        batch: &RecordBatch,
        prefix: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Vec<usize>> {
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.target.fields().len());
        for (f, col) in self.target.fields().iter().zip(batch.columns()) {
            let a = if col.data_type() == f.data_type() {
                col.clone()
            } else {
                arrow_cast::cast_with_options(col, f.data_type(), &options)
                    .map_err(|e| Error::data(format!("column \"{}\": {e}", f.name())))?
            };
            arrays.push(a);
        }
        let cols = self
            .target
            .fields()
            .iter()
            .zip(&arrays)
            .map(|(f, a)| Col::new(f.name(), a.as_ref(), f.is_nullable()))
            .collect::<Result<Vec<_>>>()?;
        let mut ends = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            out.extend_from_slice(prefix);
            for c in &cols {
                c.write(row, out)?;
            }
            ends.push(out.len());
        }
        Ok(ends)
    }
}

fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// The shortest big-endian two's complement form of `v`.
fn decimal(out: &mut Vec<u8>, v: i128) {
    let b = v.to_be_bytes();
    let fill = if v < 0 { 0xff } else { 0 };
    let mut start = 0;
    while start < 15 && b[start] == fill && (b[start + 1] & 0x80 == fill & 0x80) {
        start += 1;
    }
    bytes(out, &b[start..]);
}

/// One column of a batch, ready to write row by row.
struct Col<'a> {
    name: &'a str,
    nulls: Option<&'a NullBuffer>,
    /// Written as the union `[null, T]`.
    union: bool,
    enc: Enc<'a>,
}

enum Enc<'a> {
    Null,
    Bool(&'a arrow_array::BooleanArray),
    Int(&'a [i32]),
    Long(&'a [i64]),
    Float(&'a [f32]),
    Double(&'a [f64]),
    Bytes(&'a [i32], &'a [u8]),
    Fixed(&'a arrow_array::FixedSizeBinaryArray),
    Decimal(&'a [i128]),
    List(&'a [i32], Box<Col<'a>>),
    Map(&'a [i32], Box<Col<'a>>, Box<Col<'a>>),
    Record(Vec<Col<'a>>),
}

impl<'a> Col<'a> {
    fn new(name: &'a str, a: &'a dyn Array, nullable: bool) -> Result<Col<'a>> {
        let enc = match a.data_type() {
            DataType::Null => Enc::Null,
            DataType::Boolean => Enc::Bool(a.as_boolean()),
            DataType::Int32 => Enc::Int(a.as_primitive::<Int32Type>().values()),
            DataType::Date32 => Enc::Int(a.as_primitive::<Date32Type>().values()),
            DataType::Time32(_) => Enc::Int(a.as_primitive::<Time32MillisecondType>().values()),
            DataType::Int64 => Enc::Long(a.as_primitive::<Int64Type>().values()),
            DataType::Time64(_) => Enc::Long(a.as_primitive::<Time64MicrosecondType>().values()),
            DataType::Timestamp(..) => Enc::Long(timestamp_values(a)),
            DataType::Float32 => Enc::Float(a.as_primitive::<Float32Type>().values()),
            DataType::Float64 => Enc::Double(a.as_primitive::<Float64Type>().values()),
            DataType::Utf8 => {
                let s = a.as_string::<i32>();
                Enc::Bytes(s.value_offsets(), s.values().as_slice())
            }
            DataType::Binary => {
                let s = a.as_binary::<i32>();
                Enc::Bytes(s.value_offsets(), s.values().as_slice())
            }
            DataType::FixedSizeBinary(_) => Enc::Fixed(a.as_fixed_size_binary()),
            DataType::Decimal128(..) => Enc::Decimal(a.as_primitive::<Decimal128Type>().values()),
            DataType::List(f) => {
                let l = a.as_list::<i32>();
                let item = Col::new("item", l.values().as_ref(), f.is_nullable())?;
                Enc::List(l.value_offsets(), Box::new(item))
            }
            DataType::Map(..) => {
                let m = a.as_map();
                let DataType::Struct(kv) = m.entries().data_type() else {
                    return Err(Error::internal("map entries are not a struct"));
                };
                let keys = Col::new("key", m.keys().as_ref(), false)?;
                let values = Col::new("value", m.values().as_ref(), kv[1].is_nullable())?;
                Enc::Map(m.value_offsets(), Box::new(keys), Box::new(values))
            }
            DataType::Struct(fields) => {
                let s = a.as_struct();
                let cols = fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| Col::new(f.name(), c.as_ref(), f.is_nullable()))
                    .collect::<Result<Vec<_>>>()?;
                Enc::Record(cols)
            }
            other => {
                return Err(Error::internal(format!(
                    "column \"{name}\": {other} was not cast for avro"
                )))
            }
        };
        Ok(Col {
            name,
            nulls: a.nulls(),
            union: nullable && !matches!(enc, Enc::Null),
            enc,
        })
    }

    fn write(&self, row: usize, out: &mut Vec<u8>) -> Result<()> {
        let null = self.nulls.is_some_and(|n| n.is_null(row));
        if self.union {
            if null {
                out.push(0);
                return Ok(());
            }
            out.push(2);
        } else if null && !matches!(self.enc, Enc::Null) {
            return Err(Error::new(
                ErrorKind::Data,
                format!("column \"{}\" is null but not nullable", self.name),
            ));
        }
        match &self.enc {
            Enc::Null => {}
            Enc::Bool(a) => out.push(u8::from(a.value(row))),
            Enc::Int(v) => long(out, i64::from(v[row])),
            Enc::Long(v) => long(out, v[row]),
            Enc::Float(v) => out.extend_from_slice(&v[row].to_le_bytes()),
            Enc::Double(v) => out.extend_from_slice(&v[row].to_le_bytes()),
            Enc::Bytes(offsets, data) => {
                bytes(out, &data[offsets[row] as usize..offsets[row + 1] as usize])
            }
            Enc::Fixed(a) => out.extend_from_slice(a.value(row)),
            Enc::Decimal(v) => decimal(out, v[row]),
            Enc::List(offsets, item) => {
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                if end > start {
                    long(out, (end - start) as i64);
                    for i in start..end {
                        item.write(i, out)?;
                    }
                }
                out.push(0);
            }
            Enc::Map(offsets, keys, values) => {
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                if end > start {
                    long(out, (end - start) as i64);
                    for i in start..end {
                        keys.write(i, out)?;
                        values.write(i, out)?;
                    }
                }
                out.push(0);
            }
            Enc::Record(cols) => {
                for c in cols {
                    c.write(row, out)?;
                }
            }
        }
        Ok(())
    }
}

/// The values of a timestamp column, cast to millis, micros or nanos for writing.
fn timestamp_values(a: &dyn Array) -> &[i64] {
    use arrow_array::types::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    };
    use arrow_schema::TimeUnit;
    match a.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            a.as_primitive::<TimestampMillisecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            a.as_primitive::<TimestampMicrosecondType>().values()
        }
        _ => a.as_primitive::<TimestampNanosecondType>().values(),
    }
}
