//! Committing a flush exactly once: the data files and, in the same snapshot's
//! summary, the pipeline's offsets.
//!
//! iceberg's `Transaction::commit` loads the table again before every attempt and
//! appends on top of whatever it finds. Our commits go through [`Guarded`], a catalog
//! whose `load_table` first checks the offsets the table holds under this sink's key:
//! the ones of this run's last commit, or the commit stops. The append then requires
//! the snapshot it was checked on, and the catalog's compare-and-set on the metadata
//! location makes check and commit one step: a commit under the same key landing in
//! between (a second run, or a killed run's commit arriving late) fails the swap, and
//! the next attempt's check finds it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use connector_api::{Error, ErrorKind, Offsets, Result};
use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent};

use crate::catalog::Lake;
use crate::error::lake_error;

/// What the table holds under a sink's key.
#[derive(Debug, PartialEq)]
pub enum Stored {
    /// The offsets of the latest snapshot of the main branch that has the key, and
    /// the token of the flush that committed it (`None` from the table property, read
    /// when that snapshot is expired).
    Offsets(Offsets, Option<String>),
    /// No snapshot back to the first has the key.
    Nothing,
    /// The walk back hit a snapshot that is gone (expired) before finding the key,
    /// and the table has no property with it.
    Unknown,
}

impl Stored {
    /// The offsets, if found.
    pub fn offsets(&self) -> Option<&Offsets> {
        match self {
            Stored::Offsets(o, _) => Some(o),
            _ => None,
        }
    }

    /// The token of the flush that committed them, if found.
    fn token(&self) -> Option<&str> {
        match self {
            Stored::Offsets(_, t) => t.as_deref(),
            _ => None,
        }
    }
}

/// The summary key of the token of the flush a commit holds, beside the offsets.
fn token_key(key: &str) -> String {
    format!("{key}.token")
}

fn parse(value: &str, key: &str, whence: &str) -> Result<Offsets> {
    serde_json::from_str(value).map_err(|e| {
        Error::internal(format!(
            "{whence} holds unreadable offsets under \"{key}\": {e}"
        ))
    })
}

/// The offsets under `key` in the table's main branch; past expired snapshots, those
/// the table property of the same key holds (set by the same commits).
pub fn stored_offsets(table: &Table, key: &str) -> Result<Stored> {
    let md = table.metadata();
    let mut at = md.current_snapshot().cloned();
    while let Some(snapshot) = at {
        let summary = &snapshot.summary().additional_properties;
        if let Some(value) = summary.get(key) {
            let whence = format!("snapshot {}", snapshot.snapshot_id());
            let token = summary.get(&token_key(key)).cloned();
            return Ok(Stored::Offsets(parse(value, key, &whence)?, token));
        }
        at = match snapshot.parent_snapshot_id() {
            None => None,
            Some(id) => match md.snapshot_by_id(id) {
                Some(parent) => Some(parent.clone()),
                None => {
                    return Ok(match md.properties().get(key) {
                        Some(value) => {
                            Stored::Offsets(parse(value, key, "the table property")?, None)
                        }
                        None => Stored::Unknown,
                    })
                }
            },
        };
    }
    Ok(Stored::Nothing)
}

/// What a guarded load found.
#[derive(Debug)]
enum Found {
    /// The offsets being committed are there already: an earlier attempt landed.
    Landed,
    /// Another run committed under the key.
    Conflict(String),
}

/// The catalog for one commit: loads check the key first (module docs).
#[derive(Debug)]
struct Guarded<'a> {
    inner: &'a dyn Catalog,
    key: &'a str,
    /// The offsets of this run's last commit (`None`: it has made none, and the
    /// table held none when it opened).
    committed: Option<&'a Offsets>,
    /// The token of the flush being committed, the same in every attempt of it.
    token: &'a str,
    found: Mutex<Option<Found>>,
}

impl Guarded<'_> {
    fn check(&self, table: &Table) -> iceberg::Result<()> {
        let stored = stored_offsets(table, self.key).map_err(|e| {
            iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.message().to_string())
        })?;
        let found = if stored.token() == Some(self.token) {
            Found::Landed
        } else if stored.offsets() == self.committed {
            return Ok(());
        } else if stored == Stored::Unknown {
            Found::Conflict(
                "the snapshot of this run's last commit is gone (expired?), so the offsets cannot be checked"
                    .into(),
            )
        } else {
            Found::Conflict(format!(
                "another run of this pipeline committed to it (snapshot summary key \"{}\") since this run's last \
                 commit; stopping so nothing is written twice",
                self.key
            ))
        };
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
        Err(
            iceberg::Error::new(iceberg::ErrorKind::PreconditionFailed, "offsets checked")
                .with_retryable(false),
        )
    }
}

#[async_trait]
impl Catalog for Guarded<'_> {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        let t = self.inner.load_table(table).await?;
        self.check(&t)?;
        Ok(t)
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.inner.update_table(commit).await
    }
}

/// Appends `files` to the table with `flushing` under `key` in the snapshot summary
/// (and in the table property of that key, which outlives expired snapshots), once:
/// `committed` is what this run's last commit stored, `token` names this flush in
/// every attempt of it (an attempt that landed is recognised by it, not by its
/// offsets, which a source may repeat). Returns the table after.
pub async fn commit(
    lake: &Lake,
    base: &Table,
    files: Vec<DataFile>,
    key: &str,
    committed: Option<&Offsets>,
    flushing: &Offsets,
    token: &str,
) -> Result<Table> {
    let what = format!("commit to {}", lake.name());
    let value =
        serde_json::to_string(flushing).map_err(|e| Error::internal(format!("{what}: {e}")))?;
    let guarded = Guarded {
        inner: lake.catalog(),
        key,
        committed,
        token,
        found: Mutex::new(None),
    };
    let tx = Transaction::new(base);
    let tx = tx
        .update_table_properties()
        .set(key.to_string(), value.clone())
        .apply(tx)
        .map_err(|e| lake_error(&what, e))?;
    let summary = HashMap::from([
        (key.to_string(), value),
        (token_key(key), token.to_string()),
    ]);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files(files)
        .set_snapshot_properties(summary)
        .apply(tx)
        .map_err(|e| lake_error(&what, e))?;
    let result = tx.commit(&guarded).await;
    match (
        result,
        guarded
            .found
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
    ) {
        (_, Some(Found::Landed)) => {
            tracing::info!(table = %lake.name(), "the last commit had landed; not repeated");
        }
        (_, Some(Found::Conflict(why))) => {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("table {}: {why}", lake.name()),
            ));
        }
        (Err(e), None) => return Err(lake_error(&what, e)),
        (Ok(_), None) => {}
    }
    // the SQL catalog does not report a failed database commit: read the offsets back
    let after = lake
        .load()
        .await?
        .ok_or_else(|| Error::not_found(format!("{what}: the table is gone")))?;
    match stored_offsets(&after, key)? {
        s if s.token() == Some(token) => Ok(after),
        _ => Err(Error::transient(format!(
            "{what}: the catalog answered but the table does not hold the commit"
        ))),
    }
}
