//! Connecting to PostgreSQL and quoting names: what the source and the sink share.

use std::time::Duration;

use connector_api::{Error, Result, Secret};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;

use crate::error::pg_error;

/// Quotes an identifier; a name from data can never inject SQL.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Parses the `url` option.
fn options(url: &Secret) -> Result<PgConnectOptions> {
    url.expose().parse().map_err(|e| {
        Error::config("url is not a valid PostgreSQL URL")
            .with_source(e)
            .with_field("url")
    })
}

/// Connects with one pooled connection, classifying failures.
pub async fn connect_url(url: &Secret) -> Result<PgPool> {
    connect_pool(url, 1, "sluice").await
}

/// Connects with a pool of up to `size` connections named `name` (see
/// [`connect_one`]), classifying failures.
pub async fn connect_pool(url: &Secret, size: u32, name: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(named(options(url)?, name))
        .await
        .map_err(|e| pg_error("cannot connect to PostgreSQL", e))
}

/// Opens one connection that is never replaced behind the caller's back (a pool may
/// reconnect silently, which would drop the session's advisory lock).
pub async fn connect_one(url: &Secret, name: &str) -> Result<PgConnection> {
    named(options(url)?, name)
        .connect()
        .await
        .map_err(|e| pg_error("cannot connect to PostgreSQL", e))
}

/// Without an `application_name` in the URL (or `PGAPPNAME`), sessions are named
/// `name`, so `pg_stat_activity` shows which pipeline holds them.
fn named(options: PgConnectOptions, name: &str) -> PgConnectOptions {
    match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(name),
    }
}
