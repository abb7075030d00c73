//! The five-minute tour: a fleet of cars publishes telemetry over MQTT into Kafka, and a command
//! service sends commands from Kafka back to each car over MQTT. Both directions run through the
//! same runner as `connect run` (an `mqtt-source` and an `mqtt-sink`). At the end, every message is
//! accounted for.
//!
//! With no brokers given, it starts an MQTT broker (rumqttd) and a Kafka-compatible broker (Tansu,
//! memory storage) inside this process: nothing to install.
//!
//! ```text
//! cargo run -p connector-examples --bin quickstart
//! cargo run -p connector-examples --bin quickstart -- --mqtt-url mqtt://host:1883 --kafka host:9092
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use connector_core::kafka::{FetchResult, KafkaClient, KafkaConfig, OffsetSpec, ProducerRecord};
use connector_core::runner::{run, ConnectFile};
use connector_core::{Error, Result};
use connector_examples::embedded::{EmbeddedKafka, EmbeddedMqtt, QuietMqttBrokerShutdown};
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A fleet of cars, MQTT <-> Kafka both ways, every message accounted for.
#[derive(Parser)]
#[command(name = "quickstart")]
struct Args {
    /// An MQTT broker to use instead of the embedded one (mqtt://host:port).
    #[arg(long)]
    mqtt_url: Option<String>,
    /// A Kafka bootstrap server to use instead of the embedded one (host:port).
    #[arg(long)]
    kafka: Option<String>,
    /// Number of cars.
    #[arg(long, default_value_t = 10)]
    cars: usize,
    /// How long the cars drive, in seconds.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Telemetry messages per car per second.
    #[arg(long, default_value_t = 25)]
    rate: u64,
}

const TELEMETRY_TOPIC: &str = "fleet.telemetry";
const COMMAND_TOPIC: &str = "fleet.commands";

fn config(mqtt_url: &str, kafka: &str) -> String {
    format!(
        r#"# The same file `connect run --config FILE` takes.
[kafka]
bootstrap_servers = ["{kafka}"]

[offsets]
store = "memory"          # a real deployment keeps them: store = "file" or "kafka"

[progress]
interval_secs = 2

[[connector]]             # telemetry in: MQTT -> Kafka
name = "fleet-telemetry"
type = "mqtt-source"
mqtt_url = "{mqtt_url}"
topics = ["fleet/+/telemetry"]
kafka_topic = "{TELEMETRY_TOPIC}"     # key = the MQTT topic: one car, one partition, in order

[[connector]]             # commands out: Kafka -> MQTT
name = "fleet-commands"
type = "mqtt-sink"
mqtt_url = "{mqtt_url}"
topics = ["{COMMAND_TOPIC}"]
mqtt_topic = "fleet/{{key}}/cmd"     # the record key (a car id) picks the car
"#
    )
}

fn mqtt_options(url: &str, client_id: &str) -> Result<MqttOptions> {
    let url = connector_mqtt_common::MqttUrl::parse(url)
        .map_err(|m| Error::config("--mqtt-url", m.to_string()))?;
    let mut o = MqttOptions::new(client_id, url.host, url.port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_inflight(100);
    Ok(o)
}

/// What one car saw.
#[derive(Default)]
struct CarLog {
    telemetry_acked: u64,
    commands: Vec<String>,
}

/// A car: subscribes to its command topic, publishes telemetry at `rate`/s for `seconds`.
async fn drive(
    url: String,
    car: String,
    rate: u64,
    seconds: u64,
    log: Arc<Mutex<CarLog>>,
) -> Result<()> {
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(&url, &car)?, 10_000);
    let events = {
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::PubAck(_)) => log.lock().telemetry_acked += 1,
                    Event::Incoming(Packet::Publish(p)) => {
                        log.lock().commands.push(format!(
                            "{}|{}",
                            p.topic,
                            String::from_utf8_lossy(&p.payload)
                        ));
                    }
                    _ => {}
                }
            }
        })
    };
    client
        .subscribe(format!("fleet/{car}/cmd"), QoS::AtLeastOnce)
        .await
        .map_err(|e| Error::fatal("car subscribe").with_source(e))?;
    let total = rate * seconds;
    let pause = Duration::from_millis(1000 / rate.max(1));
    for seq in 0..total {
        let payload =
            format!(r#"{{"car":"{car}","seq":{seq},"speed_kmh":{}}}"#, 40 + (seq * 7) % 80);
        client
            .publish(format!("fleet/{car}/telemetry"), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| Error::fatal("car publish").with_source(e))?;
        tokio::time::sleep(pause).await;
    }
    // Keep listening for commands; the event loop runs until the process ends.
    drop(events);
    Ok(())
}

/// Every record of `topic`, all partitions.
async fn read_all(client: &KafkaClient, topic: &str) -> Result<Vec<connector_core::SinkRecord>> {
    let Some(meta) = client.refresh_topic(topic).await? else { return Ok(vec![]) };
    let mut out = Vec::new();
    for p in 0..meta.partition_count() {
        let end = client.end_offset(topic, p).await?;
        let mut offset = client.list_offset(topic, p, OffsetSpec::Earliest).await?;
        while offset < end {
            match client.fetch(topic, p, offset, Duration::from_millis(50)).await? {
                FetchResult::Records(f) => {
                    out.extend(f.records.into_iter().filter(|r| r.offset < end));
                    offset = f.next_offset.max(offset + 1);
                }
                FetchResult::OffsetOutOfRange => break,
            }
        }
    }
    Ok(out)
}

fn telemetry_seen(records: &[connector_core::SinkRecord]) -> (BTreeSet<String>, usize) {
    let values: Vec<String> = records
        .iter()
        .filter_map(|r| r.value.as_ref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| v.contains("\"seq\""))
        .collect();
    let distinct: BTreeSet<String> = values.iter().cloned().collect();
    let duplicates = values.len() - distinct.len();
    (distinct, duplicates)
}

async fn quickstart(args: Args) -> Result<bool> {
    let started = Instant::now();
    let (_mqtt, mqtt_url) = match &args.mqtt_url {
        Some(url) => (None, url.clone()),
        None => {
            let broker = EmbeddedMqtt::start()?;
            let url = broker.url();
            println!("started an MQTT broker (rumqttd) in this process at {url}");
            (Some(broker), url)
        }
    };
    let (_kafka, bootstrap) = match &args.kafka {
        Some(b) => (None, b.clone()),
        None => {
            let broker = EmbeddedKafka::start()?;
            let b = broker.bootstrap();
            println!(
                "started a Kafka-compatible broker (Tansu, memory storage) in this process at {b}"
            );
            (Some(broker), b)
        }
    };

    let text = config(&mqtt_url, &bootstrap);
    println!("\nrunning these connectors:\n\n{text}");
    let file =
        ConnectFile::parse(&text, &connector_runner::builtin_registry()).map_err(Error::from)?;
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(run(file, shutdown.clone()));

    // The source must be subscribed before the cars drive, or MQTT has nobody to deliver to.
    let kafka = KafkaClient::connect(KafkaConfig::new([bootstrap.clone()])).await?;
    let (probe, mut probe_loop) =
        AsyncClient::new(mqtt_options(&mqtt_url, "quickstart-probe")?, 100);
    tokio::spawn(async move { while probe_loop.poll().await.is_ok() {} });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = probe.publish("fleet/probe/telemetry", QoS::AtLeastOnce, false, "probe").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !read_all(&kafka, TELEMETRY_TOPIC).await?.is_empty() {
            break;
        }
        if runner.is_finished() || Instant::now() > deadline {
            shutdown.cancel();
            return Err(match runner.await {
                Ok(Err(e)) => e,
                _ => Error::fatal("the connectors did not come up within 30 s"),
            });
        }
    }

    let cars: Vec<String> = (0..args.cars).map(|i| format!("car-{i}")).collect();
    println!("{} cars drive for {} s, {} telemetry messages per second each; commands go out every second\n", cars.len(), args.seconds, args.rate);
    let logs: BTreeMap<String, Arc<Mutex<CarLog>>> =
        cars.iter().map(|c| (c.clone(), Arc::default())).collect();
    let mut driving = Vec::new();
    for (car, log) in &logs {
        driving.push(tokio::spawn(drive(
            mqtt_url.clone(),
            car.clone(),
            args.rate,
            args.seconds,
            Arc::clone(log),
        )));
    }
    // The command service: one command per car per second, keyed by the car.
    let mut commands_sent = 0usize;
    for tick in 0..args.seconds {
        let batch: Vec<ProducerRecord> = cars
            .iter()
            .map(|car| {
                ProducerRecord::new(COMMAND_TOPIC, format!("{car}:set-speed-limit:{}", 50 + tick))
                    .with_key(car.clone())
            })
            .collect();
        commands_sent += batch.len();
        kafka.produce(batch).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for d in driving {
        d.await.map_err(|e| Error::fatal("a car crashed").with_source(e))??;
    }

    // Wait for everything to arrive (bounded), then stop the connectors gracefully.
    let telemetry_sent: u64 = logs.values().map(|l| l.lock().telemetry_acked).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (distinct, _) = telemetry_seen(&read_all(&kafka, TELEMETRY_TOPIC).await?);
        let commands_got: usize = logs.values().map(|l| l.lock().commands.len()).sum();
        if (distinct.len() as u64 >= telemetry_sent && commands_got >= commands_sent)
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shutdown.cancel();
    runner.await.map_err(|e| Error::fatal("runner").with_source(e))??;

    // The account.
    let (distinct, telemetry_duplicates) =
        telemetry_seen(&read_all(&kafka, TELEMETRY_TOPIC).await?);
    let mut telemetry_missing = 0u64;
    for car in &cars {
        for seq in 0..args.rate * args.seconds {
            let wanted = format!(r#""car":"{car}","seq":{seq},"#);
            if !distinct.iter().any(|v| v.contains(&wanted)) {
                telemetry_missing += 1;
            }
        }
    }
    let mut commands_received = 0usize;
    let mut misrouted = 0usize;
    let mut command_duplicates = 0usize;
    for (car, log) in &logs {
        let log = log.lock();
        let mut seen = BTreeSet::new();
        for c in &log.commands {
            let (topic, payload) = c.split_once('|').unwrap_or_default();
            if topic != format!("fleet/{car}/cmd") || !payload.starts_with(&format!("{car}:")) {
                misrouted += 1;
            }
            if !seen.insert(payload.to_owned()) {
                command_duplicates += 1;
            }
        }
        commands_received += seen.len();
    }
    let commands_missing = commands_sent.saturating_sub(commands_received);

    println!("\n=== what flowed ({:.1} s) ===", started.elapsed().as_secs_f64());
    println!(
        "telemetry  cars -> MQTT -> Kafka ({TELEMETRY_TOPIC}): {} published, {} in Kafka, {telemetry_missing} missing, {telemetry_duplicates} duplicates",
        args.rate * args.seconds * cars.len() as u64,
        distinct.len()
    );
    println!(
        "commands   Kafka ({COMMAND_TOPIC}) -> MQTT -> cars: {commands_sent} sent, {commands_received} received by their car, {commands_missing} missing, {misrouted} on a wrong topic, {command_duplicates} duplicates"
    );
    let ok = telemetry_missing == 0 && commands_missing == 0 && misrouted == 0;
    if ok {
        println!("every message was accounted for.");
    } else {
        println!("NOT every message was accounted for: see above.");
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,connect::progress=info"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .with(filter)
        .with(QuietMqttBrokerShutdown)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quickstart: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(quickstart(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quickstart: {}", e.report());
            ExitCode::FAILURE
        }
    }
}
