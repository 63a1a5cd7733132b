//! Options of the datagen source.

use connector_api::arrow_schema::SchemaRef;
use connector_api::{schema_from_specs, Error, FieldSpec, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// Options of the `datagen` source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatagenConfig {
    /// Number of records to produce; absent = unbounded (runs until stopped).
    pub count: Option<u64>,
    /// Records per second at most; 0 = as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Seed of the generator: the same seed gives the same records.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Share of null values in nullable columns, from 0.0 to 1.0.
    #[serde(default)]
    pub null_rate: f64,
    /// Columns to generate; absent = the `events` shape (id, ts, user_id, uuid, event,
    /// country, amount decimal(12,2), mobile, tags list<string>, payload json text).
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
}

fn default_seed() -> u64 {
    42
}

/// The columns of the default `events` shape.
pub fn events_specs() -> Vec<FieldSpec> {
    let f = |name: &str, t: &str, nullable: bool| FieldSpec {
        name: name.into(),
        data_type: t.into(),
        nullable,
    };
    vec![
        f("id", "int64", false),
        f("ts", "timestamptz", false),
        f("user_id", "int64", false),
        f("uuid", "string", false),
        f("event", "string", false),
        f("country", "string", true),
        f("amount", "decimal(12,2)", true),
        f("mobile", "bool", true),
        f("tags", "list<string>", true),
        f("payload", "string", true),
    ]
}

impl DatagenConfig {
    /// The Arrow schema of the generated records.
    pub fn schema(&self) -> Result<SchemaRef> {
        if !(0.0..=1.0).contains(&self.null_rate) {
            return Err(Error::config(format!(
                "null_rate must be between 0.0 and 1.0, got {}",
                self.null_rate
            ))
            .with_field("null_rate"));
        }
        let specs = if self.schema.is_empty() {
            events_specs()
        } else {
            self.schema.clone()
        };
        let schema = schema_from_specs(&specs)?;
        for (i, f) in schema.fields().iter().enumerate() {
            crate::generate::check_supported(f.data_type()).map_err(|e| {
                e.context(format!("column \"{}\"", f.name()))
                    .with_field(format!("schema[{i}].type"))
            })?;
        }
        Ok(schema)
    }
}
