//! Exactly once, Kafka -> MQTT, through the `connect` runner process on real Mosquitto and
//! Tansu: with `exactly_once = true` a QoS 2 subscriber with a persistent session sees every
//! command exactly once across SIGKILLs at random moments, and across a crash at each step of
//! the QoS 2 sender protocol (`CONNECTOR_CRASH_AT`, see docs/delivery-guarantees.md).

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord, TransactionalProducer};
use connector_testkit::{init_tracing, Mosquitto, MosquittoOptions, MqttSubscriber, Tansu};
use rumqttc::QoS;

mod support;

use support::{assert_validate_reports, connect, write, Runner};

fn sink_config(mqtt: &Mosquitto, bootstrap: &str, window: usize) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{bootstrap}"]

[offsets]
store = "kafka"

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "{}"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/cmd"
qos = 2
clean_session = false
exactly_once = true
inflight = {window}
runtime = {{ max_put_records = {window} }}
"#,
        mqtt.url()
    )
}

async fn produce_commands(client: &KafkaClient, range: std::ops::Range<usize>) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(500) {
        let batch = chunk
            .iter()
            .map(|i| ProducerRecord::new("commands", format!("cmd-{i}")).with_key("car-7"))
            .collect();
        client.produce(batch).await.unwrap();
    }
}

/// Deliveries per payload.
fn tally(car: &MqttSubscriber) -> BTreeMap<Vec<u8>, usize> {
    let mut seen = BTreeMap::new();
    for p in car.messages() {
        *seen.entry(p.payload.to_vec()).or_insert(0) += 1;
    }
    seen
}

/// Every one of `n` commands exactly once (the repeats listed otherwise).
fn assert_exactly_once(seen: &BTreeMap<Vec<u8>, usize>, n: usize, log: &str) {
    let repeated: Vec<(String, usize)> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(p, c)| (String::from_utf8_lossy(p).into_owned(), *c))
        .take(10)
        .collect();
    assert!(
        repeated.is_empty(),
        "repeated commands (first 10): {repeated:?}\nlog tail:\n{}",
        tail(log)
    );
    assert_eq!(seen.len(), n, "lost commands");
}

/// `line` without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
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

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until the subscriber saw `n` distinct commands.
async fn wait_distinct(car: &MqttSubscriber, runner: &Runner, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while tally(car).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} commands; log:\n{}",
            tally(car).len(),
            tail(&runner.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    mqtt: Mosquitto,
    _tansu: Tansu,
    car: MqttSubscriber,
    config: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup(n: usize, window: usize) -> Setup {
    setup_with(n, window, MosquittoOptions::default()).await
}

async fn setup_with(n: usize, window: usize, options: MosquittoOptions) -> Setup {
    init_tracing();
    let mqtt = Mosquitto::start_with(options).await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    produce_commands(&client, 0..n).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "connect.toml", &sink_config(&mqtt, &tansu.bootstrap(), window));
    // A persistent session at QoS 2: the broker's receiver rules apply on both sides.
    let car = MqttSubscriber::connect(&mqtt.url(), "car-7", "cars/car-7/cmd", QoS::ExactlyOnce)
        .await
        .unwrap();
    let log = dir.path().join("connect.log");
    Setup { mqtt, _tansu: tansu, car, config, log, _dir: dir }
}

/// 20 SIGKILLs at random moments during a 10,000-command stream: each command arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_during_a_command_stream_deliver_every_command_exactly_once() {
    let (n, kills, window) = (10_000usize, 20usize, 100usize);
    let s = setup(n, window).await;
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64;
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64: random moments, reproducible from the printed seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    for k in 1..=kills {
        let mut runner = Runner::start(&s.config, &s.log, &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while runner.log().matches("exactly once: resuming").count() < k {
            assert!(
                Instant::now() < deadline,
                "run {k} did not start; log:\n{}",
                tail(&runner.log())
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Into the stream, then a random moment later: mid-publish, mid-save, mid-handshake.
        let target = k * n / (kills + 2);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally(&s.car).len() < target {
            assert!(Instant::now() < deadline, "run {k} stalled; log:\n{}", tail(&runner.log()));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(next() % 40)).await;
        runner.kill();
    }
    let before_last = tally(&s.car).len();
    let mut runner = Runner::start(&s.config, &s.log, &[]);
    wait_distinct(&s.car, &runner, n, Duration::from_secs(60)).await;
    // Late duplicates would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runner.terminate(), Some(0));
    let seen = tally(&s.car);
    let received: usize = seen.values().sum();
    println!(
        "{n} commands, {kills} SIGKILLs (seed {seed}), window {window}: {received} received, {} distinct, {:?}",
        seen.len(),
        started.elapsed()
    );
    assert_exactly_once(&seen, n, &runner.log());
    // How much each restart had to finish: packet ids sent, PUBRELs pending.
    let log = runner.log();
    let resumes: Vec<String> =
        log.lines().filter(|l| l.contains("exactly once: resuming")).map(strip_ansi).collect();
    let field = |l: &str, f: &str| -> usize {
        l.split(&format!("{f}="))
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let sent: Vec<usize> = resumes.iter().map(|l| field(l, "sent")).collect();
    let released: Vec<usize> = resumes.iter().map(|l| field(l, "released")).collect();
    assert!(sent.iter().chain(&released).any(|n| *n > 0), "no restart had anything to finish");
    println!("restarts resumed {sent:?} unfinished publishes and {released:?} pending PUBRELs");
    assert_eq!(resumes.len(), kills + 1);
    // Batched saves: the last run's saves against the commands it delivered.
    let saves = log
        .lines()
        .rfind(|l| l.contains("QoS 2 state saves made by this task"))
        .map(strip_ansi)
        .map_or(0, |l| field(&l, "saves"));
    println!("the last run made {saves} state saves for {} commands", n - before_last);
    assert!(saves > 0);
    drop(s.mqtt);
}

/// A crash at `point` (its `pass`-th pass), then a restart: every command exactly once.
async fn crash_at(point: &str, pass: u32) {
    let (n, window) = (300usize, 20usize);
    let s = setup(n, window).await;
    let at = format!("{point}:{pass}");
    let mut crashing = Runner::start_with_env(&s.config, &s.log, &[("CONNECTOR_CRASH_AT", &at)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while crashing.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no crash at {at}; log:\n{}", tail(&crashing.log()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(crashing.log().contains("CONNECTOR_CRASH_AT: dying here"), "{}", tail(&crashing.log()));
    let before = tally(&s.car).len();
    let mut runner = Runner::start(&s.config, &s.log, &[]);
    wait_distinct(&s.car, &runner, n, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runner.terminate(), Some(0));
    println!(
        "crash at {at}: {before} commands before it, {} after the restart",
        tally(&s.car).len()
    );
    assert_exactly_once(&tally(&s.car), n, &runner.log());
}

/// The state says "offset O goes as packet id P"; the PUBLISH never left: sent again under P
/// (DUP set), the broker takes it as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_saving_the_packet_ids_before_the_publish_delivers_once() {
    crash_at("sink.sent_saved", 3).await;
}

/// The PUBLISH left, no PUBREC handled: sent again under the same id with DUP; a broker that
/// had it answers PUBREC without delivering again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_publish_before_its_pubrec_delivers_once() {
    crash_at("sink.published", 3).await;
}

/// PUBREC saved, PUBREL not sent: the restart sends the PUBREL and skips the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_saving_the_pubrec_before_the_pubrel_delivers_once() {
    crash_at("sink.received_saved", 3).await;
}

/// PUBREL sent, no PUBCOMP handled: the restart sends the PUBREL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_pubrel_before_its_pubcomp_delivers_once() {
    crash_at("sink.released", 3).await;
}

/// PUBCOMP read, the freed id not yet saved: the restart sends a PUBREL the broker no longer
/// knows (answered with PUBCOMP) and reuses nothing early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_pubcomp_before_the_next_save_delivers_once() {
    crash_at("sink.completed", 40).await;
}

/// Crash after saving PUBRECs, before their PUBRELs; the broker then restarts without
/// persistence (the session is lost). Mosquitto delivers a QoS 2 message at PUBREL, so those
/// commands reached no one: the restarted task must publish them again (at least once now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_saving_pubrecs_then_a_broker_that_lost_the_session_loses_no_command() {
    let (n, window) = (300usize, 20usize);
    let options = MosquittoOptions { persistence: false, ..MosquittoOptions::default() };
    let mut s = setup_with(n, window, options).await;
    let at = "sink.received_saved:3";
    let mut crashing = Runner::start_with_env(&s.config, &s.log, &[("CONNECTOR_CRASH_AT", at)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while crashing.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no crash at {at}; log:\n{}", tail(&crashing.log()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the broker had released reaches the car before the broker goes.
    let mut before = tally(&s.car).len();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = tally(&s.car).len();
        if now == before {
            break;
        }
        before = now;
    }
    let first = s.car.messages();
    s.mqtt.restart().await.unwrap();
    // Another client id: the first car reconnects too, to a session without its subscription.
    let car = MqttSubscriber::connect(&s.mqtt.url(), "car-7b", "cars/car-7/cmd", QoS::ExactlyOnce)
        .await
        .unwrap();
    let mut runner = Runner::start(&s.config, &s.log, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = |car: &MqttSubscriber| {
        let mut all: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for p in first.iter().chain(car.messages().iter()) {
            *all.entry(p.payload.to_vec()).or_insert(0) += 1;
        }
        all
    };
    while seen(&car).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} commands after a lost session; log:\n{}",
            seen(&car).len(),
            tail(&runner.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runner.terminate(), Some(0));
    let repeats = seen(&car).values().filter(|c| **c > 1).count();
    println!("lost session: {before} commands before the crash, all {n} after, {repeats} repeated");
}

/// `exactly_once = true` with QoS 1, a clean session and two tasks: each key is named.
#[test]
fn exactly_once_without_qos_2_a_kept_session_and_one_task_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "connect.toml",
        r#"
[kafka]
bootstrap_servers = ["127.0.0.1:9"]

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "mqtt://127.0.0.1:1"
topics = ["commands"]
mqtt_topic = "cars/{key}/cmd"
exactly_once = true
tasks = 2
"#,
    );
    assert_validate_reports(
        &config,
        &[
            "connector[0].qos: must be 2 with exactly_once = true",
            "connector[0].clean_session: must be false with exactly_once = true",
            "connector[0].tasks: must be 1 with exactly_once = true",
        ],
    );
}

/// `exactly_once = true` with the memory offset store: refused, naming `offsets.store` (the state
/// would die with the process); the file store is accepted.
#[test]
fn exactly_once_with_the_memory_offset_store_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let table = r#"
[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "mqtt://127.0.0.1:1"
topics = ["commands"]
mqtt_topic = "cars/{key}/cmd"
qos = 2
clean_session = false
exactly_once = true
"#;
    let memory = format!(
        "[kafka]\nbootstrap_servers = [\"127.0.0.1:9\"]\n[offsets]\nstore = \"memory\"\n{table}"
    );
    let config = write(dir.path(), "memory.toml", &memory);
    assert_validate_reports(
        &config,
        &["offsets.store: connector commands: exactly_once = true needs a durable offset store"],
    );
    let file = format!("[kafka]\nbootstrap_servers = [\"127.0.0.1:9\"]\n[offsets]\nstore = \"file\"\npath = \"{}\"\n{table}", dir.path().join("offsets.json").display());
    let config = write(dir.path(), "file.toml", &file);
    let out = connect(&["validate", "--config", &config]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The sink reads at `read_committed`: commands of an aborted transaction (a crashed
/// producer's, aborted by the next instance's init) are never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_an_aborted_transaction_are_never_published() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("commands", 1, 1).await.unwrap();
    produce_commands(&client, 0..5).await;
    let timeout = Duration::from_secs(60);
    let mut crashed = TransactionalProducer::init(client.clone(), "ops-1", timeout).await.unwrap();
    let aborted =
        (0..3).map(|i| ProducerRecord::new("commands", format!("aborted-{i}")).with_key("car-7"));
    assert!(crashed.send(aborted.collect()).await.unwrap().iter().all(Result::is_ok));
    drop(crashed);
    // The next instance's init aborts the open transaction.
    let _next = TransactionalProducer::init(client.clone(), "ops-1", timeout).await.unwrap();
    produce_commands(&client, 5..10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "connect.toml", &sink_config(&mqtt, &tansu.bootstrap(), 10));
    let car = MqttSubscriber::connect(&mqtt.url(), "car-7", "cars/car-7/cmd", QoS::ExactlyOnce)
        .await
        .unwrap();
    let mut runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    wait_distinct(&car, &runner, 10, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runner.terminate(), Some(0));
    let got: Vec<String> =
        car.messages().iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    assert_eq!(got, (0..10).map(|i| format!("cmd-{i}")).collect::<Vec<_>>());
}
