//! The scenarios. Each starts fresh brokers and a fresh `connect` runner (file offsets in a
//! scratch directory), streams numbered messages through it while something fails, and counts
//! what arrived: distinct values in Kafka (source side) or at an MQTT subscriber with a
//! persistent session (sink side).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_testkit::{
    wait_source_subscribed, FaultProxy, Mosquitto, MqttPublisher, Tansu, TansuStorage,
};
use tokio::task::JoinHandle;

use crate::harness::{
    end_offset, mosquitto_options, runner_config, tally_kafka, wait_growth, Connectors, Result,
    Rng, Runner, SINK_PREFIX, SINK_TOPIC, SOURCE_PREFIX, SOURCE_TOPIC,
};
use crate::load::{produce_paced, Publisher, Subscriber, Tally};

/// Longest wait for the flow to resume after a kill, a restart or a cut.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);
/// Kill moments: a uniform random delay in this range (ms) after the runner came back.
const KILL_DELAY_MS: (u64, u64) = (1_000, 5_000);
/// At the end: how long without progress before the count is final.
const IDLE: Duration = Duration::from_secs(20);

/// What one scenario found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Numbered messages sent (MQTT publishes PUBACKed by Mosquitto, records acknowledged by Kafka).
    pub sent: u64,
    /// Sent and never arrived.
    pub lost: u64,
    /// Arrivals of a message that had arrived already.
    pub duplicates: u64,
    /// Time from each restart (or heal) until the flow moved again.
    pub recoveries: Vec<Duration>,
    /// Per-direction figures and anything else worth a look.
    pub detail: String,
}

/// The settings of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `connect` binary under test.
    pub connect: PathBuf,
    /// Runner kills in the kill scenarios.
    pub kills: u32,
    /// Messages of the source-kill stream; the other scenarios' sizes derive from it.
    pub messages: u64,
    /// Seconds each network cut lasts.
    pub cut_secs: u64,
    /// Seed of the kill moments.
    pub seed: u64,
}

/// A scratch directory for one scenario (kept when `CHAOS_KEEP` is set).
fn scratch(name: &str) -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("chaos-{name}-"))
        .tempdir()
        .map_err(|e| format!("scratch directory: {e}"))?;
    if std::env::var_os("CHAOS_KEEP").is_some() {
        dir.disable_cleanup(true);
        tracing::warn!(dir = %dir.path().display(), "keeping the scratch directory");
    }
    Ok(dir)
}

/// One direction's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    sent: u64,
    distinct: u64,
    duplicates: u64,
}

impl Count {
    fn of(sent: u64, t: &Tally) -> Self {
        Self { sent, distinct: t.distinct.min(sent), duplicates: t.duplicates }
    }

    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.distinct)
    }

    fn describe(&self, what: &str, t: &Tally) -> String {
        let mut s = format!(
            "{what}: {} sent, {} arrived, {} lost, {} duplicates",
            self.sent,
            self.distinct,
            self.lost(),
            self.duplicates
        );
        if self.lost() > 0 {
            s.push_str(&format!(" (first missing: {:?})", t.missing(self.sent, 8)));
        }
        s
    }
}

/// MQTT publishers -> Mosquitto -> our source -> Kafka, paced.
struct SourceFlow {
    publisher: Arc<Publisher>,
    task: JoinHandle<Result<()>>,
    n: u64,
}

impl SourceFlow {
    /// Starts publishing `n` messages at `rate` per second from 100 device topics.
    fn start(mqtt: &Mosquitto, n: u64, rate: f64) -> Self {
        let publisher = Arc::new(Publisher::connect(mqtt.port(), "chaos-devices"));
        let p = Arc::clone(&publisher);
        let task = tokio::spawn(async move { p.publish(SOURCE_PREFIX, n, rate).await });
        Self { publisher, task, n }
    }

    /// Waits for the stream's end and counts distinct values in Kafka until all arrived or
    /// nothing new arrived for [`IDLE`].
    async fn finish(self, client: &KafkaClient) -> Result<(Count, Tally, String)> {
        self.task.await.map_err(|e| e.to_string())??;
        let mut note = String::new();
        if !self.publisher.wait_acked(self.n, Duration::from_secs(120)).await {
            note = format!(
                "; Mosquitto PUBACKed only {} of {} publishes",
                self.publisher.acked(),
                self.n
            );
        }
        let (mut last_end, mut moved) = (end_offset(client, SOURCE_TOPIC).await, Instant::now());
        loop {
            let t = tally_kafka(client, SOURCE_TOPIC, self.n).await?;
            if t.distinct >= self.n || moved.elapsed() > IDLE {
                return Ok((Count::of(self.n, &t), t, note));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let end = end_offset(client, SOURCE_TOPIC).await;
            if end != last_end {
                (last_end, moved) = (end, Instant::now());
            }
        }
    }
}

/// Kafka -> our sink -> Mosquitto -> a subscriber with a persistent session, paced.
struct SinkFlow {
    subscriber: Subscriber,
    acked: Arc<AtomicU64>,
    task: JoinHandle<Result<()>>,
    n: u64,
}

impl SinkFlow {
    /// Connects the subscriber (before the sink starts publishing).
    async fn subscribe(mqtt: &Mosquitto, n: u64) -> Result<Subscriber> {
        Subscriber::connect(mqtt.port(), "chaos-cars", &format!("{SINK_PREFIX}/#"), n).await
    }

    /// Starts producing `n` commands at `rate` per second.
    fn start(subscriber: Subscriber, client: &KafkaClient, n: u64, rate: f64) -> Self {
        let acked = Arc::new(AtomicU64::new(0));
        let batch = ((rate / 20.0) as u64).clamp(1, 500);
        let task = tokio::spawn(produce_paced(
            client.clone(),
            SINK_TOPIC.to_owned(),
            n,
            rate,
            batch,
            Arc::clone(&acked),
        ));
        Self { subscriber, acked, task, n }
    }

    /// Arrivals at the subscriber so far.
    fn progress(&self) -> u64 {
        self.subscriber.arrivals()
    }

    /// Waits for the stream's end and for the subscriber to have everything, or nothing new for
    /// [`IDLE`].
    async fn finish(self) -> Result<(Count, Tally)> {
        self.task.await.map_err(|e| e.to_string())??;
        let sent = self.acked.load(Ordering::Relaxed);
        loop {
            let t = self.subscriber.tally();
            let idle = t.last.is_none_or(|l| l.elapsed() > IDLE);
            if t.distinct >= sent || idle {
                return Ok((Count::of(sent.min(self.n), &t), t));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Starts the runner and waits until the source's subscription is live (probes reach Kafka).
async fn live_runner(
    plan: &Plan,
    dir: &Path,
    c: &Connectors<'_>,
    mqtt: &Mosquitto,
    client: &KafkaClient,
) -> Result<Runner> {
    client.create_topic(SOURCE_TOPIC, 1, 1).await.map_err(|e| format!("create topic: {e}"))?;
    client.create_topic(SINK_TOPIC, 1, 1).await.map_err(|e| format!("create topic: {e}"))?;
    let mut runner = Runner::start(&plan.connect, dir, &runner_config(c))?;
    if c.source.is_some() {
        let probe =
            MqttPublisher::connect(&mqtt.url(), "chaos-probe").await.map_err(|e| e.to_string())?;
        let probed = wait_source_subscribed(
            &probe,
            &format!("{SOURCE_PREFIX}/probe"),
            b"probe",
            client,
            SOURCE_TOPIC,
        )
        .await;
        runner.check_running()?;
        probed.map_err(|e| e.to_string())?;
    }
    runner.check_running()?;
    Ok(runner)
}

/// The kill moments (ms after each restart) and the stream rate that keeps the stream flowing
/// until after the last kill.
fn kill_plan(plan: &Plan, n: u64, rng: &mut Rng) -> (Vec<u64>, f64) {
    let delays: Vec<u64> =
        (0..plan.kills).map(|_| rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1)).collect();
    // Room for each restart's recovery too, so the stream outlasts the last kill.
    let secs = delays.iter().sum::<u64>() as f64 / 1e3 + 3.0 * f64::from(plan.kills) + 5.0;
    (delays, n as f64 / secs.max(10.0))
}

/// SIGKILLs the runner after each of `delays` (counted from when it came back), restarts it and
/// measures how long until `progress` moves again.
async fn kill_repeatedly<F, Fut>(
    runner: &mut Runner,
    delays: &[u64],
    mut progress: F,
) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let mut recoveries = Vec::new();
    let mut since = Instant::now();
    for (k, delay) in delays.iter().enumerate() {
        let at = since + Duration::from_millis(*delay);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        runner.check_running()?;
        runner.kill();
        // What the killed process had already sent lands first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let base = progress().await.unwrap_or(0);
        runner.restart()?;
        since = Instant::now();
        match wait_growth(since, base, RECOVERY_TIMEOUT, &mut progress).await {
            Some(d) => recoveries.push(d),
            None => {
                runner.check_running()?;
                return Err(format!(
                    "kill {}: no flow within {RECOVERY_TIMEOUT:?} of the restart",
                    k + 1
                ));
            }
        }
        tracing::info!(kill = k + 1, recovery_ms = recoveries[k].as_millis() as u64, "recovered");
    }
    Ok(recoveries)
}

/// SIGKILL the runner `kills` times during a QoS 1 stream from 100 devices into Kafka.
pub async fn source_kill(plan: &Plan) -> Result<Outcome> {
    let dir = scratch("source-kill")?;
    let n = plan.messages;
    let mqtt = Mosquitto::start_with(mosquitto_options()).await.map_err(|e| e.to_string())?;
    let tansu = Tansu::start().await.map_err(|e| e.to_string())?;
    let client = tansu.client().await.map_err(|e| e.to_string())?;
    let offsets = dir.path().join("offsets.json");
    let c = Connectors {
        kafka: tansu.bootstrap(),
        offsets: &offsets,
        source: Some(mqtt.url()),
        sink: None,
    };
    let mut runner = live_runner(plan, dir.path(), &c, &mqtt, &client).await?;
    let (delays, rate) = kill_plan(plan, n, &mut Rng::new(plan.seed));
    let flow = SourceFlow::start(&mqtt, n, rate);
    let kafka = &client;
    let recoveries = kill_repeatedly(&mut runner, &delays, move || async move {
        end_offset(kafka, SOURCE_TOPIC).await.map(|e| e.max(0) as u64)
    })
    .await?;
    let ended = ended_note(flow.task.is_finished());
    let (count, tally, note) = flow.finish(&client).await?;
    runner.check_running()?;
    Ok(Outcome {
        sent: count.sent,
        lost: count.lost(),
        duplicates: count.duplicates,
        recoveries,
        detail: format!("{rate:.0} msg/s{ended}{note}") + &lost_note(&count, &tally, "in Kafka"),
    })
}

/// A note when the stream had ended before the last kill (then not every kill was mid-stream).
fn ended_note(finished: bool) -> &'static str {
    if finished {
        "; the stream had ended before the last kill"
    } else {
        ""
    }
}

fn lost_note(count: &Count, tally: &Tally, where_: &str) -> String {
    if count.lost() == 0 {
        return String::new();
    }
    format!("; never {where_}, first: {:?}", tally.missing(count.sent, 8))
}

/// SIGKILL the runner `kills` times during a command stream from Kafka to MQTT.
pub async fn sink_kill(plan: &Plan) -> Result<Outcome> {
    let dir = scratch("sink-kill")?;
    let n = plan.messages * 2 / 3;
    let mqtt = Mosquitto::start_with(mosquitto_options()).await.map_err(|e| e.to_string())?;
    let tansu = Tansu::start().await.map_err(|e| e.to_string())?;
    let client = tansu.client().await.map_err(|e| e.to_string())?;
    let offsets = dir.path().join("offsets.json");
    let c = Connectors {
        kafka: tansu.bootstrap(),
        offsets: &offsets,
        source: None,
        sink: Some(mqtt.url()),
    };
    let subscriber = SinkFlow::subscribe(&mqtt, n).await?;
    let mut runner = live_runner(plan, dir.path(), &c, &mqtt, &client).await?;
    // Other kill moments than the source's, from the same seed.
    let (delays, rate) = kill_plan(plan, n, &mut Rng::new(plan.seed ^ 0x5EED));
    let flow = SinkFlow::start(subscriber, &client, n, rate);
    let f = &flow;
    let recoveries =
        kill_repeatedly(&mut runner, &delays, move || async move { Some(f.progress()) }).await?;
    let ended = ended_note(flow.task.is_finished());
    let (count, tally) = flow.finish().await?;
    runner.check_running()?;
    Ok(Outcome {
        sent: count.sent,
        lost: count.lost(),
        duplicates: count.duplicates,
        recoveries,
        detail: format!(
            "{rate:.0} rec/s{ended}; {:.1} deliveries per command",
            tally.arrivals as f64 / count.sent.max(1) as f64
        ) + &lost_note(&count, &tally, "received"),
    })
}

/// Which broker a restart scenario kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// Tansu on sqlite storage.
    Tansu,
    /// Mosquitto with persistence on.
    Mosquitto,
}

/// Source and sink in one runner; the broker is SIGKILLed mid-stream, left down for 2 s and
/// started again on the same port and data file.
pub async fn broker_restart(plan: &Plan, broker: Broker) -> Result<Outcome> {
    let name = match broker {
        Broker::Tansu => "tansu-restart",
        Broker::Mosquitto => "mosquitto-restart",
    };
    let dir = scratch(name)?;
    // Tansu's sqlite storage slows down as it grows (each fetch scans): a few thousand records.
    let (n, stream_secs) = match broker {
        Broker::Tansu => ((plan.messages / 20).clamp(200, 3_000), 20.0),
        Broker::Mosquitto => ((plan.messages / 4).max(200), 20.0),
    };
    let mut mqtt = Mosquitto::start_with(mosquitto_options()).await.map_err(|e| e.to_string())?;
    let storage = match broker {
        Broker::Tansu => TansuStorage::Sqlite,
        Broker::Mosquitto => TansuStorage::Memory,
    };
    let mut tansu = Tansu::start_with(storage).await.map_err(|e| e.to_string())?;
    let client = tansu.client().await.map_err(|e| e.to_string())?;
    let offsets = dir.path().join("offsets.json");
    let c = Connectors {
        kafka: tansu.bootstrap(),
        offsets: &offsets,
        source: Some(mqtt.url()),
        sink: Some(mqtt.url()),
    };
    let subscriber = SinkFlow::subscribe(&mqtt, n).await?;
    let mut runner = live_runner(plan, dir.path(), &c, &mqtt, &client).await?;
    let rate = n as f64 / stream_secs;
    let source = SourceFlow::start(&mqtt, n, rate);
    let sink = SinkFlow::start(subscriber, &client, n, rate);
    tokio::time::sleep(Duration::from_secs_f64(stream_secs * 0.4)).await;
    runner.check_running()?;
    match broker {
        Broker::Tansu => tansu.kill(),
        Broker::Mosquitto => mqtt.kill(),
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    match broker {
        Broker::Tansu => tansu.start_again().await.map_err(|e| format!("restart tansu: {e}"))?,
        Broker::Mosquitto => {
            mqtt.start_again().await.map_err(|e| format!("restart mosquitto: {e}"))?;
        }
    }
    let recovery = recover_both(&client, &sink).await?;
    runner.check_running()?;
    finish_both(&client, source, sink, vec![recovery], &mut runner).await
}

/// How long after now until both directions moved again.
async fn recover_both(client: &KafkaClient, sink: &SinkFlow) -> Result<Duration> {
    let since = Instant::now();
    let kafka_base = end_offset(client, SOURCE_TOPIC).await.unwrap_or(0).max(0) as u64;
    let sink_base = sink.progress();
    recover_from(client, sink, since, kafka_base, sink_base).await
}

/// How long after `since` until Kafka's end offset passed `kafka_base` and the subscriber's
/// arrivals passed `sink_base`.
async fn recover_from(
    client: &KafkaClient,
    sink: &SinkFlow,
    since: Instant,
    kafka_base: u64,
    sink_base: u64,
) -> Result<Duration> {
    let telemetry = wait_growth(since, kafka_base, RECOVERY_TIMEOUT, move || async move {
        end_offset(client, SOURCE_TOPIC).await.map(|e| e.max(0) as u64)
    })
    .await
    .ok_or_else(|| format!("telemetry did not move again within {RECOVERY_TIMEOUT:?}"))?;
    let commands =
        wait_growth(
            since,
            sink_base,
            RECOVERY_TIMEOUT,
            move || async move { Some(sink.progress()) },
        )
        .await
        .ok_or_else(|| format!("commands did not move again within {RECOVERY_TIMEOUT:?}"))?;
    Ok(telemetry.max(commands))
}

/// Counts both directions at the end and sums them into one outcome.
async fn finish_both(
    client: &KafkaClient,
    source: SourceFlow,
    sink: SinkFlow,
    recoveries: Vec<Duration>,
    runner: &mut Runner,
) -> Result<Outcome> {
    let (src, src_tally, note) = source.finish(client).await?;
    let (snk, snk_tally) = sink.finish().await?;
    runner.check_running()?;
    Ok(Outcome {
        sent: src.sent + snk.sent,
        lost: src.lost() + snk.lost(),
        duplicates: src.duplicates + snk.duplicates,
        recoveries,
        detail: format!(
            "{}{note}; {}",
            src.describe("telemetry", &src_tally),
            snk.describe("commands", &snk_tally)
        ),
    })
}

/// Which network a cut scenario cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Between the runner and Mosquitto.
    Mqtt,
    /// Between the runner (and this driver) and Tansu.
    Kafka,
}

/// Source and sink in one runner; one network is cut (connections dropped, new ones refused)
/// for `cut_secs` mid-stream, then healed.
pub async fn cut(plan: &Plan, side: Side) -> Result<Outcome> {
    let dir = scratch(match side {
        Side::Mqtt => "mqtt-cut",
        Side::Kafka => "kafka-cut",
    })?;
    let n = (plan.messages / 4).max(200);
    let mqtt = Mosquitto::start_with(mosquitto_options()).await.map_err(|e| e.to_string())?;
    // Behind a proxy, Tansu advertises the proxy: every Kafka client, this driver's too, goes
    // through it, so the driver's producer waits out the cut like any producer would.
    let (tansu, kafka_proxy) = match side {
        Side::Kafka => {
            let (t, p) =
                Tansu::start_behind_proxy(TansuStorage::Memory).await.map_err(|e| e.to_string())?;
            (t, Some(p))
        }
        Side::Mqtt => (Tansu::start().await.map_err(|e| e.to_string())?, None),
    };
    let mqtt_proxy = match side {
        Side::Mqtt => Some(FaultProxy::start(mqtt.addr()).await.map_err(|e| e.to_string())?),
        Side::Kafka => None,
    };
    let client = tansu.client().await.map_err(|e| e.to_string())?;
    let runner_mqtt =
        mqtt_proxy.as_ref().map_or_else(|| mqtt.url(), |p| format!("mqtt://{}", p.host_port()));
    let offsets = dir.path().join("offsets.json");
    let c = Connectors {
        kafka: tansu.bootstrap(),
        offsets: &offsets,
        source: Some(runner_mqtt.clone()),
        sink: Some(runner_mqtt),
    };
    let subscriber = SinkFlow::subscribe(&mqtt, n).await?;
    let mut runner = live_runner(plan, dir.path(), &c, &mqtt, &client).await?;
    let (before, after) = (5.0, 15.0);
    let stream_secs = before + plan.cut_secs as f64 + after;
    let rate = n as f64 / stream_secs;
    let source = SourceFlow::start(&mqtt, n, rate);
    let sink = SinkFlow::start(subscriber, &client, n, rate);
    tokio::time::sleep(Duration::from_secs_f64(before)).await;
    runner.check_running()?;
    let proxy = mqtt_proxy.as_ref().or(kafka_proxy.as_ref()).ok_or("no proxy")?;
    let kafka_before = end_offset(&client, SOURCE_TOPIC).await.unwrap_or(0).max(0) as u64;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(plan.cut_secs)).await;
    runner.check_running()?;
    // What moved during the cut (in-flight work of its first moments) is not recovery.
    let kafka_base = match side {
        Side::Kafka => kafka_before,
        Side::Mqtt => end_offset(&client, SOURCE_TOPIC).await.unwrap_or(0).max(0) as u64,
    };
    let sink_base = sink.progress();
    proxy.heal();
    let since = Instant::now();
    let recovery = recover_from(&client, &sink, since, kafka_base, sink_base).await?;
    runner.check_running()?;
    finish_both(&client, source, sink, vec![recovery], &mut runner).await
}
