//! `/metrics` of real `connect run` processes, scraped with curl: the conservation identity
//! (received = written + dead-lettered + dropped + in flight + abandoned) holds exactly at
//! quiescence after a run with DLQ'd, filtered and skipped records and a SIGKILL, and Kafka holds
//! every good value; a sink shows its lag per partition, then catches up.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use connector_core::kafka::ProducerRecord;
use connector_testkit::{init_tracing, kafka, Mosquitto, MqttPublisher, Tansu};
use rumqttc::QoS;
use support::{write, Runner};

/// One scrape: every sample, `name{labels}` -> value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self(samples)
    }

    /// Sum of the samples of `name` whose labels include every `labels` pair.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.keys().any(|series| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
    }
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address the runner's REST API listens on, from its log line.
async fn rest_addr(runner: &Runner) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = strip_ansi(&runner.log());
        if let Some(line) = log.lines().rev().find(|l| l.contains("REST API listening")) {
            let at = line.find("addr=").map(|i| &line[i + 5..]).unwrap_or_default();
            let addr: String = at
                .trim_start_matches('"')
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            if !addr.is_empty() {
                return addr;
            }
        }
        assert!(Instant::now() < deadline, "no REST API listening line in:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET /metrics with curl.
fn scrape(addr: &str) -> Scrape {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    Scrape::parse(&String::from_utf8(out.stdout).unwrap())
}

/// `PUT path` with curl (an empty body), e.g. `/connectors/c/pause`.
fn put(addr: &str, path: &str) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-X", "PUT", &format!("http://{addr}{path}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "PUT {path}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Scrapes until `done` holds (or panics with the last scrape after `secs`).
async fn scrape_until(addr: &str, secs: u64, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = scrape(addr);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: never held; last scrape:\n{:#?}", s.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The identity's terms for one connector: (received, written, dead_lettered, filtered, skipped,
/// in_flight, abandoned).
fn terms(s: &Scrape, c: &str) -> [f64; 7] {
    let l = [("connector", c)];
    [
        s.sum("connector_records_received_total", &l),
        s.sum("connector_records_written_total", &l),
        s.sum("connector_records_dead_lettered_total", &l),
        s.sum("connector_records_dropped_total", &[("connector", c), ("reason", "filtered")]),
        s.sum("connector_records_dropped_total", &[("connector", c), ("reason", "skipped")]),
        s.sum("connector_records_in_flight", &l),
        s.sum("connector_records_abandoned_total", &l),
    ]
}

fn holds(t: &[f64; 7]) -> bool {
    t[0] == t[1] + t[2] + t[3] + t[4] + t[5] + t[6]
}

const PER_PHASE: usize = 1000;

/// Message `i` of a phase: good JSON (to Kafka), bad JSON (to the DLQ), or one the filter drops;
/// every fifth goes to the lenient connector (bad ones skipped, no DLQ).
fn message(phase: usize, i: usize) -> (String, Vec<u8>) {
    let n = phase * PER_PHASE + i;
    match i % 5 {
        0 | 1 => ("m/good".into(), format!(r#"{{"n":{n}}}"#).into_bytes()),
        2 => ("m/good".into(), format!("{{bad {n}").into_bytes()),
        3 => ("m/drop".into(), format!(r#"{{"n":{n}}}"#).into_bytes()),
        _ if n % 2 == 0 => ("l/x".into(), format!(r#"{{"l":{n}}}"#).into_bytes()),
        _ => ("l/x".into(), format!("{{lenient bad {n}").into_bytes()),
    }
}

async fn publish_phase(publisher: &MqttPublisher, phase: usize) {
    for i in 0..PER_PHASE {
        let (topic, payload) = message(phase, i);
        publisher.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
}

fn values(records: &[connector_core::SinkRecord]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.as_deref().unwrap_or_default().to_vec()).unwrap())
        .filter(|v| !v.contains("probe"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conservation_identity_holds_after_dead_letters_drops_and_a_crash() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["{kafka}"]
[offsets]
store = "memory"
[progress]
interval_secs = 0
[rest]
listen = "127.0.0.1:0"
config_dir = "{dir}/rest.d"

[[connector]]
name = "strict"
type = "mqtt-source"
mqtt_url = "{mqtt}"
client_id = "metrics-strict"
topics = ["m/+"]
kafka_topic = "in.{{1}}"
inflight = 500
value_converter = "json"
errors = {{ tolerance = "all", dead_letter_topic = "in.dlq" }}

[[connector.transforms]]
type = "filter"
predicate = {{ type = "topic_name_matches", pattern = "in\\.drop" }}

[[connector]]
name = "lenient"
type = "mqtt-source"
mqtt_url = "{mqtt}"
client_id = "metrics-lenient"
topics = ["l/+"]
kafka_topic = "lenient"
value_converter = "json"
errors = {{ tolerance = "all" }}
"#,
            kafka = tansu.bootstrap(),
            mqtt = mqtt.url(),
            dir = dir.path().display(),
        ),
    );
    let log = dir.path().join("connect.log");
    let mut first = Runner::start(&config, &log, &[]);
    let addr = rest_addr(&first).await;
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    connector_testkit::wait_source_subscribed(
        &publisher,
        "m/good",
        br#"{"probe":1}"#,
        &client,
        "in.good",
    )
    .await
    .unwrap();
    connector_testkit::wait_source_subscribed(
        &publisher,
        "l/x",
        br#"{"probe":2}"#,
        &client,
        "lenient",
    )
    .await
    .unwrap();

    // Phases 0 and 1 published while it runs; SIGKILL once part of them is in Kafka (the rest
    // is queued in the broker's session meanwhile, or was received and not acknowledged).
    let publisher = std::sync::Arc::new(publisher);
    let publishing = {
        let publisher = std::sync::Arc::clone(&publisher);
        tokio::spawn(async move {
            publish_phase(&publisher, 0).await;
            publish_phase(&publisher, 1).await;
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The probe is 1: kill once the stream has started.
    while scrape(&addr).sum("source_record_poll_total", &[("connector", "strict")]) < 50.0 {
        assert!(Instant::now() < deadline, "the stream never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill();
    publishing.await.unwrap();

    let second_log = dir.path().join("connect-2.log");
    let second = Runner::start(&config, &second_log, &[]);
    let addr = rest_addr(&second).await;
    publish_phase(&publisher, 2).await;

    // Every good value of the three phases in Kafka (duplicates allowed, none missing).
    let (mut good, mut lenient) = (BTreeSet::new(), BTreeSet::new());
    let (mut bad, mut dropped) = (BTreeSet::new(), BTreeSet::new());
    for phase in 0..3 {
        for i in 0..PER_PHASE {
            let (topic, payload) = message(phase, i);
            let v = String::from_utf8(payload).unwrap();
            match (topic.as_str(), v.starts_with("{bad") || v.starts_with("{lenient bad")) {
                ("m/good", false) => good.insert(v),
                ("m/good", true) => bad.insert(v),
                ("m/drop", _) => dropped.insert(v),
                (_, false) => lenient.insert(v),
                (_, true) => true,
            };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let in_good = values(&kafka::consume_all(&client, "in.good").await.unwrap());
        let in_dlq = values(&kafka::consume_all(&client, "in.dlq").await.unwrap());
        let in_lenient = values(&kafka::consume_all(&client, "lenient").await.unwrap());
        let missing = good.difference(&in_good).count()
            + bad.difference(&in_dlq).count()
            + lenient.difference(&in_lenient).count();
        if missing == 0 {
            assert!(in_good.is_subset(&good) && in_lenient.is_subset(&lenient), "nothing else");
            break;
        }
        assert!(Instant::now() < deadline, "{missing} values never reached Kafka");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        kafka::count(&client, "in.drop").await.unwrap(),
        0,
        "filtered records are not written"
    );

    // Quiescent: nothing in flight, and then the identity holds exactly, per connector.
    let s = scrape_until(&addr, 20, "quiescence", |s| {
        ["strict", "lenient"].iter().all(|c| {
            let t = terms(s, c);
            t[5] == 0.0
                && holds(&t)
                && s.sum("records_committed_total", &[("connector", c)]) == t[0]
        })
    })
    .await;
    let strict = terms(&s, "strict");
    let lenient_terms = terms(&s, "lenient");
    eprintln!("strict {strict:?}\nlenient {lenient_terms:?}");
    // Phase 2 alone is 4/5 of PER_PHASE for the strict connector: more means the second
    // process got messages the first had received and not acknowledged (redelivered).
    eprintln!(
        "redelivered or queued from before the crash: {}",
        strict[0] - (PER_PHASE * 4 / 5) as f64
    );
    assert!(
        strict[1] > 0.0 && strict[2] > 0.0 && strict[3] > 0.0,
        "written, DLQ'd and filtered records: {strict:?}"
    );
    assert_eq!(strict[4], 0.0, "the strict connector has a DLQ: it skips nothing");
    assert!(
        lenient_terms[1] > 0.0 && lenient_terms[4] > 0.0,
        "written and skipped: {lenient_terms:?}"
    );
    assert_eq!(lenient_terms[2], 0.0, "no DLQ for the lenient connector");
    assert_eq!(strict[6] + lenient_terms[6], 0.0, "a clean run abandons nothing");
    for c in ["strict", "lenient"] {
        assert_eq!(s.sum("connector_conservation_gap", &[("connector", c)]), 0.0);
    }
    // The second process saw at least phase 2 of each kind.
    assert!(strict[2] >= (PER_PHASE / 5) as f64, "{strict:?}");
    assert!(
        s.sum("deadletterqueue_produce_requests_total", &[("connector", "strict")]) == strict[2]
    );
    assert!(
        s.has("source_record_latency_seconds_bucket", &[("connector", "strict"), ("le", "+Inf")])
    );
    assert_eq!(
        s.sum("source_record_latency_seconds_count", &[("connector", "strict")]),
        s.sum("source_record_write_total", &[("connector", "strict")]),
        "one latency observation per record Kafka acknowledged"
    );
    assert_eq!(s.sum("source_window_capacity_records", &[("connector", "strict")]), 500.0);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_fails_mid_window_leaves_abandoned_records_and_the_identity_holds() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["{kafka}"]
[offsets]
store = "memory"
[progress]
interval_secs = 0
[rest]
listen = "127.0.0.1:0"
config_dir = "{dir}/rest.d"

[[connector]]
name = "fragile"
type = "mqtt-source"
mqtt_url = "{mqtt}"
client_id = "metrics-fragile"
topics = ["f/+"]
kafka_topic = "fragile"
value_converter = "json"
"#,
            kafka = tansu.bootstrap(),
            mqtt = mqtt.url(),
            dir = dir.path().display(),
        ),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let addr = rest_addr(&runner).await;
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    connector_testkit::wait_source_subscribed(
        &publisher,
        "f/x",
        br#"{"probe":1}"#,
        &client,
        "fragile",
    )
    .await
    .unwrap();
    // tolerance = "none": the bad record fails the task (FAILED under [rest], the process and
    // its counters stay); it and the rest of its poll are abandoned (not acknowledged).
    for i in 0..400 {
        let payload =
            if i == 200 { b"{bad".to_vec() } else { format!(r#"{{"i":{i}}}"#).into_bytes() };
        publisher.publish("f/x", QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    let c = ("connector", "fragile");
    let s = scrape_until(&addr, 20, "the task failed", |s| {
        s.sum("connector_records_abandoned_total", &[c]) > 0.0
            && s.sum("connector_records_in_flight", &[c]) == 0.0
    })
    .await;
    let t = terms(&s, "fragile");
    eprintln!("fragile {t:?}");
    assert!(
        holds(&t),
        "received = written + dead_lettered + dropped + in_flight + abandoned: {t:?}"
    );
    assert_eq!(s.sum("connector_conservation_gap", &[c]), 0.0);
    assert!(
        t[6] >= 1.0 && t[1] >= 200.0,
        "the 200 before the bad one (and the probe) written: {t:?}"
    );
    // Nothing after the failed record reached Kafka: what is there is exactly what was written.
    let in_kafka = kafka::count(&client, "fragile").await.unwrap() as f64;
    assert_eq!(in_kafka, t[1], "Kafka holds exactly the written records");
    assert_eq!(s.sum("record_errors_total", &[c]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_shows_its_lag_per_partition_then_catches_up() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("cmds", 2, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["{kafka}"]
[offsets]
store = "file"
path = "{dir}/offsets.json"
[progress]
interval_secs = 0
[rest]
listen = "127.0.0.1:0"
config_dir = "{dir}/rest.d"

[[connector]]
name = "to-file"
type = "file-sink"
topics = ["cmds"]
path = "{out}"
runtime = {{ commit_interval_ms = 12000 }}
"#,
            kafka = tansu.bootstrap(),
            dir = dir.path().display(),
            out = out.display(),
        ),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let addr = rest_addr(&runner).await;
    let c = ("connector", "to-file");
    let p = |n: &'static str| [c, ("topic", "cmds"), ("partition", n)];
    scrape_until(&addr, 20, "both partitions open", |s| {
        s.has("sink_partition_lag_records", &p("0")) && s.has("sink_partition_lag_records", &p("1"))
    })
    .await;
    // Paused: the fetchers still learn the high watermarks, nothing is taken: lag = what was written.
    put(&addr, "/connectors/to-file/pause");
    let records: Vec<ProducerRecord> = (0..500)
        .map(|i| ProducerRecord {
            partition: Some(if i < 300 { 0 } else { 1 }),
            ..ProducerRecord::new("cmds", format!("c{i}"))
        })
        .collect();
    kafka::produce(&client, records).await.unwrap();
    let s = scrape_until(&addr, 20, "high watermarks seen", |s| {
        s.sum("sink_partition_high_watermark", &p("0")) == 300.0
            && s.sum("sink_partition_high_watermark", &p("1")) == 200.0
    })
    .await;
    assert_eq!(s.sum("sink_record_read_total", &[c]), 0.0, "paused: nothing taken");
    assert_eq!(s.sum("sink_partition_lag_records", &p("0")), 300.0);
    assert_eq!(s.sum("sink_partition_lag_records", &p("1")), 200.0);
    // Resumed: everything read and put, not committed before the first commit (12 s after the
    // start): the time lag shows how old the oldest uncommitted record is.
    put(&addr, "/connectors/to-file/resume");
    let s =
        scrape_until(&addr, 10, "all 500 read", |s| s.sum("sink_record_read_total", &[c]) == 500.0)
            .await;
    assert_eq!(
        s.sum("offset_commit_completion_total", &[c]),
        0.0,
        "read well before the first commit"
    );
    assert_eq!(s.sum("sink_partition_lag_records", &[c]), 500.0);
    assert!(s.sum("sink_partition_lag_seconds", &p("0")) > 0.0, "{:#?}", s.0);
    assert!(s.sum("sink_partition_lag_seconds", &p("1")) > 0.0, "{:#?}", s.0);
    // Then the commit: caught up in records and in time.
    let s = scrape_until(&addr, 20, "caught up", |s| {
        s.sum("sink_partition_lag_records", &[c]) == 0.0
            && s.sum("sink_partition_committed_offset", &p("0")) == 300.0
            && s.sum("sink_partition_committed_offset", &p("1")) == 200.0
    })
    .await;
    assert_eq!(s.sum("sink_partition_lag_seconds", &[c]), 0.0);
    assert!(s.sum("offset_commit_completion_total", &[c]) >= 1.0);
    let t = terms(&s, "to-file");
    assert!(holds(&t) && t[1] == 500.0, "{t:?}");
    assert_eq!(s.sum("sink_record_send_total", &[c]), 500.0);
}
