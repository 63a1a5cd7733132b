//! Avro schemas: parsed from their JSON text and mapped to Arrow, or made from an Arrow
//! schema for writing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use connector_api::{Error, ErrorKind, Result};
use serde_json::{json, Map, Value};

/// An Avro type with every named reference replaced by its definition.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AvroType {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Date,
    TimeMillis,
    TimeMicros,
    Timestamp {
        unit: TimeUnit,
        utc: bool,
    },
    /// `decimal` on `bytes` (`fixed: None`) or on a `fixed` of that size.
    Decimal {
        precision: u8,
        scale: i8,
        fixed: Option<usize>,
    },
    Uuid,
    Fixed(usize),
    Enum(Arc<[String]>),
    Array(Box<AvroType>),
    Map(Box<AvroType>),
    Record(Arc<[(String, AvroType)]>),
    /// A union of `null` and one other type; `null_index` is the branch number of null.
    Nullable {
        null_index: i64,
        inner: Box<AvroType>,
    },
}

impl AvroType {
    fn nullable(&self) -> bool {
        matches!(self, AvroType::Null | AvroType::Nullable { .. })
    }

    pub(crate) fn field(&self, name: &str) -> Field {
        Field::new(name, self.data_type(), self.nullable())
    }

    /// The Arrow type values of this type decode to.
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            AvroType::Null => DataType::Null,
            AvroType::Boolean => DataType::Boolean,
            AvroType::Int => DataType::Int32,
            AvroType::Long => DataType::Int64,
            AvroType::Float => DataType::Float32,
            AvroType::Double => DataType::Float64,
            AvroType::Bytes => DataType::Binary,
            AvroType::String | AvroType::Uuid | AvroType::Enum(_) => DataType::Utf8,
            AvroType::Date => DataType::Date32,
            AvroType::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
            AvroType::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
            AvroType::Timestamp { unit, utc } => {
                DataType::Timestamp(*unit, utc.then(|| Arc::from("UTC")))
            }
            AvroType::Decimal {
                precision, scale, ..
            } => DataType::Decimal128(*precision, *scale),
            AvroType::Fixed(n) => DataType::FixedSizeBinary(*n as i32),
            AvroType::Array(item) => DataType::List(Arc::new(item.field("item"))),
            AvroType::Map(value) => map_type(value.field("value")),
            AvroType::Record(fields) => {
                DataType::Struct(fields.iter().map(|(n, t)| t.field(n)).collect())
            }
            AvroType::Nullable { inner, .. } => inner.data_type(),
        }
    }

    fn name(&self) -> String {
        match self {
            AvroType::Nullable { inner, .. } => format!("null|{}", inner.name()),
            AvroType::Record(_) => "record".into(),
            AvroType::Enum(_) => "enum".into(),
            AvroType::Array(_) => "array".into(),
            AvroType::Map(_) => "map".into(),
            AvroType::Fixed(_) => "fixed".into(),
            other => format!("{:?}", other.data_type()).to_lowercase(),
        }
    }
}

/// Arrow's map type with string keys and `value` as the value field.
pub(crate) fn map_type(value: Field) -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            value,
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// A writer schema: the columns of a record (a schema whose top level is not a record
/// is one column, `value`).
#[derive(Clone, Debug)]
pub struct AvroSchema {
    pub(crate) fields: Arc<[(String, AvroType)]>,
    arrow: SchemaRef,
    record: bool,
}

impl AvroSchema {
    /// Parses the JSON text of an Avro schema. Named types may be referenced; recursive
    /// types and unions other than `[null, T]` are refused.
    pub fn parse(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::schema(format!("avro schema is not JSON: {e}")))?;
        let (fields, record): (Arc<[(String, AvroType)]>, bool) =
            match Parser::default().parse(&v, None)? {
                AvroType::Record(fields) => (fields, true),
                other => (Arc::from(vec![("value".to_string(), other)]), false),
            };
        let arrow = Arc::new(Schema::new(
            fields.iter().map(|(n, t)| t.field(n)).collect::<Vec<_>>(),
        ));
        Ok(AvroSchema {
            fields,
            arrow,
            record,
        })
    }

    /// The Arrow schema of decoded records.
    pub fn arrow(&self) -> &SchemaRef {
        &self.arrow
    }

    /// True when the top level is a record (its fields are the columns); false for any
    /// other type (one column, `value`).
    pub fn is_record(&self) -> bool {
        self.record
    }
}

fn unsupported(msg: String) -> Error {
    Error::new(ErrorKind::Unsupported, msg)
}

fn primitive(name: &str) -> Option<AvroType> {
    Some(match name {
        "null" => AvroType::Null,
        "boolean" => AvroType::Boolean,
        "int" => AvroType::Int,
        "long" => AvroType::Long,
        "float" => AvroType::Float,
        "double" => AvroType::Double,
        "bytes" => AvroType::Bytes,
        "string" => AvroType::String,
        _ => return None,
    })
}

#[derive(Default)]
struct Parser {
    named: HashMap<String, AvroType>,
    open: HashSet<String>,
}

impl Parser {
    fn parse(&mut self, v: &Value, ns: Option<&str>) -> Result<AvroType> {
        match v {
            Value::String(name) => self.reference(name, ns),
            Value::Array(branches) => self.union(branches, ns),
            Value::Object(o) => self.complex(o, ns),
            other => Err(Error::schema(format!("avro schema: {other} is not a type"))),
        }
    }

    fn reference(&self, name: &str, ns: Option<&str>) -> Result<AvroType> {
        if let Some(t) = primitive(name) {
            return Ok(t);
        }
        let full = fullname(name, ns);
        for n in [&full, name] {
            if self.open.contains(n) {
                return Err(unsupported(format!(
                    "avro schema: the recursive type \"{n}\" is not supported"
                )));
            }
            if let Some(t) = self.named.get(n) {
                return Ok(t.clone());
            }
        }
        Err(Error::schema(format!(
            "avro schema: unknown type \"{name}\""
        )))
    }

    fn union(&mut self, branches: &[Value], ns: Option<&str>) -> Result<AvroType> {
        let types = branches
            .iter()
            .map(|b| self.parse(b, ns))
            .collect::<Result<Vec<_>>>()?;
        match types.as_slice() {
            [t] => Ok(t.clone()),
            [AvroType::Null, t] | [t, AvroType::Null] if *t != AvroType::Null => {
                Ok(AvroType::Nullable {
                    null_index: if types[0] == AvroType::Null { 0 } else { 1 },
                    inner: Box::new(t.clone()),
                })
            }
            _ => Err(unsupported(format!(
                "avro schema: the union [{}] is not supported (only null and one other type)",
                types
                    .iter()
                    .map(AvroType::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The full name of a named type and the namespace its members inherit.
    fn name(&self, o: &Map<String, Value>, ns: Option<&str>) -> Result<(String, Option<String>)> {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::schema("avro schema: a named type without \"name\""))?;
        let ns = o.get("namespace").and_then(Value::as_str).or(ns);
        let full = fullname(name, ns);
        let inner = full.rsplit_once('.').map(|(n, _)| n.to_string());
        Ok((full, inner))
    }

    fn complex(&mut self, o: &Map<String, Value>, ns: Option<&str>) -> Result<AvroType> {
        let ty = o
            .get("type")
            .ok_or_else(|| Error::schema("avro schema: an object without \"type\""))?;
        let Value::String(ty) = ty else {
            return self.parse(ty, ns);
        };
        let logical = o.get("logicalType").and_then(Value::as_str);
        let t = match ty.as_str() {
            "record" | "error" => {
                let (full, inner_ns) = self.name(o, ns)?;
                let fields = o.get("fields").and_then(Value::as_array).ok_or_else(|| {
                    Error::schema(format!("avro schema: record \"{full}\" has no \"fields\""))
                })?;
                self.open.insert(full.clone());
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                        Error::schema(format!("avro schema: a field of \"{full}\" has no name"))
                    })?;
                    let t = f.get("type").ok_or_else(|| {
                        Error::schema(format!("avro schema: field \"{name}\" has no type"))
                    })?;
                    out.push((name.to_string(), self.parse(t, inner_ns.as_deref())?));
                }
                self.open.remove(&full);
                let t = AvroType::Record(out.into());
                self.named.insert(full, t.clone());
                t
            }
            "enum" => {
                let (full, _) = self.name(o, ns)?;
                let symbols = o
                    .get("symbols")
                    .and_then(Value::as_array)
                    .map(|s| s.iter().filter_map(Value::as_str).map(String::from))
                    .ok_or_else(|| {
                        Error::schema(format!("avro schema: enum \"{full}\" has no symbols"))
                    })?;
                let t = AvroType::Enum(symbols.collect::<Vec<_>>().into());
                self.named.insert(full, t.clone());
                t
            }
            "fixed" => {
                let (full, _) = self.name(o, ns)?;
                let size = o.get("size").and_then(Value::as_u64).ok_or_else(|| {
                    Error::schema(format!("avro schema: fixed \"{full}\" has no size"))
                })? as usize;
                let t = match logical {
                    Some("decimal") => decimal(o, Some(size))?,
                    _ => AvroType::Fixed(size),
                };
                self.named.insert(full, t.clone());
                t
            }
            "array" => {
                let items = o
                    .get("items")
                    .ok_or_else(|| Error::schema("avro schema: an array without \"items\""))?;
                AvroType::Array(Box::new(self.parse(items, ns)?))
            }
            "map" => {
                let values = o
                    .get("values")
                    .ok_or_else(|| Error::schema("avro schema: a map without \"values\""))?;
                AvroType::Map(Box::new(self.parse(values, ns)?))
            }
            other => match (self.reference(other, ns)?, logical) {
                (AvroType::Int, Some("date")) => AvroType::Date,
                (AvroType::Int, Some("time-millis")) => AvroType::TimeMillis,
                (AvroType::Long, Some("time-micros")) => AvroType::TimeMicros,
                (AvroType::Long, Some(l)) if timestamp(l).is_some() => {
                    let (unit, utc) = timestamp(l).expect("checked");
                    AvroType::Timestamp { unit, utc }
                }
                (AvroType::String, Some("uuid")) => AvroType::Uuid,
                (AvroType::Bytes, Some("decimal")) => decimal(o, None)?,
                // unknown logical types read as their underlying type, as the spec says
                (t, _) => t,
            },
        };
        Ok(t)
    }
}

fn timestamp(logical: &str) -> Option<(TimeUnit, bool)> {
    Some(match logical {
        "timestamp-millis" => (TimeUnit::Millisecond, true),
        "timestamp-micros" => (TimeUnit::Microsecond, true),
        "timestamp-nanos" => (TimeUnit::Nanosecond, true),
        "local-timestamp-millis" => (TimeUnit::Millisecond, false),
        "local-timestamp-micros" => (TimeUnit::Microsecond, false),
        "local-timestamp-nanos" => (TimeUnit::Nanosecond, false),
        _ => return None,
    })
}

fn decimal(o: &Map<String, Value>, fixed: Option<usize>) -> Result<AvroType> {
    let precision = o.get("precision").and_then(Value::as_u64).unwrap_or(0);
    let scale = o.get("scale").and_then(Value::as_u64).unwrap_or(0);
    if precision == 0 || scale > precision {
        return Err(Error::schema(format!(
            "avro schema: decimal({precision}, {scale}) is not a valid decimal"
        )));
    }
    if precision > 38 {
        return Err(unsupported(format!(
            "avro schema: decimal({precision}, {scale}) has more than 38 digits"
        )));
    }
    Ok(AvroType::Decimal {
        precision: precision as u8,
        scale: scale as i8,
        fixed,
    })
}

fn fullname(name: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// The Avro schema (JSON) for writing `schema`, and the Arrow schema its columns are
/// cast to before encoding. `name` names the top-level record.
pub(crate) fn from_arrow(schema: &Schema, name: &str) -> Result<(Value, SchemaRef)> {
    check_name(name, "the record name")?;
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut avro = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let (field, json) = field_to_avro(f, name)?;
        fields.push(field);
        avro.push(json);
    }
    let json = json!({"type": "record", "name": name, "namespace": "sluice", "fields": avro});
    Ok((json, Arc::new(Schema::new(fields))))
}

/// Refuses a `record_name` that is not an Avro name, before anything is written.
pub fn check_record_name(name: &str) -> Result<()> {
    check_name(name, "the record name")
        .map_err(|e| Error::config(e.message()).with_field("record_name"))
}

fn check_name(name: &str, what: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::schema(format!(
            "{what} \"{name}\" is not a valid Avro name (letters, digits and _, not starting with a digit)"
        )))
    }
}

/// One record field: the Arrow field to cast to and the Avro field definition.
fn field_to_avro(f: &Field, record: &str) -> Result<(Field, Value)> {
    check_name(f.name(), "column")?;
    let path = format!("{record}_{}", f.name());
    let (dt, t) = type_to_avro(f.data_type(), &path).map_err(|e| {
        Error::new(
            e.kind(),
            format!("column \"{}\": {}", f.name(), e.message()),
        )
    })?;
    let nullable = f.is_nullable() && dt != DataType::Null;
    let json = if nullable {
        json!({"name": f.name(), "type": ["null", t], "default": null})
    } else {
        json!({"name": f.name(), "type": t})
    };
    Ok((Field::new(f.name(), dt, f.is_nullable()), json))
}

/// The Arrow type a column is cast to before encoding, and its Avro type. `path` names
/// nested records and fixed types uniquely.
fn type_to_avro(dt: &DataType, path: &str) -> Result<(DataType, Value)> {
    use DataType as D;
    let logical = |base: &str, l: &str| json!({"type": base, "logicalType": l});
    Ok(match dt {
        D::Null => (D::Null, json!("null")),
        D::Boolean => (D::Boolean, json!("boolean")),
        D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16 => (D::Int32, json!("int")),
        D::Int64 | D::UInt32 | D::UInt64 => (D::Int64, json!("long")),
        D::Float16 | D::Float32 => (D::Float32, json!("float")),
        D::Float64 => (D::Float64, json!("double")),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => (D::Utf8, json!("string")),
        D::Dictionary(_, v) if matches!(v.as_ref(), D::Utf8 | D::LargeUtf8 | D::Utf8View) => {
            (D::Utf8, json!("string"))
        }
        D::Binary | D::LargeBinary | D::BinaryView => (D::Binary, json!("bytes")),
        D::FixedSizeBinary(n) => (
            D::FixedSizeBinary(*n),
            json!({"type": "fixed", "name": path, "size": n}),
        ),
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) if *s >= 0 => (
            D::Decimal128(*p, *s),
            json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s}),
        ),
        D::Date32 | D::Date64 => (D::Date32, logical("int", "date")),
        D::Time32(_) => (
            D::Time32(TimeUnit::Millisecond),
            logical("int", "time-millis"),
        ),
        D::Time64(TimeUnit::Microsecond) => (
            D::Time64(TimeUnit::Microsecond),
            logical("long", "time-micros"),
        ),
        D::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second | TimeUnit::Millisecond => TimeUnit::Millisecond,
                u => *u,
            };
            let suffix = match unit {
                TimeUnit::Millisecond => "millis",
                TimeUnit::Microsecond => "micros",
                _ => "nanos",
            };
            let prefix = if tz.is_some() { "" } else { "local-" };
            (
                D::Timestamp(unit, tz.clone()),
                logical("long", &format!("{prefix}timestamp-{suffix}")),
            )
        }
        D::List(item) | D::LargeList(item) | D::FixedSizeList(item, _) => {
            let (field, json) = item_to_avro(item, &format!("{path}_item"))?;
            (
                D::List(Arc::new(field)),
                json!({"type": "array", "items": json}),
            )
        }
        D::Struct(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            let mut avro = Vec::with_capacity(fields.len());
            for f in fields {
                let (field, json) = field_to_avro(f, path)?;
                out.push(field);
                avro.push(json);
            }
            (
                D::Struct(out.into()),
                json!({"type": "record", "name": path, "fields": avro}),
            )
        }
        D::Map(entries, _) => {
            let D::Struct(kv) = entries.data_type() else {
                return Err(Error::schema(format!("{dt} is not a valid map")));
            };
            if !matches!(kv[0].data_type(), D::Utf8 | D::LargeUtf8 | D::Utf8View) {
                return Err(unsupported(format!(
                    "{dt} has no Avro type (map keys must be strings)"
                )));
            }
            let (value, json) = item_to_avro(&kv[1], &format!("{path}_value"))?;
            let value = Field::new("value", value.data_type().clone(), value.is_nullable());
            (map_type(value), json!({"type": "map", "values": json}))
        }
        other => {
            return Err(unsupported(format!(
                "{other} has no Avro type; cast it in the pipeline first"
            )))
        }
    })
}

fn item_to_avro(item: &Field, path: &str) -> Result<(Field, Value)> {
    let (dt, json) = type_to_avro(item.data_type(), path)?;
    let json = if item.is_nullable() && dt != DataType::Null {
        json!(["null", json])
    } else {
        json
    };
    Ok((Field::new(item.name(), dt, item.is_nullable()), json))
}
