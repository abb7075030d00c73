//! Publishes the broker will not take, on real Mosquitto and Tansu: an MQTT 5 PUBACK/PUBREC with a
//! failure reason code (an ACL that denies a topic) and a command over the broker's maximum packet
//! size (announced in MQTT 5's CONNACK, configured, or found out from the broker dropping the
//! connection on MQTT 3.1.1). Each is a record error for the error policy, never a committed
//! success, and never a reconnect loop.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runtime::{SinkRuntime, SinkRuntimeConfig, TaskStats};
use connector_core::{
    ErrorPolicyConfig, MemoryOffsetStore, OffsetStore, Result, SinkConnector, SinkRecord,
    Tolerance, TopicPartition,
};
use connector_mqtt_common::MqttVersion;
use connector_mqtt_sink::{MqttSinkConfig, MqttSinkConnector};
use connector_testkit::kafka::consume_at_least;
use connector_testkit::{
    init_tracing, wait_until, Mosquitto, MosquittoOptions, MqttSubscriber, Tansu,
};
use rumqttc::QoS;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    handle: JoinHandle<Result<()>>,
    shutdown: CancellationToken,
    stats: Arc<TaskStats>,
}

fn start(
    name: &str,
    config: MqttSinkConfig,
    client: &KafkaClient,
    store: &Arc<MemoryOffsetStore>,
    errors: ErrorPolicyConfig,
) -> Running {
    let connector = MqttSinkConnector::create(name, config).unwrap();
    let shutdown = CancellationToken::new();
    let store = Arc::clone(store) as Arc<dyn OffsetStore>;
    let mut runtime = SinkRuntimeConfig { commit_interval_ms: 100, ..SinkRuntimeConfig::default() };
    runtime.pipeline.errors = errors;
    let (name, client, t) = (name.to_owned(), client.clone(), shutdown.clone());
    let stats = Arc::new(TaskStats::new());
    let counted = Arc::clone(&stats);
    let handle = tokio::spawn(async move {
        SinkRuntime::builder(name.as_str(), &connector, client, store)
            .config(runtime)
            .stats(stats)
            .max_tasks(1)
            .run(t)
            .await
    });
    Running { handle, shutdown, stats: counted }
}

fn dead_letters(topic: &str) -> ErrorPolicyConfig {
    ErrorPolicyConfig {
        tolerance: Tolerance::All,
        dead_letter_topic: Some(topic.to_owned()),
        ..ErrorPolicyConfig::default()
    }
}

async fn committed(store: &MemoryOffsetStore, name: &str, topic: &str) -> i64 {
    store.load(name).await.unwrap().kafka_offset(&TopicPartition::new(topic, 0)).unwrap_or(0)
}

fn header(r: &SinkRecord, key: &str) -> String {
    String::from_utf8(r.headers.last(key).unwrap_or_else(|| panic!("no header {key}")).to_vec())
        .unwrap()
}

/// A Mosquitto whose ACL lets anonymous clients do anything except publish to (or read)
/// `cars/blocked/cmd`.
async fn mosquitto_denying_blocked() -> (Mosquitto, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic deny cars/blocked/cmd\ntopic readwrite #\n").unwrap();
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        // Debug: the log shows each PUBREL received.
        extra_config: vec![format!("acl_file {}", acl.display()), "log_type debug".into()],
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    (mqtt, dir)
}

/// Connections the broker accepted from `client_id`, from its log.
fn connections(mqtt: &Mosquitto, client_id: &str) -> usize {
    let as_client = format!(" as {client_id} (");
    mqtt.log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&as_client))
        .count()
}

/// Commands 0..n, the ones with `i % every == every - 1` to the denied topic (key `blocked`).
async fn produce_commands(client: &KafkaClient, topic: &str, n: usize, every: usize) {
    let records = (0..n)
        .map(|i| {
            let key = if i % every == every - 1 {
                "blocked".to_owned()
            } else {
                format!("car-{}", i % 7)
            };
            ProducerRecord::new(topic, format!("{i}")).with_key(key).with_header("origin", "ops")
        })
        .collect();
    client.produce(records).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tolerance_none_an_mqtt5_refusal_fails_the_connector_naming_record_and_reason() {
    init_tracing();
    let (mqtt, _acl) = mosquitto_denying_blocked().await;
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    produce_commands(&client, "denied", 50, 21).await; // offsets 20 and 41 are denied
    let mut config = MqttSinkConfig::new(mqtt.url(), vec!["denied".into()], "cars/{key}/cmd");
    config.connection.mqtt_version = MqttVersion::V5;
    let sink = start("denied", config, &client, &store, ErrorPolicyConfig::default());
    let err = tokio::time::timeout(Duration::from_secs(20), sink.handle)
        .await
        .expect("the connector fails")
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    for part in
        ["topic=denied", "partition=0", "offset=20", "cars/blocked/cmd", "0x87", "NotAuthorized"]
    {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    let at = committed(&store, "denied", "denied").await;
    assert!(at <= 20, "committed {at}: never past the refused record");
    drop(sink.shutdown);
}

/// 500 commands, every 50th to a topic the ACL denies, MQTT 5: the 10 refused ones are dead
/// letters with the broker's reason, the 490 others reach a subscriber, offsets move past all.
async fn refused_ones_are_dead_lettered(name: &str, qos: u8, exactly_once: bool) {
    init_tracing();
    let (mqtt, _acl) = mosquitto_denying_blocked().await;
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "cars/#", QoS::AtLeastOnce).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    produce_commands(&client, name, 500, 50).await;
    let mut config = MqttSinkConfig::new(mqtt.url(), vec![name.into()], "cars/{key}/cmd");
    config.connection.mqtt_version = MqttVersion::V5;
    config.qos = qos;
    if exactly_once {
        config.exactly_once = true;
        config.clean_session = false;
        config.inflight = 20;
    }
    let began = Instant::now();
    let dlq = format!("{name}.dlq");
    let sink = start(name, config, &client, &store, dead_letters(&dlq));
    wait_until("offset 500 committed", Duration::from_secs(30), || {
        futures::executor::block_on(committed(&store, name, name)) == 500
    })
    .await
    .unwrap();
    let took = began.elapsed();
    let dead = consume_at_least(&client, &dlq, 10, Duration::from_secs(10)).await.unwrap();
    wait_until("490 delivered", Duration::from_secs(10), || {
        sub.messages().iter().map(|m| m.payload.clone()).collect::<BTreeSet<_>>().len() >= 490
    })
    .await
    .unwrap();
    sink.shutdown.cancel();
    sink.handle.await.unwrap().unwrap();
    if exactly_once {
        // A refused PUBREC freed its packet id: the saved state holds no publish in flight.
        let state = store.load(&format!("{name}.sink-state")).await.unwrap();
        let session = state
            .get(&connector_core::SourcePartition::from([("mqtt_session", name)]))
            .expect("the session's state");
        let json = serde_json::to_value(session).unwrap();
        assert_eq!(json["sent"], serde_json::json!([]), "{json}");
        assert_eq!(json["done"][0]["through"], 500, "{json}");
    }
    // The refusals are counted by reason code (what `/metrics` exports as
    // mqtt_publish_refused_total{reason="not_authorized"}), each dead letter once.
    let refusals: u64 = sink
        .stats
        .custom()
        .samples()
        .iter()
        .filter(|c| {
            c.name == "mqtt_publish_refused" && c.label == Some(("reason", "not_authorized"))
        })
        .map(|c| c.value())
        .sum();
    assert!(refusals >= 10, "{refusals} refusals counted");
    assert_eq!(sink.stats.snapshot().dead_letters, 10);

    let delivered: BTreeSet<usize> = sub
        .messages()
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap().parse().unwrap())
        .collect();
    let allowed: BTreeSet<usize> = (0..500).filter(|i| i % 50 != 49).collect();
    assert_eq!(delivered, allowed, "every allowed command, and no refused one");
    let refused: Vec<String> = dead.iter().map(|r| header(r, "__connect.errors.offset")).collect();
    assert_eq!(dead.len(), 10, "each refused record once: {refused:?}");
    let mut values: Vec<usize> = dead
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..10).map(|i| i * 50 + 49).collect::<Vec<_>>());
    let d = &dead[0];
    assert_eq!(d.key.as_deref(), Some(&b"blocked"[..]), "the original key");
    assert_eq!(header(d, "origin"), "ops", "the original headers");
    assert_eq!(header(d, "__connect.errors.topic"), name);
    assert_eq!(header(d, "__connect.errors.mqtt.reason.code"), "0x87");
    assert_eq!(header(d, "__connect.errors.mqtt.reason.name"), "NotAuthorized");
    assert_eq!(header(d, "__connect.errors.mqtt.topic"), "cars/blocked/cmd");
    assert!(header(d, "__connect.errors.exception.message").contains("refused"));
    if qos == 2 {
        let from = format!("Received PUBREL from {name} ");
        let released = mqtt.log().lines().filter(|l| l.contains(&from)).count();
        assert_eq!(
            released, 490,
            "a PUBREL for each accepted command, none after a refused PUBREC"
        );
    }
    // A broker may close an MQTT 5 connection right after refusing: one reconnect per refused
    // record at most, and the run stays quick.
    let connects = connections(&mqtt, name);
    tracing::info!(
        name,
        connects,
        ?took,
        "connections for 10 refused records; offset 500 committed"
    );
    assert!(connects <= 11, "{connects} connections for 10 refused records");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tolerance_all_mqtt5_refusals_are_dead_lettered_with_the_reason_and_the_rest_delivered(
) {
    refused_ones_are_dead_lettered("acl1", 1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_qos2_pubrec_is_dead_lettered_and_gets_no_pubrel() {
    refused_ones_are_dead_lettered("acl2", 2, false).await;
}

/// Exactly once: a refused PUBREC (MQTT 5, reason code >= 0x80) goes to the error policy and
/// frees its packet id; the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_a_refused_pubrec_is_dead_lettered_and_frees_its_packet_id() {
    refused_ones_are_dead_lettered("acl3", 2, true).await;
}

/// 200 small commands and one of 10 kB to a Mosquitto with `max_packet_size 4096`.
async fn an_oversize_command_is_dead_lettered(
    name: &str,
    version: MqttVersion,
    ours: usize,
    expected_reason: &str,
) {
    init_tracing();
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        extra_config: vec!["max_packet_size 4096".into()],
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "cars/#", QoS::AtLeastOnce).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let records = (0..201)
        .map(|i| {
            let value = if i == 100 { "x".repeat(10_000) } else { format!("{i}") };
            ProducerRecord::new(name, value).with_key(format!("car-{}", i % 7))
        })
        .collect();
    client.produce(records).await.unwrap();
    let mut config = MqttSinkConfig::new(mqtt.url(), vec![name.into()], "cars/{key}/cmd");
    config.connection.mqtt_version = version;
    config.connection.max_packet_size = ours;
    config.connection.reconnect_backoff.max_ms = 500;
    let dlq = format!("{name}.dlq");
    let sink = start(name, config, &client, &store, dead_letters(&dlq));
    let dead = consume_at_least(&client, &dlq, 1, Duration::from_secs(30)).await.unwrap();
    wait_until("offset 201 committed", Duration::from_secs(20), || {
        futures::executor::block_on(committed(&store, name, name)) == 201
    })
    .await
    .unwrap();
    wait_until("200 delivered", Duration::from_secs(10), || {
        sub.messages().iter().map(|m| m.payload.clone()).collect::<BTreeSet<_>>().len() >= 200
    })
    .await
    .unwrap();
    sink.shutdown.cancel();
    sink.handle.await.unwrap().unwrap();
    let delivered: BTreeSet<String> =
        sub.messages().iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();
    let normal: BTreeSet<String> = (0..201).filter(|i| *i != 100).map(|i| i.to_string()).collect();
    assert_eq!(delivered, normal, "every normal command, and not the big one");
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "__connect.errors.offset"), "100");
    assert_eq!(dead[0].value.as_ref().map(|v| v.len()), Some(10_000), "the original value");
    let why = header(&dead[0], "__connect.errors.exception.message");
    tracing::info!(name, why, connects = connections(&mqtt, name), "dead-lettered");
    assert!(why.contains(expected_reason), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_a_command_over_the_broker_announced_maximum_packet_size_is_dead_lettered_unsent() {
    let unsent = "exceeds the maximum packet size of 4096 bytes";
    an_oversize_command_is_dead_lettered("big5", MqttVersion::V5, 1 << 20, unsent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_a_command_over_max_packet_size_is_dead_lettered_unsent() {
    let unsent = "exceeds the maximum packet size of 4096 bytes";
    an_oversize_command_is_dead_lettered("big4", MqttVersion::V311, 4096, unsent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_a_command_the_broker_drops_the_connection_on_is_dead_lettered_after_a_few_tries() {
    // Our limit is larger than the broker's: Mosquitto closes the connection on the big PUBLISH
    // without a word (MQTT 3.1.1 has none).
    let dropped = "closed the connection 3 times right after this publish";
    an_oversize_command_is_dead_lettered("drop4", MqttVersion::V311, 1 << 20, dropped).await;
}

/// [`mqtt311_a_command_the_broker_drops_the_connection_on_is_dead_lettered_after_a_few_tries`]
/// with `format = "sparkplug_b"` learning BIRTHs: the SUBACK of the BIRTH subscription, and the
/// BIRTHs the broker delivers (every `births_every` from an edge node, QoS 0 as Sparkplug
/// publishes them), must not excuse the drop on the big command, or it is sent forever.
async fn a_sparkplug_command_the_broker_drops_the_connection_on_is_dead_lettered(
    name: &str,
    births_every: Option<Duration>,
) {
    use connector_sparkplug::encode::EdgeNode;
    use connector_sparkplug::{decode_metrics, decode_payload, DataType, Value};
    init_tracing();
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        extra_config: vec!["max_packet_size 4096".into()],
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "spBv1.0/plant/NCMD/+", QoS::AtLeastOnce)
            .await
            .unwrap();
    let stop_births = CancellationToken::new();
    let births = births_every.map(|every| {
        let (url, stop) = (mqtt.url(), stop_births.clone());
        tokio::spawn(async move {
            let publisher = connector_testkit::MqttPublisher::connect(&url, "edge").await.unwrap();
            let mut edge = EdgeNode::new("other", "edge-1");
            let metrics = [("speed", Some(1), Value::Double(1.0), DataType::Double)];
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                let (topic, payload) = edge.nbirth(&metrics, 1).unwrap();
                publisher.publish(&topic, QoS::AtMostOnce, false, payload).await.unwrap();
                sent += 1;
                tokio::time::sleep(every).await;
            }
            sent
        })
    });
    let store = Arc::new(MemoryOffsetStore::new());
    let records = (0..201)
        .map(|i| {
            let value = if i == 100 {
                format!(r#"{{"name":"blob","value":"{}"}}"#, "x".repeat(10_000))
            } else {
                format!(r#"{{"name":"n","value":{i}}}"#)
            };
            ProducerRecord::new(name, value).with_key(format!("plant/line-{}", i % 7))
        })
        .collect();
    client.produce(records).await.unwrap();
    let mut config = MqttSinkConfig::sparkplug_b(mqtt.url(), vec![name.into()]);
    config.connection.mqtt_version = MqttVersion::V311;
    config.connection.max_packet_size = 1 << 20;
    config.connection.reconnect_backoff.max_ms = 500;
    let dlq = format!("{name}.dlq");
    let sink = start(name, config, &client, &store, dead_letters(&dlq));
    let dead = consume_at_least(&client, &dlq, 1, Duration::from_secs(30)).await.unwrap();
    wait_until("offset 201 committed", Duration::from_secs(20), || {
        futures::executor::block_on(committed(&store, name, name)) == 201
    })
    .await
    .unwrap();
    let values = || -> BTreeSet<i64> {
        sub.messages()
            .iter()
            .flat_map(|m| decode_metrics(&decode_payload(&m.payload).unwrap()).unwrap())
            .map(|m| match m.value {
                Value::Int(v) => v,
                other => panic!("unexpected value {other:?}"),
            })
            .collect()
    };
    wait_until("200 delivered", Duration::from_secs(10), || values().len() >= 200).await.unwrap();
    sink.shutdown.cancel();
    sink.handle.await.unwrap().unwrap();
    stop_births.cancel();
    if let Some(births) = births {
        let sent = births.await.unwrap();
        assert!(sent > 10, "the edge node published {sent} BIRTHs meanwhile");
    }
    let normal: BTreeSet<i64> = (0..201).filter(|i| *i != 100).collect();
    assert_eq!(values(), normal, "every normal command, and not the big one");
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "__connect.errors.offset"), "100");
    let why = header(&dead[0], "__connect.errors.exception.message");
    tracing::info!(name, why, connects = connections(&mqtt, name), "dead-lettered");
    assert!(why.contains("closed the connection 3 times right after this publish"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_mqtt311_a_command_the_broker_drops_the_connection_on_is_dead_lettered_after_a_few_tries(
) {
    a_sparkplug_command_the_broker_drops_the_connection_on_is_dead_lettered("spdrop4", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_with_births_every_few_ms_a_command_the_broker_drops_the_connection_on_is_dead_lettered(
) {
    let every = Some(Duration::from_millis(5));
    a_sparkplug_command_the_broker_drops_the_connection_on_is_dead_lettered("spdrop4b", every)
        .await;
}
