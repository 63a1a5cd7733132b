//! The one error type every connector returns, classified by [`ErrorKind`].
//!
//! The kind drives the runtime: [`Error::is_retryable`] errors are retried with
//! exponential backoff; the others stop the pipeline (or, for [`ErrorKind::Data`],
//! send the record to the dead-letter sink when `errors.tolerance = "all"`).

use std::fmt;

/// What went wrong, as far as the runtime needs to know to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid (unknown key, wrong type, bad value). Never retried.
    Config,
    /// A service could not be reached or a connection broke. Retried.
    Connect,
    /// Credentials were refused. Never retried.
    Auth,
    /// A passing failure (timeout, lock, overload). Retried.
    Transient,
    /// One record cannot be read or converted. Dead-lettered or fatal per tolerance.
    Data,
    /// The schema of the data does not fit where it goes. Never retried.
    Schema,
    /// Something the config names does not exist (table, file, bucket). Never retried.
    NotFound,
    /// The connector cannot do what was asked (a mode, a type). Never retried.
    Unsupported,
    /// A sink lost work it had accepted but not made durable (its connection and
    /// transaction died). Retrying the call would skip that work, so the runtime
    /// restarts the whole pipeline from its last checkpoint instead.
    Aborted,
    /// Another run holds what this one needs to write safely (the lock or lease on a
    /// pipeline's stored offsets). Never retried: two runs must not write side by side.
    Conflict,
    /// Local storage cannot take or give what it must: the disk is full or read-only,
    /// or a state file is not what it should be (not a database, damaged). Never
    /// retried: someone has to free space or move the file; the message says which.
    Storage,
    /// A bug or a broken invariant. Never retried.
    Internal,
}

impl ErrorKind {
    /// The lowercase name used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::Auth => "auth",
            ErrorKind::Transient => "transient",
            ErrorKind::Data => "data",
            ErrorKind::Schema => "schema",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Storage => "storage",
            ErrorKind::Internal => "internal",
        }
    }

    /// Parses the name written by [`ErrorKind::as_str`]; unknown names are `Internal`.
    pub fn from_name(name: &str) -> ErrorKind {
        match name {
            "config" => ErrorKind::Config,
            "connect" => ErrorKind::Connect,
            "auth" => ErrorKind::Auth,
            "transient" => ErrorKind::Transient,
            "data" => ErrorKind::Data,
            "schema" => ErrorKind::Schema,
            "not_found" => ErrorKind::NotFound,
            "unsupported" => ErrorKind::Unsupported,
            "aborted" => ErrorKind::Aborted,
            "conflict" => ErrorKind::Conflict,
            "storage" => ErrorKind::Storage,
            _ => ErrorKind::Internal,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified error with a message, an optional config key it is about, and its cause.
///
/// Messages are lowercase, without a trailing period, and name the thing:
/// `table "orders": column "amount" is numeric(12,2) but the batch has utf8`.
pub struct Error {
    kind: ErrorKind,
    message: String,
    field: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    refused: Vec<(usize, crate::Reject)>,
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            field: None,
            source: None,
            refused: Vec::new(),
        }
    }

    /// A [`ErrorKind::Data`] error from a sink's `write` that refused records of the
    /// batch before it wrote any of it (a message over the broker's size limit, an
    /// object key too long): each with its row in the batch and its reject, naming
    /// where it would have gone. Under `errors.tolerance = "all"` the runtime sends
    /// them to the dead-letter sink and writes the rest of the batch again; otherwise
    /// it stops, naming the first. `rows` must not be empty.
    pub fn refused(rows: Vec<(usize, crate::Reject)>) -> Self {
        let message = match rows.first() {
            Some((_, r)) if rows.len() > 1 => format!(
                "{}: {} (and {} more records refused)",
                r.position,
                r.error,
                rows.len() - 1
            ),
            Some((_, r)) => format!("{}: {}", r.position, r.error),
            None => "no record refused".to_string(),
        };
        Error {
            refused: rows,
            ..Self::data(message)
        }
    }

    /// The records a sink refused ([`Error::refused`]): rows in the batch and their
    /// rejects; empty for any other error.
    pub fn refused_rows(&self) -> &[(usize, crate::Reject)] {
        &self.refused
    }

    /// The same error with `message` (the plugin boundary keeps the plugin's).
    #[cfg(feature = "plugin")]
    pub(crate) fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }

    /// Takes the records a sink refused out of the error.
    pub fn take_refused(&mut self) -> Vec<(usize, crate::Reject)> {
        std::mem::take(&mut self.refused)
    }

    /// A [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// A [`ErrorKind::Connect`] error.
    pub fn connect(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Connect, message)
    }

    /// A [`ErrorKind::Transient`] error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// A [`ErrorKind::Storage`] error.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, message)
    }

    /// A [`ErrorKind::Data`] error.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }

    /// A [`ErrorKind::Schema`] error.
    pub fn schema(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Schema, message)
    }

    /// A [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// A [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Attaches the underlying cause; it is shown after the message and kept for `source()`.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Names the config key (dotted path, e.g. `format.delimiter`) this error is about,
    /// so the runtime can point at its line in the pipeline file.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Prefixes the message with context, keeping kind, field and cause.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The config key this error is about, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// True for kinds the runtime retries with backoff (`Connect`, `Transient`).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Connect | ErrorKind::Transient)
    }

    /// True when restarting the pipeline from its last checkpoint may succeed where
    /// retrying the call did not: the retryable kinds and `Aborted`.
    pub fn is_restartable(&self) -> bool {
        self.is_retryable() || self.kind == ErrorKind::Aborted
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {self}", self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(err: arrow_schema::ArrowError) -> Self {
        use arrow_schema::ArrowError as A;
        let kind = match &err {
            A::SchemaError(_) => ErrorKind::Schema,
            A::ParseError(_) | A::CastError(_) | A::JsonError(_) | A::CsvError(_) => {
                ErrorKind::Data
            }
            A::IoError(_, _) | A::ExternalError(_) => ErrorKind::Transient,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, "arrow").with_source(err)
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::PermissionDenied => ErrorKind::Auth,
            K::Interrupted | K::TimedOut | K::WouldBlock => ErrorKind::Transient,
            K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                ErrorKind::Connect
            }
            K::StorageFull | K::ReadOnlyFilesystem => ErrorKind::Storage,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, "i/o").with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_cause_in_display_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow disk");
        let err = Error::transient("writing part file").with_source(io);
        assert_eq!(err.to_string(), "writing part file: slow disk");
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.is_retryable());
    }

    #[test]
    fn config_errors_are_not_retryable() {
        assert!(!Error::config("bad").is_retryable());
        assert_eq!(ErrorKind::from_name("not_found"), ErrorKind::NotFound);
    }

    #[test]
    fn every_kind_crosses_the_plugin_boundary_by_name_and_conflict_is_never_retried() {
        use ErrorKind as K;
        for kind in [
            K::Config,
            K::Connect,
            K::Auth,
            K::Transient,
            K::Data,
            K::Schema,
            K::NotFound,
            K::Unsupported,
            K::Aborted,
            K::Conflict,
            K::Internal,
        ] {
            assert_eq!(ErrorKind::from_name(kind.as_str()), kind);
        }
        let held = Error::new(K::Conflict, "held by another run");
        assert!(!held.is_retryable());
        assert!(!held.is_restartable());
    }
}
