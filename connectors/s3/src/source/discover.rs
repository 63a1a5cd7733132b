//! `sluice schema` for the S3 source: the declared schema, or the one read from the
//! first matching object.

use arrow_array::RecordBatchReader as _;
use arrow_schema::SchemaRef;
use connector_api::{Error, Result};
use sluice_formats::{Format, TextDecoder};

use super::listing::list_matching;
use super::{spool_parquet, READ_TARGET};
use crate::client::{connect, s3_error};
use crate::codec::Decompressor;
use crate::config::S3SourceConfig;

/// `sluice schema`: the declared schema, or the one of the first object.
pub async fn discover(config: &S3SourceConfig) -> Result<Option<SchemaRef>> {
    if let Some(s) = config.declared_schema()? {
        return Ok(Some(s));
    }
    let conn = config.connection();
    let client = connect(&conn).await?;
    let pattern = glob::Pattern::new(&config.path)
        .map_err(|e| Error::config("path").with_source(e).with_field("path"))?;
    let Some(first) = list_matching(&client, &conn, config, &pattern)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    if config.format == Format::Parquet {
        let Some(reader) = spool_parquet(&client, &conn, &first, 0, 1).await? else {
            return Ok(None);
        };
        return Ok(Some(reader.schema()));
    }
    let out = client
        .get_object()
        .bucket(&conn.bucket)
        .key(&first.key)
        .range(format!("bytes=0-{}", READ_TARGET - 1))
        .send()
        .await
        .map_err(|e| s3_error(e, &format!("reading {}", conn.url(&first.key))))?;
    let bytes = out
        .body
        .collect()
        .await
        .map_err(|e| Error::transient("download broke off").with_source(e))?
        .into_bytes();
    let mut head = Vec::new();
    let mut d = Decompressor::new(config.compression.for_key(&first.key))?;
    let complete = first.size as usize <= READ_TARGET;
    d.push(&bytes, &mut head)
        .map_err(|e| Error::data(format!("{}: {e}", conn.url(&first.key))))?;
    if complete {
        let _ = d.finish(&mut head);
    }
    let mut text = TextDecoder::new(config.format, None, &config.csv)
        .ok_or_else(|| Error::internal("no text decoder"))?;
    let decoded = text.decode(&head, 1000, complete, true)?;
    Ok(decoded.batch.map(|b| b.schema()))
}
