//! Describing tables and queries: their columns, Arrow schema and primary key.

use std::sync::Arc;

use arrow_schema::{Field, Schema, SchemaRef};
use connector_api::{Error, Result};
use sqlx::postgres::PgPool;

use crate::config::{PostgresSourceConfig, SnapshotOrder, SourceMode};
use crate::conn::connect_url;
use crate::error::pg_error;
use crate::types::source_type;

use super::table::Column;

/// The columns, Arrow schema and primary key of a table; an error names any column
/// whose type has no Arrow mapping.
pub(super) async fn describe(
    pool: &PgPool,
    schema: &str,
    table: &str,
) -> Result<(Vec<Column>, SchemaRef, Vec<usize>)> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| pg_error(format!("table \"{schema}\".\"{table}\""), e))?;
    let what = format!("table \"{schema}\".\"{table}\"");
    describe_on(&mut conn, schema, table, &what).await
}

/// The columns and Arrow schema of the rows of `query` (a temporary view, dropped with
/// the transaction, tells their types).
pub(super) async fn describe_query(
    pool: &PgPool,
    query: &str,
) -> Result<(Vec<Column>, SchemaRef, Vec<usize>)> {
    let failed = |e| pg_error("query", e).with_field("query");
    let mut tx = pool.begin().await.map_err(failed)?;
    sqlx::query(&format!("CREATE TEMP VIEW sluice_query AS {query}"))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    let (temp,): (String,) =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE oid = pg_my_temp_schema()")
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
    let described = describe_on(&mut tx, &temp, "sluice_query", "query").await;
    let _ = tx.rollback().await;
    described
}

pub(super) async fn describe_on(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    table: &str,
    what: &str,
) -> Result<(Vec<Column>, SchemaRef, Vec<usize>)> {
    let rows: Vec<(String, String, bool, String, Option<i32>)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, t.typtype::text, \
                (SELECT array_position(i.indkey::int2[], a.attnum)::int4 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| pg_error(what, e))?;
    if rows.is_empty() {
        return Err(Error::not_found(format!("{what} does not exist")).with_field("tables"));
    }
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    let mut pk: Vec<(i32, usize)> = Vec::new();
    for (i, (name, pg, notnull, typtype, pkpos)) in rows.into_iter().enumerate() {
        let dt = source_type(&pg, &typtype).ok_or_else(|| {
            Error::schema(format!(
                "{what}: column \"{name}\" has type \"{pg}\", which has no Arrow mapping"
            ))
        })?;
        fields.push(Field::new(&name, dt, !notnull));
        if let Some(p) = pkpos {
            pk.push((p, i));
        }
        columns.push(Column { name, pg });
    }
    pk.sort();
    Ok((
        columns,
        Arc::new(Schema::new(fields)),
        pk.into_iter().map(|(_, i)| i).collect(),
    ))
}

/// A table without a primary key cannot be read in key order, nor by `cdc` (which
/// needs one to apply updates and deletes): an error naming the table and the way out.
pub(super) fn need_primary_key(
    config: &PostgresSourceConfig,
    what: &str,
    pk: &[usize],
) -> Result<()> {
    if !pk.is_empty() {
        return Ok(());
    }
    let why = match (config.mode, config.snapshot_order) {
        (SourceMode::Cdc, _) => "mode = \"cdc\" needs one to apply updates and deletes",
        (SourceMode::Snapshot, SnapshotOrder::Key) => {
            "a resumable snapshot reads in key order, or in physical order with \
             snapshot_order = \"physical\""
        }
        _ => return Ok(()),
    };
    Err(Error::schema(format!("{what} has no primary key; {why}")).with_field("tables"))
}

/// `sluice schema` / `check`: the schema of the first table (all tables are checked).
pub async fn discover(config: &PostgresSourceConfig) -> Result<SchemaRef> {
    let pool = connect_url(&config.url).await?;
    if let Some(q) = config.query_text() {
        let described = describe_query(&pool, q).await;
        pool.close().await;
        return described.map(|(_, schema, _)| schema);
    }
    let mut first = None;
    for t in &config.tables {
        let (_, schema, pk) = describe(&pool, &config.schema, t).await?;
        need_primary_key(config, &format!("table \"{}\".\"{t}\"", config.schema), &pk)?;
        first.get_or_insert(schema);
    }
    pool.close().await;
    first.ok_or_else(|| Error::config("no table").with_field("tables"))
}
