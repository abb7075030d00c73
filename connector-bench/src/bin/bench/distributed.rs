//! Distributed mode: aggregate MQTT -> Kafka throughput of 1, 2 and 3 `connect` worker processes
//! of one group (one config, an MQTT source with [`TASKS`] tasks sharing `$share/<name>/...`),
//! with the CPU of all workers per message; and the failover time: from the SIGKILL of one of
//! three workers to the first message its moved tasks deliver to Kafka.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{FetchResult, KafkaClient};
use connector_testkit::{kafka, wait_source_subscribed, MqttPublisher};
use rumqttc::QoS;

use crate::load::{self, LoadPublisher};
use crate::procstat::Sample;
use crate::scenarios::{
    tail, Brokers, Result, Settings, Throughput, UnderTest, DEVICES, PUBLISH_INFLIGHT, RUN_TIMEOUT,
};

/// Tasks of the source (divisible by 1, 2 and 3 workers) and partitions of its Kafka topic.
pub const TASKS: usize = 6;
/// Group timeouts of the workers (`[cluster]`): a SIGKILLed worker is noticed within SESSION_MS
/// (as the tests: Tansu 0.6 holds a rejoin for 3 s, so shorter sessions expire then).
pub const SESSION_MS: u64 = 5_000;
const HEARTBEAT_MS: u64 = 1_000;
const REBALANCE_MS: u64 = 10_000;
/// A message that took longer than this from publish to Kafka waited at the broker for a task.
const WAITED: Duration = Duration::from_secs(1);
/// Messages that waited, arriving within [`WAITED`] of each other: the moved tasks' backlog.
const BURST: usize = 50;

/// A group of workers running one config.
struct Group {
    config: std::path::PathBuf,
    workers: Vec<UnderTest>,
    topic: String,
    prefix: String,
}

/// Writes the config of group `id`: Kafka offset store, `[cluster]`, one MQTT source with
/// [`TASKS`] tasks from `bench/<id>/#` to topic `bench-<id>` ([`TASKS`] partitions).
async fn group(b: &Brokers, s: &Settings, id: &str, workers: usize) -> Result<Group> {
    let topic = format!("bench-{id}");
    let prefix = format!("bench/{id}");
    b.client
        .create_topic(&topic, TASKS as i32, 1)
        .await
        .map_err(|e| format!("create {topic}: {e}"))?;
    let mut c = String::new();
    let _ = writeln!(c, "[kafka]\nbootstrap_servers = [\"{}\"]", b.tansu.bootstrap());
    let _ = writeln!(c, "linger_ms = {}", s.linger_ms);
    let _ = writeln!(c, "[offsets]\nstore = \"kafka\"\n[progress]\ninterval_secs = 0");
    let _ = writeln!(c, "[cluster]\ngroup_id = \"{id}\"\nsession_timeout_ms = {SESSION_MS}");
    let _ = writeln!(
        c,
        "heartbeat_interval_ms = {HEARTBEAT_MS}\nrebalance_timeout_ms = {REBALANCE_MS}"
    );
    let _ = writeln!(c, "[[connector]]\nname = \"{id}\"\ntype = \"mqtt-source\"");
    let _ = writeln!(c, "mqtt_url = \"{}\"\nmqtt_version = \"{}\"", b.mqtt.url(), s.mqtt_version);
    let _ = writeln!(c, "client_id = \"{id}\"\ntopics = [\"{prefix}/#\"]\nqos = 1");
    let _ = writeln!(c, "kafka_topic = \"{topic}\"\ntasks = {TASKS}");
    if let Some(n) = s.source_inflight {
        let _ = writeln!(c, "inflight = {n}");
    }
    let config = b.dir.path().join(format!("{id}.toml"));
    std::fs::write(&config, c).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut g = Group { config, workers: Vec::new(), topic, prefix };
    for w in 0..workers {
        let mut cmd = Command::new(&s.connect);
        let filter = std::env::var("BENCH_CONNECT_LOG").unwrap_or_else(|_| "warn".to_owned());
        cmd.arg("run")
            .arg("--config")
            .arg(&g.config)
            .args(["--worker-id", &format!("w{w}")])
            .env("RUST_LOG", filter);
        g.workers.push(UnderTest::spawn(cmd, b.dir.path().join(format!("{id}-w{w}.log")))?);
    }
    Ok(g)
}

impl Group {
    /// Waits until `connect status` shows every worker running `TASKS / workers` tasks, then
    /// until a probe reaches Kafka (the shared subscription is live).
    async fn settle(&mut self, b: &Brokers, s: &Settings, id: &str) -> Result<()> {
        let n = self.workers.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for w in &mut self.workers {
                w.check_running()?;
            }
            let out = tokio::process::Command::new(&s.connect)
                .arg("status")
                .arg("--config")
                .arg(&self.config)
                .arg("--json")
                .output()
                .await
                .map_err(|e| format!("connect status: {e}"))?;
            let last = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && balanced(&last, n) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{n} workers never shared the {TASKS} tasks; last status {last}; a log ends:\n{}",
                    tail(&self.workers[0].log)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let probe = MqttPublisher::connect(&b.mqtt.url(), &format!("{id}-probe"))
            .await
            .map_err(|e| e.to_string())?;
        let topic = format!("{}/probe", self.prefix);
        wait_source_subscribed(&probe, &topic, b"probe", &b.client, &self.topic)
            .await
            .map_err(|e| e.to_string())?;
        // Tasks that moved in the last rebalance connect now; their sessions queue meanwhile.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        Ok(())
    }

    /// CPU time and memory of all workers: CPU and RSS summed, peak RSS the largest.
    fn sample(&self) -> Option<Sample> {
        let mut sum = Sample::default();
        for w in &self.workers {
            let s = w.sample()?;
            sum.cpu += s.cpu;
            sum.rss += s.rss;
            sum.peak_rss = sum.peak_rss.max(s.peak_rss);
        }
        Some(sum)
    }
}

/// Every one of `workers` workers runs `TASKS / workers` tasks, by `connect status --json`.
fn balanced(status: &str, workers: usize) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(status.trim()) else { return false };
    let Some(list) = v["workers"].as_array() else { return false };
    list.len() == workers
        && list.iter().all(|w| w["tasks"].as_array().is_some_and(|t| t.len() == TASKS / workers))
}

/// Records in `topic` over all partitions.
async fn total(client: &KafkaClient, topic: &str) -> Result<i64> {
    let mut n = 0;
    for p in 0..TASKS as i32 {
        n += client.end_offset(topic, p).await.map_err(|e| e.to_string())?;
    }
    Ok(n)
}

/// Distinct and repeated benchmark messages in `topic`.
async fn count(client: &KafkaClient, topic: &str) -> Result<(u64, u64)> {
    let records = kafka::consume_all(client, topic).await.map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for r in &records {
        if let Some((seq, _)) = r.value.as_deref().and_then(load::parse) {
            if !seen.insert(seq) {
                duplicates += 1;
            }
        }
    }
    Ok((seen.len() as u64, duplicates))
}

/// Aggregate throughput of `workers` workers: `n` QoS 1 messages of `size` bytes published as
/// fast as Mosquitto takes them, counted in Kafka. Time runs from the first publish until Kafka
/// holds them all (or nothing arrived for 3 s); CPU is the sum over the workers.
pub async fn throughput(
    b: &Brokers,
    s: &Settings,
    workers: usize,
    size: usize,
    n: u64,
) -> Result<Throughput> {
    let id = b.id(&format!("dist{workers}w"));
    let mut g = group(b, s, &id, workers).await?;
    g.settle(b, s, &id).await?;
    let base = total(&b.client, &g.topic).await?;
    let publisher =
        Arc::new(LoadPublisher::connect(b.mqtt.port(), &format!("{id}-pub"), PUBLISH_INFLIGHT));
    let topics = load::device_topics(&g.prefix, DEVICES);
    let before = (b.brokers_sample(), g.sample());
    let started = Instant::now();
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(
            async move { publisher.publish(&topics, QoS::AtLeastOnce, 0, n, size, None).await },
        )
    };
    let idle = Duration::from_secs(3);
    let (mut got, mut last_progress) = (0i64, Instant::now());
    while got < n as i64 && started.elapsed() < RUN_TIMEOUT && last_progress.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = total(&b.client, &g.topic).await? - base;
        if now > got {
            got = now;
            last_progress = Instant::now();
        }
    }
    let after = (b.brokers_sample(), g.sample());
    publishing.await.map_err(|e| e.to_string())??;
    for w in &mut g.workers {
        w.check_running()?;
    }
    drop(g);
    let (delivered, duplicates) = count(&b.client, &format!("bench-{id}")).await?;
    let mut t = Throughput { sent: n, delivered, duplicates, ..Throughput::default() };
    t.finish(
        last_progress.saturating_duration_since(started),
        before.0,
        after.0,
        Some((before.1, after.1)),
    );
    Ok(t)
}

/// One failover measurement.
#[derive(Debug, Clone, Default)]
pub struct Failover {
    /// SIGKILL to the first of a burst of [`BURST`] messages delivered to Kafka that had waited
    /// at the broker (more than [`WAITED`] from publish): the moved tasks' first delivery.
    pub first_moved: Option<Duration>,
    pub sent: u64,
    pub delivered: u64,
    pub duplicates: u64,
    /// The first few sequence numbers the observer never saw.
    pub missing: Vec<u64>,
}

/// Three workers, `rate` QoS 1 messages per second for `secs` seconds; one worker is SIGKILLed
/// after a third of the time. An observer fetches every partition and notes when each message
/// arrived.
pub async fn failover(b: &Brokers, s: &Settings, rate: u64, secs: u64) -> Result<Failover> {
    let id = b.id("failover");
    let mut g = group(b, s, &id, 3).await?;
    g.settle(b, s, &id).await?;
    let mut offsets = Vec::new();
    for p in 0..TASKS as i32 {
        offsets.push(b.client.end_offset(&g.topic, p).await.map_err(|e| e.to_string())?);
    }
    let publisher =
        Arc::new(LoadPublisher::connect(b.mqtt.port(), &format!("{id}-pub"), PUBLISH_INFLIGHT));
    let topics = load::device_topics(&g.prefix, DEVICES);
    let n = rate * secs;
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move {
            publisher.publish(&topics, QoS::AtLeastOnce, 0, n, 100, Some(rate)).await
        })
    };
    let started = Instant::now();
    let kill_after = Duration::from_secs(secs) / 3;
    let mut killed: Option<u64> = None;
    // (arrival, publish) in ns since the epoch, per sequence number; arrivals counted twice.
    let mut arrived = vec![None::<(u64, u64)>; n as usize];
    let (mut delivered, mut duplicates) = (0u64, 0u64);
    let deadline = started + Duration::from_secs(secs) + Duration::from_secs(60);
    while delivered < n && Instant::now() < deadline {
        if killed.is_none() && started.elapsed() >= kill_after {
            g.workers.pop(); // dropped: SIGKILL
            killed = Some(load::now_ns());
        }
        for (p, offset) in offsets.iter_mut().enumerate() {
            let fetched = b
                .client
                .fetch(&g.topic, p as i32, *offset, Duration::from_millis(1))
                .await
                .map_err(|e| e.to_string())?;
            let now = load::now_ns();
            let FetchResult::Records(f) = fetched else {
                return Err(format!("{}: offset {offset} out of range", g.topic));
            };
            for r in &f.records {
                if let Some((seq, sent)) = r.value.as_deref().and_then(load::parse) {
                    match arrived.get_mut(seq as usize) {
                        Some(slot @ None) => {
                            *slot = Some((now, sent));
                            delivered += 1;
                        }
                        Some(Some(_)) => duplicates += 1,
                        None => {}
                    }
                }
            }
            *offset = f.next_offset;
        }
    }
    publishing.await.map_err(|e| e.to_string())??;
    for w in &mut g.workers {
        w.check_running()?;
    }
    // The moved tasks' backlog arrives as a burst of messages that waited; a survivor's hiccup
    // (the machine is shared) delays only a few.
    let first_moved = killed.and_then(|k| {
        let mut waited: Vec<u64> = arrived
            .iter()
            .flatten()
            .filter(|(at, sent)| *at > k && at.saturating_sub(*sent) > WAITED.as_nanos() as u64)
            .map(|(at, _)| at - k)
            .collect();
        waited.sort_unstable();
        let burst = BURST.min(waited.len().max(1));
        waited
            .windows(burst)
            .find(|w| w[burst - 1] - w[0] <= WAITED.as_nanos() as u64)
            .map(|w| Duration::from_nanos(w[0]))
    });
    let missing: Vec<u64> =
        (0..n).filter(|seq| arrived[*seq as usize].is_none()).take(10).collect();
    if delivered < n {
        // The observer reads while the topic is written; a full read afterwards is the count.
        let (all, repeats) = count(&b.client, &g.topic).await?;
        eprintln!(
            "failover: the observer saw {delivered} of {n} (not {missing:?}); a full read of {} finds {all} distinct, {repeats} repeats",
            g.topic
        );
        delivered = all;
        duplicates = repeats;
    }
    Ok(Failover { first_moved, sent: n, delivered, duplicates, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_reads_the_status_json() {
        let two = r#"{"group":"g","generation":4,"workers":[{"worker_id":"w0","tasks":["a-0","a-1","a-2"]},{"worker_id":"w1","tasks":["a-3","a-4","a-5"]}]}"#;
        assert!(balanced(two, 2));
        assert!(!balanced(two, 3));
        assert!(!balanced("connect: cannot reach Kafka", 1));
    }
}
