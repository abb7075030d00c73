//! `my-connect --config FILE`: the `connect run` of an application with its own connector types.

use std::process::ExitCode;

use connector_core::runner::{run, ConnectFile};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    // The library logs through `tracing` and is silent until the application installs a
    // subscriber. RUST_LOG=debug (or connector_core=debug,...) shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let Some(path) = std::env::args().nth(2) else {
        eprintln!("usage: my-connect --config FILE");
        return ExitCode::from(2);
    };
    // Parses and validates every connector (each one's `validate()`) before any is created,
    // and reports every problem with its key path.
    let file = match ConnectFile::load(path.as_ref(), &downstream::registry()) {
        Ok(file) => file,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await; // SIGINT: drain, commit, exit
        stop.cancel();
    });
    match run(file, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("my-connect: {}", e.report());
            ExitCode::FAILURE
        }
    }
}
