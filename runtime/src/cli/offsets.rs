//! `sluice offsets show|reset`: what the checkpoint store holds for a pipeline, local
//! file or shared database.

use std::process::ExitCode;

use super::EXIT_FAILED;
use crate::checkpoint::{unshareable, CheckpointStore, SharedStore};
use crate::config::{redact, Pipeline, StoreKind};
use crate::registry::Registry;

/// Prints the stored offsets of `p` as JSON: one object per split, with its owner and
/// lease in a shared store.
pub(super) async fn show(p: &Pipeline) -> ExitCode {
    if p.checkpoint.store == StoreKind::Postgres {
        let store = match connect(p).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        let result = match store.splits(&p.name).await {
            Ok(rows) => store.runtimes().await.map(|r| (rows, r)),
            Err(e) => Err(e),
        };
        store.close().await;
        return match result {
            Ok((rows, _)) if rows.is_empty() => {
                println!("pipeline \"{}\" has no stored offsets", p.name);
                ExitCode::SUCCESS
            }
            Ok((rows, runtimes)) => {
                let splits: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| {
                        let state = match (r.done, &r.leased_until) {
                            (true, _) => "done",
                            (false, Some(_)) => "leased",
                            (false, None) => "waiting",
                        };
                        let position = r.offsets.as_ref().and_then(|o| o.get(&r.split).cloned());
                        serde_json::json!({
                            "split": r.split,
                            "state": state,
                            "owner": r.owner,
                            "epoch": r.epoch,
                            "leased_until": r.leased_until,
                            "records": r.offsets.as_ref().and_then(|o| o.records()),
                            "position": position,
                            "updated_at": r.updated_at,
                        })
                    })
                    .collect();
                let runtimes: Vec<serde_json::Value> = runtimes
                    .iter()
                    .map(|r| serde_json::json!({"id": r.id, "heartbeat_at": r.heartbeat_at}))
                    .collect();
                let out = serde_json::json!({
                    "pipeline": p.name,
                    "store": "postgres",
                    "splits": splits,
                    "runtimes": runtimes,
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => failed(p, e),
        };
    }
    let store = match CheckpointStore::open(&p.checkpoint_path()).await {
        Ok(store) => store,
        Err(e) => return failed(p, e),
    };
    let code = match (store.load(&p.name).await, store.updated_at(&p.name).await) {
        (Ok(Some(o)), Ok(at)) => {
            let splits: serde_json::Map<String, serde_json::Value> =
                o.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let out = serde_json::json!({"pipeline": p.name, "updated_at": at, "splits": splits});
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        (Ok(None), _) => {
            println!("pipeline \"{}\" has no stored offsets", p.name);
            ExitCode::SUCCESS
        }
        (Err(e), _) | (_, Err(e)) => failed(p, e),
    };
    store.close().await;
    code
}

/// Forgets the stored offsets of `p`, unless a run of it holds them.
pub(super) async fn reset(p: &Pipeline) -> ExitCode {
    if p.checkpoint.store == StoreKind::Postgres {
        let store = match connect(p).await {
            Ok(store) => store,
            Err(code) => return code,
        };
        let code = reset_shared(p, &store).await;
        store.close().await;
        return code;
    }
    // a reset while the pipeline runs would be undone by its next checkpoint
    let (_stop, unstopped) = tokio::sync::watch::channel(false);
    let _lock = match crate::lock::hold(p, &unstopped).await {
        Ok(lock) => lock,
        Err(e) => return failed(p, e),
    };
    // a reset recovers a store that is not a database by setting it aside
    let store = match CheckpointStore::open_or_set_aside(&p.checkpoint_path()).await {
        Ok((s, None)) => s,
        Ok((s, Some(aside))) => {
            println!(
                "checkpoint store \"{}\" was not a SQLite database or was damaged: set aside as \"{}\"; every pipeline it held reads from the start (stop any other pipeline using it before you run them again)",
                p.checkpoint_path().display(),
                aside.display()
            );
            s
        }
        Err(e) => return failed(p, e),
    };
    let code = match store.reset(&p.name).await {
        Ok(true) => reset_done(p),
        Ok(false) => {
            println!("pipeline \"{}\" has no stored offsets", p.name);
            ExitCode::SUCCESS
        }
        Err(e) => failed(p, e),
    };
    store.close().await;
    code
}

async fn reset_shared(p: &Pipeline, store: &SharedStore) -> ExitCode {
    match store.reset(&p.name).await {
        Ok(true) => reset_done(p),
        Ok(false) => {
            println!("pipeline \"{}\" has no stored offsets", p.name);
            ExitCode::SUCCESS
        }
        Err(e) => failed(p, e),
    }
}

fn reset_done(p: &Pipeline) -> ExitCode {
    println!(
        "offsets of pipeline \"{}\" reset; the next run reads from the start",
        p.name
    );
    println!("note: sinks that store offsets with their data (sqlite, file) keep theirs; clear the target to re-read");
    ExitCode::SUCCESS
}

/// `sluice check` of a shared store: it can be reached (its tables made), the
/// source can divide its work, and cuts it as the splits the store holds.
pub(super) async fn check_shared(p: &Pipeline, registry: &Registry) -> connector_api::Result<()> {
    let url = p.checkpoint.url.as_deref().unwrap_or_default();
    let store = SharedStore::connect(url, p.checkpoint.lease_timeout).await?;
    let checked = async {
        let Some(source) = registry.source(&p.source.connector) else {
            return Ok(());
        };
        match source.splits(&p.source.config).await? {
            Some(listed) => store.check_cut(&p.name, listed.cut.as_deref()).await,
            None => Err(unshareable(&p.source.connector)),
        }
    }
    .await;
    store.close().await;
    checked
}

async fn connect(p: &Pipeline) -> Result<SharedStore, ExitCode> {
    let url = p.checkpoint.url.as_deref().unwrap_or_default();
    SharedStore::connect(url, p.checkpoint.lease_timeout)
        .await
        .map_err(|e| failed(p, e))
}

fn failed(p: &Pipeline, e: connector_api::Error) -> ExitCode {
    eprintln!("error: {}", redact(&p.secrets, e.to_string()));
    ExitCode::from(EXIT_FAILED)
}
