//! Text values cast to declared types exactly: a value that is not of its column's
//! type, or would lose digits in it, makes its row fail with the reason, never a
//! changed value.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::SchemaRef;
use connector_api::Result;

/// What [`cast_text`] made.
pub struct CastText {
    /// The columns in the declared types (a row that failed holds a null).
    pub columns: Vec<ArrayRef>,
    /// For each row, why it failed (the first column that did), if it did.
    pub failed: Vec<Option<String>>,
}

/// The text columns `text` (Utf8, one per field of `schema`) cast to `schema`'s types.
/// A null stays null; with `empty_is_null`, so does an empty text.
pub fn cast_text(text: &RecordBatch, schema: &SchemaRef, empty_is_null: bool) -> Result<CastText> {
    let n = text.num_rows();
    let safe = CastOptions::default();
    let mut failed: Vec<Option<String>> = vec![None; n];
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let col = text.column(i);
        if field.data_type().is_nested() {
            // arrow would wrap the text in a one-item list: a changed value
            return Err(connector_api::Error::schema(format!(
                "column \"{}\" is {}: text is not read into a nested type",
                field.name(),
                connector_api::type_name(field.data_type())
            )));
        }
        let cast = cast_with_options(col, field.data_type(), &safe)?;
        let strings = col.as_string_opt::<i32>();
        for (r, why) in failed.iter_mut().enumerate() {
            let value = strings.filter(|s| s.is_valid(r)).map(|s| s.value(r));
            if why.is_some() {
                continue;
            }
            let empty = value.is_none_or(|v| v.is_empty() && empty_is_null);
            match value {
                Some(v) if !cast.is_null(r) => {
                    if let Some(lost) = crate::scalars::loses_digits(v, field.data_type()) {
                        *why = Some(format!("column \"{}\": {lost}", field.name()));
                    }
                }
                Some(v) if !empty => {
                    *why = Some(format!(
                        "column \"{}\": \"{v}\" is not a valid {}",
                        field.name(),
                        connector_api::type_name(field.data_type())
                    ))
                }
                _ => {}
            }
        }
        columns.push(cast);
    }
    Ok(CastText { columns, failed })
}
