//! The pipeline-wide settings: `[batch]`, `[checkpoint]`, `[errors]`, `[plugins]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

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

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_splits_at_once() -> usize {
    2
}

/// `[checkpoint] store`: where offsets are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A local SQLite file, for one runtime per pipeline.
    #[default]
    Sqlite,
    /// A PostgreSQL database that several runtimes share: they divide the pipeline's
    /// splits between them.
    Postgres,
}

/// `[checkpoint]`: where offsets are stored and how often.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `sqlite` (a local file, the default) or `postgres` (a database several
    /// runtimes running this pipeline file share: each split is leased to one of
    /// them, and the splits of one that dies are taken over).
    #[serde(default)]
    pub store: StoreKind,
    /// With `store = "postgres"`: the database, `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// (a reference such as `${env:PGPASSWORD}` keeps the password out of the file).
    pub url: Option<String>,
    /// With `store = "postgres"`: a runtime that has not renewed its lease on a split
    /// for this long (killed, cut off from the database) loses it, and another
    /// runtime takes the split over from its last checkpoint.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// With `store = "postgres"`: how many splits a runtime reads at once, each as a
    /// run of its own with its own sinks and `batch.max_in_flight`. Two (the default)
    /// keep the source reading while a split's sinks finish, as one run over every
    /// split does with the local store.
    #[serde(default = "default_splits_at_once")]
    pub splits_at_once: usize,
    /// SQLite file of the checkpoint store; default `.sluice/state.db` next to the
    /// pipeline file. With `store = "postgres"`: the local store whose offsets the
    /// first shared run takes in.
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
            store: StoreKind::Sqlite,
            url: None,
            lease_timeout: default_lease(),
            splits_at_once: default_splits_at_once(),
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

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("10 KB").unwrap(), 10_000);
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
