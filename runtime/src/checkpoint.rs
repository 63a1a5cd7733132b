//! Checkpoint stores: where the offsets every sink has flushed are kept.
//!
//! - [`CheckpointStore`] (`local.rs`): an embedded SQLite file per pipeline
//!   directory, the default, for one runtime per pipeline.
//! - [`SharedStore`] (`shared.rs`): a PostgreSQL database that several runtimes share.
//!   It keeps each split's offsets apart, leases each split to one runtime at a time
//!   and fences a runtime whose lease was taken over.
//!
//! A run writes through a [`Store`]: the local file under the pipeline's name, or one
//! leased split of the shared store.

mod local;
mod shared;

use connector_api::{Offsets, Result};

pub use self::local::{is_corrupt, CheckpointStore};
pub use self::shared::{unshareable, Claim, SharedStore, SplitRow};

/// Where one run stores its checkpoints.
#[derive(Clone)]
pub enum Store {
    /// The local file, under the pipeline's name.
    Local(CheckpointStore),
    /// One split of the shared store, while this runtime's lease on it holds.
    Split(SharedStore, Claim),
}

impl Store {
    /// The stored offsets of `pipeline` (of the split, for a split).
    pub async fn load(&self, pipeline: &str) -> Result<Option<Offsets>> {
        match self {
            Store::Local(store) => store.load(pipeline).await,
            Store::Split(shared, claim) => shared.load(claim).await,
        }
    }

    /// Stores the offsets of `pipeline`, durably; for a split, only while the lease
    /// is this runtime's (else a [`connector_api::ErrorKind::Conflict`]).
    pub async fn store(&self, pipeline: &str, offsets: &Offsets) -> Result<()> {
        match self {
            Store::Local(store) => store.store(pipeline, offsets).await,
            Store::Split(shared, claim) => shared.store(claim, offsets).await,
        }
    }
}
