//! The type syntax of pipeline files: how a user declares a schema in TOML.
//!
//! ```toml
//! schema = [
//!   { name = "id", type = "int64", nullable = false },
//!   { name = "amount", type = "decimal(12,2)" },
//!   { name = "at", type = "timestamptz" },          # Timestamp(µs, UTC)
//!   { name = "tags", type = "list<string>" },
//!   { name = "geo", type = "struct<lat: float64, lon: float64>" },
//! ]
//! ```
//!
//! Names: `bool`, `int8`..`int64`, `uint8`..`uint64`, `float32`, `float64`, `string`,
//! `binary`, `date`, `time` (µs), `timestamp` (µs, no zone), `timestamptz` (µs, UTC),
//! `timestamp(s|ms|us|ns[, ZONE])`, `decimal(P,S)`, `list<T>`, `struct<name: T, ...>`.

use std::str::FromStr;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The zone written for `timestamptz`: UTC.
pub const UTC: &str = "UTC";

/// One declared column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Column name.
    pub name: String,
    /// Column type, e.g. `int64`, `decimal(12,2)`, `timestamptz`, `list<string>`.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether the column may hold nulls.
    #[serde(default = "default_nullable")]
    pub nullable: bool,
}

fn default_nullable() -> bool {
    true
}

/// Turns declared columns into an Arrow schema; an error names the column and the type.
pub fn schema_from_specs(specs: &[FieldSpec]) -> Result<SchemaRef> {
    let mut fields = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let dt = parse_type(&spec.data_type).map_err(|e| {
            e.context(format!("column \"{}\"", spec.name))
                .with_field(format!("schema[{i}].type"))
        })?;
        fields.push(Field::new(&spec.name, dt, spec.nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Turns an Arrow schema back into declared columns (for `sluice schema`).
pub fn specs_from_schema(schema: &Schema) -> Vec<FieldSpec> {
    schema
        .fields()
        .iter()
        .map(|f| FieldSpec {
            name: f.name().clone(),
            data_type: type_name(f.data_type()),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// Parses a type name of the pipeline syntax.
pub fn parse_type(text: &str) -> Result<DataType> {
    let mut p = Parser {
        s: text.trim(),
        pos: 0,
    };
    let t = p.parse()?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.error("unexpected text after the type"));
    }
    Ok(t)
}

/// The pipeline-syntax name of an Arrow type (Arrow's own name where ours has none).
pub fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::Null => "null".into(),
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Date32 => "date".into(),
        DataType::Time64(TimeUnit::Microsecond) => "time".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == UTC => {
            "timestamptz".into()
        }
        DataType::Timestamp(unit, tz) => {
            let u = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            };
            match tz {
                Some(tz) => format!("timestamp({u}, {tz})"),
                None => format!("timestamp({u})"),
            }
        }
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::List(f) | DataType::LargeList(f) => format!("list<{}>", type_name(f.data_type())),
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
                .collect();
            format!("struct<{}>", inner.join(", "))
        }
        other => format!("{other}"),
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> Error {
        Error::config(format!(
            "type \"{}\": {what} at character {}",
            self.s,
            self.pos + 1
        ))
    }

    fn skip_ws(&mut self) {
        while self.s[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }

    fn ident(&mut self) -> &str {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.s[start..];
        let len = rest
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '+' || c == '-')
            })
            .unwrap_or(rest.len());
        self.pos += len;
        &self.s[start..start + len]
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{c}'")))
        }
    }

    fn number(&mut self) -> Result<i64> {
        let word = self.ident().to_string();
        word.parse().map_err(|_| self.error("expected a number"))
    }

    fn parse(&mut self) -> Result<DataType> {
        let name = self.ident().to_ascii_lowercase();
        Ok(match name.as_str() {
            "bool" | "boolean" => DataType::Boolean,
            "int8" => DataType::Int8,
            "int16" | "smallint" => DataType::Int16,
            "int32" | "int" | "integer" => DataType::Int32,
            "int64" | "bigint" => DataType::Int64,
            "uint8" => DataType::UInt8,
            "uint16" => DataType::UInt16,
            "uint32" => DataType::UInt32,
            "uint64" => DataType::UInt64,
            "float32" | "float" | "real" => DataType::Float32,
            "float64" | "double" => DataType::Float64,
            "string" | "utf8" | "text" | "json" => DataType::Utf8,
            "binary" | "bytes" => DataType::Binary,
            "date" => DataType::Date32,
            "time" => DataType::Time64(TimeUnit::Microsecond),
            "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            "timestamp" => {
                if self.eat('(') {
                    let unit = match self.ident() {
                        "s" => TimeUnit::Second,
                        "ms" => TimeUnit::Millisecond,
                        "us" => TimeUnit::Microsecond,
                        "ns" => TimeUnit::Nanosecond,
                        _ => return Err(self.error("expected a unit: s, ms, us or ns")),
                    };
                    let tz = if self.eat(',') {
                        self.skip_ws();
                        let rest = &self.s[self.pos..];
                        let len = rest.find(')').unwrap_or(rest.len());
                        let tz = rest[..len].trim().to_string();
                        self.pos += len;
                        if tz.is_empty() {
                            return Err(self.error("expected a time zone"));
                        }
                        // a zone Arrow cannot read would fail later, far from this line
                        if arrow_array::timezone::Tz::from_str(&tz).is_err() {
                            return Err(self.error(&format!(
                                "unknown time zone \"{tz}\" (an IANA name such as \
                                 Europe/Berlin, UTC, or an offset such as +02:00)"
                            )));
                        }
                        Some(tz.into())
                    } else {
                        None
                    };
                    self.expect(')')?;
                    DataType::Timestamp(unit, tz)
                } else {
                    DataType::Timestamp(TimeUnit::Microsecond, None)
                }
            }
            "decimal" | "numeric" => {
                self.expect('(')?;
                let p = self.number()?;
                self.expect(',')?;
                let s = self.number()?;
                self.expect(')')?;
                if !(1..=38).contains(&p) || s < 0 || s > p {
                    return Err(self.error("decimal precision must be 1..=38 and scale 0..=precision"));
                }
                DataType::Decimal128(p as u8, s as i8)
            }
            "list" => {
                self.expect('<')?;
                let inner = self.parse()?;
                self.expect('>')?;
                DataType::List(Arc::new(Field::new("item", inner, true)))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields = Vec::new();
                loop {
                    let name = self.ident().to_string();
                    if name.is_empty() {
                        return Err(self.error("expected a field name"));
                    }
                    self.expect(':')?;
                    let t = self.parse()?;
                    fields.push(Field::new(name, t, true));
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect('>')?;
                DataType::Struct(Fields::from(fields))
            }
            "" => return Err(self.error("expected a type name")),
            other => {
                return Err(Error::config(format!(
                    "unknown type \"{other}\"; expected one of bool, int8, int16, int32, int64, \
                     uint8, uint16, uint32, uint64, float32, float64, string, binary, date, time, \
                     timestamp, timestamptz, timestamp(unit, zone), decimal(p,s), list<T>, struct<..>"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_type() {
        for t in [
            "bool",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint64",
            "float32",
            "float64",
            "string",
            "binary",
            "date",
            "time",
            "timestamp",
            "timestamptz",
            "timestamp(ms)",
            "timestamp(ns, +02:00)",
            "decimal(12,2)",
            "list<string>",
            "struct<lat: float64, tags: list<int32>>",
        ] {
            let dt = parse_type(t).unwrap();
            assert_eq!(type_name(&dt), t);
        }
    }

    #[test]
    fn unknown_type_lists_valid_ones() {
        let err = parse_type("integr").unwrap_err();
        assert!(err.to_string().contains("unknown type \"integr\""), "{err}");
        assert!(parse_type("decimal(40,2)").is_err());
        assert!(parse_type("list<int64").is_err());
    }

    #[test]
    fn a_time_zone_arrow_cannot_read_is_named_where_it_is_written() {
        for tz in ["Europe/Berlin", "UTC", "+02:00", "-0530"] {
            let text = format!("timestamp(us, {tz})");
            assert!(parse_type(&text).is_ok(), "{text}");
        }
        for tz in ["Mars/Base", "Z", "+25:00"] {
            let err = parse_type(&format!("timestamp(us, {tz})")).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("unknown time zone \"{tz}\"")),
                "{err}"
            );
        }
    }
}
