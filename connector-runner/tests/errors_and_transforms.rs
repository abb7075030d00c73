//! The error policy and transforms, configured as users configure them (TOML through the runner),
//! on real Mosquitto and Tansu: malformed JSON to the dead-letter topic while good records flow;
//! tolerance none stopping with nothing committed past the bad record; a sink-side rejection in the
//! sink's dead-letter topic; a transform chain with predicates.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runner::{run, ConnectFile};
use connector_core::{Result, SinkRecord};
use connector_testkit::{init_tracing, kafka, Mosquitto, MqttPublisher, MqttSubscriber, Tansu};
use rumqttc::QoS;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    handle: JoinHandle<Result<()>>,
    shutdown: CancellationToken,
}

fn start(toml: &str) -> Running {
    let file = ConnectFile::parse(toml, &connector_runner::builtin_registry())
        .unwrap_or_else(|e| panic!("{e}"));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run(file, shutdown.clone()));
    Running { handle, shutdown }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

fn header(r: &SinkRecord, key: &str) -> String {
    String::from_utf8(r.headers.last(key).map(|v| v.to_vec()).unwrap_or_default()).unwrap()
}

fn value(r: &SinkRecord) -> String {
    String::from_utf8(r.value.as_deref().unwrap_or_default().to_vec()).unwrap()
}

async fn wait_count(client: &KafkaClient, topic: &str, n: usize) -> Vec<SinkRecord> {
    kafka::consume_at_least(client, topic, n, Duration::from_secs(30)).await.unwrap()
}

/// Publishes probes until the source writes one to `kafka_topic`.
async fn wait_subscribed(
    publisher: &MqttPublisher,
    mqtt_topic: &str,
    client: &KafkaClient,
    kafka_topic: &str,
) {
    connector_testkit::wait_source_subscribed(
        publisher,
        mqtt_topic,
        br#"{"probe":true}"#,
        client,
        kafka_topic,
    )
    .await
    .unwrap();
}

fn source_toml(mqtt: &Mosquitto, tansu: &Tansu, extra: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]
[offsets]
store = "memory"
[progress]
interval_secs = 0

[[connector]]
name = "json-in"
type = "mqtt-source"
mqtt_url = "{}"
topics = ["dev/+/data"]
kafka_topic = "readings"
value_converter = "json"
{extra}
"#,
        tansu.bootstrap(),
        mqtt.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_goes_to_the_dead_letter_topic_with_context_while_good_records_flow() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = source_toml(
        &mqtt,
        &tansu,
        "errors = { tolerance = \"all\", dead_letter_topic = \"readings.dlq\", log = true }",
    );
    let running = start(&config);
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    wait_subscribed(&publisher, "dev/probe/data", &client, "readings").await;

    let messages = [r#"{"t":1}"#, "{oops", r#"{"t":2}"#, "not json at all", r#"{"t":3}"#];
    for m in messages {
        publisher
            .publish("dev/d1/data", QoS::AtLeastOnce, false, m.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let good = wait_count(&client, "readings", 4).await; // probe + 3
    let dead = wait_count(&client, "readings.dlq", 2).await;
    running.stop().await;

    let good: Vec<String> = good.iter().map(value).filter(|v| !v.contains("probe")).collect();
    assert_eq!(good, [r#"{"t":1}"#, r#"{"t":2}"#, r#"{"t":3}"#], "good records flow on, in order");
    assert_eq!(dead.iter().map(value).collect::<Vec<_>>(), ["{oops", "not json at all"]);
    for d in &dead {
        assert_eq!(header(d, "__connect.errors.topic"), "readings");
        assert_eq!(header(d, "__connect.errors.stage"), "VALUE_CONVERTER");
        assert_eq!(header(d, "__connect.errors.connector.name"), "json-in");
        assert_eq!(header(d, "__connect.errors.task.id"), "0");
        assert_eq!(header(d, "__connect.errors.exception.class.name"), "record-rejected");
        assert!(
            header(d, "__connect.errors.exception.message").contains("not valid JSON"),
            "{}",
            header(d, "__connect.errors.exception.message")
        );
        assert_eq!(header(d, "__connect.errors.partition"), "-1");
        assert_eq!(header(d, "__connect.errors.offset"), "-1");
        assert_eq!(header(d, "mqtt.topic"), "dev/d1/data", "the original headers travel with it");
        assert_eq!(d.key.as_deref(), Some(&b"dev/d1/data"[..]));
    }

    // Every message, bad ones included, was acknowledged to MQTT once handled: a restart of the
    // same session brings nothing back.
    let running = start(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await;
    assert_eq!(kafka::count(&client, "readings.dlq").await.unwrap(), 2);
    assert_eq!(kafka::count(&client, "readings").await.unwrap() as usize, good.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tolerance_none_the_connector_stops_clearly_and_commits_nothing_past_the_bad_record() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let running = start(&source_toml(&mqtt, &tansu, ""));
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    wait_subscribed(&publisher, "dev/probe/data", &client, "readings").await;

    for m in [r#"{"t":1}"#, "{oops", r#"{"t":2}"#] {
        publisher
            .publish("dev/d1/data", QoS::AtLeastOnce, false, m.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let err = tokio::time::timeout(Duration::from_secs(30), running.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("record rejected: value: not valid JSON"), "{msg}");
    assert!(msg.contains("connector=json-in") && msg.contains("topic=readings"), "{msg}");
    let before: Vec<String> =
        kafka::consume_all(&client, "readings").await.unwrap().iter().map(value).collect();
    assert_eq!(
        before.last().map(String::as_str),
        Some(r#"{"t":1}"#),
        "nothing after the bad record was written"
    );

    // Nothing past the bad record was acknowledged: with the converter relaxed, the same session
    // delivers the bad record and everything after it, and nothing before it again.
    let relaxed = source_toml(&mqtt, &tansu, "").replace("value_converter = \"json\"", "");
    let running = start(&relaxed);
    let after = wait_count(&client, "readings", before.len() + 2).await;
    running.stop().await;
    let after: Vec<String> = after.iter().map(value).collect();
    assert_eq!(&after[before.len()..], ["{oops", r#"{"t":2}"#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_sink_refuses_reaches_the_sink_dead_letter_topic_and_the_rest_is_published() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "cars", "cars/#", QoS::AtLeastOnce).await.unwrap();
    client
        .produce(vec![
            ProducerRecord::new("commands", "unlock").with_key("car-1"),
            ProducerRecord::new("commands", "open everything")
                .with_key("x/#")
                .with_header("origin", "ops"),
            ProducerRecord::new("commands", "lock").with_key("car-2"),
        ])
        .await
        .unwrap();
    let running = start(&format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]
[offsets]
store = "memory"
[progress]
interval_secs = 0

[[connector]]
name = "commands-out"
type = "mqtt-sink"
mqtt_url = "{}"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/cmd"
runtime = {{ commit_interval_ms = 100 }}

[connector.errors]
tolerance = "all"
dead_letter_topic = "commands.dlq"
"#,
        tansu.bootstrap(),
        mqtt.url()
    ));
    let dead = wait_count(&client, "commands.dlq", 1).await;
    sub.wait_for(2, Duration::from_secs(20)).await.unwrap();
    running.stop().await;

    let published: Vec<(String, String)> = sub
        .messages()
        .iter()
        .map(|p| (p.topic.clone(), String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        published,
        [("cars/car-1/cmd".into(), "unlock".into()), ("cars/car-2/cmd".into(), "lock".into())]
    );
    let d = &dead[0];
    assert_eq!(value(d), "open everything");
    assert_eq!(d.key.as_deref(), Some(&b"x/#"[..]));
    assert_eq!(header(d, "origin"), "ops");
    assert_eq!(header(d, "__connect.errors.topic"), "commands");
    assert_eq!(header(d, "__connect.errors.partition"), "0");
    assert_eq!(header(d, "__connect.errors.offset"), "1");
    assert_eq!(header(d, "__connect.errors.stage"), "TASK_PUT");
    assert_eq!(header(d, "__connect.errors.connector.name"), "commands-out");
    assert!(
        header(d, "__connect.errors.exception.message").contains("{key} is \"x/#\""),
        "{}",
        header(d, "__connect.errors.exception.message")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_transform_chain_with_predicates_reshapes_records() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]
[offsets]
store = "memory"
[progress]
interval_secs = 0

[[connector]]
name = "shaped"
type = "mqtt-source"
mqtt_url = "{}"
topics = ["site/#"]
kafka_topic = "raw.{{1}}"

[[connector.transforms]]
type = "filter"
predicate = {{ type = "topic_name_matches", pattern = "raw\\.ignored" }}

[[connector.transforms]]
type = "header_from"
fields = ["unit"]
headers = ["unit"]
operation = "move"

[[connector.transforms]]
type = "regex_router"
regex = "raw\\.(.*)"
replacement = "clean.$1"

[[connector.transforms]]
type = "insert_header"
header = "site"
value = "plant-7"
predicate = {{ type = "has_header_key", name = "unit" }}
"#,
        tansu.bootstrap(),
        mqtt.url()
    );
    let running = start(&config);
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while kafka::count(&client, "clean.probe").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "never subscribed");
        publisher
            .publish("site/probe/x", QoS::AtLeastOnce, false, br#"{"unit":"-"}"#.to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher
        .publish("site/ignored/x", QoS::AtLeastOnce, false, br#"{"unit":"C","t":1}"#.to_vec())
        .await
        .unwrap();
    publisher
        .publish("site/line1/x", QoS::AtLeastOnce, false, br#"{"unit":"C","t":21.5}"#.to_vec())
        .await
        .unwrap();
    let records = wait_count(&client, "clean.line1", 1).await;
    running.stop().await;

    let r = &records[0];
    assert_eq!(value(r), r#"{"t":21.5}"#, "unit moved out of the value");
    assert_eq!(header(r, "unit"), "C");
    assert_eq!(header(r, "site"), "plant-7");
    assert_eq!(kafka::count(&client, "raw.ignored").await.unwrap(), 0, "filtered");
    assert_eq!(kafka::count(&client, "clean.ignored").await.unwrap(), 0, "filtered");
}

#[test]
fn transform_and_error_settings_are_validated_with_key_paths() {
    let text = r#"
[kafka]
bootstrap_servers = ["h:1"]

[[connector]]
name = "x"
type = "heartbeat"
topic = "t"
device = "d"
value_converter = "xml"
errors = { tolerance = "some", dead_letter_topic = "dlq" }

[[connector.transforms]]
type = "regex_router"
regex = "("
replacement = "y"

[[connector.transforms]]
type = "rename_everything"

[[connector.transforms]]
type = "filter"
predicate = { type = "topic_name_matches", patern = "x" }
"#;
    let errors =
        ConnectFile::parse(text, &connector_runner::builtin_registry()).unwrap_err().to_string();
    for expected in [
        "connector[0].errors.tolerance: unknown variant",
        "connector[0].value_converter: unknown variant xml",
        "connector[0].transforms[0].regex: ",
        "connector[0].transforms[1].type: unknown transform type \"rename_everything\"",
        "connector[0].transforms[2].predicate.patern: unknown key",
    ] {
        assert!(
            errors.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in:\n{errors}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_for_more_kafka_topics_than_max_kafka_topics_go_to_the_dead_letter_topic() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let config = format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]
[offsets]
store = "memory"
[progress]
interval_secs = 0

[[connector]]
name = "fleet"
type = "mqtt-source"
mqtt_url = "{}"
topics = ["fleet/+/data"]
kafka_topic = "fleet.{{1}}"
runtime = {{ max_kafka_topics = 3 }}
errors = {{ tolerance = "all", dead_letter_topic = "fleet-dlq" }}
"#,
        tansu.bootstrap(),
        mqtt.url()
    );
    let running = start(&config);
    let publisher = MqttPublisher::connect(&mqtt.url(), "devices").await.unwrap();
    // The probes' topic is the first of the three.
    wait_subscribed(&publisher, "fleet/d0/data", &client, "fleet.d0").await;

    // Nine distinct topics in all: three times the limit.
    for d in 1..9 {
        let topic = format!("fleet/d{d}/data");
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, format!("m{d}").into_bytes())
            .await
            .unwrap();
    }
    let dead = wait_count(&client, "fleet-dlq", 6).await;
    for d in 1..3 {
        let got = wait_count(&client, &format!("fleet.d{d}"), 1).await;
        assert_eq!(got.iter().map(value).collect::<Vec<_>>(), [format!("m{d}")]);
    }
    running.stop().await;

    assert_eq!(
        dead.iter().map(value).collect::<Vec<_>>(),
        ["m3", "m4", "m5", "m6", "m7", "m8"],
        "the records for the 4th to 9th topic are dead-lettered, in order"
    );
    for d in &dead {
        let why = header(d, "__connect.errors.exception.message");
        assert!(why.contains("max_kafka_topics = 3"), "{why}");
        assert_eq!(header(d, "__connect.errors.stage"), "KAFKA_PRODUCE", "{why}");
    }
}
