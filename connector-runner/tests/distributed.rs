//! Distributed mode through the `connect` process, on real Tansu and Mosquitto: several workers
//! of one group share an MQTT source's tasks and an MQTT sink's tasks 2/2/2; a SIGKILLed
//! worker's tasks move to the others (time measured, nothing lost, duplicates bounded by the
//! killed tasks' in-flight windows); a worker that joins takes its share and one stopped with
//! SIGTERM hands its tasks over without a duplicate; the sink's consumer group offsets read by
//! librdkafka match what was delivered; and a worker with a different config is refused.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_testkit::{
    init_tracing, kafka, wait_source_subscribed, Mosquitto, MosquittoOptions, MqttPublisher,
    MqttSubscriber, Tansu,
};
use rumqttc::QoS;

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use cluster::{
    commands_seen, distinct_and_repeats, librdkafka_committed, produce_commands, publish_telemetry,
    telemetry_seen, wait_status, Status, Worker,
};
use support::write;

/// Group timeouts of every test: a dead worker is noticed within SESSION_MS. Tansu 0.6 holds a
/// follower's rejoin for 3 s, so with a 3 s session members expired while rejoining and the group
/// never settled (several leaders per generation); 5 s is what the group client is tested with.
const SESSION_MS: u64 = 5_000;
const HEARTBEAT_MS: u64 = 1_000;
const REBALANCE_MS: u64 = 10_000;
/// In-flight window of each MQTT task (source: unacknowledged messages from the broker, which
/// Mosquitto's `max_inflight_messages` matches; sink: unacknowledged publishes) and the records
/// of one sink `put`.
const WINDOW: usize = 100;
/// How often a sink task commits what the broker acknowledged.
const COMMIT_INTERVAL_MS: u64 = 200;
/// Tasks of each connector, and partitions of the command topic.
const TASKS: usize = 6;

const CONNECTORS: [&str; 2] = ["telemetry", "commands"];

/// Mosquitto with persistent sessions (a moved source task resumes its session) and an in-flight
/// limit equal to our source's window.
async fn mosquitto() -> Mosquitto {
    Mosquitto::start_with(MosquittoOptions {
        max_inflight_messages: WINDOW as u32,
        ..MosquittoOptions::default()
    })
    .await
    .unwrap()
}

/// One group's config: `[cluster]` with the test timeouts, then `connectors`.
fn cluster_config(tansu: &Tansu, group: &str, connectors: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
store = "kafka"

[cluster]
group_id = "{group}"
session_timeout_ms = {SESSION_MS}
heartbeat_interval_ms = {HEARTBEAT_MS}
rebalance_timeout_ms = {REBALANCE_MS}

[progress]
interval_secs = 0
{connectors}
"#,
        tansu.bootstrap()
    )
}

/// The MQTT source (6 tasks, QoS 1, `plant/+/temp` -> Kafka `plant`) and the MQTT sink (6 tasks
/// over the 6 partitions of `commands` -> `cars/<key>/cmd`).
fn mqtt_connectors(mqtt: &Mosquitto) -> String {
    format!(
        r#"
[[connector]]
name = "telemetry"
type = "mqtt-source"
mqtt_url = "{url}"
client_id = "telemetry"
topics = ["plant/+/temp"]
qos = 1
kafka_topic = "plant"
tasks = {TASKS}
inflight = {WINDOW}

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "{url}"
client_id = "commands"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/cmd"
qos = 1
tasks = {TASKS}
inflight = {WINDOW}
runtime = {{ max_put_records = {WINDOW}, commit_interval_ms = {COMMIT_INTERVAL_MS} }}
"#,
        url = mqtt.url()
    )
}

/// Brokers, topics and the config of the MQTT tests.
struct Setup {
    mqtt: Mosquitto,
    tansu: Tansu,
    client: KafkaClient,
    dir: tempfile::TempDir,
    config: String,
    /// QoS 1 subscriber of every command the sink publishes.
    car: MqttSubscriber,
}

async fn setup(group: &str) -> Setup {
    init_tracing();
    let mqtt = mosquitto().await;
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("commands", TASKS as i32, 1).await.unwrap();
    client.create_topic("plant", TASKS as i32, 1).await.unwrap();
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("DIST_KEEP").is_some() {
        // Keep the config and the workers' logs for a look afterwards.
        dir.disable_cleanup(true);
        println!("config and worker logs in {}", dir.path().display());
    }
    let config =
        write(dir.path(), "connect.toml", &cluster_config(&tansu, group, &mqtt_connectors(&mqtt)));
    let car =
        MqttSubscriber::connect(&mqtt.url(), "car", "cars/+/cmd", QoS::AtLeastOnce).await.unwrap();
    Setup { mqtt, tansu, client, dir, config, car }
}

impl Setup {
    fn start(&self, id: &str) -> Worker {
        Worker::start(&self.config, self.dir.path(), id)
    }

    /// Waits until `workers` run `per_worker` tasks of each connector (by `connect status`) and
    /// every task was started somewhere (by the logs).
    async fn wait_balanced(&self, workers: &[&Worker], per_worker: usize) -> Status {
        let status = wait_status(
            &self.config,
            &format!("{} workers with {per_worker} tasks of each connector", workers.len()),
            Duration::from_secs(60),
            workers,
            |s| s.balanced(workers.len(), &CONNECTORS, per_worker),
        )
        .await;
        // Each worker's own log says it started every task the status gives it, and the sink
        // tasks' consumer group gave each of them one partition (on Tansu each rebalance of that
        // group takes a few seconds, and every task move is one).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
            let sinks = cluster::sink_partitions(logs.iter().map(String::as_str));
            let sinks: Vec<(String, Vec<i32>)> = status
                .workers
                .values()
                .flatten()
                .filter(|t| t.starts_with("commands-"))
                .map(|t| (t.clone(), sinks.get(t).cloned().unwrap_or_default()))
                .collect();
            let mut partitions: Vec<i32> = sinks.iter().flat_map(|(_, p)| p.clone()).collect();
            partitions.sort_unstable();
            let spread = sinks.iter().all(|(_, p)| p.len() == 1)
                && partitions == (0..TASKS as i32).collect::<Vec<_>>();
            let missing: Vec<(String, Vec<String>)> = workers
                .iter()
                .map(|w| {
                    let started = w.started_since(0);
                    let assigned = status.workers.get(&w.id).cloned().unwrap_or_default();
                    (w.id.clone(), assigned.difference(&started).cloned().collect::<Vec<_>>())
                })
                .filter(|(_, m)| !m.is_empty())
                .collect();
            if missing.is_empty() && spread {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "assigned but never started: {missing:?}; sink partitions {sinks:?}; logs:\n{}",
                workers.iter().map(|w| cluster::tail(&w.log(), 30)).collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A publisher whose first probe reached Kafka (the source's shared subscription is live).
    async fn live_publisher(&self) -> Arc<MqttPublisher> {
        let publisher = Arc::new(MqttPublisher::connect(&self.mqtt.url(), "plc").await.unwrap());
        wait_source_subscribed(&publisher, "plant/probe/temp", b"probe", &self.client, "plant")
            .await
            .unwrap();
        publisher
    }

    /// Waits until Kafka holds every `t-0..t-{n}` and the subscriber every `c-0..c-{m}`;
    /// returns (telemetry repeats, command repeats).
    async fn wait_all_delivered(&self, n: usize, m: usize, workers: &[&Worker]) -> (usize, usize) {
        let (t, c) = self.wait_all_tallied(n, m, workers).await;
        (distinct_and_repeats(&t).1, distinct_and_repeats(&c).1)
    }

    /// [`Setup::wait_all_delivered`], returning the deliveries per payload (telemetry, commands).
    async fn wait_all_tallied(&self, n: usize, m: usize, workers: &[&Worker]) -> (Tally, Tally) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut telemetry = (0, 0);
        loop {
            let commands = distinct_and_repeats(&commands_seen(&self.car));
            if telemetry.0 < n && kafka::count(&self.client, "plant").await.unwrap() >= n as u64 {
                telemetry = distinct_and_repeats(&telemetry_seen(&self.client, "plant").await);
            }
            if telemetry.0 == n && commands.0 == m {
                // Repeats may still be on their way: count once more after the stream settled.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return (telemetry_seen(&self.client, "plant").await, commands_seen(&self.car));
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} telemetry in Kafka, {} of {m} commands at the subscriber; logs:\n{}",
                telemetry.0,
                commands.0,
                workers.iter().map(|w| cluster::tail(&w.log(), 30)).collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Deliveries per payload.
type Tally = std::collections::BTreeMap<Vec<u8>, usize>;

/// Deliveries beyond the first of the payloads `{prefix}{i}` for `i` in `range`.
fn repeats_in(seen: &Tally, prefix: &str, range: std::ops::Range<usize>) -> usize {
    range
        .map(|i| seen.get(format!("{prefix}{i}").as_bytes()).map_or(0, |n| n.saturating_sub(1)))
        .sum()
}

/// Waits until `publisher` has `n` acknowledgements.
async fn wait_acked(publisher: &MqttPublisher, n: u64) {
    publisher.wait_acknowledged(n, Duration::from_secs(90)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_tasks_and_a_sigkilled_workers_tasks_move_losing_nothing() {
    let s = setup("plant-floor").await;
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"].iter().map(|id| s.start(id)).collect();
    let started = Instant::now();
    let before = s.wait_balanced(&workers.iter().collect::<Vec<_>>(), 2).await;
    println!(
        "3 workers 2/2/2 after {:?}, generation {}: {:?}",
        started.elapsed(),
        before.generation,
        before.workers
    );
    let publisher = s.live_publisher().await;
    let probes = publisher.acknowledged();

    let (n, m) = (60_000usize, 30_000usize);
    let (telemetry_rate, command_rate) = (4_000usize, 2_000usize);
    let publishing = publish_telemetry(Arc::clone(&publisher), 0..n, telemetry_rate);
    let producing = produce_commands(s.client.clone(), "commands", TASKS, 0..m, command_rate);

    // SIGKILL mid-stream: a third of the telemetry is in the broker's hands.
    wait_acked(&publisher, probes + (n / 3) as u64).await;
    let victim = 1;
    let moved = before.workers[&workers[victim].id].clone();
    let marks: Vec<usize> = workers.iter().map(Worker::log_len).collect();
    let killed = Instant::now();
    workers[victim].runner.kill();
    let survivors: Vec<usize> = (0..workers.len()).filter(|i| *i != victim).collect();

    let deadline = killed + Duration::from_secs(60);
    let mut first = None;
    let restarted = loop {
        let started: BTreeSet<String> =
            survivors.iter().flat_map(|i| workers[*i].started_since(marks[*i])).collect();
        if first.is_none() && moved.iter().any(|t| started.contains(t)) {
            first = Some(killed.elapsed());
        }
        if moved.is_subset(&started) {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{moved:?} never started on the survivors (started {started:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refs: Vec<&Worker> = survivors.iter().map(|i| &workers[*i]).collect();
    let after = s.wait_balanced(&refs, 3).await;
    println!(
        "SIGKILL of {} ({moved:?}): the first of its tasks started on another worker after \
         {first:?}, all after {restarted:?} (session timeout {SESSION_MS} ms), generation {} -> {}: \
         {:?}",
        workers[victim].id, before.generation, after.generation, after.workers
    );

    publishing.await.unwrap();
    producing.await.unwrap();
    wait_acked(&publisher, probes + n as u64).await;
    let (telemetry_repeats, command_repeats) = s.wait_all_delivered(n, m, &refs).await;
    let moved_sources = moved.iter().filter(|t| t.starts_with("telemetry-")).count();
    let moved_sinks = moved.iter().filter(|t| t.starts_with("commands-")).count();
    // A source repeats only what Kafka acknowledged and the broker never got a PUBACK for: at
    // most the window of each killed source task (Mosquitto sends no more unacknowledged).
    let source_bound = moved_sources * WINDOW;
    // A sink repeats what it published since its last commit: per killed task the window, one
    // put's records, and what was acknowledged during about two commit intervals (the commit in
    // flight and the one before), at twice its partition's production rate (catching up).
    let per_partition = command_rate / TASKS;
    let sink_bound = moved_sinks
        * (WINDOW + WINDOW + 2 * 2 * per_partition * COMMIT_INTERVAL_MS as usize / 1000);
    println!(
        "{n} telemetry: 0 lost, {telemetry_repeats} duplicates (bound {source_bound}); \
         {m} commands: 0 lost, {command_repeats} duplicates (bound {sink_bound}); {:?} in all",
        started.elapsed()
    );
    assert!(telemetry_repeats <= source_bound, "{telemetry_repeats} > {source_bound}");
    assert!(command_repeats <= sink_bound, "{command_repeats} > {sink_bound}");
    for i in survivors {
        assert_eq!(workers[i].runner.terminate(), Some(0), "{}", workers[i].log());
    }
}

/// The join is measured for time and loss; the SIGTERM handover also for duplicates: its
/// stream (the second half) is published after everything of the first half arrived, so a
/// repeat of either half after that point is the handover's. The source side repeats nothing;
/// the sink side is bounded (Tansu's coordinator does not wait for every member, see below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_worker_takes_its_share_and_a_sigtermed_one_hands_over_without_duplicates() {
    let s = setup("assembly").await;
    let mut workers: Vec<Worker> = ["w1", "w2"].iter().map(|id| s.start(id)).collect();
    s.wait_balanced(&workers.iter().collect::<Vec<_>>(), 3).await;
    let publisher = s.live_publisher().await;
    let probes = publisher.acknowledged();
    let (n, m) = (30_000usize, 15_000usize);
    let (n1, m1) = (n / 2, m / 2);

    // The join, while the first half flows.
    let publishing = publish_telemetry(Arc::clone(&publisher), 0..n1, 3_000);
    let producing = produce_commands(s.client.clone(), "commands", TASKS, 0..m1, 1_500);
    wait_acked(&publisher, probes + (n1 / 5) as u64).await;
    let joined = Instant::now();
    workers.push(s.start("w3"));
    let status = s.wait_balanced(&workers.iter().collect::<Vec<_>>(), 2).await;
    println!(
        "w3 joined mid-stream: 2/2/2 after {:?}, generation {}: {:?}",
        joined.elapsed(),
        status.generation,
        status.workers
    );
    publishing.await.unwrap();
    producing.await.unwrap();
    wait_acked(&publisher, probes + n1 as u64).await;
    let refs: Vec<&Worker> = workers.iter().collect();
    let (t1, c1) = s.wait_all_tallied(n1, m1, &refs).await;
    let (join_t, join_c) = (distinct_and_repeats(&t1).1, distinct_and_repeats(&c1).1);
    println!("join: {n1} telemetry and {m1} commands, 0 lost; duplicates {join_t} and {join_c}");

    // The SIGTERM, while the second half flows.
    let publishing = publish_telemetry(Arc::clone(&publisher), n1..n, 3_000);
    let producing = produce_commands(s.client.clone(), "commands", TASKS, m1..m, 1_500);
    wait_acked(&publisher, probes + (n1 + (n - n1) / 3) as u64).await;
    let leaving = workers.remove(0);
    let handed = status.workers[&leaving.id].clone();
    let marks: Vec<usize> = workers.iter().map(Worker::log_len).collect();
    let mut leaving = leaving;
    let stopped = Instant::now();
    assert_eq!(leaving.runner.terminate(), Some(0), "SIGTERM drains; log:\n{}", leaving.log());
    let drained = stopped.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let took = loop {
        let started: BTreeSet<String> =
            workers.iter().zip(&marks).flat_map(|(w, m)| w.started_since(*m)).collect();
        if handed.is_subset(&started) {
            break stopped.elapsed();
        }
        assert!(Instant::now() < deadline, "{handed:?} never started elsewhere ({started:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refs: Vec<&Worker> = workers.iter().collect();
    let after = s.wait_balanced(&refs, 3).await;
    println!(
        "SIGTERM of {} ({handed:?}): drained and exited after {drained:?}, its tasks ran on the \
         others after {took:?}, generation {}",
        leaving.id, after.generation
    );

    publishing.await.unwrap();
    producing.await.unwrap();
    wait_acked(&publisher, probes + n as u64).await;
    let (t, c) = s.wait_all_tallied(n, m, &refs).await;
    let telemetry_repeats = repeats_in(&t, "t-", 0..n) - join_t;
    let command_repeats = repeats_in(&c, "c-", 0..m) - join_c;
    println!(
        "SIGTERM: {} telemetry and {} commands, 0 lost; duplicates {telemetry_repeats} and \
         {command_repeats}",
        n - n1,
        m - m1
    );
    assert_eq!(telemetry_repeats, 0, "a SIGTERM handover repeats no MQTT message");
    // The sink side: the leaving worker drains and commits before it leaves, but Tansu 0.6's
    // coordinator answers a survivor's JoinGroup without waiting for the other members, so a new
    // generation can give a partition to one task while another still drains it from the
    // previous one (read from the group's committed offset: repeats, never loss; on Kafka the
    // coordinator waits for every member). Bounded by that overlap: at most a session timeout
    // of each partition's rate (250 commands/s) for the partitions that move.
    let bound = 250 * 5 * TASKS;
    assert!(
        command_repeats <= bound,
        "a SIGTERM handover repeated {command_repeats} commands (bound {bound})"
    );
    for w in &mut workers {
        assert_eq!(w.runner.terminate(), Some(0), "{}", w.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_groups_offsets_read_by_librdkafka_match_what_was_delivered() {
    let s = setup("dispatch").await;
    let workers: Vec<Worker> = ["w1", "w2"].iter().map(|id| s.start(id)).collect();
    let refs: Vec<&Worker> = workers.iter().collect();
    s.wait_balanced(&refs, 3).await;
    let m = 6_000usize;
    produce_commands(s.client.clone(), "commands", TASKS, 0..m, 6_000).await.unwrap();
    let (_, repeats) = s.wait_all_delivered(0, m, &refs).await;

    let mut watermarks = std::collections::BTreeMap::new();
    for p in 0..TASKS as i32 {
        watermarks
            .insert(("commands".to_owned(), p), s.client.end_offset("commands", p).await.unwrap());
    }
    assert_eq!(watermarks.values().sum::<i64>(), m as i64);
    let deadline = Instant::now() + Duration::from_secs(20);
    let committed = loop {
        let committed = librdkafka_committed(&s.tansu.bootstrap(), "connect-commands");
        if committed == watermarks {
            break committed;
        }
        assert!(
            Instant::now() < deadline,
            "librdkafka sees {committed:?} for connect-commands, the high watermarks are {watermarks:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "connect-commands as librdkafka reads it: {committed:?} = the high watermarks; \
         {m} commands delivered, {repeats} duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_different_config_is_refused_with_a_clear_message() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let heartbeat = |interval_ms: u64| {
        format!(
            "\n[[connector]]\nname = \"pulse\"\ntype = \"heartbeat\"\ntopic = \"pulse\"\ndevice = \"pump-1\"\ninterval_ms = {interval_ms}\n"
        )
    };
    let first = write(dir.path(), "first.toml", &cluster_config(&tansu, "pumps", &heartbeat(500)));
    let second =
        write(dir.path(), "second.toml", &cluster_config(&tansu, "pumps", &heartbeat(1_000)));
    let mut w1 = Worker::start(&first, dir.path(), "w1");
    wait_status(&first, "w1 running pulse-0", Duration::from_secs(30), &[&w1], |s| {
        s.workers.len() == 1 && s.workers.values().any(|t| t.contains("pulse-0"))
    })
    .await;

    let started = Instant::now();
    let mut w2 = Worker::start(&second, dir.path(), "w2");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(code) = w2.exited() {
            break code;
        }
        assert!(Instant::now() < deadline, "the second worker still runs; log:\n{}", w2.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = w2.log();
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    println!("w2 exited {code:?} after {:?}: {last}", started.elapsed());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(last.starts_with("connect: "), "one line saying why: {last}");
    assert!(last.contains("w2 refused by worker group pumps"), "{last}");
    assert!(last.contains("every worker of a group must run the same config file"), "{last}");
    assert!(w1.exited().is_none(), "the first worker goes on; log:\n{}", w1.log());
    wait_status(&first, "w1 alone, running pulse-0", Duration::from_secs(30), &[&w1], |s| {
        s.workers.keys().eq(["w1"]) && s.workers["w1"].contains("pulse-0")
    })
    .await;
    assert_eq!(w1.runner.terminate(), Some(0), "{}", w1.log());
}
