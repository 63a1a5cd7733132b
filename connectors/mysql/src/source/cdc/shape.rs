//! Whether the binlog's table map still describes the columns the stream decodes
//! with. A DDL on the captured table (a column added, dropped, widened, renamed, made
//! nullable) shows as a table map of another shape. Where the table map names its
//! columns (`binlog_row_metadata = FULL`) the columns are taken from it
//! ([`columns_of`]): those its rows were written with. Otherwise the stream reads the
//! table's columns again, and a table map they do not fit (the table changed again
//! since that point of the binlog) is an error naming the column ([`differs`]),
//! never rows decoded with the wrong types.

use connector_api::{Error, Result};
use mysql_async::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent};
use mysql_async::consts::ColumnType;

use crate::source::binlog::{Labels, TableColumn};
use crate::types::Kind;

/// The `binary` character set.
const BINARY: u16 = 63;

/// What a table map says of its columns: each column's type, metadata (length,
/// precision, scale, fraction digits) and nullability, and the optional metadata
/// (names, signedness, character sets) where the server writes it. Two table maps of
/// one table with the same shape describe the same row format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Shape(Vec<u8>);

impl Shape {
    /// The shape of `tme`.
    pub(super) fn of(tme: &TableMapEvent<'_>) -> Shape {
        let count = tme.columns_count() as usize;
        let mut bytes = Vec::with_capacity(count * 4);
        for i in 0..count {
            let raw = tme.get_raw_column_type(i).ok().flatten();
            bytes.push(raw.map_or(u8::MAX, |t| t as u8));
            let meta = tme.get_column_metadata(i).unwrap_or_default();
            bytes.push(meta.len() as u8);
            bytes.extend_from_slice(meta);
        }
        bytes.extend(tme.null_bitmask().iter().by_vals().map(u8::from));
        for field in tme.iter_optional_meta() {
            // the optional metadata's own bytes are not exposed: its fields' debug
            // text is as exact a fingerprint
            bytes.extend_from_slice(format!("{field:?}").as_bytes());
        }
        Shape(bytes)
    }
}

/// The columns `tme` describes, when it names them (`binlog_row_metadata = FULL`,
/// which also gives signedness, character sets, ENUM and SET labels and the primary
/// key): the columns its rows were written with, whatever the table is now. `utf8`:
/// the collation ids of UTF-8 character sets; a text column of another is an error.
pub(super) fn columns_of(
    tme: &TableMapEvent<'_>,
    utf8: &[u16],
    mariadb: bool,
) -> Result<Option<Vec<TableColumn>>> {
    let table = format!("{}.{}", tme.database_name(), tme.table_name());
    let bad = |e: std::io::Error| {
        Error::data(format!(
            "table {table}: the binlog's table map does not decode"
        ))
        .with_source(e)
    };
    let meta = OptionalMetaExtractor::new(tme.iter_optional_meta()).map_err(bad)?;
    let names = meta
        .iter_column_name()
        .map(|n| n.map(|n| n.name().into_owned()))
        .collect::<std::io::Result<Vec<String>>>()
        .map_err(bad)?;
    let count = tme.columns_count() as usize;
    if names.len() != count {
        return Ok(None);
    }
    let keys = meta
        .iter_primary_key()
        .collect::<std::io::Result<Vec<u64>>>()
        .map_err(bad)?;
    let (mut enums, mut sets) = (Vec::new(), Vec::new());
    for field in tme.iter_optional_meta() {
        match field.map_err(bad)? {
            OptionalMetadataField::EnumStrValue(v) => {
                for column in v.iter_values() {
                    let values = column.map_err(bad)?;
                    enums.push(
                        values
                            .values()
                            .iter()
                            .map(|v| v.value().into_owned())
                            .collect(),
                    );
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for column in v.iter_values() {
                    let values = column.map_err(bad)?;
                    sets.push(
                        values
                            .values()
                            .iter()
                            .map(|v| v.value().into_owned())
                            .collect(),
                    );
                }
            }
            _ => {}
        }
    }
    let (mut enums, mut sets) = (enums.into_iter(), sets.into_iter());
    let mut signedness = meta.iter_signedness();
    let mut charsets = meta.iter_charset();
    let nulls = tme.null_bitmask();
    let mut columns = Vec::with_capacity(count);
    for (i, name) in names.into_iter().enumerate() {
        let Ok(Some(ty)) = tme.get_column_type(i) else {
            return Err(Error::schema(format!(
                "table {table}: column \"{name}\" has a type this reader does not know in the binlog"
            )));
        };
        let m = tme.get_column_metadata(i).unwrap_or_default();
        let byte = |k: usize| m.get(k).copied().unwrap_or(0);
        let unsigned = numeric(ty) && signedness.next().unwrap_or(false);
        let charset = match character(ty, mariadb) {
            true => charsets.next().transpose().map_err(bad)?.unwrap_or(BINARY),
            false => BINARY,
        };
        let digits = (byte(0), byte(1) as i8);
        let bits = u32::from(byte(1)) * 8 + u32::from(byte(0));
        let Some(kind) = Kind::of_type(ty, unsigned, charset == BINARY, digits, bits) else {
            return Err(Error::schema(format!(
                "table {table}: column \"{name}\" has type {ty:?}, which has no Arrow mapping"
            )));
        };
        let labels = match ty {
            ColumnType::MYSQL_TYPE_ENUM => enums.next().map(Labels::Enum),
            ColumnType::MYSQL_TYPE_SET => sets.next().map(Labels::Set),
            _ => None,
        };
        if kind == Kind::Text && character(ty, mariadb) && !utf8.contains(&charset) {
            return Err(Error::schema(format!(
                "table {table}: column \"{name}\" is in a character set (collation {charset}) that is not \
                 UTF-8, which the binlog carries as is; CDC reads UTF-8 text (utf8mb4, utf8mb3, ascii): \
                 convert the column (ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4)"
            )));
        }
        columns.push(TableColumn {
            name,
            kind,
            nullable: nulls.get(i).is_some_and(|b| *b),
            labels,
            key: keys.contains(&(i as u64)),
        });
    }
    Ok(Some(columns))
}

/// Whether the server writes a signedness bit for a column of type `ty` (the
/// numeric ones, YEAR included, as mysql_common reads them).
fn numeric(ty: ColumnType) -> bool {
    ty.is_numeric_type()
}

/// Whether the server writes a character set for a column of type `ty`: text and
/// bytes, and on MariaDB also GEOMETRY (which has the `binary` one); ENUM and SET
/// have a list of their own.
fn character(ty: ColumnType, mariadb: bool) -> bool {
    ty.is_character_type() || (mariadb && ty == ColumnType::MYSQL_TYPE_GEOMETRY)
}

/// The first difference between `columns` (as a query reads the table now) and the
/// row format `tme` describes, or None when every column fits.
pub(super) fn differs(columns: &[TableColumn], tme: &TableMapEvent<'_>) -> Option<String> {
    let count = tme.columns_count() as usize;
    if count != columns.len() {
        return Some(format!(
            "{count} columns in the binlog, {} now",
            columns.len()
        ));
    }
    let names: Vec<String> = OptionalMetaExtractor::new(tme.iter_optional_meta())
        .ok()
        .map(|m| {
            m.iter_column_name()
                .filter_map(|n| n.ok().map(|n| n.name().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    for (i, column) in columns.iter().enumerate() {
        if let Some(name) = names.get(i) {
            if *name != column.name {
                return Some(format!(
                    "column {} is \"{name}\" in the binlog, \"{}\" now",
                    i + 1,
                    column.name
                ));
            }
        }
        let Ok(Some(ty)) = tme.get_column_type(i) else {
            return Some(format!(
                "column \"{}\" has a type this reader does not know in the binlog",
                column.name
            ));
        };
        let meta = tme.get_column_metadata(i).unwrap_or_default();
        if !fits(column.kind, ty, meta) {
            return Some(format!(
                "column \"{}\" is {ty:?} in the binlog, {:?} now",
                column.name, column.kind
            ));
        }
    }
    None
}

/// Whether values of binlog type `ty` (with its metadata) are of `kind`. Text and
/// bytes are one family here: the table map tells them apart only by character set,
/// which only its optional metadata carries (and [`Shape`] compares).
fn fits(kind: Kind, ty: ColumnType, meta: &[u8]) -> bool {
    // signedness and the character set are the kind's own: the table map without
    // its optional metadata does not say them
    let (unsigned, binary) = match kind {
        Kind::Int { unsigned, .. } => (unsigned, false),
        Kind::Binary => (false, true),
        _ => (false, false),
    };
    let byte = |k: usize| meta.get(k).copied().unwrap_or(0);
    let digits = (byte(0), byte(1) as i8);
    let bits = u32::from(byte(1)) * 8 + u32::from(byte(0));
    Kind::of_type(ty, unsigned, binary, digits, bits) == Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::consts::ColumnType::*;

    #[test]
    fn a_widened_or_retyped_column_does_not_fit() {
        let int = Kind::Int {
            bits: 32,
            unsigned: false,
        };
        assert!(fits(int, MYSQL_TYPE_LONG, &[]));
        assert!(!fits(int, MYSQL_TYPE_LONGLONG, &[]));
        assert!(!fits(int, MYSQL_TYPE_VARCHAR, &[20, 0]));
        let dec = Kind::Decimal {
            precision: 12,
            scale: 2,
        };
        assert!(fits(dec, MYSQL_TYPE_NEWDECIMAL, &[12, 2]));
        assert!(!fits(dec, MYSQL_TYPE_NEWDECIMAL, &[10, 2]));
        assert!(fits(Kind::Bit { width: 12 }, MYSQL_TYPE_BIT, &[4, 1]));
        assert!(!fits(Kind::Bit { width: 12 }, MYSQL_TYPE_BIT, &[0, 1]));
        assert!(fits(Kind::Text, MYSQL_TYPE_BLOB, &[4]));
        assert!(!fits(Kind::Text, MYSQL_TYPE_LONG, &[]));
        assert!(fits(Kind::Timestamp, MYSQL_TYPE_TIMESTAMP2, &[6]));
        assert!(!fits(Kind::DateTime, MYSQL_TYPE_TIMESTAMP2, &[6]));
    }
}
