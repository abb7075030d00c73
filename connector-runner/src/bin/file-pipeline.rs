//! Runs the example file source (file -> Kafka) or file sink (Kafka -> file) until SIGINT/SIGTERM,
//! then drains and commits.
//!
//! ```text
//! file-pipeline source --bootstrap HOST:PORT --file PATH --topic TOPIC --offsets FILE
//!                      [--format text|json] [--name NAME] [--offset-flush-ms N] [--max-in-flight N]
//! file-pipeline sink   --bootstrap HOST:PORT --topic TOPIC --file PATH --offsets FILE
//!                      [--format text|json] [--name NAME] [--commit-ms N] [--start earliest|latest]
//! ```

#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use connector_core::kafka::{KafkaClient, KafkaConfig};
use connector_core::runtime::{
    SinkRuntime, SinkRuntimeConfig, SourceRuntime, SourceRuntimeConfig, TaskStats,
};
use connector_core::{ConnectorConfig, FileOffsetStore, SinkConnector, SourceConnector, StartFrom};
use connector_runner::{
    FileSinkConfig, FileSinkConnector, FileSourceConfig, FileSourceConnector, LineFormat,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

const USAGE: &str = "usage:
  file-pipeline source --bootstrap HOST:PORT --file PATH --topic TOPIC --offsets FILE [--format text|json] [--name NAME] [--offset-flush-ms N] [--max-in-flight N]
  file-pipeline sink   --bootstrap HOST:PORT --topic TOPIC --file PATH --offsets FILE [--format text|json] [--name NAME] [--commit-ms N] [--start earliest|latest]";

fn parse(args: &[String]) -> Result<(String, HashMap<String, String>), String> {
    let mode = args.first().cloned().ok_or("missing mode (source or sink)")?;
    let mut opts = HashMap::new();
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let key = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        opts.insert(key.to_owned(), value.clone());
    }
    Ok((mode, opts))
}

fn take(opts: &mut HashMap<String, String>, key: &str) -> Result<String, String> {
    opts.remove(key).ok_or_else(|| format!("--{key} is required"))
}

fn number<T: std::str::FromStr>(
    opts: &mut HashMap<String, String>,
    key: &str,
    default: T,
) -> Result<T, String> {
    match opts.remove(key) {
        Some(v) => v.parse().map_err(|_| format!("--{key}: expected a number, got {v:?}")),
        None => Ok(default),
    }
}

fn format(opts: &mut HashMap<String, String>) -> Result<LineFormat, String> {
    match opts.remove("format").as_deref() {
        None | Some("text") => Ok(LineFormat::Text),
        Some("json") => Ok(LineFormat::Json),
        Some(other) => Err(format!("--format: expected text or json, got {other:?}")),
    }
}

async fn run(args: Vec<String>) -> Result<(), String> {
    let (mode, mut opts) = parse(&args)?;
    let bootstrap = take(&mut opts, "bootstrap")?;
    let offsets_path = PathBuf::from(take(&mut opts, "offsets")?);
    let file = PathBuf::from(take(&mut opts, "file")?);
    let topic = take(&mut opts, "topic")?;
    let format = format(&mut opts)?;
    let name = opts.remove("name").unwrap_or_else(|| format!("file-{mode}"));

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let client =
        KafkaClient::connect(KafkaConfig::new([bootstrap])).await.map_err(|e| e.report())?;
    let offsets = Arc::new(FileOffsetStore::open(&offsets_path).await.map_err(|e| e.report())?);
    let stats = Arc::new(TaskStats::new());
    spawn_progress(name.clone(), Arc::clone(&stats), shutdown.clone());

    let result = match mode.as_str() {
        "source" => {
            let config = FileSourceConfig {
                path: file,
                topic,
                format,
                batch_lines: 1000,
                poll_interval_ms: 20,
            };
            let runtime = SourceRuntimeConfig {
                offset_flush_interval_ms: number(&mut opts, "offset-flush-ms", 200)?,
                max_in_flight_records: number(&mut opts, "max-in-flight", 2000)?,
                ..SourceRuntimeConfig::default()
            };
            reject_leftovers(&opts)?;
            config.validate().into_result().map_err(|e| e.to_string())?;
            let connector = FileSourceConnector::create(&name, config).map_err(|e| e.report())?;
            SourceRuntime::builder(name.as_str(), &connector, client, offsets)
                .config(runtime)
                .stats(stats)
                .max_tasks(1)
                .run(shutdown)
                .await
        }
        "sink" => {
            let start = match opts.remove("start").as_deref() {
                None | Some("earliest") => StartFrom::Earliest,
                Some("latest") => StartFrom::Latest,
                Some(other) => {
                    return Err(format!("--start: expected earliest or latest, got {other:?}"))
                }
            };
            let runtime = SinkRuntimeConfig {
                commit_interval_ms: number(&mut opts, "commit-ms", 200)?,
                ..SinkRuntimeConfig::default()
            };
            reject_leftovers(&opts)?;
            let config = FileSinkConfig { path: file, topics: vec![topic], format, start };
            config.validate().into_result().map_err(|e| e.to_string())?;
            let connector = FileSinkConnector::create(&name, config).map_err(|e| e.report())?;
            SinkRuntime::builder(name.as_str(), &connector, client, offsets)
                .config(runtime)
                .stats(stats)
                .max_tasks(1)
                .run(shutdown)
                .await
        }
        other => return Err(format!("unknown mode {other:?}")),
    };
    result.map_err(|e| e.report())
}

fn reject_leftovers(opts: &HashMap<String, String>) -> Result<(), String> {
    match opts.keys().next() {
        Some(k) => Err(format!("unknown option --{k}")),
        None => Ok(()),
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("signal received; draining");
        shutdown.cancel();
    });
}

fn spawn_progress(name: String, stats: Arc<TaskStats>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let s = stats.snapshot();
            info!(connector = %name, records_in = s.records_in, records_out = s.records_out, committed = s.committed, in_flight = s.in_flight, errors = s.errors, "progress");
        }
    });
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("file-pipeline: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("file-pipeline: {e}\n{USAGE}");
        std::process::exit(1);
    }
}
