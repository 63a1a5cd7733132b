//! The built-in connectors, registered in one explicit list.

use std::sync::Arc;

use connector_api::{DynSinkConnector, DynSourceConnector};

/// Where a connector comes from (for `sluice connectors`).
#[derive(Clone, Debug)]
pub enum Origin {
    /// Compiled into this binary.
    BuiltIn,
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
        r.add_sink(Arc::new(sluice_datagen::Blackhole));
        r
    }

    fn add_source(&mut self, c: Arc<dyn DynSourceConnector>) {
        self.sources.push((c, Origin::BuiltIn));
    }

    fn add_sink(&mut self, c: Arc<dyn DynSinkConnector>) {
        self.sinks.push((c, Origin::BuiltIn));
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
                    if desc.is_empty() {
                        desc = c.description().to_string();
                    }
                    origin = o.clone();
                }
                (n, kinds, desc, origin)
            })
            .collect()
    }
}
