//! The REST API as an operator drives it: real `connect run` processes on Mosquitto and Tansu,
//! every request made by curl (an independent HTTP client). Create, list, change, pause and
//! delete connectors, kept across a restart; Kafka Connect's error shapes; bearer token and TLS;
//! pause stopping delivery and resume losing nothing; a config change while 20,000 MQTT
//! messages stream losing nothing and repeating nothing.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_testkit::{init_tracing, kafka, Mosquitto, MqttPublisher, Tansu, TestPki};
use rumqttc::QoS;
use serde_json::{json, Value};

mod support;

use support::{write, Runner};

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// Kafka Connect's error shape, with this status.
    fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["error_code"], json!(status), "{body}");
        body["message"].as_str().unwrap().to_owned()
    }
}

/// The API of one `connect` process, reached with curl.
#[derive(Debug, Clone)]
struct Api {
    base: String,
    token: Option<String>,
    ca: Option<PathBuf>,
}

impl Api {
    fn new(port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), token: None, ca: None }
    }

    /// `curl -i -X METHOD` (blocking); `None` when no HTTP answer came at all.
    fn try_call(&self, method: &str, path: &str, body: Option<&str>) -> Option<Reply> {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-i", "--max-time", "30", "-X", method]);
        if let Some(t) = &self.token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        if body.is_some() {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", "@-"]);
        }
        cmd.arg(format!("{}{path}", self.base));
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            if let Some(b) = body {
                stdin.write_all(b.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = headers.split_whitespace().nth(1)?.parse().ok()?;
        Some(Reply { status, headers: headers.to_owned(), body: body.to_owned() })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let (api, method, path) = (self.clone(), method.to_owned(), path.to_owned());
        let body = body.map(|b| b.to_string());
        tokio::task::spawn_blocking(move || {
            api.try_call(&method, &path, body.as_deref())
                .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}"))
        })
        .await
        .unwrap()
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    /// Waits until the API answers (`GET /` 200), or panics with the process's log.
    async fn wait_up(&self, runner: &Runner) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let api = self.clone();
            let up = tokio::task::spawn_blocking(move || api.try_call("GET", "/", None))
                .await
                .unwrap()
                .is_some_and(|r| r.status == 200);
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "the API never answered; log:\n{}", runner.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until connector `c`'s connector state and every task's state is `state`.
    async fn wait_state(&self, c: &str, state: &str, runner: &Runner) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(&format!("/connectors/{c}/status")).await;
            if r.status == 200 {
                let s = r.json();
                let tasks = s["tasks"].as_array().unwrap();
                if s["connector"]["state"] == state
                    && (state == "STOPPED" || !tasks.is_empty())
                    && tasks.iter().all(|t| t["state"] == state)
                {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "{c} never {state}: {r:?}; log:\n{}", runner.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn rest_table(port: u16, dir: &Path) -> String {
    format!(
        "[rest]\nlisten = \"127.0.0.1:{port}\"\nconfig_dir = \"{}\"\n",
        dir.join("rest.d").display()
    )
}

fn heartbeat(topic: &str, device: &str) -> Value {
    json!({"type": "heartbeat", "topic": topic, "device": device, "interval_ms": 100})
}

async fn distinct_values(client: &KafkaClient, topic: &str) -> (usize, BTreeSet<Vec<u8>>) {
    let records = kafka::consume_all(client, topic).await.unwrap();
    let n = records.len();
    (n, records.into_iter().filter_map(|r| r.value.map(|v| v.to_vec())).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_made_through_the_api_are_kept_across_a_restart_and_errors_are_kafka_connects() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
path = "{}"

{}
[[connector]]
name = "from-file"
type = "heartbeat"
topic = "beats"
device = "file"
"#,
            tansu.bootstrap(),
            dir.path().join("offsets.json").display(),
            rest_table(port, dir.path())
        ),
    );
    let log = dir.path().join("connect.log");
    let mut runner = Runner::start(&config, &log, &[]);
    let api = Api::new(port);
    api.wait_up(&runner).await;
    assert!(runner.log().contains("REST API listening"), "{}", runner.log());

    let root = api.get("/").await.json();
    assert!(root["version"].is_string() && root.get("kafka_cluster_id").is_some(), "{root}");
    // The cluster id comes from the health probe's Metadata answer (within a probe period).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let root = api.get("/").await.json();
        if root["kafka_cluster_id"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "no kafka_cluster_id: {root}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(api.get("/connectors").await.json(), json!(["from-file"]));

    // POST creates (201, the info body); a second POST of the name is a conflict.
    let created = api
        .call(
            "POST",
            "/connectors",
            Some(json!({"name": "api", "config": heartbeat("beats", "a")})),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let info = created.json();
    assert_eq!(info["name"], "api");
    assert_eq!(info["type"], "source");
    assert_eq!(info["config"]["device"], "a");
    assert_eq!(info["tasks"], json!([{"connector": "api", "task": 0}]));
    let again = api
        .call(
            "POST",
            "/connectors",
            Some(json!({"name": "api", "config": heartbeat("beats", "a")})),
        )
        .await;
    again.assert_error(409);
    api.wait_state("api", "RUNNING", &runner).await;
    let listed = api.get("/connectors?expand=status&expand=info").await.json();
    assert_eq!(listed["api"]["status"]["connector"]["state"], "RUNNING", "{listed}");
    assert_eq!(listed["from-file"]["info"]["config"]["device"], "file", "{listed}");
    let tasks = api.get("/connectors/api/tasks").await.json();
    assert_eq!(tasks[0]["id"], json!({"connector": "api", "task": 0}), "{tasks}");
    assert_eq!(tasks[0]["config"]["task.id"], 0, "{tasks}");
    let task = api.get("/connectors/api/tasks/0/status").await.json();
    assert_eq!(task["state"], "RUNNING", "{task}");

    // Unhappy paths, each in Kafka Connect's error shape.
    let invalid = api
        .call(
            "PUT",
            "/connectors/api/config",
            Some(json!({"type": "heartbeat", "topic": "bad topic!", "device": "a", "intervl": 5})),
        )
        .await
        .assert_error(400);
    assert!(invalid.contains("intervl: unknown key"), "{invalid}");
    assert!(invalid.contains("topic: "), "{invalid}");
    let transform = api
        .call(
            "PUT",
            "/connectors/api/config",
            Some(json!({"type": "heartbeat", "topic": "beats", "device": "a",
                        "transforms": [{"type": "no_such_transform"}]})),
        )
        .await
        .assert_error(400);
    assert!(transform.contains("transforms[0]"), "{transform}");
    let bad = api.call_raw("PUT", "/connectors/api/config", "{not json").await;
    assert!(bad.assert_error(400).contains("not valid JSON"));
    api.get("/connectors/nope").await.assert_error(404);
    api.get("/connectors/nope/status").await.assert_error(404);
    api.get("/connectors/api/tasks/7/status").await.assert_error(404);
    api.get("/no/such/path").await.assert_error(404);
    api.call("DELETE", "/connector-plugins", None).await.assert_error(405);
    // KIP-875: offsets change only while STOPPED, else 400 (409 is for a rebalance).
    let refused = api
        .call("PATCH", "/connectors/api/offsets", Some(json!({"offsets": []})))
        .await
        .assert_error(400);
    assert!(refused.starts_with("Connectors must be in the STOPPED state"), "{refused}");
    api.call("DELETE", "/connectors/api/offsets", None).await.assert_error(400);
    let validated = api
        .call(
            "PUT",
            "/connector-plugins/mqtt-source/config/validate",
            Some(json!({"mqtt_url": "mqtt://plc", "topics": ["a/#"], "kafka_topic": "a",
                        "qos": 3, "bogus": 1})),
        )
        .await
        .json();
    assert!(validated["error_count"].as_u64().unwrap() >= 2, "{validated}");
    let names: Vec<&str> = validated["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"qos") && names.contains(&"bogus"), "{validated}");
    api.call("PUT", "/connector-plugins/nope/config/validate", Some(json!({})))
        .await
        .assert_error(404);

    // A config change (200 updated), a pause, a delete of the file's connector: all kept.
    let updated = api.call("PUT", "/connectors/api/config", Some(heartbeat("beats-2", "a"))).await;
    assert_eq!(updated.status, 200, "{updated:?}");
    assert_eq!(api.call("PUT", "/connectors/api/pause", None).await.status, 202);
    api.wait_state("api", "PAUSED", &runner).await;
    assert_eq!(api.call("DELETE", "/connectors/from-file", None).await.status, 204);
    api.call("DELETE", "/connectors/from-file", None).await.assert_error(404);
    assert_eq!(api.get("/connectors").await.json(), json!(["api"]));
    assert_eq!(runner.terminate(), Some(0), "log:\n{}", runner.log());

    let runner = Runner::start(&config, &log, &[]);
    api.wait_up(&runner).await;
    assert_eq!(api.get("/connectors").await.json(), json!(["api"]), "log:\n{}", runner.log());
    let config = api.get("/connectors/api/config").await.json();
    assert_eq!(config["topic"], "beats-2", "{config}");
    api.wait_state("api", "PAUSED", &runner).await;
    let health = api.get("/health").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "healthy");
}

impl Api {
    /// Waits until task 0 of connector `c` is `state`; returns the connector's status.
    async fn wait_task_state(&self, c: &str, state: &str, runner: &Runner) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(&format!("/connectors/{c}/status")).await;
            if r.status == 200 && r.json()["tasks"][0]["state"] == state {
                return r.json();
            }
            assert!(
                Instant::now() < deadline,
                "{c}'s task never {state}: {r:?}; log:\n{}",
                runner.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A request whose body is sent as is (not JSON).
    async fn call_raw(&self, method: &str, path: &str, body: &str) -> Reply {
        let (api, method, path, body) =
            (self.clone(), method.to_owned(), path.to_owned(), body.to_owned());
        tokio::task::spawn_blocking(move || api.try_call(&method, &path, Some(&body)).unwrap())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_the_api_over_tls_and_never_reaches_the_log() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let pki = TestPki::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let secret = "t0ken-that-must-not-leak";
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
store = "memory"

[rest]
listen = "127.0.0.1:{port}"
token = "${{CONNECT_TOKEN}}"
tls = {{ cert_file = "{}", key_file = "{}" }}
config_dir = "{}"
"#,
            tansu.bootstrap(),
            pki.server_cert_file().display(),
            pki.server_key_file().display(),
            dir.path().join("rest.d").display()
        ),
    );
    let runner = Runner::start_with_env(
        &config,
        &dir.path().join("connect.log"),
        &[("CONNECT_TOKEN", secret), ("RUST_LOG", "debug")],
    );
    let tls =
        Api { base: format!("https://localhost:{port}"), token: None, ca: Some(pki.ca_file()) };
    // /health needs no token (probes), and answers over TLS once Kafka answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let api = tls.clone();
        let r = tokio::task::spawn_blocking(move || api.try_call("GET", "/health", None))
            .await
            .unwrap();
        if r.as_ref().is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no healthy answer: {r:?}; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = tls.get("/connectors").await;
    missing.assert_error(401);
    assert!(
        missing.headers.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{missing:?}"
    );
    let wrong = Api { token: Some("t0ken-that-must-not-lea".into()), ..tls.clone() };
    wrong.get("/connectors").await.assert_error(401);
    wrong.get("/metrics").await.assert_error(401);
    let right = Api { token: Some(secret.into()), ..tls.clone() };
    let list = right.get("/connectors").await;
    assert_eq!((list.status, list.json()), (200, json!([])), "{list:?}");
    assert_eq!(right.get("/metrics").await.status, 200);
    // Plain HTTP to the TLS port gets no answer; an untrusted certificate is refused by curl.
    let plain = Api { base: format!("http://127.0.0.1:{port}"), ..right.clone() };
    let p = tokio::task::spawn_blocking(move || plain.try_call("GET", "/connectors", None))
        .await
        .unwrap();
    assert!(p.as_ref().is_none_or(|r| r.status == 400), "{p:?}");
    let untrusted = Api { ca: None, ..right.clone() };
    let u = tokio::task::spawn_blocking(move || untrusted.try_call("GET", "/connectors", None))
        .await
        .unwrap();
    assert!(u.is_none(), "{u:?}");
    let log = runner.log();
    assert!(log.contains("REST API listening"), "{log}");
    assert!(!log.contains(secret), "the token leaked into the log:\n{log}");
}

/// A source reading `plant/#` into `kafka_topic`, as a JSON connector config.
fn mqtt_source(mqtt: &Mosquitto, kafka_topic: &str, extra: Value) -> Value {
    let mut c = json!({
        "type": "mqtt-source",
        "mqtt_url": mqtt.url(),
        "client_id": "rest-source",
        "topics": ["plant/#"],
        "kafka_topic": kafka_topic,
        "qos": 1,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

async fn publish(publisher: &MqttPublisher, range: std::ops::Range<usize>) {
    for i in range {
        publisher
            .publish("plant/line1/temp", QoS::AtLeastOnce, false, format!("{i}").into_bytes())
            .await
            .unwrap();
    }
}

/// Waits until `topic` holds every value of `0..n` (and the probes); returns (records, distinct).
async fn wait_all(
    client: &KafkaClient,
    topic: &str,
    n: usize,
    runner: &Runner,
    secs: u64,
) -> (usize, usize) {
    let expected: BTreeSet<Vec<u8>> = (0..n).map(|i| format!("{i}").into_bytes()).collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (records, values) = distinct_values(client, topic).await;
        let have = expected.iter().filter(|v| values.contains(*v)).count();
        if have == n {
            let extra = values.len() - have;
            return (records - extra, have);
        }
        assert!(Instant::now() < deadline, "{have} of {n} in {topic}; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn source_up(mqtt: &Mosquitto, tansu: &Tansu, port: u16, dir: &Path) -> (Runner, Api) {
    let config = write(
        dir,
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\n\n[offsets]\npath = \"{}\"\n\n{}",
            tansu.bootstrap(),
            dir.join("offsets.json").display(),
            rest_table(port, dir)
        ),
    );
    let _ = mqtt;
    let runner = Runner::start(&config, &dir.join("connect.log"), &[]);
    let api = Api::new(port);
    api.wait_up(&runner).await;
    (runner, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_delivery_and_resume_delivers_the_rest_with_nothing_lost() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let (runner, api) = source_up(&mqtt, &tansu, port, dir.path()).await;
    let created = api
        .call("PUT", "/connectors/telemetry/config", Some(mqtt_source(&mqtt, "plant", json!({}))))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    connector_testkit::wait_source_subscribed(
        &publisher,
        "plant/probe",
        b"probe",
        &client,
        "plant",
    )
    .await
    .unwrap();

    publish(&publisher, 0..500).await;
    wait_all(&client, "plant", 500, &runner, 30).await;
    assert_eq!(api.call("PUT", "/connectors/telemetry/pause", None).await.status, 202);
    api.wait_state("telemetry", "PAUSED", &runner).await;
    let at_pause = kafka::count(&client, "plant").await.unwrap();
    publish(&publisher, 500..1000).await;
    publisher.wait_acknowledged(1001, Duration::from_secs(10)).await.unwrap();
    // Paused: nothing more reaches Kafka while the broker holds the 500 new messages.
    let quiet = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet {
        assert_eq!(
            kafka::count(&client, "plant").await.unwrap(),
            at_pause,
            "delivered while paused"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(api.call("PUT", "/connectors/telemetry/resume", None).await.status, 202);
    let (records, distinct) = wait_all(&client, "plant", 1000, &runner, 30).await;
    assert_eq!(distinct, 1000);
    assert_eq!(records, 1000, "pause and resume repeat nothing");
}

/// Config PUT while 20,000 MQTT messages stream through an MQTT source: the old tasks drain
/// (Kafka acks in, MQTT acks sent, offsets committed) before the new ones start, so nothing is
/// lost and, as after a clean stop, nothing is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_put_mid_stream_loses_nothing_and_repeats_nothing() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let (runner, api) = source_up(&mqtt, &tansu, port, dir.path()).await;
    let created = api
        .call("PUT", "/connectors/telemetry/config", Some(mqtt_source(&mqtt, "plant", json!({}))))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let publisher = Arc::new(MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap());
    connector_testkit::wait_source_subscribed(
        &publisher,
        "plant/probe",
        b"probe",
        &client,
        "plant",
    )
    .await
    .unwrap();

    let n = 20_000usize;
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move {
            for chunk in 0..n / 500 {
                publish(&publisher, chunk * 500..(chunk + 1) * 500).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Mid-stream: a transform added (every record gets a header) and a larger window.
    let deadline = Instant::now() + Duration::from_secs(30);
    while kafka::count(&client, "plant").await.unwrap() < 3_000 {
        assert!(Instant::now() < deadline, "stream never started; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let changed = mqtt_source(
        &mqtt,
        "plant",
        json!({
            "transforms": [{"type": "insert_header", "header": "changed", "value": "yes"}],
            "runtime": {"max_in_flight_records": 2000},
        }),
    );
    let put = api.call("PUT", "/connectors/telemetry/config", Some(changed)).await;
    assert_eq!(put.status, 200, "{put:?}");
    let mid = kafka::count(&client, "plant").await.unwrap();
    assert!(mid < n as u64, "the change came mid-stream ({mid} of {n})");
    api.wait_state("telemetry", "RUNNING", &runner).await;
    publishing.await.unwrap();
    let (records, distinct) = wait_all(&client, "plant", n, &runner, 90).await;
    assert_eq!(distinct, n, "0 lost");
    let repeated = records - distinct;
    eprintln!(
        "config PUT at {mid} of {n}: {records} records, {distinct} distinct, {repeated} repeated"
    );
    assert_eq!(repeated, 0, "a drained replace repeats nothing (as a clean stop)");
    let all = kafka::consume_all(&client, "plant").await.unwrap();
    assert!(
        all.iter().any(|r| r.headers.first("changed").is_some()),
        "the new config (its transform) took effect"
    );
}

/// KIP-1017: `/health` is 503 naming Kafka while the connection to it is cut, 200 once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_unhealthy_while_kafka_is_cut_and_healthy_after() {
    init_tracing();
    let (tansu, proxy) =
        Tansu::start_behind_proxy(connector_testkit::TansuStorage::Memory).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\nrequest_timeout_ms = 1000\n\n[offsets]\nstore = \"memory\"\n\n{}",
            tansu.bootstrap(),
            rest_table(port, dir.path())
        ),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let api = Api::new(port);
    api.wait_up(&runner).await;
    let health = |want: u16| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = api.get("/health").await;
                if r.status == want {
                    return r.json();
                }
                assert!(Instant::now() < deadline, "health never {want}: {r:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(health(200).await["status"], "healthy");
    proxy.cut();
    let down = health(503).await;
    assert_eq!(down["status"], "unhealthy", "{down}");
    assert!(down["message"].as_str().unwrap().contains("Kafka"), "{down}");
    proxy.heal();
    assert_eq!(health(200).await["status"], "healthy", "log:\n{}", runner.log());
}

/// scripts/rest-check.py (an independent Python client: requests + jsonschema) walks every
/// endpoint, happy and unhappy, against a live `connect` with a token, validating every answer
/// against docs/openapi.json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_independent_rest_check_passes_against_a_live_worker() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\n\n[offsets]\npath = \"{}\"\n\n{}token = \"${{CONNECT_TOKEN}}\"\n",
            tansu.bootstrap(),
            dir.path().join("offsets.json").display(),
            rest_table(port, dir.path())
        ),
    );
    let runner = Runner::start_with_env(
        &config,
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
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output().unwrap())
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "rest-check failed:\n{stdout}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        runner.log()
    );
}

/// With `[rest]` a failing task does not stop the process (Kafka Connect's semantics): it stays
/// FAILED with its error, `/health` says so, the others go on, and the API restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_stays_failed_without_stopping_the_worker_and_the_api_restarts_it() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let out_dir = dir.path().join("not-yet");
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["{}"]

[offsets]
path = "{}"

{}
[[connector]]
name = "beats"
type = "heartbeat"
topic = "beats"
device = "d"
interval_ms = 50

[[connector]]
name = "out"
type = "file-sink"
path = "{}"
topics = ["beats"]
"#,
            tansu.bootstrap(),
            dir.path().join("offsets.json").display(),
            rest_table(port, dir.path()),
            out_dir.join("out.txt").display()
        ),
    );
    let mut runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let api = Api::new(port);
    api.wait_up(&runner).await;
    // Kafka Connect's shape: the connector RUNNING, its task FAILED with the error as trace.
    let failed = api.wait_task_state("out", "FAILED", &runner).await;
    assert_eq!(failed["connector"]["state"], "RUNNING", "{failed}");
    let trace = failed["tasks"][0]["trace"].as_str().unwrap();
    assert!(trace.contains("cannot open"), "{failed}");
    let health = api.get("/health").await;
    assert_eq!(health.status, 503, "{health:?}");
    let why = health.json()["message"].as_str().unwrap().to_owned();
    assert!(why.contains("out") && why.contains("FAILED"), "{why}");
    api.wait_state("beats", "RUNNING", &runner).await;
    assert!(
        runner.child.try_wait().unwrap().is_none(),
        "the worker went on; log:\n{}",
        runner.log()
    );

    std::fs::create_dir_all(&out_dir).unwrap();
    let restarted =
        api.call("POST", "/connectors/out/restart?includeTasks=true&onlyFailed=true", None).await;
    assert_eq!(restarted.status, 202, "{restarted:?}");
    assert_eq!(restarted.json()["name"], "out");
    api.wait_state("out", "RUNNING", &runner).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(out_dir.join("out.txt")).unwrap_or_default().lines().count() < 5 {
        assert!(
            Instant::now() < deadline,
            "the restarted sink wrote nothing; log:\n{}",
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.get("/health").await.status, 200);
    assert_eq!(runner.terminate(), Some(0), "log:\n{}", runner.log());
}

/// A client that hangs up while its config PUT drains the old tasks (curl gives up after 0.5 s;
/// the old source's clean MQTT stop waits 2 s for a broker that no longer answers) does not
/// leave the change half done: the connector runs the new config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_put_leaves_the_connector_running_the_new_config() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let proxy = connector_testkit::FaultProxy::start(mqtt.addr()).await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let (runner, api) = source_up(&mqtt, &tansu, port, dir.path()).await;
    let through_proxy =
        mqtt_source(&mqtt, "plant", json!({"mqtt_url": format!("mqtt://{}", proxy.addr())}));
    let created = api.call("PUT", "/connectors/telemetry/config", Some(through_proxy)).await;
    assert_eq!(created.status, 201, "{created:?}");
    api.wait_state("telemetry", "RUNNING", &runner).await;
    proxy.blackhole();

    let changed = mqtt_source(&mqtt, "plant-changed", json!({})).to_string();
    let started = Instant::now();
    let gave_up = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "0.5", "-X", "PUT"])
            .args(["-H", "Content-Type: application/json", "--data-binary", &changed])
            .arg(format!("http://127.0.0.1:{port}/connectors/telemetry/config"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!gave_up.status.success(), "curl got an answer before giving up: {gave_up:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the PUT answered before the drain ended");

    let status = api.wait_state("telemetry", "RUNNING", &runner).await;
    assert_eq!(status["tasks"].as_array().unwrap().len(), 1, "{status}");
    let config = api.get("/connectors/telemetry/config").await.json();
    assert_eq!(config["kafka_topic"], "plant-changed", "{config}");
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    connector_testkit::wait_source_subscribed(
        &publisher,
        "plant/probe",
        b"probe",
        &client,
        "plant-changed",
    )
    .await
    .unwrap();
    proxy.heal();
}

/// PAUSED starts paused: a config PUT on a PAUSED connector, or pausing a STOPPED one, starts
/// its tasks paused (not started then paused: a heartbeat task would write at once), so nothing
/// reaches Kafka until resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_connector_given_a_new_config_or_a_stopped_one_paused_starts_paused() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\n\n[offsets]\npath = \"{}\"\n\n{}",
            tansu.bootstrap(),
            dir.path().join("offsets.json").display(),
            rest_table(port, dir.path())
        ),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let api = Api::new(port);
    api.wait_up(&runner).await;
    let put = api.call("PUT", "/connectors/beat/config", Some(heartbeat("beats", "a"))).await;
    assert_eq!(put.status, 201, "{put:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while kafka::count(&client, "beats").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "no heartbeat; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.call("PUT", "/connectors/beat/pause", None).await.status, 202);
    api.wait_state("beat", "PAUSED", &runner).await;
    // What was polled before the pause still reaches Kafka; then nothing more.
    let mut settled = kafka::count(&client, "beats").await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = kafka::count(&client, "beats").await.unwrap();
        if now == settled {
            break;
        }
        settled = now;
    }
    let quiet = |what: &'static str| {
        let client = client.clone();
        async move {
            let until = Instant::now() + Duration::from_millis(1200);
            while Instant::now() < until {
                let n = kafka::count(&client, "beats").await.unwrap();
                assert_eq!(n, settled, "{what}: written while PAUSED");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    let put = api.call("PUT", "/connectors/beat/config", Some(heartbeat("beats", "b"))).await;
    assert_eq!(put.status, 200, "{put:?}");
    let status = api.wait_state("beat", "PAUSED", &runner).await;
    assert_eq!(status["tasks"].as_array().unwrap().len(), 1, "{status}");
    quiet("after a config PUT").await;

    assert_eq!(api.call("PUT", "/connectors/beat/stop", None).await.status, 202);
    api.wait_state("beat", "STOPPED", &runner).await;
    assert_eq!(api.call("PUT", "/connectors/beat/pause", None).await.status, 202);
    api.wait_state("beat", "PAUSED", &runner).await;
    quiet("after pausing a STOPPED connector").await;

    assert_eq!(api.call("PUT", "/connectors/beat/resume", None).await.status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while kafka::count(&client, "beats").await.unwrap() <= settled {
        assert!(Instant::now() < deadline, "resume wrote nothing; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pausing a connector of the file keeps only its target state (the file's later edits take
/// effect); a config PUT through the API replaces the file's, and a file edit that it then
/// hides is warned about at start, naming the connector and the kept file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_file_connector_keeps_only_its_state_and_a_hidden_file_edit_is_warned_about() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = connector_testkit::free_port().unwrap();
    let file = |device: &str| {
        format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\n\n[offsets]\npath = \"{}\"\n\n{}\n[[connector]]\nname = \"beat\"\ntype = \"heartbeat\"\ntopic = \"beats\"\ndevice = \"{device}\"\n",
            tansu.bootstrap(),
            dir.path().join("offsets.json").display(),
            rest_table(port, dir.path())
        )
    };
    let log = dir.path().join("connect.log");
    let config = write(dir.path(), "connect.toml", &file("a"));
    let mut runner = Runner::start(&config, &log, &[]);
    let api = Api::new(port);
    api.wait_up(&runner).await;
    assert_eq!(api.call("PUT", "/connectors/beat/pause", None).await.status, 202);
    api.wait_state("beat", "PAUSED", &runner).await;
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("rest.d/beat.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept, json!({"target_state": "PAUSED"}), "only the state is kept");
    assert_eq!(runner.terminate(), Some(0), "log:\n{}", runner.log());

    write(dir.path(), "connect.toml", &file("edited"));
    let mut runner = Runner::start(&config, &log, &[]);
    api.wait_up(&runner).await;
    api.wait_state("beat", "PAUSED", &runner).await;
    assert_eq!(api.get("/connectors/beat/config").await.json()["device"], "edited");
    let put = api.call("PUT", "/connectors/beat/config", Some(heartbeat("beats", "api"))).await;
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(runner.terminate(), Some(0), "log:\n{}", runner.log());

    write(dir.path(), "connect.toml", &file("edited-again"));
    let runner = Runner::start(&config, &log, &[]);
    api.wait_up(&runner).await;
    api.wait_state("beat", "PAUSED", &runner).await;
    assert_eq!(api.get("/connectors/beat/config").await.json()["device"], "api");
    let text = runner.log();
    let warned = text.lines().any(|l| {
        l.contains("WARN") && l.contains("differs from the file's") && l.contains("beat.json")
    });
    assert!(warned, "no warning naming the connector's kept file:\n{text}");
}

/// An API-only worker (no `[[connector]]`), for the tests of single requests.
async fn api_only(tansu: &Tansu, dir: &Path) -> (Runner, Api) {
    let port = connector_testkit::free_port().unwrap();
    let config = write(
        dir,
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\n\n[offsets]\npath = \"{}\"\n\n{}",
            tansu.bootstrap(),
            dir.join("offsets.json").display(),
            rest_table(port, dir)
        ),
    );
    let runner = Runner::start(&config, &dir.join("connect.log"), &[]);
    let api = Api::new(port);
    api.wait_up(&runner).await;
    (runner, api)
}

/// POST /connectors creates a name once: of concurrent POSTs of one name, one is 201 and the
/// others 409 (checked under the lock of the writes); connector names are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_of_one_name_create_it_once_and_names_are_bounded() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_runner, api) = api_only(&tansu, dir.path()).await;
    let posts: Vec<_> = (0..4)
        .map(|i| {
            let api = api.clone();
            let body = json!({"name": "once", "config": heartbeat("beats", &format!("d{i}"))});
            tokio::spawn(async move { api.call("POST", "/connectors", Some(body)).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in posts {
        statuses.push(p.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409, 409, 409]);
    assert_eq!(api.get("/connectors").await.json(), json!(["once"]));

    let long = "n".repeat(201);
    let refused = api
        .call("PUT", &format!("/connectors/{long}/config"), Some(heartbeat("beats", "x")))
        .await
        .assert_error(400);
    assert!(refused.starts_with("name: too long"), "{refused}");
    // 100 bytes, but 300 once escaped into a file name: refused too, not a 500.
    let dotted = ".".repeat(100);
    let body = json!({"name": dotted, "config": heartbeat("beats", "x")});
    let refused = api.call("POST", "/connectors", Some(body)).await.assert_error(400);
    assert!(refused.starts_with("name: too long"), "{refused}");
    assert_eq!(api.get("/connectors").await.json(), json!(["once"]));
}

/// With every connection slot held by clients that send nothing, `/health` still answers (a
/// few connections past the limit serve only it), and other paths there are a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_idle_clients_hold_every_connection_slot() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (runner, api) = api_only(&tansu, dir.path()).await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = api.get("/health").await;
        if health.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{health:?}; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let other = api.get("/connectors").await.assert_error(503);
    assert!(other.contains("only GET /health"), "{other}");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get("/connectors").await.status != 200 {
        assert!(Instant::now() < deadline, "the slots never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
