//! Options. Every field has a doc comment: it is the user documentation.

use connector_api::{Error, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// Options of the `template` source.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSourceConfig {
    /// Number of rows to produce.
    #[serde(default = "default_count")]
    pub count: u64,
    /// The word every row carries.
    #[serde(default = "default_word")]
    pub word: String,
}

fn default_count() -> u64 {
    100
}

fn default_word() -> String {
    "hello".into()
}

impl TemplateSourceConfig {
    /// Pure checks, no I/O: they run for the whole pipeline file before anything opens.
    pub fn validate(&self) -> Result<()> {
        if self.word.is_empty() {
            return Err(Error::config("word must not be empty").with_field("word"));
        }
        Ok(())
    }
}

/// Options of the `template` sink.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSinkConfig {
    /// File the records are appended to, one JSON object per line.
    pub path: String,
}
