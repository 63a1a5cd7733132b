//! The source: `count` rows, resumable. Offset of split `template`: the next id
//! (exclusive end of what was delivered).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use connector_api::{Batch, Offsets, Result, RowBuilder, Source, SourceContext, Value};

use crate::config::TemplateSourceConfig;

const SPLIT: &str = "template";

pub struct TemplateSource {
    config: TemplateSourceConfig,
    schema: SchemaRef,
    next: u64,
    batch_size: usize,
}

impl TemplateSource {
    pub fn new(config: TemplateSourceConfig) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("word", DataType::Utf8, false),
        ]));
        TemplateSource {
            config,
            schema,
            next: 0,
            batch_size: 1024,
        }
    }
}

#[connector_api::async_trait]
impl Source for TemplateSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        self.next = committed.get_typed::<u64>(SPLIT)?.unwrap_or(0);
        self.batch_size = ctx.batch_size.max(1);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.next >= self.config.count {
            return Ok(None);
        }
        let end = (self.next + self.batch_size as u64).min(self.config.count);
        // the row builder: push values, get a typed batch, no Arrow builders
        let mut rows = RowBuilder::new(self.schema.clone());
        for id in self.next..end {
            rows.push_row(vec![
                Value::Int(id as i64),
                Value::Str(self.config.word.clone()),
            ])?;
        }
        self.next = end;
        let mut offsets = Offsets::new();
        offsets.set_typed(SPLIT, &self.next)?;
        Ok(Some(Batch::new(rows.finish()?, offsets)))
    }
}

#[cfg(test)]
mod tests {
    use crate::Template;

    #[tokio::test]
    async fn passes_the_source_contract() {
        connector_api::testkit::source_contract(&Template, serde_json::json!({"count": 9})).await;
    }
}
