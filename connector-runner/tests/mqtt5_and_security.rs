//! MQTT 5 and security through the `connect` runner on real brokers: properties survive MQTT 5 ->
//! Kafka -> MQTT 5 (checked by Mosquitto's own `mosquitto_pub`/`mosquitto_sub`), an expired
//! command is not published, the status topic and last will tell device-side tools the bridge's
//! state, `mqtts://` with client certificates, Kafka over TLS with a SCRAM login, bad credentials
//! end the runner with a clear error, and no password reaches the log.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use connector_core::kafka::ProducerRecord;
use connector_core::Timestamp;
use connector_testkit::{
    init_tracing, kafka, wait_until, Mosquitto, MosquittoOptions, MqttPublisher, MqttSubscriber,
    SaslUser, Tansu, TansuOptions, TansuStorage, TansuTls, TestPki,
};
use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod support;

use support::{assert_validate_reports, run_expecting_failure, write, Runner};

/// `mosquitto_sub` (MQTT 5) printing one line per message in `format`, started and subscribed.
struct Sub {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Sub {
    async fn start(mqtt: &Mosquitto, topic: &str, format: &str) -> Self {
        // Line-buffered: its stdout is a pipe.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-V",
                "5",
                "-d",
                "-q",
                "1",
                "-h",
                "127.0.0.1",
                "-i",
                "props-watcher",
            ])
            .args(["-p", &mqtt.port().to_string(), "-t", topic, "-F", format])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // With -d it reports its SUBACK: from then on nothing published is missed.
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("received SUBACK") {
                    return;
                }
            }
            panic!("mosquitto_sub ended before subscribing");
        })
        .await
        .unwrap();
        Self { child, lines }
    }

    /// The next message line (debug lines skipped).
    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let line = self.lines.next_line().await.unwrap().expect("mosquitto_sub ended");
                if !line.starts_with("Client ") && !line.starts_with("Subscribed (") {
                    return line;
                }
            }
        })
        .await
        .expect("no message within 30 s")
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn header_pairs(r: &connector_core::SinkRecord) -> Vec<(String, String)> {
    r.headers
        .iter()
        .map(|h| (h.key.to_string(), String::from_utf8_lossy(&h.value).into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_round_trip_keeps_user_properties_content_type_and_correlation_data() {
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

[[connector]]
name = "requests-in"
type = "mqtt-source"
mqtt_url = "{url}"
mqtt_version = "5"
topics = ["req/+"]
kafka_topic = "requests"
key = "{{1}}"

[[connector]]
name = "requests-out"
type = "mqtt-sink"
mqtt_url = "{url}"
mqtt_version = "5"
topics = ["requests"]
mqtt_topic = "out/{{key}}"
"#,
            kafka = tansu.bootstrap(),
            url = mqtt.url()
        ),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let mut sub = Sub::start(&mqtt, "out/device-9", "%t|%C|%D|%R|%F|%P|%p").await;
    let probe = MqttPublisher::connect(&mqtt.url(), "probe").await.unwrap();
    connector_testkit::wait_source_subscribed(&probe, "req/probe", b"probe", &client, "requests")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", runner.log()));

    let published = std::process::Command::new("mosquitto_pub")
        .args(["-V", "5", "-q", "1", "-h", "127.0.0.1", "-p", &mqtt.port().to_string()])
        .args(["-t", "req/device-9", "-m", "open sesame"])
        .args(["-D", "publish", "user-property", "b", "1"])
        .args(["-D", "publish", "user-property", "a", "2"])
        .args(["-D", "publish", "user-property", "b", "3"])
        .args(["-D", "publish", "content-type", "text/plain"])
        .args(["-D", "publish", "correlation-data", "cid-7"])
        .args(["-D", "publish", "response-topic", "replies/device-9"])
        .args(["-D", "publish", "payload-format-indicator", "1"])
        .status()
        .unwrap();
    assert!(published.success());

    let line = sub.next().await;
    assert_eq!(
        line, "out/device-9|text/plain|cid-7|replies/device-9|1|b:1 a:2 b:3|open sesame",
        "topic|content type|correlation data|response topic|payload format|user properties|payload; log:\n{}",
        runner.log()
    );

    // In Kafka: the user properties as headers, in order with the duplicate, and the rest under
    // the connector's mqtt.* names.
    let records = kafka::consume_all(&client, "requests").await.unwrap();
    let record = records.iter().find(|r| r.key.as_deref() == Some(&b"device-9"[..])).unwrap();
    let headers = header_pairs(record);
    let user: Vec<_> = headers.iter().filter(|(k, _)| !k.starts_with("mqtt.")).cloned().collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    assert_eq!(user, pairs(&[("b", "1"), ("a", "2"), ("b", "3")]));
    for expected in [
        ("mqtt.content_type", "text/plain"),
        ("mqtt.correlation_data", "cid-7"),
        ("mqtt.response_topic", "replies/device-9"),
        ("mqtt.payload_format_indicator", "1"),
    ] {
        assert!(headers.contains(&pairs(&[expected])[0]), "{expected:?} in {headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_command_is_not_published() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let car = MqttSubscriber::connect(&mqtt.url(), "car-1", "cars/+/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    let now = Timestamp::now().as_millis();
    let ago = |secs: i64| Timestamp::from_millis(now - secs * 1000);
    // Same key, same partition: they are handled in this order.
    client
        .produce(vec![
            ProducerRecord::new("commands", "stale by config")
                .with_key("car-1")
                .with_timestamp(ago(120)),
            ProducerRecord::new("commands", "stale by header")
                .with_key("car-1")
                .with_timestamp(ago(10))
                .with_header("mqtt.message_expiry_interval", "5"),
            ProducerRecord::new("commands", "fresh").with_key("car-1").with_timestamp(ago(1)),
        ])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\n[offsets]\nstore = \"memory\"\n[[connector]]\nname = \"commands\"\ntype = \"mqtt-sink\"\nmqtt_url = \"{}\"\nmqtt_version = \"5\"\ntopics = [\"commands\"]\nmqtt_topic = \"cars/{{key}}/cmd\"\nmessage_expiry_secs = 60\n",
            tansu.bootstrap(),
            mqtt.url()
        ),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let got = car
        .wait_for(1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", runner.log()));
    let payloads: Vec<_> =
        got.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    assert_eq!(payloads, ["fresh"], "the two expired commands came first and were not published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_topic_says_online_and_offline_and_the_last_will_reports_a_crash() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let watcher = MqttSubscriber::connect(&mqtt.url(), "ops", "connect/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // An MQTT 3.1.1 source and an MQTT 5 sink: the will travels in both CONNECT formats.
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{kafka}\"]\n[offsets]\nstore = \"memory\"\n[[connector]]\nname = \"telemetry\"\ntype = \"mqtt-source\"\nmqtt_url = \"{url}\"\ntopics = [\"plant/#\"]\nkafka_topic = \"plant\"\n[[connector]]\nname = \"commands\"\ntype = \"mqtt-sink\"\nmqtt_url = \"{url}\"\nmqtt_version = \"5\"\ntopics = [\"commands\"]\nmqtt_topic = \"cars/{{key}}/cmd\"\n",
            kafka = tansu.bootstrap(),
            url = mqtt.url()
        ),
    );
    // What each client's status topic said, in order.
    let said = |client: &str| -> Vec<String> {
        let topic = format!("connect/{client}/status");
        watcher
            .messages()
            .iter()
            .filter(|p| p.topic == topic)
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    };
    let log = dir.path().join("connect.log");
    let expect = |history: &'static [&'static str]| {
        let said = &said;
        async move {
            for client in ["telemetry", "commands"] {
                wait_until(&format!("{client} said {history:?}"), Duration::from_secs(30), || {
                    said(client) == history
                })
                .await
                .unwrap_or_else(|e| panic!("{e}: {:?}", said(client)));
            }
        }
    };

    let mut runner = Runner::start(&config, &log, &[]);
    expect(&["online"]).await;
    assert_eq!(runner.terminate(), Some(0));
    expect(&["online", "offline"]).await;

    let mut runner = Runner::start(&config, &log, &[]);
    expect(&["online", "offline", "online"]).await;
    runner.kill();
    // No DISCONNECT: the broker publishes each client's will.
    expect(&["online", "offline", "online", "offline"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_exit_non_zero_and_no_password_reaches_the_log() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    let created = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c", passwords.to_str().unwrap(), "bridge", "S3cret-Pw-4711"])
        .status()
        .unwrap();
    assert!(created.success());
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        extra_config: vec![
            "allow_anonymous false".into(),
            format!("password_file {}", passwords.display()),
        ],
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start().await.unwrap();
    // The source reads its password from the environment; the sink's is in the config file.
    let config = |sink_password: &str| {
        format!(
            r#"
[kafka]
bootstrap_servers = ["{kafka}"]
[offsets]
store = "memory"
[[connector]]
name = "telemetry"
type = "mqtt-source"
mqtt_url = "{url}"
topics = ["plant/#"]
kafka_topic = "plant"
username = "bridge"
password = "${{TEST_MQTT_PASSWORD}}"
connect_timeout_secs = 2
[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "{url}"
mqtt_version = "5"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/cmd"
username = "bridge"
password = "{sink_password}"
connect_timeout_secs = 2
"#,
            kafka = tansu.bootstrap(),
            url = mqtt.url()
        )
    };
    let secrets = ["S3cret-Pw-4711", "Wr0ng-Pw-0815"];
    let trace = ("RUST_LOG", "trace");

    // Wrong password from the environment: a clear, fatal error and exit 1.
    let wrong = write(dir.path(), "wrong.toml", &config("S3cret-Pw-4711"));
    let stderr = run_expecting_failure(&wrong, &[("TEST_MQTT_PASSWORD", "Wr0ng-Pw-0815"), trace]);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("refused the connection") && last.contains(&mqtt.url()),
        "the last line says who refused what: {last}"
    );
    for s in secrets {
        assert!(!stderr.contains(s), "secret {s:?} in the log:\n{stderr}");
    }

    // Wrong password in the file (MQTT 5 sink): the same.
    let stderr = run_expecting_failure(
        &write(dir.path(), "wrong5.toml", &config("Wr0ng-Pw-0815")),
        &[("TEST_MQTT_PASSWORD", "S3cret-Pw-4711"), trace],
    );
    assert!(stderr.contains("BadUserNamePassword") || stderr.contains("NotAuthorized"), "{stderr}");
    for s in secrets {
        assert!(!stderr.contains(s), "secret {s:?} in the log:\n{stderr}");
    }

    // The right ones, the sink's now from a file: both connectors start, run and stop; still
    // no secret in a trace log.
    let secret_file = dir.path().join("mqtt-password");
    std::fs::write(&secret_file, "S3cret-Pw-4711\n").unwrap();
    let right =
        write(dir.path(), "right.toml", &config(&format!("${{file:{}}}", secret_file.display())));
    let log = dir.path().join("right.log");
    let mut runner =
        Runner::start_with_env(&right, &log, &[("TEST_MQTT_PASSWORD", "S3cret-Pw-4711"), trace]);
    wait_until("both connectors started", Duration::from_secs(30), || {
        let l = runner.log();
        l.contains("MQTT source task started") && l.contains("MQTT sink task started")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", runner.log()));
    assert_eq!(runner.terminate(), Some(0));
    let text = runner.log();
    for s in secrets {
        assert!(!text.contains(s), "secret {s:?} in the log:\n{text}");
    }
}

#[test]
fn validate_checks_the_new_keys_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "bad.toml",
        r#"
[kafka]
bootstrap_servers = ["127.0.0.1:9092"]

[[connector]]
name = "a"
type = "mqtt-source"
mqtt_url = "mqtt://broker"
mqtt_version = "4"
topics = ["plant/#"]
kafka_topic = "plant"

[[connector]]
name = "b"
type = "mqtt-sink"
mqtt_url = "mqtt://broker"
topics = ["commands"]
mqtt_topic = "cars/{key}/cmd"
tls = { cert_file = "client.pem" }
status_topic = "status/#"
user_properties = "prefix"
"#,
    );
    assert_validate_reports(
        &config,
        &[
            "connector[0].mqtt_version:",
            "connector[1].tls: TLS settings need an mqtts:// URL",
            "connector[1].tls.key_file: a client certificate needs its key_file",
            "connector[1].status_topic:",
            "connector[1].user_property_prefix:",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_client_certificates_accepts_the_connectors_and_rejects_a_stranger() {
    init_tracing();
    let pki = TestPki::generate().unwrap();
    // Same names, signed by a CA the broker does not trust.
    let stranger = TestPki::generate().unwrap();
    let tls_port = connector_testkit::free_port().unwrap();
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        extra_config: vec![
            format!("listener {tls_port} 127.0.0.1"),
            format!("cafile {}", pki.ca_file().display()),
            format!("certfile {}", pki.server_cert_file().display()),
            format!("keyfile {}", pki.server_key_file().display()),
            "require_certificate true".into(),
        ],
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");
    let config = |ca: &TestPki, client: &TestPki| {
        let tls = format!(
            "{{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
            ca.ca_file().display(),
            client.client_cert_file().display(),
            client.client_key_file().display()
        );
        format!(
            r#"
[kafka]
bootstrap_servers = ["{kafka}"]
[offsets]
store = "memory"
[[connector]]
name = "telemetry"
type = "mqtt-source"
mqtt_url = "{tls_url}"
tls = {tls}
topics = ["plant/#"]
kafka_topic = "plant"
connect_timeout_secs = 2
[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "{tls_url}"
mqtt_version = "5"
tls = {tls}
topics = ["plant"]
mqtt_topic = "echo/{{partition}}"
connect_timeout_secs = 2
"#,
            kafka = tansu.bootstrap(),
        )
    };
    let dir = tempfile::tempdir().unwrap();

    // Our certificate: MQTT 3.1.1 in over TLS, MQTT 5 out over TLS (watched on the plain listener).
    let echo =
        MqttSubscriber::connect(&mqtt.url(), "echo", "echo/#", QoS::AtLeastOnce).await.unwrap();
    let good = write(dir.path(), "good.toml", &config(&pki, &pki));
    let runner = Runner::start(&good, &dir.path().join("good.log"), &[]);
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    connector_testkit::wait_source_subscribed(
        &publisher,
        "plant/probe",
        b"probe",
        &client,
        "plant",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", runner.log()));
    echo.wait_for(1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", runner.log()));
    drop(runner);

    // A client certificate from another CA: refused, a clear error, exit 1.
    let bad = write(dir.path(), "stranger.toml", &config(&pki, &stranger));
    let stderr = run_expecting_failure(&bad, &[]);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&tls_url) && last.contains("TLS"), "{last}");

    // A broker certificate we do not trust: refused by us, the same way.
    let untrusted = write(dir.path(), "untrusted.toml", &config(&stranger, &pki));
    let stderr = run_expecting_failure(&untrusted, &[]);
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_sink_keeps_to_the_brokers_receive_maximum() {
    init_tracing();
    // Mosquitto announces max_inflight_messages as its MQTT 5 receive maximum, which MQTT 5
    // forbids a client to exceed (Mosquitto 2.0 itself tolerates it, so this checks that the
    // limit is read and the flow stays complete and ordered with the smaller window).
    let mqtt = Mosquitto::start_with(MosquittoOptions {
        max_inflight_messages: 20,
        ..MosquittoOptions::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let car = MqttSubscriber::connect(&mqtt.url(), "car-2", "cars/+/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    let n = 2_000;
    let records =
        (0..n).map(|i| ProducerRecord::new("commands", format!("cmd-{i}")).with_key("car-2"));
    client.produce(records.collect()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            "[kafka]\nbootstrap_servers = [\"{}\"]\n[offsets]\nstore = \"memory\"\n[[connector]]\nname = \"commands\"\ntype = \"mqtt-sink\"\nmqtt_url = \"{}\"\nmqtt_version = \"5\"\ninflight = 1000\ntopics = [\"commands\"]\nmqtt_topic = \"cars/{{key}}/cmd\"\n",
            tansu.bootstrap(),
            mqtt.url()
        ),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &["--log-format", "json"]);
    let got = car
        .wait_for(n, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", runner.log()));
    let payloads: Vec<_> =
        got.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    assert_eq!(payloads, (0..n).map(|i| format!("cmd-{i}")).collect::<Vec<_>>(), "in order, once");
    assert!(!runner.log().contains("reconnecting"), "never disconnected:\n{}", runner.log());
    let log = runner.log();
    assert!(
        log.contains("\"receive_maximum\":20"),
        "the announced limit was read:
{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_with_scram_runs_and_a_wrong_password_exits_without_showing_it() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start_with_options(TansuOptions {
        storage: TansuStorage::Sqlite,
        tls: Some(TansuTls::default()),
        sasl_users: vec![SaslUser::new("bridge", "K4fka-S3cret-99")],
    })
    .await
    .unwrap();
    let client = tansu.client().await.unwrap();
    let ca = tansu.pki().unwrap().ca_file();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        &format!(
            r#"
[kafka]
bootstrap_servers = ["{kafka}"]
security_protocol = "sasl_ssl"
ssl_ca_file = "{ca}"
sasl_mechanism = "SCRAM-SHA-256"
sasl_username = "bridge"
sasl_password = "${{TEST_KAFKA_PASSWORD}}"
connect_timeout_ms = 2000
[offsets]
store = "memory"
[[connector]]
name = "telemetry"
type = "mqtt-source"
mqtt_url = "{url}"
topics = ["plant/#"]
kafka_topic = "plant"
"#,
            kafka = tansu.bootstrap(),
            ca = ca.display(),
            url = mqtt.url()
        ),
    );
    let secrets = ["K4fka-S3cret-99", "Wr0ng-K4fka-11"];

    // The right password: MQTT -> Kafka over TLS with a SCRAM login; a trace log without it.
    let log = dir.path().join("right.log");
    let mut runner = Runner::start_with_env(
        &config,
        &log,
        &[("TEST_KAFKA_PASSWORD", "K4fka-S3cret-99"), ("RUST_LOG", "trace")],
    );
    let publisher = MqttPublisher::connect(&mqtt.url(), "plc").await.unwrap();
    connector_testkit::wait_source_subscribed(
        &publisher,
        "plant/probe",
        b"probe",
        &client,
        "plant",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", runner.log()));
    assert_eq!(runner.terminate(), Some(0));
    let text = runner.log();
    for s in secrets {
        assert!(!text.contains(s), "secret {s:?} in the log:\n{text}");
    }

    // A wrong one: refused at once, exit 1, the message names the mechanism and user only.
    let stderr = run_expecting_failure(
        &config,
        &[("TEST_KAFKA_PASSWORD", "Wr0ng-K4fka-11"), ("RUST_LOG", "trace")],
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("SCRAM-SHA-256") && last.contains("bridge"), "{last}");
    for s in secrets {
        assert!(!stderr.contains(s), "secret {s:?} in the log:\n{stderr}");
    }
}
