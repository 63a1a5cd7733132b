//! Connector configuration: typed parsing with the key path in errors, and secrets.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Parses a connector's typed config from the JSON form the runtime hands over.
///
/// An error names the key path (`format.delimiter`) in [`Error::field`], so the runtime
/// can point at the line of the pipeline file.
pub fn parse_config<C: DeserializeOwned>(value: &serde_json::Value) -> Result<C> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        let mut e = Error::config(inner);
        if path != "." && !path.is_empty() {
            e = e.with_field(path);
        }
        e
    })
}

/// The JSON Schema of a config type, as `sluice describe` prints it.
pub fn config_schema<C: JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(C)).unwrap_or(serde_json::Value::Null)
}

/// A secret string: a password, a token. `Debug`, `Display` and `Serialize` redact it;
/// only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A URL (`scheme://user:password@host...`) without its user and password, to name a
/// server in messages and logs.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://{REDACTED}@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

const REDACTED: &str = "****";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        delimiter: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        path: String,
        format: Inner,
    }

    #[test]
    fn names_the_key_path_of_a_wrong_type() {
        let v = serde_json::json!({"path": "x", "format": {"delimiter": 5}});
        let err = parse_config::<Cfg>(&v).unwrap_err();
        assert_eq!(err.field(), Some("format.delimiter"));
        assert!(err.message().contains("invalid type"), "{err}");
    }

    #[test]
    fn rejects_unknown_field() {
        let v = serde_json::json!({"pth": "x", "format": {"delimiter": ","}});
        let err = parse_config::<Cfg>(&v).unwrap_err();
        assert!(err.message().contains("unknown field `pth`"), "{err}");
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "**** ****");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"****\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
