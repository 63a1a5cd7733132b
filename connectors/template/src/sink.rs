//! The sink: buffers records and appends them as JSON lines on flush (fsync), so what
//! `flush` returns for is durable: at-least-once.

use std::fs::OpenOptions;
use std::io::Write;

use arrow_array::Array;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use connector_api::{Batch, Error, Offsets, Result, Sink, SinkContext, SinkState};

use crate::config::TemplateSinkConfig;

pub struct TemplateSink {
    config: TemplateSinkConfig,
    pending: Vec<u8>,
}

impl TemplateSink {
    pub fn new(config: TemplateSinkConfig) -> Self {
        TemplateSink {
            config,
            pending: Vec::new(),
        }
    }
}

#[connector_api::async_trait]
impl Sink for TemplateSink {
    async fn open(&mut self, _ctx: &SinkContext) -> Result<SinkState> {
        Ok(SinkState::default())
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        let records = &batch.records;
        let options = FormatOptions::default();
        let formatters = records
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let schema = records.schema();
        for row in 0..records.num_rows() {
            let mut obj = serde_json::Map::new();
            for (i, f) in formatters.iter().enumerate() {
                let value = if records.column(i).is_null(row) {
                    serde_json::Value::Null
                } else {
                    serde_json::Value::String(f.value(row).to_string())
                };
                obj.insert(schema.field(i).name().clone(), value);
            }
            serde_json::to_writer(&mut self.pending, &obj)
                .map_err(|e| Error::internal("json").with_source(e))?;
            self.pending.push(b'\n');
        }
        Ok(())
    }

    async fn flush(&mut self, _offsets: &Offsets) -> Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.config.path)
            .map_err(|e| Error::from(e).context(format!("file \"{}\"", self.config.path)))?;
        file.write_all(&self.pending)?;
        file.sync_all()?;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Template;

    #[tokio::test]
    async fn passes_the_sink_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        connector_api::testkit::sink_contract(
            &Template,
            serde_json::json!({"path": path.display().to_string()}),
            connector_api::testkit::id_batches(7, 3),
        )
        .await;
        assert_eq!(std::fs::read_to_string(path).unwrap().lines().count(), 7);
    }
}
