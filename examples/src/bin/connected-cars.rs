//! Connected cars: a fleet of simulated cars (10,000 by default: logical devices multiplexed over a
//! few MQTT connections, as a telematics gateway does) publishes telemetry on `cars/<vin>/telemetry`
//! into Kafka through an `mqtt-source`; a command service writes one command per car to Kafka, and
//! an `mqtt-sink` publishes each on `cars/<vin>/cmd` with an MQTT 5 message expiry, so that a stale
//! command never reaches a car:
//!
//! - the online cars get theirs at once;
//! - cars parked offline (a persistent session the broker keeps, the car disconnected) when their
//!   command is sent: those back before the expiry get it from their session, those back after it
//!   must not (the broker discards it);
//! - commands already older than the expiry when the sink reads them from Kafka (a backlog) are
//!   not published at all: the sink drops them.
//!
//! It prints a summary table and the rates, and exits non-zero when a check fails: every telemetry
//! message in Kafka, every command of an online car (and of a car back in time) delivered, no
//! expired command delivered.
//!
//! With no brokers given it starts them: Kafka is Tansu (memory storage) in this process; MQTT is
//! the installed Mosquitto (started on a free port the way the tests do) when there is one, else
//! rumqttd in this process (`--mqtt-broker embedded|mosquitto` chooses). Both honour MQTT 5 message
//! expiry. rumqttd 0.20 keeps one log per subscription filter and its router slows down with
//! thousands of them: past ~2,000 cars (one command topic each) it delivers the commands more
//! slowly than they expire, so the 10,000-car default applies on Mosquitto and the embedded broker
//! runs 2,000 cars unless `--cars` says otherwise. It also panics when it
//! routes a message published with MQTT 5 properties to an MQTT 3.1.1 subscriber, so every client
//! here that receives commands speaks MQTT 5.
//!
//! ```text
//! cargo run -p connector-examples --bin connected-cars
//! cargo run -p connector-examples --bin connected-cars -- --cars 200 --offline 20 --seconds 3
//! cargo run -p connector-examples --bin connected-cars -- --mqtt-broker embedded --cars 2000
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use connector_core::kafka::{FetchResult, KafkaClient, KafkaConfig, OffsetSpec, ProducerRecord};
use connector_core::runner::{run, ConnectFile};
use connector_core::{Error, Result, Timestamp};
use connector_examples::embedded::{EmbeddedKafka, EmbeddedMqtt, QuietMqttBrokerShutdown};
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Which MQTT broker to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Broker {
    /// Mosquitto when it is installed, else the embedded rumqttd.
    Auto,
    /// rumqttd in this process, with an MQTT 5 listener (nothing to install).
    Embedded,
    /// The installed Mosquitto, started on a free port (the testkit finds it).
    Mosquitto,
}

/// A fleet of cars: telemetry in, commands out with MQTT 5 message expiry.
#[derive(Parser)]
#[command(name = "connected-cars")]
struct Args {
    /// The MQTT broker to start (ignored with --mqtt-url).
    #[arg(long, value_enum, default_value_t = Broker::Auto)]
    mqtt_broker: Broker,
    /// An MQTT broker to use instead (mqtt://host:port); it must speak MQTT 5 and honour message
    /// expiry.
    #[arg(long)]
    mqtt_url: Option<String>,
    /// A Kafka bootstrap server to use instead of the embedded one (host:port).
    #[arg(long)]
    kafka: Option<String>,
    /// Number of cars (default 10,000; 2,000 on the embedded rumqttd, which delivers per-car
    /// commands slowly past that).
    #[arg(long)]
    cars: Option<usize>,
    /// MQTT connections the online cars are multiplexed over (telematics gateways).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Cars parked offline when the commands go out (each its own persistent MQTT 5 session):
    /// half come back before the expiry, half after it.
    #[arg(long, default_value_t = 100)]
    offline: usize,
    /// Online cars that also have a command already older than the expiry waiting in Kafka.
    #[arg(long, default_value_t = 100)]
    stale: usize,
    /// Telemetry messages per car per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// How long the cars drive, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds a command stays valid (the sink's `message_expiry_secs`).
    #[arg(long, default_value_t = 6)]
    expiry_secs: u32,
}

const TELEMETRY_TOPIC: &str = "cars.telemetry";
const COMMAND_TOPIC: &str = "cars.commands";

fn config(mqtt_url: &str, kafka: &str, expiry_secs: u32) -> String {
    format!(
        r#"# The same file `connect run --config FILE` takes.
[kafka]
bootstrap_servers = ["{kafka}"]

[offsets]
store = "memory"          # a real deployment keeps them: store = "file" or "kafka"

[[connector]]             # telemetry in: MQTT -> Kafka
name = "cars-telemetry"
type = "mqtt-source"
mqtt_url = "{mqtt_url}"
mqtt_version = "5"
topics = ["cars/+/telemetry"]
qos = 1                   # at least once: acked to the broker only after Kafka acked
kafka_topic = "{TELEMETRY_TOPIC}"    # key = the MQTT topic: one car, one partition, in order

[[connector]]             # commands out: Kafka -> MQTT, never stale
name = "cars-commands"
type = "mqtt-sink"
mqtt_url = "{mqtt_url}"
mqtt_version = "5"
topics = ["{COMMAND_TOPIC}"]
mqtt_topic = "cars/{{key}}/cmd"      # the record key (a VIN) picks the car
qos = 1
message_expiry_secs = {expiry_secs}      # counted from the record's Kafka timestamp
"#
    )
}

fn host_port(url: &str) -> Result<(String, u16)> {
    let url = connector_mqtt_common::MqttUrl::parse(url)
        .map_err(|m| Error::config("--mqtt-url", m.to_string()))?;
    Ok((url.host, url.port))
}

fn vin(i: usize) -> String {
    format!("WCAR{i:013}")
}

fn telemetry(vin: &str, seq: u64) -> String {
    format!(
        r#"{{"vin":"{vin}","seq":{seq},"speed_kmh":{},"soc_pct":{}}}"#,
        40 + (seq * 7) % 80,
        90 - seq % 50
    )
}

/// Commands received, per VIN, by whoever received them (a gateway or the car's own session).
type Inbox = Arc<Mutex<HashMap<String, Vec<String>>>>;

fn record_command(inbox: &Inbox, topic: &str, payload: &[u8]) {
    let vin = topic.strip_prefix("cars/").and_then(|t| t.strip_suffix("/cmd")).unwrap_or(topic);
    inbox
        .lock()
        .entry(vin.to_owned())
        .or_default()
        .push(String::from_utf8_lossy(payload).into_owned());
}

/// A telematics gateway: one MQTT 5 connection carrying many cars' telemetry and commands.
struct Gateway {
    client: rumqttc::v5::AsyncClient,
    cars: Vec<String>,
    acked: Arc<AtomicU64>,
    subacks: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Gateway {
    async fn connect(url: &str, id: usize, cars: Vec<String>, inbox: Inbox) -> Result<Self> {
        use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5};
        use rumqttc::v5::Event as E5;
        let (host, port) = host_port(url)?;
        let mut o = rumqttc::v5::MqttOptions::new(format!("gateway-{id}"), host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_outgoing_inflight_upper_limit(1000);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let subacks = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        {
            let (acked, subacks, failure) =
                (Arc::clone(&acked), Arc::clone(&subacks), Arc::clone(&failure));
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(E5::Incoming(P5::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(E5::Incoming(P5::SubAck(_))) => {
                            subacks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(E5::Incoming(P5::Publish(p))) => {
                            record_command(&inbox, &String::from_utf8_lossy(&p.topic), &p.payload);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            *failure.lock() = Some(e.to_string());
                            break;
                        }
                    }
                }
            });
        }
        let gateway = Self { client, cars, acked, subacks, failure };
        // Subscribe to each car's own command topic, 500 filters per SUBSCRIBE.
        let chunks: Vec<Vec<Filter>> = gateway
            .cars
            .chunks(500)
            .map(|c| {
                c.iter().map(|v| Filter::new(format!("cars/{v}/cmd"), QoS5::AtLeastOnce)).collect()
            })
            .collect();
        let n = chunks.len() as u64;
        for chunk in chunks {
            gateway
                .client
                .subscribe_many(chunk)
                .await
                .map_err(|e| Error::fatal("gateway subscribe").with_source(e))?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while gateway.subacks.load(Ordering::Relaxed) < n {
            if let Some(f) = gateway.failure.lock().clone() {
                return Err(Error::fatal(format!("gateway-{id}: {f}")));
            }
            if Instant::now() > deadline {
                return Err(Error::fatal(format!("gateway-{id}: no SUBACK within 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(gateway)
    }

    /// Publishes `rounds` telemetry messages per car, one round every `period`; returns how many,
    /// and when the last was handed to the client.
    async fn drive(
        client: rumqttc::v5::AsyncClient,
        cars: Vec<String>,
        rounds: u64,
        period: Duration,
    ) -> Result<(u64, Instant)> {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0;
        for seq in 0..rounds {
            tick.tick().await;
            for v in &cars {
                client
                    .publish(
                        format!("cars/{v}/telemetry"),
                        QoS5::AtLeastOnce,
                        false,
                        telemetry(v, seq),
                    )
                    .await
                    .map_err(|e| Error::fatal("gateway publish").with_source(e))?;
                sent += 1;
            }
        }
        Ok((sent, Instant::now()))
    }
}

/// A car with its own persistent MQTT 5 session (it keeps its subscription and queued commands
/// while the car is away).
struct ParkedCar {
    vin: String,
    back_late: bool,
}

fn car_options(url: &str, vin: &str) -> Result<rumqttc::v5::MqttOptions> {
    let (host, port) = host_port(url)?;
    let mut o = rumqttc::v5::MqttOptions::new(vin, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    Ok(o)
}

/// Connects the car's session, subscribes to its command topic, and disconnects.
async fn park(url: String, vin: String) -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::Event as E5;
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(car_options(&url, &vin)?, 10);
    client
        .subscribe(format!("cars/{vin}/cmd"), QoS5::AtLeastOnce)
        .await
        .map_err(|e| Error::fatal("car subscribe").with_source(e))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| Error::fatal(format!("car {vin}: no SUBACK within 20 s")))?;
        match event {
            Ok(E5::Incoming(P5::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(Error::fatal(format!("car {vin}: {e}"))),
        }
    }
    client.disconnect().await.map_err(|e| Error::fatal("car disconnect").with_source(e))?;
    // Until the DISCONNECT is out and the broker closed the connection.
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
        if matches!(event, E5::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    Ok(())
}

/// What a returning car found: whether the broker had kept its session, and the commands that
/// were waiting for it (everything before the marker the example publishes once it is back).
struct Return {
    session_present: bool,
    commands: Vec<String>,
}

async fn come_back(url: String, vin: String, marker: AsyncClient) -> Result<Return> {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::Event as E5;
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(car_options(&url, &vin)?, 10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut back = Return { session_present: false, commands: Vec::new() };
    let marker_text = format!("marker:{vin}");
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| Error::fatal(format!("car {vin}: no marker within 20 s of its return")))?;
        match event {
            Ok(E5::Incoming(P5::ConnAck(ack))) => {
                back.session_present = ack.session_present;
                // Anything the session held is delivered before a message published from now on
                // to the same topic: once the marker arrives, nothing else is coming.
                marker
                    .publish(
                        format!("cars/{vin}/cmd"),
                        QoS::AtLeastOnce,
                        false,
                        marker_text.clone(),
                    )
                    .await
                    .map_err(|e| Error::fatal("marker publish").with_source(e))?;
            }
            Ok(E5::Incoming(P5::Publish(p))) => {
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                if text == marker_text {
                    break;
                }
                back.commands.push(text);
            }
            Ok(_) => {}
            Err(e) => return Err(Error::fatal(format!("car {vin}: {e}"))),
        }
    }
    let _ = client.disconnect().await;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
        if matches!(event, E5::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    Ok(back)
}

/// Records in `topic` (sum over partitions of end - earliest offset).
async fn count(client: &KafkaClient, topic: &str) -> Result<u64> {
    let Some(meta) = client.refresh_topic(topic).await? else { return Ok(0) };
    let mut n = 0;
    for p in 0..meta.partition_count() {
        let end = client.end_offset(topic, p).await?;
        let start = client.list_offset(topic, p, OffsetSpec::Earliest).await?;
        n += u64::try_from(end - start).unwrap_or(0);
    }
    Ok(n)
}

/// Every value of `topic`, all partitions.
async fn read_values(client: &KafkaClient, topic: &str) -> Result<Vec<bytes::Bytes>> {
    let Some(meta) = client.refresh_topic(topic).await? else { return Ok(vec![]) };
    let mut out = Vec::new();
    for p in 0..meta.partition_count() {
        let end = client.end_offset(topic, p).await?;
        let mut offset = client.list_offset(topic, p, OffsetSpec::Earliest).await?;
        while offset < end {
            match client.fetch(topic, p, offset, Duration::from_millis(50)).await? {
                FetchResult::Records(f) => {
                    out.extend(
                        f.records.into_iter().filter(|r| r.offset < end).filter_map(|r| r.value),
                    );
                    offset = f.next_offset.max(offset + 1);
                }
                FetchResult::OffsetOutOfRange => break,
            }
        }
    }
    Ok(out)
}

fn command(vin: &str, id: &str, limit: u32) -> String {
    format!(r#"{{"vin":"{vin}","id":"{id}","cmd":"set-charge-limit","pct":{limit}}}"#)
}

fn per_sec(n: u64, d: Duration) -> String {
    let secs = d.as_secs_f64().max(1e-3);
    let r = n as f64 / secs;
    // 12345.6 -> "12,346"
    let whole = r.round() as u64;
    let s = whole.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct MqttBrokers {
    /// URL for MQTT 3.1.1 clients (the example's control client: probe, markers).
    url: String,
    /// URL for MQTT 5 clients (source, sink, gateways, parked cars). rumqttd 0.20 panics (its
    /// router thread) when it routes a message published with MQTT 5 properties, as the sink's
    /// message expiry, to an MQTT 3.1.1 subscriber: everyone who receives commands speaks 5.
    url5: String,
    name: String,
    _embedded: Option<EmbeddedMqtt>,
    _mosquitto: Option<connector_testkit::Mosquitto>,
}

async fn start_mqtt(args: &Args) -> Result<MqttBrokers> {
    if let Some(url) = &args.mqtt_url {
        return Ok(MqttBrokers {
            url: url.clone(),
            url5: url.clone(),
            name: format!("the MQTT broker at {url}"),
            _embedded: None,
            _mosquitto: None,
        });
    }
    let broker = match args.mqtt_broker {
        Broker::Auto if connector_testkit::Mosquitto::binary().is_ok() => Broker::Mosquitto,
        Broker::Auto => {
            println!("Mosquitto is not installed: running on the embedded rumqttd, which delivers per-car commands slowly past ~2,000 cars (so 2,000 cars unless --cars says otherwise)");
            Broker::Embedded
        }
        other => other,
    };
    match broker {
        Broker::Auto | Broker::Embedded => {
            let broker = EmbeddedMqtt::start_with_mqtt5()?;
            let url = broker.url();
            let url5 = broker
                .url_v5()
                .ok_or_else(|| Error::fatal("the embedded broker has no MQTT 5 listener"))?;
            Ok(MqttBrokers {
                name: format!("rumqttd 0.20 in this process (MQTT 3.1.1 at {url}, MQTT 5 at {url5}; it drops a message whose expiry passed while it waited)"),
                url,
                url5,
                _embedded: Some(broker),
                _mosquitto: None,
            })
        }
        Broker::Mosquitto => {
            let options = connector_testkit::MosquittoOptions::default();
            let (inflight, queued) = (options.max_inflight_messages, options.max_queued_messages);
            let broker = connector_testkit::Mosquitto::start_with(options).await.map_err(|e| {
                Error::fatal("cannot start Mosquitto (--mqtt-broker mosquitto)").with_source(e)
            })?;
            let url = broker.url();
            Ok(MqttBrokers {
                name: format!("Mosquitto (installed) at {url}, max_inflight_messages {inflight}, max_queued_messages {queued} (the embedded rumqttd honours message expiry too, but delivers per-car commands slowly past ~2,000 cars: --mqtt-broker embedded)"),
                url5: url.clone(),
                url,
                _embedded: None,
                _mosquitto: Some(broker),
            })
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn connected_cars(args: Args) -> Result<bool> {
    let started = Instant::now();
    let mqtt = start_mqtt(&args).await?;
    let cars = args.cars.unwrap_or(if mqtt._embedded.is_some() { 2_000 } else { 10_000 });
    if args.offline > cars || args.connections == 0 || args.rate <= 0.0 || args.expiry_secs == 0 {
        return Err(Error::config(
            "arguments",
            "need --offline <= --cars, --connections >= 1, --rate > 0, --expiry-secs >= 1",
        ));
    }
    println!("MQTT broker: {}", mqtt.name);
    let (_kafka, bootstrap) = match &args.kafka {
        Some(b) => (None, b.clone()),
        None => {
            let broker = EmbeddedKafka::start()?;
            let b = broker.bootstrap();
            println!("Kafka: Tansu (memory storage) in this process at {b}");
            (Some(broker), b)
        }
    };

    let text = config(&mqtt.url5, &bootstrap, args.expiry_secs);
    println!("\nrunning these connectors:\n\n{text}");
    let file =
        ConnectFile::parse(&text, &connector_runner::builtin_registry()).map_err(Error::from)?;
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(run(file, shutdown.clone()));

    // The source must be subscribed before the cars drive: probe until a message lands in Kafka.
    let kafka = KafkaClient::connect(KafkaConfig::new([bootstrap.clone()])).await?;
    let (host, port) = host_port(&mqtt.url)?;
    let mut o = MqttOptions::new("cars-control", host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (control, mut control_loop) = AsyncClient::new(o, 1000);
    tokio::spawn(async move { while control_loop.poll().await.is_ok() {} });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = control.publish("cars/PROBE/telemetry", QoS::AtLeastOnce, false, "probe").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if count(&kafka, TELEMETRY_TOPIC).await? > 0 {
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
    let probes = count(&kafka, TELEMETRY_TOPIC).await?;

    // The fleet: the first `offline` cars are parked, the rest ride the gateways.
    let vins: Vec<String> = (0..cars).map(vin).collect();
    let (parked_vins, online_vins) = vins.split_at(args.offline);
    let parked: Vec<ParkedCar> = parked_vins
        .iter()
        .enumerate()
        .map(|(i, v)| ParkedCar { vin: v.clone(), back_late: i % 2 == 1 })
        .collect();
    let inbox: Inbox = Arc::default();
    // One car at a time: rumqttd 0.20 sometimes drops an MQTT 5 connection at once when many
    // persistent sessions connect together.
    for car in &parked {
        park(mqtt.url5.clone(), car.vin.clone()).await?;
    }
    let gateways_n = args.connections.min(online_vins.len()).max(1);
    let mut gateways = Vec::new();
    for g in 0..gateways_n {
        let cars: Vec<String> = online_vins.iter().skip(g).step_by(gateways_n).cloned().collect();
        gateways.push(Gateway::connect(&mqtt.url5, g, cars, Arc::clone(&inbox)).await?);
    }
    let rounds = ((args.rate * args.seconds as f64).round() as u64).max(1);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    println!(
        "{} cars ({} online over {gateways_n} MQTT connections, {} parked offline with their own MQTT 5 session), {rounds} telemetry messages per online car over {} s\n",
        cars,
        online_vins.len(),
        parked.len(),
        args.seconds
    );
    let drive_started = Instant::now();
    let mut driving = JoinSet::new();
    for g in &gateways {
        driving.spawn(Gateway::drive(g.client.clone(), g.cars.clone(), rounds, period));
    }
    // Telemetry: until Kafka holds as many records as the cars will send (bounded), and when.
    let telemetry_expected = rounds * online_vins.len() as u64;
    let in_kafka = {
        let kafka = kafka.clone();
        let deadline = drive_started + Duration::from_secs(args.seconds + 60);
        tokio::spawn(async move {
            while count(&kafka, TELEMETRY_TOPIC).await? < telemetry_expected + probes
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, Error>(drive_started.elapsed())
        })
    };

    // The command service, one second into the drive: a fresh command per car, and for `stale`
    // online cars first a command that has waited in Kafka longer than the expiry.
    tokio::time::sleep(Duration::from_secs(1).min(Duration::from_secs(args.seconds))).await;
    let stale_n = args.stale.min(online_vins.len());
    let old = Timestamp::from_millis(
        Timestamp::now().as_millis() - (i64::from(args.expiry_secs) + 30) * 1000,
    );
    let mut batch: Vec<ProducerRecord> = Vec::new();
    for v in online_vins.iter().take(stale_n) {
        batch.push(
            ProducerRecord::new(COMMAND_TOPIC, command(v, "stale", 60))
                .with_key(v.clone())
                .with_timestamp(old),
        );
    }
    for v in &vins {
        batch.push(ProducerRecord::new(COMMAND_TOPIC, command(v, "fresh", 80)).with_key(v.clone()));
    }
    let commands_sent = batch.len() as u64;
    let commands_started = Instant::now();
    for chunk in batch.chunks(1000) {
        kafka.produce(chunk.to_vec()).await?;
    }
    let expires_at = commands_started + Duration::from_secs(u64::from(args.expiry_secs));

    // Online cars: wait (bounded) for every fresh command.
    let fresh_arrived = |inbox: &Inbox, vins: &[String]| {
        let inbox = inbox.lock();
        vins.iter()
            .filter(|v| {
                inbox.get(*v).is_some_and(|c| c.iter().any(|c| c.contains(r#""id":"fresh""#)))
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while fresh_arrived(&inbox, online_vins) < online_vins.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let commands_took = commands_started.elapsed();

    // Parked cars: the first half come back now (within the expiry), the rest after it.
    let mut returns: HashMap<String, Return> = HashMap::new();
    let soon_late = Instant::now() >= expires_at;
    for late in [false, true] {
        if late {
            // One second for the broker's whole-second clock, one for the seconds the sink rounds up.
            tokio::time::sleep_until((expires_at + Duration::from_secs(2)).into()).await;
        }
        for car in parked.iter().filter(|c| c.back_late == late) {
            let back = come_back(mqtt.url5.clone(), car.vin.clone(), control.clone()).await?;
            returns.insert(car.vin.clone(), back);
        }
    }

    let (mut telemetry_sent, mut drive_took) = (0, Duration::ZERO);
    while let Some(r) = driving.join_next().await {
        let (sent, done) = r.map_err(|e| Error::fatal("a gateway crashed").with_source(e))??;
        telemetry_sent += sent;
        drive_took = drive_took.max(done.duration_since(drive_started));
    }
    for (g, gateway) in gateways.iter().enumerate() {
        if let Some(f) = gateway.failure.lock().clone() {
            return Err(Error::fatal(format!("gateway-{g} lost its connection: {f}")));
        }
    }

    let telemetry_took = in_kafka.await.map_err(|e| Error::fatal("count").with_source(e))??;
    let telemetry_acked: u64 = gateways.iter().map(|g| g.acked.load(Ordering::Relaxed)).sum();
    shutdown.cancel();
    runner.await.map_err(|e| Error::fatal("runner").with_source(e))??;

    // The account.
    let values: HashSet<bytes::Bytes> =
        read_values(&kafka, TELEMETRY_TOPIC).await?.into_iter().collect();
    let mut telemetry_in_kafka = 0u64;
    for v in online_vins {
        for seq in 0..rounds {
            if values.contains(telemetry(v, seq).as_bytes()) {
                telemetry_in_kafka += 1;
            }
        }
    }
    let inbox = inbox.lock();
    let got = |v: &str, id: &str| {
        let wanted = format!(r#""id":"{id}""#);
        inbox.get(v).map_or(0, |c| c.iter().filter(|c| c.contains(&wanted)).count())
    };
    let online_delivered = online_vins.iter().filter(|v| got(v, "fresh") > 0).count();
    let stale_delivered: usize = online_vins.iter().map(|v| got(v, "stale")).sum();
    let row = |late: bool| {
        let cars: Vec<&ParkedCar> = parked.iter().filter(|c| c.back_late == late).collect();
        let delivered = cars
            .iter()
            .filter(|c| {
                returns.get(&c.vin).is_some_and(|r| r.commands.iter().any(|c| c.contains("fresh")))
            })
            .count();
        let kept =
            cars.iter().filter(|c| returns.get(&c.vin).is_some_and(|r| r.session_present)).count();
        (cars.len(), delivered, kept)
    };
    let (soon_n, soon_delivered, soon_kept) = row(false);
    let (late_n, late_delivered, late_kept) = row(true);

    println!("=== connected cars ({:.1} s) ===", started.elapsed().as_secs_f64());
    println!(
        "{:<30} {:>7} {:>15} {:>9} {:>14} {:>10} {:>8}",
        "", "cars", "telemetry sent", "in Kafka", "commands sent", "delivered", "expired"
    );
    println!(
        "{:<30} {:>7} {:>15} {:>9} {:>14} {:>10} {:>8}",
        "online",
        online_vins.len(),
        telemetry_sent,
        telemetry_in_kafka,
        online_vins.len(),
        online_delivered,
        "-"
    );
    println!(
        "{:<30} {:>7} {:>15} {:>9} {:>14} {:>10} {:>8}",
        "  stale in Kafka (sink drops)",
        stale_n,
        "-",
        "-",
        stale_n,
        stale_delivered,
        stale_n.saturating_sub(stale_delivered)
    );
    println!(
        "{:<30} {:>7} {:>15} {:>9} {:>14} {:>10} {:>8}",
        "offline, back before expiry", soon_n, "-", "-", soon_n, soon_delivered, "-"
    );
    println!(
        "{:<30} {:>7} {:>15} {:>9} {:>14} {:>10} {:>8}",
        "offline, back after expiry",
        late_n,
        "-",
        "-",
        late_n,
        late_delivered,
        late_n.saturating_sub(late_delivered)
    );
    println!(
        "{:<30} {:>7} {:>15} {:>9} {:>14} {:>10} {:>8}",
        "total",
        cars,
        telemetry_sent,
        telemetry_in_kafka,
        commands_sent,
        online_delivered + soon_delivered + late_delivered + stale_delivered,
        stale_n.saturating_sub(stale_delivered) + late_n.saturating_sub(late_delivered)
    );
    println!(
        "\nrates: telemetry published {} msg/s over {:.1} s ({} acked by the broker), into Kafka {} msg/s (last one in after {:.1} s); {} commands/s to the online cars ({:.2} s for {})",
        per_sec(telemetry_sent, drive_took),
        drive_took.as_secs_f64(),
        telemetry_acked,
        per_sec(telemetry_in_kafka, telemetry_took),
        telemetry_took.as_secs_f64(),
        per_sec(online_delivered as u64, commands_took),
        commands_took.as_secs_f64(),
        online_delivered
    );
    println!(
        "sessions kept by the broker for the parked cars: {}/{} (expiry {} s; the late ones came back after {:.1} s)",
        soon_kept + late_kept,
        soon_n + late_n,
        args.expiry_secs,
        (expires_at + Duration::from_secs(2)).duration_since(commands_started).as_secs_f64()
    );

    let mut failed = Vec::new();
    if telemetry_in_kafka != telemetry_sent {
        failed.push(format!(
            "{} telemetry messages missing in Kafka",
            telemetry_sent - telemetry_in_kafka
        ));
    }
    if online_delivered != online_vins.len() {
        failed.push(format!(
            "{} online cars did not get their command",
            online_vins.len() - online_delivered
        ));
    }
    if stale_delivered + late_delivered > 0 {
        failed.push(format!(
            "{} expired commands were delivered ({stale_delivered} stale in Kafka, {late_delivered} to cars back after the expiry)",
            stale_delivered + late_delivered
        ));
    }
    if soon_delivered != soon_n {
        let why = if soon_late { " (the online commands took longer than the expiry)" } else { "" };
        failed.push(format!(
            "{} cars back before the expiry did not get their command{why}",
            soon_n - soon_delivered
        ));
    }
    if soon_kept + late_kept != soon_n + late_n {
        failed.push(format!(
            "the broker kept only {}/{} parked sessions",
            soon_kept + late_kept,
            soon_n + late_n
        ));
    }
    if failed.is_empty() {
        println!("all checks passed: every telemetry message in Kafka, every due command delivered, no expired command delivered.");
        Ok(true)
    } else {
        println!("CHECKS FAILED:");
        for f in failed {
            println!("  - {f}");
        }
        Ok(false)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rumqttd warns "Connection was scheduled multiple times in readyqueue" under a fleet's
        // load, a note about its own scheduler, not about messages: its errors still show.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=error"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .with(filter)
        .with(QuietMqttBrokerShutdown)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connected-cars: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(connected_cars(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("connected-cars: {}", e.report());
            ExitCode::FAILURE
        }
    }
}
