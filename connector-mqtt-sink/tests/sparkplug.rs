//! `format = "sparkplug_b"` on real Mosquitto and Tansu: JSON command records become NCMD and
//! DCMD protobuf payloads, by alias when the sink saw the device's BIRTH and by name and datatype
//! when it did not, decoded by an independent subscriber; a record that is not a command goes to
//! the dead-letter topic with its reason and the next one still goes out; BIRTHs delivered at
//! QoS 1 while commands go out are acknowledged and learned without disturbing the publishes.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

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
use connector_sparkplug::encode::EdgeNode;
use connector_sparkplug::{decode_metrics, decode_payload, DataType, Metric, Value};
use connector_testkit::kafka::consume_at_least;
use connector_testkit::{
    init_tracing, wait_until, Mosquitto, MosquittoOptions, MqttPublisher, MqttSubscriber, Tansu,
};
use rumqttc::QoS;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    handle: JoinHandle<Result<()>>,
    shutdown: CancellationToken,
    stats: Arc<TaskStats>,
}

impl Running {
    /// BIRTHs the sink learned aliases from so far.
    fn births_learned(&self) -> u64 {
        self.stats
            .custom()
            .samples()
            .iter()
            .filter(|c| c.name == "sparkplug_births_learned")
            .map(|c| c.value())
            .sum()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

fn start(
    name: &str,
    config: MqttSinkConfig,
    client: &KafkaClient,
    store: &Arc<MemoryOffsetStore>,
    dlq: &str,
) -> Running {
    let connector = MqttSinkConnector::create(name, config).unwrap();
    let shutdown = CancellationToken::new();
    let store = Arc::clone(store) as Arc<dyn OffsetStore>;
    let mut runtime = SinkRuntimeConfig { commit_interval_ms: 100, ..SinkRuntimeConfig::default() };
    runtime.pipeline.errors = ErrorPolicyConfig {
        tolerance: Tolerance::All,
        dead_letter_topic: Some(dlq.to_owned()),
        ..ErrorPolicyConfig::default()
    };
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

async fn committed(store: &MemoryOffsetStore, name: &str, topic: &str) -> i64 {
    store.load(name).await.unwrap().kafka_offset(&TopicPartition::new(topic, 0)).unwrap_or(0)
}

fn header(r: &SinkRecord, key: &str) -> String {
    String::from_utf8(r.headers.last(key).unwrap_or_else(|| panic!("no header {key}")).to_vec())
        .unwrap()
}

/// The edge node `plant/line-1` with device `press-2`, as its births announce them.
fn births(edge: &mut EdgeNode) -> [(String, Vec<u8>); 2] {
    births_with(edge, 1)
}

/// The births, with `speed_alias` for the node's metric `speed`.
fn births_with(edge: &mut EdgeNode, speed_alias: u64) -> [(String, Vec<u8>); 2] {
    let speed = [("speed", Some(speed_alias), Value::Double(1.0), DataType::Double)];
    let n = edge.nbirth(&speed, 1).unwrap();
    let d = edge
        .dbirth(
            "press-2",
            &[
                ("target_temp", Some(7), Value::Int(180), DataType::Int32),
                ("mode", Some(8), Value::String("auto".into()), DataType::String),
            ],
            1,
        )
        .unwrap();
    [n, d]
}

/// Publishes the births until the sink learned a full pair after its subscription was in place.
async fn birth_until_learned(sink: &Running, publisher: &MqttPublisher, edge: &mut EdgeNode) {
    birth_until_learned_with(sink, publisher, edge, 1).await;
}

/// [`birth_until_learned`] with `speed_alias`.
async fn birth_until_learned_with(
    sink: &Running,
    publisher: &MqttPublisher,
    edge: &mut EdgeNode,
    speed_alias: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let start = sink.births_learned();
    while sink.births_learned() < start + 2 {
        assert!(Instant::now() < deadline, "the sink learned no BIRTH within 15 s");
        for (topic, payload) in births_with(edge, speed_alias) {
            publisher.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = sink.births_learned();
    for (topic, payload) in births_with(edge, speed_alias) {
        publisher.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    wait_until("the last pair learned", Duration::from_secs(10), || {
        sink.births_learned() >= before + 2
    })
    .await
    .unwrap();
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/sparkplug-check.py");

/// scripts/sparkplug-check.py subscribed to the commands (paho, and protobuf compiled from the
/// .proto by protoc: no code of ours); `None` outside CI when python3 lacks protobuf or
/// grpcio-tools.
struct PythonSubscriber {
    lines: Arc<parking_lot::Mutex<Vec<String>>>,
    _child: tokio::process::Child,
}

impl PythonSubscriber {
    async fn start(url: &str, count: usize) -> Option<Self> {
        let ready = std::process::Command::new("python3")
            .args(["-c", "import google.protobuf, grpc_tools, paho.mqtt"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ready {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: python3 with protobuf, grpcio-tools and paho-mqtt is required (scripts/install-brokers)"
            );
            eprintln!("SKIPPED the Python decoder: python3 with protobuf, grpcio-tools and paho-mqtt not found");
            return None;
        }
        let mut child = tokio::process::Command::new("python3")
            .arg(SCRIPT)
            .args(["subscribe", "--url", url, "--filter", "spBv1.0/+/NCMD/+"])
            .args(["--filter", "spBv1.0/+/DCMD/+/+", "--count", &count.to_string()])
            .args(["--timeout", "60"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        let stdout = child.stdout.take().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = reader.next_line().await {
                collected.lock().push(l);
            }
        });
        let this = Self { lines, _child: child };
        wait_until("the Python subscriber's SUBACK", Duration::from_secs(20), || {
            this.lines.lock().iter().any(|l| l == "subscribed")
        })
        .await
        .unwrap();
        Some(this)
    }

    /// The first `n` messages it decoded.
    async fn messages(&self, n: usize) -> Vec<serde_json::Value> {
        let decoded = || -> Vec<serde_json::Value> {
            let lines = self.lines.lock();
            lines
                .iter()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        wait_until("the Python subscriber's messages", Duration::from_secs(20), || {
            decoded().len() >= n
        })
        .await
        .unwrap();
        decoded()
    }
}

fn metrics(payload: &[u8]) -> Vec<Metric> {
    decode_metrics(&decode_payload(payload).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_commands_become_ncmd_and_dcmd_by_alias_after_a_birth_by_name_without_and_bad_ones_are_dead_lettered(
) {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let commands =
        MqttSubscriber::connect(&mqtt.url(), "independent", "spBv1.0/+/+/#", QoS::AtLeastOnce)
            .await
            .unwrap();
    let python = PythonSubscriber::start(&mqtt.url(), 4).await;
    let store = Arc::new(MemoryOffsetStore::new());
    let mut config = MqttSinkConfig::sparkplug_b(mqtt.url(), vec!["plant.commands".into()]);
    config.connection.client_id = Some("commands".into());
    let sink = start("commands", config, &client, &store, "plant.commands.dlq");
    let publisher = MqttPublisher::connect(&mqtt.url(), "line-1").await.unwrap();
    let mut edge = EdgeNode::new("plant", "line-1");
    birth_until_learned(&sink, &publisher, &mut edge).await;

    let records = [
        ("plant/line-1", r#"{"name":"speed","value":2.5}"#),
        (
            "plant/line-1/press-2",
            r#"{"metrics":[{"name":"target_temp","value":-40},{"name":"mode","value":"manual"}]}"#,
        ),
        ("plant/line-1/press-2", r#"{"name":"target_temp","value":"hot"}"#),
        ("plant/line-1/press-2", "close the valve"),
        ("plant", r#"{"name":"speed","value":1}"#),
        ("plant/line-9/pump", r#"{"name":"flow","value":3,"datatype":"UInt16"}"#),
        ("plant/line-9", r#"{"name":"enabled","value":true}"#),
    ];
    let produced = records
        .iter()
        .map(|(k, v)| ProducerRecord::new("plant.commands", *v).with_key(*k))
        .collect();
    client.produce(produced).await.unwrap();

    let dead =
        consume_at_least(&client, "plant.commands.dlq", 3, Duration::from_secs(20)).await.unwrap();
    wait_until("offset 7 committed", Duration::from_secs(20), || {
        futures::executor::block_on(committed(&store, "commands", "plant.commands")) == 7
    })
    .await
    .unwrap();
    let is_command = |t: &str| t.contains("/NCMD/") || t.contains("/DCMD/");
    wait_until("4 commands", Duration::from_secs(10), || {
        commands.messages().iter().filter(|m| is_command(&m.topic)).count() >= 4
    })
    .await
    .unwrap();
    sink.stop().await;

    let got: Vec<_> = commands.messages().into_iter().filter(|m| is_command(&m.topic)).collect();
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "spBv1.0/plant/NCMD/line-1",
            "spBv1.0/plant/DCMD/line-1/press-2",
            "spBv1.0/plant/DCMD/line-9/pump",
            "spBv1.0/plant/NCMD/line-9",
        ],
        "each command once, in order, the bad ones nowhere"
    );
    assert!(got.iter().all(|m| !m.retain), "commands are never retained");
    // By alias (and name) with the BIRTH's datatype: -40 as an Int32 in its unsigned wire form.
    let m = metrics(&got[0].payload);
    assert_eq!(
        (m[0].name.as_str(), m[0].alias, m[0].datatype, &m[0].value),
        ("speed", Some(1), DataType::Double, &Value::Double(2.5))
    );
    let m = metrics(&got[1].payload);
    assert_eq!(
        (m[0].alias, m[0].datatype, &m[0].value),
        (Some(7), DataType::Int32, &Value::Int(-40))
    );
    assert_eq!(
        (m[1].alias, m[1].datatype, &m[1].value),
        (Some(8), DataType::String, &Value::String("manual".into()))
    );
    // No BIRTH of line-9: names, with the given or the implied datatype.
    let m = metrics(&got[2].payload);
    assert_eq!(
        (m[0].name.as_str(), m[0].alias, m[0].datatype, &m[0].value),
        ("flow", None, DataType::UInt16, &Value::UInt(3))
    );
    let m = metrics(&got[3].payload);
    assert_eq!(
        (m[0].name.as_str(), m[0].alias, m[0].datatype, &m[0].value),
        ("enabled", None, DataType::Boolean, &Value::Boolean(true))
    );

    // The independent decoder reads the same: datatype numbers of the spec (Double 10, Int32 3,
    // String 12, UInt16 6, Boolean 11), -40 from its two's complement.
    if let Some(python) = python {
        let decoded = python.messages(4).await;
        let seen: Vec<serde_json::Value> = decoded
            .iter()
            .map(|m| {
                let metrics: Vec<serde_json::Value> = m["metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| serde_json::json!([x["name"], x["alias"], x["datatype"], x["value"]]))
                    .collect();
                serde_json::json!([m["topic"], metrics])
            })
            .collect();
        assert_eq!(
            seen,
            [
                serde_json::json!(["spBv1.0/plant/NCMD/line-1", [["speed", 1, 10, 2.5]]]),
                serde_json::json!([
                    "spBv1.0/plant/DCMD/line-1/press-2",
                    [["target_temp", 7, 3, -40], ["mode", 8, 12, "manual"]]
                ]),
                serde_json::json!(["spBv1.0/plant/DCMD/line-9/pump", [["flow", null, 6, 3]]]),
                serde_json::json!(["spBv1.0/plant/NCMD/line-9", [["enabled", null, 11, true]]]),
            ]
        );
    }

    let offsets: Vec<String> = dead.iter().map(|r| header(r, "__connect.errors.offset")).collect();
    assert_eq!(offsets, ["2", "3", "4"]);
    let reasons: Vec<String> =
        dead.iter().map(|r| header(r, "__connect.errors.exception.message")).collect();
    assert!(reasons[0].contains("spBv1.0/plant/DCMD/line-1/press-2"), "{}", reasons[0]);
    assert!(reasons[1].contains("not JSON"), "{}", reasons[1]);
    assert!(reasons[2].contains("not group/node"), "{}", reasons[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_delivered_at_qos1_while_commands_go_out_are_acknowledged_and_learned() {
    init_tracing();
    // At most 20 unacknowledged QoS 1 messages to a client: without its PUBACKs the sink would
    // learn no more than 20 of the BIRTHs below.
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        max_inflight_messages: 20,
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let commands =
        MqttSubscriber::connect(&mqtt.url(), "independent", "spBv1.0/+/DCMD/#", QoS::AtLeastOnce)
            .await
            .unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let config = MqttSinkConfig::sparkplug_b(mqtt.url(), vec!["busy".into()]);
    let sink = start("busy", config, &client, &store, "busy.dlq");
    let publisher = MqttPublisher::connect(&mqtt.url(), "line-1").await.unwrap();
    let mut edge = EdgeNode::new("plant", "line-1");
    birth_until_learned(&sink, &publisher, &mut edge).await;

    // 300 commands and 200 more BIRTHs at once.
    let learned = sink.births_learned();
    let produced = (0..300)
        .map(|i| {
            ProducerRecord::new("busy", format!(r#"{{"name":"target_temp","value":{i}}}"#))
                .with_key("plant/line-1/press-2")
        })
        .collect();
    client.produce(produced).await.unwrap();
    for _ in 0..100 {
        for (topic, payload) in births(&mut edge) {
            publisher.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
        }
    }
    wait_until("200 more BIRTHs learned", Duration::from_secs(20), || {
        sink.births_learned() >= learned + 200
    })
    .await
    .unwrap();
    wait_until("offset 300 committed", Duration::from_secs(20), || {
        futures::executor::block_on(committed(&store, "busy", "busy")) == 300
    })
    .await
    .unwrap();
    let got = commands.wait_for(300, Duration::from_secs(10)).await.unwrap();
    sink.stop().await;
    let values: Vec<Value> = got.iter().map(|m| metrics(&m.payload).remove(0).value).collect();
    let expected: Vec<Value> = (0..300).map(Value::Int).collect();
    assert_eq!(values, expected, "every command once, in order");
    assert!(got.iter().all(|m| metrics(&m.payload)[0].alias == Some(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_the_sink_subscribes_again_and_uses_the_new_births_on_mqtt5() {
    init_tracing();
    let mut mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let mut config = MqttSinkConfig::sparkplug_b(mqtt.url(), vec!["restart".into()]);
    config.connection.mqtt_version = MqttVersion::V5;
    let sink = start("restart", config, &client, &store, "restart.dlq");
    let publisher = MqttPublisher::connect(&mqtt.url(), "line-1").await.unwrap();
    let mut edge = EdgeNode::new("plant", "line-1");
    birth_until_learned(&sink, &publisher, &mut edge).await;

    // The broker forgets the sink's clean session; the node is born again with another alias.
    mqtt.restart().await.unwrap();
    birth_until_learned_with(&sink, &publisher, &mut edge, 42).await;
    let commands =
        MqttSubscriber::connect(&mqtt.url(), "independent", "spBv1.0/+/NCMD/+", QoS::AtLeastOnce)
            .await
            .unwrap();
    let record =
        ProducerRecord::new("restart", r#"{"name":"speed","value":3.0}"#).with_key("plant/line-1");
    client.produce(vec![record]).await.unwrap();
    let got = commands.wait_for(1, Duration::from_secs(20)).await.unwrap();
    sink.stop().await;
    let m = metrics(&got[0].payload);
    assert_eq!(
        (m[0].name.as_str(), m[0].alias, &m[0].value),
        ("speed", Some(42), &Value::Double(3.0))
    );
}

impl Running {
    /// MQTT connections the sink lost so far.
    fn reconnects(&self) -> u64 {
        let samples = self.stats.custom().samples();
        samples.iter().filter(|c| c.name == "mqtt_reconnects").map(|c| c.value()).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_qos0_births_while_commands_go_out_through_a_small_window_stalls_nothing() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let commands =
        MqttSubscriber::connect(&mqtt.url(), "independent", "spBv1.0/+/DCMD/#", QoS::AtLeastOnce)
            .await
            .unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let mut config = MqttSinkConfig::sparkplug_b(mqtt.url(), vec!["flood".into()]);
    config.inflight = 5;
    let sink = start("flood", config, &client, &store, "flood.dlq");
    let publisher = MqttPublisher::connect(&mqtt.url(), "line-1").await.unwrap();
    let mut edge = EdgeNode::new("plant", "line-1");
    birth_until_learned(&sink, &publisher, &mut edge).await;

    // 20,000 BIRTHs at QoS 0, as Sparkplug publishes them (the broker has no in-flight limit
    // for those), from another edge node, as fast as it can, while the commands go out.
    let stop = CancellationToken::new();
    let flood = {
        let (stop, url) = (stop.clone(), mqtt.url());
        tokio::spawn(async move {
            let publisher = MqttPublisher::connect(&url, "line-9").await.unwrap();
            let mut edge = EdgeNode::new("plant", "line-9");
            let mut sent = 0u64;
            while !stop.is_cancelled() && sent < 20_000 {
                for (topic, payload) in births(&mut edge) {
                    publisher.publish(&topic, QoS::AtMostOnce, false, payload).await.unwrap();
                }
                sent += 2;
                if sent % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    };
    let produced = (0..2000)
        .map(|i| {
            ProducerRecord::new("flood", format!(r#"{{"name":"target_temp","value":{i}}}"#))
                .with_key("plant/line-1/press-2")
        })
        .collect();
    client.produce(produced).await.unwrap();
    let committed_all = wait_until("offset 2000 committed", Duration::from_secs(30), || {
        futures::executor::block_on(committed(&store, "flood", "flood")) == 2000
    })
    .await;
    stop.cancel();
    let births_sent = flood.await.unwrap();
    let at = committed(&store, "flood", "flood").await;
    let (learned, reconnects) = (sink.births_learned(), sink.reconnects());
    eprintln!("{births_sent} QoS 0 BIRTHs published meanwhile, {learned} learned, committed {at}, {reconnects} reconnects, {} commands seen", commands.count());
    committed_all.unwrap();
    let got = commands.wait_for(2000, Duration::from_secs(10)).await.unwrap();
    let (learned, reconnects) = (sink.births_learned(), sink.reconnects());
    sink.stop().await;
    eprintln!("{births_sent} QoS 0 BIRTHs published meanwhile, {learned} learned");
    assert_eq!(births_sent, 20_000, "the flood went on while the commands went out");
    assert_eq!(reconnects, 0, "the sink lost its connection in the flood");
    let values: Vec<Value> = got.iter().map(|m| metrics(&m.payload).remove(0).value).collect();
    let expected: Vec<Value> = (0..2000).map(Value::Int).collect();
    assert_eq!(values, expected, "every command once, in order");
}

/// Connections the broker accepted from `client_id`, from its log (kept across restarts).
fn connections(mqtt: &Mosquitto, client_id: &str) -> usize {
    let as_client = format!(" as {client_id} (");
    mqtt.log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&as_client))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_sink_forgets_births_it_may_have_missed_and_sends_names() {
    init_tracing();
    let mut mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let config = MqttSinkConfig::sparkplug_b(mqtt.url(), vec!["forget".into()]);
    let sink = start("forget", config, &client, &store, "forget.dlq");
    let publisher = MqttPublisher::connect(&mqtt.url(), "line-1").await.unwrap();
    let mut edge = EdgeNode::new("plant", "line-1");
    birth_until_learned(&sink, &publisher, &mut edge).await;
    let before = connections(&mqtt, "forget");

    // While the sink is away the node may be born again with other aliases (its BIRTH, QoS 0
    // and not retained, never reaches the sink): the old aliases must not be used.
    mqtt.restart().await.unwrap();
    wait_until("the sink connected again", Duration::from_secs(20), || {
        connections(&mqtt, "forget") > before
    })
    .await
    .unwrap();
    let commands =
        MqttSubscriber::connect(&mqtt.url(), "independent", "spBv1.0/+/NCMD/+", QoS::AtLeastOnce)
            .await
            .unwrap();
    let record =
        ProducerRecord::new("forget", r#"{"name":"speed","value":3.0}"#).with_key("plant/line-1");
    client.produce(vec![record]).await.unwrap();
    let got = commands.wait_for(1, Duration::from_secs(20)).await.unwrap();
    sink.stop().await;
    let m = metrics(&got[0].payload);
    assert_eq!(
        (m[0].name.as_str(), m[0].alias, &m[0].value),
        ("speed", None, &Value::Double(3.0)),
        "by name: the alias of the BIRTH before the reconnect may be stale"
    );
}
