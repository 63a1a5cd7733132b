//! Pipeline files: parsing with positions, explicit references, validation.
//!
//! A pipeline file is TOML. Every error names the file, line and column of the key it
//! is about and, for a misspelt key or connector, suggests the right one. Loading runs
//! every pure validation (connector configs included) before anything opens a
//! connection, so a config error never starts a pipeline.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_schema::SchemaRef;
use connector_api::DriftPolicy;
use serde::Deserialize;
use serde_json::{Map, Value};
use toml::de::{DeTable, DeValue};

use crate::interpolate;
use crate::registry::Registry;
use crate::transform::TransformSpec;
use checks::{check_changes, check_record_schema, distinct_destinations};

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

/// A byte count written as an integer or with a unit: `"64MiB"`, `"512KB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size like \"64MiB\""))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit \"{other}\" in \"{s}\"; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    Ok(n * mult)
}

fn default_max_records() -> usize {
    8192
}
fn default_max_bytes() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_linger() -> Duration {
    Duration::from_millis(200)
}
fn default_in_flight() -> ByteSize {
    ByteSize(32 << 20)
}

/// `[batch]`: how records are grouped and how much may be in flight.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Records per batch at most (also the size the source is asked for).
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Bytes (in Arrow memory) per batch at most.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// How long a partial batch waits for more records before it is written.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Bytes of records between source and sinks at most; the source waits beyond it.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: ByteSize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            linger: default_linger(),
            max_in_flight: default_in_flight(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

/// `[checkpoint]`: where offsets are stored and how often.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// SQLite file of the checkpoint store; default `.sluice/state.db` next to the pipeline file.
    pub path: Option<PathBuf>,
    /// Flush the sinks and store a checkpoint at least this often.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long a run waits for another run of the same pipeline (same name and
    /// checkpoint directory) to end before it fails naming that run; `0s` fails at once.
    #[serde(default, with = "humantime_serde")]
    pub lock_timeout: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            path: None,
            interval: default_interval(),
            lock_timeout: Duration::ZERO,
        }
    }
}

/// `errors.tolerance`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tolerance {
    /// A bad record stops the pipeline with an error naming its position.
    #[default]
    None,
    /// A bad record goes to the dead-letter sink and the pipeline goes on.
    All,
}

fn default_rate() -> f64 {
    0.1
}
fn default_window() -> usize {
    1000
}
fn default_retries() -> u32 {
    8
}
fn default_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

/// `[errors]`: bad records and retries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `none` (stop on a bad record) or `all` (dead-letter it and go on).
    #[serde(default)]
    pub tolerance: Tolerance,
    /// With `all`: stop anyway when more than this share of the last `window` records was bad.
    #[serde(default = "default_rate")]
    pub max_failure_rate: f64,
    /// Records the failure rate is measured over.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Retries of a retryable error (connection lost, timeout) before the pipeline stops;
    /// also the restarts of the whole pipeline in a row without a stored checkpoint.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First retry delay; doubles each time, with jitter.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Longest retry delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// The dead-letter sink, configured like any sink.
    pub dead_letter: Option<Map<String, Value>>,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        ErrorsConfig {
            tolerance: Tolerance::None,
            max_failure_rate: default_rate(),
            window: default_window(),
            max_retries: default_retries(),
            retry_backoff: default_backoff(),
            retry_backoff_max: default_backoff_max(),
            dead_letter: None,
        }
    }
}

/// `[plugins]`: where to load connector plugins from for this pipeline.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directories of plugin libraries, relative to the pipeline file.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
}

/// The `[plugins] dirs` of a pipeline file, resolved against its directory; read
/// before the file is validated, because its connectors may come from there.
pub fn plugin_dirs(file: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let base = file.parent().unwrap_or(Path::new("."));
    doc.get("plugins")
        .and_then(|p| p.get("dirs"))
        .and_then(|d| d.as_array())
        .map(|dirs| {
            dirs.iter()
                .filter_map(|d| d.as_str())
                .map(|d| base.join(d))
                .collect()
        })
        .unwrap_or_default()
}

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

struct Doc {
    file: PathBuf,
    text: String,
    /// Where each key is.
    spans: HashMap<String, Range<usize>>,
    /// Where each key's value is.
    values: HashMap<String, Range<usize>>,
    secrets: Vec<String>,
}

impl Doc {
    fn error_at(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        let mut message = message.into();
        for s in &self.secrets {
            message = message.replace(s.as_str(), "****");
        }
        ConfigError {
            file: self.file.clone(),
            position: span.map(|s| line_col(&self.text, s.start)),
            message,
            hint,
        }
    }

    /// `e`, an error in the SQL text of the string at `path`, at its place in the file.
    fn sql_error(&self, path: &str, e: &sluice_sql::SqlError, hint: Option<String>) -> ConfigError {
        let mut err = self.error_at(None, format!("`{path}`: {e}"), hint);
        err.position = match self.values.get(path) {
            Some(span) => {
                let (line, col) = string_start(&self.text, span.start);
                Some(match e.position {
                    Some((1, c)) => (line, col + c as usize - 1),
                    Some((l, c)) => (line + l as usize - 1, c as usize),
                    None => (line, col),
                })
            }
            None => self.span_of(path).map(|s| line_col(&self.text, s.start)),
        };
        err
    }

    /// The span of the key at `path`, or of the closest enclosing key.
    fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut p = path.to_string();
        loop {
            if let Some(s) = self.spans.get(&p) {
                return Some(s.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }

    /// A serde error at `path` (relative to `prefix`), with a suggestion for unknown keys.
    fn serde_error(&self, prefix: &str, path: &str, message: &str) -> ConfigError {
        let mut full = join(prefix, path);
        let mut hint = None;
        if let Some(unknown) = between(message, "unknown field `", "`") {
            if !full.ends_with(&unknown) {
                full = join(&full, &unknown);
            }
            let expected = expected_list(message);
            hint = suggest(&unknown, &expected).map(|s| format!("did you mean `{s}`?"));
        } else if let Some(unknown) = between(message, "unknown variant `", "`") {
            let expected = expected_list(message);
            hint = suggest(&unknown, &expected).map(|s| format!("did you mean \"{s}\"?"));
        }
        let what = if full.is_empty() {
            String::new()
        } else {
            format!("`{full}`: ")
        };
        self.error_at(self.span_of(&full), format!("{what}{message}"), hint)
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => path.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(s[i..j].to_string())
}

fn expected_list(message: &str) -> Vec<String> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The closest candidate within a small edit distance.
pub fn suggest(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// Line and column where the text of the string value at `offset` begins: after its
/// quote, and after the newline that may follow `"""` or `'''`.
fn string_start(text: &str, offset: usize) -> (usize, usize) {
    let rest = &text[offset.min(text.len())..];
    let skip = match rest.starts_with("\"\"\"") || rest.starts_with("'''") {
        true => {
            let after = &rest[3..];
            3 + if after.starts_with("\r\n") {
                2
            } else {
                usize::from(after.starts_with('\n'))
            }
        }
        false => 1,
    };
    line_col(text, offset + skip)
}

fn to_json(
    value: &DeValue<'_>,
    path: &str,
    doc: &mut Doc,
    span: Range<usize>,
) -> Result<Value, ConfigError> {
    Ok(match value {
        DeValue::String(s) => match interpolate::resolve(s) {
            Ok(r) => {
                doc.secrets.extend(r.secrets);
                Value::String(r.text)
            }
            Err(e) => return Err(doc.error_at(Some(span), format!("`{path}`: {e}"), None)),
        },
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            let n =
                i64::from_str_radix(digits.trim_start_matches('+'), i.radix()).map_err(|_| {
                    doc.error_at(
                        Some(span.clone()),
                        format!("`{path}`: integer out of range"),
                        None,
                    )
                })?;
            Value::from(n)
        }
        DeValue::Float(f) => {
            let x: f64 = f.as_str().replace('_', "").parse().unwrap_or(f64::NAN);
            serde_json::Number::from_f64(x)
                .map(Value::Number)
                .ok_or_else(|| {
                    doc.error_at(
                        Some(span.clone()),
                        format!("`{path}`: {} is not a finite number", f.as_str()),
                        None,
                    )
                })?
        }
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                doc.spans.insert(p.clone(), item.span());
                out.push(to_json(item.get_ref(), &p, doc, item.span())?);
            }
            Value::Array(out)
        }
        DeValue::Table(table) => Value::Object(table_to_json(table, path, doc)?),
    })
}

fn table_to_json(
    table: &DeTable<'_>,
    prefix: &str,
    doc: &mut Doc,
) -> Result<Map<String, Value>, ConfigError> {
    let mut out = Map::new();
    for (k, v) in table.iter() {
        let key = k.get_ref().to_string();
        let path = join(prefix, &key);
        doc.spans.insert(path.clone(), k.span());
        doc.values.insert(path.clone(), v.span());
        out.insert(key, to_json(v.get_ref(), &path, doc, v.span())?);
    }
    Ok(out)
}

/// Reads, parses and validates a pipeline file (no I/O beyond reading it, and a file
/// sink's directory resolved through symbolic links).
pub fn load(file: &Path, registry: &Registry) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        position: None,
        message: format!("cannot read the pipeline file: {e}"),
        hint: None,
    })?;
    parse(file, text, registry)
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
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        position: None,
        message: format!("cannot read the pipeline file: {e}"),
        hint: None,
    })?;
    parse_known(file, text, registry, Some(schema))
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
    fn sizes_take_units() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("10 KB").unwrap(), 10_000);
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
