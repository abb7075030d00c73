//! The MQTT source as a Sparkplug B host application (`format = "sparkplug_b"`), on real
//! Mosquitto and Tansu: every message type and datatype into Kafka, alias tables across a
//! restart without a rebirth, one rebirth for a seq gap, stale and real NDEATHs, a malformed
//! payload dead-lettered with its reason, and the Primary Host STATE (birth, will).

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_core::runtime::{Pipeline, SourceRuntime, SourceRuntimeConfig, TaskStats};
use connector_core::{
    ErrorPolicyConfig, MemoryOffsetStore, OffsetStore, Result, SinkRecord, SourceConnector,
    Tolerance,
};
use connector_mqtt_source::{
    MqttSourceConfig, MqttSourceConnector, SourceFormat, SparkplugMode, SparkplugOutput,
    SparkplugSourceConfig,
};
use connector_sparkplug::encode::EdgeNode;
use connector_sparkplug::json::{property_set_json, value_json};
use connector_sparkplug::{
    decode_payload, DataSetValue, DataType, MessageType, Metric, Property, PropertySetValue,
    TemplateParameter, TemplateValue, Value,
};
use connector_testkit::{init_tracing, kafka, Mosquitto, MqttPublisher, MqttSubscriber, Tansu};
use rumqttc::QoS;
use serde_json::{json, Value as Json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

fn config(mqtt: &Mosquitto, topic: &str, sparkplug: SparkplugSourceConfig) -> MqttSourceConfig {
    let mut c = MqttSourceConfig::new(mqtt.url(), vec!["spBv1.0/#".into()], topic);
    c.format = SourceFormat::SparkplugB;
    c.sparkplug = Some(sparkplug);
    c
}

fn start(
    name: &str,
    config: MqttSourceConfig,
    client: &KafkaClient,
    store: &Arc<dyn OffsetStore>,
) -> Running {
    start_flushing(name, config, client, store, 5_000)
}

/// [`start`] with offsets saved every `flush_ms`.
fn start_flushing(
    name: &str,
    config: MqttSourceConfig,
    client: &KafkaClient,
    store: &Arc<dyn OffsetStore>,
    flush_ms: u64,
) -> Running {
    let connector = MqttSourceConnector::create(name, config).unwrap();
    let stats = Arc::new(TaskStats::new());
    let shutdown = CancellationToken::new();
    let runtime = SourceRuntimeConfig {
        pipeline: Pipeline {
            errors: ErrorPolicyConfig {
                tolerance: Tolerance::All,
                dead_letter_topic: Some(format!("{name}.dlq")),
                ..ErrorPolicyConfig::default()
            },
            ..Pipeline::default()
        },
        offset_flush_interval_ms: flush_ms,
        ..SourceRuntimeConfig::default()
    };
    let (name, client, s, t, store) =
        (name.to_owned(), client.clone(), Arc::clone(&stats), shutdown.clone(), Arc::clone(store));
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

fn text(b: Option<&bytes::Bytes>) -> String {
    String::from_utf8(b.map(|b| b.to_vec()).unwrap_or_default()).unwrap()
}

fn header(r: &SinkRecord, key: &str) -> String {
    text(r.headers.last(key))
}

fn value(r: &SinkRecord) -> Json {
    serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).unwrap()
}

/// Records of `topic` (the probe node's left out) once `done` holds for them.
async fn wait_records(
    client: &KafkaClient,
    topic: &str,
    what: &str,
    done: impl Fn(&[SinkRecord]) -> bool,
) -> Vec<SinkRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = kafka::consume_all(client, topic).await.unwrap_or_default();
        let records: Vec<SinkRecord> =
            all.into_iter().filter(|r| header(r, "sparkplug.node") != "probe").collect();
        if done(&records) {
            return records;
        }
        assert!(Instant::now() < deadline, "{topic}: no {what} within 30 s: {records:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes a probe node's NBIRTH until its status record is in Kafka: the source is subscribed.
async fn wait_subscribed(publisher: &MqttPublisher, client: &KafkaClient, topic: &str) {
    let mut probe = EdgeNode::new("test", "probe");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (t, p) = probe.nbirth(&[], now()).unwrap();
        publisher.publish(&t, QoS::AtLeastOnce, false, p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all = kafka::consume_all(client, topic).await.unwrap_or_default();
        if all.iter().any(|r| header(r, "sparkplug.node") == "probe") {
            return;
        }
        assert!(Instant::now() < deadline, "the source did not subscribe within 30 s");
    }
}

fn now() -> u64 {
    u64::try_from(connector_core::Timestamp::now().as_millis()).unwrap()
}

async fn publish(publisher: &MqttPublisher, (topic, payload): (String, Vec<u8>)) {
    publisher.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
}

/// Every datatype of the spec with a value, as (name, alias, value, datatype).
fn every_datatype() -> Vec<(String, Option<u64>, Value, DataType)> {
    let v = [
        (Value::Int(-8), DataType::Int8),
        (Value::Int(-16_000), DataType::Int16),
        (Value::Int(-2_000_000_000), DataType::Int32),
        (Value::Int(-9_000_000_000_000), DataType::Int64),
        (Value::UInt(200), DataType::UInt8),
        (Value::UInt(60_000), DataType::UInt16),
        (Value::UInt(4_000_000_000), DataType::UInt32),
        (Value::UInt(18_000_000_000_000_000_000), DataType::UInt64),
        (Value::Float(1.5), DataType::Float),
        (Value::Double(-2.25), DataType::Double),
        (Value::Boolean(true), DataType::Boolean),
        (Value::String("hello".into()), DataType::String),
        (Value::DateTime(1_700_000_000_000), DataType::DateTime),
        (Value::String("a longer text".into()), DataType::Text),
        (Value::String("123e4567-e89b-12d3-a456-426614174000".into()), DataType::UUID),
        (Value::Bytes(vec![0, 1, 254, 255]), DataType::Bytes),
        (Value::Bytes(vec![7; 10]), DataType::File),
        (Value::IntArray(vec![-1, 2, -3]), DataType::Int8Array),
        (Value::IntArray(vec![-300, 300]), DataType::Int16Array),
        (Value::IntArray(vec![-70_000, 70_000]), DataType::Int32Array),
        (Value::IntArray(vec![-5_000_000_000]), DataType::Int64Array),
        (Value::UIntArray(vec![1, 255]), DataType::UInt8Array),
        (Value::UIntArray(vec![65_535]), DataType::UInt16Array),
        (Value::UIntArray(vec![4_000_000_000]), DataType::UInt32Array),
        (Value::UIntArray(vec![u64::MAX]), DataType::UInt64Array),
        (Value::FloatArray(vec![0.5, -0.25]), DataType::FloatArray),
        (Value::DoubleArray(vec![1e100]), DataType::DoubleArray),
        (Value::BooleanArray(vec![true, false, true]), DataType::BooleanArray),
        (Value::StringArray(vec!["a".into(), "b".into()]), DataType::StringArray),
        (Value::DateTimeArray(vec![1, 2]), DataType::DateTimeArray),
        (
            Value::DataSet(DataSetValue {
                columns: vec!["id".into(), "ok".into()],
                types: vec![DataType::Int32, DataType::Boolean],
                rows: vec![vec![Value::Int(-1), Value::Boolean(true)]],
            }),
            DataType::DataSet,
        ),
        (
            Value::Template(TemplateValue {
                version: Some("1.0".into()),
                template_ref: Some("Motor".into()),
                is_definition: false,
                metrics: Vec::new(),
                parameters: vec![TemplateParameter {
                    name: "rpm".into(),
                    datatype: DataType::UInt16,
                    value: Value::UInt(1500),
                }],
            }),
            DataType::Template,
        ),
    ];
    v.into_iter()
        .enumerate()
        .map(|(i, (value, t))| (format!("m/{}", t.name()), Some(100 + i as u64), value, t))
        .collect()
}

fn birth_metrics(
    m: &[(String, Option<u64>, Value, DataType)],
) -> Vec<(&str, Option<u64>, Value, DataType)> {
    m.iter().map(|(n, a, v, t)| (n.as_str(), *a, v.clone(), *t)).collect()
}

fn sparkplug() -> SparkplugSourceConfig {
    SparkplugSourceConfig { reorder_timeout_ms: 500, ..SparkplugSourceConfig::default() }
}

/// Records of node `node` whose JSON `type` is `"status"`, as (key, status).
fn statuses(records: &[SinkRecord]) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| value(r)["type"] == "status")
        .map(|r| (text(r.key.as_ref()), value(r)["status"].as_str().unwrap().to_owned()))
        .collect()
}

fn metric_records<'a>(records: &'a [SinkRecord], name: &str) -> Vec<&'a SinkRecord> {
    records.iter().filter(|r| value(r)["name"] == name).collect()
}

/// NCMD Rebirth requests received by `subscriber` for `node`.
fn rebirths(subscriber: &MqttSubscriber, node: &str) -> usize {
    subscriber
        .messages()
        .iter()
        .filter(|p| p.topic.ends_with(&format!("/NCMD/{node}")))
        .filter(|p| {
            let payload = decode_payload(&p.payload).unwrap();
            payload.metrics.iter().any(|m| m.name.as_deref() == Some("Node Control/Rebirth"))
        })
        .count()
}

// ---- round trip ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_and_datatype_reaches_kafka_decoded() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let mut c = config(&mqtt, "sp.{1}", sparkplug());
    c.sparkplug.as_mut().unwrap().forward_commands = true;
    let source = start("roundtrip", c, &client, &store);
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-rt").await.unwrap();
    wait_subscribed(&publisher, &client, "sp.test").await;

    let metrics = every_datatype();
    let mut edge = EdgeNode::new("plant", "line1");
    let t0 = now() - 60_000;
    publish(&publisher, edge.nbirth(&birth_metrics(&metrics), t0).unwrap()).await;
    let press = [("Pressure", Some(1), Value::Double(2.5), DataType::Double)];
    publish(&publisher, edge.dbirth("press", &press, t0 + 1).unwrap()).await;
    // DATA carries aliases only: names and datatypes come from BIRTH.
    let data: Vec<(&str, Value)> =
        metrics.iter().map(|(n, _, v, _)| (n.as_str(), v.clone())).collect();
    publish(&publisher, edge.ndata(&data, t0 + 2).unwrap()).await;
    publish(&publisher, edge.ddata("press", &[("Pressure", Value::Double(3.5))], t0 + 3).unwrap())
        .await;
    let cmd = connector_sparkplug::encode::command_payload(
        None,
        &connector_sparkplug::DeviceKey { node: edge.key(), device: None },
        &connector_sparkplug::json::command_from_json(&json!({"name": "Reset", "value": true}))
            .unwrap(),
        t0 + 4,
    )
    .unwrap();
    publisher.publish("spBv1.0/plant/NCMD/line1", QoS::AtLeastOnce, false, cmd).await.unwrap();
    publish(&publisher, edge.ddeath("press", t0 + 5)).await;
    publish(&publisher, edge.ndeath(t0 + 6)).await;

    let n = metrics.len() + 2; // + bdSeq and Node Control/Rebirth
    let records = wait_records(&client, "sp.plant", "NDEATH status", |r| {
        statuses(r).iter().any(|(k, s)| k == "plant/line1" && s == "offline")
    })
    .await;
    let dlq = kafka::consume_all(&client, "roundtrip.dlq").await.unwrap_or_default();
    source.stop().await;

    assert!(dlq.is_empty(), "nothing dead-lettered: {dlq:?}");
    assert_eq!(
        statuses(&records),
        [
            ("plant/line1".to_owned(), "online".to_owned()),
            ("plant/line1/press".to_owned(), "online".to_owned()),
            ("plant/line1/press".to_owned(), "offline".to_owned()),
            ("plant/line1".to_owned(), "offline".to_owned()),
        ]
    );
    // NBIRTH + NDATA (metrics), DBIRTH + DDATA (Pressure), the forwarded NCMD (Reset), 4 status.
    assert_eq!(records.len(), n + metrics.len() + 2 + 1 + 4, "{records:#?}");
    for (name, alias, v, t) in &metrics {
        let seen = metric_records(&records, name);
        assert_eq!(seen.len(), 2, "{name}: in NBIRTH and NDATA");
        for (r, at) in seen.iter().zip([t0, t0 + 2]) {
            let j = value(r);
            assert_eq!(j["datatype"], t.name(), "{name}");
            assert_eq!(j["value"], value_json(v), "{name}");
            assert_eq!(j["alias"], json!(alias), "{name}");
            assert_eq!(j["timestamp"], json!(at), "{name}");
            assert_eq!(r.timestamp.as_millis(), at as i64, "{name}: the metric's own timestamp");
            assert_eq!(text(r.key.as_ref()), "plant/line1");
            assert_eq!(header(r, "sparkplug.group"), "plant");
            assert_eq!(header(r, "sparkplug.node"), "line1");
            assert_eq!(header(r, "mqtt.qos"), "1");
        }
        assert_eq!(header(seen[0], "sparkplug.type"), "NBIRTH");
        assert_eq!(header(seen[1], "sparkplug.type"), "NDATA");
        assert_eq!(header(seen[1], "mqtt.topic"), "spBv1.0/plant/NDATA/line1");
    }
    let pressure = metric_records(&records, "Pressure");
    let values: Vec<Json> = pressure.iter().map(|r| value(r)["value"].clone()).collect();
    assert_eq!(values, [json!(2.5), json!(3.5)]);
    assert_eq!(text(pressure[1].key.as_ref()), "plant/line1/press");
    assert_eq!(header(pressure[1], "sparkplug.device"), "press");
    assert_eq!(header(pressure[1], "sparkplug.type"), "DDATA");
    let reset = metric_records(&records, "Reset");
    assert_eq!(reset.len(), 1, "forward_commands writes the NCMD");
    assert_eq!(header(reset[0], "sparkplug.type"), "NCMD");
}

// ---- state: aliases across a restart, seq gaps, deaths ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_resolve_after_a_restart_without_asking_for_a_rebirth() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let ncmd =
        MqttSubscriber::connect(&mqtt.url(), "ncmd-watch", "spBv1.0/+/NCMD/#", QoS::AtMostOnce)
            .await
            .unwrap();
    let c = config(&mqtt, "restart", sparkplug());
    let source = start("sp-restart", c.clone(), &client, &store);
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-restart").await.unwrap();
    wait_subscribed(&publisher, &client, "restart").await;

    let mut edge = EdgeNode::new("plant", "line2");
    let birth = [("Speed", Some(7), Value::Float(1.0), DataType::Float)];
    publish(&publisher, edge.nbirth(&birth, now()).unwrap()).await;
    publish(&publisher, edge.ndata(&[("Speed", Value::Float(2.0))], now()).unwrap()).await;
    wait_records(&client, "restart", "first NDATA", |r| metric_records(r, "Speed").len() == 2)
        .await;
    source.stop().await;

    // A new source over the same offset store: the alias table comes back from it.
    let source = start("sp-restart", c, &client, &store);
    publish(&publisher, edge.ndata(&[("Speed", Value::Float(3.0))], now()).unwrap()).await;
    let records = wait_records(&client, "restart", "NDATA after the restart", |r| {
        metric_records(r, "Speed").len() == 3
    })
    .await;
    // Time for a rebirth request to show, were one sent.
    tokio::time::sleep(Duration::from_millis(700)).await;
    source.stop().await;
    let speeds: Vec<Json> =
        metric_records(&records, "Speed").iter().map(|r| value(r)["value"].clone()).collect();
    assert_eq!(speeds, [json!(1.0), json!(2.0), json!(3.0)]);
    assert_eq!(rebirths(&ncmd, "line2"), 0, "no rebirth after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_gap_asks_for_exactly_one_rebirth_and_deaths_become_status_records() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let ncmd =
        MqttSubscriber::connect(&mqtt.url(), "ncmd-gap", "spBv1.0/+/NCMD/#", QoS::AtMostOnce)
            .await
            .unwrap();
    let source = start("sp-gap", config(&mqtt, "gap", sparkplug()), &client, &store);
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-gap").await.unwrap();
    wait_subscribed(&publisher, &client, "gap").await;

    let mut edge = EdgeNode::new("plant", "line3");
    let birth = [("Count", Some(1), Value::UInt(0), DataType::UInt32)];
    publish(&publisher, edge.nbirth(&birth, now()).unwrap()).await;
    publish(&publisher, edge.ndata(&[("Count", Value::UInt(1))], now()).unwrap()).await;
    // seq 2 and 3 never arrive.
    edge.next_seq();
    edge.next_seq();
    for i in 4..8 {
        publish(&publisher, edge.ndata(&[("Count", Value::UInt(i))], now()).unwrap()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while rebirths(&ncmd, "line3") == 0 {
        assert!(Instant::now() < deadline, "no rebirth request for the gap");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the reorder timeout again: still one request (rate-limited per node).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rebirths(&ncmd, "line3"), 1);

    // A stale will (an earlier session's bdSeq) is ignored, the current one honoured.
    let mut stale = edge.clone();
    stale.bd_seq = (edge.bd_seq + 255) % 256;
    publish(&publisher, stale.ndeath(now())).await;
    publish(&publisher, edge.ndeath(now())).await;
    let records = wait_records(&client, "gap", "NDEATH", |r| statuses(r).len() == 3).await;
    let stats = source.stats.snapshot();
    source.stop().await;
    assert_eq!(metric_records(&records, "Count").len(), 6, "data is forwarded at once, gap or not");
    assert_eq!(
        statuses(&records).into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        ["online", "stale", "offline"]
    );
    eprintln!("gap: stats {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_payload_is_dead_lettered_with_its_reason_and_asks_for_one_rebirth() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let ncmd =
        MqttSubscriber::connect(&mqtt.url(), "ncmd-bad", "spBv1.0/+/NCMD/#", QoS::AtMostOnce)
            .await
            .unwrap();
    let source = start("sp-bad", config(&mqtt, "bad", sparkplug()), &client, &store);
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-bad").await.unwrap();
    wait_subscribed(&publisher, &client, "bad").await;

    let mut edge = EdgeNode::new("plant", "line4");
    publish(
        &publisher,
        edge.nbirth(&[("T", Some(1), Value::Double(1.0), DataType::Double)], now()).unwrap(),
    )
    .await;
    let garbage = vec![0xff, 0xff, 0xff, 0x01, 0x02];
    publisher
        .publish("spBv1.0/plant/NDATA/line4", QoS::AtLeastOnce, false, garbage.clone())
        .await
        .unwrap();
    publish(&publisher, edge.ndata(&[("T", Value::Double(2.0))], now()).unwrap()).await;
    let dead =
        kafka::consume_at_least(&client, "sp-bad.dlq", 1, Duration::from_secs(30)).await.unwrap();
    wait_records(&client, "bad", "NDATA after the bad one", |r| metric_records(r, "T").len() == 2)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rebirths(&ncmd, "line4") == 0 {
        assert!(Instant::now() < deadline, "no rebirth request for the malformed payload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    source.stop().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&garbage[..]), "the payload as it came");
    let reason = header(&dead[0], "__connect.errors.exception.message");
    assert!(reason.contains("spBv1.0/plant/NDATA/line4"), "{reason}");
    assert_eq!(header(&dead[0], "sparkplug.node"), "line4");
    assert_eq!(rebirths(&ncmd, "line4"), 1);
}

// ---- Primary Host STATE ---------------------------------------------------------------------

/// The retained STATE of `host_id` as (online, timestamp), read by a fresh subscriber.
async fn retained_state(mqtt: &Mosquitto, host_id: &str) -> Option<(bool, u64)> {
    let topic = format!("spBv1.0/STATE/{host_id}");
    let id = format!("state-reader-{}", now());
    let sub = MqttSubscriber::connect(&mqtt.url(), &id, &topic, QoS::AtLeastOnce).await.unwrap();
    let got = sub.wait_for(1, Duration::from_secs(2)).await.ok()?;
    // Only a retained message is the stored STATE (a live one may come first on a new topic).
    let p = got.first().filter(|p| p.retain)?;
    assert_eq!(p.qos, QoS::AtLeastOnce, "STATE is QoS 1");
    let j: Json = serde_json::from_slice(&p.payload).unwrap();
    Some((j["online"].as_bool().unwrap(), j["timestamp"].as_u64().unwrap()))
}

async fn wait_state(mqtt: &Mosquitto, host_id: &str, online: bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((o, t)) = retained_state(mqtt, host_id).await {
            if o == online {
                return t;
            }
        }
        assert!(Instant::now() < deadline, "STATE of {host_id} never became online={online}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_host_publishes_state_online_offline_on_stop_and_its_will_on_a_crash() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let sp = SparkplugSourceConfig {
        mode: SparkplugMode::PrimaryHost,
        host_id: Some("scada".into()),
        ..sparkplug()
    };
    let c = config(&mqtt, "host", sp);
    let source = start("sp-host", c.clone(), &client, &store);
    let t1 = wait_state(&mqtt, "scada", true).await;

    // Someone says we are offline (even with an old timestamp): the host says online again.
    let watch = MqttSubscriber::connect(
        &mqtt.url(),
        "state-watch",
        "spBv1.0/STATE/scada",
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    let publisher = MqttPublisher::connect(&mqtt.url(), "intruder").await.unwrap();
    let offline = format!(r#"{{"online":false,"timestamp":{}}}"#, t1 - 1000);
    publisher
        .publish("spBv1.0/STATE/scada", QoS::AtLeastOnce, true, offline.into_bytes())
        .await
        .unwrap();
    publisher.wait_acknowledged(1, Duration::from_secs(10)).await.unwrap();
    let seen = watch.wait_for(3, Duration::from_secs(10)).await.unwrap();
    let states: Vec<Json> = seen
        .iter()
        .map(|p| serde_json::from_slice::<Json>(&p.payload).unwrap()["online"].clone())
        .collect();
    assert_eq!(
        states[..3],
        [json!(true), json!(false), json!(true)],
        "retained birth, intruder, republished birth"
    );
    assert_eq!(wait_state(&mqtt, "scada", true).await, t1, "online republished with its timestamp");

    // A clean stop: offline with the birth's timestamp.
    source.stop().await;
    assert_eq!(retained_state(&mqtt, "scada").await, Some((false, t1)));

    // A crash (no DISCONNECT): the broker publishes the will, with the new birth's timestamp.
    let source = start("sp-host", c, &client, &store);
    let t2 = wait_state(&mqtt, "scada", true).await;
    assert!(t2 > t1, "every connection has a new timestamp");
    source.handle.abort();
    let _ = source.handle.await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while retained_state(&mqtt, "scada").await != Some((false, t2)) {
        assert!(Instant::now() < deadline, "no will after the crash");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(source.stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_output_keeps_a_message_whole_with_property_sets_and_a_key_template() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let sp = SparkplugSourceConfig {
        output: SparkplugOutput::Message,
        key: Some("{group}:{node}".into()),
        ..sparkplug()
    };
    let source = start("sp-message", config(&mqtt, "whole", sp), &client, &store);
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-message").await.unwrap();
    wait_subscribed(&publisher, &client, "whole").await;

    let mut edge = EdgeNode::new("plant", "line5");
    let birth = [("Temp", Some(1), Value::Double(20.0), DataType::Double)];
    publish(&publisher, edge.nbirth(&birth, now()).unwrap()).await;
    let nested = PropertySetValue {
        properties: vec![Property {
            key: "max".into(),
            datatype: DataType::Int32,
            value: Value::Int(90),
        }],
    };
    let properties = PropertySetValue {
        properties: vec![
            Property { key: "Quality".into(), datatype: DataType::Int32, value: Value::Int(192) },
            Property {
                key: "engUnit".into(),
                datatype: DataType::String,
                value: Value::String("C".into()),
            },
            Property {
                key: "limits".into(),
                datatype: DataType::PropertySet,
                value: Value::PropertySet(nested.clone()),
            },
            Property {
                key: "history".into(),
                datatype: DataType::PropertySetList,
                value: Value::PropertySetList(vec![nested]),
            },
        ],
    };
    let at = now();
    let metric = Metric {
        name: "Temp".into(),
        alias: Some(1),
        datatype: DataType::Double,
        value: Value::Double(21.5),
        timestamp: Some(at),
        is_historical: true,
        is_transient: false,
        quality: None,
        properties: Some(properties.clone()),
    };
    let mut pb = connector_sparkplug::encode::encode_metric(&metric).unwrap();
    pb.name = None;
    pb.datatype = None;
    publish(&publisher, edge.raw(MessageType::NData, None, vec![pb], at)).await;
    let records =
        wait_records(&client, "whole", "NDATA", |r| r.iter().any(|r| value(r)["type"] == "NDATA"))
            .await;
    source.stop().await;

    assert_eq!(records.len(), 3, "status, NBIRTH and NDATA: one record each: {records:#?}");
    let data = records.iter().find(|r| value(r)["type"] == "NDATA").unwrap();
    let j = value(data);
    assert_eq!(text(data.key.as_ref()), "plant:line5");
    assert_eq!(
        (j["group"].clone(), j["node"].clone(), j["seq"].clone()),
        (json!("plant"), json!("line5"), json!(1))
    );
    assert_eq!(data.timestamp.as_millis(), at as i64);
    let m = &j["metrics"][0];
    assert_eq!(m["name"], "Temp", "resolved from the alias");
    assert_eq!(m["value"], json!(21.5));
    assert_eq!(m["quality"], json!(192));
    assert_eq!(m["is_historical"], json!(true));
    assert_eq!(m["properties"], property_set_json(&properties));
}

/// A BIRTH that changes the alias table is acknowledged only once the offset store has the new
/// table: a crash in between makes the broker redeliver it, so DATA after the restart is decoded
/// with the new aliases, not the ones restored from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_new_birth_and_the_offset_flush_keeps_the_new_aliases() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let c = config(&mqtt, "flush", sparkplug());
    let source = start_flushing("sp-flush", c.clone(), &client, &store, 60_000);
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-flush").await.unwrap();
    wait_subscribed(&publisher, &client, "flush").await;
    let online = |r: &[SinkRecord]| statuses(r).iter().filter(|(_, s)| s == "online").count();

    let mut v1 = EdgeNode::new("plant", "line6");
    let birth = [
        ("A", Some(1), Value::Double(0.5), DataType::Double),
        ("B", Some(2), Value::Int(-1), DataType::Int32),
    ];
    publish(&publisher, v1.nbirth(&birth, now()).unwrap()).await;
    wait_records(&client, "flush", "BIRTH v1", |r| online(r) == 1).await;
    source.stop().await; // the final flush saves v1's table

    let source = start_flushing("sp-flush", c.clone(), &client, &store, 60_000);
    let mut v2 = EdgeNode::new("plant", "line6");
    v2.next_session();
    let swapped = [
        ("B", Some(1), Value::Int(-2), DataType::Int32),
        ("A", Some(2), Value::Double(0.25), DataType::Double),
    ];
    publish(&publisher, v2.nbirth(&swapped, now()).unwrap()).await;
    wait_records(&client, "flush", "BIRTH v2", |r| online(r) == 2).await;
    // The crash: v2 is in Kafka, its table not yet in the offset store (flush every 60 s).
    source.handle.abort();
    let _ = source.handle.await;

    let source = start_flushing("sp-flush", c, &client, &store, 60_000);
    publish(
        &publisher,
        v2.ndata(&[("B", Value::Int(-7)), ("A", Value::Double(7.5))], now()).unwrap(),
    )
    .await;
    let records = wait_records(&client, "flush", "NDATA", |r| {
        metric_records(r, "B").iter().any(|r| value(r)["value"] == json!(-7))
    })
    .await;
    let dead = kafka::consume_all(&client, "sp-flush.dlq").await.unwrap_or_default();
    source.stop().await;
    let a: Vec<Json> =
        metric_records(&records, "A").iter().map(|r| value(r)["value"].clone()).collect();
    assert_eq!(a.last(), Some(&json!(7.5)), "alias 2 is A since v2: {a:?}");
    assert!(dead.is_empty(), "{dead:?}");
}

/// A BIRTH's acknowledgement (and those after it) waits for the offset store, and the source
/// asks the runtime to save soon rather than at the next `offset_flush_interval_ms` (60 s here).
/// With MQTT 5 and `inflight = 2` the broker sends no third message before two are
/// acknowledged, so DATA after the BIRTH reaching Kafka at all shows the acknowledgements went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_held_for_a_birth_go_out_soon_not_at_the_next_offset_flush() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let mut c = config(&mqtt, "early", sparkplug());
    c.connection.mqtt_version = connector_mqtt_common::MqttVersion::V5;
    c.inflight = 2;
    let source = start_flushing("sp-early", c, &client, &store, 60_000);
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-early").await.unwrap();
    wait_subscribed(&publisher, &client, "early").await;

    let started = Instant::now();
    let mut node = EdgeNode::new("plant", "line7");
    publish(
        &publisher,
        node.nbirth(&[("Count", Some(1), Value::UInt(0), DataType::UInt32)], now()).unwrap(),
    )
    .await;
    for i in 1..=6u64 {
        publish(&publisher, node.ndata(&[("Count", Value::UInt(i))], now()).unwrap()).await;
    }
    let records = wait_records(&client, "early", "the DATA after the BIRTH", |r| {
        metric_records(r, "Count").iter().any(|r| value(r)["value"] == json!(6))
    })
    .await;
    let elapsed = started.elapsed();
    let saves = source.stats.snapshot().offset_commits;
    source.stop().await;
    let counts: Vec<Json> =
        metric_records(&records, "Count").iter().map(|r| value(r)["value"].clone()).collect();
    eprintln!("BIRTH + 6 DATA through a window of 2 in {elapsed:?}, {saves} offset saves");
    assert_eq!(counts, (0..=6u64).map(|i| json!(i)).collect::<Vec<_>>());
    assert!(elapsed < Duration::from_secs(10), "acknowledged only after {elapsed:?}");
    let saved = store.load("sp-early").await.unwrap();
    assert!(
        saved.iter().any(|(p, _)| p.get("sparkplug_node") == Some(&json!("plant/line7"))),
        "{saved:?}"
    );
}

/// Sparkplug 3.0: a primary host that loses its MQTT connection marks the data of every edge
/// node on that broker stale. Kafka consumers get one `"status":"stale"` record per node and
/// device that was online; after the reconnect the STATE birth (new timestamp) makes the node
/// rebirth, and its BIRTH brings it online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_host_that_loses_its_connection_writes_stale_status_records() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let proxy = connector_testkit::FaultProxy::start(mqtt.addr()).await.unwrap();
    let sp = SparkplugSourceConfig {
        mode: SparkplugMode::PrimaryHost,
        host_id: Some("scada-cut".into()),
        ..sparkplug()
    };
    let mut c = config(&mqtt, "stale", sp);
    c.connection.mqtt_url = format!("mqtt://{}", proxy.host_port());
    let source = start("sp-stale", c, &client, &store);
    let t1 = wait_state(&mqtt, "scada-cut", true).await;
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-stale").await.unwrap();
    wait_subscribed(&publisher, &client, "stale").await;

    let mut node = EdgeNode::new("plant", "line8");
    let metric = [("Speed", Some(1), Value::Double(1.5), DataType::Double)];
    publish(&publisher, node.nbirth(&metric, now()).unwrap()).await;
    publish(&publisher, node.dbirth("press", &metric, now()).unwrap()).await;
    let of_line8 = |r: &[SinkRecord]| -> Vec<(String, String)> {
        statuses(r).into_iter().filter(|(k, _)| k.starts_with("plant/line8")).collect()
    };
    wait_records(&client, "stale", "the BIRTHs", |r| of_line8(r).len() == 2).await;

    proxy.cut();
    let records = wait_records(&client, "stale", "stale records", |r| of_line8(r).len() == 4).await;
    let stale = of_line8(&records);
    assert_eq!(
        stale[2..].iter().map(|(k, s)| (k.as_str(), s.as_str())).collect::<Vec<_>>(),
        [("plant/line8", "stale"), ("plant/line8/press", "stale")],
        "{stale:?}"
    );
    let r = records.iter().find(|r| value(r)["status"] == "stale").unwrap();
    assert_eq!(header(r, "sparkplug.type"), "CONNECTION_LOST");
    assert!(r.timestamp.as_millis() > 0);

    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    while wait_state(&mqtt, "scada-cut", true).await == t1 {
        assert!(Instant::now() < deadline, "no new STATE birth after the reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The edge node rebirths on the new STATE birth.
    node.next_session();
    publish(&publisher, node.nbirth(&metric, now()).unwrap()).await;
    // (Its new NBIRTH also writes the device offline, until the device's own DBIRTH.)
    let records = wait_records(&client, "stale", "the rebirth", |r| of_line8(r).len() >= 5).await;
    assert_eq!(of_line8(&records)[4], ("plant/line8".to_owned(), "online".to_owned()));
    source.stop().await;
}
