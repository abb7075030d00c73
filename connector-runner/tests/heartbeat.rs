//! The worked example of docs/writing-a-connector.md, tested the way the guide shows: a real
//! Kafka-compatible broker from the test kit, the connector run by the runtime, the records read
//! back, then a restart that goes on counting.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use connector_core::runtime::{SourceRuntime, SourceRuntimeConfig};
use connector_core::{MemoryOffsetStore, OffsetStore, SourceConnector};
use connector_runner::{HeartbeatConfig, HeartbeatConnector};
use connector_testkit::{kafka, Tansu};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_numbered_and_the_count_resumes_after_a_restart() {
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let offsets: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let config =
        HeartbeatConfig { topic: "heartbeats".into(), device: "pump-1".into(), interval_ms: 20 };

    for run in 0..2 {
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
        kafka::consume_at_least(
            &tansu.client().await.unwrap(),
            "heartbeats",
            10 * (run + 1),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        shutdown.cancel();
        handle.await.unwrap().unwrap();
    }

    let records = kafka::consume_all(&client, "heartbeats").await.unwrap();
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "numbered without gaps or repeats across the restart"
    );
    assert!(records.iter().all(|r| r.key.as_deref() == Some(&b"pump-1"[..])));
}
