//! The HTTP API of `sluice run --http ADDR`: Prometheus metrics, health, readiness,
//! pipeline status and control. Off unless asked for; a non-loopback address needs a
//! bearer token (`--auth-token`), checked on every request.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 while the process serves |
//! | `GET /ready` | 200 when no pipeline is starting, retrying or failed; else 503 with the reasons |
//! | `GET /metrics` | the Prometheus text format (see `telemetry`) |
//! | `GET /pipelines`, `GET /pipelines/NAME` | JSON: state, file, last checkpoint, counts, rates, errors |
//! | `POST /pipelines/NAME/{pause,resume,restart,stop}` | 202 with the pipeline's JSON |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::service::{Command, Service};
use crate::telemetry::{PipelineMetrics, State};

/// The default address of `--http` given without a value (Vector's API port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8686";

/// Checks the settings and binds the listener, before any pipeline starts.
pub async fn bind(addr: SocketAddr, token: Option<&str>) -> Result<TcpListener, String> {
    if !addr.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(format!(
            "--http {addr}: the HTTP API can pause, stop and restart pipelines, so on an \
             address other than loopback it needs a bearer token: add \
             --auth-token '${{env:SLUICE_API_TOKEN}}' (or bind 127.0.0.1)"
        ));
    }
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another process, perhaps another sluice, listens there; pick another port with --http)"
        } else {
            ""
        };
        format!("--http {addr}: cannot listen: {e}{hint}")
    })
}

/// Serves the API on `listener` until the process ends.
pub fn serve(listener: TcpListener, token: Option<String>, service: Arc<Service>) {
    let token = Arc::new(token.filter(|t| !t.is_empty()));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, auth = token.is_some(), "HTTP API listening");
    }
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (service, token) = (service.clone(), token.clone());
            tokio::spawn(async move {
                let handler = hyper::service::service_fn(move |req| {
                    let (service, token) = (service.clone(), token.clone());
                    async move { Ok::<_, Infallible>(handle(req, &service, token.as_deref()).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), handler);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP API connection ended with an error");
                }
            });
        }
    });
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: String) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

/// True when `header` is `Bearer TOKEN`; compares every byte (no early exit).
fn authorized(header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(req: Request<Incoming>, service: &Service, token: Option<&str>) -> Reply {
    if let Some(token) = token {
        if !authorized(req.headers().get(AUTHORIZATION), token) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer TOKEN) and the one given, if any, is wrong".into(),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let path: Vec<&str> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method().clone();
    match (method, path.as_slice()) {
        (Method::GET, ["health"]) => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        (Method::GET, ["ready"]) => ready(service),
        (Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            service.telemetry.render(),
        ),
        (Method::GET, ["pipelines"]) => {
            let mut all: Vec<Value> = service.telemetry.all().iter().map(|m| status(m)).collect();
            for (file, e) in service.invalid_files() {
                all.push(json!({
                    "file": file.display().to_string(),
                    "state": "invalid",
                    "config_error": e,
                }));
            }
            json_reply(StatusCode::OK, &Value::Array(all))
        }
        (Method::GET, ["pipelines", name]) => match service.telemetry.get(name) {
            Some(m) => json_reply(StatusCode::OK, &status(&m)),
            None => unknown(name),
        },
        (Method::POST, ["pipelines", name, action]) => {
            let Some(command) = Command::parse(action) else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("unknown action \"{action}\"; actions: pause, resume, restart, stop"),
                );
            };
            if !service.command(name, command).await {
                return unknown(name);
            }
            tracing::info!(pipeline = %name, action = %action, "HTTP API request");
            match service.telemetry.get(name) {
                Some(m) => json_reply(StatusCode::ACCEPTED, &status(&m)),
                None => unknown(name),
            }
        }
        (_, ["health" | "ready" | "metrics" | "pipelines"] | ["pipelines", _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes GET", req.uri().path()),
        ),
        (_, ["pipelines", _, _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes POST", req.uri().path()),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint: {}; endpoints: /health, /ready, /metrics, /pipelines",
                req.uri().path()
            ),
        ),
    }
}

fn unknown(name: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        format!("no pipeline named \"{name}\""),
    )
}

/// 200 when no pipeline is starting, retrying or failed (a pipeline paused, stopped
/// on request or finished is where it was asked to be); else 503 with the reasons.
fn ready(service: &Service) -> Reply {
    let reasons: Vec<String> = service
        .telemetry
        .all()
        .iter()
        .filter(|m| matches!(m.state(), State::Starting | State::Retrying | State::Failed))
        .map(|m| {
            let why = m.last_error().map(|e| format!(": {e}")).unwrap_or_default();
            format!("pipeline \"{}\" is {}{why}", m.name, m.state().name())
        })
        .collect();
    if reasons.is_empty() {
        json_reply(StatusCode::OK, &json!({ "ready": true }))
    } else {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ready": false, "reasons": reasons }),
        )
    }
}

/// A pipeline's JSON on `/pipelines`.
fn status(m: &PipelineMetrics) -> Value {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let uptime = m.uptime().as_secs_f64();
    let written = load(&m.records_out);
    let checkpoint = m.last_checkpoint().map(|(at, offsets)| {
        let splits: serde_json::Map<String, Value> = offsets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        json!({
            "at": humantime::format_rfc3339_millis(at).to_string(),
            "age_seconds": at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "offsets": splits,
        })
    });
    let sinks: Vec<Value> = m
        .sinks
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "connector": s.connector,
                "records": load(&s.records),
                "bytes": load(&s.bytes),
                "flushes": load(&s.flushes),
            })
        })
        .collect();
    let retries: serde_json::Map<String, Value> = m
        .retries()
        .into_iter()
        .map(|(k, n)| (k.as_str().to_string(), json!(n)))
        .collect();
    json!({
        "name": m.name,
        "state": m.state().name(),
        "file": m.file.display().to_string(),
        "source": {
            "connector": m.source,
            "records": load(&m.records_in),
            "bytes": load(&m.bytes_in),
        },
        "sinks": sinks,
        "records_written": written,
        "records_rejected": load(&m.rejected),
        "records_dead_lettered": load(&m.dead_lettered),
        "records_per_second": written as f64 / uptime.max(1e-9),
        "uptime_seconds": uptime,
        "checkpoints": load(&m.checkpoints),
        "last_checkpoint": checkpoint,
        "in_flight_bytes": m.in_flight().map(|(used, _)| used),
        "lag": m.lag().iter().map(|l| json!({
            "split": l.split,
            "records": l.records,
            "bytes": l.bytes,
            "seconds": l.seconds,
            "files": l.files,
        })).collect::<Vec<_>>(),
        "progress": m.progress().map(|p| json!({
            "done": p.done,
            "total": p.total,
            "unit": p.unit.as_str(),
        })),
        "restarts": load(&m.restarts),
        "retries": retries,
        "last_error": m.last_error(),
        "config_error": m.config_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(authorized(Some(&h("Bearer s3cret")), "s3cret"));
        assert!(!authorized(Some(&h("Bearer s3cre")), "s3cret"));
        assert!(!authorized(Some(&h("Bearer s3cres")), "s3cret"));
        assert!(!authorized(Some(&h("s3cret")), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    #[tokio::test]
    async fn a_public_address_needs_a_token() {
        let err = bind("0.0.0.0:0".parse().unwrap(), None).await.unwrap_err();
        assert!(err.contains("needs a bearer token"), "{err}");
        assert!(bind("0.0.0.0:0".parse().unwrap(), Some("t")).await.is_ok());
        assert!(bind("127.0.0.1:0".parse().unwrap(), None).await.is_ok());
    }
}
