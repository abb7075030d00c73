//! The sink runtime on a real broker (Tansu): a task's commit request is committed long before
//! `commit_interval_ms`; partitions that appear in a sink's topic while it runs are read.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runtime::{CommitRequester, SinkRuntime, SinkRuntimeConfig, SinkTaskRuntime};
use connector_core::{
    DynSinkConnector, MemoryOffsetStore, OffsetStore, Result, SinkRecord, SinkTask,
    SinkTaskContext, StartFrom, TopicPartition,
};
use connector_testkit::{init_tracing, Tansu};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Records (partition, offset) of every record put; requests a commit after each put.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(i32, i64)>>>,
    commit: Arc<Mutex<Option<CommitRequester>>>,
}

#[async_trait]
impl SinkTask for Recorder {
    async fn start(&mut self, ctx: SinkTaskContext) -> Result<()> {
        *self.commit.lock() = Some(ctx.commit_requester());
        Ok(())
    }

    async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
        self.seen.lock().extend(records.iter().map(|r| (r.partition, r.offset)));
        let commit = self.commit.lock().clone();
        if let Some(c) = commit {
            // As an acknowledgement callback would, from another task.
            tokio::spawn(async move { c.request() });
        }
        Ok(())
    }

    async fn pre_commit(
        &mut self,
        offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<HashMap<TopicPartition, i64>> {
        Ok(offsets.clone())
    }
}

struct OneTopic {
    topic: String,
    task: Recorder,
}

impl DynSinkConnector for OneTopic {
    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }
    fn start_from(&self) -> StartFrom {
        StartFrom::Earliest
    }
    fn create_tasks(&self, _max_tasks: usize) -> Result<Vec<Box<dyn SinkTask>>> {
        Ok(vec![Box::new(self.task.clone())])
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

/// Item 5: `request_commit` makes the runtime commit soon; `commit_interval_ms` (a minute here)
/// is only the upper bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_commit_is_saved_long_before_the_commit_interval() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("requested", 1, 1).await.unwrap();
    produce(&client, "requested", 0, 10).await;
    let store = Arc::new(MemoryOffsetStore::new());
    let task = Recorder::default();
    let tp = TopicPartition::new("requested", 0);
    let config = SinkRuntimeConfig { commit_interval_ms: 60_000, ..SinkRuntimeConfig::default() };
    let shutdown = CancellationToken::new();
    let runtime = SinkTaskRuntime::new(
        "req",
        0,
        Box::new(task.clone()),
        client.clone(),
        Arc::clone(&store) as Arc<dyn OffsetStore>,
        vec![tp.clone()],
    )
    .with_config(config);
    let run = tokio::spawn(runtime.run(shutdown.clone()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    loop {
        if store.load("req").await.unwrap().kafka_offset(&tp) == Some(10) {
            break;
        }
        assert!(Instant::now() < deadline, "not committed 5 s after the request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("committed {:?} after the sink started", started.elapsed());
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// Item 4: partitions that appear in a sink's topic while it runs are read, from the `start`
/// rule, within a metadata refresh interval. Tansu 0.6.0 has no CreatePartitions (API key 37 is
/// not among the requests it serves), so the topic grows by being deleted and created again with
/// three partitions: to the running sink, as to any Kafka client, partitions 1 and 2 appear in a
/// metadata refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_appear_while_the_sink_runs_are_read() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let mut kafka = tansu.kafka_config();
    kafka.metadata_max_age_ms = 500;
    let client = KafkaClient::connect(kafka).await.unwrap();
    client.create_topic("grow", 1, 1).await.unwrap();
    produce(&client, "grow", 0, 3).await;
    let task = Recorder::default();
    let connector = OneTopic { topic: "grow".into(), task: task.clone() };
    let shutdown = CancellationToken::new();
    let run = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            SinkRuntime::builder(
                "grow-sink",
                &connector,
                client,
                Arc::new(MemoryOffsetStore::new()),
            )
            .max_tasks(4)
            .run(shutdown)
            .await
        })
    };
    wait_for("the first 3 records", Duration::from_secs(15), || task.seen.lock().len() >= 3).await;

    client.delete_topic("grow").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.create_topic("grow", 3, 1).await {
            Ok(())
                if client
                    .refresh_topic("grow")
                    .await
                    .unwrap()
                    .is_some_and(|m| m.partition_count() == 3) =>
            {
                break
            }
            _ => assert!(Instant::now() < deadline, "could not re-create the topic"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&client, "grow", 1, 5).await;
    produce(&client, "grow", 2, 5).await;
    let added = Instant::now();
    wait_for("records of the added partitions", Duration::from_secs(15), || {
        let seen = task.seen.lock();
        let p1: BTreeSet<i64> = seen.iter().filter(|(p, _)| *p == 1).map(|(_, o)| *o).collect();
        let p2: BTreeSet<i64> = seen.iter().filter(|(p, _)| *p == 2).map(|(_, o)| *o).collect();
        p1.len() == 5 && p2.len() == 5
    })
    .await;
    println!("added partitions read {:?} after their records were written", added.elapsed());
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
