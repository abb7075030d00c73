//! The `connect` process as a Sparkplug B host (`format = "sparkplug_b"`), SIGKILLed three times
//! during a stream of DATA, in both modes, with the Kafka offset store keeping the BIRTH state:
//! `persistent` loses no metric; `primary_host` gives what Sparkplug 3.0 promises: the will says
//! offline after each crash, the restart says online with a new timestamp, the edge node's
//! rebirth on it is decoded, and nothing is lost but what was in flight at the crash.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each crash test prints its figures.
#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_core::SinkRecord;
use connector_sparkplug::encode::EdgeNode;
use connector_sparkplug::{DataType, Value};
use connector_testkit::{init_tracing, kafka, Mosquitto, MqttPublisher, MqttSubscriber, Tansu};
use rumqttc::QoS;
use serde_json::Value as Json;

mod support;

use support::{write, Runner};

fn now() -> u64 {
    u64::try_from(connector_core::Timestamp::now().as_millis()).unwrap()
}

fn config(mqtt: &Mosquitto, tansu: &Tansu, sparkplug: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
store = "kafka"
topic = "offsets"

[[connector]]
name = "factory"
type = "mqtt-source"
mqtt_url = "{}"
topics = ["spBv1.0/#"]
kafka_topic = "factory"
format = "sparkplug_b"
runtime = {{ offset_flush_interval_ms = 200 }}
errors = {{ tolerance = "all", dead_letter_topic = "factory.dlq" }}

[connector.sparkplug]
{sparkplug}
"#,
        tansu.bootstrap(),
        mqtt.url()
    )
}

fn value(r: &SinkRecord) -> Json {
    serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).unwrap()
}

fn node_of(r: &SinkRecord) -> String {
    r.headers
        .last("sparkplug.node")
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .unwrap_or_default()
}

/// The `Count` values of `node` in Kafka, and its status records.
async fn seen(client: &KafkaClient, node: &str) -> (BTreeSet<u64>, Vec<String>) {
    let records = kafka::consume_all(client, "factory").await.unwrap_or_default();
    let mine: Vec<&SinkRecord> = records.iter().filter(|r| node_of(r) == node).collect();
    let counts = mine
        .iter()
        .filter(|r| value(r)["name"] == "Count")
        .filter_map(|r| value(r)["value"].as_u64())
        .collect();
    let statuses = mine
        .iter()
        .filter(|r| value(r)["type"] == "status")
        .map(|r| value(r)["status"].as_str().unwrap().to_owned())
        .collect();
    (counts, statuses)
}

/// Publishes a probe node's NBIRTH until its status record is in Kafka: the source subscribed.
async fn wait_subscribed(publisher: &MqttPublisher, client: &KafkaClient, runner: &Runner) {
    let mut probe = EdgeNode::new("test", "probe");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (t, p) = probe.nbirth(&[], now()).unwrap();
        publisher.publish(&t, QoS::AtLeastOnce, false, p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !seen(client, "probe").await.1.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the source did not subscribe; log:\n{}", runner.log());
    }
}

fn birth() -> [(&'static str, Option<u64>, Value, DataType); 1] {
    [("Count", Some(1), Value::UInt(0), DataType::UInt64)]
}

/// Rebirth requests (NCMD) for `node` seen by `ncmd`.
fn rebirths(ncmd: &MqttSubscriber, node: &str) -> usize {
    ncmd.messages().iter().filter(|p| p.topic.ends_with(&format!("/NCMD/{node}"))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_mode_sigkilled_three_times_mid_stream_loses_no_metric() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        write(dir.path(), "connect.toml", &config(&mqtt, &tansu, r#"mode = "persistent""#));
    let log = dir.path().join("connect.log");
    let mut runner = Runner::start(&config, &log, &[]);
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "edge-line1").await.unwrap());
    let ncmd =
        MqttSubscriber::connect(&mqtt.url(), "ncmd-watch", "spBv1.0/+/NCMD/#", QoS::AtMostOnce)
            .await
            .unwrap();
    wait_subscribed(&publisher, &client, &runner).await;

    let mut edge = EdgeNode::new("plant", "line1");
    let (t, p) = edge.nbirth(&birth(), now()).unwrap();
    publisher.publish(&t, QoS::AtLeastOnce, false, p).await.unwrap();
    // The BIRTH state is in the offset store (the Kafka topic "offsets") before the first crash.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let offsets = kafka::consume_all(&client, "offsets").await.unwrap_or_default();
        let saved = offsets.iter().any(|r| {
            let text = |b: Option<&bytes::Bytes>| {
                String::from_utf8_lossy(b.map_or(&[][..], |b| &b[..])).into_owned()
            };
            (text(r.key.as_ref()) + &text(r.value.as_ref())).contains("plant/line1")
        });
        if saved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the NBIRTH state never reached the offsets topic; log:\n{}",
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1,200 NDATA (seq wraps four times), 200 a second, by alias only.
    let n = 1_200u64;
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move {
            for i in 0..n {
                let (t, p) = edge.ndata(&[("Count", Value::UInt(i))], now()).unwrap();
                publisher.publish(&t, QoS::AtLeastOnce, false, p).await.unwrap();
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    // Each incarnation writes some DATA before it is killed (mid-stream, not mid-start).
    let mut per_run = Vec::new();
    for _ in 0..3 {
        let before = seen(&client, "line1").await.0.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen(&client, "line1").await.0.len() < before + 100 {
            assert!(Instant::now() < deadline, "no progress; log:\n{}", runner.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        per_run.push(seen(&client, "line1").await.0.len() - before);
        runner.kill();
        runner = Runner::start(&config, &log, &[]);
    }
    publishing.await.unwrap();
    publisher.wait_acknowledged(n + 2, Duration::from_secs(30)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (counts, statuses) = loop {
        let (counts, statuses) = seen(&client, "line1").await;
        if counts.len() as u64 >= n {
            break (counts, statuses);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} Count values; log:\n{}",
            counts.len(),
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let dead = kafka::consume_all(&client, "factory.dlq").await.unwrap_or_default();
    assert_eq!(runner.terminate(), Some(0));
    let records = kafka::consume_all(&client, "factory").await.unwrap();
    eprintln!(
        "persistent, 3 SIGKILLs (new values before each kill: {per_run:?}): {} distinct Count values of {n}, {} records in all (duplicates: redeliveries), {} dead letters, {} rebirth requests, statuses {statuses:?}",
        counts.len(),
        records.len(),
        dead.len(),
        rebirths(&ncmd, "line1")
    );
    assert_eq!(counts, (0..n).collect(), "every DATA message's metric, none lost");
    assert!(dead.is_empty(), "every message decoded after each restart: {dead:?}");
    assert_eq!(rebirths(&ncmd, "line1"), 0, "the state came back from the offset store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_host_mode_sigkilled_three_times_recovers_by_rebirth() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sp = r#"mode = "primary_host"
host_id = "scada""#;
    let config = write(dir.path(), "connect.toml", &config(&mqtt, &tansu, sp));
    let log = dir.path().join("connect.log");
    let mut runner = Runner::start(&config, &log, &[]);
    let state =
        MqttSubscriber::connect(&mqtt.url(), "edge-state", "spBv1.0/STATE/scada", QoS::AtLeastOnce)
            .await
            .unwrap();
    let publisher = MqttPublisher::connect(&mqtt.url(), "edge-line2").await.unwrap();
    wait_subscribed(&publisher, &client, &runner).await;

    // The edge node as Sparkplug 3.0 has it: DATA only while the primary host is online, and a
    // BIRTH whenever it comes online again (a STATE with a newer timestamp).
    // Every STATE message since the last look: wills are counted even when the new birth
    // follows at once; the last one says whether the host is online now.
    let mut looked = 0;
    let mut look = |s: &MqttSubscriber, wills: &mut Vec<u64>| -> Option<(bool, u64)> {
        let all = s.messages();
        for p in &all[looked..] {
            let j: Json = serde_json::from_slice(&p.payload).unwrap();
            let t = j["timestamp"].as_u64().unwrap();
            if j["online"] == false && wills.last() != Some(&t) {
                wills.push(t);
            }
        }
        looked = all.len();
        let j: Json = serde_json::from_slice(&all.last()?.payload).unwrap();
        Some((j["online"].as_bool().unwrap(), j["timestamp"].as_u64().unwrap()))
    };
    let mut edge = EdgeNode::new("plant", "line2");
    let mut born_for = 0u64;
    let mut sent: Vec<(u64, Instant)> = Vec::new();
    let mut kills: Vec<Instant> = Vec::new();
    let mut wills = Vec::new();
    let start = Instant::now();
    let mut i = 0u64;
    let mut since_last_kill = 0;
    while kills.len() < 3 || since_last_kill < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no DATA after the last restart; log:\n{}",
            runner.log()
        );
        if let Some((true, t)) = look(&state, &mut wills) {
            {
                if t != born_for {
                    let (topic, p) = edge.nbirth(&birth(), now()).unwrap();
                    publisher.publish(&topic, QoS::AtLeastOnce, false, p).await.unwrap();
                    born_for = t;
                }
                let (topic, p) = edge.ndata(&[("Count", Value::UInt(i))], now()).unwrap();
                publisher.publish(&topic, QoS::AtLeastOnce, false, p).await.unwrap();
                sent.push((i, Instant::now()));
                i += 1;
                since_last_kill += 1;
            }
        }
        if kills.len() < 3
            && start.elapsed() > Duration::from_millis(2000 * (kills.len() as u64 + 1))
        {
            runner.kill();
            kills.push(Instant::now());
            since_last_kill = 0;
            runner = Runner::start(&config, &log, &[]);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last DATA, once more after the last kill's rebirth, must all arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (counts, statuses) = loop {
        let (counts, statuses) = seen(&client, "line2").await;
        if counts.contains(&(i - 1)) {
            break (counts, statuses);
        }
        assert!(Instant::now() < deadline, "the last DATA never arrived; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(runner.terminate(), Some(0));
    let lost: Vec<u64> = sent.iter().map(|(v, _)| *v).filter(|v| !counts.contains(v)).collect();
    eprintln!(
        "primary_host, 3 SIGKILLs: {} DATA sent while the host was online, {} lost, wills {}, statuses {statuses:?}",
        sent.len(),
        lost.len(),
        wills.len()
    );
    assert_eq!(wills.len(), 3, "the broker published the will (STATE offline) after each crash");
    let onlines = statuses.iter().filter(|s| *s == "online").count();
    assert_eq!(onlines, 4, "the first BIRTH and one rebirth after each restart: {statuses:?}");
    // What can be lost: what was in flight in the host when it was killed.
    for (v, at) in sent.iter().filter(|(v, _)| lost.contains(v)) {
        assert!(
            kills.iter().any(|k| {
                let gap = if at > k { at.duration_since(*k) } else { k.duration_since(*at) };
                gap < Duration::from_secs(2)
            }),
            "Count {v} lost, though not sent just before a crash"
        );
    }
}
