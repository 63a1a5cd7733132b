//! mysql_async errors as classified API errors: the one place where server error
//! codes are read.

use connector_api::{Error, ErrorKind};
use mysql_async::Error as MyError;

/// The server's error code, when `err` is a server error.
pub fn code(err: &MyError) -> Option<u16> {
    match err {
        MyError::Server(s) => Some(s.code),
        _ => None,
    }
}

/// The server's error code behind an API error made by [`my_error`].
pub fn code_of(err: &connector_api::Error) -> Option<u16> {
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<MyError>())
        .and_then(code)
}

/// Maps a mysql_async error to the API error kind, with `context` as the message.
pub fn my_error(context: impl std::fmt::Display, err: MyError) -> Error {
    let kind = match &err {
        MyError::Io(_) => ErrorKind::Connect,
        MyError::Url(_) => ErrorKind::Config,
        MyError::Driver(d) => match d {
            mysql_async::DriverError::ConnectionClosed
            | mysql_async::DriverError::PoolDisconnected => ErrorKind::Connect,
            _ => ErrorKind::Internal,
        },
        MyError::Server(s) => match s.code {
            // access denied (user, database, table), wrong password plugin
            1044 | 1045 | 1142 | 1143 | 1227 | 1370 | 1698 => ErrorKind::Auth,
            // unknown database, table, column
            1049 | 1146 | 1054 => ErrorKind::NotFound,
            // the binlog position cannot be read (purged, or no such position)
            1236 => ErrorKind::Config,
            // lock wait timeout, deadlock, too many connections, server shutting down,
            // query interrupted, read-only while a failover happens
            1205 | 1213 | 1040 | 1053 | 1317 | 1290 | 1836 => ErrorKind::Transient,
            // connection lost, server gone
            2006 | 2013 | 1152 | 1158 | 1159 | 1160 | 1161 | 4031 => ErrorKind::Connect,
            // duplicate key, out of range, truncated, bad value, null in not null,
            // incorrect string for the charset, check constraint, foreign key
            1062 | 1264 | 1265 | 1292 | 1366 | 1406 | 1048 | 1263 | 1300 | 3819 | 4025 | 1451
            | 1452 | 1367 | 1690 => ErrorKind::Data,
            _ => ErrorKind::Internal,
        },
        MyError::Other(_) => ErrorKind::Internal,
    };
    Error::new(kind, context.to_string()).with_source(err)
}
