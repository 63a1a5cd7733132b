//! SQL transforms on Arrow record batches, on DataFusion.
//!
//! A query is one `SELECT ... FROM input`: [`Query::parse`] checks its syntax with no
//! schema at hand, [`Query::prepare`] plans and optimises it once against the schema of
//! the batches it will see, and [`Prepared::run`] pushes each batch through that
//! physical plan: no parsing, planning or copying per batch. The table `input` is the
//! batch itself, fed to the plan's leaf (`feed`).
//!
//! Only per-record queries are taken: projections, filters, scalar functions, CASE,
//! casts and `unnest`. Whatever needs more than one batch to be right (aggregates,
//! window functions, joins, ORDER BY, LIMIT, DISTINCT, set operations, subqueries) is
//! refused at planning with the place it is written, because run batch by batch it
//! would give a wrong answer rather than an error.
//!
//! A row that makes the query fail (a cast of `'abc'` to int, a division by zero) does
//! not fail its batch: [`Prepared::run`] splits the batch until it has the rows that
//! fail alone, names the output column whose expression fails, and returns the rest.

mod error;
mod feed;
mod functions;
mod plan;
mod run;

pub use error::SqlError;
pub use plan::{Prepared, Query};
pub use run::{BadRow, Outcome};

#[cfg(test)]
mod tests;
