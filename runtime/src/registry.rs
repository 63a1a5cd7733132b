//! The built-in connectors, registered in one explicit list.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use connector_api::{DynSinkConnector, DynSourceConnector};

/// Where a connector comes from (for `sluice connectors`).
#[derive(Clone, Debug)]
pub enum Origin {
    /// Compiled into this binary.
    BuiltIn,
    /// Loaded from this plugin library.
    Plugin(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built-in"),
            Origin::Plugin(p) => write!(f, "plugin {}", p.display()),
        }
    }
}

/// The connectors this runtime knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    sources: Vec<(Arc<dyn DynSourceConnector>, Origin)>,
    sinks: Vec<(Arc<dyn DynSinkConnector>, Origin)>,
}

impl Registry {
    /// The built-in connectors. This is the one list: add a new built-in here.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        r.add_source(Arc::new(sluice_datagen::Datagen));
        r.add_source(Arc::new(sluice_file::File));
        r.add_sink(Arc::new(sluice_file::File));
        r.add_source(Arc::new(sluice_sqlite::Sqlite));
        r.add_sink(Arc::new(sluice_sqlite::Sqlite));
        r.add_source(Arc::new(sluice_postgres::Postgres));
        r.add_sink(Arc::new(sluice_postgres::Postgres));
        r.add_source(Arc::new(sluice_mysql::Mysql));
        r.add_sink(Arc::new(sluice_mysql::Mysql));
        r.add_source(Arc::new(sluice_s3::S3));
        r.add_sink(Arc::new(sluice_s3::S3));
        r.add_source(Arc::new(sluice_kafka::Kafka));
        r.add_sink(Arc::new(sluice_kafka::Kafka));
        r.add_source(Arc::new(sluice_nats::Nats));
        r.add_sink(Arc::new(sluice_nats::Nats));
        r.add_source(Arc::new(sluice_redis::Redis));
        r.add_sink(Arc::new(sluice_redis::Redis));
        r.add_source(Arc::new(sluice_rabbitmq::RabbitMq));
        r.add_sink(Arc::new(sluice_rabbitmq::RabbitMq));
        r.add_source(Arc::new(sluice_mqtt::Mqtt));
        r.add_sink(Arc::new(sluice_mqtt::Mqtt));
        r.add_sink(Arc::new(sluice_iceberg::Iceberg));
        r.add_sink(Arc::new(sluice_datagen::Blackhole));
        r
    }

    /// Registers a source connector as built in.
    pub(crate) fn add_source(&mut self, c: Arc<dyn DynSourceConnector>) {
        self.sources.push((c, Origin::BuiltIn));
    }

    /// Registers a sink connector as built in.
    pub(crate) fn add_sink(&mut self, c: Arc<dyn DynSinkConnector>) {
        self.sinks.push((c, Origin::BuiltIn));
    }

    /// Loads every plugin library in `dir`. Returns what was refused (a library that
    /// is not a plugin or speaks another ABI version, a connector whose name is taken);
    /// everything else is registered. A directory that cannot be read is an error.
    pub fn load_plugins(&mut self, dir: &Path) -> Result<Vec<crate::plugin::Refused>, String> {
        let mut refused = Vec::new();
        for path in crate::plugin::libraries_in(dir)? {
            match crate::plugin::load(&path) {
                Err(r) => refused.push(r),
                Ok(provided) => {
                    for p in provided {
                        let (name, kind) = match &p {
                            crate::plugin::Provided::Source(c) => (c.name().to_string(), "source"),
                            crate::plugin::Provided::Sink(c) => (c.name().to_string(), "sink"),
                        };
                        let taken = match &p {
                            crate::plugin::Provided::Source(_) => self
                                .sources
                                .iter()
                                .find(|(c, _)| c.name() == name)
                                .map(|(_, o)| o.clone()),
                            crate::plugin::Provided::Sink(_) => self
                                .sinks
                                .iter()
                                .find(|(c, _)| c.name() == name)
                                .map(|(_, o)| o.clone()),
                        };
                        if let Some(origin) = taken {
                            refused.push(crate::plugin::Refused {
                                path: path.clone(),
                                reason: format!("{kind} connector \"{name}\" clashes with the {origin} connector of that name"),
                            });
                            continue;
                        }
                        let origin = Origin::Plugin(path.clone());
                        match p {
                            crate::plugin::Provided::Source(c) => self.sources.push((c, origin)),
                            crate::plugin::Provided::Sink(c) => self.sinks.push((c, origin)),
                        }
                    }
                }
            }
        }
        Ok(refused)
    }

    /// The source connector called `name`.
    pub fn source(&self, name: &str) -> Option<Arc<dyn DynSourceConnector>> {
        self.sources
            .iter()
            .find(|(c, _)| c.name() == name)
            .map(|(c, _)| c.clone())
    }

    /// The sink connector called `name`.
    pub fn sink(&self, name: &str) -> Option<Arc<dyn DynSinkConnector>> {
        self.sinks
            .iter()
            .find(|(c, _)| c.name() == name)
            .map(|(c, _)| c.clone())
    }

    /// The source connector called `name`, or an error naming it (the engine's
    /// lookup: a loaded pipeline names only known connectors).
    pub fn source_named(&self, name: &str) -> connector_api::Result<Arc<dyn DynSourceConnector>> {
        self.source(name).ok_or_else(|| unknown(name))
    }

    /// The sink connector called `name`, or an error naming it.
    pub fn sink_named(&self, name: &str) -> connector_api::Result<Arc<dyn DynSinkConnector>> {
        self.sink(name).ok_or_else(|| unknown(name))
    }

    /// Names of the source (or sink) connectors, sorted.
    pub fn names(&self, sources: bool) -> Vec<String> {
        let mut v: Vec<String> = if sources {
            self.sources
                .iter()
                .map(|(c, _)| c.name().to_string())
                .collect()
        } else {
            self.sinks
                .iter()
                .map(|(c, _)| c.name().to_string())
                .collect()
        };
        v.sort();
        v
    }

    /// Every connector: name, kinds, description, origin.
    pub fn list(&self) -> Vec<(String, Vec<&'static str>, String, Origin)> {
        let mut names: Vec<String> = self.names(true);
        names.extend(self.names(false));
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let mut kinds = Vec::new();
                let mut desc = String::new();
                let mut origin = Origin::BuiltIn;
                if let Some((c, o)) = self.sources.iter().find(|(c, _)| c.name() == n) {
                    kinds.push("source");
                    desc = c.description().to_string();
                    origin = o.clone();
                }
                if let Some((c, o)) = self.sinks.iter().find(|(c, _)| c.name() == n) {
                    kinds.push("sink");
                    desc = match desc.is_empty() {
                        true => c.description().to_string(),
                        // both: each side says what it does
                        false => format!("source: {desc}; sink: {}", c.description()),
                    };
                    origin = o.clone();
                }
                (n, kinds, desc, origin)
            })
            .collect()
    }
}

fn unknown(connector: &str) -> connector_api::Error {
    connector_api::Error::config(format!("unknown connector \"{connector}\""))
}
