//! The source and sink runtimes on a real broker: ordered commit_record after Kafka's ack, no
//! commits while Kafka is cut, offsets never past an unacknowledged record, graceful drain,
//! retriable sink errors redelivering the same batch, and pre_commit deciding what is committed.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runtime::{
    SinkRuntimeConfig, SinkTaskRuntime, SourceRuntimeConfig, SourceTaskRuntime,
};
use connector_core::{
    Error, MemoryOffsetStore, OffsetStore, RecordMetadata, Result, SinkRecord, SinkTask,
    SinkTaskContext, SourceOffset, SourcePartition, SourceRecord, SourceTask, SourceTaskContext,
    TopicPartition,
};
use connector_testkit::{init_tracing, kafka, wait_until, Tansu, TansuStorage};
use parking_lot::Mutex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What the test source has been told, shared with the test.
#[derive(Default)]
struct Observed {
    committed: Vec<(u64, RecordMetadata)>,
    commits: usize,
    started_from: Option<u64>,
}

/// Emits `total` keyed records, `per_poll` at a time, numbered from where its offsets say.
struct Counter {
    topic: String,
    next: u64,
    total: u64,
    per_poll: u64,
    pause: Duration,
    observed: Arc<Mutex<Observed>>,
}

fn partition() -> SourcePartition {
    SourcePartition::from([("source", "counter")])
}

fn offset(n: u64) -> SourceOffset {
    SourceOffset::from([("next", n)])
}

#[async_trait]
impl SourceTask for Counter {
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()> {
        self.next = ctx
            .offset(&partition())
            .and_then(|o| o.get("next"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.observed.lock().started_from = Some(self.next);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        tokio::time::sleep(self.pause).await;
        let end = (self.next + self.per_poll).min(self.total);
        let records = (self.next..end)
            .map(|i| {
                SourceRecord::new(self.topic.clone(), i.to_string())
                    .with_key(format!("k{}", i % 13))
                    .with_source(partition(), offset(i + 1))
            })
            .collect();
        self.next = end;
        Ok(records)
    }

    async fn commit_record(
        &mut self,
        record: SourceRecord,
        metadata: Option<RecordMetadata>,
    ) -> Result<()> {
        let n: u64 = std::str::from_utf8(record.value.as_deref().unwrap_or_default())
            .unwrap()
            .parse()
            .unwrap();
        let metadata = metadata.ok_or_else(|| Error::fatal("no metadata"))?;
        self.observed.lock().committed.push((n, metadata));
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.observed.lock().commits += 1;
        Ok(())
    }
}

fn counter(
    topic: &str,
    total: u64,
    per_poll: u64,
    pause: Duration,
) -> (Counter, Arc<Mutex<Observed>>) {
    let observed = Arc::new(Mutex::new(Observed::default()));
    let task = Counter {
        topic: topic.into(),
        next: 0,
        total,
        per_poll,
        pause,
        observed: Arc::clone(&observed),
    };
    (task, observed)
}

async fn stored_next(store: &MemoryOffsetStore, name: &str) -> u64 {
    store
        .load(name)
        .await
        .unwrap()
        .get(&partition())
        .and_then(|o| o.get("next"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Runs `task` as task 0 of connector `name` in the background.
fn spawn_source(
    name: &str,
    task: Counter,
    client: &KafkaClient,
    store: &Arc<MemoryOffsetStore>,
    config: SourceRuntimeConfig,
) -> (tokio::task::JoinHandle<Result<()>>, Arc<connector_core::runtime::TaskStats>, CancellationToken)
{
    let shutdown = CancellationToken::new();
    let store = Arc::clone(store) as Arc<dyn OffsetStore>;
    let runtime =
        SourceTaskRuntime::new(name, 0, Box::new(task), client.clone(), store).with_config(config);
    let stats = runtime.stats();
    let run = tokio::spawn(runtime.run(shutdown.clone()));
    (run, stats, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_record_runs_in_poll_order_after_kafka_acknowledged_across_partitions() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let mut config = tansu.kafka_config();
    config.topic_partitions = 8;
    let client = KafkaClient::connect(config).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let (task, observed) = counter("ordered", 5000, 250, Duration::ZERO);
    let (run, stats, shutdown) = spawn_source(
        "ordered",
        task,
        &client,
        &store,
        SourceRuntimeConfig {
            max_in_flight_records: 1000,
            offset_flush_interval_ms: 50,
            ..Default::default()
        },
    );
    wait_until("5000 committed records", Duration::from_secs(60), || {
        observed.lock().committed.len() == 5000
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();

    {
        let observed = observed.lock();
        let order: Vec<u64> = observed.committed.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, (0..5000).collect::<Vec<_>>(), "commit_record follows poll order");
        let partitions: std::collections::BTreeSet<i32> =
            observed.committed.iter().map(|(_, m)| m.partition).collect();
        assert!(
            partitions.len() > 1,
            "records spread over partitions, so acks arrived out of order"
        );
        assert!(observed.commits >= 1);
    }
    assert_eq!(stored_next(&store, "ordered").await, 5000);
    assert_eq!(kafka::count(&client, "ordered").await.unwrap(), 5000);
    let s = stats.snapshot();
    assert_eq!((s.records_in, s.records_out, s.committed, s.in_flight), (5000, 5000, 5000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_while_kafka_is_cut_and_nothing_is_lost_after_it_heals() {
    init_tracing();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let mut config = tansu.kafka_config();
    config.request_timeout_ms = 2_000;
    let client = KafkaClient::connect(config).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let (task, observed) = counter("cut", 6000, 100, Duration::from_millis(20));
    let (run, _stats, shutdown) = spawn_source(
        "cut",
        task,
        &client,
        &store,
        SourceRuntimeConfig {
            max_in_flight_records: 500,
            offset_flush_interval_ms: 50,
            ..Default::default()
        },
    );

    wait_until("some records committed", Duration::from_secs(30), || {
        observed.lock().committed.len() >= 1000
    })
    .await
    .unwrap();
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_cut = observed.lock().committed.len();
    let stored_at_cut = stored_next(&store, "cut").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        observed.lock().committed.len(),
        at_cut,
        "no commit_record while Kafka is unreachable"
    );
    let stored_during_cut = stored_next(&store, "cut").await;
    assert!(stored_during_cut <= at_cut as u64, "offsets never pass an unacknowledged record");
    assert!(stored_during_cut >= stored_at_cut);

    proxy.heal();
    wait_until("all 6000 committed after healing", Duration::from_secs(60), || {
        observed.lock().committed.len() == 6000
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let order: Vec<u64> = observed.lock().committed.iter().map(|(n, _)| *n).collect();
    assert_eq!(order, (0..6000).collect::<Vec<_>>());
    let in_kafka = kafka::consume_all(&client, "cut").await.unwrap();
    let distinct: std::collections::BTreeSet<Vec<u8>> =
        in_kafka.iter().map(|r| r.value.clone().unwrap().to_vec()).collect();
    assert_eq!(distinct.len(), 6000, "every record is in Kafka");
    assert_eq!(stored_next(&store, "cut").await, 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_records_and_commits_their_offsets() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let mut config = tansu.kafka_config();
    config.linger_ms = 2_000; // only the drain's flush sends the batch
    let client = KafkaClient::connect(config).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let (task, observed) = counter("drain", 300, 300, Duration::ZERO);
    let (run, stats, shutdown) = spawn_source(
        "drain",
        task,
        &client,
        &store,
        SourceRuntimeConfig { offset_flush_interval_ms: 60_000, ..Default::default() },
    );
    wait_until("300 records in flight", Duration::from_secs(10), || {
        stats.snapshot().records_in == 300
    })
    .await
    .unwrap();
    assert_eq!(observed.lock().committed.len(), 0, "still lingering");
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(observed.lock().committed.len(), 300, "drained, not dropped");
    assert_eq!(stored_next(&store, "drain").await, 300, "offsets committed at shutdown");

    // A restart resumes after them.
    let (task, observed) = counter("drain", 300, 300, Duration::ZERO);
    let (run, _stats, shutdown) =
        spawn_source("drain", task, &client, &store, SourceRuntimeConfig::default());
    wait_until("restart", Duration::from_secs(10), || observed.lock().started_from.is_some())
        .await
        .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(observed.lock().started_from, Some(300));
    assert_eq!(kafka::count(&client, "drain").await.unwrap(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_sends_at_once_instead_of_waiting_for_linger() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let mut config = tansu.kafka_config();
    config.linger_ms = 60_000; // were linger waited out, nothing would arrive in this test
    let client = KafkaClient::connect(config).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let (task, observed) = counter("window", 2000, 100, Duration::ZERO);
    let config = SourceRuntimeConfig { max_in_flight_records: 200, ..Default::default() };
    let (run, _stats, shutdown) = spawn_source("window", task, &client, &store, config);
    wait_until("2000 committed with a 200-record window", Duration::from_secs(30), || {
        observed.lock().committed.len() == 2000
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A sink task that records what it was given and can fail or hold back offsets.
struct Recorder {
    puts: Arc<Mutex<Vec<Vec<i64>>>>,
    fail_first: usize,
    hold_back: i64,
}

#[async_trait]
impl SinkTask for Recorder {
    async fn start(&mut self, _ctx: SinkTaskContext) -> Result<()> {
        Ok(())
    }

    async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
        self.puts.lock().push(records.iter().map(|r| r.offset).collect());
        if self.fail_first > 0 {
            self.fail_first -= 1;
            return Err(Error::retriable("downstream busy"));
        }
        Ok(())
    }

    async fn pre_commit(
        &mut self,
        offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<HashMap<TopicPartition, i64>> {
        Ok(offsets.iter().map(|(tp, o)| (tp.clone(), o - self.hold_back)).collect())
    }
}

async fn produce_numbers(client: &KafkaClient, topic: &str, n: i64) {
    let records =
        (0..n).map(|i| ProducerRecord::new(topic, i.to_string()).with_partition(0)).collect();
    client.produce(records).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_put_error_redelivers_the_same_records() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    produce_numbers(&client, "retry", 100).await;
    let puts = Arc::new(Mutex::new(Vec::new()));
    let task = Recorder { puts: Arc::clone(&puts), fail_first: 2, hold_back: 0 };
    let store = Arc::new(MemoryOffsetStore::new());
    let mut config = SinkRuntimeConfig { commit_interval_ms: 50, ..Default::default() };
    config.pipeline.errors.retry_max_delay_ms = 50;
    let tp = TopicPartition::new("retry", 0);
    let (run, shutdown) = spawn_sink("retry", task, &client, &store, &tp, config);
    wait_until("100 records put", Duration::from_secs(20), || {
        puts.lock().iter().skip(2).map(Vec::len).sum::<usize>() >= 100
    })
    .await
    .unwrap();
    wait_until("offset 100 committed", Duration::from_secs(20), || {
        futures_lite_block(store.load("retry")).unwrap().kafka_offset(&tp) == Some(100)
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let puts = puts.lock();
    assert_eq!(puts[0], puts[1], "same records after the first retriable error");
    assert_eq!(puts[1], puts[2], "same records after the second");
    assert_eq!(puts[0].first(), Some(&0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_offsets_returned_by_pre_commit_are_committed_and_the_rest_is_redelivered() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    produce_numbers(&client, "held", 100).await;
    let tp = TopicPartition::new("held", 0);
    let store = Arc::new(MemoryOffsetStore::new());
    let config = SinkRuntimeConfig { commit_interval_ms: 50, ..Default::default() };

    let puts = Arc::new(Mutex::new(Vec::new()));
    let task = Recorder { puts: Arc::clone(&puts), fail_first: 0, hold_back: 10 };
    let (run, shutdown) = spawn_sink("held", task, &client, &store, &tp, config.clone());
    wait_until("offset 90 committed", Duration::from_secs(20), || {
        futures_lite_block(store.load("held")).unwrap().kafka_offset(&tp) == Some(90)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(
        store.load("held").await.unwrap().kafka_offset(&tp),
        Some(90),
        "never more than pre_commit allowed"
    );

    // Restart: the 10 held-back records come again, nothing before them.
    let puts = Arc::new(Mutex::new(Vec::new()));
    let task = Recorder { puts: Arc::clone(&puts), fail_first: 0, hold_back: 0 };
    let (run, shutdown) = spawn_sink("held", task, &client, &store, &tp, config);
    wait_until("redelivery", Duration::from_secs(20), || !puts.lock().is_empty()).await.unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let redelivered: Vec<i64> = puts.lock().iter().flatten().copied().collect();
    assert_eq!(redelivered, (90..100).collect::<Vec<_>>());
}

/// Runs `task` as task 0 of sink connector `name`, reading `tp`, in the background.
fn spawn_sink(
    name: &str,
    task: Recorder,
    client: &KafkaClient,
    store: &Arc<MemoryOffsetStore>,
    tp: &TopicPartition,
    config: SinkRuntimeConfig,
) -> (tokio::task::JoinHandle<Result<()>>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let store = Arc::clone(store) as Arc<dyn OffsetStore>;
    let runtime =
        SinkTaskRuntime::new(name, 0, Box::new(task), client.clone(), store, vec![tp.clone()])
            .with_config(config);
    let run = tokio::spawn(runtime.run(shutdown.clone()));
    (run, shutdown)
}

/// Polls a ready-quickly future from a sync closure (the memory store never waits).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Emits `per_poll` records per poll; record `bad` is marked rejected.
struct WithBad {
    next: u64,
    bad: u64,
    committed: Arc<Mutex<Vec<u64>>>,
}

#[async_trait]
impl SourceTask for WithBad {
    async fn start(&mut self, _: SourceTaskContext) -> Result<()> {
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let records = (self.next..self.next + 50)
            .map(|i| {
                let r = SourceRecord::new("halt", i.to_string());
                if i == self.bad {
                    r.reject("this one is bad")
                } else {
                    r
                }
            })
            .collect();
        self.next += 50;
        Ok(records)
    }

    async fn commit_record(
        &mut self,
        record: SourceRecord,
        _: Option<RecordMetadata>,
    ) -> Result<()> {
        let n = std::str::from_utf8(record.value.as_deref().unwrap_or_default())
            .unwrap()
            .parse()
            .unwrap();
        self.committed.lock().push(n);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tolerance_none_a_bad_record_stops_the_task_after_committing_everything_before_it() {
    // A small window, so records before the bad one are still queued when it is found: they must
    // still reach Kafka and be committed, and nothing after the bad one may be.
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let committed = Arc::new(Mutex::new(Vec::new()));
    let task = WithBad { next: 0, bad: 137, committed: Arc::clone(&committed) };
    let config = SourceRuntimeConfig { max_in_flight_records: 20, ..Default::default() };
    let store = Arc::new(MemoryOffsetStore::new()) as Arc<dyn OffsetStore>;
    let runtime = SourceTaskRuntime::new("halt", 0, Box::new(task), client.clone(), store)
        .with_config(config);
    let err = tokio::time::timeout(Duration::from_secs(30), runtime.run(CancellationToken::new()))
        .await
        .expect("the task stops instead of hanging")
        .unwrap_err();
    assert!(err.to_string().contains("this one is bad"), "{err}");
    assert_eq!(
        *committed.lock(),
        (0..137).collect::<Vec<_>>(),
        "everything before it, nothing after"
    );
    let in_kafka: Vec<u64> = kafka::consume_all(&client, "halt")
        .await
        .unwrap()
        .iter()
        .map(|r| std::str::from_utf8(r.value.as_deref().unwrap()).unwrap().parse().unwrap())
        .collect();
    assert_eq!(in_kafka, (0..137).collect::<Vec<_>>());
}
