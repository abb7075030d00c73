//! The `connect` runner as a user runs it: `validate` naming key paths, `schema` and the
//! generated reference, `run` with both MQTT connectors on real brokers, SIGTERM draining and a
//! restart losing nothing, and unreachable brokers.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_testkit::{init_tracing, kafka, Mosquitto, MqttPublisher, MqttSubscriber, Tansu};
use rumqttc::QoS;

mod support;

use support::{assert_validate_reports, connect, write, Runner};

#[test]
fn validate_names_the_key_path_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "bad.toml",
        r#"
[kafka]
bootstrap_servers = ["127.0.0.1:9092"]

[[connector]]
name = "unknown-key"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "plant"
qso = 1

[[connector]]
name = "bad-qos"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "plant"
qos = 3

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "http://broker"
topics = ["commands"]
mqtt_topic = "cars/{key}/cmd"

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "mqtt://broker"
topics = ["commands"]
mqtt_topic = "cars/{car}/cmd"
"#,
    );
    assert_validate_reports(
        &config,
        &[
            "connector[0].qso: unknown key",
            "connector[1].qos: expected 0, 1 or 2",
            "connector[2].mqtt_url: expected mqtt://host[:port] or mqtts://host[:port]",
            "connector[3].name: duplicate connector name \"commands\" (also connector[2])",
            "connector[3].mqtt_topic: unknown placeholder {car}",
        ],
    );

    let good = write(
        dir.path(),
        "good.toml",
        "[kafka]\nbootstrap_servers = [\"127.0.0.1:9092\"]\n\n[[connector]]\nname = \"t\"\ntype = \"mqtt-source\"\nmqtt_url = \"mqtt://broker\"\ntopics = [\"plant/#\"]\nkafka_topic = \"plant.{1}\"\n",
    );
    let out = connect(&["validate", "--config", &good]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn validate_refuses_topic_templates_whose_fixed_parts_can_never_work() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(250);
    let config = write(
        dir.path(),
        "templates.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["127.0.0.1:9092"]

[[connector]]
name = "space"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "plant {{1}}"

[[connector]]
name = "colon"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "plant:{{1}}"

[[connector]]
name = "too-long"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "{long}.{{1}}"

[[connector]]
name = "slashes-are-fine"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
topics = ["plant/#"]
kafka_topic = "plant/{{1}}/raw"

[[connector]]
name = "plus"
type = "mqtt-sink"
mqtt_url = "mqtt://broker"
topics = ["commands"]
mqtt_topic = "cars/+/{{key}}"

[[connector]]
name = "hash"
type = "mqtt-sink"
mqtt_url = "mqtt://broker"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/#"

[[connector]]
name = "nul"
type = "mqtt-sink"
mqtt_url = "mqtt://broker"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/\u0000"
"#
        ),
    );
    assert_validate_reports(
        &config,
        &[
            "connector[0].kafka_topic: \"plant {1}\" contains ' '",
            "connector[1].kafka_topic: \"plant:{1}\" contains ':'",
            "connector[2].kafka_topic: ",
            "connector[4].mqtt_topic: ",
            "connector[5].mqtt_topic: ",
            "connector[6].mqtt_topic: ",
        ],
    );
    let out = connect(&["validate", "--config", &config]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("251 characters outside its placeholders"), "{stderr}");
    assert!(!stderr.contains("connector[3]"), "'/' in a kafka_topic becomes '.': {stderr}");
}

#[test]
fn validate_reports_unknown_types_tables_and_toml_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[kafka]\nbootstrap_servers = [\"h:1\"]\n[[connector]]\nname = \"x\"\ntype = \"mqtt-souce\"\n", "connector[0].type: unknown connector type \"mqtt-souce\""),
        ("[kafka]\nbootstrap_servers = [\"h:1\"]\n[offsets]\nstore = \"disk\"\n[[connector]]\nname = \"x\"\ntype = \"file-sink\"\npath = \"o\"\ntopics = [\"t\"]\n", "offsets.store:"),
        ("[kafka]\nbootstrap_servers = [\"h:1\"]\n[kafak]\n", "kafak: unknown key"),
        ("[kafka\n", "not valid TOML"),
    ];
    for (text, expected) in cases {
        let out = connect(&["validate", "--config", &write(dir.path(), "c.toml", text)]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn run_refuses_zero_worker_threads_before_reading_the_file() {
    let out = connect(&["run", "--config", "missing.toml", "--worker-threads", "0"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}

#[test]
fn schema_describes_every_registered_type_and_the_reference_is_up_to_date() {
    let out = connect(&["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let titles: Vec<String> = schema["properties"]["connector"]["items"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["title"].as_str().unwrap().to_owned())
        .collect();
    for t in ["mqtt-source", "mqtt-sink", "file-source", "file-sink"] {
        assert!(titles.iter().any(|x| x.contains(t)), "{t} in {titles:?}");
    }
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md"))
            .unwrap();
    let current = connector_core::runner::markdown(&connector_runner::builtin_registry());
    assert!(
        committed == current,
        "docs/configuration.md is stale; regenerate it with:\n  cargo run -p connector-runner --bin connect -- schema --markdown > docs/configuration.md"
    );
}

fn both_ways_config(mqtt: &Mosquitto, tansu: &Tansu, offsets: &Path) -> String {
    both_ways_config_in(mqtt, tansu, offsets, "3.1.1")
}

/// Both MQTT connectors, speaking MQTT `version`.
fn both_ways_config_in(mqtt: &Mosquitto, tansu: &Tansu, offsets: &Path, version: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
store = "file"
path = "{}"

[progress]
interval_secs = 1

[[connector]]
name = "telemetry"
type = "mqtt-source"
mqtt_url = "{}"
mqtt_version = "{version}"
topics = ["plant/+/temp"]
kafka_topic = "plant.{{1}}"

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "{}"
mqtt_version = "{version}"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/cmd"
runtime = {{ commit_interval_ms = 200 }}
"#,
        tansu.bootstrap(),
        offsets.display(),
        mqtt.url(),
        mqtt.url()
    )
}

async fn wait_subscribed(publisher: &MqttPublisher, client: &KafkaClient) {
    connector_testkit::wait_source_subscribed(
        publisher,
        "plant/probe/temp",
        b"probe",
        client,
        "plant.probe",
    )
    .await
    .unwrap();
}

async fn distinct_values(client: &KafkaClient, topic: &str) -> BTreeSet<Vec<u8>> {
    kafka::consume_all(client, topic)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.value.map(|v| v.to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_moves_telemetry_in_and_commands_out_on_real_brokers_and_drains_on_sigterm() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &both_ways_config(&mqtt, &tansu, &dir.path().join("offsets.json")),
    );
    // Two worker threads here; the other runs use the default (one on a 2-core machine).
    let mut runner = Runner::start(
        &config,
        &dir.path().join("connect.log"),
        &["--log-format", "json", "--worker-threads", "2"],
    );
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    let car = MqttSubscriber::connect(&mqtt.url(), "car-7", "cars/car-7/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_subscribed(&publisher, &client).await;

    for i in 0..500 {
        publisher
            .publish("plant/line1/temp", QoS::AtLeastOnce, false, format!("{i}").into_bytes())
            .await
            .unwrap();
    }
    let commands = (0..100)
        .map(|i| ProducerRecord::new("commands", format!("cmd-{i}")).with_key("car-7"))
        .collect();
    client.produce(commands).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while distinct_values(&client, "plant.line1").await.len() < 500 || car.count() < 100 {
        assert!(Instant::now() < deadline, "flow incomplete; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !runner.log().contains("rec/s, in flight") {
        assert!(Instant::now() < deadline, "no progress line; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runner.terminate(), Some(0), "SIGTERM drains and exits 0; log:\n{}", runner.log());
    let log = runner.log();
    assert!(
        log.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "--log-format json:\n{log}"
    );
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(log.contains("rec/s, in flight"), "progress lines: {log}");
    let got: Vec<String> =
        car.messages().iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    assert_eq!(got, (0..100).map(|i| format!("cmd-{i}")).collect::<Vec<_>>(), "in order, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_then_a_restart_loses_nothing() {
    stop_mid_stream_then_restart("3.1.1", false).await;
}

/// The MQTT 5 connection is our own: its session (expiry) must survive a crash the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_sigkill_mid_stream_then_a_restart_loses_nothing() {
    stop_mid_stream_then_restart("5", true).await;
}

/// Both connectors mid-stream, stopped by SIGTERM (drain) or SIGKILL (crash), then restarted
/// while the publisher and producer go on: every message arrives.
async fn stop_mid_stream_then_restart(version: &str, kill: bool) {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let offsets = dir.path().join("offsets.json");
    let config =
        write(dir.path(), "connect.toml", &both_ways_config_in(&mqtt, &tansu, &offsets, version));
    let log = dir.path().join("connect.log");
    let mut runner = Runner::start(&config, &log, &[]);
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap());
    let car = MqttSubscriber::connect(&mqtt.url(), "car-7", "cars/car-7/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_subscribed(&publisher, &client).await;

    let n = 4_000usize;
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move {
            for i in 0..n {
                publisher
                    .publish(
                        "plant/line1/temp",
                        QoS::AtLeastOnce,
                        false,
                        format!("{i}").into_bytes(),
                    )
                    .await
                    .unwrap();
                if i % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    let producing = {
        let client = client.clone();
        tokio::spawn(async move {
            for chunk in 0..20 {
                let batch = (chunk * 50..(chunk + 1) * 50)
                    .map(|i| ProducerRecord::new("commands", format!("cmd-{i}")).with_key("car-7"))
                    .collect();
                client.produce(batch).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    if kill {
        runner.kill();
    } else {
        assert_eq!(runner.terminate(), Some(0), "log:\n{}", runner.log());
        assert!(std::fs::metadata(&offsets).is_ok(), "offsets were committed to the file");
    }
    let before = distinct_values(&client, "plant.line1").await.len();
    assert!(before < n, "stopped mid-stream ({before} of {n})");

    let mut runner = Runner::start(&config, &log, &[]);
    publishing.await.unwrap();
    producing.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let telemetry = distinct_values(&client, "plant.line1").await.len();
        let commands: BTreeSet<Vec<u8>> =
            car.messages().iter().map(|p| p.payload.to_vec()).collect();
        if telemetry == n && commands.len() == 1_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{telemetry} of {n} telemetry, {} of 1000 commands; log:\n{}",
            commands.len(),
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(runner.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_give_a_one_line_reason_and_a_non_zero_exit() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let closed = connector_testkit::free_port().unwrap();
    let no_kafka = write(
        dir.path(),
        "no-kafka.toml",
        &format!("[kafka]\nbootstrap_servers = [\"127.0.0.1:{closed}\"]\nrequest_timeout_ms = 2000\nconnect_timeout_ms = 500\n[offsets]\nstore = \"memory\"\n[[connector]]\nname = \"t\"\ntype = \"mqtt-source\"\nmqtt_url = \"mqtt://127.0.0.1:{closed}\"\ntopics = [\"a\"]\nkafka_topic = \"a\"\n"),
    );
    let out = connect(&["run", "--config", &no_kafka]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("connect: cannot reach Kafka at 127.0.0.1:{closed}")),
        "{last}"
    );

    let tansu = Tansu::start().await.unwrap();
    let no_mqtt = write(
        dir.path(),
        "no-mqtt.toml",
        &format!("[kafka]\nbootstrap_servers = [\"{}\"]\n[offsets]\nstore = \"memory\"\n[[connector]]\nname = \"t\"\ntype = \"mqtt-source\"\nmqtt_url = \"mqtt://127.0.0.1:{closed}\"\ntopics = [\"a\"]\nkafka_topic = \"a\"\nconnect_timeout_secs = 1\n", tansu.bootstrap()),
    );
    let started = Instant::now();
    let out = connect(&["run", "--config", &no_mqtt]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("connect: cannot connect to MQTT broker"), "{last}");
    assert!(last.contains(&format!("127.0.0.1:{closed}")), "{last}");
    assert!(started.elapsed() < Duration::from_secs(30), "bounded retry");
}
