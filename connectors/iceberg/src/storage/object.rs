//! An S3 object written in parts: one PUT when it stays under a part, else a multipart
//! upload completed by `close` (nothing is visible before). Parts go up in tasks while
//! the next part is encoded, as many at once as the table's files have permits for.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use iceberg::io::FileWrite;
use iceberg::{Error, ErrorKind, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::failed;

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
    upload: Option<String>,
    /// Parts under way, oldest first.
    parts: VecDeque<JoinHandle<Result<CompletedPart>>>,
    done: Vec<CompletedPart>,
    started: i32,
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
            parts: VecDeque::new(),
            done: Vec::new(),
            started: 0,
            closed: false,
        }
    }

    fn error(&self, what: &str, err: connector_api::Error) -> Error {
        failed(format!("{what} of {}", self.path), err)
    }

    /// Starts the upload of the next part once a permit is free.
    async fn upload_part(&mut self, body: Vec<u8>) -> Result<()> {
        let id = match &self.upload {
            Some(id) => id.clone(),
            None => {
                let out = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| self.error("upload", sluice_s3::s3_error(e, &self.path)))?;
                let id = out.upload_id().unwrap_or_default().to_string();
                self.upload = Some(id.clone());
                id
            }
        };
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Unexpected, "upload permits closed"))?;
        self.started += 1;
        let number = self.started;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&id)
            .part_number(number)
            .body(ByteStream::from(body));
        let path = self.path.clone();
        self.parts.push_back(tokio::spawn(async move {
            let _permit = permit;
            let what = format!("upload of part {number} of {path}");
            let out = request
                .send()
                .await
                .map_err(|e| failed(what.clone(), sluice_s3::s3_error(e, &path)))?;
            let etag = out
                .e_tag()
                .ok_or_else(|| Error::new(ErrorKind::Unexpected, format!("{what}: no ETag")))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .e_tag(etag)
                .build())
        }));
        Ok(())
    }

    /// Waits for every part under way, in order.
    async fn wait_parts(&mut self) -> Result<()> {
        while let Some(upload) = self.parts.front_mut() {
            let part = upload.await.map_err(|e| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("upload of a part of {}: {e}", self.path),
                )
            })??;
            self.parts.pop_front();
            self.done.push(part);
        }
        Ok(())
    }

    /// Uploads what is left and completes the object.
    async fn finish(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let Some(id) = self.upload.clone() else {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| self.error("upload", sluice_s3::s3_error(e, &self.path)))?;
            return Ok(());
        };
        if !buf.is_empty() {
            self.upload_part(buf).await?;
        }
        self.wait_parts().await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.done)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                self.error(
                    "completion of the upload",
                    sluice_s3::s3_error(e, &self.path),
                )
            })?;
        self.upload = None;
        Ok(())
    }

    /// Stops the parts under way, then aborts the multipart upload, so its parts are
    /// not kept (and billed): a part still uploading could land after the abort.
    async fn abort(&mut self) {
        if let Some(abort) = self.take_abort() {
            abort.await;
        }
    }

    /// The abort of the upload under way, if any, owning what it needs (a drop
    /// spawns it).
    fn take_abort(&mut self) -> Option<impl std::future::Future<Output = ()> + use<>> {
        let parts: Vec<_> = self.parts.drain(..).collect();
        let id = self.upload.take()?;
        Some(abort_upload(
            self.client.clone(),
            parts,
            self.bucket.clone(),
            self.key.clone(),
            id,
            self.path.clone(),
        ))
    }
}

async fn abort_upload(
    client: Client,
    parts: Vec<JoinHandle<Result<CompletedPart>>>,
    bucket: String,
    key: String,
    id: String,
    path: String,
) {
    for part in parts {
        part.abort();
        let _ = part.await;
    }
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .send()
        .await
    {
        tracing::warn!(error = %sluice_s3::s3_error(e, &path), object = %path, "aborting an upload failed");
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
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            if let Some(abort) = self.take_abort() {
                rt.spawn(abort);
            }
        }
    }
}
