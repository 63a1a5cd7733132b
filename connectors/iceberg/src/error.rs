//! Iceberg's errors as connector errors: the one place their kinds are mapped.

use connector_api::{Error, ErrorKind};

/// An iceberg call's failure as a connector error naming `what`. The catalog's
/// database errors arrive as `Unexpected` (a restarted PostgreSQL, a busy SQLite):
/// retried, as a commit conflict is.
pub fn lake_error(what: &str, e: iceberg::Error) -> Error {
    use iceberg::ErrorKind as K;
    let kind = match e.kind() {
        _ if e.retryable() => ErrorKind::Transient,
        K::CatalogCommitConflicts | K::Unexpected => ErrorKind::Transient,
        K::FeatureUnsupported => ErrorKind::Unsupported,
        K::NamespaceNotFound | K::TableNotFound => ErrorKind::NotFound,
        K::DataInvalid => ErrorKind::Storage,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, what).with_source(e)
}

/// `e`, from a write that may have left part of a batch in the open data files, as
/// [`ErrorKind::Aborted`]: writing the batch again would repeat rows, so the files
/// are dropped and the runtime restarts the run from its checkpoint.
pub fn aborted(e: Error) -> Error {
    Error::new(ErrorKind::Aborted, e.to_string())
}
