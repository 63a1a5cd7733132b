//! The S3 sink: partitioned objects written as multipart uploads and published on
//! flush, with the offsets of the published data in a state object, so a restart
//! neither loses nor repeats records.
//!
//! Every object is a multipart upload, even a small one (one part may be any size), so
//! nothing is visible until `CompleteMultipartUpload`: readers never see half an
//! object. Flush protocol:
//! 1. finish every open object: encode its footer, upload its last part;
//! 2. write the intent `_sluice/PIPELINE.pending.json`: the uploads (key, upload id,
//!    parts) and the offsets;
//! 3. complete each upload;
//! 4. write the state `_sluice/PIPELINE.state.json` with the offsets; delete the intent.
//!
//! On open, an intent left by a crash is rolled forward (steps 3 and 4 again; an
//! upload already completed is found by its key), every other upload this pipeline
//! left in progress is aborted (no orphaned parts are billed forever), and the state's
//! offsets are reported to the runtime, which resumes the source there (no state
//! object beside this pipeline's objects means it was deleted: the sink stops rather
//! than write those keys again). Object names
//! are `FILE_PREFIX-<pipeline tag>-<hash of the start position>.EXT`: a replay writes
//! the same names, and two pipelines writing one folder never collide.
//!
//! The `_sluice/` folder sits under the template's literal prefix; Hive, Spark and
//! pyarrow skip folders starting with `_` when they read a dataset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use connector_api::{
    stable_hash, Batch, Error, ErrorKind, Offsets, PositionNames, Result, Sink, SinkContext,
    SinkState,
};
use serde::{Deserialize, Serialize};
use sluice_formats::Encoder;
use tokio::sync::Semaphore;

use crate::client::{connect, is_not_found, s3_error};
use crate::codec::{Compressor, PartBuffer};
use crate::config::{Connection, S3SinkConfig};
use crate::template::Template;
use crate::upload::{Part, Upload};

/// Part uploads in flight at once, across all objects.
const PARALLEL_UPLOADS: usize = 4;

/// An object whose parts are all uploaded, waiting to be completed (published).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Finished {
    key: String,
    upload_id: String,
    parts: Vec<Part>,
}

#[derive(Serialize, Deserialize)]
struct Intent {
    objects: Vec<Finished>,
    offsets: String,
}

#[derive(Serialize, Deserialize)]
struct State {
    offsets: String,
}

/// An object being written.
struct Writing {
    schema: SchemaRef,
    /// Taken when the object is finished. In a mutex only to be `Sync` (the sink is
    /// borrowed across awaits); always reached through `get_mut`, never locked.
    encoder: Option<Mutex<Encoder<Compressor>>>,
    buf: PartBuffer,
    upload: Upload,
    started: Instant,
}

impl Writing {
    /// Encodes the object's footer, uploads its last part (the only one of an empty
    /// object) and waits for all parts.
    async fn finish(&mut self) -> Result<Vec<Part>> {
        if let Some(encoder) = self.encoder.take() {
            let encoder = encoder.into_inner().unwrap_or_else(|p| p.into_inner());
            encoder.finish()?.finish()?;
        }
        let last = self.buf.take();
        if !last.is_empty() || self.upload.started() == 0 {
            self.upload.part(last).await?;
        }
        self.upload.wait().await
    }
}

/// Writes batches as objects under a bucket and key template.
pub struct S3Sink {
    config: S3SinkConfig,
    conn: Connection,
    template: Template,
    client: Option<Client>,
    pipeline: String,
    /// `FILE_PREFIX-<pipeline tag>-`: the start of every object name this pipeline writes.
    name_start: String,
    state_prefix: String,
    /// Position after the last batch written: the start of the next object.
    position: Offsets,
    /// Names of the objects started, from their start positions and folders.
    names: PositionNames,
    open: HashMap<String, Writing>,
    /// Objects finished since the last flush, uploaded but not yet visible.
    finished: Vec<Finished>,
    permits: Arc<Semaphore>,
    /// The offsets in the state object, to skip rewriting it unchanged.
    stored: Option<String>,
}

impl S3Sink {
    /// A sink for `config` (validated).
    pub fn new(config: S3SinkConfig) -> Result<Self> {
        config.validate()?;
        let template = config.template()?;
        let state_prefix = format!("{}_sluice/", template.static_prefix());
        Ok(S3Sink {
            conn: config.connection(),
            template,
            config,
            client: None,
            pipeline: String::new(),
            name_start: String::new(),
            state_prefix,
            position: Offsets::new(),
            names: PositionNames::default(),
            open: HashMap::new(),
            finished: Vec::new(),
            permits: Arc::new(Semaphore::new(PARALLEL_UPLOADS)),
            stored: None,
        })
    }

    fn client(&self) -> Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::internal("the S3 sink is not open"))
    }

    fn state_key(&self) -> String {
        format!("{}{}.state.json", self.state_prefix, self.pipeline)
    }

    fn intent_key(&self) -> String {
        format!("{}{}.pending.json", self.state_prefix, self.pipeline)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>> {
        let client = self.client()?;
        let out = match client
            .get_object()
            .bucket(&self.conn.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(s3_error(e, &format!("reading {}", self.conn.url(key)))),
        };
        let bytes = out.body.collect().await.map_err(|e| {
            Error::transient(format!("reading {}", self.conn.url(key))).with_source(e)
        })?;
        serde_json::from_slice(&bytes.into_bytes())
            .map(Some)
            .map_err(|e| {
                Error::internal(format!("{} is unreadable", self.conn.url(key))).with_source(e)
            })
    }

    async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let body =
            serde_json::to_vec(value).map_err(|e| Error::internal("state").with_source(e))?;
        self.client()?
            .put_object()
            .bucket(&self.conn.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error(e, &format!("writing {}", self.conn.url(key))))?;
        Ok(())
    }

    /// The key of an object in `folder` whose name hashes to `hash`.
    fn object_key(&self, folder: &str, hash: u64) -> String {
        format!(
            "{folder}{}{hash:016x}.{}",
            self.name_start,
            self.config.extension()
        )
    }

    /// The length of an object's name after its folder (the hash is fixed-width).
    fn name_len(&self) -> usize {
        self.object_key("", 0).len()
    }

    async fn start_object(&mut self, folder: &str, schema: SchemaRef) -> Result<()> {
        // before an upload is started that nothing would finish
        self.config.csv.accepts(self.config.format, &schema)?;
        if self.open.len() >= self.config.max_open_objects {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(k, _)| k.clone());
            if let Some(folder) = oldest {
                self.finish_object(&folder).await?;
            }
        }
        let hash = self.names.next(&self.position, Some(folder));
        let key = self.object_key(folder, hash);
        let upload = Upload::start(
            self.client()?,
            &self.conn.bucket,
            &key,
            &self.conn.url(&key),
            Some(content_type(&self.config)),
            self.permits.clone(),
        )
        .await
        .map_err(aborted)?;
        let buf = PartBuffer::default();
        let out = Compressor::new(self.config.compression, buf.clone())?;
        let encoder = Encoder::new(
            self.config.format,
            schema.clone(),
            out,
            (&self.config.json, &self.config.csv, &self.config.parquet),
        )?;
        self.open.insert(
            folder.to_string(),
            Writing {
                schema,
                encoder: Some(Mutex::new(encoder)),
                buf,
                upload,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// Encodes the object's footer, uploads its last part and waits for all parts.
    async fn finish_object(&mut self, folder: &str) -> Result<()> {
        let Some(mut w) = self.open.remove(folder) else {
            return Ok(());
        };
        match w.finish().await {
            Ok(parts) => {
                self.finished.push(Finished {
                    key: w.upload.key().to_string(),
                    upload_id: w.upload.id().to_string(),
                    parts,
                });
                Ok(())
            }
            Err(e) => {
                w.upload.abort().await;
                Err(aborted(e))
            }
        }
    }

    /// Aborts an upload, logging (not failing) when that fails too.
    async fn abort(&self, key: &str, upload_id: &str) {
        if let Ok(client) = self.client() {
            let url = self.conn.url(key);
            crate::upload::abort(client, &self.conn.bucket, key, upload_id, &url).await;
        }
    }

    /// Completes the intent's uploads and commits its offsets as the state.
    async fn roll_forward(&mut self, intent: &Intent) -> Result<()> {
        let client = self.client()?.clone();
        for obj in &intent.objects {
            let done = crate::upload::complete(
                &client,
                &self.conn.bucket,
                &obj.key,
                &obj.upload_id,
                &obj.parts,
            )
            .await;
            match done {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {
                    // completed before a crash: the object must be there
                    client
                        .head_object()
                        .bucket(&self.conn.bucket)
                        .key(&obj.key)
                        .send()
                        .await
                        .map_err(|e| {
                            let e = s3_error(e, &format!("checking {}", self.conn.url(&obj.key)));
                            if e.kind() == ErrorKind::NotFound {
                                Error::internal(format!(
                                    "{} was uploaded but neither its upload nor the object exists any more: was the upload aborted by a bucket lifecycle rule?",
                                    self.conn.url(&obj.key)
                                ))
                            } else {
                                e
                            }
                        })?;
                }
                Err(e) => {
                    return Err(aborted(s3_error(
                        e,
                        &format!("publishing {}", self.conn.url(&obj.key)),
                    )))
                }
            }
        }
        self.put_json(
            &self.state_key(),
            &State {
                offsets: intent.offsets.clone(),
            },
        )
        .await
        .map_err(aborted)?;
        self.stored = Some(intent.offsets.clone());
        let key = self.intent_key();
        client
            .delete_object()
            .bucket(&self.conn.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| aborted(s3_error(e, &format!("deleting {}", self.conn.url(&key)))))?;
        Ok(())
    }

    /// True when `key` is one this sink writes: its name, its extension, and as many
    /// folders below the static prefix as the template renders (another sink of the
    /// pipeline under a deeper prefix, the dead-letter sink say, is not this one).
    fn is_own(&self, key: &str) -> bool {
        let Some(below) = key.strip_prefix(&self.template.static_prefix()) else {
            return false;
        };
        let name = below.rsplit('/').next().unwrap_or(below);
        name.starts_with(&self.name_start)
            && name.ends_with(&format!(".{}", self.config.extension()))
            && self.template.depths().contains(&below.matches('/').count())
            && !key.starts_with(&self.state_prefix)
    }

    /// Fails when an object this pipeline published is in the bucket but its state
    /// object is not: the state was deleted, and starting over would write the same
    /// keys over published data. Lists the template's literal prefix, only when there
    /// is no state (a first run, or a lost state).
    async fn refuse_published_without_state(&self) -> Result<()> {
        let client = self.client()?;
        let prefix = self.template.static_prefix();
        let mut pages = client
            .list_objects_v2()
            .bucket(&self.conn.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| s3_error(e, &format!("listing {}", self.conn.url(&prefix))))?;
            let published = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .find(|key| self.is_own(key));
            if let Some(key) = published {
                return Err(Error::storage(format!(
                    "{} was published by pipeline \"{}\", but its state object {} is missing, \
                     so a new run would write over what it published; restore the state object, \
                     or move the objects whose names start with \"{}\" away to write everything again",
                    self.conn.url(key),
                    self.pipeline,
                    self.conn.url(&self.state_key()),
                    self.name_start,
                )));
            }
        }
        Ok(())
    }

    /// Aborts every upload this pipeline left in progress (before a crash).
    async fn abort_orphans(&self) -> Result<()> {
        let client = self.client()?;
        let prefix = self.template.static_prefix();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = client
                .list_multipart_uploads()
                .bucket(&self.conn.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| {
                    s3_error(e, &format!("listing uploads in {}", self.conn.url(&prefix)))
                })?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let name = key.rsplit('/').next().unwrap_or(key);
                if name.starts_with(&self.name_start) {
                    tracing::info!(object = %self.conn.url(key), "aborting an upload left unfinished by an earlier run");
                    self.abort(key, id).await;
                }
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(())
    }
}

/// An S3 failure after the sink accepted records it had not made durable: the pipeline
/// restarts from its last checkpoint (after which `open` aborts the half-done uploads).
fn aborted(e: Error) -> Error {
    match e.kind() {
        ErrorKind::Auth
        | ErrorKind::NotFound
        | ErrorKind::Config
        | ErrorKind::Storage
        | ErrorKind::Internal => e,
        _ => Error::new(ErrorKind::Aborted, e.to_string()),
    }
}

fn content_type(config: &S3SinkConfig) -> &'static str {
    match (config.format, config.compression.for_key("")) {
        (_, crate::config::Compression::Gzip) => "application/gzip",
        (_, crate::config::Compression::Zstd) => "application/zstd",
        (sluice_formats::Format::Json, _) => "application/x-ndjson",
        (sluice_formats::Format::Csv, _) => "text/csv",
        (sluice_formats::Format::Parquet, _) => "application/vnd.apache.parquet",
    }
}

#[connector_api::async_trait]
impl Sink for S3Sink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        self.pipeline = ctx.pipeline.clone();
        self.name_start = format!(
            "{}-{:08x}-",
            self.config.file_prefix,
            stable_hash(ctx.pipeline.as_bytes()) as u32
        );
        let shortest = self.template.static_prefix().len() + self.name_len();
        if shortest > crate::template::MAX_KEY {
            return Err(Error::config(format!(
                "prefix: every object key would be at least {shortest} bytes, over the {} S3 takes",
                crate::template::MAX_KEY
            ))
            .with_field("prefix"));
        }
        let client = connect(&self.conn).await?;
        check_bucket(&client, &self.conn).await?;
        self.client = Some(client);
        if let Some(intent) = self.get_json::<Intent>(&self.intent_key()).await? {
            tracing::info!(bucket = %self.conn.bucket, objects = intent.objects.len(), "completing a publish interrupted by a crash");
            self.roll_forward(&intent).await?;
        }
        self.abort_orphans().await?;
        let offsets = match self.get_json::<State>(&self.state_key()).await? {
            Some(state) => {
                self.stored = Some(state.offsets.clone());
                Some(Offsets::from_envelope(&state.offsets)?)
            }
            None => {
                self.refuse_published_without_state().await?;
                None
            }
        };
        self.position = offsets.clone().unwrap_or_default();
        Ok(SinkState {
            // stored with the data: none stored means the data is gone too (or never
            // was), and the pipeline starts over, whatever the checkpoint store says
            offsets: Some(offsets.unwrap_or_default()),
            schema: None,
        })
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        if batch.num_rows() == 0 {
            self.position.merge(&batch.offsets);
            return Ok(());
        }
        let records = &batch.records;
        let groups = self.template.render(records, chrono::Utc::now())?;
        let mut refused = crate::template::too_long(&groups, self.name_len(), records)?;
        let place = format!("bucket \"{}\"", self.conn.bucket);
        refused.extend(sluice_formats::scan::format_refusals(
            self.config.format,
            &self.config.csv,
            records,
            &place,
        )?);
        if !refused.is_empty() {
            return Err(Error::refused(refused));
        }
        let whole = groups.len() == 1;
        for (folder, rows) in groups {
            let part: RecordBatch = if whole {
                records.clone()
            } else {
                arrow_select::take::take_record_batch(records, &UInt32Array::from(rows))?
            };
            let schema = part.schema();
            if self.open.get(&folder).is_some_and(|w| w.schema != schema) {
                self.finish_object(&folder).await?;
            }
            if !self.open.contains_key(&folder) {
                self.start_object(&folder, schema).await?;
            }
            let mut w = self
                .open
                .remove(&folder)
                .ok_or_else(|| Error::internal("no open object"))?;
            let encoder = w
                .encoder
                .as_mut()
                .ok_or_else(|| Error::internal("object already finished"))?
                .get_mut()
                .unwrap_or_else(|p| p.into_inner());
            let mut result = connector_api::blocking(|| encoder.write(&part));
            let (rows, bytes) = (encoder.rows(), encoder.bytes());
            while result.is_ok() && w.buf.len() >= self.config.part_size {
                let data = w.buf.take();
                result = w.upload.part(data).await;
            }
            if let Err(e) = result {
                w.upload.abort().await;
                return Err(aborted(e));
            }
            let full = (self.config.max_records > 0 && rows >= self.config.max_records)
                || (self.config.max_bytes > 0 && bytes >= self.config.max_bytes);
            self.open.insert(folder.clone(), w);
            if full {
                self.finish_object(&folder).await?;
            }
        }
        self.position.merge(&batch.offsets);
        Ok(())
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        // objects started after this flush are named from its position: a dead-letter
        // sink, whose batches carry no offsets, names each flush's objects apart too
        self.position = offsets.clone();
        let folders: Vec<String> = self.open.keys().cloned().collect();
        for folder in folders {
            self.finish_object(&folder).await?;
        }
        let envelope = offsets.to_envelope();
        if self.finished.is_empty() {
            if self.stored.as_deref() != Some(envelope.as_str()) {
                self.put_json(
                    &self.state_key(),
                    &State {
                        offsets: envelope.clone(),
                    },
                )
                .await
                .map_err(aborted)?;
                self.stored = Some(envelope);
            }
            return Ok(());
        }
        let intent = Intent {
            objects: std::mem::take(&mut self.finished),
            offsets: envelope,
        };
        if let Err(e) = self.put_json(&self.intent_key(), &intent).await {
            self.finished = intent.objects;
            return Err(aborted(e));
        }
        tracing::debug!(objects = intent.objects.len(), "publishing objects");
        self.roll_forward(&intent).await
    }

    async fn close(&mut self) -> Result<()> {
        let open: Vec<Writing> = self.open.drain().map(|(_, w)| w).collect();
        for w in open {
            w.upload.abort().await;
        }
        for f in std::mem::take(&mut self.finished) {
            self.abort(&f.key, &f.upload_id).await;
        }
        Ok(())
    }
}

/// The bucket exists and the credentials may use it.
pub async fn check_bucket(client: &Client, conn: &Connection) -> Result<()> {
    client
        .head_bucket()
        .bucket(&conn.bucket)
        .send()
        .await
        .map_err(|e| {
            let e = s3_error(e, &format!("bucket \"{}\"", conn.bucket));
            match e.kind() {
                ErrorKind::NotFound => Error::not_found(format!(
                    "bucket \"{}\" does not exist (or is in another account)",
                    conn.bucket
                ))
                .with_field("bucket"),
                ErrorKind::Auth => Error::new(
                    ErrorKind::Auth,
                    format!(
                        "access to bucket \"{}\" was refused: check the credentials (auth) and the bucket policy",
                        conn.bucket
                    ),
                )
                .with_field("auth"),
                _ => e,
            }
        })?;
    Ok(())
}

/// `sluice check`: the bucket is there and an object can be written and deleted.
pub async fn check(config: &S3SinkConfig) -> Result<()> {
    let conn = config.connection();
    let client = connect(&conn).await?;
    check_bucket(&client, &conn).await?;
    let key = format!("{}_sluice/.check", config.template()?.static_prefix());
    client
        .put_object()
        .bucket(&conn.bucket)
        .key(&key)
        .body(ByteStream::from_static(b"ok"))
        .send()
        .await
        .map_err(|e| s3_error(e, &format!("writing {}", conn.url(&key))))?;
    client
        .delete_object()
        .bucket(&conn.bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| s3_error(e, &format!("deleting {}", conn.url(&key))))?;
    Ok(())
}
