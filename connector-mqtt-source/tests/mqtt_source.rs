//! The MQTT source on real Mosquitto and Tansu: delivery, routing, crash, Kafka cut, broker
//! restart, QoS 0/2, retained messages, large payloads, illegal topics, shared subscriptions and
//! an independent librdkafka read-back.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_core::runtime::{SourceRuntime, TaskStats};
use connector_core::{MemoryOffsetStore, OffsetStore, Result, SinkRecord, SourceConnector};
use connector_mqtt_source::{MqttSourceConfig, MqttSourceConnector};
use connector_testkit::{
    init_tracing, kafka, wait_until, Mosquitto, MqttPublisher, Tansu, TansuStorage,
};
use rumqttc::QoS;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PROBE: &[u8] = b"probe";

struct Running {
    handle: JoinHandle<Result<()>>,
    stats: Arc<TaskStats>,
    shutdown: CancellationToken,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

fn start(name: &str, config: MqttSourceConfig, client: &KafkaClient) -> Running {
    let tasks = config.tasks;
    let connector = MqttSourceConnector::create(name, config).unwrap();
    let stats = Arc::new(TaskStats::new());
    let shutdown = CancellationToken::new();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let (name, client, s, t) =
        (name.to_owned(), client.clone(), Arc::clone(&stats), shutdown.clone());
    let handle = tokio::spawn(async move {
        SourceRuntime::builder(name.as_str(), &connector, client, store)
            .stats(s)
            .max_tasks(tasks)
            .run(t)
            .await
    });
    Running { handle, stats, shutdown }
}

/// Publishes probes on `mqtt_topic` until one reaches `kafka_topic`: the subscription is live.
async fn wait_subscribed(
    publisher: &MqttPublisher,
    mqtt_topic: &str,
    client: &KafkaClient,
    kafka_topic: &str,
) {
    connector_testkit::wait_source_subscribed(publisher, mqtt_topic, PROBE, client, kafka_topic)
        .await
        .unwrap();
}

/// Records of `topic` that are not probes.
async fn data(client: &KafkaClient, topic: &str) -> Vec<SinkRecord> {
    let all = kafka::consume_all(client, topic).await.unwrap();
    all.into_iter().filter(|r| r.value.as_deref() != Some(PROBE)).collect()
}

/// Waits until `topic` holds `n` distinct non-probe values; returns all non-probe records.
async fn wait_distinct(
    client: &KafkaClient,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<SinkRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = data(client, topic).await;
        let distinct: BTreeSet<_> = records.iter().map(|r| r.value.clone()).collect();
        if distinct.len() >= n {
            return records;
        }
        assert!(Instant::now() < deadline, "{topic}: {} of {n} distinct values", distinct.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn text(b: Option<&bytes::Bytes>) -> String {
    String::from_utf8(b.map(|b| b.to_vec()).unwrap_or_default()).unwrap()
}

fn header(r: &SinkRecord, key: &str) -> String {
    text(r.headers.last(key))
}

/// Publishes `n` messages `"<device>:<seq>"` on `devices/dev-<device>/telemetry` round-robin over
/// `devices` devices, `per_tick` every `tick`.
fn spawn_publishing(
    publisher: Arc<MqttPublisher>,
    n: usize,
    devices: usize,
    per_tick: usize,
    tick: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..n {
            let (d, seq) = (i % devices, i / devices);
            let topic = format!("devices/dev-{d}/telemetry");
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, format!("{d}:{seq}").into_bytes())
                .await
                .unwrap();
            if (i + 1) % per_tick == 0 {
                tokio::time::sleep(tick).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_qos1_messages_from_ten_devices_arrive_keyed_in_device_order_with_headers() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let mut kc = tansu.kafka_config();
    kc.topic_partitions = 4;
    let client = KafkaClient::connect(kc).await.unwrap();
    let config = MqttSourceConfig::new(mqtt.url(), vec!["devices/+/telemetry".into()], "telemetry");
    let source = start("telemetry", config, &client);
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "pub-1").await.unwrap());
    wait_subscribed(&publisher, "devices/probe/telemetry", &client, "telemetry").await;

    spawn_publishing(Arc::clone(&publisher), 10_000, 10, 500, Duration::from_millis(5))
        .await
        .unwrap();
    let records = wait_distinct(&client, "telemetry", 10_000, Duration::from_secs(60)).await;
    source.stop().await;

    assert_eq!(records.len(), 10_000, "no duplicates without a failure");
    let mut per_device: BTreeMap<String, Vec<(i32, usize)>> = BTreeMap::new();
    for r in &records {
        let key = text(r.key.as_ref());
        let value = text(r.value.as_ref());
        let (d, seq) = value.split_once(':').unwrap();
        assert_eq!(key, format!("devices/dev-{d}/telemetry"), "key is the MQTT topic");
        assert_eq!(header(r, "mqtt.topic"), key);
        assert_eq!(header(r, "mqtt.qos"), "1");
        assert_eq!(header(r, "mqtt.retain"), "false");
        assert_eq!(header(r, "mqtt.dup"), "false");
        per_device.entry(key).or_default().push((r.partition, seq.parse().unwrap()));
    }
    assert_eq!(per_device.len(), 10);
    for (device, seen) in per_device {
        let partitions: BTreeSet<i32> = seen.iter().map(|(p, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "{device} stays on one partition");
        let seqs: Vec<usize> = seen.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, (0..1000).collect::<Vec<_>>(), "{device} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_level_template_routes_each_line_to_its_own_kafka_topic() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = MqttSourceConfig::new(mqtt.url(), vec!["plant/#".into()], "plant.{1}");
    let source = start("routing", config, &client);
    let publisher = MqttPublisher::connect(&mqtt.url(), "pub-route").await.unwrap();
    wait_subscribed(&publisher, "plant/probe/x", &client, "plant.probe").await;
    for i in 0..50 {
        publisher
            .publish("plant/line1/temp", QoS::AtLeastOnce, false, format!("t{i}").into_bytes())
            .await
            .unwrap();
    }
    for i in 0..30 {
        publisher
            .publish(
                "plant/line2/pressure/inlet",
                QoS::AtLeastOnce,
                false,
                format!("p{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    let line1 = wait_distinct(&client, "plant.line1", 50, Duration::from_secs(30)).await;
    let line2 = wait_distinct(&client, "plant.line2", 30, Duration::from_secs(30)).await;
    source.stop().await;
    assert!(line1.iter().all(|r| text(r.key.as_ref()) == "plant/line1/temp"));
    assert!(line2.iter().all(|r| text(r.key.as_ref()) == "plant/line2/pressure/inlet"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_connector_loses_nothing_after_restart_and_duplicates_stay_within_the_window() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = MqttSourceConfig::new(mqtt.url(), vec!["devices/+/telemetry".into()], "crash");
    let window = config.inflight;
    let source = start("crash", config.clone(), &client);
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "pub-crash").await.unwrap());
    wait_subscribed(&publisher, "devices/probe/telemetry", &client, "crash").await;

    let n = 20_000;
    let publishing =
        spawn_publishing(Arc::clone(&publisher), n, 10, 100, Duration::from_millis(20));
    let deadline = Instant::now() + Duration::from_secs(60);
    while data(&client, "crash").await.len() < n / 3 {
        assert!(Instant::now() < deadline, "no progress before the crash");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The crash: the connector is dropped mid-stream, no shutdown, no DISCONNECT.
    source.handle.abort();
    let _ = source.handle.await;
    let at_crash = data(&client, "crash").await.len();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let source = start("crash", config, &client);
    publishing.await.unwrap();
    publisher.wait_acknowledged(n as u64, Duration::from_secs(60)).await.unwrap();
    let records = wait_distinct(&client, "crash", n, Duration::from_secs(120)).await;
    source.stop().await;
    let duplicates = records.len() - n;
    eprintln!("crash at {at_crash} of {n}: {duplicates} duplicates (window {window})");
    assert!(at_crash < n, "the crash happened mid-stream");
    assert!(
        duplicates <= window,
        "{duplicates} duplicates exceed the in-flight window of {window}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_kafka_is_cut_for_ten_seconds_nothing_is_acknowledged_and_nothing_is_lost() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = MqttSourceConfig::new(mqtt.url(), vec!["devices/+/telemetry".into()], "cut");
    let source = start("cut", config, &client);
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "pub-cut").await.unwrap());
    wait_subscribed(&publisher, "devices/probe/telemetry", &client, "cut").await;

    let n = 4_000;
    let publishing =
        spawn_publishing(Arc::clone(&publisher), n, 10, 20, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_at_cut = source.stats.snapshot().committed;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let acked_during_cut = source.stats.snapshot().committed;
    assert_eq!(acked_at_cut, acked_during_cut, "no MQTT acknowledgement while Kafka is cut");
    proxy.heal();

    publishing.await.unwrap();
    let records = wait_distinct(&client, "cut", n, Duration::from_secs(120)).await;
    source.stop().await;
    eprintln!(
        "Kafka cut 10 s: {acked_at_cut} acknowledged before, none during; {} records for {n}",
        records.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mosquitto_restart_mid_stream_loses_nothing() {
    init_tracing();
    let mut mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = MqttSourceConfig::new(mqtt.url(), vec!["devices/+/telemetry".into()], "restart");
    let source = start("restart", config, &client);
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "pub-restart").await.unwrap());
    wait_subscribed(&publisher, "devices/probe/telemetry", &client, "restart").await;

    let n = 5_000;
    let publishing = spawn_publishing(Arc::clone(&publisher), n, 10, 50, Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(60);
    while data(&client, "restart").await.len() < 1_500 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mqtt.restart().await.unwrap();
    publishing.await.unwrap();
    publisher.wait_acknowledged(n as u64, Duration::from_secs(60)).await.unwrap();
    let records = wait_distinct(&client, "restart", n, Duration::from_secs(120)).await;
    source.stop().await;
    eprintln!("Mosquitto restart: {} records for {n}", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_and_qos2_subscriptions_deliver_with_their_qos_header() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    for (qos, name) in [(QoS::AtMostOnce, "qos0"), (QoS::ExactlyOnce, "qos2")] {
        let mut config = MqttSourceConfig::new(mqtt.url(), vec![format!("{name}/#")], name);
        config.qos = qos as u8;
        let source = start(name, config, &client);
        let publisher = MqttPublisher::connect(&mqtt.url(), &format!("pub-{name}")).await.unwrap();
        wait_subscribed(&publisher, &format!("{name}/probe"), &client, name).await;
        for i in 0..200 {
            publisher
                .publish(&format!("{name}/dev"), qos, false, format!("{i}").into_bytes())
                .await
                .unwrap();
        }
        let records = wait_distinct(&client, name, 200, Duration::from_secs(30)).await;
        source.stop().await;
        let expected = (qos as u8).to_string();
        assert!(records.iter().all(|r| header(r, "mqtt.qos") == expected), "{name}");
        let values: Vec<usize> =
            records.iter().map(|r| text(r.value.as_ref()).parse().unwrap()).collect();
        assert_eq!(values, (0..200).collect::<Vec<_>>(), "{name} in order, once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_forwarded_or_skipped_as_configured() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let publisher = MqttPublisher::connect(&mqtt.url(), "pub-retained").await.unwrap();
    publisher.publish("state/dev1", QoS::AtLeastOnce, true, b"last-known".to_vec()).await.unwrap();
    publisher.wait_acknowledged(1, Duration::from_secs(5)).await.unwrap();

    let kept = start(
        "keep-retained",
        MqttSourceConfig::new(mqtt.url(), vec!["state/#".into()], "kept"),
        &client,
    );
    let mut skip = MqttSourceConfig::new(mqtt.url(), vec!["state/#".into()], "skipped");
    skip.skip_retained = true;
    let skipped = start("skip-retained", skip, &client);
    wait_subscribed(&publisher, "state/probe", &client, "skipped").await;
    publisher.publish("state/dev1", QoS::AtLeastOnce, false, b"live".to_vec()).await.unwrap();

    let kept_records = wait_distinct(&client, "kept", 2, Duration::from_secs(30)).await;
    let skipped_records = wait_distinct(&client, "skipped", 1, Duration::from_secs(30)).await;
    kept.stop().await;
    skipped.stop().await;
    let retained: Vec<_> =
        kept_records.iter().filter(|r| header(r, "mqtt.retain") == "true").collect();
    assert_eq!(retained.len(), 1);
    assert_eq!(text(retained[0].value.as_ref()), "last-known");
    assert!(skipped_records.iter().all(|r| text(r.value.as_ref()) == "live"), "retained skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_kib_payload_passes_unchanged() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let source =
        start("large", MqttSourceConfig::new(mqtt.url(), vec!["big/#".into()], "large"), &client);
    let publisher = MqttPublisher::connect(&mqtt.url(), "pub-large").await.unwrap();
    wait_subscribed(&publisher, "big/probe", &client, "large").await;
    let payload: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    publisher.publish("big/blob", QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
    let records = wait_distinct(&client, "large", 1, Duration::from_secs(30)).await;
    source.stop().await;
    assert_eq!(records[0].value.as_deref(), Some(&payload[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_illegal_kafka_topic_stops_the_connector_naming_the_mqtt_topic_and_the_message_is_kept()
{
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = MqttSourceConfig::new(mqtt.url(), vec!["plant/#".into()], "{topic}");
    let source = start("illegal", config, &client);
    let publisher = MqttPublisher::connect(&mqtt.url(), "pub-illegal").await.unwrap();
    wait_subscribed(&publisher, "plant/probe", &client, "plant.probe").await;
    publisher
        .publish("plant/bad topic/x", QoS::AtLeastOnce, false, b"keep me".to_vec())
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), source.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"plant/bad topic/x\""), "{msg}");
    assert!(msg.contains("illegal") || msg.contains("not legal"), "{msg}");

    // Not acknowledged: the broker redelivers it to the same session, which now routes it legally.
    let config = MqttSourceConfig::new(mqtt.url(), vec!["plant/#".into()], "quarantine");
    let source = start("illegal", config, &client);
    let records = wait_distinct(&client, "quarantine", 1, Duration::from_secs(30)).await;
    source.stop().await;
    assert_eq!(text(records[0].value.as_ref()), "keep me");
    assert_eq!(header(&records[0], "mqtt.dup"), "true", "it came back as a redelivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tasks_share_the_subscription_and_deliver_each_message_once() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let mut config =
        MqttSourceConfig::new(mqtt.url(), vec!["devices/+/telemetry".into()], "shared");
    config.tasks = 3;
    let source = start("shared", config, &client);
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "pub-shared").await.unwrap());
    wait_subscribed(&publisher, "devices/probe/telemetry", &client, "shared").await;
    spawn_publishing(Arc::clone(&publisher), 3_000, 10, 300, Duration::from_millis(10))
        .await
        .unwrap();
    let records = wait_distinct(&client, "shared", 3_000, Duration::from_secs(60)).await;
    source.stop().await;
    assert_eq!(records.len(), 3_000, "each message once across the tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reads_back_the_same_keys_values_and_headers() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let source = start(
        "interop",
        MqttSourceConfig::new(mqtt.url(), vec!["devices/+/telemetry".into()], "interop"),
        &client,
    );
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "pub-interop").await.unwrap());
    wait_subscribed(&publisher, "devices/probe/telemetry", &client, "interop").await;
    spawn_publishing(Arc::clone(&publisher), 100, 5, 100, Duration::ZERO).await.unwrap();
    wait_distinct(&client, "interop", 100, Duration::from_secs(30)).await;
    source.stop().await;
    let ours = kafka::consume_all(&client, "interop").await.unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka-dump.py");
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            "--bootstrap",
            &tansu.bootstrap(),
            "--topic",
            "interop",
            "--count",
            &ours.len().to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "kafka-dump.py: {}", String::from_utf8_lossy(&out.stderr));
    let b64 = |s: &serde_json::Value| s.as_str().map(base64_decode);
    let mut theirs: Vec<Seen> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let headers = v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_owned(), b64(&h[1]).unwrap_or_default()))
                .collect();
            (b64(&v["key"]), b64(&v["value"]), headers)
        })
        .collect();
    let mut ours: Vec<Seen> = ours
        .iter()
        .map(|r| {
            let headers = r.headers.iter().map(|h| (h.key.to_string(), h.value.to_vec())).collect();
            (r.key.as_ref().map(|b| b.to_vec()), r.value.as_ref().map(|b| b.to_vec()), headers)
        })
        .collect();
    theirs.sort();
    ours.sort();
    assert_eq!(theirs.len(), ours.len());
    assert_eq!(theirs, ours, "librdkafka sees the same keys, values and headers");
}

/// A record as two clients see it: key, value, headers in order.
type Seen = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// Minimal base64 (standard alphabet, padded) for the interop check.
fn base64_decode(s: &str) -> Vec<u8> {
    let table = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= table(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// A source reaching Mosquitto through a fault proxy, and Kafka through another.
struct CrashRig {
    _mqtt: Mosquitto,
    _tansu: Tansu,
    mqtt_proxy: connector_testkit::FaultProxy,
    kafka_proxy: connector_testkit::FaultProxy,
    client: KafkaClient,
    publisher: MqttPublisher,
    config: MqttSourceConfig,
}

async fn crash_rig(topic: &str) -> CrashRig {
    let mqtt = Mosquitto::start().await.unwrap();
    let (tansu, kafka_proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let mut kc = tansu.kafka_config();
    kc.retry_backoff.max_ms = 200;
    let client = KafkaClient::connect(kc).await.unwrap();
    let mqtt_proxy = connector_testkit::FaultProxy::start(mqtt.addr()).await.unwrap();
    let config = MqttSourceConfig::new(
        format!("mqtt://{}", mqtt_proxy.host_port()),
        vec!["devices/#".into()],
        topic,
    );
    let publisher = MqttPublisher::connect(&mqtt.url(), &format!("pub-{topic}")).await.unwrap();
    CrashRig { _mqtt: mqtt, _tansu: tansu, mqtt_proxy, kafka_proxy, client, publisher, config }
}

/// Publishes `m0..m<n>` and waits until the broker has them all.
async fn publish_numbered(publisher: &MqttPublisher, n: usize) {
    let before = publisher.acknowledged();
    for i in 0..n {
        publisher
            .publish("devices/d/telemetry", QoS::AtLeastOnce, false, format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    publisher.wait_acknowledged(before + n as u64, Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_mqtt_delivery_before_the_kafka_ack_redelivers_everything_without_duplicates() {
    init_tracing();
    let rig = crash_rig("row1").await;
    let source = start("row1", rig.config.clone(), &rig.client);
    wait_subscribed(&rig.publisher, "devices/probe", &rig.client, "row1").await;
    let probes = kafka::count(&rig.client, "row1").await.unwrap() as usize;

    rig.kafka_proxy.cut();
    publish_numbered(&rig.publisher, 300).await;
    // Delivered to the connector (it pulls up to its window), but Kafka cannot have them.
    wait_until("the connector received the messages", Duration::from_secs(30), || {
        source.stats.snapshot().records_in >= 300
    })
    .await
    .unwrap();
    assert_eq!(source.stats.snapshot().committed as usize, probes, "none acknowledged");
    source.handle.abort();
    let _ = source.handle.await;

    rig.kafka_proxy.heal();
    let source = start("row1", rig.config.clone(), &rig.client);
    let records = wait_distinct(&rig.client, "row1", 300, Duration::from_secs(60)).await;
    source.stop().await;
    assert_eq!(records.len(), 300, "redelivered once each, none lost, none doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_kafka_ack_before_the_mqtt_ack_duplicates_exactly_the_unacknowledged() {
    init_tracing();
    let rig = crash_rig("row2").await;
    let source = start("row2", rig.config.clone(), &rig.client);
    wait_subscribed(&rig.publisher, "devices/probe", &rig.client, "row2").await;

    // Hold the messages before Kafka, then hold the MQTT link, then let Kafka take them: their
    // PUBACKs leave the connector but stay in the (silent) network.
    rig.kafka_proxy.cut();
    publish_numbered(&rig.publisher, 300).await;
    wait_until("the connector received the messages", Duration::from_secs(30), || {
        source.stats.snapshot().records_in >= 300
    })
    .await
    .unwrap();
    rig.mqtt_proxy.blackhole();
    rig.kafka_proxy.heal();
    wait_distinct(&rig.client, "row2", 300, Duration::from_secs(60)).await;
    // The crash; the held acknowledgements die with the connection.
    source.handle.abort();
    let _ = source.handle.await;
    rig.mqtt_proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.mqtt_proxy.heal();

    let source = start("row2", rig.config.clone(), &rig.client);
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let r = data(&rig.client, "row2").await;
        if r.len() >= 600 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "expected the 300 redeliveries, have {} records",
            r.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.stop().await;
    let distinct: BTreeSet<_> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(distinct.len(), 300, "nothing lost");
    assert_eq!(
        data(&rig.client, "row2").await.len(),
        600,
        "each unacknowledged message exactly once more"
    );
    let redelivered = records.iter().filter(|r| header(r, "mqtt.dup") == "true").count();
    assert_eq!(redelivered, 300, "the second copies are broker redeliveries");
}
