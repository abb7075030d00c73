//! `connect`: runs the connectors of a TOML configuration file.
//!
//! ```text
//! connect run --config FILE       run every connector until SIGINT/SIGTERM, then drain; exit 0
//!                                 (with [rest]: the REST API too; a failed task stays FAILED)
//!   [--group ID] [--worker-id ID]   as one worker of a worker group (distributed mode)
//! connect status --config FILE    the worker group's generation and which worker runs which task
//!   [--group ID] [--json]
//! connect validate --config FILE  exit 0 if valid, else print each problem with its key path
//! connect schema [--markdown]     print the JSON Schema of the configuration file
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use connector_core::runner::{cluster_status, file_schema, markdown, ConnectFile};
use connector_runner::run;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Runs Kafka Connect-style connectors (MQTT <-> Kafka and your own) from a TOML file.
#[derive(Parser)]
#[command(name = "connect", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every connector in the file until SIGINT/SIGTERM, then drain and commit.
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Run as a worker of this worker group (sets `[cluster] group_id`).
        #[arg(long)]
        group: Option<String>,
        /// This worker's id in the group (sets `[cluster] worker_id`; default `<hostname>-<pid>`).
        #[arg(long)]
        worker_id: Option<String>,
        /// Threads that run the connectors (default: `TOKIO_WORKER_THREADS` when set, else half
        /// the CPU cores, at least 1, leaving the rest to the brokers and the kernel's network
        /// work on a shared machine).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
    /// Show the worker group: its generation, which worker runs which task, and which sink
    /// task reads which partitions.
    Status {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The worker group (default: the file's `[cluster] group_id`).
        #[arg(long)]
        group: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the file; print each problem with its key path.
    Validate {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the JSON Schema of the configuration file.
    Schema {
        /// Print the Markdown reference (docs/configuration.md) instead.
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for an invalid configuration.
const INVALID: u8 = 2;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &Path, group: Option<&str>) -> Result<ConnectFile, ExitCode> {
    let registry = connector_runner::builtin_registry();
    ConnectFile::load_with_group(path, &registry, group).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        ExitCode::from(INVALID)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema { markdown: md } => {
            let registry = connector_runner::builtin_registry();
            if md {
                print!("{}", markdown(&registry));
            } else {
                match serde_json::to_string_pretty(&file_schema(&registry)) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("connect: cannot print the schema: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Validate { config } => match load(&config, None) {
            Ok(file) => {
                println!("{}: valid, {} connector(s)", config.display(), file.connectors.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Status { config, group, json } => {
            let file = match load(&config, group.as_deref()) {
                Ok(f) => f,
                Err(code) => return code,
            };
            let Some(runtime) = runtime() else { return ExitCode::FAILURE };
            match runtime.block_on(cluster_status(&file)) {
                Ok(status) if json => match serde_json::to_string(&status) {
                    Ok(s) => {
                        println!("{s}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("connect: cannot print the status: {e}");
                        ExitCode::FAILURE
                    }
                },
                Ok(status) => {
                    print!("{status}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("connect: {}", e.report().replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, log_format, group, worker_id, worker_threads } => {
            let mut file = match load(&config, group.as_deref()) {
                Ok(f) => f,
                Err(code) => return code,
            };
            if let Some(id) = worker_id.filter(|w| !w.trim().is_empty()) {
                file.cluster.worker_id = Some(id);
            }
            init_logging(log_format);
            let threads = worker_threads.map(usize::from).unwrap_or_else(default_worker_threads);
            let Some(runtime) = runtime_with(Some(threads)) else { return ExitCode::FAILURE };
            debug!(worker_threads = threads, "starting the runtime");
            let result = runtime.block_on(async {
                let shutdown = CancellationToken::new();
                let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
                let result = run(file, shutdown).await;
                signals.abort();
                result
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("connect: {}", e.report().replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// `connect run`'s worker threads when `--worker-threads` is not given: `TOKIO_WORKER_THREADS`
/// when it is a number of at least 1, else half the cores, at least 1. On the 2-core bench
/// machine one thread cut CPU per message by about a fifth at a steady 10,000 msg/s at the same
/// throughput (fewer cross-thread wake-ups; docs/benchmarks.md).
fn default_worker_threads() -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / 2).max(1)
}

/// The multi-threaded runtime, with `threads` workers (tokio's default when `None`).
fn runtime_with(threads: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("connect: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Exit code after a second SIGINT/SIGTERM cut the drain short.
const INTERRUPTED: i32 = 130;

/// Cancels `shutdown` on SIGINT or SIGTERM (the connectors drain, each step bounded by
/// `shutdown_timeout_ms`); a second SIGINT or SIGTERM exits at once with code 130, committing
/// nothing more (what was not committed is delivered again after the restart).
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = int.recv() => info!("SIGINT: draining (a second signal exits at once)"),
        _ = term.recv() => info!("SIGTERM: draining (a second signal exits at once)"),
    }
    shutdown.cancel();
    let second = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    warn!(signal = second, "second signal: exiting now without waiting for the drain; uncommitted records are delivered again after the restart");
    eprintln!("connect: {second} during the drain; exiting without committing more");
    std::process::exit(INTERRUPTED);
}
