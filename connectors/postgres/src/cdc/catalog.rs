//! What `cdc` checks and sets up in the catalog over a plain connection: the server's
//! `wal_level`, the table (its OID, replica identity and out-of-line columns), the
//! publication and the slot. Every refusal names the object and the statement that
//! fixes it.

use connector_api::{Error, Result};
use sqlx::postgres::PgPool;

use super::{lsn_text, parse_lsn};
use crate::conn::quote;
use crate::error::pg_error;

/// Fails unless `wal_level = logical`, saying how to fix it.
pub async fn check_wal_level(pool: &PgPool) -> Result<()> {
    let (level,): (String,) = sqlx::query_as("SHOW wal_level")
        .fetch_one(pool)
        .await
        .map_err(|e| pg_error("SHOW wal_level", e))?;
    if level != "logical" {
        return Err(Error::config(format!(
            "mode = \"cdc\" needs wal_level = logical, the server has {level}: run ALTER SYSTEM SET wal_level = logical; \
             and restart PostgreSQL"
        ))
        .with_field("mode"));
    }
    Ok(())
}

/// A table of the pipeline: `schema.name`, as the catalog and messages name it.
#[derive(Clone, Debug)]
pub struct TableName {
    /// Schema (namespace).
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl TableName {
    /// `"schema"."name"`, quoted for SQL.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// The table as the catalog has it now.
pub struct TableState {
    /// The table's OID, or None when no table has that name.
    pub oid: Option<u32>,
    /// The publication publishes the table of that name.
    pub published: bool,
}

/// The table's OID and whether `publication` covers it.
pub async fn table_state(
    pool: &PgPool,
    publication: &str,
    table: &TableName,
) -> Result<TableState> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "SELECT c.oid::int8, EXISTS (SELECT 1 FROM pg_publication_tables p \
                WHERE p.pubname = $1 AND p.schemaname = n.nspname AND p.tablename = c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $2 AND c.relname = $3 AND c.relkind IN ('r', 'p')",
    )
    .bind(publication)
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_optional(pool)
    .await
    .map_err(|e| pg_error(format!("read the publication of table {table}"), e))?;
    Ok(match row {
        Some((oid, published)) => TableState {
            oid: u32::try_from(oid).ok(),
            published,
        },
        None => TableState {
            oid: None,
            published: false,
        },
    })
}

/// What the publication is.
pub struct PublicationRef<'a> {
    /// Its name.
    pub name: &'a str,
    /// Sluice named it (`sluice_<pipeline>`), so Sluice may change it.
    pub ours: bool,
}

/// Makes sure `publication` exists, publishes every kind of change, and covers
/// `table`. A publication Sluice named is created or brought in line (`ALTER
/// PUBLICATION ... ADD TABLE`) when `may_add` (no change of the table has been read
/// yet, so none can have been missed); a publication the user named is never changed:
/// what it lacks is an error with the statement that fixes it.
pub async fn cover(
    pool: &PgPool,
    publication: &PublicationRef<'_>,
    table: &TableName,
    may_add: bool,
) -> Result<()> {
    let name = publication.name;
    let flags: Option<(bool, bool, bool, bool, bool)> = sqlx::query_as(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, puballtables FROM pg_publication WHERE pubname = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(|e| pg_error("read publications", e))?;
    let Some((insert, update, delete, truncate, _all)) = flags else {
        sqlx::query(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote(name),
            table.sql()
        ))
        .execute(pool)
        .await
        .map_err(|e| pg_error(format!("create publication \"{name}\""), e))?;
        return Ok(());
    };
    let missing: Vec<&str> = [
        (insert, "insert"),
        (update, "update"),
        (delete, "delete"),
        (truncate, "truncate"),
    ]
    .iter()
    .filter(|(on, _)| !on)
    .map(|&(_, what)| what)
    .collect();
    if !missing.is_empty() {
        return Err(Error::config(format!(
            "publication \"{name}\" does not publish {}; changes of those kinds would never arrive. Run \
             ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
            missing.join(", "),
            quote(name)
        ))
        .with_field("publication"));
    }
    if table_state(pool, name, table).await?.published {
        return Ok(());
    }
    let add = format!(
        "ALTER PUBLICATION {} ADD TABLE {}",
        quote(name),
        table.sql()
    );
    if !publication.ours {
        return Err(Error::config(format!(
            "publication \"{name}\" does not cover table {table}, so none of its changes would arrive. Run {add}; \
             (Sluice does not change a publication it did not name)"
        ))
        .with_field("publication"));
    }
    if !may_add {
        return Err(not_covered(name, table));
    }
    sqlx::query(&add)
        .execute(pool)
        .await
        .map_err(|e| pg_error(format!("add table {table} to publication \"{name}\""), e))?;
    tracing::info!(publication = %name, table = %table, "table added to the publication");
    Ok(())
}

/// The publication lost a table this pipeline has been reading: its changes since were
/// never decoded.
pub fn not_covered(publication: &str, table: &TableName) -> Error {
    Error::not_found(format!(
        "publication \"{publication}\" no longer covers table {table}, which this pipeline reads: changes made \
         since it left the publication were never decoded and cannot be read. Add it again (ALTER PUBLICATION {} \
         ADD TABLE {};), then re-snapshot: `sluice offsets reset` and clear the target",
        quote(publication),
        table.sql()
    ))
    .with_field("publication")
}

/// The table was dropped, or dropped and created again, after this pipeline read it.
pub fn recreated(table: &TableName, publication: &str, was: u32, now: Option<u32>) -> Error {
    let what = match now {
        Some(now) => format!("was dropped and created again (OID {was}, now {now})"),
        None => "was dropped".to_string(),
    };
    Error::not_found(format!(
        "table {table} {what} after this pipeline read it through publication \"{publication}\": the changes \
         of the new table were never decoded (a dropped table leaves its publication), and the target still \
         holds the old rows. Re-snapshot it: `sluice offsets reset` and clear the target"
    ))
    .with_field("tables")
}

/// Refuses a table whose out-of-line (TOAST) columns an UPDATE may leave out of the
/// change: without `REPLICA IDENTITY FULL`, pgoutput sends "unchanged" instead of
/// the value of such a column, and a sink would write NULL over it.
pub async fn check_identity(pool: &PgPool, table: &TableName) -> Result<()> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, c.relreplident::text \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
           AND t.typlen = -1 AND a.attstorage IN ('x', 'e') ORDER BY a.attnum",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_all(pool)
    .await
    .map_err(|e| pg_error(format!("read the columns of table {table}"), e))?;
    if rows.is_empty() || rows.iter().any(|(_, identity)| identity == "f") {
        return Ok(());
    }
    let columns: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    Err(Error::schema(format!(
        "table {table} has columns PostgreSQL may store out of line (TOAST): {}. An UPDATE that leaves such a \
         column unchanged does not carry its value in the change, and the target would lose it. Run ALTER TABLE \
         {} REPLICA IDENTITY FULL; (updates then log the old row whole, so every change carries every value)",
        columns.join(", "),
        table.sql()
    ))
    .with_field("tables"))
}

/// A replication slot as the catalog has it.
pub struct Slot {
    /// Its confirmed position.
    pub confirmed: u64,
    /// The server invalidated it (`wal_status = 'lost'`: `max_slot_wal_keep_size`).
    pub lost: bool,
}

/// The slot, or None when it does not exist.
pub async fn slot(pool: &PgPool, slot: &str) -> Result<Option<Slot>> {
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| pg_error("read replication slots", e))?;
    Ok(row.map(|(lsn, status)| Slot {
        confirmed: lsn.as_deref().and_then(parse_lsn).unwrap_or(0),
        lost: status.as_deref() == Some("lost"),
    }))
}

/// Drops a slot of that name left by an earlier pipeline, so a first run starts clean.
pub async fn drop_stale_slot(pool: &PgPool, name: &str) -> Result<()> {
    if slot(pool, name).await?.is_some() {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(name)
            .execute(pool)
            .await
            .map_err(|e| pg_error(format!("drop stale replication slot \"{name}\""), e))?;
    }
    Ok(())
}

/// The slot is gone or invalidated while this pipeline still needs its changes.
/// `read_to`: the end of the last change read; `snapshot_done`: the snapshot that
/// starts `cdc` was read whole.
pub fn slot_gone(slot: &str, lost: bool, read_to: Option<u64>, snapshot_done: bool) -> Error {
    let state = if lost {
        "was invalidated by the server (its WAL exceeded max_slot_wal_keep_size)"
    } else {
        "is gone"
    };
    let since = match read_to {
        Some(lsn) => format!(
            "{state}, but this pipeline has read changes from it up to LSN {}",
            lsn_text(lsn)
        ),
        None if snapshot_done => {
            format!("{state} after the snapshot, before any change was read from it")
        }
        None => format!("{state} during the snapshot that starts this pipeline"),
    };
    Error::not_found(format!(
        "replication slot \"{slot}\" {since}; the changes since cannot be read. Re-snapshot: run `sluice offsets \
         reset` and clear the target to start over"
    ))
    .with_field("slot")
}
