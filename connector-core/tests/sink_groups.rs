//! Sink tasks as members of a consumer group, on real Tansu (and Mosquitto): one task instance
//! lives through several assignments (epochs), opening and closing partitions without `stop`.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runtime::{SinkEpoch, SinkRuntimeConfig, SinkTaskRuntime};
use connector_core::{
    MemoryOffsetStore, OffsetStore, Result, SinkRecord, SinkTask, SinkTaskContext, TopicPartition,
};
use connector_testkit::{init_tracing, Tansu};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Records every call: (partition, offset) of each record put, and the lifecycle calls in order.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(i32, i64)>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

fn parts(tps: &[TopicPartition]) -> String {
    tps.iter().map(|tp| tp.partition.to_string()).collect::<Vec<_>>().join(",")
}

#[async_trait]
impl SinkTask for Recorder {
    async fn start(&mut self, _ctx: SinkTaskContext) -> Result<()> {
        self.calls.lock().push("start".into());
        Ok(())
    }
    async fn open(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        self.calls.lock().push(format!("open {}", parts(partitions)));
        Ok(())
    }
    async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
        self.seen.lock().extend(records.iter().map(|r| (r.partition, r.offset)));
        Ok(())
    }
    async fn close(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        self.calls.lock().push(format!("close {}", parts(partitions)));
        Ok(())
    }
    async fn stop(&mut self) -> Result<()> {
        self.calls.lock().push("stop".into());
        Ok(())
    }
}

async fn produce(client: &KafkaClient, topic: &str, partition: i32, n: usize) {
    let records = (0..n)
        .map(|i| ProducerRecord::new(topic, format!("{partition}-{i}")).with_partition(partition))
        .collect();
    client.produce(records).await.unwrap();
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The open/close contract: one task instance is started once, opens and closes the partitions
/// of each epoch (ended by its token, drained and committed, no `stop`), is stopped once at the
/// end; a partition kept across epochs resumes at the committed offset (no record twice), a
/// partition revoked is not read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_instance_opens_and_closes_each_epoch_and_stops_once() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("epochs", 3, 1).await.unwrap();
    for p in 0..3 {
        produce(&client, "epochs", p, 100).await;
    }
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let task = Recorder::default();
    let tp = |p| TopicPartition::new("epochs", p);
    let runtime = SinkTaskRuntime::new(
        "epochs",
        0,
        Box::new(task.clone()),
        client.clone(),
        Arc::clone(&store),
        Vec::new(),
    )
    .with_config(SinkRuntimeConfig { commit_interval_ms: 60_000, ..SinkRuntimeConfig::default() });
    let (epochs, rx) = tokio::sync::mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(runtime.run_epochs(rx, shutdown.clone()));

    // Epoch 1: partitions 0 and 1.
    let (epoch, closed) = SinkEpoch::new(vec![tp(0), tp(1)], Arc::clone(&store));
    let end = epoch.end.clone();
    epochs.send(epoch).await.unwrap();
    wait_for("epoch 1's 200 records", Duration::from_secs(15), || task.seen.lock().len() >= 200)
        .await;
    end.cancel();
    closed.await.unwrap().unwrap();
    let committed = store.load("epochs").await.unwrap();
    assert_eq!(committed.kafka_offset(&tp(0)), Some(100), "epoch 1 did not commit at its end");
    assert_eq!(committed.kafka_offset(&tp(1)), Some(100));

    // Epoch 2: partition 1 stays, 0 is revoked, 2 is new; more records on all three.
    for p in 0..3 {
        produce(&client, "epochs", p, 50).await;
    }
    let (epoch, closed) = SinkEpoch::new(vec![tp(1), tp(2)], Arc::clone(&store));
    let end = epoch.end.clone();
    epochs.send(epoch).await.unwrap();
    wait_for("epoch 2's 200 records", Duration::from_secs(15), || task.seen.lock().len() >= 400)
        .await;
    end.cancel();
    closed.await.unwrap().unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let seen = task.seen.lock().clone();
    let mut per: HashMap<i32, Vec<i64>> = HashMap::new();
    for (p, o) in &seen {
        per.entry(*p).or_default().push(*o);
    }
    assert_eq!(per[&0], (0..100).collect::<Vec<_>>(), "partition 0 read after its revocation");
    assert_eq!(per[&1], (0..150).collect::<Vec<_>>(), "partition 1 not resumed where committed");
    assert_eq!(per[&2], (0..150).collect::<Vec<_>>());
    let committed = store.load("epochs").await.unwrap();
    assert_eq!(committed.kafka_offset(&tp(1)), Some(150));
    assert_eq!(committed.kafka_offset(&tp(2)), Some(150));
    assert_eq!(
        *task.calls.lock(),
        ["start", "open 0,1", "close 0,1", "open 1,2", "close 1,2", "stop"],
        "open/close contract"
    );
    println!("2 epochs on one task instance: {} records, none twice", seen.len());
}
