//! The worker group in one process, on a real broker (Tansu): a [`Worker`] running a subset of a
//! connector's tasks and moving them with `set_tasks`; the Kafka offset store seeing what another
//! process saved; two [`Herder`]s (each with a CancellationToken standing in for its process)
//! splitting a 4-task source 2/2, the survivor taking all 4 when one shuts down; and a herder
//! with another configuration refused with a clear message.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connector_core::kafka::group::GroupTimeouts;
use connector_core::kafka::KafkaClient;
use connector_core::runner::describe_cluster;
use connector_core::runtime::cluster::{
    ConnectorSet, GroupConnector, Herder, HerderConfig, HerderError,
};
use connector_core::runtime::{ConnectorSpec, SourceRuntimeConfig, TaskState, Worker};
use connector_core::{
    DynSourceConnector, KafkaOffsetStore, MemoryOffsetStore, OffsetMap, OffsetStore, Result,
    SourceOffset, SourcePartition, SourceRecord, SourceTask, SourceTaskContext,
};
use connector_testkit::{init_tracing, kafka, Tansu};
use parking_lot::Mutex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TASKS: usize = 4;

fn partition(task: usize) -> SourcePartition {
    SourcePartition::from([("task", task as u64)])
}

/// A source of [`TASKS`] tasks; each numbers its records from its offset and counts how many
/// copies of it run at once (more than one is a failure of the group).
#[derive(Clone)]
struct Beats {
    topic: String,
    running: Arc<Mutex<[usize; TASKS]>>,
    overlaps: Arc<Mutex<usize>>,
    /// Tasks of this instance (this config) alive now.
    alive: Arc<Mutex<usize>>,
}

impl Beats {
    fn new(topic: &str) -> Self {
        Self {
            topic: topic.into(),
            running: Arc::default(),
            overlaps: Arc::default(),
            alive: Arc::default(),
        }
    }
}

struct BeatTask {
    beats: Beats,
    id: usize,
    next: u64,
    counted: bool,
}

impl DynSourceConnector for Beats {
    fn max_in_flight_records(&self) -> Option<usize> {
        None
    }
    fn create_tasks(&self, _max_tasks: usize) -> Result<Vec<Box<dyn SourceTask>>> {
        Ok((0..TASKS)
            .map(|id| {
                Box::new(BeatTask { beats: self.clone(), id, next: 0, counted: false })
                    as Box<dyn SourceTask>
            })
            .collect())
    }
}

#[async_trait]
impl SourceTask for BeatTask {
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()> {
        self.next = ctx
            .offset(&partition(self.id))
            .and_then(|o| o.get("next"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let mut running = self.beats.running.lock();
        running[self.id] += 1;
        if running[self.id] > 1 {
            *self.beats.overlaps.lock() += 1;
        }
        self.counted = true;
        *self.beats.alive.lock() += 1;
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = self.next;
        self.next += 1;
        Ok(vec![SourceRecord::new(self.beats.topic.clone(), format!("{}:{n}", self.id))
            .with_source(partition(self.id), SourceOffset::from([("next", n + 1)]))])
    }
}

impl Drop for BeatTask {
    fn drop(&mut self) {
        if self.counted {
            self.beats.running.lock()[self.id] -= 1;
            *self.beats.alive.lock() -= 1;
        }
    }
}

fn spec(beats: &Beats) -> ConnectorSpec {
    let config = SourceRuntimeConfig {
        offset_flush_interval_ms: 50,
        shutdown_timeout_ms: 1_000,
        ..Default::default()
    };
    ConnectorSpec::Source { connector: Arc::new(beats.clone()), config }
}

fn running(worker: &Worker, name: &str) -> BTreeSet<usize> {
    worker.status(name).map_or_else(
        |_| BTreeSet::new(),
        |s| {
            s.tasks.iter().filter(|t| matches!(t.state, TaskState::Running)).map(|t| t.id).collect()
        },
    )
}

fn unassigned(worker: &Worker, name: &str) -> BTreeSet<usize> {
    let s = worker.status(name).unwrap();
    s.tasks.iter().filter(|t| matches!(t.state, TaskState::Unassigned)).map(|t| t.id).collect()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn next_of(map: &OffsetMap, task: usize) -> u64 {
    map.get(&partition(task)).and_then(|o| o.get("next")).and_then(Value::as_u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_only_its_tasks_and_set_tasks_drains_the_dropped_and_starts_the_new() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("beats-w", 1, 1).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let worker = Worker::new(client.clone(), Arc::clone(&store) as Arc<dyn OffsetStore>);
    let beats = Beats::new("beats-w");
    assert_eq!(worker.task_count(&spec(&beats)).unwrap(), TASKS);
    worker.start_tasks("beats", spec(&beats), &[0, 1]).await.unwrap();
    let t = Duration::from_secs(10);
    wait_until("tasks 0 and 1 running", t, || running(&worker, "beats") == [0, 1].into()).await;
    assert_eq!(unassigned(&worker, "beats"), [2, 3].into());

    wait_until("task 0 writing", t, || {
        futures::executor::block_on(store.load("beats")).is_ok_and(|m| next_of(&m, 0) > 2)
    })
    .await;
    worker.set_tasks("beats", &[1, 2]).await.unwrap();
    // Task 0 drained: everything it wrote is committed before set_tasks returns.
    let committed = next_of(&store.load("beats").await.unwrap(), 0);
    let written = kafka::consume_all(&client, "beats-w")
        .await
        .unwrap()
        .iter()
        .filter(|r| r.value.as_deref().is_some_and(|v| v.starts_with(b"0:")))
        .count();
    assert_eq!(committed, written as u64, "task 0's offsets committed on the drain");
    wait_until("tasks 1 and 2 running", t, || running(&worker, "beats") == [1, 2].into()).await;
    assert_eq!(unassigned(&worker, "beats"), [0, 3].into());
    assert_eq!(beats.running.lock()[0], 0, "task 0 stopped");

    // Back to 0: it resumes from what it committed.
    worker.set_tasks("beats", &[0]).await.unwrap();
    wait_until("task 0 running again", t, || running(&worker, "beats") == [0].into()).await;
    worker.shutdown().await;
    assert_eq!(*beats.overlaps.lock(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_offset_store_sees_what_another_process_saved_after_its_first_load() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let first = KafkaOffsetStore::new(client.clone(), "offsets-shared");
    let second = KafkaOffsetStore::new(tansu.client().await.unwrap(), "offsets-shared");
    let save = |n: u64| {
        let mut m = OffsetMap::default();
        m.insert(partition(0), SourceOffset::from([("next", n)]));
        m
    };
    first.save("c", &save(5)).await.unwrap();
    assert_eq!(next_of(&first.load("c").await.unwrap(), 0), 5);
    // The task moves to the second process, which goes on and saves.
    assert_eq!(next_of(&second.load("c").await.unwrap(), 0), 5);
    second.save("c", &save(9)).await.unwrap();
    // And back: the first process must not resume from its cached 5.
    assert_eq!(next_of(&first.load("c").await.unwrap(), 0), 9);
}

/// Session 5 s: on Tansu 0.6 a follower's JoinGroup waits 3 s in the broker, and with a 3 s
/// session the group churns.
fn timeouts() -> GroupTimeouts {
    GroupTimeouts {
        session: Duration::from_secs(5),
        heartbeat: Duration::from_millis(500),
        rebalance: Duration::from_secs(10),
    }
}

/// One herder "process": its worker (to look at), its shutdown token and its run.
struct Process {
    worker: Worker,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<std::result::Result<(), HerderError>>,
}

async fn process(tansu: &Tansu, id: &str, hash: &str, beats: &Beats) -> Process {
    let client: KafkaClient = tansu.client().await.unwrap();
    let offsets = Arc::new(KafkaOffsetStore::new(client.clone(), "connect-offsets"));
    let worker = Worker::new(client.clone(), offsets);
    let config = HerderConfig {
        group_id: "workers".into(),
        worker_id: id.into(),
        config_hash: hash.into(),
        timeouts: timeouts(),
    };
    let shutdown = CancellationToken::new();
    let herder = Herder::new(worker.clone(), client, config);
    let run = tokio::spawn(herder.run(vec![("beats".into(), spec(beats))], shutdown.clone()));
    Process { worker, shutdown, run }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_four_tasks_two_two_and_the_one_left_runs_all_four() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    tansu.client().await.unwrap().create_topic("beats", 1, 1).await.unwrap();
    let beats = Beats::new("beats");
    let a = process(&tansu, "worker-a", "same", &beats).await;
    let started = Instant::now();
    wait_until("worker-a running all 4", Duration::from_secs(20), || {
        running(&a.worker, "beats").len() == TASKS
    })
    .await;
    let b = process(&tansu, "worker-b", "same", &beats).await;
    wait_until("a 2/2 split", Duration::from_secs(30), || {
        let (ra, rb) = (running(&a.worker, "beats"), running(&b.worker, "beats"));
        ra.len() == 2 && rb.len() == 2 && ra.is_disjoint(&rb)
    })
    .await;
    let split = started.elapsed();
    // `connect status`'s view: the newest generation and every worker's tasks.
    let status_client = tansu.client().await.unwrap();
    let mut status = None;
    wait_until("the status showing the 2/2 split", Duration::from_secs(10), || {
        let s = futures::executor::block_on(describe_cluster(&status_client, "workers", &[]));
        let ok = s.as_ref().is_ok_and(|s| {
            s.generation.is_some() && s.workers.iter().filter(|w| w.tasks.len() == 2).count() == 2
        });
        status = s.ok();
        ok
    })
    .await;
    let status = status.unwrap();
    let ids: Vec<&str> = status.workers.iter().map(|w| w.worker_id.as_str()).collect();
    assert_eq!(ids, ["worker-a", "worker-b"], "{status}");
    assert!(status.to_string().starts_with("group workers generation "), "{status}");
    b.shutdown.cancel();
    let stopped = Instant::now();
    b.run.await.unwrap().unwrap();
    wait_until("worker-a running all 4 again", Duration::from_secs(20), || {
        running(&a.worker, "beats").len() == TASKS
    })
    .await;
    eprintln!(
        "split 2/2 after {split:?}; all 4 back on worker-a {:?} after worker-b's shutdown",
        stopped.elapsed()
    );
    a.shutdown.cancel();
    a.run.await.unwrap().unwrap();
    assert_eq!(*beats.overlaps.lock(), 0, "a task ran on both workers at once");
}

/// Two workers joining at once while a third runs everything (Tansu forms generations without
/// waiting for every member, so members' join metadata lags their assignments): no task ever
/// runs on two workers, and the group settles 2/1/1, then 2/2 once one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_joining_and_leaving_never_run_a_task_twice() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    tansu.client().await.unwrap().create_topic("beats", 1, 1).await.unwrap();
    let beats = Beats::new("beats");
    let a = process(&tansu, "worker-a", "same", &beats).await;
    wait_until("worker-a running all 4", Duration::from_secs(20), || {
        running(&a.worker, "beats").len() == TASKS
    })
    .await;
    let started = Instant::now();
    let (b, c) = tokio::join!(
        process(&tansu, "worker-b", "same", &beats),
        process(&tansu, "worker-c", "same", &beats)
    );
    let spread = |ps: &[&Process]| -> Vec<usize> {
        let sets: Vec<BTreeSet<usize>> = ps.iter().map(|p| running(&p.worker, "beats")).collect();
        let union: BTreeSet<usize> = sets.iter().flatten().copied().collect();
        let mut sizes: Vec<usize> = sets.iter().map(BTreeSet::len).collect();
        sizes.sort_unstable();
        if union.len() == TASKS {
            sizes
        } else {
            Vec::new()
        }
    };
    wait_until("a 2/1/1 split", Duration::from_secs(45), || spread(&[&a, &b, &c]) == [1, 1, 2])
        .await;
    let split = started.elapsed();
    a.shutdown.cancel();
    let stopped = Instant::now();
    a.run.await.unwrap().unwrap();
    wait_until("a 2/2 split of b and c", Duration::from_secs(30), || spread(&[&b, &c]) == [2, 2])
        .await;
    eprintln!("2/1/1 after {split:?}; 2/2 {:?} after worker-a's shutdown", stopped.elapsed());
    b.shutdown.cancel();
    c.shutdown.cancel();
    b.run.await.unwrap().unwrap();
    c.run.await.unwrap().unwrap();
    assert_eq!(*beats.overlaps.lock(), 0, "a task ran on two workers at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_config_is_refused_with_both_hashes_and_stops() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    tansu.client().await.unwrap().create_topic("beats-h", 1, 1).await.unwrap();
    let beats = Beats::new("beats-h");
    let a = process(&tansu, "worker-a", "aaaa1111", &beats).await;
    wait_until("worker-a running all 4", Duration::from_secs(20), || {
        running(&a.worker, "beats").len() == TASKS
    })
    .await;
    let other = Beats::new("beats-h");
    let b = process(&tansu, "worker-b", "bbbb2222", &other).await;
    let refused = tokio::time::timeout(Duration::from_secs(30), b.run).await.unwrap().unwrap();
    let Err(HerderError::Refused(message)) = refused else {
        panic!("worker-b was not refused: {refused:?}");
    };
    for part in ["worker-b", "bbbb2222", "aaaa1111", "same config file"] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert_eq!(*other.running.lock(), [0; TASKS], "the refused worker runs nothing");
    wait_until("worker-a still running all 4", Duration::from_secs(20), || {
        running(&a.worker, "beats").len() == TASKS
    })
    .await;
    a.shutdown.cancel();
    a.run.await.unwrap().unwrap();
}

/// The set `beats` (fingerprint `version`) or empty.
fn beats_set(offset: i64, beats: Option<(&Beats, &str)>, paused: bool) -> Arc<ConnectorSet> {
    let mut set = ConnectorSet { offset, ..ConnectorSet::default() };
    if let Some((b, version)) = beats {
        let c = GroupConnector { spec: spec(b), fingerprint: version.into(), tasks: TASKS, paused };
        set.connectors.insert("beats".into(), c);
    }
    Arc::new(set)
}

async fn process_set(
    tansu: &Tansu,
    id: &str,
    set: tokio::sync::watch::Receiver<Arc<ConnectorSet>>,
) -> Process {
    let client: KafkaClient = tansu.client().await.unwrap();
    let offsets = Arc::new(KafkaOffsetStore::new(client.clone(), "connect-offsets"));
    let worker = Worker::new(client.clone(), offsets);
    let config = HerderConfig {
        group_id: "workers".into(),
        worker_id: id.into(),
        config_hash: "same".into(),
        timeouts: timeouts(),
    };
    let shutdown = CancellationToken::new();
    let herder = Herder::new(worker.clone(), client, config);
    let run = tokio::spawn(herder.run_set(set, shutdown.clone()));
    Process { worker, shutdown, run }
}

/// The herder's connector set changing at run time (what the config topic does): a connector
/// added runs 2/2; its config changed restarts every task with the new one (each drained
/// first, none twice at once, offsets continuing); paused and resumed without a rebalance;
/// deleted, it stops on both workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_set_changing_at_run_time_restarts_changed_tasks_drained_and_stops_deleted_ones(
) {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    tansu.client().await.unwrap().create_topic("beats-s", 1, 1).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(beats_set(0, None, false));
    let a = process_set(&tansu, "worker-a", rx.clone()).await;
    let b = process_set(&tansu, "worker-b", rx.clone()).await;
    let both = |p: &Process, q: &Process| {
        let (x, y) = (running(&p.worker, "beats"), running(&q.worker, "beats"));
        (x.len(), y.len(), x.is_disjoint(&y))
    };
    let v1 = Beats::new("beats-s");
    tx.send_replace(beats_set(1, Some((&v1, "v1")), false));
    wait_until("beats v1 2/2", Duration::from_secs(40), || both(&a, &b) == (2, 2, true)).await;
    let offsets = KafkaOffsetStore::new(tansu.client().await.unwrap(), "connect-offsets");
    // The new config: same counters (overlaps across versions count), a new instance.
    let v2 = Beats {
        running: Arc::clone(&v1.running),
        overlaps: Arc::clone(&v1.overlaps),
        ..Beats::new("beats-s")
    };
    let changed = Instant::now();
    tx.send_replace(beats_set(2, Some((&v2, "v2")), false));
    wait_until("every task of v1 stopped and v2's running 2/2", Duration::from_secs(40), || {
        *v1.alive.lock() == 0 && *v2.alive.lock() == TASKS && both(&a, &b) == (2, 2, true)
    })
    .await;
    // v2 tasks started from v1's last committed offsets: their numbering continues.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let saved = offsets.load("beats").await.unwrap();
    for t in 0..TASKS {
        assert!(next_of(&saved, t) > 0, "task {t} has offsets: {saved:?}");
    }
    eprintln!("config change applied within {:?}", changed.elapsed());
    // Paused: no rebalance needed; every task paused on both workers.
    tx.send_replace(beats_set(3, Some((&v2, "v2")), true));
    let paused = |w: &Worker| {
        w.status("beats").is_ok_and(|s| {
            s.tasks.iter().filter(|t| matches!(t.state, TaskState::Paused)).count() == 2
        })
    };
    wait_until("paused on both", Duration::from_secs(20), || {
        paused(&a.worker) && paused(&b.worker)
    })
    .await;
    tx.send_replace(beats_set(4, Some((&v2, "v2")), false));
    wait_until("resumed 2/2", Duration::from_secs(20), || both(&a, &b) == (2, 2, true)).await;
    // Deleted: stopped (drained) on both.
    tx.send_replace(beats_set(5, None, false));
    wait_until("beats gone on both", Duration::from_secs(40), || {
        a.worker.status("beats").is_err() && b.worker.status("beats").is_err()
    })
    .await;
    // The worker forgets a connector when its drain starts; its tasks end when the drain ends.
    wait_until("nothing of beats runs", Duration::from_secs(20), || {
        *v1.running.lock() == [0; TASKS]
    })
    .await;
    a.shutdown.cancel();
    b.shutdown.cancel();
    a.run.await.unwrap().unwrap();
    b.run.await.unwrap().unwrap();
    assert_eq!(
        *v1.overlaps.lock(),
        0,
        "a task ran twice at once (two workers, or old and new config)"
    );
}
