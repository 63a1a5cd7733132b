//! The messages of `pgoutput` (protocol version 1) that carry a relation's layout and
//! its changes. Begin and Commit arrive as events of the replication client (with the
//! transaction's final LSN, commit time and end LSN), Type, Origin and logical
//! decoding messages are of no use here. A value stays PostgreSQL's text output
//! until the source types it by the table's schema.

use connector_api::{Error, Result};

/// One column's value in a tuple.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// An out-of-line (TOAST) value the change did not touch: the server did not send
    /// it.
    Unchanged,
    /// The value in PostgreSQL's text output.
    Text(String),
}

/// A column as a Relation message describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`numeric(10,2)`, `varchar(20)`).
    pub typmod: i32,
}

/// A relation's layout, sent before its first change in a session and again after it
/// changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Relation {
    /// The table's OID.
    pub oid: u32,
    /// Schema.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity: `d` default (key), `f` full, `i` index, `n` nothing.
    pub identity: u8,
    /// Columns in the order of every tuple of its changes.
    pub columns: Vec<RelationColumn>,
}

/// The old row of an update or a delete.
#[derive(Clone, Debug, PartialEq)]
pub enum Old {
    /// The key columns only (the others are NULL): an update that changed the key, or
    /// any delete under the default identity.
    Key(Vec<Datum>),
    /// Every column (`REPLICA IDENTITY FULL`).
    Full(Vec<Datum>),
}

impl Old {
    /// The values.
    pub fn values(&self) -> &[Datum] {
        match self {
            Old::Key(v) | Old::Full(v) => v,
        }
    }
}

/// A message of the stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A relation's layout.
    Relation(Relation),
    /// A new row.
    Insert {
        /// Relation OID.
        rel: u32,
        /// The row.
        new: Vec<Datum>,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        rel: u32,
        /// The old row, when the server sent it.
        old: Option<Old>,
        /// The new row.
        new: Vec<Datum>,
    },
    /// A deleted row.
    Delete {
        /// Relation OID.
        rel: u32,
        /// Its key (or every column under `REPLICA IDENTITY FULL`).
        old: Old,
    },
    /// Tables emptied by TRUNCATE.
    Truncate {
        /// Their OIDs.
        rels: Vec<u32>,
    },
    /// Anything else (Type, Origin, a logical message).
    Other,
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
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn text(bytes: &[u8]) -> Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::data(
                "a value in the change stream is not UTF-8 (the database encoding must be UTF8)",
            )
        })
    }
    fn cstr(&mut self) -> Result<String> {
        let rest = &self.b[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| Error::internal("unterminated string in pgoutput"))?;
        self.pos += end + 1;
        Self::text(&rest[..end])
    }
    fn tuple(&mut self) -> Result<Vec<Datum>> {
        let n = self.u16()? as usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Datum::Text(Self::text(self.take(len)?)?)
                }
                other => {
                    return Err(Error::internal(format!(
                        "unknown tuple column kind {other} in pgoutput"
                    )))
                }
            });
        }
        Ok(out)
    }
    fn old(&mut self, kind: u8) -> Result<Old> {
        match kind {
            b'K' => Ok(Old::Key(self.tuple()?)),
            b'O' => Ok(Old::Full(self.tuple()?)),
            other => Err(Error::internal(format!(
                "unknown old tuple kind {other} in pgoutput"
            ))),
        }
    }
}

/// Parses one pgoutput message.
pub fn parse(data: &[u8]) -> Result<Message> {
    let mut r = Reader { b: data, pos: 0 };
    Ok(match r.u8()? {
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let identity = r.u8()?;
            let n = r.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let typmod = r.u32()? as i32;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                    typmod,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                identity,
                columns,
            })
        }
        b'I' => {
            let rel = r.u32()?;
            let _new = r.u8()?;
            Message::Insert {
                rel,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(r.old(kind)?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(Error::internal("pgoutput update without a new tuple"));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            let kind = r.u8()?;
            Message::Delete {
                rel,
                old: r.old(kind)?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let rels = (0..n).map(|_| r.u32()).collect::<Result<_>>()?;
            Message::Truncate { rels }
        }
        _ => Message::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.push(b'n'),
                Some("\u{0}unchanged") => b.push(b'u'),
                Some(t) => {
                    b.push(b't');
                    b.extend((t.len() as u32).to_be_bytes());
                    b.extend(t.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn an_update_of_the_key_carries_the_old_key_and_unchanged_values_stay_unchanged() {
        let mut m = vec![b'U'];
        m.extend(16384u32.to_be_bytes());
        m.push(b'K');
        m.extend(tuple(&[Some("5"), None]));
        m.push(b'N');
        m.extend(tuple(&[Some("100"), Some("\u{0}unchanged")]));
        assert_eq!(
            parse(&m).unwrap(),
            Message::Update {
                rel: 16384,
                old: Some(Old::Key(vec![Datum::Text("5".into()), Datum::Null])),
                new: vec![Datum::Text("100".into()), Datum::Unchanged],
            }
        );
    }

    #[test]
    fn a_relation_names_its_key_columns_and_a_short_message_is_an_error() {
        let mut m = vec![b'R'];
        m.extend(7u32.to_be_bytes());
        m.extend(b"public\0t\0");
        m.push(b'f');
        m.extend(1u16.to_be_bytes());
        m.push(1);
        m.extend(b"id\0");
        m.extend(23u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = parse(&m).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!((r.oid, r.identity, r.name.as_str()), (7, b'f', "t"));
        assert!(r.columns[0].key);
        assert_eq!(r.columns[0].typmod, -1);
        assert!(parse(&m[..m.len() - 2]).is_err());
        assert_eq!(parse(b"Yxx").unwrap(), Message::Other);
    }
}
