//! One mapping from sqlx's errors to the API's error kinds, for the source and the sink.

use connector_api::{Error, ErrorKind};

/// Maps a sqlx error to the API error kind, keeping PostgreSQL's message.
pub fn pg_error(context: impl std::fmt::Display, err: sqlx::Error) -> Error {
    let kind = match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => ErrorKind::Connect,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(c) if c.starts_with("28") => ErrorKind::Auth,
            Some(c) if c.starts_with("08") || c == "57P01" || c == "57P03" => ErrorKind::Connect,
            Some("40001") | Some("40P01") | Some("55P03") => ErrorKind::Transient,
            Some("42P01") | Some("3D000") | Some("3F000") => ErrorKind::NotFound,
            Some(c) if c.starts_with("22") || c.starts_with("23") => ErrorKind::Data,
            Some(c) if c.starts_with("42") => ErrorKind::Schema,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    };
    Error::new(kind, context.to_string()).with_source(err)
}

/// The SQLSTATE of a database error, if `err` is one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}
