//! The table a sink writes: its columns as Arrow sees them, and the DDL that makes it
//! hold a batch (created when missing, new columns added, widened columns modified),
//! run outside the flush's transaction (MySQL commits on DDL).

use arrow_schema::{DataType, SchemaRef};
use connector_api::{columns, Result};
use mysql_async::prelude::Queryable;

use super::{MysqlSink, STAGING};
use crate::config::ZeroDates;
use crate::conn::{quote, split_table, table_exists};
use crate::decode::Decoder;
use crate::error::{code, my_error};
use crate::types::mysql_type;

impl MysqlSink {
    /// The Arrow schema of the table as it is now (None when it does not exist).
    pub(super) async fn read_schema(&mut self) -> Result<Option<SchemaRef>> {
        let (db, bare) = (
            self.db.clone(),
            split_table(&self.config.table).1.to_string(),
        );
        if !table_exists(self.conn()?, &db, &bare).await? {
            return Ok(None);
        }
        let target = self.target.clone();
        let stmt = self
            .conn()?
            .prep(format!("SELECT * FROM {target}"))
            .await
            .map_err(|e| my_error(format!("table {target}: read its columns"), e))?;
        let described = crate::types::describe(&stmt.columns())?;
        Ok(Some(
            Decoder::new(&described, ZeroDates::Error).schema().clone(),
        ))
    }

    /// The DDL that makes the table hold `schema`: CREATE when it is missing, ADD
    /// COLUMN for each new column, MODIFY for each widened one (with its name).
    fn ddl(&self, schema: &SchemaRef) -> Result<Vec<(String, Option<String>)>> {
        let data = schema.fields().iter().filter(|f| f.name() != columns::OP);
        let Some(known) = &self.schema else {
            let mut cols = Vec::new();
            for f in data {
                let key = self.config.key.contains(f.name());
                let null = if f.is_nullable() && !key {
                    ""
                } else {
                    " NOT NULL"
                };
                cols.push(format!(
                    "{} {}{null}",
                    quote(f.name()),
                    mysql_type(f.name(), f.data_type(), key)?
                ));
            }
            if !self.config.key.is_empty() {
                let key: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
                cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
            }
            return Ok(vec![(
                format!(
                    "CREATE TABLE IF NOT EXISTS {} ({}) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
                    self.target,
                    cols.join(", ")
                ),
                None,
            )]);
        };
        let mut ddl = Vec::new();
        for f in data {
            match known.field_with_name(f.name()) {
                Err(_) => ddl.push((
                    format!(
                        "ALTER TABLE {} ADD COLUMN {} {}",
                        self.target,
                        quote(f.name()),
                        mysql_type(f.name(), f.data_type(), false)?
                    ),
                    None,
                )),
                // a column widened upstream (the engine widened the sink's schema
                // under `evolve`): the table's column too
                Ok(k) => {
                    let key = self.config.key.contains(f.name());
                    if let Some(wider) = widened(k.data_type(), f.data_type(), key) {
                        let null = if k.is_nullable() { "NULL" } else { "NOT NULL" };
                        ddl.push((
                            format!(
                                "ALTER TABLE {} MODIFY COLUMN {} {wider} {null}",
                                self.target,
                                quote(f.name())
                            ),
                            Some(f.name().to_string()),
                        ));
                    }
                }
            }
        }
        Ok(ddl)
    }

    /// Creates the table or adds columns, outside any transaction.
    pub(super) async fn prepare_table(&mut self, schema: &SchemaRef) -> Result<()> {
        let ddl = self.ddl(schema)?;
        if ddl.is_empty() {
            return Ok(());
        }
        if self.in_tx {
            // DDL would commit the transaction anyway: commit it with the offsets its
            // rows reach, so they stay exactly once
            let reached = self.reached.clone();
            self.commit_with(&reached).await?;
        }
        for (stmt, widens) in ddl {
            if let Some(column) = widens {
                if !self.plain_column(&column).await? {
                    tracing::warn!(table = %self.target, column = %column, "column not widened: it has a default, an extra attribute or a comment that MODIFY would drop; a value that does not fit it is an error");
                    continue;
                }
                tracing::info!(table = %self.target, column = %column, "column widened: {stmt}");
            }
            match self.conn()?.query_drop(&stmt).await {
                Ok(()) => {}
                // another writer added the same column at the same moment
                Err(e) if code(&e) == Some(1060) => {}
                Err(e) => return Err(my_error(format!("table {}: {stmt}", self.target), e)),
            }
        }
        if self.staging {
            self.exec(&format!(
                "DROP TEMPORARY TABLE IF EXISTS {}.{}",
                quote(&self.db),
                quote(STAGING)
            ))
            .await?;
            self.staging = false;
        }
        self.schema = self.read_schema().await?;
        Ok(())
    }

    /// Whether `column` has nothing but its type and nullability that `MODIFY
    /// COLUMN` would drop (a default, `AUTO_INCREMENT`, `ON UPDATE`, a comment).
    async fn plain_column(&mut self, column: &str) -> Result<bool> {
        let (db, bare) = (
            self.db.clone(),
            split_table(&self.config.table).1.to_string(),
        );
        let row: Option<(Option<String>, String, String)> = self
            .conn()?
            .exec_first(
                "SELECT COLUMN_DEFAULT, EXTRA, COLUMN_COMMENT FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                (db, bare, column),
            )
            .await
            .map_err(|e| my_error(format!("table {}: read column {column}", self.target), e))?;
        Ok(row.is_some_and(|(default, extra, comment)| {
            default.is_none_or(|d| d == "NULL") && extra.is_empty() && comment.is_empty()
        }))
    }
}

/// The type a column holding `from` is modified to so that it holds `to`, when that
/// widens it without changing a value: a wider integer of the same signedness (or a
/// signed one wider than an unsigned one), `FLOAT` to `DOUBLE`, more digits of a
/// `DECIMAL` at the same scale.
fn widened(from: &DataType, to: &DataType, key: bool) -> Option<String> {
    use DataType::*;
    let bits = |t: &DataType| match t {
        Int8 | UInt8 => Some(8),
        Int16 | UInt16 => Some(16),
        Int32 | UInt32 => Some(32),
        Int64 | UInt64 => Some(64),
        _ => None,
    };
    let signed = |t: &DataType| matches!(t, Int8 | Int16 | Int32 | Int64);
    let wider = match (from, to) {
        (Float32, Float64) => true,
        (Decimal128(p1, s1) | Decimal256(p1, s1), Decimal128(p2, s2) | Decimal256(p2, s2)) => {
            p2 > p1 && s1 == s2
        }
        _ => match (bits(from), bits(to)) {
            (Some(a), Some(b)) if b > a => signed(from) == signed(to) || signed(to),
            _ => false,
        },
    };
    wider.then(|| mysql_type("", to, key).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_widening_modifies_a_column() {
        use DataType::*;
        assert_eq!(widened(&Int32, &Int64, false).as_deref(), Some("BIGINT"));
        assert_eq!(
            widened(&UInt8, &UInt32, false).as_deref(),
            Some("INT UNSIGNED")
        );
        assert_eq!(widened(&UInt32, &Int64, false).as_deref(), Some("BIGINT"));
        assert_eq!(
            widened(&Float32, &Float64, false).as_deref(),
            Some("DOUBLE")
        );
        assert_eq!(
            widened(&Decimal128(10, 2), &Decimal128(12, 2), false).as_deref(),
            Some("DECIMAL(12,2)")
        );
        assert_eq!(widened(&Int64, &Int32, false), None);
        assert_eq!(widened(&Int32, &UInt64, false), None);
        assert_eq!(widened(&Decimal128(10, 2), &Decimal128(12, 3), false), None);
        assert_eq!(widened(&Utf8, &LargeUtf8, false), None);
    }
}
