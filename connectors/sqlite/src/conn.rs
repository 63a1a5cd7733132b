//! Opening a database file, quoting names, and reading a table's schema: what the
//! source and the sink share.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::error::sql_error;
use crate::types::arrow_type;

/// Quotes an identifier; a name from data can never inject SQL.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Opens (creating when asked) the database file with durable settings.
pub async fn connect(path: &str, create: bool) -> Result<SqlitePool> {
    if create {
        if let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::from(e).context(format!("database directory \"{}\"", dir.display()))
            })?;
        }
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .map_err(|e| {
            Error::config(format!("database path \"{path}\""))
                .with_source(e)
                .with_field("path")
        })?
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| sql_error(format!("cannot open database \"{path}\""), e))
}

/// The Arrow schema of an existing table (None when it does not exist).
pub async fn table_schema(pool: &SqlitePool, table: &str) -> Result<Option<SchemaRef>> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, type, \"notnull\" FROM pragma_table_info(?) ORDER BY cid")
            .bind(table)
            .fetch_all(pool)
            .await
            .map_err(|e| sql_error(format!("table \"{table}\""), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut fields = Vec::with_capacity(rows.len());
    for (name, decl, notnull) in rows {
        let dt = arrow_type(&decl).ok_or_else(|| {
            Error::schema(format!(
                "table \"{table}\": column \"{name}\" has declared type \"{decl}\", which has no Arrow mapping"
            ))
        })?;
        fields.push(Field::new(name, dt, notnull == 0));
    }
    Ok(Some(Arc::new(Schema::new(fields))))
}
