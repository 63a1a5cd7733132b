//! The S3 client from the connection options, and S3 errors as connector errors.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use connector_api::{Error, ErrorKind, Result};

use crate::config::Connection;

/// A client for `conn`.
pub async fn connect(conn: &Connection) -> Result<Client> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(profile) = &conn.auth.profile {
        loader = loader.profile_name(profile);
    }
    if let (Some(id), Some(secret)) = (&conn.auth.access_key_id, &conn.auth.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id.expose(),
            secret.expose(),
            conn.auth
                .session_token
                .as_ref()
                .map(|t| t.expose().to_string()),
            None,
            "sluice-config",
        ));
    }
    match (&conn.region, &conn.endpoint) {
        (Some(region), _) => loader = loader.region(Region::new(region.clone())),
        // an S3-compatible server rarely cares; skip the search of the environment
        // (which ends asking EC2 instance metadata)
        (None, Some(_)) => loader = loader.region(Region::new("us-east-1")),
        (None, None) => {}
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        // S3-compatible servers differ in which checksum headers they know; send and
        // check them only where the API requires it
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if shared.region().is_none() {
        config = config.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &conn.endpoint {
        config = config.endpoint_url(endpoint);
    }
    config = config.force_path_style(conn.force_path_style.unwrap_or(conn.endpoint.is_some()));
    Ok(Client::from_conf(config.build()))
}

/// An S3 call's failure as a connector error, classified so the runtime retries what
/// can pass (network, throttling, 5xx) and stops on what cannot (credentials, a
/// missing bucket). `what` names the call and object: `upload of s3://b/k`.
pub fn s3_error<E>(err: SdkError<E, HttpResponse>, what: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("").to_string();
            let message = e.message().unwrap_or("").to_string();
            let kind = classify(&code, service.raw().status().as_u16());
            let text = if code.is_empty() && message.is_empty() {
                format!(
                    "{what}: HTTP {}: {}",
                    service.raw().status().as_u16(),
                    chain(&err)
                )
            } else if message.is_empty() {
                format!("{what}: {code}")
            } else {
                format!("{what}: {code}: {message}")
            };
            Error::new(kind, text)
        }
        SdkError::DispatchFailure(_) => Error::connect(format!(
            "{what}: the S3 endpoint cannot be reached: {}",
            chain(&err)
        )),
        SdkError::TimeoutError(_) => Error::transient(format!("{what}: timed out")),
        SdkError::ResponseError(_) => {
            Error::transient(format!("{what}: unreadable response: {}", chain(&err)))
        }
        SdkError::ConstructionFailure(_) => {
            // the usual cause: no credentials anywhere in the default chain
            let text = chain(&err);
            let kind = if text.contains("credentials") {
                ErrorKind::Auth
            } else {
                ErrorKind::Config
            };
            Error::new(kind, format!("{what}: {text}"))
        }
        _ => Error::internal(format!("{what}: {}", chain(&err))),
    }
}

/// The kind of an S3 error code.
fn classify(code: &str, status: u16) -> ErrorKind {
    match code {
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "AccessDenied"
        | "ExpiredToken"
        | "InvalidToken"
        | "AllAccessDisabled"
        | "Forbidden" => ErrorKind::Auth,
        "NoSuchBucket" | "NoSuchKey" | "NotFound" | "NoSuchUpload" => ErrorKind::NotFound,
        "SlowDown"
        | "InternalError"
        | "ServiceUnavailable"
        | "RequestTimeout"
        | "RequestTimeTooSkewed"
        | "OperationAborted" => ErrorKind::Transient,
        _ => match status {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            408 | 429 | 500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Internal,
        },
    }
}

/// The error and its sources on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// True when `err` says the object or upload is not there.
pub fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(s) => {
            matches!(
                s.err().code(),
                Some("NoSuchKey" | "NotFound" | "NoSuchUpload")
            ) || s.raw().status().as_u16() == 404
        }
        _ => false,
    }
}
