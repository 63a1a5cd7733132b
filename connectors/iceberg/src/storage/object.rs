//! An S3 object written in parts: one PUT when it stays under a part, else a multipart
//! upload (the `s3` connector's [`Upload`]) completed by `close` (nothing is visible
//! before). Parts go up in tasks while the next part is encoded, as many at once as the
//! table's files have permits for.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use iceberg::io::FileWrite;
use iceberg::{Error, ErrorKind, Result};
use sluice_s3::upload::Upload;
use tokio::sync::Semaphore;

use super::{failed, lifted};

/// Size of a part of a multipart upload (S3's minimum is 5 MiB).
const PART: usize = 8 * 1024 * 1024;

pub(super) struct ObjectWrite {
    client: Client,
    /// Permits for part uploads, shared with the table's other objects.
    slots: Arc<Semaphore>,
    bucket: String,
    key: String,
    path: String,
    buf: Vec<u8>,
    /// Started with the first full part.
    upload: Option<Upload>,
    closed: bool,
}

impl ObjectWrite {
    pub(super) fn new(
        client: Client,
        slots: Arc<Semaphore>,
        bucket: &str,
        key: &str,
        path: &str,
    ) -> Self {
        ObjectWrite {
            client,
            slots,
            bucket: bucket.to_string(),
            key: key.to_string(),
            path: path.to_string(),
            buf: Vec::new(),
            upload: None,
            closed: false,
        }
    }

    /// Starts the upload of the next part once a permit is free.
    async fn upload_part(&mut self, body: Vec<u8>) -> Result<()> {
        if self.upload.is_none() {
            let started = Upload::start(
                &self.client,
                &self.bucket,
                &self.key,
                &self.path,
                None,
                self.slots.clone(),
            )
            .await
            .map_err(lifted)?;
            self.upload = Some(started);
        }
        if let Some(upload) = self.upload.as_mut() {
            upload.part(body).await.map_err(lifted)?;
        }
        Ok(())
    }

    /// Uploads what is left and completes the object.
    async fn finish(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        if self.upload.is_none() {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| {
                    failed(
                        format!("upload of {}", self.path),
                        sluice_s3::s3_error(e, &self.path),
                    )
                })?;
            return Ok(());
        }
        if !buf.is_empty() {
            self.upload_part(buf).await?;
        }
        if let Some(upload) = self.upload.as_mut() {
            upload.finish().await.map_err(lifted)?;
        }
        self.upload = None;
        Ok(())
    }

    /// Stops the parts under way and aborts the multipart upload.
    async fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            upload.abort().await;
        }
    }
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        if self.closed {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!("{}: written after close", self.path),
            ));
        }
        self.buf.extend_from_slice(&bs);
        while self.buf.len() >= PART {
            let rest = self.buf.split_off(PART);
            let part = std::mem::replace(&mut self.buf, rest);
            if let Err(e) = self.upload_part(part).await {
                self.abort().await;
                self.closed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!("{}: closed twice", self.path),
            ));
        }
        let result = self.finish().await;
        if result.is_err() {
            self.abort().await;
        }
        self.closed = true;
        result
    }
}

impl Drop for ObjectWrite {
    fn drop(&mut self) {
        // dropped unfinished (a failed write, a run aborted): abort its upload
        if let (Ok(rt), Some(upload)) = (tokio::runtime::Handle::try_current(), self.upload.take())
        {
            rt.spawn(upload.abort());
        }
    }
}
