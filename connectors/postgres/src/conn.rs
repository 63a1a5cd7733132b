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
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options(url)?)
        .await
        .map_err(|e| pg_error("cannot connect to PostgreSQL", e))
}

/// Opens one connection that is never replaced behind the caller's back (a pool may
/// reconnect silently, which would drop the session's advisory lock). Without an
/// `application_name` in the URL (or `PGAPPNAME`), the session is named `name`, so
/// `pg_stat_activity` shows which pipeline holds it.
pub async fn connect_one(url: &Secret, name: &str) -> Result<PgConnection> {
    let mut options = options(url)?;
    if options.get_application_name().is_none() {
        options = options.application_name(name);
    }
    options
        .connect()
        .await
        .map_err(|e| pg_error("cannot connect to PostgreSQL", e))
}
