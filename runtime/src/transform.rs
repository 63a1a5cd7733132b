//! Transforms: vectorised on Arrow, applied in order between source and sinks.
//!
//! ```toml
//! [[transforms]]
//! type = "rename"
//! fields = { amount = "amount_eur" }
//!
//! [[transforms]]
//! type = "sql"
//! query = "SELECT id, amount * 1.19 AS gross FROM input WHERE status <> 'cancelled'"
//! ```
//!
//! The built-in transforms are here; `sql` runs on DataFusion (`sluice-sql`), in the
//! [`chain::Chain`] of a run, which also keeps each query's plan.

pub(crate) mod chain;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, Scalar, StringArray};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use connector_api::{parse_type, Error, Result};
use serde::Deserialize;

/// Comparison of a `filter` transform.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// equal
    Eq,
    /// not equal
    Ne,
    /// greater than
    Gt,
    /// greater or equal
    Ge,
    /// less than
    Lt,
    /// less or equal
    Le,
    /// the field is null
    IsNull,
    /// the field is not null
    NotNull,
}

/// One transform of `[[transforms]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    /// Keep only these fields, in this order.
    Select {
        /// Field names.
        fields: Vec<String>,
    },
    /// Remove these fields.
    Drop {
        /// Field names.
        fields: Vec<String>,
    },
    /// Rename fields: `{ old = "new" }`.
    Rename {
        /// Old name to new name.
        fields: BTreeMap<String, String>,
    },
    /// Convert fields to types: `{ amount = "decimal(12,2)" }`. A value that does not
    /// convert is an error naming the field.
    Cast {
        /// Field name to type.
        fields: BTreeMap<String, String>,
    },
    /// Keep rows where `field OP value` holds.
    Filter {
        /// Field compared.
        field: String,
        /// Comparison.
        op: Op,
        /// Value compared with (converted to the field's type); not used by is_null/not_null.
        value: Option<serde_json::Value>,
    },
    /// Replace non-null values of string fields with a fixed text.
    Mask {
        /// Field names.
        fields: Vec<String>,
        /// The replacement.
        #[serde(default = "stars")]
        with: String,
    },
    /// Add a constant string field.
    AddField {
        /// New field name.
        name: String,
        /// Its value.
        value: String,
    },
    /// One SQL `SELECT ... FROM input` over each batch (DataFusion's dialect and
    /// functions, JSON functions such as `json_get_str`, `unnest`): computed columns,
    /// CASE, casts, regular expressions, WHERE. Per record only: aggregates, window
    /// functions, joins, ORDER BY, LIMIT and DISTINCT are refused. Unquoted names are
    /// lower case (write `"camelCase"` in double quotes).
    Sql {
        /// The query.
        query: String,
        /// A name for messages and dead letters (default `transforms[i]`).
        name: Option<String>,
    },
}

/// Why a transform cannot take records of a schema.
#[derive(Debug)]
pub enum Unfit {
    /// A query that does not plan, located in its text.
    Sql(sluice_sql::SqlError),
    /// A built-in transform's error (a field that is not there, a cast that fails).
    Other(Error),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Sql(e) => e.fmt(f),
            Unfit::Other(e) => e.fmt(f),
        }
    }
}

/// Where a pipeline's records stop fitting, from the source's schema on.
#[derive(Debug)]
pub enum Misfit {
    /// Transform `index` cannot take records of schema `before`.
    Transform {
        /// Its place in `[[transforms]]`.
        index: usize,
        /// The records' schema as they reach it.
        before: SchemaRef,
        /// Why.
        unfit: Unfit,
    },
    /// The `where` of sink `index` does not plan on the records reaching the sinks.
    Route {
        /// The sink's place among the pipeline's sinks.
        index: usize,
        /// The records' schema as they reach the sinks.
        out: SchemaRef,
        /// Why.
        error: sluice_sql::SqlError,
    },
}

/// The schema of the records after each of `transforms`, from records of `schema`
/// (queries planned, built-in transforms run on no rows), and each sink's `where` of
/// `routes` planned on the last; the first that does not fit stops it.
pub fn plan_downstream(
    schema: SchemaRef,
    transforms: &[TransformSpec],
    routes: &[Option<&str>],
) -> std::result::Result<Vec<SchemaRef>, Misfit> {
    let mut out = Vec::with_capacity(transforms.len());
    let mut batch = RecordBatch::new_empty(schema);
    for (index, t) in transforms.iter().enumerate() {
        let before = batch.schema();
        let misfit = |unfit| Misfit::Transform {
            index,
            before: before.clone(),
            unfit,
        };
        batch = match t {
            TransformSpec::Sql { query, .. } => sluice_sql::Query::parse(query)
                .and_then(|q| q.prepare(before.clone(), 1))
                .map(|p| RecordBatch::new_empty(p.output_schema().clone()))
                .map_err(|e| misfit(Unfit::Sql(e)))?,
            other => other.apply(batch).map_err(|e| misfit(Unfit::Other(e)))?,
        };
        out.push(batch.schema());
    }
    let last = batch.schema();
    for (index, route) in routes.iter().enumerate() {
        if let Some(predicate) = route {
            sluice_sql::Query::filter(predicate)
                .and_then(|q| q.prepare(last.clone(), 1))
                .map_err(|error| Misfit::Route {
                    index,
                    out: last.clone(),
                    error,
                })?;
        }
    }
    Ok(out)
}

/// How messages and dead letters name the SQL transform at `i`.
pub(crate) fn sql_label(i: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("transforms[{i}] (\"{n}\")"),
        None => format!("transforms[{i}]"),
    }
}

fn stars() -> String {
    "****".into()
}

impl TransformSpec {
    /// Pure checks (types parse, filter has a value); a query's syntax is checked
    /// where its error can be placed in the file (`config::parse`).
    pub fn validate(&self) -> Result<()> {
        match self {
            TransformSpec::Cast { fields } => {
                for (f, t) in fields {
                    parse_type(t).map_err(|e| e.context(format!("field \"{f}\"")))?;
                }
            }
            TransformSpec::Filter {
                op, value: None, ..
            } if !matches!(op, Op::IsNull | Op::NotNull) => {
                return Err(Error::config("filter needs a `value` for this op"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether records hold field `name` after this transform, given whether they
    /// held it before (a select or drop removes it, a rename or `add_field` may make
    /// it).
    pub fn keeps(&self, name: &str, before: bool) -> bool {
        match self {
            TransformSpec::Select { fields } => before && fields.iter().any(|f| f == name),
            TransformSpec::Drop { fields } => before && !fields.iter().any(|f| f == name),
            TransformSpec::Rename { fields } => {
                fields.values().any(|to| to == name) || (before && !fields.contains_key(name))
            }
            TransformSpec::AddField { name: added, .. } => before || added == name,
            // what a query outputs is known when it is planned: here, whether it may
            TransformSpec::Sql { query, .. } => {
                sluice_sql::Query::parse(query).map_or(before, |q| before && q.may_output(name))
            }
            _ => before,
        }
    }

    /// Applies a built-in transform to a batch (`sql` runs in a [`chain::Chain`]).
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let index = |name: &str| {
            schema.index_of(name).map_err(|_| {
                Error::schema(format!("transform: field \"{name}\" is not in the batch"))
            })
        };
        match self {
            TransformSpec::Select { fields } => {
                let idx = fields
                    .iter()
                    .map(|f| index(f))
                    .collect::<Result<Vec<_>>>()?;
                Ok(batch.project(&idx)?)
            }
            TransformSpec::Drop { fields } => {
                let idx: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| !fields.contains(schema.field(i).name()))
                    .collect();
                Ok(batch.project(&idx)?)
            }
            TransformSpec::Rename { fields } => {
                let new: Vec<Field> = schema
                    .fields()
                    .iter()
                    .map(|f| match fields.get(f.name()) {
                        Some(n) => f.as_ref().clone().with_name(n),
                        None => f.as_ref().clone(),
                    })
                    .collect();
                Ok(RecordBatch::try_new(
                    Arc::new(Schema::new(new)),
                    batch.columns().to_vec(),
                )?)
            }
            TransformSpec::Cast { fields } => {
                let mut cols = batch.columns().to_vec();
                let mut new: Vec<Field> =
                    schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                let opts = CastOptions {
                    safe: false,
                    ..Default::default()
                };
                for (name, t) in fields {
                    let i = index(name)?;
                    let dt = parse_type(t)?;
                    cols[i] = cast_with_options(&cols[i], &dt, &opts).map_err(|e| {
                        Error::data(format!("cast of field \"{name}\" to {t}")).with_source(e)
                    })?;
                    new[i] = new[i].clone().with_data_type(dt);
                }
                Ok(RecordBatch::try_new(Arc::new(Schema::new(new)), cols)?)
            }
            TransformSpec::Filter { field, op, value } => {
                let col = batch.column(index(field)?).clone();
                let mask = compare(&col, *op, value.as_ref(), field)?;
                Ok(arrow_select::filter::filter_record_batch(&batch, &mask)?)
            }
            TransformSpec::Mask { fields, with } => {
                let mut cols = batch.columns().to_vec();
                for name in fields {
                    let i = index(name)?;
                    let c = &cols[i];
                    if !matches!(c.data_type(), DataType::Utf8) {
                        return Err(Error::schema(format!(
                            "mask: field \"{name}\" is {}, not string",
                            c.data_type()
                        )));
                    }
                    let masked: StringArray = (0..c.len())
                        .map(|r| {
                            if c.is_null(r) {
                                None
                            } else {
                                Some(with.as_str())
                            }
                        })
                        .collect();
                    cols[i] = Arc::new(masked);
                }
                Ok(RecordBatch::try_new(schema.clone(), cols)?)
            }
            TransformSpec::AddField { name, value } => {
                let mut fields: Vec<Field> =
                    schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new(name, DataType::Utf8, false));
                let mut cols = batch.columns().to_vec();
                cols.push(Arc::new(StringArray::from(vec![
                    value.as_str();
                    batch.num_rows()
                ])));
                Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
            }
            TransformSpec::Sql { .. } => Err(Error::internal(
                "a sql transform runs in the run's chain, which keeps its plan",
            )),
        }
    }
}

fn compare(
    col: &ArrayRef,
    op: Op,
    value: Option<&serde_json::Value>,
    field: &str,
) -> Result<BooleanArray> {
    use arrow_ord::cmp;
    if op == Op::IsNull {
        return Ok(arrow_arith_is_null(col, true));
    }
    if op == Op::NotNull {
        return Ok(arrow_arith_is_null(col, false));
    }
    let text = match value {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => return Err(Error::config("filter needs a value")),
    };
    let lit: ArrayRef = Arc::new(StringArray::from(vec![text.as_str()]));
    let lit = if col.data_type() == &DataType::Utf8 {
        lit
    } else {
        let opts = CastOptions {
            safe: false,
            ..Default::default()
        };
        cast_with_options(&lit, col.data_type(), &opts).map_err(|e| {
            Error::config(format!(
                "filter value \"{text}\" is not a {} like field \"{field}\"",
                col.data_type()
            ))
            .with_source(e)
        })?
    };
    let scalar = Scalar::new(lit);
    let out = match op {
        Op::Eq => cmp::eq(col, &scalar),
        Op::Ne => cmp::neq(col, &scalar),
        Op::Gt => cmp::gt(col, &scalar),
        Op::Ge => cmp::gt_eq(col, &scalar),
        Op::Lt => cmp::lt(col, &scalar),
        Op::Le => cmp::lt_eq(col, &scalar),
        Op::IsNull | Op::NotNull => unreachable!("handled above"),
    }?;
    // a null comparison result does not select the row (arrow's filter semantics)
    Ok(out)
}

fn arrow_arith_is_null(col: &ArrayRef, want_null: bool) -> BooleanArray {
    (0..col.len())
        .map(|i| Some(col.is_null(i) == want_null))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])) as ArrayRef,
            ),
            (
                "email",
                Arc::new(StringArray::from(vec![Some("a@x"), None, Some("c@x")])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn filter_keeps_matching_rows_and_drops_nulls() {
        let t = TransformSpec::Filter {
            field: "id".into(),
            op: Op::Ge,
            value: Some(serde_json::json!(2)),
        };
        assert_eq!(t.apply(batch()).unwrap().num_rows(), 1);
    }

    #[test]
    fn rename_cast_mask_select() {
        let b = TransformSpec::Rename {
            fields: [("id".to_string(), "key".to_string())].into(),
        }
        .apply(batch())
        .unwrap();
        assert_eq!(b.schema().field(0).name(), "key");
        let b = TransformSpec::Cast {
            fields: [("key".to_string(), "string".to_string())].into(),
        }
        .apply(b)
        .unwrap();
        assert_eq!(b.schema().field(0).data_type(), &DataType::Utf8);
        let b = TransformSpec::Mask {
            fields: vec!["email".into()],
            with: "x".into(),
        }
        .apply(b)
        .unwrap();
        assert_eq!(b.column(1).null_count(), 1);
        let b = TransformSpec::Select {
            fields: vec!["email".into()],
        }
        .apply(b)
        .unwrap();
        assert_eq!(b.num_columns(), 1);
    }
}
