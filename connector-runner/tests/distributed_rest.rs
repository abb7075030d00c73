//! The REST API in distributed mode, through two `connect run` workers of one group on real
//! Tansu and Mosquitto, driven with curl: a connector POSTed on worker A runs and worker B's
//! status shows it with the worker ids that run its tasks; its config PUT on B restarts the
//! tasks with the new config while an MQTT stream flows, losing nothing (distinct values counted
//! in Kafka); DELETE on A removes it on both, and it stays deleted after both workers restart.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_testkit::{
    init_tracing, wait_source_subscribed, Mosquitto, MosquittoOptions, MqttPublisher, Tansu,
};
use serde_json::{json, Value};

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use cluster::{distinct_and_repeats, publish_telemetry, telemetry_seen, Worker};
use support::write;

const SESSION_MS: u64 = 5_000;
const HEARTBEAT_MS: u64 = 1_000;
const REBALANCE_MS: u64 = 10_000;
const WINDOW: usize = 100;
const TASKS: usize = 2;
/// Messages of the stream during which the config changes (the issue's 20,000), and their rate.
const STREAM: usize = 20_000;
const RATE: usize = 4_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One worker's config: the group, its own REST listener, no connectors.
fn config(tansu: &Tansu, port: u16) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
store = "kafka"

[cluster]
group_id = "rest-group"
session_timeout_ms = {SESSION_MS}
heartbeat_interval_ms = {HEARTBEAT_MS}
rebalance_timeout_ms = {REBALANCE_MS}

[progress]
interval_secs = 0

[rest]
listen = "127.0.0.1:{port}"
"#,
        tansu.bootstrap()
    )
}

/// `curl -X METHOD url [-d body]`: (status, JSON body or Null).
fn http(method: &str, port: u16, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "30", "-o", "-", "-w", "\n%{http_code}", "-X", method, &url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn source(mqtt: &Mosquitto, inflight: usize) -> Value {
    json!({
        "type": "mqtt-source",
        "mqtt_url": mqtt.url(),
        "client_id": "telemetry",
        "topics": ["plant/+/temp"],
        "qos": 1,
        "kafka_topic": "plant",
        "tasks": TASKS,
        "inflight": inflight,
    })
}

/// The status body's (state, worker_id) of every task.
fn task_states(status: &Value) -> Vec<(String, String)> {
    status["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t["state"].as_str().unwrap_or("").to_owned(),
                        t["worker_id"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The fingerprint of the last "connector started here" line of `connector` in a JSON log.
fn started_with(log: &str, connector: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"] == "connector started here"
                && v["fields"]["connector"] == connector
        })
        .find_map(|v| v["fields"]["fingerprint"].as_str().map(str::to_owned))
}

fn start(dir: &Path, tansu: &Tansu, port: u16, id: &str) -> Worker {
    let path = write(dir, &format!("{id}.toml"), &config(tansu, port));
    Worker::start(&path, dir, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_posted_on_one_worker_runs_its_config_put_on_another_loses_nothing_and_a_delete_sticks(
) {
    init_tracing();
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        max_inflight_messages: WINDOW as u32,
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("plant", TASKS as i32, 1).await.unwrap();
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("DIST_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("config and worker logs in {}", dir.path().display());
    }
    let (pa, pb) = (free_port(), free_port());
    let started = Instant::now();
    let mut a = start(dir.path(), &tansu, pa, "a");
    let mut b = start(dir.path(), &tansu, pb, "b");
    for port in [pa, pb] {
        wait_for("the REST API", Duration::from_secs(30), || {
            http("GET", port, "/connectors", None).0 == 200
        })
        .await;
    }

    // POST on A: it runs, and B's status shows where.
    let (code, body) = http(
        "POST",
        pa,
        "/connectors",
        Some(&json!({"name": "telemetry", "config": source(&mqtt, WINDOW)})),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["name"], "telemetry", "{body}");
    let workers: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
    let mut status = Value::Null;
    wait_for("both tasks RUNNING in B's status", Duration::from_secs(40), || {
        status = http("GET", pb, "/connectors/telemetry/status", None).1;
        let ts = task_states(&status);
        ts.len() == TASKS && ts.iter().all(|(s, w)| s == "RUNNING" && workers.contains(w))
    })
    .await;
    let running_at = started.elapsed();
    for port in [pa, pb] {
        let mut health = Value::Null;
        wait_for("healthy", Duration::from_secs(20), || {
            let (code, body) = http("GET", port, "/health", None);
            health = body;
            code == 200
        })
        .await;
        assert_eq!(health["status"], "healthy", "{health}");
    }
    println!("B's status {:.1} s after start: {status}", running_at.as_secs_f64());
    assert_eq!(status["type"], "source", "{status}");
    assert_eq!(http("GET", pa, "/connectors", None).1, json!(["telemetry"]));
    assert_eq!(http("GET", pb, "/connectors", None).1, json!(["telemetry"]));

    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "rest-publisher").await.unwrap());
    wait_source_subscribed(&publisher, "plant/probe/temp", b"probe", &client, "plant")
        .await
        .unwrap();

    // PUT on B while the stream flows: Updated, the tasks restart with the new config.
    let (la, lb) = (a.log_len(), b.log_len());
    let stream = publish_telemetry(Arc::clone(&publisher), 0..STREAM, RATE);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // The fingerprint the connector runs with before the PUT (read before it: the PUT's answer
    // can come after a worker already restarted the connector with the new one).
    let before = started_with(&a.log(), "telemetry");
    let changed = Instant::now();
    let (code, body) =
        http("PUT", pb, "/connectors/telemetry/config", Some(&source(&mqtt, WINDOW / 2)));
    assert_eq!(code, 200, "{body}");
    // Both workers started the connector again with one new fingerprint (the new config), and
    // both tasks started again after the PUT.
    let last = std::sync::Mutex::new(String::new());
    let waited = tokio::time::timeout(Duration::from_secs(40), wait_for("the tasks restarted with the new config", Duration::from_secs(45), || {
        let cfg = http("GET", pa, "/connectors/telemetry/config", None).1;
        let (fa, fb) = (
            started_with(a.log().get(la..).unwrap_or(""), "telemetry"),
            started_with(b.log().get(lb..).unwrap_or(""), "telemetry"),
        );
        let new_config = fa.is_some() && fa == fb && fa != before;
        let mut tasks = a.started_since(la);
        tasks.extend(b.started_since(lb));
        let ts = task_states(&http("GET", pa, "/connectors/telemetry/status", None).1);
        *last.lock().unwrap() = format!(
            "inflight {} (want {}), fingerprints a {fa:?} b {fb:?} before {before:?}, tasks started {tasks:?}, states {ts:?}",
            cfg["inflight"],
            WINDOW / 2
        );
        cfg["inflight"] == WINDOW / 2
            && new_config
            && tasks.len() == TASKS
            && ts.len() == TASKS
            && ts.iter().all(|(s, _)| s == "RUNNING")
    }))
    .await;
    assert!(
        waited.is_ok(),
        "the tasks did not restart with the new config within 40 s: {}",
        last.lock().unwrap()
    );
    let restart_took = changed.elapsed();
    stream.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = telemetry_seen(&client, "plant").await;
        if seen.len() >= STREAM || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (distinct, repeats) = distinct_and_repeats(&seen);
    println!(
        "config PUT: tasks restarted on both workers within {:.1} s; {distinct} of {STREAM} distinct in Kafka, {repeats} repeats",
        restart_took.as_secs_f64()
    );
    assert_eq!(distinct, STREAM, "lost {} messages", STREAM - distinct);
    assert!(repeats <= TASKS * WINDOW, "{repeats} repeats, above the tasks' windows");

    // STOPPED through A: B shows it, its tasks drain on both workers, its offsets answer;
    // resumed through B, both tasks start again.
    let stopped_since = |w: &Worker, from: usize| {
        w.log().get(from..).unwrap_or("").contains("connector stopped here")
    };
    let (la, lb) = (a.log_len(), b.log_len());
    let (code, body) = http("PUT", pa, "/connectors/telemetry/stop", None);
    assert_eq!(code, 202, "{body}");
    // A's view has its write at once; B's within its follower's poll.
    let st = http("GET", pa, "/connectors/telemetry/status", None).1;
    assert_eq!(st["connector"]["state"], "STOPPED", "{st}");
    assert!(task_states(&st).is_empty(), "{st}");
    wait_for("STOPPED in B's status", Duration::from_secs(5), || {
        let st = http("GET", pb, "/connectors/telemetry/status", None).1;
        st["connector"]["state"] == "STOPPED" && task_states(&st).is_empty()
    })
    .await;
    wait_for("the tasks drained on both", Duration::from_secs(30), || {
        stopped_since(&a, la) && stopped_since(&b, lb)
    })
    .await;
    let (code, body) = http("GET", pb, "/connectors/telemetry/offsets", None);
    assert_eq!(code, 200, "{body}");
    assert!(body["offsets"].is_array(), "{body}");
    let (la, lb) = (a.log_len(), b.log_len());
    let (code, body) = http("PUT", pb, "/connectors/telemetry/resume", None);
    assert_eq!(code, 202, "{body}");
    wait_for("both tasks started again after resume", Duration::from_secs(40), || {
        let mut started = a.started_since(la);
        started.extend(b.started_since(lb));
        started.len() == TASKS
    })
    .await;

    // A config PUT through B and at once a pause through A: A's write keeps B's config (a write
    // reads the config topic to its end first; it used to copy the config from A's view).
    let (code, body) =
        http("PUT", pb, "/connectors/telemetry/config", Some(&source(&mqtt, WINDOW / 4)));
    assert_eq!(code, 200, "{body}");
    let (code, body) = http("PUT", pa, "/connectors/telemetry/pause", None);
    assert_eq!(code, 202, "{body}");
    for port in [pa, pb] {
        wait_for("B's config and A's pause on both", Duration::from_secs(10), || {
            let cfg = http("GET", port, "/connectors/telemetry/config", None).1;
            let st = http("GET", port, "/connectors/telemetry/status", None).1;
            cfg["inflight"] == WINDOW / 4 && st["connector"]["state"] == "PAUSED"
        })
        .await;
    }
    let (code, body) = http("PUT", pb, "/connectors/telemetry/resume", None);
    assert_eq!(code, 202, "{body}");

    // DELETE on A: gone on both, and after both restart.
    let (la, lb) = (a.log_len(), b.log_len());
    let (code, body) = http("DELETE", pa, "/connectors/telemetry", None);
    assert_eq!(code, 204, "{body}");
    wait_for("gone on B", Duration::from_secs(10), || {
        http("GET", pb, "/connectors/telemetry", None).0 == 404
    })
    .await;
    wait_for("its tasks stopped on both", Duration::from_secs(30), || {
        stopped_since(&a, la) && stopped_since(&b, lb)
    })
    .await;
    assert_eq!(a.runner.terminate(), Some(0), "{}", cluster::tail(&a.log(), 20));
    assert_eq!(b.runner.terminate(), Some(0), "{}", cluster::tail(&b.log(), 20));
    let a2 = start(dir.path(), &tansu, pa, "a");
    let b2 = start(dir.path(), &tansu, pb, "b");
    for port in [pa, pb] {
        wait_for("the REST API again", Duration::from_secs(30), || {
            http("GET", port, "/connectors", None).0 == 200
        })
        .await;
        assert_eq!(http("GET", port, "/connectors", None).1, json!([]), "deleted for good");
        assert_eq!(http("GET", port, "/connectors/telemetry", None).0, 404);
    }
    drop((a2, b2));
    println!("whole test {:.1} s", started.elapsed().as_secs_f64());
}

/// scripts/rest-check.py (an independent Python client: requests + jsonschema) walks every
/// endpoint, happy and unhappy, against a worker of a group (with a token), validating every
/// answer against docs/openapi.json: the distributed control answers as the standalone one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_independent_rest_check_passes_against_a_worker_of_a_group() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!("{}token = \"${{CONNECT_TOKEN}}\"\n", config(&tansu, port));
    let path = write(dir.path(), "connect.toml", &text);
    let runner = support::Runner::start_with_env(
        &path,
        &dir.path().join("connect.log"),
        &[("CONNECT_TOKEN", "check-token")],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rest-check.py");
    let sink = dir.path().join("sink.txt");
    let args = [
        script.to_owned(),
        "--url".into(),
        format!("http://127.0.0.1:{port}"),
        "--token".into(),
        "check-token".into(),
        "--topic".into(),
        "rest-check".into(),
        "--sink-path".into(),
        sink.display().to_string(),
    ];
    let started = Instant::now();
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output().unwrap())
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\nrest-check took {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "rest-check failed:\n{stdout}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster::tail(&runner.log(), 40)
    );
}

/// KIP-875 for a sink of a group: its offsets are its consumer group's (`connect-<name>`); once
/// STOPPED, PATCH commits them as a non-member and DELETE resets them to the earliest record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sinks_offsets_are_its_consumer_groups_and_can_be_altered_and_reset() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("beats", 1, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut w = start(dir.path(), &tansu, port, "w");
    wait_for("the REST API", Duration::from_secs(30), || {
        http("GET", port, "/connectors", None).0 == 200
    })
    .await;
    let source = json!({"name": "beat", "config": {"type": "heartbeat", "device": "d", "topic": "beats", "interval_ms": 50}});
    assert_eq!(http("POST", port, "/connectors", Some(&source)).0, 201);
    let sink_path = dir.path().join("sink.txt");
    let sink = json!({"name": "files", "config": {"type": "file-sink", "topics": ["beats"], "path": sink_path.display().to_string()}});
    assert_eq!(http("POST", port, "/connectors", Some(&sink)).0, 201);
    let committed = |body: &Value| -> Option<i64> {
        let e = body["offsets"].as_array()?.first()?.clone();
        assert_eq!(e["partition"], json!({"kafka_topic": "beats", "kafka_partition": 0}), "{body}");
        e["offset"]["kafka_offset"].as_i64()
    };
    wait_for("the sink committed past 5", Duration::from_secs(40), || {
        committed(&http("GET", port, "/connectors/files/offsets", None).1).is_some_and(|o| o > 5)
    })
    .await;
    let patch = json!({"offsets": [{"partition": {"kafka_topic": "beats", "kafka_partition": 0}, "offset": {"kafka_offset": 3}}]});
    // KIP-875: 400 when not STOPPED.
    let (code, body) = http("PATCH", port, "/connectors/files/offsets", Some(&patch));
    assert_eq!(code, 400, "not STOPPED: {body}");
    assert_eq!(http("DELETE", port, "/connectors/files/offsets", None).0, 400, "not STOPPED");
    // PATCH at once after the STOP: answered once the task really stopped (the group rebalanced
    // without it and its consumer group is empty; 409 "stopping, retry" after 20 s), so the
    // draining task's final commit cannot overwrite it (it used to, accepted at once).
    let log_from = w.log_len();
    assert_eq!(http("PUT", port, "/connectors/files/stop", None).0, 202);
    let asked = Instant::now();
    let (code, body) = http("PATCH", port, "/connectors/files/offsets", Some(&patch));
    let answered = asked.elapsed();
    assert_eq!(code, 200, "{body}");
    assert!(
        w.log().get(log_from..).unwrap_or("").contains("connector stopped here"),
        "accepted before the sink's task drained"
    );
    println!("PATCH right after STOP answered 200 after {:.1} s", answered.as_secs_f64());
    let still = Instant::now();
    while still.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            committed(&http("GET", port, "/connectors/files/offsets", None).1),
            Some(3),
            "the PATCHed offset was overwritten"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Resumed, the sink reads again from the PATCHed offset: the record at offset 3 reaches the
    // file a second time, the one at 2 does not.
    let lines = |v: &str| {
        std::fs::read_to_string(&sink_path).unwrap_or_default().lines().filter(|l| *l == v).count()
    };
    assert_eq!(lines(r#"{"seq":3}"#), 1, "each record once before the resume");
    assert_eq!(http("PUT", port, "/connectors/files/resume", None).0, 202);
    wait_for("the sink re-read from offset 3", Duration::from_secs(30), || {
        lines(r#"{"seq":3}"#) == 2
    })
    .await;
    assert_eq!(lines(r#"{"seq":2}"#), 1, "offset 2 is below the PATCHed offset");
    assert_eq!(http("PUT", port, "/connectors/files/stop", None).0, 202);
    let (code, body) = http("DELETE", port, "/connectors/files/offsets", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(committed(&http("GET", port, "/connectors/files/offsets", None).1), Some(0));
    assert_eq!(w.runner.terminate(), Some(0), "{}", cluster::tail(&w.log(), 20));
}

/// A connector created through the API that cannot start here (a sink of a topic that does not
/// exist, with `auto_create_topics = false`) does not stop the worker: neither at the generation
/// that deals it nor when the worker starts again with it in the config topic (it used to exit
/// then, and so would every worker of the group that restarted). The other connectors run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_cannot_start_does_not_stop_a_restarting_worker() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("beats", 1, 1).await.unwrap();
    client
        .create_topic_with_configs("connect-offsets", 1, 1, &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config(&tansu, port).replace("[kafka]\n", "[kafka]\nauto_create_topics = false\n");
    let path = write(dir.path(), "w.toml", &text);
    let cannot = "connector could not be started here";
    let mut w = Worker::start(&path, dir.path(), "w");
    wait_for("the REST API", Duration::from_secs(30), || {
        http("GET", port, "/connectors", None).0 == 200
    })
    .await;
    let beat = json!({"name": "beat", "config": {"type": "heartbeat", "device": "d", "topic": "beats", "interval_ms": 50}});
    assert_eq!(http("POST", port, "/connectors", Some(&beat)).0, 201);
    let sink_path = dir.path().join("sink.txt");
    let bad = json!({"name": "stuck", "config": {"type": "file-sink", "topics": ["missing"], "path": sink_path.display().to_string()}});
    assert_eq!(http("POST", port, "/connectors", Some(&bad)).0, 201);
    wait_for("the sink refused here", Duration::from_secs(30), || w.log().contains(cannot)).await;
    assert_eq!(w.exited(), None, "{}", cluster::tail(&w.log(), 20));
    assert_eq!(w.runner.terminate(), Some(0), "{}", cluster::tail(&w.log(), 20));

    // Started again with both in the config topic: it runs the heartbeat and answers.
    let mut w2 = Worker::start(&path, dir.path(), "w2");
    let mut status = Value::Null;
    wait_for("the heartbeat RUNNING after the restart", Duration::from_secs(40), || {
        assert_eq!(w2.exited(), None, "the worker exited: {}", cluster::tail(&w2.log(), 20));
        status = http("GET", port, "/connectors/beat/status", None).1;
        let ts = task_states(&status);
        !ts.is_empty() && ts.iter().all(|(s, _)| s == "RUNNING")
    })
    .await;
    wait_for("the sink refused again", Duration::from_secs(30), || w2.log().contains(cannot)).await;
    // Its task is shown FAILED on the worker that could not start it, not RUNNING there.
    let mut stuck = Value::Null;
    wait_for("the sink's task FAILED", Duration::from_secs(10), || {
        stuck = http("GET", port, "/connectors/stuck/status", None).1;
        task_states(&stuck) == [("FAILED".to_owned(), "w2".to_owned())]
    })
    .await;
    assert!(
        stuck["tasks"][0]["trace"].as_str().unwrap_or("").contains("could not be started"),
        "{stuck}"
    );
    assert_eq!(http("GET", port, "/connectors", None).1, json!(["beat", "stuck"]));
    assert_eq!(w2.exited(), None, "{}", cluster::tail(&w2.log(), 20));
    let log = w2.log();
    let refused = log.lines().find(|l| l.contains(cannot)).unwrap_or_default();
    println!("after the restart: {status}\n{stuck}\n{refused}");
    assert_eq!(w2.runner.terminate(), Some(0), "{}", cluster::tail(&w2.log(), 20));
}
