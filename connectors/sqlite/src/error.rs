//! sqlx errors as classified API errors, for the source and the sink.

use connector_api::Error;

/// Maps a sqlx error to the API error kind.
pub fn sql_error(context: impl std::fmt::Display, err: sqlx::Error) -> Error {
    let kind = match &err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            connector_api::ErrorKind::Connect
        }
        sqlx::Error::Database(db) => {
            let msg = db.message();
            if msg.contains("locked") || msg.contains("busy") {
                connector_api::ErrorKind::Transient
            } else if msg.contains("constraint") || msg.contains("datatype mismatch") {
                connector_api::ErrorKind::Data
            } else if msg.contains("no such table") {
                connector_api::ErrorKind::NotFound
            } else {
                connector_api::ErrorKind::Internal
            }
        }
        _ => connector_api::ErrorKind::Internal,
    };
    Error::new(kind, context.to_string()).with_source(err)
}
