//! The command line: parses arguments, sets up logging, dispatches.
//!
//! Exit codes: 0 success (also after a graceful stop), 1 a pipeline or check failed,
//! 2 a usage or config error (nothing was started or written).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Pipeline};
use crate::registry::Registry;
use crate::service::{self, Service};
use crate::{describe, http, interpolate, progress, shutdown};

mod offsets;
mod schema;
use schema::{print_fields, schema_downstream};

/// Exit code of a config or usage error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of a failed pipeline or check.
pub const EXIT_FAILED: u8 = 1;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Moves records between databases, files, object storage and event streams"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    /// Log filter (tracing syntax), e.g. `info` or `sluice=debug`; RUST_LOG also works.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    /// Load every connector plugin library (.so) in this directory; repeatable.
    #[arg(long = "plugin-dir", global = true)]
    plugin_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipeline files (a directory runs every *.toml in it).
    Run {
        /// Pipeline files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// No progress display.
        #[arg(long)]
        quiet: bool,
        /// Serve the HTTP API (metrics, health, status, control) on ADDR; without a
        /// value on 127.0.0.1:8686. The process then keeps running until a signal.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = http::DEFAULT_ADDR)]
        http: Option<std::net::SocketAddr>,
        /// Bearer token the HTTP API requires (required on a non-loopback address);
        /// `${env:NAME}` and `${file:PATH}` are resolved, so it need not be on the
        /// command line.
        #[arg(long, value_name = "TOKEN", requires = "http")]
        auth_token: Option<String>,
        /// Reload when a pipeline file is added, changed or removed (SIGHUP always
        /// reloads). The process then keeps running until a signal.
        #[arg(long)]
        watch: bool,
    },
    /// Check pipeline files without opening any connection.
    Validate {
        /// Pipeline files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the connectors.
    Connectors,
    /// Show a connector's options (`describe transforms`: the transforms and `where`).
    Describe {
        /// Connector name, or `transforms`.
        connector: String,
    },
    /// Check that a pipeline's connectors can connect.
    Check {
        /// Pipeline file.
        file: PathBuf,
    },
    /// Show the schema a pipeline's source produces.
    Schema {
        /// Pipeline file.
        file: PathBuf,
    },
    /// Show or reset stored offsets.
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
}

#[derive(Subcommand)]
enum OffsetsAction {
    /// Print the stored offsets of a pipeline.
    Show {
        /// Pipeline file.
        file: PathBuf,
    },
    /// Forget the stored offsets: the next run starts from the beginning.
    Reset {
        /// Pipeline file.
        file: PathBuf,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // sqlx logs every server notice ("relation already exists, skipping") at info
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{level},sqlx=warn,async_nats=warn"))
        });
    // colour only on a terminal: a log redirected to a file or a pipe stays plain text
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| progress::LogWriter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut registry = Registry::builtin();
    let mut dirs = cli.plugin_dirs.clone();
    dirs.extend(
        pipeline_files(&cli.command)
            .iter()
            .flat_map(|f| config::plugin_dirs(f)),
    );
    dirs.dedup();
    for dir in &dirs {
        match registry.load_plugins(dir) {
            Ok(refused) => {
                for r in refused {
                    eprintln!("error: {r}");
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let progress = matches!(cli.log_format, LogFormat::Human);
    runtime.block_on(dispatch(cli.command, registry, progress))
}

/// The pipeline files a command names (directories expanded), for `[plugins] dirs`.
fn pipeline_files(command: &Command) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = match command {
        Command::Run { paths, .. } | Command::Validate { paths } => paths.clone(),
        Command::Check { file } | Command::Schema { file } => vec![file.clone()],
        Command::Offsets {
            action: OffsetsAction::Show { file } | OffsetsAction::Reset { file },
        } => vec![file.clone()],
        Command::Connectors | Command::Describe { .. } => Vec::new(),
    };
    service::expand(&paths).unwrap_or_default()
}

fn load_all(paths: &[PathBuf], registry: &Registry) -> Result<Vec<Pipeline>, ExitCode> {
    let files = service::expand(paths).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let mut pipelines = Vec::new();
    let mut failed = false;
    for f in &files {
        match config::load(f, registry) {
            Ok(p) => pipelines.push(p),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for p in &pipelines {
        if !names.insert(p.name.clone()) {
            eprintln!(
                "error: {}: pipeline name \"{}\" is used twice",
                p.file.display(),
                p.name
            );
            failed = true;
        }
    }
    if failed {
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(pipelines)
}

fn load_one(file: &Path, registry: &Registry) -> Result<Pipeline, ExitCode> {
    config::load(file, registry).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn redact(p: &Pipeline, message: String) -> String {
    config::redact(&p.secrets, message)
}

async fn dispatch(command: Command, registry: Registry, progress: bool) -> ExitCode {
    match command {
        Command::Run {
            paths,
            quiet,
            http,
            auth_token,
            watch,
        } => {
            let pipelines = match load_all(&paths, &registry) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let token = match auth_token.map(|t| interpolate::resolve(&t)).transpose() {
                Ok(t) => t.map(|t| t.text),
                Err(e) => {
                    eprintln!("error: --auth-token: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let listener = match http {
                Some(addr) => match http::bind(addr, token.as_deref()).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                None => None,
            };
            let stop = shutdown::install();
            let options = service::Options {
                serve: http.is_some() || watch,
                progress: !quiet,
                terminal: progress,
            };
            let service = Service::new(Arc::new(registry), paths.clone(), stop.clone(), options);
            let loaded = pipelines
                .into_iter()
                .map(|p| {
                    let text = std::fs::read_to_string(&p.file).unwrap_or_default();
                    (p, text)
                })
                .collect();
            service.start_all(loaded).await;
            if let Some(listener) = listener {
                http::serve(listener, token, service.clone());
            }
            service::spawn_reloader(service.clone(), &paths, watch);
            if options.serve {
                let mut stop = stop;
                let _ = stop.wait_for(|s| *s).await;
            }
            if service.join().await {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Command::Validate { paths } => match load_all(&paths, &registry) {
            Ok(pipelines) => {
                for p in pipelines {
                    println!("{}: ok (pipeline \"{}\")", p.file.display(), p.name);
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Connectors => {
            for (name, kinds, desc, origin) in registry.list() {
                println!("{name:<12} {:<12} {desc}  [{origin}]", kinds.join(","));
            }
            ExitCode::SUCCESS
        }
        Command::Describe { connector } if connector == "transforms" => {
            print!("{}", describe::TRANSFORMS);
            ExitCode::SUCCESS
        }
        Command::Describe { connector } => match describe::describe(&registry, &connector) {
            Some(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                let mut names = registry.names(true);
                names.extend(registry.names(false));
                names.sort();
                names.dedup();
                let hint = config::suggest(&connector, &names)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                eprintln!(
                    "error: unknown connector \"{connector}\"{hint}; connectors: {}",
                    names.join(", ")
                );
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Check { file } => {
            let p = match load_one(&file, &registry) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let mut ok = true;
            let report = |what: String, r: connector_api::Result<()>, ok: &mut bool| match r {
                Ok(()) => println!("{what}: ok"),
                Err(e) => {
                    *ok = false;
                    println!("{what}: {} error: {}", e.kind(), redact(&p, e.to_string()));
                }
            };
            if let Some(c) = registry.source(&p.source.connector) {
                report(
                    format!("source ({})", p.source.connector),
                    c.check(&p.source.config).await,
                    &mut ok,
                );
            }
            for s in p.sinks.iter().chain(p.dead_letter.iter()) {
                if let Some(c) = registry.sink(&s.connector) {
                    report(
                        format!("{} ({})", s.path, s.connector),
                        c.check(&s.config).await,
                        &mut ok,
                    );
                }
            }
            if p.checkpoint.store == config::StoreKind::Postgres {
                report(
                    "checkpoint store (postgres)".into(),
                    offsets::check_shared(&p, &registry).await,
                    &mut ok,
                );
            }
            // what the source's records will be, through the transforms and routes to
            // each sink, which says whether it takes them
            if let Some(Ok(Some(schema))) = match registry.source(&p.source.connector) {
                Some(c) if ok => Some(c.discover(&p.source.config).await),
                _ => None,
            } {
                let what = if p.transforms.is_empty() && p.sinks.iter().all(|s| s.route.is_none()) {
                    "sinks (on the source's schema)"
                } else {
                    "transforms, routes and sinks (on the source's schema)"
                };
                match config::load_discovered(&file, &registry, schema) {
                    Ok(_) => println!("{what}: ok"),
                    Err(e) => {
                        ok = false;
                        println!("{what}: error: {}", redact(&p, e.to_string()));
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Command::Schema { file } => {
            let p = match load_one(&file, &registry) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let Some(c) = registry.source(&p.source.connector) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            match c.discover(&p.source.config).await {
                Ok(Some(schema)) => {
                    println!("schema = [");
                    print_fields("", &schema);
                    println!("]");
                    match schema_downstream(&p, schema) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("error: {}", redact(&p, e));
                            ExitCode::from(EXIT_CONFIG)
                        }
                    }
                }
                Ok(None) => {
                    println!("the source cannot tell its schema before reading");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: source: {}", redact(&p, e.to_string()));
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Offsets { action } => {
            let (file, reset) = match action {
                OffsetsAction::Show { file } => (file, false),
                OffsetsAction::Reset { file } => (file, true),
            };
            match load_one(&file, &registry) {
                Ok(p) if reset => offsets::reset(&p).await,
                Ok(p) => offsets::show(&p).await,
                Err(code) => code,
            }
        }
    }
}
