//! Where iceberg reads and writes files: local paths (`file://` or absolute), made
//! durable with fsync of the file and its directory, and `s3://` objects through our
//! `aws-sdk-s3` client (the `s3` connector's, so credentials and endpoints work the
//! same), uploaded in parts ([`object`]).

use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

mod object;

use object::ObjectWrite;

/// Parts of objects uploaded at once by one table's files, while the next is encoded.
const PARTS_IN_FLIGHT: usize = 4;

/// Builds [`Files`]; the S3 client, when there is one, is made before (it is async).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FilesFactory(Files);

impl FilesFactory {
    /// Local files, and S3 objects through `s3` when given.
    pub fn new(s3: Option<Client>) -> Self {
        FilesFactory(Files {
            s3,
            uploads: upload_slots(),
        })
    }
}

#[typetag::serde]
impl StorageFactory for FilesFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.0.clone()))
    }
}

/// Local files and S3 objects, by the path's scheme.
#[derive(Clone, Serialize, Deserialize)]
pub struct Files {
    #[serde(skip)]
    s3: Option<Client>,
    /// Permits for part uploads, shared by every object these files write: the
    /// memory of parts under way is bounded however many partitions are open.
    #[serde(skip, default = "upload_slots")]
    uploads: Arc<Semaphore>,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            s3: None,
            uploads: upload_slots(),
        }
    }
}

fn upload_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(PARTS_IN_FLIGHT))
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Files")
            .field("s3", &self.s3.is_some())
            .finish()
    }
}

/// An `s3://bucket/key` path split, or `None` for a local path.
fn object(path: &str) -> Option<(&str, &str)> {
    let rest = path
        .strip_prefix("s3://")
        .or_else(|| path.strip_prefix("s3a://"))?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

fn failed(what: String, err: connector_api::Error) -> Error {
    let retry = err.is_retryable();
    Error::new(ErrorKind::Unexpected, format!("{what}: {}", err.message())).with_retryable(retry)
}

/// An error of the `s3` connector's upload, whose message names the object already.
fn lifted(err: connector_api::Error) -> Error {
    let retry = err.is_retryable();
    Error::new(ErrorKind::Unexpected, err.message().to_string()).with_retryable(retry)
}

impl Files {
    fn client(&self, path: &str) -> Result<&Client> {
        self.s3.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::FeatureUnsupported,
                format!("{path}: an s3:// location needs the sink's s3 options"),
            )
        })
    }

    /// HEAD of an object: its size, or `None` when there is none.
    async fn head(&self, path: &str) -> Result<Option<u64>> {
        let (bucket, key) = object(path).unwrap_or_default();
        match self
            .client(path)?
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if sluice_s3::is_not_found(&e) => Ok(None),
            Err(e) => Err(failed(
                format!("head of {path}"),
                sluice_s3::s3_error(e, path),
            )),
        }
    }

    async fn get(&self, path: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let (bucket, key) = object(path).unwrap_or_default();
        let mut req = self.client(path)?.get_object().bucket(bucket).key(key);
        if let Some(r) = &range {
            if r.is_empty() {
                return Ok(Bytes::new());
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = req
            .send()
            .await
            .map_err(|e| failed(format!("read of {path}"), sluice_s3::s3_error(e, path)))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, format!("read of {path}: {e}"))
                    .with_retryable(true)
            })?
            .into_bytes();
        if let Some(r) = range {
            if body.len() as u64 != r.end - r.start {
                return Err(Error::new(
                    ErrorKind::DataInvalid,
                    format!(
                        "read of {path}: bytes {}..{} gave {} bytes (the object is shorter)",
                        r.start,
                        r.end,
                        body.len()
                    ),
                ));
            }
        }
        Ok(body)
    }
}

fn local_error(what: &str, path: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{what} {path}: {e}"))
}

/// The local path of a `file:` location.
fn local_path(path: &str) -> std::path::PathBuf {
    let p = path
        .strip_prefix("file://")
        .or_else(|| path.strip_prefix("file:"))
        .unwrap_or(path);
    std::path::PathBuf::from(p)
}

/// Creates a local file, and the directories above it.
fn create_local(path: &str) -> Result<std::fs::File> {
    let p = local_path(path);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| local_error("creating the directory of", path, e))?;
    }
    std::fs::File::create(&p).map_err(|e| local_error("creating", path, e))
}

/// Makes a written local file durable: its bytes, and its name in the directory (a
/// metadata file a commit names must be on disk before the catalog points at it).
fn sync_local(path: &str, file: &std::fs::File) -> Result<()> {
    file.sync_all()
        .map_err(|e| local_error("syncing", path, e))?;
    if let Some(parent) = local_path(path).parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| local_error("syncing the directory of", path, e))?;
    }
    Ok(())
}

/// A local file being written, made durable by `close`.
struct LocalWrite {
    file: Option<std::fs::File>,
    path: String,
}

#[async_trait]
impl FileWrite for LocalWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("{}: written after close", self.path),
            )
        })?;
        file.write_all(&bs)
            .map_err(|e| local_error("writing", &self.path, e))
    }

    async fn close(&mut self) -> Result<()> {
        let file = self.file.take().ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("{}: closed twice", self.path),
            )
        })?;
        sync_local(&self.path, &file)
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for Files {
    async fn exists(&self, path: &str) -> Result<bool> {
        match object(path) {
            Some(_) => Ok(self.head(path).await?.is_some()),
            None => LocalFsStorage::new().exists(path).await,
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        match object(path) {
            Some(_) => match self.head(path).await? {
                Some(size) => Ok(FileMetadata { size }),
                None => Err(Error::new(
                    ErrorKind::DataInvalid,
                    format!("{path}: no such object"),
                )),
            },
            None => LocalFsStorage::new().metadata(path).await,
        }
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        match object(path) {
            Some(_) => self.get(path, None).await,
            None => LocalFsStorage::new().read(path).await,
        }
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        match object(path) {
            Some(_) => Ok(Box::new(ObjectRead {
                files: self.clone(),
                path: path.to_string(),
            })),
            None => LocalFsStorage::new().reader(path).await,
        }
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        match object(path) {
            Some((bucket, key)) => {
                self.client(path)?
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(bs))
                    .send()
                    .await
                    .map_err(|e| {
                        failed(format!("upload of {path}"), sluice_s3::s3_error(e, path))
                    })?;
                Ok(())
            }
            None => {
                let mut file = create_local(path)?;
                file.write_all(&bs)
                    .map_err(|e| local_error("writing", path, e))?;
                sync_local(path, &file)
            }
        }
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        match object(path) {
            Some((bucket, key)) => Ok(Box::new(ObjectWrite::new(
                self.client(path)?.clone(),
                self.uploads.clone(),
                bucket,
                key,
                path,
            ))),
            None => Ok(Box::new(LocalWrite {
                file: Some(create_local(path)?),
                path: path.to_string(),
            })),
        }
    }

    async fn delete(&self, path: &str) -> Result<()> {
        match object(path) {
            Some((bucket, key)) => {
                self.client(path)?
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| {
                        failed(format!("delete of {path}"), sluice_s3::s3_error(e, path))
                    })?;
                Ok(())
            }
            None => LocalFsStorage::new().delete(path).await,
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let Some((bucket, prefix)) = object(path) else {
            return LocalFsStorage::new().delete_prefix(path).await;
        };
        let client = self.client(path)?;
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        let mut token = None;
        loop {
            let out = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| failed(format!("listing of {path}"), sluice_s3::s3_error(e, path)))?;
            for o in out.contents() {
                if let Some(key) = o.key() {
                    self.delete(&format!("s3://{bucket}/{key}")).await?;
                }
            }
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(());
            }
        }
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Ranged reads of an object.
struct ObjectRead {
    files: Files,
    path: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.files.get(&self.path, Some(range)).await
    }
}
