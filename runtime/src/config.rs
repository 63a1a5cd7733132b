//! Pipeline files: parsing with positions, explicit references, validation.
//!
//! A pipeline file is TOML. Every error names the file, line and column of the key it
//! is about and, for a misspelt key or connector, suggests the right one. Loading runs
//! every pure validation (connector configs included) before anything opens a
//! connection, so a config error never starts a pipeline. The file as located text is
//! `config/doc.rs`, the pipeline-wide settings `config/settings.rs`, the checks across
//! sections `config/checks.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use connector_api::DriftPolicy;
use serde::Deserialize;
use serde_json::{Map, Value};
use toml::de::DeTable;

use crate::registry::Registry;
use crate::transform::TransformSpec;
use checks::{check_changes, check_record_schema, check_store, distinct_destinations};
pub use doc::suggest;
use doc::{line_col, table_to_json, Doc};
pub use settings::{
    plugin_dirs, BatchConfig, ByteSize, CheckpointConfig, ErrorsConfig, PluginsConfig, StoreKind,
    Tolerance,
};

/// A config error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// A suggestion.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)?
            }
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    plugins: PluginsConfig,
    source: Map<String, Value>,
    #[serde(default)]
    transforms: Vec<TransformSpec>,
    sink: Option<Map<String, Value>>,
    #[serde(default)]
    sinks: BTreeMap<String, Map<String, Value>>,
    #[serde(default)]
    batch: BatchConfig,
    #[serde(default)]
    checkpoint: CheckpointConfig,
    #[serde(default)]
    errors: ErrorsConfig,
}

/// A connector section (`[source]`, `[sink]`, `[sinks.NAME]`, `[errors.dead_letter]`).
#[derive(Clone, Debug)]
pub struct Section {
    /// Where it is in the file: `source`, `sinks.archive`.
    pub path: String,
    /// The sink name the runtime uses (`sink`, or the NAME of `[sinks.NAME]`).
    pub name: String,
    /// `connector = "..."`.
    pub connector: String,
    /// The connector's options, references resolved.
    pub config: Value,
    /// `drift = "..."` (sinks).
    pub drift: DriftPolicy,
    /// `where = "..."` (sinks): the SQL condition a record must meet to go to this
    /// sink; every record when None.
    pub route: Option<String>,
}

/// A validated pipeline file.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The file it came from.
    pub file: PathBuf,
    /// `name`, or the file's stem.
    pub name: String,
    /// The source.
    pub source: Section,
    /// Transforms, in order.
    pub transforms: Vec<TransformSpec>,
    /// One or more sinks.
    pub sinks: Vec<Section>,
    /// The dead-letter sink.
    pub dead_letter: Option<Section>,
    /// `[batch]`.
    pub batch: BatchConfig,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointConfig,
    /// `[errors]`.
    pub errors: ErrorsConfig,
    /// Values substituted for references, to be redacted from messages.
    pub secrets: Vec<String>,
}

/// `message` with every value in `secrets` (what references in a pipeline file
/// resolved to: passwords, tokens) replaced by `****`.
pub fn redact(secrets: &[String], message: String) -> String {
    secrets
        .iter()
        .fold(message, |m, s| m.replace(s.as_str(), "****"))
}

impl Pipeline {
    /// The checkpoint store file.
    pub fn checkpoint_path(&self) -> PathBuf {
        match &self.checkpoint.path {
            Some(p) => p.clone(),
            None => self
                .file
                .parent()
                .unwrap_or(Path::new("."))
                .join(".sluice")
                .join("state.db"),
        }
    }
}

/// Reads, parses and validates a pipeline file (no I/O beyond reading it, and a file
/// sink's directory resolved through symbolic links).
pub fn load(file: &Path, registry: &Registry) -> Result<Pipeline, ConfigError> {
    parse(file, read(file)?, registry)
}

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        position: None,
        message: format!("cannot read the pipeline file: {e}"),
        hint: None,
    })
}

/// [`load`], with the schema of the source's records found by connecting to it
/// (`sluice check`): the transforms and routes are planned on it, and the sinks asked
/// whether they take what comes out, with errors placed in the file as `load` places
/// them for a declared schema.
pub fn load_discovered(
    file: &Path,
    registry: &Registry,
    schema: SchemaRef,
) -> Result<Pipeline, ConfigError> {
    parse_known(file, read(file)?, registry, Some(schema))
}

/// Parses and validates pipeline text as if read from `file`.
pub fn parse(file: &Path, text: String, registry: &Registry) -> Result<Pipeline, ConfigError> {
    parse_known(file, text, registry, None)
}

/// [`parse`]; `known`: the source's records' schema, when found by connecting.
fn parse_known(
    file: &Path,
    text: String,
    registry: &Registry,
    known: Option<SchemaRef>,
) -> Result<Pipeline, ConfigError> {
    let mut doc = Doc {
        file: file.to_path_buf(),
        text: text.clone(),
        spans: HashMap::new(),
        values: HashMap::new(),
        secrets: Vec::new(),
    };
    let parsed = DeTable::parse(&text).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        position: e.span().map(|s| line_col(&text, s.start)),
        message: format!("invalid TOML: {}", e.message().trim()),
        hint: None,
    });
    let root = parsed?;
    let json = table_to_json(root.get_ref(), "", &mut doc)?;
    let raw: RawPipeline = serde_path_to_error::deserialize(Value::Object(json)).map_err(|e| {
        let path = e.path().to_string();
        doc.serde_error("", &path, &e.inner().to_string())
    })?;

    let name = raw.name.clone().unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into())
    });
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(doc.error_at(
            doc.span_of("name"),
            format!("pipeline name \"{name}\" may use only letters, digits, '-', '_' and '.'"),
            None,
        ));
    }

    let source = section(
        &doc,
        "source",
        "source",
        raw.source.clone(),
        Kind::Source,
        registry,
    )?;
    let mut sinks = Vec::new();
    match (&raw.sink, raw.sinks.is_empty()) {
        (Some(_), false) => {
            return Err(doc.error_at(
                doc.span_of("sinks"),
                "use either [sink] or [sinks.NAME], not both",
                None,
            ))
        }
        (None, true) => {
            return Err(doc.error_at(
                None,
                "the pipeline has no sink",
                Some("add a [sink] table with connector = \"...\"".into()),
            ))
        }
        (Some(s), true) => sinks.push(section(
            &doc,
            "sink",
            "sink",
            s.clone(),
            Kind::Sink,
            registry,
        )?),
        (None, false) => {
            for (n, s) in &raw.sinks {
                sinks.push(section(
                    &doc,
                    &format!("sinks.{n}"),
                    n,
                    s.clone(),
                    Kind::Sink,
                    registry,
                )?);
            }
        }
    }
    let dead_letter = match &raw.errors.dead_letter {
        Some(s) => Some(section(
            &doc,
            "errors.dead_letter",
            "dead_letter",
            s.clone(),
            Kind::Sink,
            registry,
        )?),
        None => None,
    };
    distinct_destinations(&doc, registry, sinks.iter().chain(dead_letter.as_ref()))?;
    if raw.errors.tolerance == Tolerance::All && dead_letter.is_none() {
        return Err(doc.error_at(
            doc.span_of("errors.tolerance"),
            "errors.tolerance = \"all\" needs a dead-letter sink, or bad records would be lost",
            Some("add [errors.dead_letter] with connector = \"file\" and a path".into()),
        ));
    }
    if !(0.0..=1.0).contains(&raw.errors.max_failure_rate) {
        return Err(doc.error_at(
            doc.span_of("errors.max_failure_rate"),
            "errors.max_failure_rate must be between 0.0 and 1.0",
            None,
        ));
    }
    if raw.batch.max_records == 0 {
        return Err(doc.error_at(
            doc.span_of("batch.max_records"),
            "batch.max_records must be at least 1",
            None,
        ));
    }
    if raw.checkpoint.interval.is_zero() {
        // zero would flush and checkpoint in a busy loop, never waiting for data
        return Err(doc.error_at(
            doc.span_of("checkpoint.interval"),
            "checkpoint.interval must be more than 0",
            Some(
                "e.g. interval = \"1s\"; a short interval checkpoints after about every batch"
                    .into(),
            ),
        ));
    }
    check_store(&doc, &raw.checkpoint)?;
    if let Some(d) = dead_letter.as_ref().filter(|d| d.route.is_some()) {
        return Err(doc.error_at(
            doc.span_of(&format!("{}.where", d.path)),
            "the dead-letter sink takes every letter: `where` routes the records of [sink] or [sinks.NAME]",
            None,
        ));
    }
    for (i, t) in raw.transforms.iter().enumerate() {
        if let TransformSpec::Sql { query, .. } = t {
            if let Err(e) = sluice_sql::Query::parse(query) {
                return Err(doc.sql_error(&format!("transforms[{i}].query"), &e, None));
            }
        }
        t.validate().map_err(|e| {
            doc.error_at(
                doc.span_of(&format!("transforms[{i}]")),
                format!("`transforms[{i}]`: {e}"),
                None,
            )
        })?;
    }
    check_record_schema(&doc, registry, known, &source, &raw.transforms, &sinks)?;
    check_changes(&doc, registry, &source, &raw.transforms, &sinks)?;
    Ok(Pipeline {
        file: file.to_path_buf(),
        name,
        source,
        transforms: raw.transforms,
        sinks,
        dead_letter,
        batch: raw.batch,
        checkpoint: raw.checkpoint,
        errors: raw.errors,
        secrets: doc.secrets.clone(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Source,
    Sink,
}

fn section(
    doc: &Doc,
    path: &str,
    name: &str,
    mut table: Map<String, Value>,
    kind: Kind,
    registry: &Registry,
) -> Result<Section, ConfigError> {
    let connector = match table.remove("connector") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(doc.error_at(
                doc.span_of(&format!("{path}.connector")),
                format!("`{path}.connector` must be a string"),
                None,
            ))
        }
        None => {
            return Err(doc.error_at(
                doc.span_of(path),
                format!("[{path}] has no `connector`"),
                Some(format!(
                    "add connector = \"...\"; available: {}",
                    registry.names(kind == Kind::Source).join(", ")
                )),
            ))
        }
    };
    let mut drift = DriftPolicy::default();
    let mut route = None;
    if kind == Kind::Sink {
        if let Some(v) = table.remove("drift") {
            drift = serde_path_to_error::deserialize(v).map_err(|e| {
                doc.serde_error(&format!("{path}.drift"), "", &e.inner().to_string())
            })?;
        }
        if let Some(v) = table.remove("where") {
            let at = format!("{path}.where");
            let Value::String(predicate) = v else {
                return Err(doc.error_at(
                    doc.span_of(&at),
                    format!("`{at}` must be a string: an SQL condition on the records' columns"),
                    None,
                ));
            };
            sluice_sql::Query::filter(&predicate).map_err(|e| doc.sql_error(&at, &e, None))?;
            route = Some(predicate);
        }
    }
    let config = Value::Object(table);
    let key = format!("{path}.connector");
    let result = match kind {
        Kind::Source => registry.source(&connector).map(|c| c.validate(&config)),
        Kind::Sink => registry.sink(&connector).map(|c| c.validate(&config)),
    };
    match result {
        None => {
            let names = registry.names(kind == Kind::Source);
            let other = if kind == Kind::Source {
                registry.sink(&connector).is_some()
            } else {
                registry.source(&connector).is_some()
            };
            let role = if kind == Kind::Source {
                "source"
            } else {
                "sink"
            };
            let message = if other {
                format!("connector \"{connector}\" cannot be used as a {role}")
            } else {
                format!("unknown connector \"{connector}\"")
            };
            let hint = suggest(&connector, &names)
                .map(|s| format!("did you mean \"{s}\"?"))
                .or_else(|| Some(format!("{role} connectors: {}", names.join(", "))));
            Err(doc.error_at(doc.span_of(&key), message, hint))
        }
        Some(Err(e)) => {
            let field = e.field().unwrap_or("").to_string();
            Err(doc.serde_error(path, &field, e.message()))
        }
        Some(Ok(())) => Ok(Section {
            path: path.to_string(),
            name: name.to_string(),
            connector,
            config,
            drift,
            route,
        }),
    }
}

mod checks;
mod doc;
mod settings;

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Pipeline, ConfigError> {
        parse(Path::new("p.toml"), text.to_string(), &Registry::builtin())
    }

    #[test]
    fn unknown_key_names_line_and_suggests() {
        let err = parse_str("[source]\nconnector = \"datagen\"\ncont = 5\n[sink]\nconnector = \"file\"\npath = \"x\"\n").unwrap_err();
        assert_eq!(err.position, Some((3, 1)), "{err}");
        assert!(err.message.contains("unknown field `cont`"), "{err}");
        assert_eq!(err.hint.as_deref(), Some("did you mean `count`?"));
    }

    #[test]
    fn unknown_connector_suggests() {
        let err = parse_str("[source]\nconnector = \"fiel\"\npath = \"x\"\n[sink]\nconnector = \"file\"\npath = \"y\"\n").unwrap_err();
        assert!(err.message.contains("unknown connector \"fiel\""), "{err}");
        assert_eq!(err.position, Some((2, 1)));
        assert_eq!(err.hint.as_deref(), Some("did you mean \"file\"?"));
    }

    #[test]
    fn broken_toml_is_located() {
        let err = parse_str("[source\nconnector = 1\n").unwrap_err();
        assert!(err.message.starts_with("invalid TOML"), "{err}");
        assert_eq!(err.position.map(|p| p.0), Some(1));
    }

    #[test]
    fn wrong_type_in_nested_key_is_located() {
        let err = parse_str("[source]\nconnector = \"file\"\npath = \"x\"\nformat = \"csv\"\n[source.csv]\ndelimiter = 5\n[sink]\nconnector = \"file\"\npath = \"y\"\n").unwrap_err();
        assert_eq!(err.position, Some((6, 1)), "{err}");
        assert!(err.message.contains("source.csv.delimiter"), "{err}");
    }

    #[test]
    fn missing_env_var_is_located_and_secrets_are_redacted() {
        let err = parse_str("[source]\nconnector = \"file\"\npath = \"${env:SLUICE_MISSING_VAR_1}\"\n[sink]\nconnector = \"file\"\npath = \"y\"\n").unwrap_err();
        assert!(
            err.message.contains("SLUICE_MISSING_VAR_1 is not set"),
            "{err}"
        );
        assert_eq!(err.position, Some((3, 8)));
        std::env::set_var("SLUICE_TEST_SECRET_N", "topsecret");
        let err = parse_str("[source]\nconnector = \"datagen\"\ncount = \"${env:SLUICE_TEST_SECRET_N}\"\n[sink]\nconnector = \"file\"\npath = \"y\"\n").unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
    }

    #[test]
    fn zero_checkpoint_interval_is_refused() {
        let err = parse_str("[source]\nconnector = \"datagen\"\n[sink]\nconnector = \"blackhole\"\n[checkpoint]\ninterval = \"0s\"\n").unwrap_err();
        assert!(
            err.message
                .contains("checkpoint.interval must be more than 0"),
            "{err}"
        );
        assert_eq!(err.position.map(|p| p.0), Some(6), "{err}");
    }

    #[test]
    fn a_shared_store_needs_a_postgres_url_and_a_local_one_takes_none() {
        let head =
            "[source]\nconnector = \"datagen\"\n[sink]\nconnector = \"blackhole\"\n[checkpoint]\n";
        let refused = |checkpoint: &str, says: &str, line: usize| {
            let err = parse_str(&format!("{head}{checkpoint}")).unwrap_err();
            assert!(err.message.contains(says), "{err}");
            assert_eq!(err.position.map(|p| p.0), Some(line), "{err}");
        };
        refused("store = \"postgres\"\n", "needs checkpoint.url", 6);
        refused(
            "store = \"postgres\"\nurl = \"mysql://x\"\n",
            "must be a postgres:// URL",
            7,
        );
        refused(
            "url = \"postgres://x\"\n",
            "checkpoint.url is for store = \"postgres\"",
            6,
        );
        refused(
            "store = \"postgres\"\nurl = \"postgres://x\"\nlease_timeout = \"100ms\"\n",
            "at least 1s",
            8,
        );
        refused(
            "store = \"postgres\"\nurl = \"postgres://x\"\nsplits_at_once = 0\n",
            "splits_at_once must be at least 1",
            8,
        );
        let p = parse_str(&format!(
            "{head}store = \"postgres\"\nurl = \"postgres://x/db\"\n"
        ))
        .unwrap();
        assert_eq!(p.checkpoint.store, StoreKind::Postgres);
        assert_eq!(
            p.checkpoint.lease_timeout,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(p.checkpoint.splits_at_once, 2);
    }
}
