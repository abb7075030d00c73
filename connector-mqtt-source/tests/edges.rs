//! The MQTT source at its edges, on real Mosquitto and Tansu, in both MQTT versions: a refused
//! subscription fails the connector naming the filter, an oversize message is dead-lettered
//! without wedging the connection, and a Kafka outage does not cost the MQTT connection.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The figures each test prints come from helpers shared by its two MQTT versions.
#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_core::runtime::{Pipeline, SourceRuntime, SourceRuntimeConfig, TaskStats};
use connector_core::{
    ErrorPolicyConfig, MemoryOffsetStore, OffsetStore, Result, SinkRecord, SourceConnector,
    Tolerance,
};
use connector_mqtt_common::MqttVersion;
use connector_mqtt_source::{MqttSourceConfig, MqttSourceConnector};
use connector_testkit::{
    init_tracing, kafka, Mosquitto, MosquittoOptions, MqttPublisher, Tansu, TansuStorage,
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

fn start(
    name: &str,
    config: MqttSourceConfig,
    client: &KafkaClient,
    runtime: SourceRuntimeConfig,
) -> Running {
    let connector = MqttSourceConnector::create(name, config).unwrap();
    let stats = Arc::new(TaskStats::new());
    let shutdown = CancellationToken::new();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let (name, client, s, t) =
        (name.to_owned(), client.clone(), Arc::clone(&stats), shutdown.clone());
    let handle = tokio::spawn(async move {
        SourceRuntime::builder(name.as_str(), &connector, client, store)
            .config(runtime)
            .stats(s)
            .max_tasks(1)
            .run(t)
            .await
    });
    Running { handle, stats, shutdown }
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

fn header(r: &SinkRecord, key: &str) -> String {
    String::from_utf8(r.headers.last(key).map(|b| b.to_vec()).unwrap_or_default()).unwrap()
}

/// How many times `client_id` connected, from the Mosquitto log.
fn connects(mqtt: &Mosquitto, client_id: &str) -> usize {
    let needle = format!(" as {client_id} (");
    mqtt.log().lines().filter(|l| l.contains("New client connected") && l.contains(&needle)).count()
}

fn version_name(v: MqttVersion) -> &'static str {
    match v {
        MqttVersion::V311 => "v311",
        MqttVersion::V5 => "v5",
    }
}

// ---- refused subscriptions -------------------------------------------------------------------

/// Mosquitto's dynamic security plugin (shipped with Mosquitto 2). Its ACLs refuse subscriptions
/// in the SUBACK (0x80 in MQTT 3.1.1, 0x87 "not authorized" in MQTT 5); Mosquitto 2.0.11's
/// `acl_file` does not: it grants the subscription and then delivers nothing.
fn dynsec_plugin() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("mosquitto_dynamic_security.so not found in {candidates:?} (it ships with the mosquitto package)")
    })
}

/// A Mosquitto whose anonymous clients may subscribe to anything but `secret/#`.
async fn mosquitto_denying_secret() -> (Mosquitto, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("dynamic-security.json");
    std::fs::write(
        &json,
        r#"{
  "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true, "subscribe": true, "unsubscribe": true},
  "clients": [],
  "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-secrets"}]}],
  "roles": [{"rolename": "no-secrets", "acls": [{"acltype": "subscribePattern", "topic": "secret/#", "priority": 0, "allow": false}]}],
  "anonymousGroup": "anonymous"
}"#,
    )
    .unwrap();
    let options = MosquittoOptions {
        extra_config: vec![
            format!("plugin {}", dynsec_plugin().display()),
            format!("plugin_opt_config_file {}", json.display()),
        ],
        ..MosquittoOptions::default()
    };
    (Mosquitto::start_with(options).await.unwrap(), dir)
}

async fn a_refused_subscription_fails_the_source_naming_the_filter(version: MqttVersion) {
    init_tracing();
    let (mqtt, _dir) = mosquitto_denying_secret().await;
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let mut config = MqttSourceConfig::new(
        mqtt.url(),
        vec!["devices/+/telemetry".into(), "secret/#".into()],
        "refused",
    );
    config.connection.mqtt_version = version;
    let name = format!("refused-{}", version_name(version));
    let source = start(&name, config, &client, SourceRuntimeConfig::default());
    let err = tokio::time::timeout(Duration::from_secs(30), source.handle)
        .await
        .expect("the source must fail, not run on with part of its subscription")
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("{version:?}: {msg}");
    assert!(msg.contains("\"secret/#\""), "names the refused filter: {msg}");
    assert!(!msg.contains("devices/+/telemetry"), "only the refused filter: {msg}");
    let reason = match version {
        MqttVersion::V311 => "0x80",
        MqttVersion::V5 => "NotAuthorized",
    };
    assert!(msg.contains(reason), "gives the broker's reason {reason}: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_fails_the_source_naming_the_filter_mqtt311() {
    a_refused_subscription_fails_the_source_naming_the_filter(MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_fails_the_source_naming_the_filter_mqtt5() {
    a_refused_subscription_fails_the_source_naming_the_filter(MqttVersion::V5).await;
}

// ---- oversize messages -----------------------------------------------------------------------

async fn an_oversize_message_is_dead_lettered_and_the_stream_goes_on(version: MqttVersion) {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let name = format!("oversize-{}", version_name(version));
    let topic = name.clone();
    let dlq = format!("{name}.dlq");
    let mut config = MqttSourceConfig::new(mqtt.url(), vec!["big/#".into()], topic.clone());
    config.connection.mqtt_version = version;
    config.connection.max_packet_size = 4096;
    let runtime = SourceRuntimeConfig {
        pipeline: Pipeline {
            errors: ErrorPolicyConfig {
                tolerance: Tolerance::All,
                dead_letter_topic: Some(dlq.clone()),
                ..ErrorPolicyConfig::default()
            },
            ..Pipeline::default()
        },
        ..SourceRuntimeConfig::default()
    };
    let source = start(&name, config, &client, runtime);
    let publisher = MqttPublisher::connect(&mqtt.url(), &format!("pub-{name}")).await.unwrap();
    connector_testkit::wait_source_subscribed(&publisher, "big/probe", PROBE, &client, &topic)
        .await
        .unwrap();

    // 20 small messages, one of 40 KiB (ten times max_packet_size), 20 more.
    for i in 0..41 {
        let payload = if i == 20 { vec![b'x'; 40 * 1024] } else { format!("m{i}").into_bytes() };
        publisher.publish("big/data", QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    let records = wait_distinct(&client, &topic, 40, Duration::from_secs(30)).await;
    let dead = kafka::consume_at_least(&client, &dlq, 1, Duration::from_secs(30)).await.unwrap();
    // Time for a reconnect loop to show (the old behaviour: a reconnect every backoff step).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dead_after = kafka::consume_all(&client, &dlq).await.unwrap();
    assert!(!source.handle.is_finished(), "the source is alive");
    let connected = connects(&mqtt, &name);
    let stats = source.stats.snapshot();
    source.stop().await;
    eprintln!(
        "{version:?}: {} records, {} dead letters, {connected} connects, stats {stats:?}",
        records.len(),
        dead_after.len()
    );
    assert_eq!(records.len(), 40, "every normal message, once");
    assert_eq!(dead_after.len(), 1, "one dead letter, not redelivered: {dead_after:?}");
    let d = &dead[0];
    assert_eq!(d.value, None, "the payload is dropped");
    let size: usize = header(d, "mqtt.packet_size").parse().unwrap();
    assert!(size > 40 * 1024, "the size header gives the packet's size: {size}");
    assert_eq!(header(d, "mqtt.topic"), "big/data");
    assert_eq!(connected, 1, "no reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_dead_lettered_and_the_stream_goes_on_mqtt311() {
    an_oversize_message_is_dead_lettered_and_the_stream_goes_on(MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_dead_lettered_and_the_stream_goes_on_mqtt5() {
    an_oversize_message_is_dead_lettered_and_the_stream_goes_on(MqttVersion::V5).await;
}

// ---- keep-alive while Kafka is cut -----------------------------------------------------------

async fn a_kafka_cut_of_30_s_costs_no_mqtt_reconnect(version: MqttVersion) {
    init_tracing();
    // No broker-side in-flight limit: only the source's own window (MQTT 5 Receive Maximum)
    // bounds what the broker sends while nothing is acknowledged.
    let mqtt =
        Mosquitto::start_with(MosquittoOptions { max_inflight_messages: 0, ..Default::default() })
            .await
            .unwrap();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let client = tansu.client().await.unwrap();
    let name = format!("keepalive-{}", version_name(version));
    let topic = name.clone();
    let mut config = MqttSourceConfig::new(mqtt.url(), vec!["devices/+/telemetry".into()], &topic);
    config.connection.mqtt_version = version;
    config.connection.keep_alive_secs = 5;
    // Kafka holds few records in flight: the source itself must hold back the rest.
    let runtime = SourceRuntimeConfig { max_in_flight_records: 100, ..Default::default() };
    let source = start(&name, config, &client, runtime);
    let publisher =
        Arc::new(MqttPublisher::connect(&mqtt.url(), &format!("pub-{name}")).await.unwrap());
    connector_testkit::wait_source_subscribed(
        &publisher,
        "devices/probe/telemetry",
        PROBE,
        &client,
        &topic,
    )
    .await
    .unwrap();

    // 100 messages a second through the 30 s cut and a little after.
    let n = 3_200;
    let p = Arc::clone(&publisher);
    let publishing = tokio::spawn(async move {
        for i in 0..n {
            let topic = format!("devices/dev-{}/telemetry", i % 10);
            p.publish(&topic, QoS::AtLeastOnce, false, format!("{i}").into_bytes()).await.unwrap();
            if (i + 1) % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(30)).await;
    proxy.heal();
    publishing.await.unwrap();
    let records = wait_distinct(&client, &topic, n, Duration::from_secs(60)).await;
    let connected = connects(&mqtt, &name);
    let stats = source.stats.snapshot();
    source.stop().await;
    let redelivered = records.iter().filter(|r| header(r, "mqtt.dup") == "true").count();
    eprintln!(
        "{version:?}: Kafka cut 30 s, keep_alive 5 s: {} records for {n} distinct, {redelivered} redelivered, {connected} connects, stats {stats:?}",
        records.len()
    );
    assert_eq!(connected, 1, "no MQTT reconnect");
    assert_eq!(redelivered, 0, "no redelivery");
    assert_eq!(records.len(), n, "no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_cut_of_30_s_costs_no_mqtt_reconnect_mqtt311() {
    a_kafka_cut_of_30_s_costs_no_mqtt_reconnect(MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_cut_of_30_s_costs_no_mqtt_reconnect_mqtt5() {
    a_kafka_cut_of_30_s_costs_no_mqtt_reconnect(MqttVersion::V5).await;
}
