//! Helpers of the distributed-mode tests: worker processes of one group, `connect status`, the
//! tasks a worker's JSON log says it started, and paced load (QoS 1 telemetry into MQTT, commands
//! into Kafka) whose payloads can be counted for loss and duplicates.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_testkit::{MqttPublisher, MqttSubscriber};
use rumqttc::QoS;
use tokio::task::JoinHandle;

use crate::support::{Runner, CONNECT};

/// A `connect run` worker process of a group, logging JSON lines to its own file.
pub struct Worker {
    /// The worker id it runs under (`--worker-id`), as `connect status` shows it.
    pub id: String,
    pub runner: Runner,
}

impl Worker {
    /// `connect run --config CONFIG --worker-id ID --log-format json`, logging to `dir/ID.log`.
    pub fn start(config: &str, dir: &Path, id: &str) -> Self {
        let log = dir.join(format!("{id}.log"));
        let runner = Runner::start(config, &log, &["--worker-id", id, "--log-format", "json"]);
        Self { id: id.to_owned(), runner }
    }

    pub fn log(&self) -> String {
        self.runner.log()
    }

    /// Bytes of log written so far (to read only what comes after).
    pub fn log_len(&self) -> usize {
        self.log().len()
    }

    /// `connector-task` of every "task started" line after byte `from` of the log.
    pub fn started_since(&self, from: usize) -> BTreeSet<String> {
        let log = self.log();
        started_tasks(log.get(from..).unwrap_or_default())
    }

    /// Exited already? Its exit code if so.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.runner.child.try_wait().unwrap().map(|s| s.code())
    }
}

/// `connector-task` of each "MQTT source task started" / "MQTT sink task started" line of a
/// JSON log (the MQTT tasks log that once connected and subscribed).
pub fn started_tasks(log: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let f = &v["fields"];
        let msg = f["message"].as_str().unwrap_or_default();
        if msg.ends_with("task started") {
            if let (Some(c), Some(t)) = (f["connector"].as_str(), f["task"].as_u64()) {
                out.insert(format!("{c}-{t}"));
            }
        }
    }
    out
}

/// Per sink task (`connector-task`), the partitions of its latest "sink partitions assigned"
/// (or "... revoked": none) line, by generation, in any of `logs` (JSON): the consumer group's
/// assignment as the tasks saw it (Tansu's DescribeGroups has no assignments, so `connect status`
/// can't show them).
pub fn sink_partitions<'a>(logs: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Vec<i32>> {
    let mut latest: BTreeMap<String, (i64, Vec<i32>)> = BTreeMap::new();
    for log in logs {
        for line in log.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let f = &v["fields"];
            let assigned = match f["message"].as_str() {
                Some("sink partitions assigned") => true,
                Some(m) if m.starts_with("sink partitions revoked") => false,
                _ => continue,
            };
            let (Some(c), Some(t), Some(g)) =
                (f["connector"].as_str(), f["task"].as_u64(), f["generation"].as_i64())
            else {
                continue;
            };
            // `partitions = "commands-0,commands-3"`.
            let partitions = if assigned {
                f["partitions"]
                    .as_str()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|tp| tp.rsplit_once('-')?.1.trim().parse().ok())
                    .collect()
            } else {
                Vec::new()
            };
            let key = format!("{c}-{t}");
            if latest.get(&key).is_none_or(|(seen, _)| g >= *seen) {
                latest.insert(key, (g, partitions));
            }
        }
    }
    latest.into_iter().map(|(k, (_, p))| (k, p)).collect()
}

/// What `connect status` says about the group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub generation: i64,
    /// Worker id -> the tasks (`connector-task`) it runs.
    pub workers: BTreeMap<String, BTreeSet<String>>,
    /// Sink consumer group member client id -> its partitions (`topic-partition`).
    pub sink_members: BTreeMap<String, Vec<String>>,
}

impl Status {
    /// Per worker, how many tasks of `connector` it runs.
    pub fn spread(&self, connector: &str) -> Vec<usize> {
        let prefix = format!("{connector}-");
        self.workers.values().map(|t| t.iter().filter(|t| t.starts_with(&prefix)).count()).collect()
    }

    /// Sink partitions per sink group member.
    pub fn partitions_per_member(&self) -> Vec<usize> {
        self.sink_members.values().map(Vec::len).collect()
    }

    /// Every worker runs `per_worker` tasks of each of `connectors`.
    pub fn balanced(&self, workers: usize, connectors: &[&str], per_worker: usize) -> bool {
        self.workers.len() == workers
            && connectors.iter().all(|c| self.spread(c).iter().all(|n| *n == per_worker))
    }
}

/// `connect status --config CONFIG --json`, parsed; `None` while it fails (no group yet).
pub fn status(config: &str) -> Option<Status> {
    let out = Command::new(CONNECT).args(["status", "--config", config, "--json"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_status(&String::from_utf8_lossy(&out.stdout))
}

/// `{"generation": N, "workers": [{"worker_id": "..", "tasks": ["telemetry-0", ..]}, ..],
/// "sinks": [{"connector": "..", "group": "connect-..", "members": [{"client_id": "..",
/// "partitions": ["commands-0", ..]}]}]}`.
pub fn parse_status(text: &str) -> Option<Status> {
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let mut s = Status { generation: v["generation"].as_i64()?, ..Status::default() };
    for w in v["workers"].as_array()? {
        let id = w["worker_id"].as_str()?.to_owned();
        let tasks =
            w["tasks"].as_array()?.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        s.workers.insert(id, tasks);
    }
    for sink in v["sinks"].as_array().into_iter().flatten() {
        for m in sink["members"].as_array().into_iter().flatten() {
            let partitions = m["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect();
            s.sink_members.insert(m["client_id"].as_str()?.to_owned(), partitions);
        }
    }
    Some(s)
}

/// Polls `connect status` until `done` holds; fails with the last status and `workers`' logs.
pub async fn wait_status(
    config: &str,
    what: &str,
    timeout: Duration,
    workers: &[&Worker],
    mut done: impl FnMut(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(s) = status(config) {
            if done(&s) {
                return s;
            }
            last = Some(s);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = workers
                .iter()
                .map(|w| format!("--- {} ---\n{}", w.id, tail(&w.log(), 40)))
                .collect();
            panic!("{what}: not within {timeout:?}; last status {last:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Publishes `t-{i}` for `i` in `range` at QoS 1 on `plant/line{i % 6}/temp`, about `rate` per
/// second (batches every 50 ms).
pub fn publish_telemetry(
    publisher: Arc<MqttPublisher>,
    range: std::ops::Range<usize>,
    rate: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let per_tick = (rate / 20).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let all: Vec<usize> = range.collect();
        for chunk in all.chunks(per_tick) {
            tick.tick().await;
            for i in chunk {
                publisher
                    .publish(
                        &format!("plant/line{}/temp", i % 6),
                        QoS::AtLeastOnce,
                        false,
                        format!("t-{i}").into_bytes(),
                    )
                    .await
                    .unwrap();
            }
        }
    })
}

/// Writes `c-{i}` for `i` in `range` to `topic`, partition `i % partitions`, key `car-{i % 60}`,
/// about `rate` per second (batches every 50 ms).
pub fn produce_commands(
    client: KafkaClient,
    topic: &'static str,
    partitions: usize,
    range: std::ops::Range<usize>,
    rate: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let per_tick = (rate / 20).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let all: Vec<usize> = range.collect();
        for chunk in all.chunks(per_tick) {
            tick.tick().await;
            let batch = chunk
                .iter()
                .map(|i| {
                    let mut r = ProducerRecord::new(topic, format!("c-{i}"))
                        .with_key(format!("car-{}", i % 60));
                    r.partition = Some((i % partitions) as i32);
                    r
                })
                .collect();
            client.produce(batch).await.unwrap();
        }
    })
}

/// Deliveries per payload starting with `prefix`.
pub fn tally<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
    prefix: &str,
) -> BTreeMap<Vec<u8>, usize> {
    let mut seen = BTreeMap::new();
    for p in payloads {
        if p.starts_with(prefix.as_bytes()) {
            *seen.entry(p.to_vec()).or_insert(0) += 1;
        }
    }
    seen
}

/// Distinct payloads and repeats (deliveries beyond the first) of a tally.
pub fn distinct_and_repeats(seen: &BTreeMap<Vec<u8>, usize>) -> (usize, usize) {
    let total: usize = seen.values().sum();
    (seen.len(), total - seen.len())
}

/// Deliveries of the subscriber's `c-` payloads.
pub fn commands_seen(car: &MqttSubscriber) -> BTreeMap<Vec<u8>, usize> {
    let messages = car.messages();
    tally(messages.iter().map(|p| p.payload.as_ref()), "c-")
}

/// Deliveries of `t-` values in the Kafka topic.
pub async fn telemetry_seen(client: &KafkaClient, topic: &str) -> BTreeMap<Vec<u8>, usize> {
    let records = connector_testkit::kafka::consume_all(client, topic).await.unwrap();
    tally(records.iter().filter_map(|r| r.value.as_deref()), "t-")
}

/// `python3 scripts/group-offsets.py BOOTSTRAP GROUP --lines`: the group's committed offsets as an
/// independent librdkafka client (confluent-kafka) reads them, `(topic, partition) -> offset`.
pub fn librdkafka_committed(bootstrap: &str, group: &str) -> BTreeMap<(String, i32), i64> {
    let script: PathBuf =
        [env!("CARGO_MANIFEST_DIR"), "..", "scripts", "group-offsets.py"].iter().collect();
    let out =
        Command::new("python3").arg(&script).args([bootstrap, group, "--lines"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed: {stdout}{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (t, p, o) = (f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            Some(((t.to_owned(), p), o))
        })
        .collect()
}
