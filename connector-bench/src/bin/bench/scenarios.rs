//! The measurements: bare MQTT pub->sub, MQTT -> Kafka through a bridge process (ours or the
//! Python reference), Kafka -> MQTT through our sink, end-to-end latency at a fixed rate, and
//! memory over a long run. Each starts from fresh topics, so runs do not see each other's data.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{FetchResult, KafkaClient, KafkaConfig, Producer, ProducerRecord};
use connector_testkit::{
    kafka, wait_source_subscribed, Mosquitto, MosquittoOptions, MqttPublisher, Tansu,
};
use rumqttc::QoS;
use tokio::task::JoinHandle;

use crate::load::{self, CountingSubscriber, LoadPublisher};
use crate::procstat::{self, Sample};

/// Errors of the driver: a message saying what failed.
pub type Result<T> = std::result::Result<T, String>;

/// Devices (MQTT topics) the load is spread over.
pub const DEVICES: usize = 100;
/// QoS 1 publishes the load publisher keeps in flight.
pub const PUBLISH_INFLIGHT: u16 = 1000;
/// Longest a throughput measurement may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Which bridge process a source measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bridge {
    /// Our `connect` runner with the `mqtt-source` connector.
    Ours,
    /// `scripts/mqtt-kafka-bridge.py` (paho-mqtt + confluent-kafka).
    Python,
    /// `scripts/node-bridge/bridge.js` (mqtt.js + a Node Kafka client).
    Node,
}

/// How a source measurement's load is shaped.
#[derive(Debug, Clone, Copy)]
pub struct SourceLoad {
    /// Device topics the messages are spread over (round-robin).
    pub devices: usize,
    /// Messages per second (None: as fast as the publisher goes).
    pub rate: Option<u64>,
    /// GET /metrics every second while the run lasts.
    pub scrape: bool,
}

impl Default for SourceLoad {
    fn default() -> Self {
        Self { devices: DEVICES, rate: None, scrape: false }
    }
}

/// Settings shared by all measurements.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `connect` binary under test.
    pub connect: PathBuf,
    /// The Python reference bridge.
    pub python_bridge: PathBuf,
    /// The Node.js reference bridge (`bridge.js`, its packages installed beside it).
    pub node_bridge: PathBuf,
    /// `linger_ms` of our producer.
    pub linger_ms: u64,
    /// Mosquitto `max_inflight_messages`.
    pub mosquitto_inflight: u32,
    /// Our source's `inflight` and runtime window (None: defaults).
    pub source_inflight: Option<usize>,
    /// `mqtt_version` of our source and sink.
    pub mqtt_version: String,
}

/// Starts Mosquitto for the benchmark. `nodelay` sets `set_tcp_nodelay true`: Mosquitto leaves
/// Nagle's algorithm on by default, which coalesces messages at high rates (less CPU everywhere)
/// but at low rates holds each message until the previous one is ACKed, and our source ACKs (with
/// its PUBACK) only after Kafka did.
async fn start_mosquitto(settings: &Settings, nodelay: bool) -> Result<Mosquitto> {
    Mosquitto::start_with(MosquittoOptions {
        // Sessions on disk cost time and are the same for every row; the benchmark measures
        // flow, not the broker's persistence.
        persistence: false,
        max_inflight_messages: settings.mosquitto_inflight,
        max_queued_messages: 10_000_000,
        extra_config: if nodelay { vec!["set_tcp_nodelay true".into()] } else { Vec::new() },
    })
    .await
    .map_err(|e| format!("start mosquitto: {e}"))
}

/// The brokers of one round of measurements, and a scratch directory.
pub struct Brokers {
    pub mqtt: Mosquitto,
    pub tansu: Tansu,
    pub client: KafkaClient,
    pub dir: tempfile::TempDir,
    next_id: AtomicU64,
}

impl Brokers {
    /// Starts a fresh Mosquitto (as shipped: Nagle's algorithm on) and Tansu (memory storage).
    pub async fn start(settings: &Settings) -> Result<Self> {
        let mqtt = start_mosquitto(settings, false).await?;
        let tansu = Tansu::start().await.map_err(|e| format!("start tansu: {e}"))?;
        let client = tansu.client().await.map_err(|e| format!("connect to tansu: {e}"))?;
        let mut dir = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        if std::env::var_os("BENCH_KEEP").is_some() {
            // Keep configurations and logs of the processes under test for a look afterwards.
            dir.disable_cleanup(true);
            tracing::warn!(dir = %dir.path().display(), "keeping the scratch directory");
        }
        Ok(Self { mqtt, tansu, client, dir, next_id: AtomicU64::new(1) })
    }

    /// Replaces Mosquitto by a fresh one with `set_tcp_nodelay true`.
    pub async fn restart_mosquitto_without_nagle(&mut self, settings: &Settings) -> Result<()> {
        self.mqtt = start_mosquitto(settings, true).await?;
        Ok(())
    }

    /// A fresh id starting with `kind` (names of topics, clients and files).
    pub fn id(&self, kind: &str) -> String {
        format!("{kind}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// CPU samples of Mosquitto and Tansu.
    pub fn brokers_sample(&self) -> (Option<Sample>, Option<Sample>) {
        (self.mqtt.pid().and_then(procstat::sample), self.tansu.pid().and_then(procstat::sample))
    }
}

/// A throughput measurement.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// Messages sent.
    pub sent: u64,
    /// Distinct messages that arrived.
    pub delivered: u64,
    /// Messages that arrived more than once.
    pub duplicates: u64,
    /// Wall time of the measurement.
    pub secs: f64,
    /// Messages per second delivered.
    pub rate: f64,
    /// CPU time of the bridge process per delivered message, in microseconds.
    pub cpu_us_per_msg: Option<f64>,
    /// Peak RSS of the bridge process, in bytes.
    pub peak_rss: Option<u64>,
    /// Cores Mosquitto and Tansu kept busy during the measurement.
    pub mosquitto_cores: f64,
    pub tansu_cores: f64,
    /// Cores the bridge process kept busy.
    pub bridge_cores: f64,
    /// Mosquitto's CPU time per delivered message, in microseconds.
    pub mosquitto_us_per_msg: f64,
    /// The bridge's CPU per message against Mosquitto's per relayed message in the bare row of
    /// the same round (the driver fills it in).
    pub cpu_vs_broker: Option<f64>,
    /// With `/metrics` scraped during the run: scrapes done, the size of the last response, and
    /// the CPU one scrape cost the process (µs, from back-to-back scrapes after the run).
    pub scrapes: Option<(u64, usize, Option<f64>)>,
}

impl Throughput {
    /// Fills in the rates from the wall time and the CPU samples taken around the measurement.
    pub fn finish(
        &mut self,
        wall: Duration,
        brokers_before: (Option<Sample>, Option<Sample>),
        brokers_after: (Option<Sample>, Option<Sample>),
        bridge: Option<(Option<Sample>, Option<Sample>)>,
    ) {
        self.secs = wall.as_secs_f64().max(1e-9);
        self.rate = self.delivered as f64 / self.secs;
        let cores = |d: Duration| d.as_secs_f64() / self.secs;
        let mosquitto = procstat::cpu_between(brokers_before.0, brokers_after.0);
        self.mosquitto_cores = cores(mosquitto);
        self.mosquitto_us_per_msg = mosquitto.as_secs_f64() * 1e6 / self.delivered.max(1) as f64;
        self.tansu_cores = cores(procstat::cpu_between(brokers_before.1, brokers_after.1));
        if let Some((before, after)) = bridge {
            let cpu = procstat::cpu_between(before, after);
            self.bridge_cores = cores(cpu);
            if self.delivered > 0 {
                self.cpu_us_per_msg = Some(cpu.as_secs_f64() * 1e6 / self.delivered as f64);
            }
            self.peak_rss = after.map(|s| s.peak_rss);
        }
    }
}

/// A process under test, killed when dropped.
pub struct UnderTest {
    child: Child,
    /// Its stderr.
    pub log: PathBuf,
}

impl UnderTest {
    /// Starts `cmd` with its stderr in `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdout(Stdio::null()).stderr(file).stdin(Stdio::null());
        let child = cmd.spawn().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        Ok(Self { child, log })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its CPU time and memory now.
    pub fn sample(&self) -> Option<Sample> {
        procstat::sample(self.pid())
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the process under test exited ({status}); its log ends:\n{}",
                tail(&self.log)
            )),
            Err(e) => Err(format!("cannot check the process under test: {e}")),
        }
    }
}

impl Drop for UnderTest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 20 lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// The start of a `connect` configuration for one connector `id` of type `kind`: Kafka at our
/// Tansu (plus `kafka_extra` lines), offsets in memory, no progress lines. Connector keys follow.
pub(crate) fn runner_config(b: &Brokers, kafka_extra: &str, id: &str, kind: &str) -> String {
    let mut c = String::new();
    let _ =
        writeln!(c, "[kafka]\nbootstrap_servers = [\"{}\"]\n{kafka_extra}", b.tansu.bootstrap());
    let _ = writeln!(c, "[offsets]\nstore = \"memory\"\n[progress]\ninterval_secs = 0");
    let _ = writeln!(c, "[[connector]]\nname = \"{id}\"\ntype = \"{kind}\"");
    c
}

/// Starts our `connect` runner with one MQTT source from `filter` to `topic`; with `rest`, its
/// REST API (and `/metrics`) listens on that address.
#[allow(clippy::too_many_arguments)]
fn start_our_source(
    b: &Brokers,
    s: &Settings,
    id: &str,
    filter: &str,
    topic: &str,
    qos: u8,
    rest: Option<&str>,
) -> Result<UnderTest> {
    let mut c = runner_config(b, &format!("linger_ms = {}", s.linger_ms), id, "mqtt-source");
    let _ = writeln!(c, "mqtt_url = \"{}\"\nmqtt_version = \"{}\"", b.mqtt.url(), s.mqtt_version);
    let _ = writeln!(c, "topics = [\"{filter}\"]\nqos = {qos}\nkafka_topic = \"{topic}\"");
    if let Some(n) = s.source_inflight {
        let _ = writeln!(c, "inflight = {n}");
    }
    if let Some(addr) = rest {
        let dir = b.dir.path().join(format!("{id}-rest.d"));
        let _ = writeln!(c, "[rest]\nlisten = \"{addr}\"\nconfig_dir = \"{}\"", dir.display());
    }
    spawn_connect(b, s, id, &c)
}

/// Back-to-back scrapes after a scraped run, to measure the CPU one costs.
pub const SCRAPE_PROBES: u32 = 2_000;

/// A free local port, as `127.0.0.1:PORT` (bound and released: another process could take it
/// in between, which the run would then report).
fn free_local_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.to_string())
}

/// One `GET /metrics` over HTTP/1.1 (connection closed after it): the response's size.
async fn scrape_once(addr: &str) -> Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).await.map_err(|e| e.to_string())?;
    if !body.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("GET /metrics: {head}"));
    }
    Ok(body.len())
}

/// Scrapes `addr` every second until `stop` is set: (scrapes, bytes of the last one).
fn spawn_scraper(addr: String, stop: Arc<AtomicU64>) -> JoinHandle<Result<(u64, usize)>> {
    tokio::spawn(async move {
        let (mut n, mut last) = (0, 0);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        while stop.load(Ordering::Relaxed) == 0 {
            every.tick().await;
            last = scrape_once(&addr).await?;
            n += 1;
        }
        Ok((n, last))
    })
}

pub(crate) fn spawn_connect(
    b: &Brokers,
    s: &Settings,
    id: &str,
    config: &str,
) -> Result<UnderTest> {
    let path = b.dir.path().join(format!("{id}.toml"));
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cmd = Command::new(&s.connect);
    // BENCH_CONNECT_LOG sets the log filter of the process under test (to investigate a run).
    let filter = std::env::var("BENCH_CONNECT_LOG").unwrap_or_else(|_| "warn".to_owned());
    cmd.arg("run").arg("--config").arg(&path).env("RUST_LOG", filter);
    UnderTest::spawn(cmd, b.dir.path().join(format!("{id}.log")))
}

/// Starts the Python reference bridge from `filter` to `topic`.
fn start_python_source(
    b: &Brokers,
    s: &Settings,
    id: &str,
    filter: &str,
    topic: &str,
    qos: u8,
) -> Result<UnderTest> {
    let mut cmd = Command::new("python3");
    cmd.arg(&s.python_bridge)
        .args(["--mqtt-host", "127.0.0.1", "--mqtt-port", &b.mqtt.port().to_string()])
        .args(["--filter", filter, "--qos", &qos.to_string()])
        .args(["--kafka", &b.tansu.bootstrap(), "--topic", topic, "--client-id", id]);
    UnderTest::spawn(cmd, b.dir.path().join(format!("{id}.log")))
}

/// Starts the Node.js reference bridge from `filter` to `topic`.
fn start_node_source(
    b: &Brokers,
    s: &Settings,
    id: &str,
    filter: &str,
    topic: &str,
    qos: u8,
) -> Result<UnderTest> {
    let mut cmd = Command::new("node");
    cmd.arg(&s.node_bridge)
        .args(["--mqtt-host", "127.0.0.1", "--mqtt-port", &b.mqtt.port().to_string()])
        .args(["--filter", filter, "--qos", &qos.to_string()])
        .args(["--kafka", &b.tansu.bootstrap(), "--topic", topic, "--client-id", id])
        .args(["--linger-ms", &s.linger_ms.to_string()]);
    UnderTest::spawn(cmd, b.dir.path().join(format!("{id}.log")))
}

/// Starts a source bridge and waits until its subscription is live. Returns it, the device
/// topics (`devices` of them) to publish on, and the Kafka offset the benchmark's records start
/// after.
#[allow(clippy::too_many_arguments)]
async fn live_source(
    b: &Brokers,
    s: &Settings,
    bridge: Bridge,
    qos: u8,
    id: &str,
    topic: &str,
    rest: Option<&str>,
    devices: usize,
) -> Result<(UnderTest, Vec<String>, i64)> {
    let prefix = format!("bench/{id}");
    let filter = format!("{prefix}/#");
    b.client.create_topic(topic, 1, 1).await.map_err(|e| format!("create {topic}: {e}"))?;
    let mut process = match bridge {
        Bridge::Ours => start_our_source(b, s, id, &filter, topic, qos, rest)?,
        Bridge::Python => start_python_source(b, s, id, &filter, topic, qos)?,
        Bridge::Node => start_node_source(b, s, id, &filter, topic, qos)?,
    };
    let probe = MqttPublisher::connect(&b.mqtt.url(), &format!("{id}-probe"))
        .await
        .map_err(|e| e.to_string())?;
    let subscribed =
        wait_source_subscribed(&probe, &format!("{prefix}/probe"), b"probe", &b.client, topic)
            .await;
    process.check_running()?;
    subscribed.map_err(|e| e.to_string())?;
    // Let probes still in flight land before taking the starting offset.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = b.client.end_offset(topic, 0).await.map_err(|e| e.to_string())?;
    Ok((process, load::device_topics(&prefix, devices), base))
}

/// (2b) MQTT -> Kafka at QoS 2 through our source with `exactly_once = true`, transactions of up
/// to `txn_records` records (its packet-id state in the Kafka offset store, as in production):
/// `n` messages of `size` bytes published at QoS 2. Time runs from the first publish until a
/// read_committed reader sees them all; the count and the duplicates are read at read_committed.
pub async fn source_exactly_once(
    b: &Brokers,
    s: &Settings,
    txn_records: usize,
    size: usize,
    n: u64,
) -> Result<Throughput> {
    let id = b.id("srceos");
    let topic = format!("bench-{id}");
    let prefix = format!("bench/{id}");
    let filter = format!("{prefix}/#");
    b.client.create_topic(&topic, 1, 1).await.map_err(|e| format!("create {topic}: {e}"))?;
    let mut c = runner_config(b, &format!("linger_ms = {}", s.linger_ms), &id, "mqtt-source")
        .replace("store = \"memory\"", "store = \"kafka\"");
    let _ = writeln!(c, "mqtt_url = \"{}\"\nmqtt_version = \"{}\"", b.mqtt.url(), s.mqtt_version);
    let _ = writeln!(c, "topics = [\"{filter}\"]\nqos = 2\nkafka_topic = \"{topic}\"");
    let _ = writeln!(c, "exactly_once = true\nclean_session = false");
    let _ = writeln!(c, "runtime = {{ transaction_max_records = {txn_records} }}");
    if let Some(n) = s.source_inflight {
        let _ = writeln!(c, "inflight = {n}");
    }
    let mut process = spawn_connect(b, s, &id, &c)?;
    let probe = MqttPublisher::connect(&b.mqtt.url(), &format!("{id}-probe"))
        .await
        .map_err(|e| e.to_string())?;
    let subscribed =
        wait_source_subscribed(&probe, &format!("{prefix}/probe"), b"probe", &b.client, &topic)
            .await;
    process.check_running()?;
    subscribed.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stable = |client: &KafkaClient| {
        let (client, topic) = (client.clone(), topic.clone());
        async move { client.stable_end_offset(&topic, 0).await.map_err(|e| e.to_string()) }
    };
    let base = stable(&b.client).await?;
    let topics = load::device_topics(&prefix, DEVICES);
    let publisher =
        Arc::new(LoadPublisher::connect(b.mqtt.port(), &format!("{id}-pub"), PUBLISH_INFLIGHT));
    let before = (b.brokers_sample(), process.sample());
    let started = Instant::now();
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(
            async move { publisher.publish(&topics, QoS::ExactlyOnce, 0, n, size, None).await },
        )
    };
    // Progress is the last stable offset (records plus one marker per transaction); once it is
    // past `n` records, a read_committed count decides whether all have arrived.
    let idle = Duration::from_secs(5);
    let (mut end, mut last_progress, mut delivered, mut checks) = (base, Instant::now(), 0, 0u32);
    while delivered < n && started.elapsed() < RUN_TIMEOUT && last_progress.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = stable(&b.client).await?;
        if now > end {
            end = now;
            last_progress = Instant::now();
            if end - base >= n as i64 {
                delivered = count_committed(&b.client, &topic, base).await?.0;
            }
        }
        checks += 1;
        if checks % 200 == 0 {
            process.check_running()?;
        }
    }
    let after = (b.brokers_sample(), process.sample());
    publishing.await.map_err(|e| e.to_string())??;
    process.check_running()?;
    drop(process);
    let (delivered, duplicates) = count_committed(&b.client, &topic, base).await?;
    let mut t = Throughput { sent: n, delivered, duplicates, ..Throughput::default() };
    t.finish(
        last_progress.saturating_duration_since(started),
        before.0,
        after.0,
        Some((before.1, after.1)),
    );
    Ok(t)
}

/// [`count_in_kafka`] as a read_committed consumer sees the topic.
async fn count_committed(client: &KafkaClient, topic: &str, base: i64) -> Result<(u64, u64)> {
    let records = kafka::consume_all_committed(client, topic).await.map_err(|e| e.to_string())?;
    Ok(distinct(&records, base))
}

/// Distinct benchmark messages among the records of `topic` after `base`, and duplicates.
async fn count_in_kafka(client: &KafkaClient, topic: &str, base: i64) -> Result<(u64, u64)> {
    let records = kafka::consume_all(client, topic).await.map_err(|e| e.to_string())?;
    Ok(distinct(&records, base))
}

/// Distinct benchmark messages among `records` at or after `base`, and duplicates.
fn distinct(records: &[connector_core::SinkRecord], base: i64) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for r in records.iter().filter(|r| r.offset >= base) {
        if let Some((seq, _)) = r.value.as_deref().and_then(load::parse) {
            if !seen.insert(seq) {
                duplicates += 1;
            }
        }
    }
    (seen.len() as u64, duplicates)
}

/// (1) Bare MQTT: publisher -> Mosquitto -> subscriber, `n` messages of `size` bytes at `qos`.
/// Time runs from the first publish to the last arrival.
pub async fn bare(b: &Brokers, qos: u8, size: usize, n: u64) -> Result<Throughput> {
    let id = b.id("bare");
    let prefix = format!("bench/{id}");
    let sub = CountingSubscriber::connect(
        b.mqtt.port(),
        &format!("{id}-sub"),
        &format!("{prefix}/#"),
        qos_of(qos),
        n,
    )
    .await?;
    let publisher =
        Arc::new(LoadPublisher::connect(b.mqtt.port(), &format!("{id}-pub"), PUBLISH_INFLIGHT));
    let topics = load::device_topics(&prefix, DEVICES);
    let before = b.brokers_sample();
    let started = Instant::now();
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move { publisher.publish(&topics, qos_of(qos), 0, n, size, None).await })
    };
    sub.wait_for(n, Duration::from_secs(3), RUN_TIMEOUT).await;
    let after = b.brokers_sample();
    publishing.await.map_err(|e| e.to_string())??;
    let end = sub.first_last().1.unwrap_or(started);
    let mut t = Throughput {
        sent: n,
        delivered: sub.distinct(),
        duplicates: sub.duplicates(),
        ..Throughput::default()
    };
    t.finish(end.saturating_duration_since(started), before, after, None);
    Ok(t)
}

/// (2) MQTT -> Kafka through `bridge`: `n` messages of `size` bytes published at `qos`, counted
/// in Kafka. Time runs from the first publish until Kafka holds them all (QoS 0: until no more
/// arrive for 3 s). `load` spreads the messages over its device topics, at its rate.
pub async fn source(
    b: &Brokers,
    s: &Settings,
    bridge: Bridge,
    qos: u8,
    size: usize,
    n: u64,
    load: SourceLoad,
) -> Result<Throughput> {
    let id = b.id(match bridge {
        Bridge::Ours => "src",
        Bridge::Python => "py",
        Bridge::Node => "node",
    });
    let SourceLoad { devices, rate, scrape } = load;
    let topic = format!("bench-{id}");
    // With `scrape`: the REST API on, and GET /metrics every second while the run lasts.
    let rest = if scrape { Some(free_local_addr()?) } else { None };
    let (mut process, topics, base) =
        live_source(b, s, bridge, qos, &id, &topic, rest.as_deref(), devices).await?;
    let stop_scraping = Arc::new(AtomicU64::new(0));
    let scraper_addr = rest.clone();
    let scraper = rest.map(|addr| spawn_scraper(addr, Arc::clone(&stop_scraping)));
    let publisher =
        Arc::new(LoadPublisher::connect(b.mqtt.port(), &format!("{id}-pub"), PUBLISH_INFLIGHT));
    let before = (b.brokers_sample(), process.sample());
    let started = Instant::now();
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move { publisher.publish(&topics, qos_of(qos), 0, n, size, rate).await })
    };
    let idle = Duration::from_secs(3);
    let (mut count, mut last_progress) = (0i64, Instant::now());
    let mut checks = 0u32;
    while count < n as i64 && started.elapsed() < RUN_TIMEOUT && last_progress.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let end = b.client.end_offset(&topic, 0).await.map_err(|e| e.to_string())?;
        if end - base > count {
            count = end - base;
            last_progress = Instant::now();
        }
        checks += 1;
        if checks % 200 == 0 {
            process.check_running()?;
        }
    }
    let after = (b.brokers_sample(), process.sample());
    stop_scraping.store(1, Ordering::Relaxed);
    let scrapes = match scraper {
        Some(h) => Some(h.await.map_err(|e| e.to_string())??),
        None => None,
    };
    publishing.await.map_err(|e| e.to_string())??;
    process.check_running()?;
    // The CPU one scrape costs the process: SCRAPE_PROBES back to back, once the run is over.
    let scrape_cpu_us = match (&scraper_addr, scrapes) {
        (Some(addr), Some(_)) => {
            let before = process.sample();
            for _ in 0..SCRAPE_PROBES {
                scrape_once(addr).await?;
            }
            let cpu = procstat::cpu_between(before, process.sample());
            Some(cpu.as_secs_f64() * 1e6 / SCRAPE_PROBES as f64)
        }
        _ => None,
    };
    drop(process);
    let (delivered, duplicates) = count_in_kafka(&b.client, &topic, base).await?;
    let scrapes = scrapes.map(|(n, bytes)| (n, bytes, scrape_cpu_us));
    let mut t = Throughput { sent: n, delivered, duplicates, scrapes, ..Throughput::default() };
    t.finish(
        last_progress.saturating_duration_since(started),
        before.0,
        after.0,
        Some((before.1, after.1)),
    );
    Ok(t)
}

/// (3) Kafka -> MQTT through our sink: `n` records of `size` bytes are written to Kafka first;
/// the sink publishes them at `qos`; an independent subscriber counts them. Time runs from the
/// first arrival to the last. `exactly_once`: with `exactly_once = true` and that `inflight`
/// window (its QoS 2 state saved in the Kafka offset store, as in production). The records'
/// keys, and so the MQTT topics they go to, are `keys` distinct device names.
pub async fn sink(
    b: &Brokers,
    s: &Settings,
    qos: u8,
    size: usize,
    n: u64,
    exactly_once: Option<usize>,
    keys: usize,
) -> Result<Throughput> {
    let id = b.id("sink");
    let topic = format!("bench-{id}");
    let prefix = format!("bench/{id}");
    b.client.create_topic(&topic, 1, 1).await.map_err(|e| format!("create {topic}: {e}"))?;
    let mut seq = 0;
    while seq < n {
        let chunk: Vec<ProducerRecord> = (seq..n.min(seq + 5_000))
            .map(|i| {
                ProducerRecord::new(topic.as_str(), load::payload(i, size))
                    .with_key(format!("d{}", i % keys.max(1) as u64))
            })
            .collect();
        seq += chunk.len() as u64;
        kafka::produce(&b.client, chunk).await.map_err(|e| format!("preload {topic}: {e}"))?;
    }
    let sub = CountingSubscriber::connect(
        b.mqtt.port(),
        &format!("{id}-sub"),
        &format!("{prefix}/#"),
        if qos == 2 { QoS::ExactlyOnce } else { QoS::AtLeastOnce },
        n,
    )
    .await?;
    let mut c = runner_config(b, "", &id, "mqtt-sink");
    if let Some(window) = exactly_once {
        c = c.replace("store = \"memory\"", "store = \"kafka\"");
        let _ = writeln!(c, "exactly_once = true\nclean_session = false\ninflight = {window}");
    }
    let _ = writeln!(c, "mqtt_url = \"{}\"\ntopics = [\"{topic}\"]", b.mqtt.url());
    let _ = writeln!(c, "mqtt_version = \"{}\"", s.mqtt_version);
    let _ = writeln!(c, "mqtt_topic = \"{prefix}/{{key}}\"\nqos = {qos}");
    let mut process = spawn_connect(b, s, &id, &c)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.first_last().0.is_none() {
        if Instant::now() > deadline {
            return Err(format!(
                "nothing arrived from the sink within 30 s:\n{}",
                tail(&process.log)
            ));
        }
        process.check_running()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = (b.brokers_sample(), process.sample());
    sub.wait_for(n, Duration::from_secs(5), RUN_TIMEOUT).await;
    let after = (b.brokers_sample(), process.sample());
    process.check_running()?;
    let (first, last) = sub.first_last();
    let wall = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };
    let mut t = Throughput {
        sent: n,
        delivered: sub.distinct(),
        duplicates: sub.duplicates(),
        ..Throughput::default()
    };
    t.finish(wall, before.0, after.0, Some((before.1, after.1)));
    Ok(t)
}

/// End-to-end latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// Messages sent that never showed up in Kafka.
    pub missing: u64,
}

/// A running source of ours fed by a publisher at a fixed rate.
struct Paced {
    process: UnderTest,
    /// Its Kafka topic, and the topic's offset before the first message.
    topic: String,
    base: i64,
    /// Messages the publisher sends in all.
    n: u64,
    publisher: Arc<LoadPublisher>,
    publishing: JoinHandle<Result<()>>,
}

/// Starts a source of ours (id prefix `kind`) and a publisher feeding it `rate` QoS 1 messages
/// per second for `secs` seconds.
async fn paced_source(
    b: &Brokers,
    s: &Settings,
    kind: &str,
    rate: u64,
    secs: u64,
    size: usize,
) -> Result<Paced> {
    let id = b.id(kind);
    let topic = format!("bench-{id}");
    let (process, topics, base) =
        live_source(b, s, Bridge::Ours, 1, &id, &topic, None, DEVICES).await?;
    let publisher =
        Arc::new(LoadPublisher::connect(b.mqtt.port(), &format!("{id}-pub"), PUBLISH_INFLIGHT));
    let n = rate * secs;
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move {
            publisher.publish(&topics, QoS::AtLeastOnce, 0, n, size, Some(rate)).await
        })
    };
    Ok(Paced { process, topic, base, n, publisher, publishing })
}

/// (4) Latency from MQTT publish to Kafka fetch, through our source at `rate` messages per second
/// for `secs` seconds (the first second is warm-up and not counted). The observer long-polls
/// Kafka with a 1 ms wait so it adds as little as it can.
pub async fn latency(
    b: &Brokers,
    s: &Settings,
    rate: u64,
    secs: u64,
    size: usize,
) -> Result<Latency> {
    let Paced { mut process, topic, base, n, publisher: _publisher, publishing } =
        paced_source(b, s, "lat", rate, secs, size).await?;
    let observed = observe(b, &topic, base, n, rate, secs).await;
    publishing.await.map_err(|e| e.to_string())??;
    process.check_running()?;
    observed
}

/// (4, baseline) The Kafka half of [`latency`] alone: our producer, in this process and with the
/// same `linger_ms`, writes `rate` records per second straight to Tansu, and the same observer
/// reads them. What this adds up to is the part of the end-to-end figure the MQTT side and our
/// source cannot remove.
pub async fn kafka_latency(
    b: &Brokers,
    s: &Settings,
    rate: u64,
    secs: u64,
    size: usize,
) -> Result<Latency> {
    let id = b.id("klat");
    let topic = format!("bench-{id}");
    b.client.create_topic(&topic, 1, 1).await.map_err(|e| format!("create {topic}: {e}"))?;
    let mut config = KafkaConfig::new([b.tansu.bootstrap()]);
    config.linger_ms = s.linger_ms;
    let client = KafkaClient::connect(config).await.map_err(|e| e.to_string())?;
    let n = rate * secs;
    let (producer, mut deliveries) = Producer::<()>::new(client, n as usize);
    let draining = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(batch) = deliveries.recv().await {
            failed += batch.iter().filter(|d| d.result.is_err()).count() as u64;
        }
        failed
    });
    let sending = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..n {
                let due = started + Duration::from_nanos(i * 1_000_000_000 / rate.max(1));
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let record = ProducerRecord::new(topic.as_str(), load::payload(i, size));
                producer.send(record, ()).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(producer)
        })
    };
    let observed = observe(b, &topic, 0, n, rate, secs).await;
    let producer = sending.await.map_err(|e| e.to_string())??;
    drop(producer);
    let failed = draining.await.map_err(|e| e.to_string())?;
    if failed > 0 {
        return Err(format!("{failed} records could not be produced"));
    }
    observed
}

/// Reads `topic` partition 0 from `offset` with 1 ms long polls until `n` benchmark records were
/// seen (or `secs` + 30 s passed) and returns the latency percentiles of all but the first
/// `warmup` sequence numbers.
async fn observe(
    b: &Brokers,
    topic: &str,
    mut offset: i64,
    n: u64,
    warmup: u64,
    secs: u64,
) -> Result<Latency> {
    let mut lat_ms: Vec<f64> = Vec::with_capacity(n as usize);
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    while seen < n && Instant::now() < deadline {
        let fetched = b
            .client
            .fetch(topic, 0, offset, Duration::from_millis(1))
            .await
            .map_err(|e| e.to_string())?;
        let now = load::now_ns();
        let FetchResult::Records(f) = fetched else {
            return Err(format!("{topic}: offset {offset} out of range"));
        };
        for r in &f.records {
            if let Some((seq, sent)) = r.value.as_deref().and_then(load::parse) {
                seen += 1;
                if seq >= warmup {
                    lat_ms.push(now.saturating_sub(sent) as f64 / 1e6);
                }
            }
        }
        offset = f.next_offset;
    }
    lat_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lat_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((lat_ms.len() as f64 - 1.0) * p).round() as usize;
        lat_ms[i.min(lat_ms.len() - 1)]
    };
    Ok(Latency {
        samples: lat_ms.len(),
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        p999: pct(0.999),
        max: lat_ms.last().copied().unwrap_or(f64::NAN),
        missing: n.saturating_sub(seen),
    })
}

/// Memory of our source over a long run.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    /// (seconds since start, RSS bytes), every `interval`.
    pub rss: Vec<(f64, u64)>,
    pub peak_rss: u64,
    pub sent: u64,
    /// Records in Kafka after the run (at least `sent` when nothing was lost).
    pub in_kafka: u64,
    pub cpu_us_per_msg: f64,
}

/// (5) Our source at a fixed `rate` for `secs` seconds; RSS sampled every 5 s.
pub async fn soak(b: &Brokers, s: &Settings, rate: u64, secs: u64, size: usize) -> Result<Soak> {
    let Paced { mut process, topic, base, n, publisher, publishing } =
        paced_source(b, s, "soak", rate, secs, size).await?;
    let cpu_before = process.sample();
    let started = Instant::now();
    let mut rss = Vec::new();
    let interval = Duration::from_secs(5).min(Duration::from_secs(secs.max(1)));
    while !publishing.is_finished() {
        tokio::time::sleep(interval).await;
        process.check_running()?;
        if let Some(sample) = process.sample() {
            rss.push((started.elapsed().as_secs_f64(), sample.rss));
        }
    }
    publishing.await.map_err(|e| e.to_string())??;
    if !publisher.wait_acked(n, Duration::from_secs(60)).await {
        return Err(format!("memory run: {} of {n} publishes acknowledged", publisher.acked()));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut in_kafka = 0;
    while Instant::now() < deadline {
        let end = b.client.end_offset(&topic, 0).await.map_err(|e| e.to_string())?;
        in_kafka = u64::try_from(end - base).unwrap_or(0);
        if in_kafka >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = process.sample();
    process.check_running()?;
    let cpu = procstat::cpu_between(cpu_before, after);
    Ok(Soak {
        rss,
        peak_rss: after.map_or(0, |a| a.peak_rss),
        sent: n,
        in_kafka,
        cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
    })
}
