//! Columns being decoded, as plain vectors that can be cut back to a length: a record
//! that fails halfway leaves nothing behind and becomes one reject, while the records
//! around it stay. Shared by the Avro and the typed JSON decoders.

use std::sync::Arc;

use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow_data::ArrayDataBuilder;
use arrow_schema::DataType;
use connector_api::{Error, Result};

/// One column being built; its validity says which rows are null.
pub(crate) struct Col {
    /// Branch number of null when the type is a `[null, T]` union.
    pub(crate) null_index: Option<i64>,
    pub(crate) valid: Vec<bool>,
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    Null,
    Bool(Vec<bool>),
    /// int, date, time-millis
    Int(Vec<i32>),
    /// long, time-micros, timestamps
    Long(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    /// bytes and strings (`utf8`: checked), enums (symbols)
    Bytes {
        offsets: Vec<i32>,
        data: Vec<u8>,
        utf8: bool,
        symbols: Option<Arc<[String]>>,
    },
    Fixed(usize, Vec<u8>),
    Decimal(Option<usize>, Vec<i128>),
    List(Vec<i32>, Box<Col>),
    Map(Vec<i32>, Box<Col>, Box<Col>),
    Struct(Vec<Col>),
}

/// An offset into a column's values, which Arrow's 32-bit offsets must hold.
pub(crate) fn offset(len: usize) -> Result<i32> {
    i32::try_from(len).map_err(|_| Error::data("batch is over 2 GiB in one column"))
}

impl Col {
    /// Appends a null (a placeholder value under a false validity bit).
    pub(crate) fn push_null(&mut self) {
        self.valid.push(false);
        match &mut self.kind {
            Kind::Null => {}
            Kind::Bool(v) => v.push(false),
            Kind::Int(v) => v.push(0),
            Kind::Long(v) => v.push(0),
            Kind::Float(v) => v.push(0.0),
            Kind::Double(v) => v.push(0.0),
            Kind::Bytes { offsets, .. } | Kind::List(offsets, _) | Kind::Map(offsets, ..) => {
                offsets.push(*offsets.last().expect("offsets start with 0"))
            }
            Kind::Fixed(n, data) => data.resize(data.len() + *n, 0),
            Kind::Decimal(_, v) => v.push(0),
            Kind::Struct(children) => children.iter_mut().for_each(Col::push_null),
        }
    }

    /// Cuts the column back to `n` rows.
    pub(crate) fn truncate(&mut self, n: usize) {
        if self.valid.len() <= n {
            return;
        }
        self.valid.truncate(n);
        match &mut self.kind {
            Kind::Null => {}
            Kind::Bool(v) => v.truncate(n),
            Kind::Int(v) => v.truncate(n),
            Kind::Long(v) => v.truncate(n),
            Kind::Float(v) => v.truncate(n),
            Kind::Double(v) => v.truncate(n),
            Kind::Bytes { offsets, data, .. } => {
                offsets.truncate(n + 1);
                data.truncate(offsets[n] as usize);
            }
            Kind::Fixed(size, data) => data.truncate(n * *size),
            Kind::Decimal(_, v) => v.truncate(n),
            Kind::List(offsets, item) => {
                offsets.truncate(n + 1);
                item.truncate(offsets[n] as usize);
            }
            Kind::Map(offsets, keys, values) => {
                offsets.truncate(n + 1);
                keys.truncate(offsets[n] as usize);
                values.truncate(offsets[n] as usize);
            }
            Kind::Struct(children) => children.iter_mut().for_each(|c| c.truncate(n)),
        }
    }

    /// The column as Arrow data of type `dt`; the column starts empty again.
    pub(crate) fn finish(&mut self, dt: &DataType) -> Result<arrow_data::ArrayData> {
        let valid = std::mem::take(&mut self.valid);
        let len = valid.len();
        let nulls = if valid.iter().all(|v| *v) || matches!(self.kind, Kind::Null) {
            None
        } else {
            Some(NullBuffer::from(valid))
        };
        let builder = ArrayDataBuilder::new(dt.clone()).len(len).nulls(nulls);
        let take_offsets = |o: &mut Vec<i32>| Buffer::from_vec(std::mem::replace(o, vec![0]));
        let builder = match &mut self.kind {
            Kind::Null => builder,
            Kind::Bool(v) => {
                builder.add_buffer(BooleanBuffer::from_iter(std::mem::take(v)).into_inner())
            }
            Kind::Int(v) => builder.add_buffer(Buffer::from_vec(std::mem::take(v))),
            Kind::Long(v) => builder.add_buffer(Buffer::from_vec(std::mem::take(v))),
            Kind::Float(v) => builder.add_buffer(Buffer::from_vec(std::mem::take(v))),
            Kind::Double(v) => builder.add_buffer(Buffer::from_vec(std::mem::take(v))),
            Kind::Decimal(_, v) => builder.add_buffer(Buffer::from_vec(std::mem::take(v))),
            Kind::Fixed(_, v) => builder.add_buffer(Buffer::from_vec(std::mem::take(v))),
            Kind::Bytes { offsets, data, .. } => builder
                .add_buffer(take_offsets(offsets))
                .add_buffer(Buffer::from_vec(std::mem::take(data))),
            Kind::List(offsets, item) => {
                let DataType::List(f) = dt else {
                    return Err(Error::internal(format!("list decoded as {dt}")));
                };
                let child = item.finish(f.data_type())?;
                builder
                    .add_buffer(take_offsets(offsets))
                    .add_child_data(child)
            }
            Kind::Map(offsets, keys, values) => {
                let DataType::Map(entries, _) = dt else {
                    return Err(Error::internal(format!("map decoded as {dt}")));
                };
                let DataType::Struct(kv) = entries.data_type() else {
                    return Err(Error::internal(format!("map decoded as {dt}")));
                };
                let n = keys.valid.len();
                let k = keys.finish(kv[0].data_type())?;
                let v = values.finish(kv[1].data_type())?;
                let entries = ArrayDataBuilder::new(entries.data_type().clone())
                    .len(n)
                    .add_child_data(k)
                    .add_child_data(v)
                    .build()?;
                builder
                    .add_buffer(take_offsets(offsets))
                    .add_child_data(entries)
            }
            Kind::Struct(children) => {
                let DataType::Struct(fields) = dt else {
                    return Err(Error::internal(format!("struct decoded as {dt}")));
                };
                let mut b = builder;
                for (c, f) in children.iter_mut().zip(fields) {
                    b = b.add_child_data(c.finish(f.data_type())?);
                }
                b
            }
        };
        Ok(builder.build()?)
    }
}
