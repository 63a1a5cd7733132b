//! Schema drift: what a sink does when a batch does not have the sink's schema.
//!
//! After dlt's schema contracts, each sink section declares a [`DriftPolicy`]; the
//! runtime makes every batch fit the sink's schema under it before the sink sees it,
//! so every sink gets the same rules.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to do with columns a sink has not seen before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftPolicy {
    /// Add the new columns, nullable (the sink adds a table column or rolls its file).
    #[default]
    Evolve,
    /// Stop the pipeline with an error that names the new column.
    Freeze,
    /// Drop every row that has a value in a new column; keep the others.
    DiscardRow,
    /// Drop the new columns' values; keep the rows.
    DiscardValue,
}
