//! Finding the objects to read: the prefix listed, its keys matched against the glob.

use aws_sdk_s3::Client;
use connector_api::{Error, ListedSplit, Result};

use crate::client::{connect, s3_error};
use crate::config::{Connection, S3SourceConfig};
use crate::sink::check_bucket;

/// An object found by listing.
#[derive(Clone, Debug)]
pub(super) struct Listed {
    pub(super) key: String,
    pub(super) etag: String,
    pub(super) size: u64,
}

/// Objects under the path's prefix matching its glob, in key order.
pub(super) async fn list_matching(
    client: &Client,
    conn: &Connection,
    config: &S3SourceConfig,
    pattern: &glob::Pattern,
) -> Result<Vec<Listed>> {
    let prefix = config.list_prefix();
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let mut out = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&conn.bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| s3_error(e, &format!("listing {}", conn.url(prefix))))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            if key.ends_with('/') || !pattern.matches_with(key, options) {
                continue;
            }
            out.push(Listed {
                key: key.to_string(),
                etag: o.e_tag().unwrap_or_default().to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// `sluice check`: the bucket is readable and (unless watching) something matches.
pub async fn check(config: &S3SourceConfig) -> Result<()> {
    let conn = config.connection();
    let client = connect(&conn).await?;
    check_bucket(&client, &conn).await?;
    let pattern = glob::Pattern::new(&config.path)
        .map_err(|e| Error::config("path").with_source(e).with_field("path"))?;
    let found = list_matching(&client, &conn, config, &pattern).await?;
    if found.is_empty() && !config.watch {
        return Err(
            Error::not_found(format!("no object matches {}", conn.url(&config.path)))
                .with_field("path"),
        );
    }
    Ok(())
}

/// The keys the glob matches now, in key order, as splits versioned by their ETag,
/// so an object replaced after it was read is read again.
pub async fn splits(config: &S3SourceConfig) -> Result<Vec<ListedSplit>> {
    let conn = config.connection();
    let client = connect(&conn).await?;
    let pattern = glob::Pattern::new(&config.path)
        .map_err(|e| Error::config("path").with_source(e).with_field("path"))?;
    let found = list_matching(&client, &conn, config, &pattern).await?;
    Ok(found
        .into_iter()
        .map(|o| ListedSplit {
            id: o.key,
            version: Some(o.etag),
        })
        .collect())
}
