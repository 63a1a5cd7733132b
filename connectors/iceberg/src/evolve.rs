//! Schema evolution of the table under `drift = "evolve"`: new optional columns, and
//! the type promotions the Iceberg spec allows (int -> long, float -> double, a
//! decimal's precision). Written as a new metadata file and swapped into the catalog
//! with the same compare-and-set on `iceberg_tables` the catalog's own commits use
//! (iceberg-rust 0.9 has no schema-update action a caller can commit).

use std::sync::Arc;

use arrow_schema::Schema as ArrowSchema;
use connector_api::{Error, Result};
use iceberg::spec::{NestedField, NestedFieldRef, PrimitiveType, Schema, Type};

use crate::types;

/// The table schema that batches of `batch` fit, or `None` when `current` already
/// does: new columns of `batch` added (optional, numbered after `last_column_id`), and
/// columns whose batch type is a wider one Iceberg can promote to, promoted.
pub fn plan(current: &Schema, last_column_id: i32, batch: &ArrowSchema) -> Result<Option<Schema>> {
    let mut fields: Vec<NestedFieldRef> = Vec::with_capacity(batch.fields().len());
    let mut changed = false;
    for field in current.as_struct().fields() {
        let wanted = match batch.field_with_name(&field.name) {
            Ok(b) if b.data_type() != &arrow_schema::DataType::Null => {
                iceberg_type(b.name(), b.data_type())?
            }
            _ => None,
        };
        match (&*field.field_type, wanted) {
            (Type::Primitive(have), Some(Type::Primitive(want))) if have != &want => {
                if promotes(have, &want) {
                    let mut wider = field.as_ref().clone();
                    wider.field_type = Box::new(Type::Primitive(want));
                    fields.push(Arc::new(wider));
                    changed = true;
                    continue;
                }
                if !promotes(&want, have) {
                    return Err(Error::schema(format!(
                        "column \"{}\" is {have} in the table but {want} in the batch, \
                         which Iceberg cannot promote to (int -> long, float -> double, decimal precision)",
                        field.name
                    )));
                }
            }
            _ => {}
        }
        fields.push(field.clone());
    }
    let mut next = last_column_id;
    for b in batch.fields() {
        if current.field_by_name(b.name()).is_some()
            || connector_api::columns::is_reserved(b.name())
            || b.data_type() == &arrow_schema::DataType::Null
        {
            continue;
        }
        match iceberg_type(b.name(), b.data_type())? {
            Some(t @ Type::Primitive(_)) => {
                next += 1;
                fields.push(Arc::new(NestedField::optional(next, b.name(), t)));
                changed = true;
            }
            _ => {
                return Err(Error::schema(format!(
                    "column \"{}\" ({}) is new: adding a nested column to an Iceberg table is not supported yet",
                    b.name(),
                    connector_api::type_name(b.data_type())
                )))
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    Schema::builder()
        .with_schema_id(current.schema_id())
        .with_fields(fields)
        .with_identifier_field_ids(current.identifier_field_ids())
        .build()
        .map(Some)
        .map_err(|e| Error::schema(format!("the evolved schema is not valid: {e}")))
}

/// The Iceberg type of a batch column, `None` for nested types (compared by the cast).
fn iceberg_type(column: &str, dt: &arrow_schema::DataType) -> Result<Option<Type>> {
    let stored = types::stored_type(column, dt)?;
    if stored.is_nested() {
        return Ok(None);
    }
    iceberg::arrow::arrow_type_to_type(&stored)
        .map(Some)
        .map_err(|e| Error::schema(format!("column \"{column}\": {e}")))
}

/// `from` may be promoted to `to` (the spec's allowed type promotions).
fn promotes(from: &PrimitiveType, to: &PrimitiveType) -> bool {
    use PrimitiveType::*;
    match (from, to) {
        (Int, Long) | (Float, Double) => true,
        (
            Decimal {
                precision: p1,
                scale: s1,
            },
            Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 > p1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};

    fn table() -> Schema {
        Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "id",
                    Type::Primitive(PrimitiveType::Int),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "name",
                    Type::Primitive(PrimitiveType::String),
                )),
            ])
            .build()
            .unwrap()
    }

    #[test]
    fn a_new_column_is_added_optional_and_a_wider_int_promotes() {
        let batch = ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]);
        let s = plan(&table(), 2, &batch).unwrap().unwrap();
        assert_eq!(
            *s.field_by_id(1).unwrap().field_type,
            Type::Primitive(PrimitiveType::Long)
        );
        let score = s.field_by_name("score").unwrap();
        assert_eq!(score.id, 3);
        assert!(!score.required);
    }

    #[test]
    fn the_same_or_a_narrower_type_changes_nothing_and_a_string_for_an_int_is_an_error() {
        let same = ArrowSchema::new(vec![Field::new("id", DataType::Int16, false)]);
        assert!(plan(&table(), 2, &same).unwrap().is_none());
        let bad = ArrowSchema::new(vec![Field::new("id", DataType::Utf8, false)]);
        let e = plan(&table(), 2, &bad).unwrap_err();
        assert!(
            e.message()
                .contains("column \"id\" is int in the table but string"),
            "{}",
            e.message()
        );
    }
}
