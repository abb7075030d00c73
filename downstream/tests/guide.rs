//! docs/writing-a-connector.md as a user reads it: every Rust and Cargo.toml snippet of the guide
//! is a verbatim excerpt of this crate's files (so the guide compiles because they do), the
//! registry knows the built-in types and ours, a config is validated before anything is created,
//! and the heartbeat connector runs on a real Kafka-compatible broker and resumes its count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use connector_core::runner::ConnectFile;
use connector_core::runtime::{SourceRuntime, SourceRuntimeConfig};
use connector_core::{ConnectorConfig, MemoryOffsetStore, OffsetStore, SourceConnector};
use connector_testkit::{kafka, Tansu};
use downstream::heartbeat::{HeartbeatConfig, HeartbeatConnector};
use tokio_util::sync::CancellationToken;

/// The fenced blocks of `lang` in the guide.
fn snippets(lang: &str) -> Vec<String> {
    let guide = include_str!("../../docs/writing-a-connector.md");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in guide.lines() {
        match &mut current {
            None if line.trim_end() == format!("```{lang}") => current = Some(String::new()),
            Some(block) if line.trim_end() == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_rust_and_toml_snippet_of_the_guide_is_in_this_crate() {
    let sources = [
        include_str!("../Cargo.toml"),
        include_str!("../src/heartbeat.rs"),
        include_str!("../src/lib.rs"),
        include_str!("../src/main.rs"),
        include_str!("guide.rs"),
        include_str!("../../examples/src/bin/embedded-app.rs"),
    ];
    let rust = snippets("rust");
    assert!(rust.len() >= 5, "the guide has its Rust snippets");
    for block in rust.iter().chain(snippets("toml").iter().filter(|b| b.contains("[dependencies]")))
    {
        assert!(
            sources.iter().any(|s| s.contains(block.as_str())),
            "this guide snippet is not verbatim in downstream/ (copy the code, not the other way):\n{block}"
        );
    }
}

#[test]
fn the_registry_has_the_built_in_types_and_ours() {
    let registry = downstream::registry();
    let names: Vec<_> = registry.type_names().collect();
    assert_eq!(
        names,
        ["file-sink", "file-source", "heartbeat", "mqtt-sink", "mqtt-source", "my-heartbeat"]
    );
}

#[test]
fn a_config_file_is_validated_before_anything_is_created() {
    let good = r#"
[kafka]
bootstrap_servers = ["127.0.0.1:9092"]

[[connector]]
name = "pump-1-heartbeat"
type = "my-heartbeat"
topic = "heartbeats"
device = "pump-1"
interval_ms = 1000

[[connector]]
name = "telemetry"
type = "mqtt-source"
mqtt_url = "mqtt://127.0.0.1:1883"
topics = ["plant/#"]
kafka_topic = "plant"
"#;
    let file = ConnectFile::parse(good, &downstream::registry()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.connectors.len(), 2);

    let bad = good.replace("interval_ms = 1000", "interval_ms = 0");
    let errors = ConnectFile::parse(&bad, &downstream::registry()).unwrap_err().to_string();
    assert!(errors.contains("connector[0].interval_ms: must be at least 1"), "{errors}");

    let config = HeartbeatConfig { topic: "bad topic".into(), device: "".into(), interval_ms: 0 };
    assert_eq!(config.validate().iter().count(), 3, "every problem at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_numbered_and_the_count_resumes_after_a_restart() {
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let offsets: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let config =
        HeartbeatConfig { topic: "heartbeats".into(), device: "pump-1".into(), interval_ms: 20 };
    config.validate().into_result().unwrap();

    for run in 0..2 {
        // run twice with the same offsets store; stop each run gracefully
        let connector = HeartbeatConnector::create("pump-1-heartbeat", config.clone()).unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let (client, offsets) = (client.clone(), Arc::clone(&offsets));
        let handle = tokio::spawn(async move {
            let runtime =
                SourceRuntimeConfig { offset_flush_interval_ms: 50, ..Default::default() };
            SourceRuntime::builder("pump-1-heartbeat", &connector, client, offsets)
                .config(runtime)
                .max_tasks(1)
                .run(stop)
                .await
        });
        let wanted = 10 * (run + 1);
        let reader = tansu.client().await.unwrap();
        kafka::consume_at_least(&reader, "heartbeats", wanted, Duration::from_secs(20))
            .await
            .unwrap();
        shutdown.cancel();
        handle.await.unwrap().unwrap();
    }

    let records = kafka::consume_all(&client, "heartbeats").await.unwrap();
    // every seq from 0, no gaps, no repeats: the second run resumed where the first stopped
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
}
