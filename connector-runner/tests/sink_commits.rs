//! Offsets and shutdown through the `connect` runner process, on real brokers: `start = "latest"`
//! is saved before the first record so a crash skips nothing; sink commits follow MQTT
//! acknowledgements so a SIGKILL repeats at most the in-flight window; SIGTERM with Kafka
//! unreachable exits within the shutdown timeout, and a second signal exits at once.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_testkit::{init_tracing, Mosquitto, MqttSubscriber, Tansu, TansuStorage};
use rumqttc::QoS;

mod support;

use support::{write, Runner};

fn sink_config(mqtt: &Mosquitto, bootstrap: &str, offsets: &str, extra: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{bootstrap}"]

[offsets]
{offsets}

[[connector]]
name = "commands"
type = "mqtt-sink"
mqtt_url = "{}"
topics = ["commands"]
mqtt_topic = "cars/{{key}}/cmd"
{extra}
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

async fn wait_log(runner: &Runner, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !runner.log().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(runner: &Runner, sig: &str) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(runner.child.id().to_string())
        .status()
        .unwrap();
}

/// Waits up to `timeout` for the runner to exit: its exit code, or `None` if it did not.
async fn exit_within(runner: &mut Runner, timeout: Duration) -> Option<Option<i32>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = runner.child.try_wait().unwrap() {
            return Some(status.code());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Item 3: the resolved `latest` start is saved before the task gets a record. A crash before
/// the first commit used to leave nothing saved, and the restart resolved `latest` again,
/// skipping everything written in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latest_is_saved_before_the_first_record_so_a_crash_skips_nothing() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    produce_commands(&client, 0..5).await; // before the sink ever ran: skipped by `latest`
    let dir = tempfile::tempdir().unwrap();
    let offsets = format!("store = \"file\"\npath = \"{}\"", dir.path().join("o.json").display());
    let config = write(
        dir.path(),
        "connect.toml",
        &sink_config(
            &mqtt,
            &tansu.bootstrap(),
            &offsets,
            "start = \"latest\"\nruntime = { commit_interval_ms = 600000 }",
        ),
    );
    let car = MqttSubscriber::connect(&mqtt.url(), "car-7", "cars/car-7/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    let log = dir.path().join("connect.log");
    let mut runner = Runner::start(&config, &log, &[]);
    wait_log(&runner, "MQTT sink task started", Duration::from_secs(20)).await;
    runner.kill();

    produce_commands(&client, 5..25).await; // while the sink is down
    let runner = Runner::start(&config, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while car.count() < 20 {
        assert!(
            Instant::now() < deadline,
            "{} of the 20 commands written during the crash arrived; log:\n{}",
            car.count(),
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<String> =
        car.messages().iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    assert_eq!(got, (5..25).map(|i| format!("cmd-{i}")).collect::<Vec<_>>());
}

/// Item 5: commits follow acknowledgements, so each SIGKILL repeats at most the in-flight window
/// plus one `put`'s records plus what was acknowledged during about two offset saves, not
/// everything since the last `commit_interval_ms` (left at its 5 s default here, longer than each
/// run lives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_during_a_command_stream_repeat_at_most_the_window_per_kill() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let (n, kills, window) = (6_000usize, 5usize, 100usize);
    produce_commands(&client, 0..n).await;
    let dir = tempfile::tempdir().unwrap();
    // The Kafka offset store: a save is one produce to Tansu, not two fsyncs of a disk that
    // other builds keep busy, so one save's worth stays small and steady.
    let offsets = "store = \"kafka\"".to_owned();
    let config = write(
        dir.path(),
        "connect.toml",
        &sink_config(
            &mqtt,
            &tansu.bootstrap(),
            &offsets,
            &format!("inflight = {window}\nruntime = {{ max_put_records = {window} }}"),
        ),
    );
    let car = MqttSubscriber::connect(&mqtt.url(), "car-7", "cars/car-7/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    let log = dir.path().join("connect.log");
    let started = Instant::now();
    for k in 1..=kills {
        let mut runner = Runner::start(&config, &log, &[]);
        let target = k * n / (kills + 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally(&car).len() < target {
            assert!(Instant::now() < deadline, "run {k} stalled; log:\n{}", runner.log());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runner.kill();
    }
    let mut runner = Runner::start(&config, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally(&car).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} commands; log:\n{}",
            tally(&car).len(),
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(runner.terminate(), Some(0));
    let seen = tally(&car);
    let received: usize = seen.values().sum();
    let repeats = received - seen.len();
    let per_kill = repeats as f64 / kills as f64;
    let max = seen.values().copied().max().unwrap_or(0);
    println!(
        "{n} commands, {kills} SIGKILLs, window {window}: {received} received, {repeats} repeats \
         ({per_kill:.0} per kill), most deliveries of one command {max}, {:?}",
        started.elapsed()
    );
    assert_eq!(seen.len(), n, "nothing lost");
    // The bound: the window and one put's records (both 100 here), plus what was acknowledged
    // since the last completed save started: about two saves' worth (the one in flight and the
    // one before it), ~200 each at ~5,000 commands/s with fsync'd saves on a busy box. Saves only
    // every commit_interval_ms (5 s, longer than each run here) repeat everything since the start.
    assert!(
        per_kill <= (window + window + 400) as f64,
        "{per_kill:.0} repeats per kill with a window of {window}"
    );
}

fn source_config(bootstrap: &str, input: &std::path::Path, shutdown_timeout_ms: u64) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = ["{bootstrap}"]
request_timeout_ms = 2000
connect_timeout_ms = 500

[offsets]
store = "kafka"

[[connector]]
name = "lines"
type = "file-source"
path = "{}"
topic = "lines"
runtime = {{ shutdown_timeout_ms = {shutdown_timeout_ms}, offset_flush_interval_ms = 600000 }}
"#,
        input.display()
    )
}

fn append(path: &std::path::Path, lines: std::ops::Range<usize>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for i in lines {
        writeln!(f, "line-{i}").unwrap();
    }
}

/// Starts a file-source runner, waits until its lines are in Kafka (acknowledged, offsets not
/// yet saved: the flush interval is long), then cuts Kafka off and appends lines that stay in
/// flight.
async fn running_with_kafka_cut(
    config: &str,
    log: &std::path::Path,
    input: &std::path::Path,
    client: &KafkaClient,
    proxy: &connector_testkit::FaultProxy,
    round: usize,
) -> Runner {
    proxy.heal();
    append(input, round * 100..round * 100 + 10);
    let runner = Runner::start(config, log, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while connector_testkit::kafka::count(client, "lines").await.unwrap() < (round * 10 + 10) as u64
    {
        assert!(Instant::now() < deadline, "lines never reached Kafka; log:\n{}", runner.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut();
    append(input, round * 100 + 10..round * 100 + 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    runner
}

/// Item 10: with Kafka unreachable, every drain step (in-flight records, the offset commit to the
/// Kafka offsets topic) gives up at the shutdown timeout, so SIGTERM exits; a second SIGTERM
/// exits at once with a non-zero code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_kafka_unreachable_exits_within_the_timeout_and_a_second_signal_at_once() {
    init_tracing();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");

    let short = write(dir.path(), "short.toml", &source_config(&proxy.host_port(), &input, 1_500));
    let log = dir.path().join("first.log");
    let mut runner = running_with_kafka_cut(&short, &log, &input, &client, &proxy, 0).await;
    let stopping = Instant::now();
    signal(&runner, "TERM");
    let code = exit_within(&mut runner, Duration::from_secs(15)).await;
    let took = stopping.elapsed();
    assert!(code.is_some(), "still running 15 s after SIGTERM; log:\n{}", runner.log());
    println!("SIGTERM with Kafka cut: exit {code:?} after {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}; log:\n{}", runner.log());

    let long = write(dir.path(), "long.toml", &source_config(&proxy.host_port(), &input, 60_000));
    let log = dir.path().join("second.log");
    let mut runner = running_with_kafka_cut(&long, &log, &input, &client, &proxy, 1).await;
    signal(&runner, "TERM");
    wait_log(&runner, "draining", Duration::from_secs(5)).await;
    let second = Instant::now();
    signal(&runner, "TERM");
    let code = exit_within(&mut runner, Duration::from_secs(3)).await;
    println!("second SIGTERM: exit {code:?} after {:?}", second.elapsed());
    assert_eq!(code, Some(Some(130)), "log:\n{}", runner.log());
}
