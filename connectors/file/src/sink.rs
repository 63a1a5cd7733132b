//! The file sink: rolled files published atomically on flush, with the offsets of the
//! published data in a state file, so a restart neither loses nor repeats records.
//!
//! Flush protocol, each step durable (fsync) before the next:
//! 1. finish every file of this flush under its temporary name (`.NAME.tmp`);
//! 2. write the intent `.sluice-PIPELINE.pending.json`: the renames and the offsets;
//! 3. rename each temporary file to its final name;
//! 4. write the state `.sluice-PIPELINE.state.json` with the offsets; remove the intent.
//!
//! On open, an intent left by a crash is rolled forward (step 3 and 4 again), leftover
//! temporary files are removed, and the state's offsets are reported to the runtime,
//! which resumes the source there. File names derive from the position of their first
//! record, so a replay writes the same names. No state with this pipeline's files in
//! the directory means the state was deleted: the sink stops rather than write those
//! names again.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use connector_api::{Batch, Error, Offsets, PositionNames, Result, Sink, SinkContext, SinkState};
use serde::{Deserialize, Serialize};
use sluice_formats::Encoder;

use crate::config::FileSinkConfig;
use crate::writeback::WriteBehind;

struct Open {
    name: String,
    schema: SchemaRef,
    encoder: Encoder<BufWriter<WriteBehind>>,
}

#[derive(Serialize, Deserialize)]
struct Intent {
    renames: Vec<(String, String)>,
    offsets: String,
}

#[derive(Serialize, Deserialize)]
struct State {
    offsets: String,
}

/// Writes batches to files under a directory.
pub struct FileSink {
    config: FileSinkConfig,
    dir: PathBuf,
    pipeline: String,
    /// `PREFIX-TAG-`, TAG a hash of the pipeline's name: every file name this pipeline
    /// writes starts so, so two pipelines sharing a directory never take each other's
    /// names or temporary files.
    name_start: String,
    /// Position after the last batch written: the start of the next file.
    position: Offsets,
    /// Names of the files started, from their start positions.
    names: PositionNames,
    current: Option<Open>,
    /// Files finished since the last flush, under their temporary names.
    finished: Vec<String>,
}

impl FileSink {
    /// A sink for `config` (validated).
    pub fn new(config: FileSinkConfig) -> Self {
        FileSink {
            dir: PathBuf::from(&config.path),
            config,
            pipeline: String::new(),
            name_start: String::new(),
            position: Offsets::new(),
            names: PositionNames::default(),
            current: None,
            finished: Vec::new(),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir
            .join(format!(".sluice-{}.state.json", self.pipeline))
    }

    fn intent_path(&self) -> PathBuf {
        self.dir
            .join(format!(".sluice-{}.pending.json", self.pipeline))
    }

    fn tmp_name(name: &str) -> String {
        format!(".{name}.tmp")
    }

    fn start_file(&mut self, schema: SchemaRef) -> Result<()> {
        let name = format!(
            "{}{:016x}.{}",
            self.name_start,
            self.names.next(&self.position, None),
            self.config.format.extension()
        );
        let path = self.dir.join(Self::tmp_name(&name));
        let file = File::create(&path).map_err(|e| io_error(e, &path))?;
        let encoder = Encoder::new(
            self.config.format,
            schema.clone(),
            BufWriter::with_capacity(1 << 20, WriteBehind::new(file)),
            (&self.config.json, &self.config.csv, &self.config.parquet),
        )?;
        self.current = Some(Open {
            name,
            schema,
            encoder,
        });
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some(open) = self.current.take() {
            let tmp = self.dir.join(Self::tmp_name(&open.name));
            let file = open
                .encoder
                .finish()?
                .into_inner()
                .map_err(|e| io_error(e.into_error(), &tmp))?
                .into_inner();
            file.sync_all().map_err(|e| io_error(e, &tmp))?;
            self.finished.push(open.name);
        }
        Ok(())
    }

    /// Encodes `batch` into the open file (started or rolled as needed).
    fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        let place = format!("file sink \"{}\"", self.dir.display());
        let refused = sluice_formats::scan::format_refusals(
            self.config.format,
            &self.config.csv,
            &batch.records,
            &place,
        )?;
        if !refused.is_empty() {
            return Err(Error::refused(refused));
        }
        if batch.num_rows() > 0 {
            let schema = batch.records.schema();
            if self.current.as_ref().is_some_and(|o| o.schema != schema) {
                self.finish_current()?;
            }
            if self.current.is_none() {
                self.start_file(schema)?;
            }
            let open = self
                .current
                .as_mut()
                .ok_or_else(|| Error::internal("no open file"))?;
            open.encoder.write(&batch.records)?;
            let full = (self.config.max_records > 0
                && open.encoder.rows() >= self.config.max_records)
                || (self.config.max_bytes > 0 && open.encoder.bytes() >= self.config.max_bytes);
            self.position.merge(&batch.offsets);
            if full {
                self.finish_current()?;
            }
        } else {
            self.position.merge(&batch.offsets);
        }
        Ok(())
    }

    /// Finishes the open file and publishes every finished file with `offsets`.
    fn publish(&mut self, offsets: &Offsets) -> Result<()> {
        self.finish_current()?;
        // files started after this flush are named from its position: a dead-letter
        // sink, whose batches carry no offsets, names each flush's files apart too
        self.position = offsets.clone();
        let intent = Intent {
            renames: self
                .finished
                .drain(..)
                .map(|n| (Self::tmp_name(&n), n))
                .collect(),
            offsets: offsets.to_envelope(),
        };
        write_atomic(
            &self.intent_path(),
            &serde_json::to_vec(&intent).map_err(|e| Error::internal("intent").with_source(e))?,
        )?;
        self.roll_forward(&intent)
    }

    /// Renames the intent's files into place and commits its offsets as the state.
    fn roll_forward(&self, intent: &Intent) -> Result<()> {
        for (tmp, name) in &intent.renames {
            let from = self.dir.join(tmp);
            if from.exists() {
                let to = self.dir.join(name);
                fs::rename(&from, &to).map_err(|e| io_error(e, &to))?;
            }
        }
        sync_dir(&self.dir)?;
        write_atomic(
            &self.state_path(),
            &serde_json::to_vec(&State {
                offsets: intent.offsets.clone(),
            })
            .map_err(|e| Error::internal("state").with_source(e))?,
        )?;
        let pending = self.intent_path();
        fs::remove_file(&pending).map_err(|e| io_error(e, &pending))?;
        sync_dir(&self.dir)
    }

    /// Fails when this pipeline's published files are here but its state is not: the
    /// state was deleted (or the files copied in), and starting over would write the
    /// same names over published data.
    fn refuse_published_without_state(&self) -> Result<()> {
        let mut published = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_error(e, &self.dir))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.name_start) {
                published.push(name);
            }
        }
        if published.is_empty() {
            return Ok(());
        }
        published.sort();
        Err(Error::storage(format!(
            "file sink \"{}\": {} file(s) of pipeline \"{}\" are published here ({}{}), but its \
             state file \"{}\" is missing, so a new run would write over them; restore the \
             state file, or move the files whose names start with \"{}\" out of the \
             directory to write everything again",
            self.dir.display(),
            published.len(),
            self.pipeline,
            published[0],
            if published.len() > 1 { ", ..." } else { "" },
            self.state_path().display(),
            self.name_start,
        )))
    }
}

#[connector_api::async_trait]
impl Sink for FileSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.pipeline = ctx.pipeline.clone();
        self.name_start = name_start(&self.config.prefix, &ctx.pipeline);
        fs::create_dir_all(&self.dir).map_err(|e| io_error(e, &self.dir))?;
        let pending = self.intent_path();
        if pending.exists() {
            let intent: Intent =
                serde_json::from_slice(&fs::read(&pending).map_err(|e| io_error(e, &pending))?)
                    .map_err(|e| {
                        Error::internal(format!("\"{}\" is unreadable", pending.display()))
                            .with_source(e)
                    })?;
            tracing::info!(dir = %self.dir.display(), files = intent.renames.len(), "completing a publish interrupted by a crash");
            self.roll_forward(&intent)?;
        }
        for entry in fs::read_dir(&self.dir).map_err(|e| io_error(e, &self.dir))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // only this pipeline's: another one may be writing into the same directory
            if name.starts_with(&format!(".{}", self.name_start)) && name.ends_with(".tmp") {
                fs::remove_file(entry.path())?;
            }
        }
        let state = self.state_path();
        let offsets = if state.exists() {
            let s: State =
                serde_json::from_slice(&fs::read(&state).map_err(|e| io_error(e, &state))?)
                    .map_err(|e| {
                        Error::internal(format!("\"{}\" is unreadable", state.display()))
                            .with_source(e)
                    })?;
            Some(Offsets::from_envelope(&s.offsets)?)
        } else {
            self.refuse_published_without_state()?;
            None
        };
        self.position = offsets.clone().unwrap_or_default();
        Ok(SinkState {
            // stored with the data: none stored means the data is gone too (or never
            // was), and the pipeline starts over, whatever the checkpoint store says
            offsets: Some(offsets.unwrap_or_default()),
            schema: None,
        })
    }

    // file I/O, encoding and fsyncs block: they run off the runtime's queue
    async fn write(&mut self, batch: &Batch) -> Result<()> {
        connector_api::blocking(|| self.write_batch(batch))
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        connector_api::blocking(|| self.publish(offsets))
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(open) = self.current.take() {
            let _ = fs::remove_file(self.dir.join(Self::tmp_name(&open.name)));
        }
        Ok(())
    }
}

fn io_error(err: std::io::Error, path: &Path) -> Error {
    Error::from(err).context(format!("\"{}\"", path.display()))
}

/// The start of every file name pipeline `pipeline` writes: `PREFIX-TAG-`.
fn name_start(prefix: &str, pipeline: &str) -> String {
    format!(
        "{prefix}-{:08x}-",
        connector_api::stable_hash(pipeline.as_bytes()) as u32
    )
}

/// Writes `data` to `path` durably: temp file, fsync, rename, fsync directory.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(|e| io_error(e, &tmp))?;
    f.write_all(data).map_err(|e| io_error(e, &tmp))?;
    f.sync_all().map_err(|e| io_error(e, &tmp))?;
    fs::rename(&tmp, path).map_err(|e| io_error(e, path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(e, dir))
}

/// `sluice check`: the directory exists or can be created, and is writable.
pub fn check(config: &FileSinkConfig) -> Result<()> {
    let dir = Path::new(&config.path);
    fs::create_dir_all(dir).map_err(|e| io_error(e, dir))?;
    let probe = dir.join(".sluice-check.tmp");
    File::create(&probe).map_err(|e| io_error(e, &probe))?;
    fs::remove_file(&probe).map_err(|e| io_error(e, &probe))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::File as FileConnector;

    fn rows_in(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .map(|p| fs::read_to_string(p).unwrap().lines().count())
            .sum()
    }

    #[tokio::test]
    async fn passes_the_sink_contract_and_stores_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let state = connector_api::testkit::sink_contract(
            &FileConnector,
            serde_json::json!({"path": dir.path().display().to_string(), "format": "json", "max_records": 4}),
            connector_api::testkit::id_batches(10, 3),
        )
        .await;
        assert!(state.offsets.is_some());
        assert_eq!(rows_in(dir.path()), 10);
    }

    #[tokio::test]
    async fn an_interrupted_publish_is_rolled_forward_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: FileSinkConfig = serde_json::from_value(
            serde_json::json!({"path": dir.path().display().to_string(), "format": "json"}),
        )
        .unwrap();
        // what a crash between steps 2 and 3 of the flush protocol leaves behind
        fs::write(dir.path().join(".part-1.jsonl.tmp"), "{\"id\":1}\n").unwrap();
        fs::write(dir.path().join(".part-2.jsonl.tmp"), "{\"id\":2}\n").unwrap();
        fs::write(dir.path().join("part-2.jsonl"), "{\"id\":2}\n").unwrap();
        fs::remove_file(dir.path().join(".part-2.jsonl.tmp")).unwrap();
        // not in the intent: this pipeline's is removed, another pipeline's is left
        let own = format!(".{}3.jsonl.tmp", name_start("part", "p"));
        let other = format!(".{}3.jsonl.tmp", name_start("part", "q"));
        fs::write(dir.path().join(&own), "{\"id\":3}\n").unwrap();
        fs::write(dir.path().join(&other), "{\"id\":3}\n").unwrap();
        let mut offsets = Offsets::new();
        offsets.set("s", serde_json::json!(2));
        let intent = Intent {
            renames: vec![
                (".part-1.jsonl.tmp".into(), "part-1.jsonl".into()),
                (".part-2.jsonl.tmp".into(), "part-2.jsonl".into()),
            ],
            offsets: offsets.to_envelope(),
        };
        fs::write(
            dir.path().join(".sluice-p.pending.json"),
            serde_json::to_vec(&intent).unwrap(),
        )
        .unwrap();
        let mut sink = FileSink::new(cfg);
        let state = sink.open(&SinkContext::for_pipeline("p")).await.unwrap();
        assert_eq!(state.offsets, Some(offsets));
        assert_eq!(rows_in(dir.path()), 2);
        assert!(!dir.path().join(".sluice-p.pending.json").exists());
        assert!(
            !dir.path().join(&own).exists(),
            "unpublished temp files are removed"
        );
        assert!(
            dir.path().join(&other).exists(),
            "another pipeline's temp file was removed"
        );
    }
}
