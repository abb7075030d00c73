//! Sink tasks as members of a consumer group, on real Tansu and Mosquitto: one task instance
//! lives through several assignments (epochs), opening and closing partitions without `stop`;
//! two workers share a sink's partitions through group `connect-<name>` and a clean stop moves
//! them losing and repeating nothing; the committed offsets are where librdkafka reads them.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connector_core::kafka::group::{committed_offsets, describe_group, GroupTimeouts};
use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runtime::{
    ConnectorSpec, SinkEpoch, SinkGroupSettings, SinkRuntimeConfig, SinkTaskRuntime, Worker,
};
use connector_core::{
    DynSinkConnector, MemoryOffsetStore, OffsetStore, Result, SinkConnector, SinkRecord, SinkTask,
    SinkTaskContext, StartFrom, TopicPartition,
};
use connector_mqtt_sink::{MqttSinkConfig, MqttSinkConnector};
use connector_testkit::{init_tracing, Mosquitto, MqttSubscriber, Tansu, TansuStorage};
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

/// The partitions each task holds now (between `open` and `close`), by "<worker>/<task>", and
/// how many records a task was handed of a partition it did not hold.
#[derive(Clone, Default)]
struct Held {
    now: Arc<Mutex<BTreeMap<String, BTreeSet<i32>>>>,
    strays: Arc<AtomicU64>,
}

/// A sink connector whose tasks report to [`Held`] and otherwise are the inner connector's.
struct Observed {
    inner: Arc<dyn DynSinkConnector>,
    worker: String,
    held: Held,
}

impl DynSinkConnector for Observed {
    fn topics(&self) -> Vec<String> {
        self.inner.topics()
    }
    fn start_from(&self) -> StartFrom {
        self.inner.start_from()
    }
    fn create_tasks(&self, max_tasks: usize) -> Result<Vec<Box<dyn SinkTask>>> {
        let tasks = self.inner.create_tasks(max_tasks)?.into_iter().enumerate();
        Ok(tasks
            .map(|(i, inner)| {
                let key = format!("{}/{i}", self.worker);
                Box::new(ObservedTask { inner, key, held: self.held.clone() }) as Box<dyn SinkTask>
            })
            .collect())
    }
}

struct ObservedTask {
    inner: Box<dyn SinkTask>,
    key: String,
    held: Held,
}

#[async_trait]
impl SinkTask for ObservedTask {
    async fn start(&mut self, ctx: SinkTaskContext) -> Result<()> {
        self.inner.start(ctx).await
    }
    async fn open(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        {
            let mut now = self.held.now.lock();
            let set = now.entry(self.key.clone()).or_default();
            set.extend(partitions.iter().map(|tp| tp.partition));
        }
        self.inner.open(partitions).await
    }
    async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
        let held = self.held.now.lock().get(&self.key).cloned().unwrap_or_default();
        let strays = records.iter().filter(|r| !held.contains(&r.partition)).count();
        self.held.strays.fetch_add(strays as u64, Ordering::Relaxed);
        self.inner.put(records).await
    }
    async fn pre_commit(
        &mut self,
        offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<HashMap<TopicPartition, i64>> {
        self.inner.pre_commit(offsets).await
    }
    async fn flush(&mut self, offsets: &HashMap<TopicPartition, i64>) -> Result<()> {
        self.inner.flush(offsets).await
    }
    async fn close(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        if let Some(set) = self.held.now.lock().get_mut(&self.key) {
            for tp in partitions {
                set.remove(&tp.partition);
            }
        }
        self.inner.close(partitions).await
    }
    async fn stop(&mut self) -> Result<()> {
        self.held.now.lock().remove(&self.key);
        self.inner.stop().await
    }
}

/// Session 5 s (the least Tansu 0.6 holds a group with: its follower JoinGroup pauses 3 s),
/// heartbeat 1 s: rebalances in a test's time.
fn settings(worker: &str) -> SinkGroupSettings {
    let timeouts = GroupTimeouts {
        session: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        rebalance: Duration::from_secs(10),
    };
    SinkGroupSettings { timeouts, worker_id: worker.into() }
}

/// The MQTT sink `cmds` with `tasks` tasks publishing topic `commands` to `cmd/{key}`, its MQTT
/// clients named `<client_id>-<i>`, its tasks reporting to `held` as `<client_id>/<i>`.
fn mqtt_sink(mqtt: &Mosquitto, client_id: &str, tasks: usize, held: &Held) -> ConnectorSpec {
    let mut c = MqttSinkConfig::new(mqtt.url(), vec!["commands".into()], "cmd/{key}");
    c.connection.client_id = Some(client_id.into());
    c.tasks = tasks;
    c.inflight = 100;
    let inner: Arc<dyn DynSinkConnector> = Arc::new(MqttSinkConnector::create("cmds", c).unwrap());
    let connector = Arc::new(Observed { inner, worker: client_id.into(), held: held.clone() });
    let config = SinkRuntimeConfig {
        commit_interval_ms: 200,
        max_put_records: 100,
        ..SinkRuntimeConfig::default()
    };
    ConnectorSpec::Sink { connector, config }
}

/// Commands `from..to`, payload = the number, spread over `partitions` partitions.
async fn produce_commands(client: &KafkaClient, from: usize, to: usize, partitions: usize) {
    for chunk in (from..to).collect::<Vec<_>>().chunks(1000) {
        let records = chunk
            .iter()
            .map(|i| {
                let p = i32::try_from(i % partitions).unwrap();
                ProducerRecord::new("commands", i.to_string())
                    .with_key(format!("car-{}", i % 10))
                    .with_partition(p)
            })
            .collect();
        client.produce(records).await.unwrap();
    }
}

/// Waits until group `group` has `n` members (DescribeGroups; Tansu 0.6 answers member ids
/// only) and the tasks hold `each` partitions each, every partition once.
#[allow(clippy::print_stdout)] // test output
async fn wait_members(client: &KafkaClient, group: &str, held: &Held, n: usize, each: usize) {
    let started = Instant::now();
    loop {
        let members = describe_group(client, group).await.map(|d| d.members.len()).ok();
        let now: Vec<(String, BTreeSet<i32>)> = held
            .now
            .lock()
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let distinct: BTreeSet<i32> = now.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        if members == Some(n)
            && now.len() == n
            && now.iter().all(|(_, p)| p.len() == each)
            && distinct.len() == n * each
        {
            println!(
                "group {group}: {n} members, {each} partition(s) each after {:?}: {now:?}",
                started.elapsed()
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "group {group}: {members:?} members, tasks hold {now:?}; expected {n} × {each}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each partition's high watermark.
async fn high_watermarks(client: &KafkaClient, topic: &str, n: i32) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for p in 0..n {
        out.insert(p, client.end_offset(topic, p).await.unwrap());
    }
    out
}

/// The group's committed offsets of `topic`, as our client reads them.
async fn group_offsets(client: &KafkaClient, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    committed_offsets(client, group)
        .await
        .unwrap()
        .into_iter()
        .filter(|(tp, _)| &*tp.topic == topic)
        .map(|(tp, o)| (tp.partition, o))
        .collect()
}

/// The group's committed offsets as librdkafka reads them (Python confluent-kafka's
/// `Consumer.committed`), through `scripts/group-offsets.py` when present. Output: one line per
/// partition, `<topic> <partition> <offset>`.
fn librdkafka_offsets(bootstrap: &str, group: &str, topic: &str, n: i32) -> BTreeMap<i32, i64> {
    const INLINE: &str = r#"
import sys
from confluent_kafka import Consumer, TopicPartition
bootstrap, group, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
for tp in c.committed([TopicPartition(topic, p) for p in range(n)], timeout=15):
    print(tp.topic, tp.partition, tp.offset)
c.close()
"#;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/group-offsets.py");
    let out = if std::path::Path::new(script).exists() {
        std::process::Command::new("python3").args([script, bootstrap, group, "--lines"]).output()
    } else {
        std::process::Command::new("python3")
            .args(["-c", INLINE, bootstrap, group, topic, &n.to_string()])
            .output()
    }
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == topic).then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
        .collect()
}

/// Issue 14, sink side: two workers run the same 3-task MQTT sink in group `connect-cmds`
/// (6 members, one partition each of a 6-partition topic); one is shut down cleanly mid-stream:
/// its partitions move to the other worker's tasks, every one of 30,000 commands reaches the
/// QoS 1 subscriber exactly once, and the group's committed offsets end at the high watermarks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_worker_stop_moves_its_partitions_losing_and_repeating_nothing() {
    init_tracing();
    let (tansu, mqtt) = (Tansu::start().await.unwrap(), Mosquitto::start().await.unwrap());
    let producer = tansu.client().await.unwrap();
    producer.create_topic("commands", 6, 1).await.unwrap();
    let sub = MqttSubscriber::connect(&mqtt.url(), "observer", "cmd/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let workers: Vec<Worker> = futures::future::join_all((1..=2).map(|w| {
        let tansu = &tansu;
        async move {
            let store = Arc::new(MemoryOffsetStore::new());
            Worker::new(tansu.client().await.unwrap(), store)
                .with_sink_groups(settings(&format!("w{w}")))
        }
    }))
    .await;
    let held = Held::default();
    for (w, worker) in workers.iter().enumerate() {
        worker.start("cmds", mqtt_sink(&mqtt, &format!("w{w}"), 3, &held)).await.unwrap();
    }
    wait_members(&producer, "connect-cmds", &held, 6, 1).await;

    let total = 30_000;
    produce_commands(&producer, 0, total / 2, 6).await;
    let started = Instant::now();
    sub.wait_for(5_000, Duration::from_secs(30)).await.unwrap();
    // Mid-stream: the rest is produced while worker 1 drains, leaves, and its partitions move.
    let (rest, stop) = tokio::join!(produce_commands(&producer, total / 2, total, 6), async {
        let t = Instant::now();
        assert!(workers[0].shutdown().await.is_none(), "a task of worker 1 failed");
        t.elapsed()
    });
    let () = rest;
    println!(
        "worker 1 stopped (drained, committed, left) in {stop:?} with {} delivered",
        sub.count()
    );
    wait_members(&producer, "connect-cmds", &held, 3, 2).await;

    let hw = high_watermarks(&producer, "commands", 6).await;
    assert_eq!(hw.values().sum::<i64>(), total as i64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_offsets(&producer, "connect-cmds", "commands").await != hw {
        assert!(
            Instant::now() < deadline,
            "committed {:?} never reached {hw:?}",
            group_offsets(&producer, "connect-cmds", "commands").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    // Mosquitto acknowledges a publish before it forwards it: the last ones may still be coming.
    sub.wait_for(total, Duration::from_secs(10)).await.unwrap();
    let got: Vec<String> =
        sub.messages().iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    let distinct: HashSet<&String> = got.iter().collect();
    println!(
        "{total} commands: {} received, {} distinct, {} lost, {} duplicates in {elapsed:?}",
        got.len(),
        distinct.len(),
        total - distinct.len(),
        got.len() - distinct.len()
    );
    assert_eq!(distinct.len(), total, "commands lost");
    assert_eq!(got.len(), total, "commands delivered twice");
    assert_eq!(held.strays.load(Ordering::Relaxed), 0, "a task read a partition it did not hold");
    assert!(workers[1].shutdown().await.is_none());
}

/// The sink's position is in group `connect-<name>` where standard tools see it: after a clean
/// stop, the committed offsets read by our client and by librdkafka equal the high watermarks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_offsets_are_read_back_by_librdkafka_at_the_high_watermarks() {
    init_tracing();
    let (tansu, mqtt) = (Tansu::start().await.unwrap(), Mosquitto::start().await.unwrap());
    let producer = tansu.client().await.unwrap();
    producer.create_topic("commands", 3, 1).await.unwrap();
    produce_commands(&producer, 0, 3_000, 3).await;
    let worker = Worker::new(tansu.client().await.unwrap(), Arc::new(MemoryOffsetStore::new()))
        .with_sink_groups(settings("w1"));
    let sub = MqttSubscriber::connect(&mqtt.url(), "observer", "cmd/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    worker.start("cmds", mqtt_sink(&mqtt, "sink", 2, &Held::default())).await.unwrap();
    sub.wait_for(3_000, Duration::from_secs(30)).await.unwrap();
    assert!(worker.shutdown().await.is_none());
    let hw = high_watermarks(&producer, "commands", 3).await;
    let ours = group_offsets(&producer, "connect-cmds", "commands").await;
    let librdkafka = librdkafka_offsets(&tansu.bootstrap(), "connect-cmds", "commands", 3);
    println!(
        "high watermarks {hw:?}, committed (ours) {ours:?}, committed (librdkafka) {librdkafka:?}"
    );
    assert_eq!(ours, hw);
    assert_eq!(librdkafka, hw);
    assert_eq!(sub.count(), 3_000);
}

/// A connector with one [`Recorder`] task on topic `grow`.
struct OneRecorder(Recorder);

impl DynSinkConnector for OneRecorder {
    fn topics(&self) -> Vec<String> {
        vec!["grow".into()]
    }
    fn start_from(&self) -> StartFrom {
        StartFrom::Earliest
    }
    fn create_tasks(&self, _max_tasks: usize) -> Result<Vec<Box<dyn SinkTask>>> {
        Ok(vec![Box::new(self.0.clone())])
    }
}

/// Partitions added to a sink's topic are assigned: the group leader finds them in a metadata
/// refresh (`metadata_max_age_ms`) and rejoins. Tansu 0.6 has no CreatePartitions, so the topic
/// grows by being deleted and created again with three partitions (as in `sink_runtime.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_the_topic_are_assigned_after_the_leaders_metadata_check() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let mut kafka = tansu.kafka_config();
    kafka.metadata_max_age_ms = 500;
    let client = KafkaClient::connect(kafka).await.unwrap();
    client.create_topic("grow", 1, 1).await.unwrap();
    produce(&client, "grow", 0, 10).await;
    let task = Recorder::default();
    let worker = Worker::new(client.clone(), Arc::new(MemoryOffsetStore::new()))
        .with_sink_groups(settings("w1"));
    let connector = Arc::new(OneRecorder(task.clone()));
    let config = SinkRuntimeConfig { commit_interval_ms: 200, ..SinkRuntimeConfig::default() };
    worker.start("grow", ConnectorSpec::Sink { connector, config }).await.unwrap();
    wait_for("the first 10 records", Duration::from_secs(15), || task.seen.lock().len() >= 10)
        .await;

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
    wait_for("records of the added partitions", Duration::from_secs(20), || {
        let seen = task.seen.lock();
        let n = |p| seen.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect::<BTreeSet<_>>();
        n(1).len() == 5 && n(2).len() == 5
    })
    .await;
    println!(
        "added partitions assigned and read {:?} after their records were written",
        added.elapsed()
    );
    let calls = task.calls.lock().clone();
    assert!(calls.contains(&"open 0,1,2".to_owned()), "{calls:?}");
    assert!(worker.shutdown().await.is_none());
}

/// A member cut off from Kafka for longer than the session loses its membership: it drains (its
/// last commit cannot get through), closes its partitions, and joins again once Kafka is back.
/// Nothing is lost; what is repeated is at most what was not committed when the cut began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_kafka_loses_its_membership_and_then_nothing_is_lost() {
    init_tracing();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let mqtt = Mosquitto::start().await.unwrap();
    let producer = tansu.client().await.unwrap();
    producer.create_topic("commands", 2, 1).await.unwrap();
    let total = 10_000;
    produce_commands(&producer, 0, total, 2).await;
    let sub = MqttSubscriber::connect(&mqtt.url(), "observer", "cmd/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let held = Held::default();
    let ConnectorSpec::Sink { connector, config } = mqtt_sink(&mqtt, "sink", 2, &held) else {
        panic!("a sink spec")
    };
    let config = SinkRuntimeConfig { shutdown_timeout_ms: 3_000, ..config };
    let worker = Worker::new(tansu.client().await.unwrap(), Arc::new(MemoryOffsetStore::new()))
        .with_sink_groups(settings("w1"));
    worker.start("cmds", ConnectorSpec::Sink { connector, config }).await.unwrap();
    sub.wait_for(1_000, Duration::from_secs(30)).await.unwrap();

    let committed: i64 = group_offsets(&producer, "connect-cmds", "commands").await.values().sum();
    proxy.cut();
    let cut = Instant::now();
    let delivered = sub.count();
    wait_for("every task to close its partitions", Duration::from_secs(30), || {
        held.now.lock().values().all(BTreeSet::is_empty)
    })
    .await;
    println!("membership lost and partitions closed {:?} after the cut ({delivered} delivered, {committed} committed at the cut)", cut.elapsed());
    proxy.heal();
    wait_members(&producer, "connect-cmds", &held, 2, 1).await;
    let hw = high_watermarks(&producer, "commands", 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_offsets(&producer, "connect-cmds", "commands").await != hw {
        assert!(Instant::now() < deadline, "the committed offsets never reached {hw:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub.wait_for(total, Duration::from_secs(10)).await.unwrap();
    let got: Vec<String> =
        sub.messages().iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    let distinct: HashSet<&String> = got.iter().collect();
    let repeated = got.len() - distinct.len();
    println!(
        "{total} commands: {} received, {} lost, {repeated} repeated (bound {})",
        got.len(),
        total - distinct.len(),
        total as i64 - committed
    );
    assert_eq!(distinct.len(), total, "commands lost");
    assert!(repeated as i64 <= total as i64 - committed, "more repeated than was uncommitted");
    assert!(worker.shutdown().await.is_none());
}
