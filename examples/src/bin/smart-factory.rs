//! The smart factory: simulated Sparkplug B edge nodes (production lines) with devices (presses),
//! their BIRTH and DATA messages decoded into Kafka by the MQTT source (`format = "sparkplug_b"`),
//! commands from Kafka back to the devices through the MQTT sink (NCMD/DCMD protobuf, metric
//! names resolved to the aliases of the BIRTHs), a line that dies (its NDEATH is the broker's
//! last will) and is born again. At the end, what flowed per node is printed and checked; the
//! exit code is non-zero when a check fails. One command cannot be encoded: it goes to the
//! dead-letter topic with its reason, and the others still go out.
//!
//! With no brokers given, it starts an MQTT broker (rumqttd) and a Kafka-compatible broker (Tansu,
//! memory storage) inside this process: nothing to install.
//!
//! ```text
//! cargo run -p connector-examples --bin smart-factory
//! cargo run -p connector-examples --bin smart-factory -- --nodes 5 --devices 4 --rate 20
//! ```
//!
//! The simulated nodes publish at QoS 1, so every message can be accounted for; the spec's QoS 0
//! flows the same way, without the broker's guarantee.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use connector_core::kafka::{FetchResult, KafkaClient, KafkaConfig, OffsetSpec, ProducerRecord};
use connector_core::runner::{run, ConnectFile};
use connector_core::{Error, Result, SinkRecord};
use connector_examples::embedded::{EmbeddedKafka, EmbeddedMqtt, QuietMqttBrokerShutdown};
use connector_sparkplug::encode::EdgeNode;
use connector_sparkplug::{decode_metrics, decode_payload, DataType, Value, REBIRTH};
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Sparkplug edge nodes -> MQTT -> Kafka, commands Kafka -> MQTT -> devices; checked.
#[derive(Parser)]
#[command(name = "smart-factory")]
struct Args {
    /// An MQTT broker to use instead of the embedded one (mqtt://host:port).
    #[arg(long)]
    mqtt_url: Option<String>,
    /// A Kafka bootstrap server to use instead of the embedded one (host:port).
    #[arg(long)]
    kafka: Option<String>,
    /// Edge nodes (production lines).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Devices (presses) per edge node.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// How long the factory runs, in seconds (at least 3).
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// DATA messages per device per second.
    #[arg(long, default_value_t = 5)]
    rate: u64,
}

const GROUP: &str = "factory";
const DATA_TOPIC: &str = "factory.sparkplug";
const COMMAND_TOPIC: &str = "factory.commands";
const COMMAND_DLQ: &str = "factory.commands.dlq";

fn config(mqtt_url: &str, kafka: &str) -> String {
    format!(
        r#"# The same file `connect run --config FILE` takes.
[kafka]
bootstrap_servers = ["{kafka}"]

[offsets]
store = "memory"          # a real deployment keeps them: store = "file" or "kafka"

[progress]
interval_secs = 2

[[connector]]             # Sparkplug in: MQTT -> Kafka, decoded
name = "factory-sparkplug"
type = "mqtt-source"
mqtt_url = "{mqtt_url}"
topics = ["spBv1.0/{GROUP}/#"]
kafka_topic = "{DATA_TOPIC}"     # key = group/node[/device]: one machine, one partition, in order
format = "sparkplug_b"
sparkplug = {{ output = "message" }}   # one JSON record per Sparkplug message
errors = {{ tolerance = "all", dead_letter_topic = "{DATA_TOPIC}.dlq" }}  # a bad payload: to the DLQ

[[connector]]             # commands out: Kafka -> MQTT, as NCMD/DCMD
name = "factory-commands"
type = "mqtt-sink"
mqtt_url = "{mqtt_url}"
topics = ["{COMMAND_TOPIC}"]
format = "sparkplug_b"    # key group/node[/device] -> spBv1.0/<group>/NCMD|DCMD/<node>[/<device>]
sparkplug = {{ groups = ["{GROUP}"] }}   # learns aliases from these groups' BIRTHs
errors = {{ tolerance = "all", dead_letter_topic = "{COMMAND_DLQ}" }}  # a bad command: to the DLQ
"#
    )
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn mqtt_options(url: &str, client_id: &str) -> Result<MqttOptions> {
    let url = connector_mqtt_common::MqttUrl::parse(url)
        .map_err(|m| Error::config("--mqtt-url", m.to_string()))?;
    let mut o = MqttOptions::new(client_id, url.host, url.port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    Ok(o)
}

fn sim_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::fatal(format!("edge node simulator: {what}")).with_source(e)
}

/// What one edge node did and saw.
#[derive(Debug, Default)]
struct NodeLog {
    nbirths: u64,
    dbirths: u64,
    ndata: u64,
    ddata: u64,
    /// Metrics in the DATA messages.
    data_metrics: u64,
    /// Sessions that ended without a DISCONNECT (the broker published the NDEATH will).
    deaths: u64,
    /// Publishes the broker acknowledged, and those handed to the client.
    acked: u64,
    published: u64,
    /// Commands received: DCMDs per device, NCMDs, and how the metrics were named.
    dcmds: BTreeMap<String, u64>,
    ncmds: u64,
    by_alias: u64,
    by_name: u64,
    /// Rebirth requests (NCMD `Node Control/Rebirth`) answered.
    rebirths: u64,
    /// Setpoints each device took from a command.
    setpoints: BTreeMap<String, f64>,
    /// The first command metric received, as the device decoded it.
    first_command: Option<String>,
}

/// A device's state.
#[derive(Debug, Clone)]
struct Press {
    name: String,
    temperature: f64,
    setpoint: f64,
    cycles: u64,
}

/// Aliases of the simulated metrics (node: 1-2, devices: 10-13).
const NODE_METRICS: [(&str, u64, DataType); 2] =
    [("messages", 1, DataType::UInt64), ("line_speed", 2, DataType::Double)];
const PRESS_METRICS: [(&str, u64, DataType); 4] = [
    ("temperature", 10, DataType::Double),
    ("setpoint", 11, DataType::Double),
    ("cycles", 12, DataType::UInt64),
    ("running", 13, DataType::Boolean),
];

/// One simulated edge node: its MQTT client, Sparkplug numbering, devices and log.
struct Line {
    url: String,
    edge: EdgeNode,
    presses: Vec<Press>,
    messages: u64,
    log: Arc<Mutex<NodeLog>>,
    commands: mpsc::Sender<(String, Vec<u8>)>,
}

/// A connected session of a [`Line`]: the client and the task polling its event loop.
struct Session {
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
}

impl Line {
    /// Connects with the NDEATH of the current bdSeq as the will, subscribes to the node's
    /// commands, and publishes NBIRTH and every DBIRTH.
    async fn connect(&mut self) -> Result<Session> {
        let client_id = format!("{}-{}", self.edge.node, self.edge.bd_seq);
        let mut options = mqtt_options(&self.url, &client_id)?;
        let (will_topic, will) = self.edge.ndeath(now_ms());
        options.set_last_will(LastWill::new(will_topic, will, QoS::AtLeastOnce, false));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let log = Arc::clone(&self.log);
        let commands = self.commands.clone();
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => log.lock().acked += 1,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if commands.send((p.topic.clone(), p.payload.to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let node = &self.edge.node;
        for filter in
            [format!("spBv1.0/{GROUP}/NCMD/{node}"), format!("spBv1.0/{GROUP}/DCMD/{node}/+")]
        {
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| sim_error("subscribe", e))?;
        }
        let session = Session { client, poller };
        self.births(&session).await?;
        Ok(session)
    }

    async fn publish(&self, s: &Session, (topic, payload): (String, Vec<u8>)) -> Result<()> {
        s.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| sim_error("publish", e))?;
        self.log.lock().published += 1;
        Ok(())
    }

    async fn births(&mut self, s: &Session) -> Result<()> {
        let now = now_ms();
        let node_metrics = [
            ("messages", Some(1), Value::UInt(self.messages), DataType::UInt64),
            ("line_speed", Some(2), Value::Double(1.5), DataType::Double),
        ];
        let birth = self.edge.nbirth(&node_metrics, now).map_err(|e| sim_error("NBIRTH", e))?;
        self.publish(s, birth).await?;
        self.log.lock().nbirths += 1;
        for p in self.presses.clone() {
            let metrics = [
                ("temperature", Some(10), Value::Double(p.temperature), DataType::Double),
                ("setpoint", Some(11), Value::Double(p.setpoint), DataType::Double),
                ("cycles", Some(12), Value::UInt(p.cycles), DataType::UInt64),
                ("running", Some(13), Value::Boolean(true), DataType::Boolean),
            ];
            let birth =
                self.edge.dbirth(&p.name, &metrics, now).map_err(|e| sim_error("DBIRTH", e))?;
            self.publish(s, birth).await?;
            self.log.lock().dbirths += 1;
        }
        Ok(())
    }

    /// One DDATA per device (its temperature moves toward its setpoint, cycles count up).
    async fn device_data(&mut self, s: &Session) -> Result<()> {
        let now = now_ms();
        for i in 0..self.presses.len() {
            let p = &mut self.presses[i];
            p.temperature += (p.setpoint - p.temperature) * 0.2;
            p.cycles += 1;
            let metrics = [
                ("temperature", Value::Double((p.temperature * 100.0).round() / 100.0)),
                ("setpoint", Value::Double(p.setpoint)),
                ("cycles", Value::UInt(p.cycles)),
            ];
            let name = p.name.clone();
            let data = self.edge.ddata(&name, &metrics, now).map_err(|e| sim_error("DDATA", e))?;
            self.publish(s, data).await?;
            let mut log = self.log.lock();
            log.ddata += 1;
            log.data_metrics += metrics.len() as u64;
        }
        Ok(())
    }

    async fn node_data(&mut self, s: &Session) -> Result<()> {
        self.messages += 1;
        let metrics =
            [("messages", Value::UInt(self.messages)), ("line_speed", Value::Double(1.5))];
        let data = self.edge.ndata(&metrics, now_ms()).map_err(|e| sim_error("NDATA", e))?;
        self.publish(s, data).await?;
        let mut log = self.log.lock();
        log.ndata += 1;
        log.data_metrics += metrics.len() as u64;
        Ok(())
    }

    /// A command from the sink: a DCMD `setpoint` changes the device's setpoint (seen in its next
    /// DDATA); an NCMD `Node Control/Rebirth` = true makes the node publish its births again.
    async fn command(&mut self, s: &Session, topic: &str, payload: &[u8]) -> Result<()> {
        let metrics = decode_payload(payload)
            .and_then(|p| decode_metrics(&p))
            .map_err(|e| sim_error("an undecodable command", e))?;
        let device = topic
            .rsplit_once("/DCMD/")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, d)| d.to_owned());
        let mut rebirth = false;
        {
            let mut log = self.log.lock();
            match &device {
                Some(d) => *log.dcmds.entry(d.clone()).or_default() += 1,
                None => log.ncmds += 1,
            }
            for m in &metrics {
                if log.first_command.is_none() {
                    log.first_command = Some(format!(
                        "{topic}: {:?} alias {:?} {} = {:?}",
                        m.name,
                        m.alias,
                        m.datatype.name(),
                        m.value
                    ));
                }
                if m.alias.is_some() {
                    log.by_alias += 1;
                } else {
                    log.by_name += 1;
                }
                // A metric sent by alias only is named from this node's own alias table.
                let name = if m.name.is_empty() {
                    let alias = m.alias.unwrap_or_default();
                    let mut all = NODE_METRICS.iter().chain(PRESS_METRICS.iter());
                    all.find(|(_, a, _)| *a == alias).map_or("", |(n, _, _)| *n).to_owned()
                } else {
                    m.name.clone()
                };
                match (device.as_deref(), name.as_str(), &m.value) {
                    (Some(d), "setpoint", Value::Double(v)) => {
                        if let Some(p) = self.presses.iter_mut().find(|p| p.name == d) {
                            p.setpoint = *v;
                            log.setpoints.insert(d.to_owned(), *v);
                        }
                    }
                    (None, REBIRTH, Value::Boolean(true)) => rebirth = true,
                    _ => {}
                }
            }
            if rebirth {
                log.rebirths += 1;
            }
        }
        if rebirth {
            self.births(s).await?;
        }
        Ok(())
    }
}

/// How long the dying line runs past `seconds` at most, waiting for its commands.
const DIE_WITHIN: Duration = Duration::from_secs(25);

/// Runs one line for `seconds`: DATA at `rate`, commands as they come; `die_at` (seconds after
/// the start, once its presses took their commands, which may be after `seconds`: it runs on
/// for at most [`DIE_WITHIN`] more) kills its connection without a DISCONNECT, and it comes back
/// a second later with a new bdSeq and its births.
async fn run_line(
    mut line: Line,
    mut commands: mpsc::Receiver<(String, Vec<u8>)>,
    rate: u64,
    seconds: u64,
    die_at: Option<u64>,
    stop: CancellationToken,
) -> Result<()> {
    let mut session = line.connect().await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
    let mut ticks = 0u64;
    let mut died = false;
    let run_for = Duration::from_secs(seconds);
    while started.elapsed() < run_for
        || (die_at.is_some() && !died && started.elapsed() < run_for + DIE_WITHIN)
    {
        tokio::select! {
            _ = tick.tick() => {
                ticks += 1;
                line.device_data(&session).await?;
                if ticks % rate.max(1) == 0 {
                    line.node_data(&session).await?;
                }
            }
            Some((topic, payload)) = commands.recv() => {
                line.command(&session, &topic, &payload).await?;
            }
        }
        // It dies once its presses took their commands (a dead node misses commands: its new
        // session is a clean one, as Sparkplug wants), however late they come.
        let commanded = line.log.lock().setpoints.len() >= line.presses.len();
        let due = |at: u64| commanded && started.elapsed() >= Duration::from_secs(at);
        if !died && die_at.is_some_and(due) {
            died = true;
            // Everything published so far reached the broker, then the connection drops
            // without a DISCONNECT: the broker publishes the NDEATH will.
            let deadline = Instant::now() + Duration::from_secs(5);
            while {
                let l = line.log.lock();
                l.acked < l.published
            } && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            session.poller.abort();
            line.log.lock().deaths += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            line.edge.next_session();
            session = line.connect().await?;
        }
    }
    // Keep answering commands until the account is taken, then disconnect cleanly.
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some((topic, payload)) = commands.recv() => line.command(&session, &topic, &payload).await?,
        }
    }
    let _ = session.client.disconnect().await;
    Ok(())
}

/// Every record of `topic`, all partitions.
async fn read_records(client: &KafkaClient, topic: &str) -> Result<Vec<SinkRecord>> {
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

/// Every record value of `topic` that is JSON, with its key.
async fn read_all(client: &KafkaClient, topic: &str) -> Result<Vec<(String, Json)>> {
    let records = read_records(client, topic).await?;
    Ok(records
        .into_iter()
        .filter_map(|r| {
            let key =
                r.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            let value = serde_json::from_slice(r.value.as_deref()?).ok()?;
            Some((key, value))
        })
        .collect())
}

/// What Kafka holds for one edge node (its devices included).
#[derive(Debug, Default)]
struct Seen {
    /// Distinct BIRTHs (a redelivered one counts once, so it cannot hide a lost one).
    nbirths: u64,
    dbirths: u64,
    births: BTreeSet<(String, String, Option<u64>, Option<u64>)>,
    /// bdSeqs of the node's distinct offline status records.
    offline_bd_seqs: BTreeSet<Option<u64>>,
    /// Distinct DATA messages (by device and counter metric), and repeats.
    data: BTreeSet<(String, u64)>,
    repeats: u64,
    data_metrics: u64,
    offline: u64,
    online: u64,
    /// Setpoints each device reported in its DATA.
    setpoints: BTreeMap<String, BTreeSet<String>>,
}

fn metric<'a>(message: &'a Json, name: &str) -> Option<&'a Json> {
    message["metrics"].as_array()?.iter().find(|m| m["name"] == name).map(|m| &m["value"])
}

/// Tallies the Kafka records per node (`group/node`).
fn tally(records: &[(String, Json)]) -> BTreeMap<String, Seen> {
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for (_, v) in records {
        let (Some(group), Some(node)) = (v["group"].as_str(), v["node"].as_str()) else { continue };
        let s = seen.entry(format!("{group}/{node}")).or_default();
        let device = v["device"].as_str().unwrap_or("").to_owned();
        let kind = v["type"].as_str().unwrap_or("");
        match kind {
            "NBIRTH" | "DBIRTH" => {
                let id =
                    (kind.to_owned(), device.clone(), v["seq"].as_u64(), v["timestamp"].as_u64());
                if s.births.insert(id) {
                    if kind == "NBIRTH" {
                        s.nbirths += 1;
                    } else {
                        s.dbirths += 1;
                    }
                }
            }
            kind @ ("NDATA" | "DDATA") => {
                let counter = if kind == "NDATA" { "messages" } else { "cycles" };
                let n = metric(v, counter).and_then(Json::as_u64).unwrap_or(u64::MAX);
                if s.data.insert((device.clone(), n)) {
                    s.data_metrics += v["metrics"].as_array().map_or(0, |m| m.len() as u64);
                } else {
                    s.repeats += 1;
                }
                if let Some(sp) = metric(v, "setpoint") {
                    s.setpoints.entry(device).or_default().insert(sp.to_string());
                }
            }
            "status" if device.is_empty() => match v["status"].as_str() {
                Some("offline") if s.offline_bd_seqs.insert(v["bd_seq"].as_u64()) => {
                    s.offline += 1;
                }
                Some("online") => s.online += 1,
                _ => {}
            },
            _ => {}
        }
    }
    seen
}

async fn factory(args: Args) -> Result<bool> {
    let started = Instant::now();
    let seconds = args.seconds.max(3);
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
    let kafka = KafkaClient::connect(KafkaConfig::new([bootstrap.clone()])).await?;

    // The source must be subscribed before the lines start, or their BIRTHs reach nobody: a
    // probe node births until its record is in Kafka.
    let (probe, mut probe_loop) = AsyncClient::new(mqtt_options(&mqtt_url, "factory-probe")?, 100);
    tokio::spawn(async move { while probe_loop.poll().await.is_ok() {} });
    let mut probe_node = EdgeNode::new(GROUP, "probe");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (topic, payload) =
            probe_node.nbirth(&[], now_ms()).map_err(|e| sim_error("NBIRTH", e))?;
        let _ = probe.publish(topic, QoS::AtLeastOnce, false, payload).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if read_all(&kafka, DATA_TOPIC).await?.iter().any(|(k, _)| k == "factory/probe") {
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
    let _ = probe.disconnect().await;

    let nodes: Vec<String> = (1..=args.nodes).map(|i| format!("line-{i}")).collect();
    let dying = nodes.get(1).cloned();
    println!(
        "{} lines with {} presses each run for {seconds} s, {} DATA messages per press per second; {} dies halfway and is born again\n",
        nodes.len(),
        args.devices,
        args.rate,
        dying.as_deref().unwrap_or("no line")
    );
    let stop_lines = CancellationToken::new();
    let mut logs: BTreeMap<String, Arc<Mutex<NodeLog>>> = BTreeMap::new();
    let mut running = Vec::new();
    for node in &nodes {
        let log = Arc::new(Mutex::new(NodeLog::default()));
        logs.insert(node.clone(), Arc::clone(&log));
        let (tx, rx) = mpsc::channel(100);
        let presses = (1..=args.devices)
            .map(|d| Press {
                name: format!("press-{d}"),
                temperature: 20.0,
                setpoint: 20.0 + d as f64,
                cycles: 0,
            })
            .collect();
        let line = Line {
            url: mqtt_url.clone(),
            edge: EdgeNode::new(GROUP, node.clone()),
            presses,
            messages: 0,
            log,
            commands: tx,
        };
        let die_at = (Some(node) == dying.as_ref()).then_some(seconds / 2);
        running.push(tokio::spawn(run_line(
            line,
            rx,
            args.rate,
            seconds,
            die_at,
            stop_lines.clone(),
        )));
    }

    // The command service (an MES): once every press was born, a new setpoint for each, and a
    // rebirth request to the first line.
    let all_born = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = tally(&read_all(&kafka, DATA_TOPIC).await?);
        let born = nodes.iter().all(|n| {
            seen.get(&format!("{GROUP}/{n}")).is_some_and(|s| s.dbirths >= args.devices as u64)
        });
        if born || Instant::now() > all_born {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut wanted: BTreeMap<String, f64> = BTreeMap::new();
    let mut commands = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for d in 1..=args.devices {
            let setpoint = 60.0 + (i * 10 + d) as f64 + 0.5;
            let key = format!("{GROUP}/{node}/press-{d}");
            wanted.insert(key.clone(), setpoint);
            commands.push(
                ProducerRecord::new(
                    COMMAND_TOPIC,
                    json!({"name": "setpoint", "value": setpoint}).to_string(),
                )
                .with_key(key),
            );
        }
    }
    let rebirth_to = nodes.first().cloned();
    if let Some(n) = &rebirth_to {
        commands.push(
            ProducerRecord::new(COMMAND_TOPIC, json!({"name": REBIRTH, "value": true}).to_string())
                .with_key(format!("{GROUP}/{n}")),
        );
    }
    // And one the sink cannot encode (a setpoint is a Double): it goes to the dead-letter topic
    // with the reason, and the commands after it still go out.
    let bad = json!({"name": "setpoint", "value": "hot"}).to_string();
    if let Some(first) = nodes.first() {
        let key = format!("{GROUP}/{first}/press-1");
        commands.insert(0, ProducerRecord::new(COMMAND_TOPIC, bad).with_key(key));
    }
    let commands_sent = commands.len();
    kafka.produce(commands).await?;

    // Lines run their time; then wait (bounded) for Kafka to hold every DATA message they
    // published and each press to report its new setpoint.
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen;
    let mut records;
    loop {
        records = read_all(&kafka, DATA_TOPIC).await?;
        seen = tally(&records);
        // Everything published is in Kafka, and the dying line died (it waits for its commands).
        let complete = logs.iter().all(|(n, log)| {
            let l = log.lock();
            let died = Some(n) != dying.as_ref() || l.deaths > 0;
            died && seen.get(&format!("{GROUP}/{n}")).is_some_and(|s| {
                s.data.len() as u64 >= l.ndata + l.ddata
                    && s.nbirths + s.dbirths >= l.nbirths + l.dbirths
                    && s.offline >= l.deaths
            })
        });
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_lines.cancel();
    for r in running {
        tokio::time::timeout(DIE_WITHIN + Duration::from_secs(10), r)
            .await
            .map_err(|_| Error::fatal("a line did not stop"))?
            .map_err(|e| Error::fatal("a line crashed").with_source(e))??;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), runner)
        .await
        .map_err(|_| Error::fatal("the connectors did not stop within 30 s"))?
        .map_err(|e| Error::fatal("runner").with_source(e))??;

    // The account, per node.
    println!("\n=== what flowed ({:.1} s) ===", started.elapsed().as_secs_f64());
    println!(
        "{:<8} {:>14} {:>18} {:>16} {:>8} {:>20} {:>22}",
        "node",
        "births sent/in",
        "data sent/in (dup)",
        "metrics sent/in",
        "deaths",
        "commands (by alias)",
        "setpoints applied/seen"
    );
    let mut failures = Vec::new();
    for (node, log) in &logs {
        let l = log.lock();
        let key = format!("{GROUP}/{node}");
        let empty = Seen::default();
        let s = seen.get(&key).unwrap_or(&empty);
        let births_sent = l.nbirths + l.dbirths;
        let births_in = s.nbirths + s.dbirths;
        let data_sent = l.ndata + l.ddata;
        let commands_received: u64 = l.dcmds.values().sum::<u64>() + l.ncmds;
        let applied = l.setpoints.len();
        let reported = wanted
            .iter()
            .filter(|(k, v)| {
                k.starts_with(&format!("{key}/"))
                    && s.setpoints
                        .get(k.rsplit('/').next().unwrap_or(""))
                        .is_some_and(|seen| seen.contains(&json!(v).to_string()))
            })
            .count();
        println!(
            "{node:<8} {:>14} {:>18} {:>16} {:>8} {:>20} {:>22}",
            format!("{births_sent}/{births_in}"),
            format!("{data_sent}/{} ({})", s.data.len(), s.repeats),
            format!("{}/{}", l.data_metrics, s.data_metrics),
            format!("{}/{}", l.deaths, s.offline),
            format!("{commands_received} ({})", l.by_alias),
            format!("{applied}/{reported}"),
        );
        if births_in < births_sent {
            failures.push(format!("{node}: {births_sent} births published, {births_in} in Kafka"));
        }
        if (s.data.len() as u64) < data_sent {
            failures.push(format!(
                "{node}: {data_sent} DATA messages published, {} in Kafka",
                s.data.len()
            ));
        }
        if s.offline < l.deaths {
            failures.push(format!(
                "{node}: died {} times, {} offline status records in Kafka",
                l.deaths, s.offline
            ));
        }
        let expected_commands = args.devices as u64 + u64::from(Some(node) == rebirth_to.as_ref());
        if commands_received < expected_commands {
            failures.push(format!(
                "{node}: {expected_commands} commands sent, {commands_received} received"
            ));
        }
        if reported < args.devices {
            failures.push(format!(
                "{node}: {} of {} presses reported their new setpoint in Kafka",
                reported, args.devices
            ));
        }
        if applied < args.devices {
            failures.push(format!(
                "{node}: {applied} of {} presses took a new setpoint from a command",
                args.devices
            ));
        }
        if Some(node) == rebirth_to.as_ref() && l.rebirths == 0 {
            failures.push(format!("{node}: the rebirth request did not arrive"));
        }
    }
    println!("commands: {commands_sent} sent to Kafka ({COMMAND_TOPIC}), each device's new setpoint seen in its next DATA in Kafka ({DATA_TOPIC})");
    if let Some(c) = logs.values().find_map(|l| l.lock().first_command.clone()) {
        println!("a command as its edge node decoded it:  {c}");
    }
    let sample = records.iter().rev().find(|(_, v)| v["type"] == "DDATA");
    if let Some((key, v)) = sample {
        println!("a DDATA record in Kafka (key {key}):  {v}");
    }
    let dead = read_records(&kafka, COMMAND_DLQ).await?;
    let reason = |r: &SinkRecord| {
        let h = r.headers.last("__connect.errors.exception.message");
        h.map(|h| String::from_utf8_lossy(h).into_owned()).unwrap_or_default()
    };
    match dead.as_slice() {
        [] if nodes.is_empty() => {}
        [one] => println!("the bad command went to {COMMAND_DLQ}:  {}", reason(one)),
        other => failures.push(format!(
            "{} records in {COMMAND_DLQ}, expected the one bad command",
            other.len()
        )),
    }
    if failures.is_empty() {
        println!("all checks passed.");
    } else {
        println!("CHECKS FAILED:");
        for f in &failures {
            println!("  {f}");
        }
    }
    Ok(failures.is_empty())
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
            eprintln!("smart-factory: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(factory(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("smart-factory: {}", e.report());
            ExitCode::FAILURE
        }
    }
}
