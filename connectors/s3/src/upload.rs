//! A multipart upload whose parts go up in tasks while the next part is made, as many
//! at once as a set of permits shared between objects allows. The parts come back in
//! order with their ETags; nothing is visible until [`complete`]. The `s3` sink
//! completes an upload at the flush that publishes it (after a crash, from the parts it
//! wrote down); the Iceberg sink completes a data file when the file is closed.

use std::collections::VecDeque;
use std::sync::Arc;

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::complete_multipart_upload::{
    CompleteMultipartUploadError, CompleteMultipartUploadOutput,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use connector_api::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::client::{is_not_found, s3_error};

/// One uploaded part: its number and the ETag S3 returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The part's number, from 1.
    pub n: i32,
    /// The ETag S3 returned for it.
    pub etag: String,
}

/// A multipart upload under way.
pub struct Upload {
    client: Client,
    bucket: String,
    key: String,
    id: String,
    /// The object's address, for messages.
    url: String,
    permits: Arc<Semaphore>,
    started: i32,
    /// Parts under way, oldest first.
    running: VecDeque<JoinHandle<Result<Part>>>,
}

impl Upload {
    /// Starts a multipart upload of `key` in `bucket` (`url` names it in messages);
    /// its parts take their permits from `permits`.
    pub async fn start(
        client: &Client,
        bucket: &str,
        key: &str,
        url: &str,
        content_type: Option<&str>,
        permits: Arc<Semaphore>,
    ) -> Result<Upload> {
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_content_type(content_type.map(str::to_string))
            .send()
            .await
            .map_err(|e| s3_error(e, &format!("starting {url}")))?;
        let id = created.upload_id.ok_or_else(|| {
            Error::internal(format!(
                "starting {url}: CreateMultipartUpload returned no upload id"
            ))
        })?;
        Ok(Upload {
            client: client.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            id,
            url: url.to_string(),
            permits,
            started: 0,
            running: VecDeque::new(),
        })
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The upload's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How many parts were started.
    pub fn started(&self) -> i32 {
        self.started
    }

    /// Starts the upload of `body` as the next part once a permit is free.
    pub async fn part(&mut self, body: Vec<u8>) -> Result<()> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("upload permits closed"))?;
        self.started += 1;
        let n = self.started;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .part_number(n)
            .body(ByteStream::from(body));
        let url = self.url.clone();
        self.running.push_back(tokio::spawn(async move {
            let _permit = permit;
            let out = request
                .send()
                .await
                .map_err(|e| s3_error(e, &format!("uploading part {n} of {url}")))?;
            let etag = out
                .e_tag
                .ok_or_else(|| Error::internal(format!("part {n} of {url}: no ETag")))?;
            Ok(Part { n, etag })
        }));
        Ok(())
    }

    /// Waits for the parts under way: every part started, in order, or the first
    /// error (the parts after it still run until [`Upload::abort`]).
    pub async fn wait(&mut self) -> Result<Vec<Part>> {
        let mut parts = Vec::with_capacity(self.running.len());
        // each task out before it is awaited: a finished one is never awaited again
        while let Some(task) = self.running.pop_front() {
            let part = task.await.map_err(|e| {
                Error::internal(format!("uploading a part of {}", self.url)).with_source(e)
            })??;
            parts.push(part);
        }
        Ok(parts)
    }

    /// Waits for every part and completes the upload: the object becomes visible.
    /// On an error the upload is still there to [`Upload::abort`].
    pub async fn finish(&mut self) -> Result<()> {
        let parts = self.wait().await?;
        complete(&self.client, &self.bucket, &self.key, &self.id, &parts)
            .await
            .map_err(|e| s3_error(e, &format!("completing {}", self.url)))?;
        Ok(())
    }

    /// Stops the parts under way, then aborts the upload, so its parts are not kept
    /// (and billed): a part still uploading could land after the abort. Owns what it
    /// needs, so that a drop can spawn it.
    pub async fn abort(self) {
        for task in self.running {
            task.abort();
            let _ = task.await;
        }
        abort(&self.client, &self.bucket, &self.key, &self.id, &self.url).await;
    }
}

/// Aborts upload `id` of `key` (`url` names it), logging, not failing, when that
/// fails too: its parts then stay until an abort succeeds.
pub async fn abort(client: &Client, bucket: &str, key: &str, id: &str, url: &str) {
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .send()
        .await
    {
        if !is_not_found(&e) {
            tracing::warn!(object = %url, error = %s3_error(e, "abort"), "could not abort an unfinished upload: its parts stay until it is aborted (the s3 sink's next start aborts its own)");
        }
    }
}

/// Completes upload `id` of `key` with `parts`; S3's own error, so that a caller can
/// tell an upload completed before (not found) from a failure.
pub async fn complete(
    client: &Client,
    bucket: &str,
    key: &str,
    id: &str,
    parts: &[Part],
) -> std::result::Result<CompleteMultipartUploadOutput, SdkError<CompleteMultipartUploadError>> {
    let parts = parts
        .iter()
        .map(|p| {
            CompletedPart::builder()
                .part_number(p.n)
                .e_tag(&p.etag)
                .build()
        })
        .collect();
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
}
