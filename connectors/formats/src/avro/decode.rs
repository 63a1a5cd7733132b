//! Avro binary datums to Arrow columns.
//!
//! Columns are plain vectors that can be cut back to a length, so a datum that fails
//! halfway leaves nothing behind: it becomes one reject, and the rows around it stay.

use arrow_array::{make_array, ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use connector_api::{Error, Result};

use super::schema::{AvroSchema, AvroType};
use crate::columns::{offset, Col, Kind};

/// Decodes datums of one writer schema into batches of its Arrow schema.
pub struct AvroDecoder {
    schema: SchemaRef,
    cols: Vec<Col>,
    /// Rows of a record without fields (with fields, the columns count them).
    rows: usize,
}

impl AvroDecoder {
    /// A decoder for datums written with `schema`.
    pub fn new(schema: &AvroSchema) -> Self {
        AvroDecoder {
            schema: schema.arrow().clone(),
            cols: schema.fields.iter().map(|(_, t)| Col::new(t)).collect(),
            rows: 0,
        }
    }

    /// The Arrow schema of the batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows decoded since the last [`AvroDecoder::flush`].
    pub fn len(&self) -> usize {
        self.cols.first().map_or(self.rows, |c| c.valid.len())
    }

    /// True when no rows wait for a flush.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes one datum (the whole of `datum`, nothing may be left over). On error no
    /// part of it stays.
    pub fn push(&mut self, datum: &[u8]) -> Result<()> {
        let before = self.len();
        let mut cur = Cursor { buf: datum, pos: 0 };
        let result = self.cols.iter_mut().try_for_each(|c| c.read(&mut cur));
        let result = result.and_then(|_| {
            if cur.pos == datum.len() {
                Ok(())
            } else {
                Err(Error::data(format!(
                    "avro datum has {} bytes left over after the record (not written with this schema?)",
                    datum.len() - cur.pos
                )))
            }
        });
        match result {
            Ok(()) => {
                self.rows = before + 1;
                Ok(())
            }
            Err(e) => {
                self.cols.iter_mut().for_each(|c| c.truncate(before));
                Err(e)
            }
        }
    }

    /// The rows decoded so far, as one batch; the decoder starts empty again.
    pub fn flush(&mut self) -> Result<RecordBatch> {
        let rows = self.len();
        let columns = self
            .cols
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(c, f)| c.finish(f.data_type()).map(make_array))
            .collect::<Result<Vec<ArrayRef>>>()?;
        self.rows = 0;
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

/// A read position in one datum.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn short() -> Error {
    Error::data("avro datum ends early (truncated, or not written with this schema)")
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(short)?;
        let s = self.buf.get(self.pos..end).ok_or_else(short)?;
        self.pos = end;
        Ok(s)
    }

    fn long(&mut self) -> Result<i64> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(short)?;
            self.pos += 1;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(Error::data("avro datum has a varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| Error::data(format!("avro int {v} is out of range")))
    }

    fn len(&mut self) -> Result<usize> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| Error::data(format!("avro length {n} is negative")))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    /// The item count of the next block of an array or map (0 at the end).
    fn block(&mut self) -> Result<usize> {
        let n = self.long()?;
        if n < 0 {
            self.long()?; // the block's byte size, for skipping
        }
        usize::try_from(n.unsigned_abs())
            .map_err(|_| Error::data(format!("avro block of {n} items")))
    }
}

/// Big-endian two's complement bytes as an i128.
fn decimal_value(b: &[u8]) -> Result<i128> {
    let negative = b.first().is_some_and(|&x| x & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    let (extra, rest) = b.split_at(b.len().saturating_sub(16));
    if extra.iter().any(|&x| x != fill) || (!extra.is_empty() && (rest[0] & 0x80 != 0) != negative)
    {
        return Err(Error::data("avro decimal does not fit in 38 digits"));
    }
    let mut buf = [fill; 16];
    buf[16 - rest.len()..].copy_from_slice(rest);
    Ok(i128::from_be_bytes(buf))
}

impl Col {
    fn new(t: &AvroType) -> Col {
        let (null_index, t) = match t {
            AvroType::Nullable { null_index, inner } => (Some(*null_index), inner.as_ref()),
            t => (None, t),
        };
        let bytes = |utf8, symbols| Kind::Bytes {
            offsets: vec![0],
            data: Vec::new(),
            utf8,
            symbols,
        };
        let kind = match t {
            AvroType::Null => Kind::Null,
            AvroType::Boolean => Kind::Bool(Vec::new()),
            AvroType::Int | AvroType::Date | AvroType::TimeMillis => Kind::Int(Vec::new()),
            AvroType::Long | AvroType::TimeMicros | AvroType::Timestamp { .. } => {
                Kind::Long(Vec::new())
            }
            AvroType::Float => Kind::Float(Vec::new()),
            AvroType::Double => Kind::Double(Vec::new()),
            AvroType::Bytes => bytes(false, None),
            AvroType::String | AvroType::Uuid => bytes(true, None),
            AvroType::Enum(symbols) => bytes(true, Some(symbols.clone())),
            AvroType::Fixed(n) => Kind::Fixed(*n, Vec::new()),
            AvroType::Decimal { fixed, .. } => Kind::Decimal(*fixed, Vec::new()),
            AvroType::Array(item) => Kind::List(vec![0], Box::new(Col::new(item))),
            AvroType::Map(value) => Kind::Map(
                vec![0],
                Box::new(Col::new(&AvroType::String)),
                Box::new(Col::new(value)),
            ),
            AvroType::Record(fields) => {
                Kind::Struct(fields.iter().map(|(_, t)| Col::new(t)).collect())
            }
            AvroType::Nullable { .. } => unreachable!("a union of null and a union is refused"),
        };
        Col {
            null_index,
            valid: Vec::new(),
            kind,
        }
    }

    fn read(&mut self, cur: &mut Cursor<'_>) -> Result<()> {
        if let Some(ni) = self.null_index {
            match cur.long()? {
                b if b == ni => {
                    self.push_null();
                    return Ok(());
                }
                b if b == 1 - ni => {}
                b => return Err(Error::data(format!("avro union branch {b} does not exist"))),
            }
        }
        self.valid.push(true);
        match &mut self.kind {
            Kind::Null => {}
            Kind::Bool(v) => v.push(match cur.take(1)?[0] {
                0 => false,
                1 => true,
                b => return Err(Error::data(format!("avro boolean byte {b}"))),
            }),
            Kind::Int(v) => v.push(cur.int()?),
            Kind::Long(v) => v.push(cur.long()?),
            Kind::Float(v) => v.push(f32::from_le_bytes(
                cur.take(4)?.try_into().expect("4 bytes"),
            )),
            Kind::Double(v) => v.push(f64::from_le_bytes(
                cur.take(8)?.try_into().expect("8 bytes"),
            )),
            Kind::Bytes {
                offsets,
                data,
                utf8,
                symbols,
            } => {
                match symbols {
                    Some(symbols) => {
                        let i = cur.long()?;
                        let s = usize::try_from(i)
                            .ok()
                            .and_then(|i| symbols.get(i))
                            .ok_or_else(|| {
                                Error::data(format!("avro enum index {i} has no symbol"))
                            })?;
                        data.extend_from_slice(s.as_bytes());
                    }
                    None => {
                        let b = cur.bytes()?;
                        if *utf8 {
                            std::str::from_utf8(b).map_err(|e| {
                                Error::data(format!("avro string is not UTF-8: {e}"))
                            })?;
                        }
                        data.extend_from_slice(b);
                    }
                }
                offsets.push(offset(data.len())?);
            }
            Kind::Fixed(n, data) => data.extend_from_slice(cur.take(*n)?),
            Kind::Decimal(fixed, v) => {
                let b = match fixed {
                    Some(n) => cur.take(*n)?,
                    None => cur.bytes()?,
                };
                v.push(decimal_value(b)?);
            }
            Kind::List(offsets, item) => {
                let mut n = item.valid.len();
                loop {
                    let count = cur.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        item.read(cur)?;
                    }
                    n += count;
                }
                offsets.push(offset(n)?);
            }
            Kind::Map(offsets, keys, values) => {
                let mut n = keys.valid.len();
                loop {
                    let count = cur.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        keys.read(cur)?;
                        values.read(cur)?;
                    }
                    n += count;
                }
                offsets.push(offset(n)?);
            }
            Kind::Struct(children) => {
                for c in children {
                    c.read(cur)?;
                }
            }
        }
        Ok(())
    }
}
