//! The embedding example (`src/bin/embedded-app.rs`) as its user runs it, on real Mosquitto and
//! Tansu: MQTT telemetry reaches Kafka through its own transform (stamped, empty payloads
//! dropped), its own counter connector's commands reach MQTT through the MQTT sink, and SIGINT
//! drains and exits 0.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connector_testkit::{kafka, wait_source_subscribed, Mosquitto, MqttPublisher, MqttSubscriber};
use connector_testkit::{wait_until, Tansu};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_app_moves_telemetry_in_and_its_own_commands_out() {
    let (mqtt, tansu) = (Mosquitto::start().await.unwrap(), Tansu::start().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("app.log")).unwrap();
    let commands =
        MqttSubscriber::connect(&mqtt.url(), "car", "app/+/cmd", QoS::AtLeastOnce).await.unwrap();
    let mut app = Command::new(env!("CARGO_BIN_EXE_embedded-app"))
        .env("MQTT_URL", mqtt.url())
        .env("KAFKA", tansu.bootstrap())
        .env("OFFSETS", dir.path().join("offsets.json"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let app_log = || std::fs::read_to_string(dir.path().join("app.log")).unwrap_or_default();

    // Telemetry in: MQTT -> our transform -> Kafka.
    let client = tansu.client().await.unwrap();
    let publisher = MqttPublisher::connect(&mqtt.url(), "pump-1").await.unwrap();
    let topic = "app/pump-1/telemetry";
    wait_source_subscribed(&publisher, topic, b"probe", &client, "app.telemetry")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", app_log()));
    publisher.publish(topic, QoS::AtLeastOnce, false, Vec::new()).await.unwrap();
    for i in 0..20 {
        publisher.publish(topic, QoS::AtLeastOnce, false, format!("t-{i}").into()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let records = kafka::consume_all(&client, "app.telemetry").await.unwrap();
        if records.iter().any(|r| r.value.as_deref() == Some(b"t-19")) {
            break records;
        }
        assert!(Instant::now() < deadline, "telemetry missing in Kafka:\n{}", app_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let values: Vec<_> = records.iter().filter_map(|r| r.value.clone()).collect();
    assert!(values.iter().all(|v| !v.is_empty()), "the empty payload is dropped by the transform");
    for i in 0..20 {
        assert!(values.iter().any(|v| *v == format!("t-{i}").as_bytes()), "t-{i} missing");
    }
    for r in &records {
        assert_eq!(r.headers.first("app").map(|v| &v[..]), Some(&b"embedded-app"[..]), "{r:?}");
    }

    // Commands out: our counter connector -> Kafka -> MQTT sink -> the car.
    let received = commands.wait_for(3, Duration::from_secs(20)).await.unwrap();
    assert_eq!(received[0].topic, "app/pump-1/cmd");
    assert_eq!(&received[0].payload[..], b"set speed 0");

    // SIGINT: drain, commit, exit 0.
    Command::new("kill").args(["-INT", &app.id().to_string()]).status().unwrap();
    let exited = wait_until("embedded-app exits", Duration::from_secs(20), || {
        app.try_wait().unwrap().is_some()
    })
    .await;
    if exited.is_err() {
        let _ = app.kill();
    }
    let status = app.wait().unwrap();
    assert!(exited.is_ok() && status.success(), "{status:?}\n{}", app_log());
}
