//! The [`Worker`] on a real broker: two connectors side by side, pausing one (nothing reaches
//! Kafka while paused, nothing is lost after resume), stopping one while the other keeps flowing
//! (its offsets committed: started again it resumes from them, no gap), a failed task reported
//! with its error and restarted, and a paused sink delivering nothing.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runtime::{
    ConnectorSpec, ConnectorState, SinkRuntimeConfig, SourceRuntimeConfig, TaskState, Worker,
};
use connector_core::{
    DynSinkConnector, DynSourceConnector, Error, MemoryOffsetStore, OffsetStore, Result,
    SinkRecord, SinkTask, SinkTaskContext, SourceOffset, SourcePartition, SourceRecord, SourceTask,
    SourceTaskContext, StartFrom, TopicPartition,
};
use connector_testkit::{init_tracing, kafka, Tansu};
use parking_lot::Mutex;
use serde_json::Value;

fn partition() -> SourcePartition {
    SourcePartition::from([("source", "ticker")])
}

fn offset(n: u64) -> SourceOffset {
    SourceOffset::from([("next", n)])
}

/// A source connector of one task numbering its records from where its offsets say; fails once
/// when it reaches `fail_at`.
#[derive(Clone)]
struct Ticker {
    topic: String,
    fail_at: Arc<Mutex<Option<u64>>>,
    started_from: Arc<Mutex<Vec<u64>>>,
}

impl Ticker {
    fn new(topic: &str) -> Self {
        Self { topic: topic.into(), fail_at: Arc::default(), started_from: Arc::default() }
    }
}

struct TickerTask {
    ticker: Ticker,
    next: u64,
}

impl DynSourceConnector for Ticker {
    fn max_in_flight_records(&self) -> Option<usize> {
        None
    }
    fn create_tasks(&self, _max_tasks: usize) -> Result<Vec<Box<dyn SourceTask>>> {
        Ok(vec![Box::new(TickerTask { ticker: self.clone(), next: 0 })])
    }
}

#[async_trait]
impl SourceTask for TickerTask {
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()> {
        self.next = ctx
            .offset(&partition())
            .and_then(|o| o.get("next"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.ticker.started_from.lock().push(self.next);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut fail_at = self.ticker.fail_at.lock();
        if fail_at.is_some_and(|at| self.next >= at) {
            *fail_at = None;
            return Err(Error::fatal(format!("injected failure at {}", self.next)));
        }
        drop(fail_at);
        let records = (self.next..self.next + 5)
            .map(|i| {
                SourceRecord::new(self.ticker.topic.clone(), i.to_string())
                    .with_source(partition(), offset(i + 1))
            })
            .collect();
        self.next += 5;
        Ok(records)
    }
}

fn source_spec(ticker: &Ticker) -> ConnectorSpec {
    let config = SourceRuntimeConfig { offset_flush_interval_ms: 50, ..Default::default() };
    ConnectorSpec::Source { connector: Arc::new(ticker.clone()), config }
}

/// The distinct numbers in `topic`.
async fn values(client: &KafkaClient, topic: &str) -> BTreeSet<u64> {
    let records = kafka::consume_all(client, topic).await.unwrap();
    records
        .iter()
        .filter_map(|r| std::str::from_utf8(r.value.as_deref()?).ok()?.parse().ok())
        .collect()
}

async fn high_watermark(client: &KafkaClient, topic: &str) -> i64 {
    client.end_offset(topic, 0).await.unwrap()
}

async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn task_state(worker: &Worker, name: &str) -> TaskState {
    worker.status(name).unwrap().tasks[0].state.clone()
}

async fn stored_next(store: &MemoryOffsetStore, name: &str) -> u64 {
    let offsets = store.load(name).await.unwrap();
    offsets.get(&partition()).and_then(|o| o.get("next")).and_then(Value::as_u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_source_back_losing_nothing_and_stop_leaves_the_other_flowing() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    for t in ["wa", "wb"] {
        client.create_topic(t, 1, 1).await.unwrap();
    }
    let store = Arc::new(MemoryOffsetStore::new());
    let worker = Worker::new(client.clone(), Arc::clone(&store) as Arc<dyn OffsetStore>);
    let (a, b) = (Ticker::new("wa"), Ticker::new("wb"));
    worker.start("a", source_spec(&a)).await.unwrap();
    worker.start("b", source_spec(&b)).await.unwrap();
    assert_eq!(worker.connectors(), ["a", "b"]);
    let t = Duration::from_secs(10);
    wait_until_async("both connectors writing", t, || async {
        high_watermark(&client, "wa").await > 50 && high_watermark(&client, "wb").await > 50
    })
    .await;
    assert!(matches!(task_state(&worker, "a"), TaskState::Running));

    // Paused: once what was in flight is acknowledged, nothing more reaches Kafka.
    worker.pause("a").await.unwrap();
    assert_eq!(worker.status("a").unwrap().state, ConnectorState::Paused);
    assert!(matches!(task_state(&worker, "a"), TaskState::Paused));
    let stats = worker.stats("a").unwrap();
    wait_until_async("a's in-flight records acknowledged", t, || async {
        stats.snapshot().in_flight == 0
    })
    .await;
    let held = high_watermark(&client, "wa").await;
    let b_before = high_watermark(&client, "wb").await;
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(400) {
        assert_eq!(high_watermark(&client, "wa").await, held, "a paused source wrote to Kafka");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(high_watermark(&client, "wb").await > b_before, "b stopped while a was paused");

    // Resumed: it goes on where it stopped.
    worker.resume("a").await.unwrap();
    wait_until_async("a writing again", t, || async {
        high_watermark(&client, "wa").await > held + 50
    })
    .await;

    // Stopped: a's offsets are committed, b keeps flowing.
    worker.stop("a").await.unwrap();
    assert_eq!(worker.connectors(), ["b"]);
    let committed = stored_next(&store, "a").await;
    let in_kafka = values(&client, "wa").await;
    assert_eq!(
        in_kafka.iter().next_back().map(|n| n + 1),
        Some(committed),
        "the drain committed everything Kafka acknowledged"
    );
    let b_at_stop = high_watermark(&client, "wb").await;
    wait_until_async("b still flowing", t, || async {
        high_watermark(&client, "wb").await > b_at_stop + 50
    })
    .await;

    // Started again, it resumes from the committed offset: no gap, nothing lost.
    worker.start("a", source_spec(&a)).await.unwrap();
    wait_until_async("a resumed", t, || async { high_watermark(&client, "wa").await > held + 150 })
        .await;
    assert_eq!(a.started_from.lock().last().copied(), Some(committed));
    worker.shutdown().await;
    let all = values(&client, "wa").await;
    let max = *all.iter().next_back().unwrap();
    assert_eq!(all.len() as u64, max + 1, "a gap in a's numbers");
    assert_eq!(stored_next(&store, "a").await, max + 1);
    assert!(worker.connectors().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_is_reported_with_its_error_and_restart_task_runs_it_again() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("wf", 1, 1).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let worker = Worker::new(client.clone(), Arc::clone(&store) as Arc<dyn OffsetStore>);
    let ticker = Ticker::new("wf");
    *ticker.fail_at.lock() = Some(40);
    worker.start("f", source_spec(&ticker)).await.unwrap();

    let failure =
        tokio::time::timeout(Duration::from_secs(10), worker.wait_failed()).await.unwrap();
    assert_eq!((failure.connector.as_str(), failure.task), ("f", 0));
    assert!(failure.error.to_string().contains("injected failure at 40"), "{}", failure.error);
    let TaskState::Failed(e) = task_state(&worker, "f") else { panic!("not reported failed") };
    assert!(e.to_string().contains("injected failure at 40"));
    // Failed stays failed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(task_state(&worker, "f"), TaskState::Failed(_)));

    worker.restart_task("f", 0).await.unwrap();
    wait_until_async("the restarted task running", Duration::from_secs(10), || async {
        matches!(task_state(&worker, "f"), TaskState::Running)
    })
    .await;
    wait_until_async("records after the failure", Duration::from_secs(10), || async {
        values(&client, "wf").await.iter().next_back().is_some_and(|&n| n > 100)
    })
    .await;
    // It resumed from what was committed before the failure (at most the failure point): no gap.
    let started = ticker.started_from.lock().clone();
    assert!(started.len() == 2 && started[0] == 0 && started[1] <= 40, "{started:?}");
    let all = values(&client, "wf").await;
    assert_eq!(all.len() as u64, all.iter().next_back().unwrap() + 1, "a gap");
    assert!(tokio::time::timeout(Duration::from_millis(50), worker.wait_failed()).await.is_err());
    worker.shutdown().await;
}

/// Records every offset put.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<i64>>>,
}

#[async_trait]
impl SinkTask for Recorder {
    async fn start(&mut self, _ctx: SinkTaskContext) -> Result<()> {
        Ok(())
    }

    async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
        self.seen.lock().extend(records.iter().map(|r| r.offset));
        Ok(())
    }

    async fn pre_commit(
        &mut self,
        offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<HashMap<TopicPartition, i64>> {
        Ok(offsets.clone())
    }
}

/// Two tasks over a one-partition topic: the second has nothing to read.
struct TwoTasks {
    task: Recorder,
}

impl DynSinkConnector for TwoTasks {
    fn topics(&self) -> Vec<String> {
        vec!["ws".into()]
    }
    fn start_from(&self) -> StartFrom {
        StartFrom::Earliest
    }
    fn create_tasks(&self, _max_tasks: usize) -> Result<Vec<Box<dyn SinkTask>>> {
        Ok(vec![Box::new(self.task.clone()), Box::new(self.task.clone())])
    }
}

async fn produce(client: &KafkaClient, n: usize) {
    let records = (0..n).map(|i| ProducerRecord::new("ws", i.to_string())).collect();
    client.produce(records).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sink_delivers_nothing_until_resumed() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("ws", 1, 1).await.unwrap();
    produce(&client, 10).await;
    let worker = Worker::new(client.clone(), Arc::new(MemoryOffsetStore::new()));
    let task = Recorder::default();
    let config = SinkRuntimeConfig { commit_interval_ms: 50, ..Default::default() };
    let connector = Arc::new(TwoTasks { task: task.clone() });
    worker.start("s", ConnectorSpec::Sink { connector, config }).await.unwrap();
    let t = Duration::from_secs(10);
    wait_until_async("the first records put", t, || async { task.seen.lock().len() == 10 }).await;
    let status = worker.status("s").unwrap();
    assert!(matches!(status.tasks[0].state, TaskState::Running));
    assert!(matches!(status.tasks[1].state, TaskState::Unassigned), "{status:?}");

    worker.pause("s").await.unwrap();
    assert!(matches!(task_state(&worker, "s"), TaskState::Paused));
    produce(&client, 10).await;
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(500) {
        assert_eq!(task.seen.lock().len(), 10, "a paused sink put records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.resume("s").await.unwrap();
    wait_until_async("the records produced while paused", t, || async {
        task.seen.lock().len() == 20
    })
    .await;
    assert_eq!(*task.seen.lock(), (0..20).collect::<Vec<i64>>());
    worker.shutdown().await;
}
