//! `connect`: runs the connectors of a TOML configuration file.
//!
//! ```text
//! connect run --config FILE       run every connector until SIGINT/SIGTERM, then drain; exit 0
//! connect validate --config FILE  exit 0 if valid, else print each problem with its key path
//! connect schema [--markdown]     print the JSON Schema of the configuration file
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use connector_core::runner::{file_schema, markdown, run, ConnectFile};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

fn load(path: &Path) -> Result<ConnectFile, ExitCode> {
    ConnectFile::load(path, &connector_runner::builtin_registry()).map_err(|errors| {
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
        Command::Validate { config } => match load(&config) {
            Ok(file) => {
                println!("{}: valid, {} connector(s)", config.display(), file.connectors.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config, log_format } => {
            let file = match load(&config) {
                Ok(f) => f,
                Err(code) => return code,
            };
            init_logging(log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("connect: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
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
