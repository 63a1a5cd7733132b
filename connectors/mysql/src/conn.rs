//! Connecting to MySQL/MariaDB and naming things: what the source and the sink share.

use connector_api::{Error, Result, Secret};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::my_error;

/// Session settings every connection starts with: times in UTC (a `TIMESTAMP`
/// column is read and written as UTC, never in the server's zone), 4-byte UTF-8, and
/// strict mode, so a value that does not fit a column is an error, never clipped.
const SESSION: [&str; 3] = [
    "SET time_zone = '+00:00'",
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
    "SET sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO,ERROR_FOR_DIVISION_BY_ZERO'",
];

/// Quotes an identifier with backticks; a name from data can never inject SQL.
pub fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// A table as `table` or `database.table`, quoted.
pub fn quote_table(name: &str) -> String {
    match split_table(name) {
        (Some(db), table) => format!("{}.{}", quote(db), quote(table)),
        (None, table) => quote(table),
    }
}

/// `database.table` as (database, table); a name without a dot is in the URL's
/// database.
pub fn split_table(name: &str) -> (Option<&str>, &str) {
    match name.split_once('.') {
        Some((db, table)) => (Some(db), table),
        None => (None, name),
    }
}

/// Parses the `url` option (`mariadb://` is read as `mysql://`).
fn options(url: &Secret) -> Result<Opts> {
    let text = url.expose();
    let text = match text.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => text.to_string(),
    };
    Opts::from_url(&text).map_err(|e| {
        Error::config(format!(
            "url {} is not a valid MySQL URL",
            connector_api::redacted_url(url.expose())
        ))
        .with_source(e)
        .with_field("url")
    })
}

/// Opens one connection with the session settings of [`SESSION`].
pub async fn connect(url: &Secret) -> Result<Conn> {
    let opts = OptsBuilder::from_opts(options(url)?).init(SESSION.to_vec());
    Conn::new(opts).await.map_err(|e| {
        my_error(
            format!(
                "cannot connect to MySQL at {}",
                connector_api::redacted_url(url.expose())
            ),
            e,
        )
    })
}

/// The database a table name lives in: its own prefix, else the session's.
pub async fn database_of(conn: &mut Conn, table: &str) -> Result<String> {
    if let (Some(db), _) = split_table(table) {
        return Ok(db.to_string());
    }
    let db: Option<Option<String>> = conn
        .query_first("SELECT DATABASE()")
        .await
        .map_err(|e| my_error("read the session's database", e))?;
    db.flatten().ok_or_else(|| {
        Error::config(format!(
            "table \"{table}\" names no database and the url has none; write it as database.table"
        ))
        .with_field("table")
    })
}

/// The primary-key columns of a table, in key order (empty when it has none).
pub async fn primary_key(conn: &mut Conn, db: &str, table: &str) -> Result<Vec<String>> {
    conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
        (db, table),
    )
    .await
    .map_err(|e| my_error(format!("read the primary key of {db}.{table}"), e))
}

/// Whether a table exists.
pub async fn table_exists(conn: &mut Conn, db: &str, table: &str) -> Result<bool> {
    let found: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await
        .map_err(|e| my_error(format!("look for table {db}.{table}"), e))?;
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_names_with_backticks() {
        assert_eq!(quote("a`b"), "`a``b`");
        assert_eq!(quote_table("shop.orders"), "`shop`.`orders`");
        assert_eq!(quote_table("orders"), "`orders`");
    }

    #[test]
    fn reads_mariadb_urls() {
        assert!(options(&Secret::new("mariadb://root@127.0.0.1:3306/test")).is_ok());
        assert!(options(&Secret::new("mysql://root@127.0.0.1:3306/test")).is_ok());
    }
}
