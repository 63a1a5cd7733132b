//! Change data capture with the built-in `pgoutput` plugin over plain SQL:
//! `pg_logical_slot_peek_binary_changes` reads committed transactions without
//! consuming them, and the slot is advanced (`pg_replication_slot_advance`) only
//! when the runtime commits, i.e. after every sink has flushed: a crash anywhere
//! re-reads, never loses. Transactions at or below the last delivered end LSN are
//! skipped, so a re-read after a restart repeats nothing that was delivered.

use arrow_schema::{DataType, SchemaRef};
use connector_api::{Error, Result};
use serde_json::{Map, Value};
use sqlx::postgres::PgPool;

use crate::conn::quote;
use crate::error::pg_error;

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A name PostgreSQL accepts for a slot: lowercase letters, digits, underscores.
pub fn slot_name(pipeline: &str) -> String {
    let s: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("sluice_{s}")
}

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

/// Creates the publication for `relation` if it does not exist.
pub async fn ensure_publication(pool: &PgPool, publication: &str, relation: &str) -> Result<()> {
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_publication WHERE pubname = $1")
        .bind(publication)
        .fetch_optional(pool)
        .await
        .map_err(|e| pg_error("read publications", e))?;
    if exists.is_none() {
        sqlx::query(&format!(
            "CREATE PUBLICATION {} FOR TABLE {relation}",
            quote(publication)
        ))
        .execute(pool)
        .await
        .map_err(|e| pg_error(format!("create publication \"{publication}\""), e))?;
    }
    Ok(())
}

/// The slot's confirmed position, or None when the slot does not exist.
pub async fn slot_position(pool: &PgPool, slot: &str) -> Result<Option<u64>> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| pg_error("read replication slots", e))?;
    Ok(row.map(|(lsn,)| lsn.as_deref().and_then(parse_lsn).unwrap_or(0)))
}

/// Creates the slot (dropping a stale one of the same name first).
pub async fn create_slot(pool: &PgPool, slot: &str) -> Result<u64> {
    if slot_position(pool, slot).await?.is_some() {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(slot)
            .execute(pool)
            .await
            .map_err(|e| pg_error(format!("drop stale replication slot \"{slot}\""), e))?;
    }
    let (lsn,): (String,) =
        sqlx::query_as("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(slot)
            .fetch_one(pool)
            .await
            .map_err(|e| pg_error(format!("create replication slot \"{slot}\""), e))?;
    Ok(parse_lsn(&lsn).unwrap_or(0))
}

/// The server's current WAL write position.
pub async fn current_lsn(pool: &PgPool) -> Result<u64> {
    let (lsn,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .map_err(|e| pg_error("read the current WAL position", e))?;
    parse_lsn(&lsn).ok_or_else(|| Error::internal(format!("WAL position \"{lsn}\"")))
}

/// Moves the slot to `lsn`, releasing the WAL before it.
pub async fn advance(pool: &PgPool, slot: &str, lsn: u64) -> Result<()> {
    sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
        .bind(slot)
        .bind(lsn_text(lsn))
        .execute(pool)
        .await
        .map_err(|e| pg_error(format!("advance replication slot \"{slot}\""), e))?;
    Ok(())
}

/// One change, as a JSON object ready for the table's decoder.
pub struct Change {
    /// `c`, `u`, `d` or `t` (truncate).
    pub op: &'static str,
    /// The row (the key only, for deletes; empty for a truncate).
    pub row: Map<String, Value>,
    /// The old row when the server sent it (updates and deletes: the key, or all
    /// columns under REPLICA IDENTITY FULL).
    pub before: Option<Map<String, Value>>,
    /// Commit time, milliseconds since 1970.
    pub ts_ms: i64,
    /// Transaction id.
    pub xid: u32,
    /// End LSN of the transaction.
    pub lsn: u64,
}

impl Change {
    fn new(
        op: &'static str,
        row: Map<String, Value>,
        before: Option<Map<String, Value>>,
        xid: u32,
    ) -> Self {
        Change {
            op,
            row,
            before,
            ts_ms: 0,
            xid,
            lsn: 0,
        }
    }
}

/// What a peek produced.
pub struct Peeked {
    /// Changes of transactions not delivered before, in commit order.
    pub changes: Vec<Change>,
    /// End LSN of the last transaction in `changes`.
    pub end_lsn: u64,
    /// The relation has a column the decoder does not know (ALTER TABLE): describe
    /// the table again and peek again.
    pub relation_changed: bool,
    /// Changes the server returned in all (to widen the next peek).
    pub returned: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or_else(|| Error::internal("pgoutput message is shorter than its fields"))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(((self.u32()? as u64) << 32) | self.u32()? as u64)
    }
    fn cstr(&mut self) -> Result<String> {
        let rest = &self.b[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| Error::internal("unterminated string in pgoutput"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    /// A tuple: per column None (null), Some(None) (unchanged TOAST), Some(Some(text)).
    fn tuple(&mut self) -> Result<Vec<Option<Option<String>>>> {
        let n = self.u16()? as usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match self.u8()? {
                b'n' => out.push(None),
                b'u' => out.push(Some(None)),
                b't' => {
                    let len = self.u32()? as usize;
                    out.push(Some(Some(
                        String::from_utf8_lossy(self.take(len)?).into_owned(),
                    )));
                }
                other => {
                    return Err(Error::internal(format!(
                        "unknown tuple column kind {other} in pgoutput"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// Where and how much to peek.
pub struct PeekArgs<'a> {
    /// Replication slot.
    pub slot: &'a str,
    /// Publication.
    pub publication: &'a str,
    /// Changes the server decodes at most (whole transactions).
    pub limit: usize,
    /// End LSN of the last delivered transaction; older ones are skipped.
    pub delivered: u64,
    /// Stop after the transaction that reaches this many changes.
    pub max_changes: usize,
}

/// Reads the committed transactions in the slot after `args.delivered`.
pub async fn peek(
    pool: &PgPool,
    args: PeekArgs<'_>,
    columns_now: &mut Vec<String>,
    schema: &SchemaRef,
) -> Result<Peeked> {
    let PeekArgs {
        slot,
        publication,
        limit,
        delivered,
        max_changes,
    } = args;
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, 'proto_version', '1', 'publication_names', $3)",
    )
    .bind(slot)
    .bind(limit as i32)
    .bind(publication)
    .fetch_all(pool)
    .await
    .map_err(|e| pg_error(format!("read changes of replication slot \"{slot}\""), e))?;
    let mut out = Peeked {
        changes: Vec::new(),
        end_lsn: delivered,
        relation_changed: false,
        returned: rows.len(),
    };
    let mut txn: Vec<Change> = Vec::new();
    let mut xid = 0u32;
    for (data,) in &rows {
        let mut r = Reader { b: data, pos: 0 };
        match r.u8()? {
            b'B' => {
                txn.clear();
                let _final_lsn = r.u64()?;
                let _commit_ts = r.u64()?;
                xid = r.u32()?;
            }
            b'R' => {
                let _relid = r.u32()?;
                let _namespace = r.cstr()?;
                let _name = r.cstr()?;
                let _identity = r.u8()?;
                let n = r.u16()? as usize;
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    let _flags = r.u8()?;
                    names.push(r.cstr()?);
                    let _type = r.u32()?;
                    let _typmod = r.u32()?;
                }
                // a column the decoder does not know: the table was altered
                if names.iter().any(|n| schema.field_with_name(n).is_err()) {
                    out.relation_changed = true;
                    return Ok(out);
                }
                *columns_now = names;
            }
            b'I' => {
                let _relid = r.u32()?;
                let _n = r.u8()?;
                let new = r.tuple()?;
                txn.push(Change::new(
                    "c",
                    to_row(columns_now, &new, None, schema),
                    None,
                    xid,
                ));
            }
            b'U' => {
                let _relid = r.u32()?;
                let mut kind = r.u8()?;
                let mut old = None;
                if kind == b'K' || kind == b'O' {
                    old = Some(r.tuple()?);
                    kind = r.u8()?;
                }
                if kind != b'N' {
                    return Err(Error::internal("pgoutput update without a new tuple"));
                }
                let new = r.tuple()?;
                let before = old.as_deref().map(|o| to_row(columns_now, o, None, schema));
                txn.push(Change::new(
                    "u",
                    to_row(columns_now, &new, old.as_deref(), schema),
                    before,
                    xid,
                ));
            }
            b'D' => {
                let _relid = r.u32()?;
                let _kind = r.u8()?;
                let old = r.tuple()?;
                let row = to_row(columns_now, &old, None, schema);
                txn.push(Change::new("d", row.clone(), Some(row), xid));
            }
            b'C' => {
                let _flags = r.u8()?;
                let _commit_lsn = r.u64()?;
                let end_lsn = r.u64()?;
                // microseconds since 2000-01-01
                let ts_ms = r.u64()? as i64 / 1000 + 946_684_800_000;
                for c in &mut txn {
                    c.ts_ms = ts_ms;
                    c.lsn = end_lsn;
                }
                if end_lsn > delivered {
                    out.changes.append(&mut txn);
                    out.end_lsn = end_lsn;
                    if out.changes.len() >= max_changes {
                        break;
                    }
                }
                txn.clear();
            }
            b'T' => {
                // the publication holds the one table of the pipeline
                let relations = r.u32()?;
                let _options = r.u8()?;
                for _ in 0..relations {
                    let _relid = r.u32()?;
                }
                txn.push(Change::new("t", Map::new(), None, xid));
            }
            // Type, Origin, Message: nothing to emit
            _ => {}
        }
    }
    Ok(out)
}

/// A row of text values as JSON the Arrow decoder reads with the table's types. An
/// unchanged TOAST value is taken from the old tuple when the server sent it.
fn to_row(
    names: &[String],
    values: &[Option<Option<String>>],
    old: Option<&[Option<Option<String>>]>,
    schema: &SchemaRef,
) -> Map<String, Value> {
    let mut row = Map::new();
    for (i, name) in names.iter().enumerate() {
        let text = match values.get(i) {
            Some(Some(Some(t))) => Some(t.clone()),
            Some(Some(None)) => old.and_then(|o| o.get(i)).and_then(|v| v.clone().flatten()),
            _ => None,
        };
        let Some(text) = text else {
            continue;
        };
        let dt = schema
            .field_with_name(name)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Utf8);
        row.insert(name.clone(), json_value(&text, &dt));
    }
    row
}

/// PostgreSQL's text output of a value, as the JSON arrow-json reads for `dt`.
fn json_value(text: &str, dt: &DataType) -> Value {
    match dt {
        DataType::Boolean => Value::Bool(text == "t"),
        dt if dt.is_numeric() => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(text.to_string()),
        },
        DataType::Binary | DataType::LargeBinary => {
            Value::String(text.trim_start_matches("\\x").to_string())
        }
        DataType::Timestamp(_, Some(_)) => Value::String(full_offset(text)),
        DataType::List(f) | DataType::LargeList(f) => match parse_array(text) {
            Some(items) => Value::Array(
                items
                    .into_iter()
                    .map(|i| i.map_or(Value::Null, |t| json_value(&t, f.data_type())))
                    .collect(),
            ),
            None => Value::String(text.to_string()),
        },
        _ => Value::String(text.to_string()),
    }
}

/// `2024-05-01 10:00:00+02` -> `2024-05-01 10:00:00+02:00` (arrow wants minutes).
fn full_offset(text: &str) -> String {
    let bytes = text.as_bytes();
    let n = bytes.len();
    if n >= 3
        && (bytes[n - 3] == b'+' || bytes[n - 3] == b'-')
        && bytes[n - 2].is_ascii_digit()
        && bytes[n - 1].is_ascii_digit()
    {
        format!("{text}:00")
    } else {
        text.to_string()
    }
}

/// A one-dimensional array literal (`{1,NULL,"a,b"}`) into its elements.
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
        }
        out.push(if !quoted && item == "NULL" {
            None
        } else {
            Some(item)
        });
        match chars.next() {
            Some(',') => continue,
            None => return Some(out),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
    }

    #[test]
    fn parses_array_literals_and_offsets() {
        assert_eq!(
            parse_array("{1,NULL,\"a,b\",\"q\\\"\"}").unwrap(),
            vec![
                Some("1".into()),
                None,
                Some("a,b".into()),
                Some("q\"".into())
            ]
        );
        assert_eq!(parse_array("{}").unwrap(), Vec::<Option<String>>::new());
        assert_eq!(
            full_offset("2024-05-01 10:00:00+02"),
            "2024-05-01 10:00:00+02:00"
        );
        assert_eq!(
            full_offset("2024-05-01 10:00:00+05:30"),
            "2024-05-01 10:00:00+05:30"
        );
    }
}
