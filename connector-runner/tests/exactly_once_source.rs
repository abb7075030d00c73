//! Exactly once MQTT -> Kafka (issue 17), as a user runs it: the `connect` process with an
//! `exactly_once = true` MQTT source on real Mosquitto (persistent sessions) and Tansu, killed
//! (SIGKILL, or `CONNECTOR_CRASH_AT` at each step of the protocol) and restarted while QoS 2
//! messages stream in; a librdkafka consumer with `isolation.level = read_committed` must see
//! every message exactly once. Also the config errors, and fencing.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{FetchResult, Isolation, KafkaClient};
use connector_testkit::{init_tracing, Mosquitto, MqttPublisher, Tansu};
use rumqttc::QoS;

mod support;

use support::{assert_validate_reports, write, Runner};

const TOPIC: &str = "eos.data";

fn config(mqtt: &Mosquitto, tansu: &Tansu, txn_records: usize) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
store = "kafka"

[[connector]]
name = "eos"
type = "mqtt-source"
mqtt_url = "{}"
client_id = "eos-source"
topics = ["eos/#"]
kafka_topic = "eos.{{1}}"
qos = 2
exactly_once = true
runtime = {{ transaction_max_records = {txn_records}, transaction_interval_ms = 50 }}
"#,
        tansu.bootstrap(),
        mqtt.url(),
    )
}

/// The values of `topic` as a librdkafka (confluent-kafka) consumer with
/// `isolation.level = read_committed` reads them from the beginning to the last stable offset
/// of every partition: value -> times seen.
fn read_committed(bootstrap: &str, topic: &str) -> BTreeMap<String, usize> {
    const SCRIPT: &str = r#"
import sys, time
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
bs, topic = sys.argv[1], sys.argv[2]
c = Consumer({"bootstrap.servers": bs, "group.id": "eos-check-%f" % time.time(),
              "isolation.level": "read_committed", "enable.auto.commit": False,
              "enable.partition.eof": True, "auto.offset.reset": "earliest"})
md = c.list_topics(topic, timeout=10)
parts = sorted(md.topics[topic].partitions.keys()) if topic in md.topics else []
c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
left = set(parts); end = time.time() + 30
while left and time.time() < end:
    m = c.poll(0.5)
    if m is None: continue
    if m.error():
        if m.error().code() == -191: left.discard(m.partition()); continue
        print("error", m.error(), file=sys.stderr); continue
    print(m.value().decode())
c.close()
if left: sys.exit("partitions not read to their end: %s" % sorted(left))
"#;
    let out = Command::new("python3").args(["-c", SCRIPT, bootstrap, topic]).output().unwrap();
    assert!(
        out.status.success(),
        "read_committed check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *seen.entry(line.to_owned()).or_insert(0) += 1;
    }
    seen
}

/// The values of `topic` as our own read_committed fetch reads them, up to the last stable
/// offset of every partition: value -> times seen.
async fn rust_read_committed(client: &KafkaClient, topic: &str) -> BTreeMap<String, usize> {
    let meta = client.ensure_topic(topic).await.unwrap();
    let mut seen = BTreeMap::new();
    for p in 0..meta.partition_count() {
        let end = client.stable_end_offset(topic, p).await.unwrap();
        let mut offset = 0;
        while offset < end {
            let wait = Duration::from_millis(200);
            match client
                .fetch_isolated(topic, p, offset, wait, Isolation::ReadCommitted)
                .await
                .unwrap()
            {
                FetchResult::Records(f) => {
                    for r in f.records {
                        let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                        *seen.entry(v.into_owned()).or_insert(0) += 1;
                    }
                    offset = f.next_offset.max(offset);
                    if f.next_offset >= f.high_watermark {
                        break;
                    }
                }
                FetchResult::OffsetOutOfRange => {
                    panic!("offset {offset} out of range in {topic}/{p}")
                }
            }
        }
    }
    seen
}

/// Lost and duplicated values of `0..n` in `seen`.
fn lost_and_duplicates(seen: &BTreeMap<String, usize>, n: usize) -> (usize, usize) {
    let lost = (0..n).filter(|i| !seen.contains_key(&format!("m-{i}"))).count();
    let dups = seen.values().map(|c| c.saturating_sub(1)).sum();
    (lost, dups)
}

/// Waits until our read_committed fetch sees all of `0..n`, none twice; then a librdkafka
/// consumer at read_committed must see the same.
async fn assert_exactly_once(tansu: &Tansu, n: usize, runner: &Runner, within: Duration) {
    let deadline = Instant::now() + within;
    let client = tansu.client().await.unwrap();
    loop {
        let seen = rust_read_committed(&client, TOPIC).await;
        let (lost, dups) = lost_and_duplicates(&seen, n);
        assert_eq!(dups, 0, "duplicates at read_committed; log:\n{}", tail(&runner.log()));
        if lost == 0 {
            assert_eq!(seen.len(), n, "only the published values");
            break;
        }
        if Instant::now() >= deadline {
            let mut ends = Vec::new();
            for t in [TOPIC, "connect-offsets"] {
                let lso = client.stable_end_offset(t, 0).await.unwrap();
                let hw = client.end_offset(t, 0).await.unwrap();
                ends.push(format!("{t}: last stable {lso}, high watermark {hw}"));
            }
            panic!(
                "{lost} of {n} not at read_committed ({}); log:\n{}",
                ends.join("; "),
                tail(&runner.log())
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let bootstrap = tansu.bootstrap();
    let seen =
        tokio::task::spawn_blocking(move || read_committed(&bootstrap, TOPIC)).await.unwrap();
    let (lost, dups) = lost_and_duplicates(&seen, n);
    tracing::info!(distinct = seen.len(), lost, duplicates = dups, "librdkafka at read_committed");
    assert_eq!(
        (lost, dups),
        (0, 0),
        "librdkafka at read_committed (duplicates where our fetch has none: a Tansu without \
         scripts/tansu/aborted-transactions.patch answers aborted_transactions = [], and \
         librdkafka then delivers aborted records)"
    );
}

/// `text` without its ANSI colours.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Starts the connector and waits until its subscription stands (a probe reached Kafka): from
/// then on the broker keeps the session's messages while the connector is down.
async fn start_subscribed(
    config: &str,
    log: &Path,
    tansu: &Tansu,
    publisher: &MqttPublisher,
) -> Runner {
    let runner = Runner::start(config, log, &[]);
    let client = tansu.client().await.unwrap();
    connector_testkit::wait_source_subscribed(
        publisher,
        "eos/probe",
        b"probe",
        &client,
        "eos.probe",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", tail(&runner.log())));
    runner
}

fn publish_all(
    publisher: &Arc<MqttPublisher>,
    n: usize,
    pause_every: usize,
) -> tokio::task::JoinHandle<()> {
    let publisher = Arc::clone(publisher);
    tokio::spawn(async move {
        for i in 0..n {
            publisher
                .publish("eos/data", QoS::ExactlyOnce, false, format!("m-{i}").into_bytes())
                .await
                .unwrap();
            if i % pause_every == pause_every - 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
}

/// A small deterministic pseudo-random sequence (xorshift), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_during_a_qos2_stream_deliver_each_message_exactly_once() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "connect.toml", &config(&mqtt, &tansu, 500));
    let log = dir.path().join("connect.log");
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap());
    let mut runner = start_subscribed(&config, &log, &tansu, &publisher).await;

    let n = 20_000;
    let publishing = publish_all(&publisher, n, 200);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    tracing::info!(seed, "kill schedule");
    let mut rng = Rng(seed);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300 + rng.next(900))).await;
        runner.kill();
        runner = Runner::start(&config, &log, &[]);
    }
    publishing.await.unwrap();
    publisher.wait_acknowledged(n as u64, Duration::from_secs(60)).await.unwrap();
    assert_exactly_once(&tansu, n, &runner, Duration::from_secs(60)).await;
    let kills = runner.log().matches("transactional producer ready").count();
    assert!(kills >= 21, "21 starts of the task ({kills})");
    assert_ids_drain(&tansu, &config, &log, runner).await;
}

/// Once the stream is over, every recorded packet id is cleared (each PUBREL handled): a restart
/// restores none. A stale id would one day make a new message with that id look like a
/// redelivery.
async fn assert_ids_drain(tansu: &Tansu, config: &str, log: &Path, mut runner: Runner) {
    // The PUBRELs' clears come after the records: wait until the last committed QoS 2 state in
    // the offsets topic is empty, then check what a restart restores.
    let client = tansu.client().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = connector_testkit::kafka::consume_all_committed(&client, "connect-offsets")
            .await
            .unwrap();
        let last = offsets
            .iter()
            .filter_map(|r| r.value.as_deref())
            .map(String::from_utf8_lossy)
            .filter(|v| v.contains("qos2_received"))
            .last();
        if last.as_ref().is_some_and(|v| v.contains("\"qos2_received\":[]")) {
            break;
        }
        assert!(Instant::now() < deadline, "ids still recorded: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runner.terminate(), Some(0), "{}", tail(&runner.log()));
    let before = runner.log().matches("packet ids restored").count();
    let runner = Runner::start(config, log, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while runner.log().matches("packet ids restored").count() == before {
        assert!(Instant::now() < deadline, "{}", tail(&runner.log()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = plain(&runner.log());
    let last = log.lines().rfind(|l| l.contains("packet ids restored")).unwrap().to_owned();
    assert!(last.contains("recorded=0"), "{last}");
}

/// One crash at `point` (its `pass`-th pass) mid-stream, then a restart: each message once.
async fn crash_at(point: &str, pass: u32) {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "connect.toml", &config(&mqtt, &tansu, 50));
    let log = dir.path().join("connect.log");
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap());
    start_subscribed(&config, &log, &tansu, &publisher).await.kill();

    let crash = format!("{point}:{pass}");
    let mut runner = Runner::start_with_env(&config, &log, &[("CONNECTOR_CRASH_AT", &crash)]);
    let n = 600;
    let publishing = publish_all(&publisher, n, 100);
    let deadline = Instant::now() + Duration::from_secs(30);
    while runner.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "never reached {crash}; log:\n{}", tail(&runner.log()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(runner.log().contains("CONNECTOR_CRASH_AT: dying here"), "{}", tail(&runner.log()));
    let runner = Runner::start(&config, &log, &[]);
    publishing.await.unwrap();
    assert_exactly_once(&tansu, n, &runner, Duration::from_secs(30)).await;
}

/// Polled, nothing written: the broker redelivers (no PUBREC went out), no id was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_the_transaction_is_written() {
    crash_at("source.before_send", 3).await;
}

/// Written in an open transaction: the restart's init aborts it; the broker redelivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_the_transaction_open() {
    crash_at("source.before_commit", 3).await;
}

/// Committed, PUBREC (or PUBCOMP) not sent: the ids are recorded, the redelivered messages get
/// PUBREC without a write (a resent PUBREL clears again, then PUBCOMP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_commit_before_the_acknowledgements() {
    crash_at("source.after_commit", 3).await;
}

/// PUBREC sent, PUBREL not handled: the broker resends PUBREL; the recorded id is cleared in a
/// transaction, then PUBCOMP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_pubrec_before_pubrel() {
    crash_at("source.after_pubrec", 3).await;
}

/// The producer's init fenced the old instance (and aborted its transaction); nothing read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_right_after_init() {
    crash_at("source.after_init", 1).await;
}

/// A second instance of the same task (same connector name, so the same transactional id)
/// fences the first: the first stops with an error saying so and writes nothing more; the
/// stream goes on exactly once through the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_instance_stops_with_a_clear_error_and_writes_nothing() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "connect.toml", &config(&mqtt, &tansu, 50));
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap());
    let mut old = start_subscribed(&config, &dir.path().join("old.log"), &tansu, &publisher).await;
    // A steady stream (about 500 msg/s): an instance learns it is fenced at its next
    // transaction, so the old one must get something to write after the new one started.
    let n = 3_000;
    let publishing = publish_all(&publisher, n, 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = Runner::start(&config, &dir.path().join("new.log"), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the old instance goes on; log:\n{}", tail(&old.log()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(1), "{}", tail(&old.log()));
    let last = old.log().lines().last().unwrap_or_default().to_owned();
    assert!(last.contains("fenced") && last.contains("eos-0"), "{last}");
    publishing.await.unwrap();
    assert_exactly_once(&tansu, n, &new, Duration::from_secs(30)).await;
}

/// A 20,000-message QoS 2 burst on one long connection, as fast as Mosquitto sends it, at
/// transactions of 100 and 1000 records: each message once at read_committed, and no packet id
/// left recorded once the stream is over. Mosquitto 2.0.11 does not hold its in-flight window
/// to `max_inflight_messages` here (each in-order PUBCOMP moves up to a window's worth of queued
/// messages into flight, `db__message_delete_outgoing`), so more than 16,000 ids awaited their
/// PUBREL at once; a bound on the recorded ids stopped the task before they were stored as runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_brokers_window_is_written_once_and_leaves_no_id() {
    init_tracing();
    for txn in [100, 1000] {
        let mqtt = Mosquitto::start().await.unwrap();
        let tansu = Tansu::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "connect.toml", &config(&mqtt, &tansu, txn));
        let log = dir.path().join("connect.log");
        let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap());
        let runner = start_subscribed(&config, &log, &tansu, &publisher).await;
        let n = 20_000;
        let started = Instant::now();
        publish_all(&publisher, n, 1000).await.unwrap();
        assert_exactly_once(&tansu, n, &runner, Duration::from_secs(120)).await;
        let secs = started.elapsed().as_secs_f64();
        let peak = plain(&runner.log())
            .lines()
            .filter_map(|l| {
                l.split("recorded=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok()
            })
            .max()
            .unwrap_or(0);
        tracing::info!(
            transaction_max_records = txn,
            msg_per_s = (n as f64 / secs) as u64,
            peak_recorded_ids_logged = peak,
            "exactly-once source burst (the time includes the read-back)"
        );
        assert_ids_drain(&tansu, &config, &log, runner).await;
    }
}

#[test]
fn exactly_once_config_errors_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "bad.toml",
        r#"
[kafka]
bootstrap_servers = ["127.0.0.1:9092"]

[offsets]
store = "file"

[[connector]]
name = "eos"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "plant"
qos = 1
clean_session = true
exactly_once = true

[[connector]]
name = "eos-ok"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "plant"
qos = 2
exactly_once = true
runtime = { transaction_max_records = 0 }
"#,
    );
    assert_validate_reports(
        &config,
        &[
            "connector[0].qos: exactly_once = true needs qos = 2",
            "connector[0].clean_session: exactly_once = true needs clean_session = false",
            "connector[1].runtime.transaction_max_records: must be at least 1",
        ],
    );
    let ok = write(
        dir.path(),
        "store.toml",
        "[kafka]\nbootstrap_servers = [\"127.0.0.1:9092\"]\n[offsets]\nstore = \"file\"\n[[connector]]\nname = \"eos\"\ntype = \"mqtt-source\"\nmqtt_url = \"mqtt://broker\"\ntopics = [\"a\"]\nkafka_topic = \"a\"\nqos = 2\nexactly_once = true\n",
    );
    assert_validate_reports(&ok, &["offsets.store: connector \"eos\" has exactly_once = true"]);
}
