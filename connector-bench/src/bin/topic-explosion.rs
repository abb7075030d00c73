//! `topic-explosion`: the memory of the `connect` runner while publishers invent Kafka topics.
//!
//! Starts Mosquitto and Tansu and a `connect` process with one MQTT source whose `kafka_topic`
//! template takes a topic level (`explode/{device}` -> `explode.{device}`), with
//! `runtime.max_kafka_topics` and a dead-letter topic. Then it publishes `--messages` QoS 1
//! messages, each on a new MQTT topic, in steps. After each step it waits until every message is
//! accounted for: the first `max_kafka_topics` topics are written, and the rest are dead-lettered
//! as over the limit. Then it prints the `connect` process's RSS. A flat RSS column means that
//! per-topic state is bounded. `docs/benchmarks.md` has the figures and the command.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "bench/procstat.rs"]
#[allow(dead_code)]
mod procstat;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use connector_testkit::{Mosquitto, MqttPublisher, Tansu};
use rumqttc::QoS;

/// Measures the runner's RSS while messages arrive on ever new topics.
#[derive(Parser, Debug)]
#[command(name = "topic-explosion")]
struct Cli {
    /// Messages, each on its own MQTT topic (so its own Kafka topic).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// `runtime.max_kafka_topics` of the source.
    #[arg(long, default_value_t = 1_000)]
    max_topics: u64,
    /// `runtime.kafka_topic_idle_ms` of the source.
    #[arg(long, default_value_t = 300_000)]
    idle_ms: u64,
    /// Messages per step (an RSS sample after each).
    #[arg(long, default_value_t = 10_000)]
    step: u64,
    /// The `connect` binary (default: next to this one).
    #[arg(long)]
    connect: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("topic-explosion: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run(cli: Cli) -> Result<(), String> {
    let connect = match cli.connect {
        Some(p) => p,
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("connect"),
    };
    let mqtt = Mosquitto::start().await.map_err(|e| format!("mosquitto: {e}"))?;
    let tansu = Tansu::start().await.map_err(|e| format!("tansu: {e}"))?;
    let client = tansu.client().await.map_err(|e| format!("kafka: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]
topic_partitions = 1
[offsets]
store = "memory"
[progress]
interval_secs = 0

[[connector]]
name = "explode"
type = "mqtt-source"
mqtt_url = "{}"
topics = ["explode/+"]
kafka_topic = "explode.{{1}}"
runtime = {{ max_kafka_topics = {}, kafka_topic_idle_ms = {} }}
errors = {{ tolerance = "all", dead_letter_topic = "explode-dlq" }}
"#,
        tansu.bootstrap(),
        mqtt.url(),
        cli.max_topics,
        cli.idle_ms
    );
    let path = dir.path().join("explode.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.path().join("connect.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new(&connect)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", connect.display()))?;
    let pid = child.id();
    let publisher =
        MqttPublisher::connect(&mqtt.url(), "explode-pub").await.map_err(|e| e.to_string())?;
    connector_testkit::wait_source_subscribed(
        &publisher,
        "explode/probe",
        b"probe",
        &client,
        "explode.probe",
    )
    .await
    .map_err(|e| e.to_string())?;
    let probes = publisher.acknowledged();
    // The probes' topic is one of the admitted ones.
    let admitted = cli.max_topics.saturating_sub(1);

    println!("| messages (= topics) sent | topics written | dead-lettered | connect RSS MiB | Tansu RSS MiB | seconds |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut sent = 0u64;
    let payload = vec![b'x'; 100];
    while sent < cli.messages {
        let n = cli.step.min(cli.messages - sent);
        for i in sent..sent + n {
            publisher
                .publish(&format!("explode/d{i}"), QoS::AtLeastOnce, false, payload.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        sent += n;
        publisher
            .wait_acknowledged(probes + sent, Duration::from_secs(600))
            .await
            .map_err(|e| e.to_string())?;
        let dead = sent.saturating_sub(admitted);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let got = client.end_offset("explode-dlq", 0).await.unwrap_or(0);
            if u64::try_from(got).unwrap_or(0) >= dead {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("connect exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("{got} of {dead} dead letters after {sent} messages"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rss = procstat::sample(pid).map_or(0, |s| s.rss);
        let tansu_rss = tansu.pid().and_then(procstat::sample).map_or(0, |s| s.rss);
        println!(
            "| {sent} | {} | {dead} | {:.1} | {:.1} | {:.0} |",
            sent.min(admitted) + 1,
            mib(rss),
            mib(tansu_rss),
            start.elapsed().as_secs_f64()
        );
    }
    let peak = procstat::sample(pid).map_or(0, |s| s.peak_rss);
    println!("connect peak RSS (VmHWM): {:.1} MiB", mib(peak));
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
