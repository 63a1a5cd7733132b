//! The pipelines of one `sluice run`, each under a controller task that starts it,
//! pauses, resumes, restarts and stops it on request (HTTP API) and reports its state
//! to the [`Telemetry`] registry; and the reload of pipeline files (`--watch`, SIGHUP).
//!
//! A stop always drains: the source stops, everything read is written, every sink
//! flushes, the checkpoint is stored. A reload of a changed file does that before the
//! new version starts from the checkpoint, so an exactly-once pipeline neither loses
//! nor repeats a record across it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::config::{self, Pipeline};
use crate::pipeline::{self, Control};
use crate::progress;
use crate::registry::Registry;
use crate::telemetry::{PipelineMetrics, State, Telemetry};

/// A request for a running pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Stop reading; keep connections and the checkpointed position.
    Pause,
    /// Read again after a pause; start again after a stop or a failure.
    Resume,
    /// Drain, flush, checkpoint, then open everything again from the checkpoint.
    Restart,
    /// Drain, flush, checkpoint, close.
    Stop,
}

impl Command {
    /// The command named in a URL path (`pause`, `resume`, `restart`, `stop`).
    pub fn parse(name: &str) -> Option<Command> {
        Some(match name {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "restart" => Command::Restart,
            "stop" => Command::Stop,
            _ => return None,
        })
    }
}

/// How `sluice run` was asked to behave.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Keep running after every pipeline has ended (HTTP API or `--watch` on): the
    /// process then ends only on a signal.
    pub serve: bool,
    /// Show progress (on a terminal, a redrawn line; else a log line every 10 s).
    pub progress: bool,
    /// Human log format (progress may redraw a terminal line).
    pub terminal: bool,
}

struct Managed {
    /// The file's text when this version was loaded.
    text: String,
    name: String,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// Every pipeline of this process.
pub struct Service {
    registry: Arc<Registry>,
    /// What every pipeline reports.
    pub telemetry: Arc<Telemetry>,
    shutdown: watch::Receiver<bool>,
    options: Options,
    paths: Vec<PathBuf>,
    /// By file.
    pipelines: Mutex<BTreeMap<PathBuf, Managed>>,
    /// Files that do not load and run no version: the error, for `/pipelines`.
    invalid: std::sync::Mutex<BTreeMap<PathBuf, String>>,
}

impl Service {
    /// A service over the pipeline files in `paths` (files or directories).
    pub fn new(
        registry: Arc<Registry>,
        paths: Vec<PathBuf>,
        shutdown: watch::Receiver<bool>,
        options: Options,
    ) -> Arc<Self> {
        Arc::new(Service {
            registry,
            telemetry: Arc::new(Telemetry::default()),
            shutdown,
            options,
            paths,
            pipelines: Mutex::new(BTreeMap::new()),
            invalid: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts every pipeline loaded at start.
    pub async fn start_all(self: &Arc<Self>, loaded: Vec<(Pipeline, String)>) {
        let mut map = self.pipelines.lock().await;
        for (p, text) in loaded {
            let file = p.file.clone();
            map.insert(file, self.start(p, text));
        }
    }

    fn start(self: &Arc<Self>, p: Pipeline, text: String) -> Managed {
        let metrics = Arc::new(PipelineMetrics::of(&p));
        self.telemetry.insert(metrics.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let name = p.name.clone();
        let this = self.clone();
        let task = tokio::spawn(async move { this.control(p, rx, metrics).await });
        Managed {
            text,
            name,
            commands: tx,
            task,
        }
    }

    /// Sends `command` to the pipeline named `name`; false when there is none.
    pub async fn command(&self, name: &str, command: Command) -> bool {
        let map = self.pipelines.lock().await;
        map.values()
            .find(|m| m.name == name)
            .is_some_and(|m| m.commands.send(command).is_ok())
    }

    /// The files that do not load (a poisoned lock still holds a usable map).
    fn invalid(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, String>> {
        self.invalid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files that do not load and run no version, with their errors.
    pub fn invalid_files(&self) -> Vec<(PathBuf, String)> {
        let map = self.invalid();
        map.iter().map(|(f, e)| (f.clone(), e.clone())).collect()
    }

    /// Waits until every pipeline's controller has ended; true when none failed.
    pub async fn join(&self) -> bool {
        loop {
            let running = {
                let map = self.pipelines.lock().await;
                map.values().any(|m| !m.task.is_finished())
            };
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.telemetry
            .all()
            .iter()
            .all(|m| m.state() != State::Failed)
    }

    /// One pipeline's controller: runs it, obeys commands, records its state.
    async fn control(
        self: Arc<Self>,
        p: Pipeline,
        mut commands: mpsc::UnboundedReceiver<Command>,
        m: Arc<PipelineMetrics>,
    ) {
        let mut shutdown = self.shutdown.clone();
        let mut run_wanted = true;
        loop {
            if run_wanted && !*shutdown.borrow() {
                let (stop_tx, stop_rx) = watch::channel(false);
                let (pause_tx, pause_rx) = watch::channel(false);
                m.set_state(State::Starting);
                m.set_error(None);
                m.mark_started();
                let reporter = (self.options.progress)
                    .then(|| progress::spawn(p.name.clone(), m.clone(), self.options.terminal));
                let control = Control::with_pause(stop_rx, pause_rx);
                let run = pipeline::supervise(&p, &self.registry, control, m.clone());
                tokio::pin!(run);
                let mut after = None;
                let result = loop {
                    tokio::select! {
                        r = &mut run => break r,
                        _ = shutdown.wait_for(|s| *s), if !*stop_tx.borrow() => {
                            let _ = stop_tx.send(true);
                        }
                        c = commands.recv(), if after.is_none() => match c {
                            Some(Command::Pause) => {
                                let _ = pause_tx.send(true);
                                m.set_state(State::Paused);
                                tracing::info!(pipeline = %p.name, "pausing");
                            }
                            Some(Command::Resume) => {
                                let _ = pause_tx.send(false);
                                if m.state() == State::Paused {
                                    m.set_state(State::Running);
                                    tracing::info!(pipeline = %p.name, "resumed");
                                }
                            }
                            Some(c) => {
                                // stop, restart, or the pipeline's file went away
                                tracing::info!(pipeline = %p.name, command = ?c, "stopping: draining, flushing and checkpointing");
                                after = Some(c);
                                let _ = stop_tx.send(true);
                            }
                            None => {
                                after = Some(Command::Stop);
                                let _ = stop_tx.send(true);
                            }
                        }
                    }
                };
                if let Some(r) = reporter {
                    r.finish();
                }
                match result {
                    Err(e) => {
                        let message = m.redact(format!("pipeline \"{}\" failed: {e}", p.name));
                        tracing::error!(pipeline = %p.name, kind = %e.kind(), "{message}");
                        eprintln!("error: {message}");
                        m.set_error(Some(format!("{} error: {e}", e.kind())));
                        m.set_state(State::Failed);
                        run_wanted = false;
                        if !self.options.serve {
                            return;
                        }
                    }
                    Ok(()) => {
                        println!("{}", progress::summary(&p.name, &m));
                        if after == Some(Command::Restart) {
                            continue;
                        }
                        run_wanted = false;
                        if *shutdown.borrow() || after == Some(Command::Stop) {
                            m.set_state(State::Stopped);
                        } else {
                            m.set_state(State::Finished);
                        }
                        if !self.options.serve || *shutdown.borrow() {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                c = commands.recv() => match c {
                    Some(Command::Resume | Command::Restart) => run_wanted = true,
                    Some(Command::Pause | Command::Stop) => {}
                    None => return,
                }
            }
        }
    }

    /// Loads the pipeline files again: a new file starts, a changed one restarts with
    /// its new version (drained, flushed and checkpointed first), a removed one stops.
    /// A file that does not validate keeps its running version; its error is logged
    /// and shown on `/pipelines`.
    pub async fn reload(self: &Arc<Self>) {
        let files = match expand(&self.paths) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "reload: cannot list the pipeline files");
                return;
            }
        };
        let mut map = self.pipelines.lock().await;
        // removed files stop first, so a pipeline renamed into another file can start
        let gone: Vec<PathBuf> = map.keys().filter(|f| !files.contains(f)).cloned().collect();
        for file in gone {
            if let Some(old) = map.remove(&file) {
                tracing::info!(pipeline = %old.name, file = %file.display(), "pipeline file removed; stopping the pipeline");
                self.stop(old).await;
            }
        }
        self.invalid().retain(|f, _| files.contains(f));
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "reload: cannot read the pipeline file");
                    continue;
                }
            };
            if map.get(&file).is_some_and(|m| m.text == text) {
                continue;
            }
            let loaded = config::load(&file, &self.registry).and_then(|p| {
                let taken = map.iter().any(|(f, m)| *f != file && m.name == p.name);
                if taken {
                    Err(config::ConfigError {
                        file: file.clone(),
                        position: None,
                        message: format!("pipeline name \"{}\" is used by another file", p.name),
                        hint: None,
                    })
                } else {
                    Ok(p)
                }
            });
            match (loaded, map.get(&file)) {
                (Err(e), Some(running)) => {
                    tracing::error!(pipeline = %running.name, error = %e, "reload: the changed file does not validate; the running version is kept");
                    if let Some(m) = self.telemetry.get(&running.name) {
                        m.set_config_error(Some(e.to_string()));
                    }
                }
                (Err(e), None) => {
                    tracing::error!(error = %e, "reload: the new file does not validate");
                    self.invalid().insert(file.clone(), e.to_string());
                }
                (Ok(p), running) => {
                    if running.is_some() {
                        if let Some(old) = map.remove(&file) {
                            tracing::info!(pipeline = %old.name, "pipeline file changed; restarting with the new version");
                            self.stop(old).await;
                        }
                    } else {
                        tracing::info!(pipeline = %p.name, file = %file.display(), "new pipeline file; starting");
                    }
                    self.invalid().remove(&file);
                    let started = self.start(p, text);
                    map.insert(file, started);
                }
            }
        }
    }

    /// Stops a pipeline (drain, flush, checkpoint) and forgets it.
    async fn stop(&self, old: Managed) {
        let _ = old.commands.send(Command::Stop);
        drop(old.commands);
        let _ = old.task.await;
        self.telemetry.remove(&old.name);
    }
}

/// The pipeline files named by `paths`: files as given, directories' `*.toml` sorted.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, config::ConfigError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| config::ConfigError {
                    file: p.clone(),
                    position: None,
                    message: format!("cannot read the directory: {e}"),
                    hint: None,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Reloads on SIGHUP, and with `watch` whenever a file in `paths` (or in a directory
/// among them) is created, changed or removed, a short quiet period after the last
/// change (an editor writes a file in several steps).
pub fn spawn_reloader(service: Arc<Service>, paths: &[PathBuf], watch: bool) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = None;
    if watch {
        use notify::Watcher;
        let events = tx.clone();
        let made = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if e.is_ok_and(|e| !e.kind.is_access()) {
                let _ = events.send(());
            }
        });
        match made {
            Ok(mut w) => {
                for p in paths {
                    // a file is watched through its directory: editors replace files
                    let target = if p.is_dir() {
                        p.as_path()
                    } else {
                        p.parent()
                            .filter(|d| !d.as_os_str().is_empty())
                            .unwrap_or(Path::new("."))
                    };
                    if let Err(e) = w.watch(target, notify::RecursiveMode::NonRecursive) {
                        tracing::error!(path = %target.display(), error = %e, "cannot watch for pipeline file changes");
                    }
                }
                watcher = Some(w);
            }
            Err(e) => tracing::error!(error = %e, "cannot watch for pipeline file changes"),
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let mut shutdown = service.shutdown.clone();
        loop {
            let changed = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                Some(()) = rx.recv() => true,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => false,
            };
            if changed {
                // settle: wait until no event came for 300 ms
                while let Ok(Some(())) =
                    tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
                {
                }
            } else {
                tracing::info!("SIGHUP: reloading the pipeline files");
            }
            service.reload().await;
        }
    });
}
