//! What the binlog carries, made the same as what a snapshot reads: the binlog
//! encodes some types differently from the binary protocol (an ENUM as its index, a
//! SET as a bitmask, a TIMESTAMP as Unix seconds in text, a YEAR as text, an unsigned
//! integer as a signed one when the table map has no signedness), so each value is
//! normalised by the column it belongs to before the one decoder turns it into Arrow.
//! Both paths therefore give identical Arrow values.

use connector_api::{Error, Result};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use sluice_formats::calendar::civil_from_days;

use crate::error::my_error;
use crate::types::Kind;

/// The labels of an ENUM or SET column, in definition order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Labels {
    /// An ENUM: index 1 is the first label, 0 the empty error value.
    Enum(Vec<String>),
    /// A SET: bit 0 is the first label.
    Set(Vec<String>),
}

/// One column of a captured table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableColumn {
    /// Its name.
    pub name: String,
    /// What it holds.
    pub kind: Kind,
    /// Nullable.
    pub nullable: bool,
    /// ENUM or SET labels.
    pub labels: Option<Labels>,
    /// Part of the primary key.
    pub key: bool,
}

/// The labels of `column_type` (`enum('a','b')`, `set('x','y')`), unquoted.
fn labels(column_type: &str) -> Option<Labels> {
    // the type's name in any case, the labels as they are
    let head = |name: &str| {
        column_type
            .get(..name.len())
            .filter(|h| h.eq_ignore_ascii_case(name))
            .map(|_| &column_type[name.len()..])
    };
    let (set, body) = if let Some(b) = head("enum(") {
        (false, b)
    } else if let Some(b) = head("set(") {
        (true, b)
    } else {
        return None;
    };
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(next) = chars.next() {
                        label.push(next);
                    }
                }
                other => label.push(other),
            }
        }
        out.push(label);
    }
    Some(if set {
        Labels::Set(out)
    } else {
        Labels::Enum(out)
    })
}

/// The columns of `db.table` in table order: kinds from a prepared `SELECT *`
/// (what a snapshot reads), labels from `information_schema`.
pub async fn table_columns(conn: &mut Conn, db: &str, table: &str) -> Result<Vec<TableColumn>> {
    let relation = format!("{}.{}", crate::conn::quote(db), crate::conn::quote(table));
    let stmt = conn
        .prep(format!("SELECT * FROM {relation}"))
        .await
        .map_err(|e| my_error(format!("table {db}.{table}: read its columns"), e))?;
    let described = crate::types::describe(&stmt.columns())?;
    let types: Vec<(String, String, String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await
        .map_err(|e| my_error(format!("table {db}.{table}: read its column types"), e))?;
    described
        .into_iter()
        .map(|(name, kind, nullable)| {
            let found = types.iter().find(|(n, ..)| *n == name);
            let labels = found.and_then(|(_, t, ..)| labels(t));
            // the binlog carries text in the column's own character set (a query gets
            // utf8mb4): only UTF-8 text reads the same both ways
            let charset = found.and_then(|(.., c)| c.as_deref()).unwrap_or("binary");
            if kind == Kind::Text && labels.is_none() && !UTF8.contains(&charset) {
                return Err(Error::schema(format!(
                    "table {db}.{table}: column \"{name}\" is in character set {charset}, which the binlog carries \
                     as is; CDC reads UTF-8 text (utf8mb4, utf8mb3, ascii): convert the column \
                     (ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4)"
                )));
            }
            Ok(TableColumn {
                name,
                kind,
                nullable,
                labels,
                key: found.is_some_and(|(_, _, k, _)| k == "PRI"),
            })
        })
        .collect()
}

/// Character sets whose bytes are UTF-8.
const UTF8: [&str; 4] = ["utf8mb4", "utf8mb3", "utf8", "ascii"];

/// `v` of `column`, as the binary protocol gives it.
pub fn normalize(
    v: BinlogValue<'static>,
    column: &TableColumn,
) -> std::result::Result<Value, String> {
    let v = Value::try_from(v).map_err(|e| format!("{e:?}"))?;
    Ok(match (column.kind, &column.labels, v) {
        (_, _, Value::NULL) => Value::NULL,
        (
            Kind::Int {
                bits,
                unsigned: true,
            },
            _,
            Value::Int(i),
        ) if i < 0 => {
            // the table map had no signedness: the bits are the unsigned value's
            let mask = if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            Value::UInt(i as u64 & mask)
        }
        // a signed value read as unsigned (MEDIUMINT is): its top bit is the sign
        (
            Kind::Int {
                bits,
                unsigned: false,
            },
            _,
            Value::Int(i),
        ) if bits < 64 && i >= 1 << (bits - 1) => Value::Int(i - (1 << bits)),
        (Kind::Year, _, Value::Bytes(b)) => {
            let year: i64 = text(&b)?
                .parse()
                .map_err(|_| "a YEAR that is no number".to_string())?;
            // the stored 0 (year 0000) arrives as 1900, which YEAR cannot hold
            Value::Int(if year == 1900 { 0 } else { year })
        }
        (Kind::Timestamp, _, Value::Bytes(b)) => timestamp(text(&b)?)?,
        // index 0 is the empty error value; one past the labels means labels that
        // are not the ones the row was written with: never a wrong or empty label
        (Kind::Text, Some(Labels::Enum(_)), Value::Int(0)) => Value::Bytes(Vec::new()),
        (Kind::Text, Some(Labels::Enum(l)), Value::Int(i)) => {
            let label = usize::try_from(i)
                .ok()
                .and_then(|i| l.get(i - 1))
                .ok_or_else(|| format!("ENUM index {i} is not one of its {} labels", l.len()))?;
            Value::Bytes(label.clone().into_bytes())
        }
        (Kind::Text, Some(Labels::Set(l)), Value::Bytes(mask)) => {
            let bits = mask
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            let on: Vec<&str> = l
                .iter()
                .enumerate()
                .filter(|(i, _)| bits >> i & 1 == 1)
                .map(|(_, s)| s.as_str())
                .collect();
            Value::Bytes(on.join(",").into_bytes())
        }
        (_, _, v) => v,
    })
}

fn text(b: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| format!("not UTF-8 ({e})"))
}

/// A TIMESTAMP as the binlog writes it (`secs[.frac]` since the epoch, UTC), as a
/// date; 0 is the zero timestamp.
fn timestamp(text: &str) -> std::result::Result<Value, String> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs
        .parse()
        .map_err(|_| format!("\"{text}\" is no TIMESTAMP"))?;
    let mut micros = 0u32;
    for (i, c) in frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(6)
        .enumerate()
    {
        let digit = c
            .to_digit(10)
            .ok_or_else(|| format!("\"{text}\" is no TIMESTAMP"))?;
        micros += digit * 10u32.pow(5 - i as u32);
    }
    if secs == 0 && micros == 0 {
        return Ok(Value::Date(0, 0, 0, 0, 0, 0, 0));
    }
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rest = secs.rem_euclid(86_400);
    let narrow = |x: i64| u8::try_from(x).unwrap_or(0);
    Ok(Value::Date(
        u16::try_from(y).map_err(|_| format!("\"{text}\" is out of range"))?,
        narrow(m),
        narrow(d),
        narrow(rest / 3600),
        narrow(rest / 60 % 60),
        narrow(rest % 60),
        micros,
    ))
}

/// A MariaDB GTID event's GTID (`domain-server-seq`), from its body.
pub fn mariadb_gtid(body: &[u8], server_id: u32) -> Option<String> {
    let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    Some(format!("{domain}-{server_id}-{seq}"))
}

/// The server settings CDC needs, each wrong one named with its fix.
pub async fn check_server(conn: &mut Conn) -> Result<()> {
    let row: Option<(Option<String>, Option<String>, Option<String>)> = conn
        .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image")
        .await
        .map_err(|e| my_error("read the binlog settings", e))?;
    let (log_bin, format, image) = row.unwrap_or_default();
    let wrong = |what: String| Err(Error::config(what).with_field("mode"));
    if log_bin.as_deref() != Some("1") {
        return wrong(
            "the server's binlog is off (log_bin = OFF): CDC reads the binlog; start the server with --log-bin".into(),
        );
    }
    if format.as_deref() != Some("ROW") {
        return wrong(format!(
            "binlog_format is {}, but CDC needs ROW: SET GLOBAL binlog_format = 'ROW' (and in the server's configuration)",
            format.unwrap_or_default()
        ));
    }
    if image.as_deref() != Some("FULL") {
        return wrong(format!(
            "binlog_row_image is {}, but CDC needs FULL (every column of every changed row): SET GLOBAL binlog_row_image = 'FULL'",
            image.unwrap_or_default()
        ));
    }
    // MariaDB's compressed events would be skipped: refuse them
    let compressed: Option<Option<String>> = conn
        .query_first("SELECT @@log_bin_compress")
        .await
        .unwrap_or(None);
    if compressed.flatten().as_deref() == Some("1") {
        return wrong(
            "log_bin_compress is ON; CDC cannot read compressed binlog events: SET GLOBAL log_bin_compress = OFF".into(),
        );
    }
    Ok(())
}

/// The ids of the collations of UTF-8 character sets (text the binlog carries as
/// the decoder reads it).
pub async fn utf8_collations(conn: &mut Conn) -> Result<Vec<u16>> {
    let sets = UTF8.join("', '");
    let mut ids: Vec<Option<u64>> = conn
        .query(format!(
            "SELECT ID FROM information_schema.COLLATIONS WHERE CHARACTER_SET_NAME IN ('{sets}')"
        ))
        .await
        .map_err(|e| my_error("read the server's collations", e))?;
    // MariaDB 10.10 and later list the ids of collations shared by character sets
    // (the UCA 14.0.0 ones, utf8mb4's default from 11.5) only here; older servers
    // and MySQL have no such column
    let shared: std::result::Result<Vec<Option<u64>>, _> = conn
        .query(format!(
            "SELECT ID FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY \
             WHERE CHARACTER_SET_NAME IN ('{sets}')"
        ))
        .await;
    ids.extend(shared.unwrap_or_default());
    Ok(ids
        .into_iter()
        .flatten()
        .filter_map(|id| u16::try_from(id).ok())
        .collect())
}

/// The binlog files the server still has.
pub async fn binlog_files(conn: &mut Conn) -> Result<Vec<String>> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| grants(my_error("list the binlog files (SHOW BINARY LOGS)", e)))?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| r.take::<String, _>(0))
        .collect())
}

/// An access error with the grants CDC needs.
pub fn grants(e: Error) -> Error {
    if e.kind() == connector_api::ErrorKind::Auth {
        return Error::new(
            connector_api::ErrorKind::Auth,
            format!(
                "{}: CDC needs the REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: BINLOG MONITOR) privileges, SELECT on the table and, on MySQL, RELOAD (the snapshot's read lock)",
                e.message()
            ),
        )
        .with_source(e);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_enum_and_set_labels() {
        assert_eq!(
            labels("enum('a','it''s','c\\\\d')"),
            Some(Labels::Enum(vec!["a".into(), "it's".into(), "c\\d".into()]))
        );
        assert_eq!(
            labels("set('x','y')"),
            Some(Labels::Set(vec!["x".into(), "y".into()]))
        );
        assert_eq!(labels("varchar(10)"), None);
        // the labels keep their case (a value is never changed)
        assert_eq!(
            labels("ENUM('Red','bLue')"),
            Some(Labels::Enum(vec!["Red".into(), "bLue".into()]))
        );
    }

    #[test]
    fn normalizes_binlog_encodings() {
        let col = |kind, labels| TableColumn {
            name: "c".into(),
            kind,
            nullable: true,
            labels,
            key: false,
        };
        let set = col(
            Kind::Text,
            Some(Labels::Set(vec!["a".into(), "b".into(), "c".into()])),
        );
        assert_eq!(
            normalize(BinlogValue::Value(Value::Bytes(vec![0b101])), &set).unwrap(),
            Value::Bytes(b"a,c".to_vec())
        );
        let en = col(
            Kind::Text,
            Some(Labels::Enum(vec!["small".into(), "big".into()])),
        );
        assert_eq!(
            normalize(BinlogValue::Value(Value::Int(2)), &en).unwrap(),
            Value::Bytes(b"big".to_vec())
        );
        let u8col = col(
            Kind::Int {
                bits: 8,
                unsigned: true,
            },
            None,
        );
        assert_eq!(
            normalize(BinlogValue::Value(Value::Int(-1)), &u8col).unwrap(),
            Value::UInt(255)
        );
        let ts = col(Kind::Timestamp, None);
        assert_eq!(
            normalize(
                BinlogValue::Value(Value::Bytes(b"2147483647.999999".to_vec())),
                &ts
            )
            .unwrap(),
            Value::Date(2038, 1, 19, 3, 14, 7, 999_999)
        );
        let medium = col(
            Kind::Int {
                bits: 24,
                unsigned: false,
            },
            None,
        );
        assert_eq!(
            normalize(BinlogValue::Value(Value::Int(8_388_608)), &medium).unwrap(),
            Value::Int(-8_388_608)
        );
        let year = col(Kind::Year, None);
        assert_eq!(
            normalize(BinlogValue::Value(Value::Bytes(b"1900".to_vec())), &year).unwrap(),
            Value::Int(0)
        );
    }
}
