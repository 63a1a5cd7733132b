//! `sluice describe`: a connector's options from its JSON Schema (doc comments,
//! types, defaults).

use std::fmt::Write;

use serde_json::Value;

use crate::registry::Registry;

/// The description of `name`, or None when no connector has that name.
pub fn describe(registry: &Registry, name: &str) -> Option<String> {
    let source = registry.source(name);
    let sink = registry.sink(name);
    if source.is_none() && sink.is_none() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(out, "{name}");
    if let Some(s) = &source {
        let _ = writeln!(out, "\nsource: {}\n", s.description());
        options(&s.config_schema(), &mut out);
    }
    if let Some(s) = &sink {
        let _ = writeln!(out, "\nsink: {}\n", s.description());
        options(&s.config_schema(), &mut out);
        let _ = writeln!(
            out,
            "  drift  (string, default \"evolve\")\n      New columns: evolve, freeze, discard_row or discard_value (runtime option of every sink)."
        );
        let _ = writeln!(
            out,
            "  where  (string)\n      An SQL condition on the records' columns: the sink receives only the rows it keeps (runtime option of every sink; see `sluice describe transforms`)."
        );
    }
    Some(out)
}

/// `sluice describe transforms`: the transforms of `[[transforms]]` and a sink's
/// `where`, with examples.
pub const TRANSFORMS: &str = r#"transforms

[[transforms]] run in order on every batch, between the source and the sinks.

  select     fields = ["id", "amount"]            keep these fields, in this order
  drop       fields = ["secret"]                  remove these fields
  rename     fields = { amount = "amount_eur" }   rename fields
  cast       fields = { amount = "decimal(12,2)" } convert; a value that does not convert is an error
  filter     field = "id", op = "ge", value = 10  keep rows where field OP value (eq, ne, gt, ge, lt, le, is_null, not_null)
  mask       fields = ["email"], with = "****"    replace non-null strings
  add_field  name = "origin", value = "eu"        add a constant string field

  sql        one SELECT ... FROM input over each batch (DataFusion's SQL and functions):

    [[transforms]]
    type = "sql"
    name = "enrich"                 # optional, names it in messages and dead letters
    query = """
    SELECT id,
           upper(customer)                                    AS customer,
           amount * 1.19                                      AS gross,
           CASE WHEN amount > 100 THEN 'big' ELSE 'small' END AS size,
           json_get_str(payload, 'device', 'os')              AS os,
           date_trunc('hour', at)                             AS hour
    FROM input
    WHERE status <> 'cancelled'
    """

    - computed columns, CASE, casts, regular expressions (regexp_like, regexp_replace),
      struct fields (s['f']), unnest(list) (one row per element), JSON functions on
      strings (json_get_str, json_get_int, json_get_float, json_get_bool, json_get_json,
      json_length, json_contains; also -> and ->>)
    - per record only: aggregates, window functions, joins, ORDER BY, LIMIT, DISTINCT,
      UNION and subqueries are refused when the query is planned, with their line:col:
      by `sluice validate` over a declared schema, by `sluice check` or at the first
      batch otherwise
    - decimal literals are decimals: amount * 1.19 keeps every digit (the scale grows)
    - unquoted names are lower case: write "customerId" in double quotes
    - planned once per input schema, not per batch: now() and current_date are the
      time the query was planned, not the time a record passed
    - a row the query fails on (a cast of 'abc' to int, a division by zero) goes to the
      dead-letter sink with the transform, the column and the error under
      errors.tolerance = "all", and stops the run naming it otherwise; the rest of the
      batch goes on

A sink's `where` routes: it receives only the rows the SQL condition keeps.

    [sinks.big]
    connector = "postgres"
    where = "size = 'big'"
    ...
    [sinks.archive]                 # no `where`: every row
    connector = "s3"

A row routed to no sink still counts as delivered: offsets are those of the batch.
"#;

fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("");
        if let Some(d) = root.get("$defs").and_then(|d| d.get(name)) {
            return d;
        }
    }
    if let Some(all) = v.get("allOf").and_then(Value::as_array) {
        if let Some(first) = all.first() {
            return resolve(root, first);
        }
    }
    v
}

fn type_of(root: &Value, v: &Value) -> String {
    let r = resolve(root, v);
    if let Some(values) = enum_values(root, r) {
        return format!("one of {}", values.join(", "));
    }
    match r.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join("|"),
        _ => r
            .get("anyOf")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|x| x.get("type") != Some(&Value::String("null".into())))
            })
            .map(|x| type_of(root, x))
            .unwrap_or_else(|| "value".into()),
    }
}

fn enum_values(root: &Value, v: &Value) -> Option<Vec<String>> {
    if let Some(e) = v.get("enum").and_then(Value::as_array) {
        return Some(e.iter().map(|x| x.to_string()).collect());
    }
    let one_of = v.get("oneOf").and_then(Value::as_array)?;
    let mut vals = Vec::new();
    for o in one_of {
        let o = resolve(root, o);
        if let Some(c) = o.get("const") {
            vals.push(c.to_string());
        } else if let Some(e) = o.get("enum").and_then(Value::as_array) {
            vals.extend(e.iter().map(|x| x.to_string()));
        } else {
            return None;
        }
    }
    Some(vals)
}

fn options(root: &Value, out: &mut String) {
    walk(root, root, "", out);
}

fn walk(root: &Value, schema: &Value, prefix: &str, out: &mut String) {
    let schema = resolve(root, schema);
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let key = format!("{prefix}{name}");
        let resolved = resolve(root, prop);
        let mut facts = vec![type_of(root, prop)];
        if required.contains(&name.as_str()) {
            facts.push("required".into());
        }
        if let Some(d) = prop.get("default") {
            facts.push(format!("default {d}"));
        }
        let doc = prop
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\n', " ");
        let _ = writeln!(out, "  {key}  ({})\n      {doc}", facts.join(", "));
        if resolved.get("properties").is_some() && type_of(root, prop) == "object" {
            walk(root, resolved, &format!("{key}."), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_of_every_builtin_has_a_doc_comment() {
        let registry = Registry::builtin();
        let mut names = registry.names(true);
        names.extend(registry.names(false));
        for n in names {
            let text = describe(&registry, &n).unwrap();
            for pair in text.lines().collect::<Vec<_>>().windows(2) {
                if pair[0].starts_with("  ")
                    && pair[0].contains("  (")
                    && !pair[0].starts_with("      ")
                {
                    assert!(
                        pair[1].trim().len() > 3,
                        "connector {n}: option `{}` has no doc comment",
                        pair[0].trim()
                    );
                }
            }
        }
    }

    #[test]
    fn describes_file_options_with_defaults() {
        let text = describe(&Registry::builtin(), "file").unwrap();
        assert!(text.contains("path  (string, required)"), "{text}");
        assert!(text.contains("csv.delimiter"), "{text}");
        assert!(text.contains("watch  (boolean, default false)"), "{text}");
    }
}
