//! Checks across sections: sinks that would write to one place, the records' schema
//! through the transforms and sinks' routes, and change records a sink must take.

use arrow_schema::SchemaRef;
use connector_api::columns;

use super::settings::{CheckpointConfig, StoreKind};
use super::{ConfigError, Doc, Section};
use crate::registry::Registry;
use crate::transform::{plan_downstream, Misfit, TransformSpec, Unfit};

/// No two of `sinks` write where the other does (their connectors say where:
/// [`connector_api::DynSinkConnector::destination`]).
pub(super) fn distinct_destinations<'a>(
    doc: &Doc,
    registry: &Registry,
    sinks: impl Iterator<Item = &'a Section>,
) -> Result<(), ConfigError> {
    let mut places: Vec<(String, &Section)> = Vec::new();
    for sink in sinks {
        let place = registry
            .sink(&sink.connector)
            .and_then(|c| c.destination(&sink.config));
        let Some(place) = place else {
            continue;
        };
        if let Some((_, other)) = places.iter().find(|(p, _)| *p == place) {
            return Err(doc.error_at(
                doc.span_of(&sink.path),
                format!(
                    "[{}] writes where [{}] does ({place}): one sink's data and state would replace the other's",
                    sink.path, other.path
                ),
                Some("give each sink a place of its own".into()),
            ));
        }
        places.push((place, sink));
    }
    Ok(())
}

/// When the schema of every record is known (`known`, found by connecting to the
/// source, or the source's connector knows it from its config alone), the transforms
/// run on no rows of it (the queries are planned): a field it
/// does not have, a cast it cannot take, a filter value of the wrong type, a query
/// that does not plan fail here. Then each sink's `where` is planned on what comes
/// out, and each sink says whether it can write it.
pub(super) fn check_record_schema(
    doc: &Doc,
    registry: &Registry,
    known: Option<SchemaRef>,
    source: &Section,
    transforms: &[TransformSpec],
    sinks: &[Section],
) -> Result<(), ConfigError> {
    let declared = || {
        registry
            .source(&source.connector)
            .and_then(|c| c.record_schema(&source.config))
    };
    let Some(schema) = known.or_else(declared) else {
        return Ok(());
    };
    let routes: Vec<Option<&str>> = sinks.iter().map(|s| s.route.as_deref()).collect();
    let after = plan_downstream(schema.clone(), transforms, &routes).map_err(|m| match m {
        Misfit::Transform {
            index,
            before,
            unfit,
        } => {
            let hint = Some(format!(
                "from the source's schema, the records here have {}",
                field_names(&before)
            ));
            match unfit {
                Unfit::Sql(e) => doc.sql_error(&format!("transforms[{index}].query"), &e, hint),
                Unfit::Other(e) => doc.error_at(
                    doc.span_of(&format!("transforms[{index}]")),
                    format!("`transforms[{index}]`: {e}"),
                    hint,
                ),
            }
        }
        Misfit::Route { index, out, error } => {
            let hint = format!("the records reaching the sinks have {}", field_names(&out));
            doc.sql_error(&format!("{}.where", sinks[index].path), &error, Some(hint))
        }
    })?;
    let out = after.last().cloned().unwrap_or(schema);
    for sink in sinks {
        let Some(connector) = registry.sink(&sink.connector) else {
            continue;
        };
        if let Err(e) = connector.accepts(&sink.config, &out) {
            return Err(sink_refusal(doc, sink, &e, None));
        }
    }
    Ok(())
}

fn field_names(schema: &SchemaRef) -> String {
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect();
    names.join(", ")
}

/// A sink's refusal of the pipeline's records, at the option its error names (else
/// at the sink's section).
fn sink_refusal(
    doc: &Doc,
    sink: &Section,
    e: &connector_api::Error,
    hint: Option<String>,
) -> ConfigError {
    let at = match e.field() {
        Some(field) => format!("{}.{field}", sink.path),
        None => sink.path.clone(),
    };
    doc.error_at(
        doc.span_of(&at).or_else(|| doc.span_of(&sink.path)),
        format!("[{}]: {}", sink.path, e.message()),
        hint,
    )
}

/// A source of change records: each sink must say it can take them (a table sink in
/// `insert` mode would add deletes as rows), unless the transforms remove `_op`.
pub(super) fn check_changes(
    doc: &Doc,
    registry: &Registry,
    source: &Section,
    transforms: &[TransformSpec],
    sinks: &[Section],
) -> Result<(), ConfigError> {
    let emits = registry
        .source(&source.connector)
        .is_some_and(|c| c.emits_changes(&source.config));
    if !emits
        || !transforms
            .iter()
            .fold(true, |held, t| t.keeps(columns::OP, held))
    {
        return Ok(());
    }
    for sink in sinks {
        let Some(connector) = registry.sink(&sink.connector) else {
            continue;
        };
        if let Err(e) = connector.accepts_changes(&sink.config) {
            let hint = format!(
                "[{}] emits changes (inserts, updates, deletes)",
                source.path
            );
            return Err(sink_refusal(doc, sink, &e, Some(hint)));
        }
    }
    Ok(())
}

/// `[checkpoint]`: a shared store has a URL and a lease long enough to renew; a
/// local one has no URL.
pub(super) fn check_store(doc: &Doc, checkpoint: &CheckpointConfig) -> Result<(), ConfigError> {
    match (checkpoint.store, &checkpoint.url) {
        (StoreKind::Postgres, None) => Err(doc.error_at(
            doc.span_of("checkpoint.store"),
            "checkpoint.store = \"postgres\" needs checkpoint.url",
            Some("e.g. url = \"postgres://sluice:${env:PGPASSWORD}@db:5432/ops\"".into()),
        )),
        (StoreKind::Postgres, Some(url))
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
        {
            Err(doc.error_at(
                doc.span_of("checkpoint.url"),
                "checkpoint.url must be a postgres:// URL",
                None,
            ))
        }
        (StoreKind::Postgres, Some(_))
            if checkpoint.lease_timeout < std::time::Duration::from_secs(1) =>
        {
            Err(doc.error_at(
                doc.span_of("checkpoint.lease_timeout"),
                "checkpoint.lease_timeout must be at least 1s: a lease is renewed three times per timeout",
                None,
            ))
        }
        (StoreKind::Postgres, Some(_)) if checkpoint.splits_at_once == 0 => Err(doc.error_at(
            doc.span_of("checkpoint.splits_at_once"),
            "checkpoint.splits_at_once must be at least 1",
            None,
        )),
        (StoreKind::Sqlite, Some(_)) => Err(doc.error_at(
            doc.span_of("checkpoint.url"),
            "checkpoint.url is for store = \"postgres\"; the default store is a local SQLite file (checkpoint.path)",
            Some("add store = \"postgres\" to share the pipeline between runtimes".into()),
        )),
        _ => Ok(()),
    }
}
