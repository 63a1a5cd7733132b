//! JSON lines into a declared schema in one pass: each value is parsed straight into
//! its column, with no intermediate tape, and a line that fails is cut back out of
//! every column, so it becomes one bad record while the lines around it stay.
//!
//! It reads what arrow-json's decoder reads for the same schema (numbers or numeric
//! strings for numbers, decimals and timestamps; RFC 3339 or `YYYY-MM-DD` strings for
//! dates and timestamps, numbers as raw values; fields not in the schema skipped;
//! missing fields null), with two differences: a fractional number for an integer
//! column is an error instead of being truncated, and a field given twice in one object
//! is an error instead of one of the two values being kept. Schemas with types it does
//! not cover ([`Plan::new`] returns None) decode with arrow-json.

use std::collections::HashMap;
use std::str::FromStr;

use arrow_array::timezone::Tz;
use arrow_array::{make_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use connector_api::{Error, Result};

use crate::columns::{Col, Kind};

mod cursor;
#[cfg(test)]
mod tests;

use cursor::Cursor;

/// The most fields of one object (their presence is tracked in a 64-bit mask).
const MAX_FIELDS: usize = 64;
/// The deepest nesting of arrays and objects a skipped value may have.
const MAX_DEPTH: usize = 128;

/// How the lines of one schema decode; shared by the threads decoding parts of a buffer.
pub(crate) struct Plan {
    schema: SchemaRef,
    fields: Fields,
    /// A field the schema does not have is an error (an inferred schema, which widens
    /// instead), not skipped (a declared one, which ignores it).
    strict: bool,
    /// Fields found inside a declared struct but not declared in it, already logged:
    /// a new nested key is said once, not dropped without a word.
    warned: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

enum Ty {
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    Date32,
    Timestamp(TimeUnit, Tz),
    Decimal(u8, i8),
    List(Box<Node>),
    Struct(Fields),
}

struct Node {
    name: String,
    ty: Ty,
    nullable: bool,
}

struct Fields {
    nodes: Vec<Node>,
    by_name: HashMap<Box<[u8]>, usize>,
}

impl Fields {
    fn new(fields: &arrow_schema::Fields) -> Option<Fields> {
        if fields.len() > MAX_FIELDS {
            return None;
        }
        let nodes = fields
            .iter()
            .map(|f| node(f.name(), f.data_type(), f.is_nullable()))
            .collect::<Option<Vec<_>>>()?;
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_bytes().into(), i))
            .collect();
        Some(Fields { nodes, by_name })
    }

    /// The index of the field named `key`, trying `hint` (the field after the last one
    /// read: objects usually list their fields in the same order) first.
    fn find(&self, key: &[u8], hint: usize) -> Option<usize> {
        match self.nodes.get(hint) {
            Some(n) if same_bytes(n.name.as_bytes(), key) => Some(hint),
            _ => self.by_name.get(key).copied(),
        }
    }

    fn cols(&self) -> Vec<Col> {
        self.nodes.iter().map(|n| col(&n.ty)).collect()
    }
}

/// `a == b` as a loop: field names are short, and a call to `memcmp` per field costs
/// more than comparing them.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn node(name: &str, dt: &DataType, nullable: bool) -> Option<Node> {
    let ty = match dt {
        DataType::Boolean => Ty::Bool,
        DataType::Int32 => Ty::Int32,
        DataType::Int64 => Ty::Int64,
        DataType::Float32 => Ty::Float32,
        DataType::Float64 => Ty::Float64,
        DataType::Utf8 => Ty::Utf8,
        DataType::Date32 => Ty::Date32,
        DataType::Timestamp(unit, tz) => {
            let tz = Tz::from_str(tz.as_deref().unwrap_or("+00:00")).ok()?;
            Ty::Timestamp(*unit, tz)
        }
        DataType::Decimal128(p, s) => Ty::Decimal(*p, *s),
        DataType::List(item) => Ty::List(Box::new(node(
            item.name(),
            item.data_type(),
            item.is_nullable(),
        )?)),
        DataType::Struct(fields) => Ty::Struct(Fields::new(fields)?),
        _ => return None,
    };
    Some(Node {
        name: name.to_string(),
        ty,
        nullable,
    })
}

fn col(ty: &Ty) -> Col {
    let kind = match ty {
        Ty::Bool => Kind::Bool(Vec::new()),
        Ty::Int32 | Ty::Date32 => Kind::Int(Vec::new()),
        Ty::Int64 | Ty::Timestamp(..) => Kind::Long(Vec::new()),
        Ty::Float32 => Kind::Float(Vec::new()),
        Ty::Float64 => Kind::Double(Vec::new()),
        Ty::Utf8 => Kind::Bytes {
            offsets: vec![0],
            data: Vec::new(),
            utf8: true,
            symbols: None,
        },
        Ty::Decimal(..) => Kind::Decimal(None, Vec::new()),
        Ty::List(item) => Kind::List(vec![0], Box::new(col(&item.ty))),
        Ty::Struct(fields) => Kind::Struct(fields.cols()),
    };
    Col {
        null_index: None,
        valid: Vec::new(),
        kind,
    }
}

impl Plan {
    /// A plan for `schema`, or None when a type is not covered (arrow-json decodes it).
    pub(crate) fn new(schema: &SchemaRef, strict: bool) -> Option<Plan> {
        Some(Plan {
            schema: schema.clone(),
            fields: Fields::new(schema.fields())?,
            strict,
            warned: Default::default(),
        })
    }

    /// Decodes the `lines` (ranges of `buf`) as one batch. Each bad line is returned
    /// with its index among the lines and why.
    pub(crate) fn decode(&self, buf: &[u8], lines: &[(usize, usize)]) -> Result<Lines> {
        let mut cols = self.fields.cols();
        let mut bad = Vec::new();
        let mut rows = 0usize;
        let mut p = Cursor::new(self.strict);
        for (i, &(s, e)) in lines.iter().enumerate() {
            match p.row(&buf[s..e], &self.fields, &mut cols) {
                Ok(()) => rows += 1,
                Err(err) => {
                    cols.iter_mut().for_each(|c| c.truncate(rows));
                    bad.push((i, err));
                }
            }
        }
        self.warn_dropped(&p.dropped);
        if rows == 0 {
            return Ok((None, bad));
        }
        let arrays = cols
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(c, f)| c.finish(f.data_type()).map(make_array))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        Ok((Some(batch), bad))
    }
}

impl Plan {
    /// Logs, once per plan, each field a struct column does not declare that lines
    /// held (a top-level field not in the schema is skipped as documented; one inside
    /// a declared struct is easy to miss).
    fn warn_dropped(&self, dropped: &[(String, String, u64)]) {
        if dropped.is_empty() {
            return;
        }
        let Ok(mut warned) = self.warned.lock() else {
            return;
        };
        for (within, field, count) in dropped {
            if warned.insert((within.clone(), field.clone())) {
                tracing::warn!(
                    column = %within,
                    field = %field,
                    records = count,
                    "field \"{field}\" inside struct column \"{within}\" is not in its declared type: dropped (said once; add it to the schema to keep it)"
                );
            }
        }
    }
}

/// The decoded lines (None: none decoded), and each bad line's index and error.
pub(crate) type Lines = (Option<RecordBatch>, Vec<(usize, Error)>);
