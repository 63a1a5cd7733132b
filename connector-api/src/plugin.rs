//! Connectors: the typed traits authors implement and the erased forms the runtime stores.
//!
//! An author implements [`SourceConnector`] and/or [`SinkConnector`] with a typed
//! `Config` (serde + schemars). Blanket impls turn them into [`DynSourceConnector`] and
//! [`DynSinkConnector`], which take the config as JSON: that is what the runtime's
//! registry holds, and what crosses a plugin boundary. Which kinds a connector provides
//! follows from which traits it implements.

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::config::{config_schema, parse_config};
use crate::error::Result;
use crate::sink::Sink;
use crate::source::{Source, SplitList};

/// A connector that reads: builds [`Source`]s from its typed config.
#[async_trait]
pub trait SourceConnector: Send + Sync + 'static {
    /// The name used in `connector = "..."`.
    const NAME: &'static str;
    /// One line for `sluice connectors`.
    const DESCRIPTION: &'static str;
    /// The source options. Doc comments on its fields are the user documentation.
    type Config: DeserializeOwned + JsonSchema + Send + Sync + 'static;

    /// Checks the config without any I/O (runs for the whole pipeline file before any
    /// connection opens). Name the key with [`crate::Error::with_field`].
    fn validate(&self, config: &Self::Config) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Builds an unopened source.
    fn create_source(&self, config: Self::Config) -> Result<Box<dyn Source>>;

    /// Checks connectivity and permissions (`sluice check`).
    async fn check(&self, config: &Self::Config) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// The schema the source would produce, if it can tell without reading everything
    /// (`sluice schema`).
    async fn discover(&self, config: &Self::Config) -> Result<Option<SchemaRef>> {
        let _ = config;
        Ok(None)
    }

    /// The splits a read of `config` covers now (the files a glob matches, the objects
    /// under a prefix), when the source can read any subset of them on its own
    /// ([`SourceContext::splits`](crate::SourceContext::splits)): several runtimes
    /// sharing a checkpoint store then divide them; the ids are those the source's
    /// offsets use. The default, None: the source cannot share its work, and one
    /// runtime reads it all. Not asked across the plugin boundary yet.
    async fn splits(&self, config: &Self::Config) -> Result<Option<SplitList>> {
        let _ = config;
        Ok(None)
    }

    /// The schema every record has, known from the config alone, without I/O: a
    /// declared schema the source enforces and adds no column to. The runtime runs the
    /// transforms on it at validation and asks each sink whether it
    /// [accepts](SinkConnector::accepts) the result. The default, None: only reading
    /// tells. Not asked across the plugin boundary yet.
    fn record_schema(&self, config: &Self::Config) -> Option<SchemaRef> {
        let _ = config;
        None
    }

    /// True when the records are changes a sink must apply rather than append: each
    /// carries [`columns::OP`](crate::columns::OP) (`c`, `u`, `d`, `r`, `t`), and a
    /// delete holds only its key. The runtime asks each sink whether it
    /// [applies changes](SinkConnector::accepts_changes) at validation. The default:
    /// plain records. Not asked across the plugin boundary yet.
    fn emits_changes(&self, config: &Self::Config) -> bool {
        let _ = config;
        false
    }
}

/// A connector that writes: builds [`Sink`]s from its typed config.
#[async_trait]
pub trait SinkConnector: Send + Sync + 'static {
    /// The name used in `connector = "..."`.
    const NAME: &'static str;
    /// One line for `sluice connectors`.
    const DESCRIPTION: &'static str;
    /// The sink options. Doc comments on its fields are the user documentation.
    type Config: DeserializeOwned + JsonSchema + Send + Sync + 'static;

    /// Checks the config without any I/O.
    fn validate(&self, config: &Self::Config) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Builds an unopened sink.
    fn create_sink(&self, config: Self::Config) -> Result<Box<dyn Sink>>;

    /// Checks connectivity and permissions (`sluice check`).
    async fn check(&self, config: &Self::Config) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Checks, without I/O, that records of `schema` can be written with `config`
    /// (e.g. a nested column into CSV); the runtime calls it at validation when it
    /// knows the records' schema (a source's [`SourceConnector::declared_schema`],
    /// after the transforms). An error names the column, and its field the option
    /// that is the way out. The default takes every schema. Not called across the
    /// plugin boundary yet: a plugin sink finds such records at its first write.
    fn accepts(&self, config: &Self::Config, schema: &arrow_schema::Schema) -> Result<()> {
        let _ = (config, schema);
        Ok(())
    }

    /// Where the sink writes, when two sinks of one pipeline writing there would
    /// replace each other's data or state: a directory, a bucket and prefix. The
    /// runtime refuses two sinks with the same destination at validation. The
    /// default, None: sinks of this connector may share one. Not asked across the
    /// plugin boundary yet.
    fn destination(&self, config: &Self::Config) -> Option<String> {
        let _ = config;
        None
    }

    /// Checks, without I/O, that the sink can take change records with `config` (the
    /// source [emits changes](SourceConnector::emits_changes)): a table sink must apply
    /// deletes, not insert them as rows. An error names the option that is the way out
    /// in its field. The default takes them, writing `_op` as a column, as a log.
    fn accepts_changes(&self, config: &Self::Config) -> Result<()> {
        let _ = config;
        Ok(())
    }
}

/// The object-safe form of [`SourceConnector`]; configs as JSON.
#[async_trait]
pub trait DynSourceConnector: Send + Sync {
    /// The connector name.
    fn name(&self) -> &str;
    /// One line of description.
    fn description(&self) -> &str;
    /// JSON Schema of the config.
    fn config_schema(&self) -> serde_json::Value;
    /// Parses and validates a config, without I/O.
    fn validate(&self, config: &serde_json::Value) -> Result<()>;
    /// Parses the config and builds an unopened source.
    fn create_source(&self, config: &serde_json::Value) -> Result<Box<dyn Source>>;
    /// Checks connectivity.
    async fn check(&self, config: &serde_json::Value) -> Result<()>;
    /// Discovers the schema.
    async fn discover(&self, config: &serde_json::Value) -> Result<Option<SchemaRef>>;
    /// The splits a read covers now ([`SourceConnector::splits`]); the default: the
    /// source cannot share its work.
    async fn splits(&self, config: &serde_json::Value) -> Result<Option<SplitList>> {
        let _ = config;
        Ok(None)
    }
    /// The schema every record has, from the config alone
    /// ([`SourceConnector::record_schema`]); the default: unknown.
    fn record_schema(&self, config: &serde_json::Value) -> Option<SchemaRef> {
        let _ = config;
        None
    }
    /// True when the records are changes ([`SourceConnector::emits_changes`]); the
    /// default: plain records.
    fn emits_changes(&self, config: &serde_json::Value) -> bool {
        let _ = config;
        false
    }
}

/// The object-safe form of [`SinkConnector`]; configs as JSON.
#[async_trait]
pub trait DynSinkConnector: Send + Sync {
    /// The connector name.
    fn name(&self) -> &str;
    /// One line of description.
    fn description(&self) -> &str;
    /// JSON Schema of the config.
    fn config_schema(&self) -> serde_json::Value;
    /// Parses and validates a config, without I/O.
    fn validate(&self, config: &serde_json::Value) -> Result<()>;
    /// Parses the config and builds an unopened sink.
    fn create_sink(&self, config: &serde_json::Value) -> Result<Box<dyn Sink>>;
    /// Checks connectivity.
    async fn check(&self, config: &serde_json::Value) -> Result<()>;
    /// Checks that records of `schema` can be written ([`SinkConnector::accepts`]);
    /// the default takes every schema.
    fn accepts(&self, config: &serde_json::Value, schema: &arrow_schema::Schema) -> Result<()> {
        let _ = (config, schema);
        Ok(())
    }
    /// Where the sink writes ([`SinkConnector::destination`]); the default: nowhere
    /// another sink must keep off.
    fn destination(&self, config: &serde_json::Value) -> Option<String> {
        let _ = config;
        None
    }
    /// Checks that change records can be taken ([`SinkConnector::accepts_changes`]);
    /// the default takes them.
    fn accepts_changes(&self, config: &serde_json::Value) -> Result<()> {
        let _ = config;
        Ok(())
    }
}

#[async_trait]
impl<T: SourceConnector> DynSourceConnector for T {
    fn name(&self) -> &str {
        T::NAME
    }
    fn description(&self) -> &str {
        T::DESCRIPTION
    }
    fn config_schema(&self) -> serde_json::Value {
        config_schema::<T::Config>()
    }
    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        let cfg: T::Config = parse_config(config)?;
        SourceConnector::validate(self, &cfg)
    }
    fn create_source(&self, config: &serde_json::Value) -> Result<Box<dyn Source>> {
        let cfg: T::Config = parse_config(config)?;
        SourceConnector::validate(self, &cfg)?;
        SourceConnector::create_source(self, cfg)
    }
    async fn check(&self, config: &serde_json::Value) -> Result<()> {
        let cfg: T::Config = parse_config(config)?;
        SourceConnector::check(self, &cfg).await
    }
    async fn discover(&self, config: &serde_json::Value) -> Result<Option<SchemaRef>> {
        let cfg: T::Config = parse_config(config)?;
        SourceConnector::discover(self, &cfg).await
    }
    async fn splits(&self, config: &serde_json::Value) -> Result<Option<SplitList>> {
        let cfg: T::Config = parse_config(config)?;
        SourceConnector::splits(self, &cfg).await
    }
    fn record_schema(&self, config: &serde_json::Value) -> Option<SchemaRef> {
        let cfg: T::Config = parse_config(config).ok()?;
        SourceConnector::record_schema(self, &cfg)
    }
    fn emits_changes(&self, config: &serde_json::Value) -> bool {
        parse_config::<T::Config>(config)
            .is_ok_and(|cfg| SourceConnector::emits_changes(self, &cfg))
    }
}

#[async_trait]
impl<T: SinkConnector> DynSinkConnector for T {
    fn name(&self) -> &str {
        T::NAME
    }
    fn description(&self) -> &str {
        T::DESCRIPTION
    }
    fn config_schema(&self) -> serde_json::Value {
        config_schema::<T::Config>()
    }
    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        let cfg: T::Config = parse_config(config)?;
        SinkConnector::validate(self, &cfg)
    }
    fn create_sink(&self, config: &serde_json::Value) -> Result<Box<dyn Sink>> {
        let cfg: T::Config = parse_config(config)?;
        SinkConnector::validate(self, &cfg)?;
        SinkConnector::create_sink(self, cfg)
    }
    async fn check(&self, config: &serde_json::Value) -> Result<()> {
        let cfg: T::Config = parse_config(config)?;
        SinkConnector::check(self, &cfg).await
    }
    fn accepts(&self, config: &serde_json::Value, schema: &arrow_schema::Schema) -> Result<()> {
        let cfg: T::Config = parse_config(config)?;
        SinkConnector::accepts(self, &cfg, schema)
    }
    fn destination(&self, config: &serde_json::Value) -> Option<String> {
        let cfg: T::Config = parse_config(config).ok()?;
        SinkConnector::destination(self, &cfg)
    }
    fn accepts_changes(&self, config: &serde_json::Value) -> Result<()> {
        let cfg: T::Config = parse_config(config)?;
        SinkConnector::accepts_changes(self, &cfg)
    }
}
