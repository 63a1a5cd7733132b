//! `sluice schema` and `sluice check` past the source: the schema after each transform,
//! and each routed sink's condition planned on what reaches the sinks.

use arrow_schema::SchemaRef;

use crate::config::Pipeline;
use crate::transform::{self, TransformSpec};

/// The schemas after each transform of `p`, from records of `schema`, and each routed
/// sink's predicate planned on the last; the error names the transform or the sink.
pub(super) fn plan_downstream(p: &Pipeline, schema: SchemaRef) -> Result<Vec<SchemaRef>, String> {
    let routes: Vec<Option<&str>> = p.sinks.iter().map(|s| s.route.as_deref()).collect();
    transform::plan_downstream(schema, &p.transforms, &routes).map_err(|m| match m {
        transform::Misfit::Transform { index, unfit, .. } => {
            let name = match &p.transforms[index] {
                TransformSpec::Sql { name, .. } => transform::sql_label(index, name.as_deref()),
                _ => format!("transforms[{index}]"),
            };
            format!("{name}: {unfit}")
        }
        transform::Misfit::Route { index, error, .. } => {
            format!("[{}] where: {error}", p.sinks[index].path)
        }
    })
}

/// Prints, as comments below the source's schema, the schema after each transform and
/// the rows each routed sink receives.
pub(super) fn schema_downstream(p: &Pipeline, schema: SchemaRef) -> Result<(), String> {
    let after = plan_downstream(p, schema)?;
    for (i, (t, s)) in p.transforms.iter().zip(&after).enumerate() {
        let name = match t {
            TransformSpec::Sql { name: Some(n), .. } => format!(" (sql \"{n}\")"),
            TransformSpec::Sql { .. } => " (sql)".to_string(),
            _ => String::new(),
        };
        println!("\n# after transforms[{i}]{name}:");
        print_fields("# ", s);
    }
    for sink in &p.sinks {
        match &sink.route {
            Some(predicate) => println!("\n# [{}] receives the rows where {predicate}", sink.path),
            None if after.is_empty() => {}
            None => println!("\n# [{}] receives every row", sink.path),
        }
    }
    Ok(())
}

pub(super) fn print_fields(prefix: &str, schema: &SchemaRef) {
    for s in connector_api::types::specs_from_schema(schema) {
        println!(
            "{prefix}  {{ name = {:?}, type = {:?}, nullable = {} }},",
            s.name, s.data_type, s.nullable
        );
    }
}
