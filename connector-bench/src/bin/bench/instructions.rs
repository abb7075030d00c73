//! Instructions per message of our source and sink (`--only instructions`): the `connect` process
//! runs under `valgrind --tool=callgrind` against the round's real brokers, and the count covers
//! only that process. After a warm-up its counters are zeroed (`callgrind_control -z`), a fixed
//! workload runs (`n` QoS 1 messages of 100 B through the source, or `n` Kafka records through the
//! sink at QoS 1), and the counters are dumped (`callgrind_control -d`) once the last message
//! arrived. Unlike CPU time, the figure does not move with what else the machine does; it moves a
//! little with how records fall into batches, which the process's speed decides.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::ProducerRecord;
use connector_testkit::{kafka, wait_source_subscribed, MqttPublisher};
use rumqttc::QoS;

use crate::load::{self, CountingSubscriber, LoadPublisher};
use crate::scenarios::{runner_config, Brokers, Result, Settings, UnderTest, DEVICES};

/// Messages of the warm-up before the counters are zeroed.
const WARMUP: u64 = 2_000;
/// Payload bytes.
const SIZE: usize = 100;

/// One instruction count.
#[derive(Debug, Clone)]
pub struct Count {
    /// Messages of the counted workload.
    pub messages: u64,
    /// Instructions the `connect` process executed during it.
    pub instructions: u64,
}

impl Count {
    /// Instructions per message.
    pub fn per_message(&self) -> f64 {
        self.instructions as f64 / self.messages.max(1) as f64
    }
}

/// Whether valgrind and callgrind_control are on the PATH.
pub fn available() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stdout.is_empty())
    })
}

/// Starts `connect run --config <id>.toml` under callgrind; its dumps go to `<id>.cg.*`.
fn spawn_under_callgrind(b: &Brokers, id: &str, config: &str, s: &Settings) -> Result<UnderTest> {
    let path = b.dir.path().join(format!("{id}.toml"));
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = b.dir.path().join(format!("{id}.cg"));
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--dump-instr=no", "--compress-strings=no"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&s.connect)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn");
    UnderTest::spawn(cmd, b.dir.path().join(format!("{id}.log")))
}

/// Runs `callgrind_control <flag> <pid>`.
fn control(flag: &str, pid: u32) -> Result<()> {
    let out = Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("callgrind_control {flag}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {flag} {pid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The `summary:` (or `totals:`) instruction count of the newest dump `<prefix>*` in `dir`.
fn newest_dump_total(dir: &Path, prefix: &str) -> Result<u64> {
    let mut dumps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dumps.sort();
    let (_, path) = dumps.last().ok_or_else(|| format!("no callgrind dump {prefix}*"))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{}: no summary line", path.display()))
}

/// Zeroes the counters of `process`, runs `work`, dumps, and reads the count.
async fn counted<F, Fut>(
    b: &Brokers,
    id: &str,
    process: &UnderTest,
    n: u64,
    work: F,
) -> Result<Count>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let pid = process.pid();
    tokio::task::block_in_place(|| control("-z", pid))?;
    work().await?;
    let before = dumps_in(b.dir.path(), id);
    tokio::task::block_in_place(|| control("-d", pid))?;
    // The dump is written by the process itself; wait until a new file is there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dumps_in(b.dir.path(), id) <= before {
        if Instant::now() > deadline {
            return Err("callgrind wrote no dump within 60 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let instructions = newest_dump_total(b.dir.path(), &format!("{id}.cg"))?;
    Ok(Count { messages: n, instructions })
}

fn dumps_in(dir: &Path, id: &str) -> usize {
    let prefix = format!("{id}.cg");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

/// The source: `n` QoS 1 messages of 100 B over [`DEVICES`] topics, published as fast as the
/// process under callgrind takes them, counted until Kafka holds them all.
pub async fn source(b: &Brokers, s: &Settings, n: u64) -> Result<Count> {
    let id = b.id("cgsrc");
    let topic = format!("bench-{id}");
    let prefix = format!("bench/{id}");
    b.client.create_topic(&topic, 1, 1).await.map_err(|e| format!("create {topic}: {e}"))?;
    let mut c = runner_config(b, &format!("linger_ms = {}", s.linger_ms), &id, "mqtt-source");
    let _ = writeln!(c, "mqtt_url = \"{}\"\nmqtt_version = \"{}\"", b.mqtt.url(), s.mqtt_version);
    let _ = writeln!(c, "topics = [\"{prefix}/#\"]\nqos = 1\nkafka_topic = \"{topic}\"");
    let mut process = spawn_under_callgrind(b, &id, &c, s)?;
    let probe = MqttPublisher::connect(&b.mqtt.url(), &format!("{id}-probe"))
        .await
        .map_err(|e| e.to_string())?;
    let subscribed =
        wait_source_subscribed(&probe, &format!("{prefix}/probe"), b"probe", &b.client, &topic)
            .await;
    process.check_running()?;
    subscribed.map_err(|e| e.to_string())?;
    let topics = load::device_topics(&prefix, DEVICES);
    let publisher = Arc::new(LoadPublisher::connect(b.mqtt.port(), &format!("{id}-pub"), 1000));
    let until_in_kafka = |total: u64| {
        let (client, topic) = (b.client.clone(), topic.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let end = client.end_offset(&topic, 0).await.map_err(|e| e.to_string())?;
                // The probes are in the topic too: count from the start, at least `total`.
                if u64::try_from(end).unwrap_or(0) >= total {
                    return Ok::<_, String>(());
                }
                if Instant::now() > deadline {
                    return Err(format!("{topic}: {end} of {total} records after 600 s"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    publisher.publish(&topics, QoS::AtLeastOnce, 0, WARMUP, SIZE, None).await?;
    until_in_kafka(WARMUP).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = b.client.end_offset(&topic, 0).await.map_err(|e| e.to_string())?;
    let count = counted(b, &id, &process, n, || async {
        publisher.publish(&topics, QoS::AtLeastOnce, WARMUP, n, SIZE, None).await?;
        until_in_kafka(u64::try_from(base).unwrap_or(0) + n).await
    })
    .await?;
    process.check_running()?;
    Ok(count)
}

/// The sink: `n` records of 100 B over [`DEVICES`] keys, produced to Kafka after the warm-up,
/// published at QoS 1, counted until an independent subscriber has them all.
pub async fn sink(b: &Brokers, s: &Settings, n: u64) -> Result<Count> {
    let id = b.id("cgsink");
    let topic = format!("bench-{id}");
    let prefix = format!("bench/{id}");
    b.client.create_topic(&topic, 1, 1).await.map_err(|e| format!("create {topic}: {e}"))?;
    let sub = CountingSubscriber::connect(
        b.mqtt.port(),
        &format!("{id}-sub"),
        &format!("{prefix}/#"),
        QoS::AtLeastOnce,
        WARMUP + n,
    )
    .await?;
    let mut c = runner_config(b, "", &id, "mqtt-sink");
    let _ = writeln!(c, "mqtt_url = \"{}\"\ntopics = [\"{topic}\"]", b.mqtt.url());
    let _ = writeln!(c, "mqtt_version = \"{}\"", s.mqtt_version);
    let _ = writeln!(c, "mqtt_topic = \"{prefix}/{{key}}\"\nqos = 1");
    let mut process = spawn_under_callgrind(b, &id, &c, s)?;
    let produce = |from: u64, to: u64| {
        let (client, topic) = (b.client.clone(), topic.clone());
        async move {
            let mut seq = from;
            while seq < to {
                let chunk: Vec<ProducerRecord> = (seq..to.min(seq + 5_000))
                    .map(|i| {
                        ProducerRecord::new(topic.as_str(), load::payload(i, SIZE))
                            .with_key(format!("d{}", i % DEVICES as u64))
                    })
                    .collect();
                seq += chunk.len() as u64;
                kafka::produce(&client, chunk).await.map_err(|e| format!("produce: {e}"))?;
            }
            Ok::<_, String>(())
        }
    };
    produce(0, WARMUP).await?;
    let got = sub.wait_for(WARMUP, Duration::from_secs(120), Duration::from_secs(300)).await;
    process.check_running()?;
    if got < WARMUP {
        return Err(format!("sink warm-up: {got} of {WARMUP} arrived"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = counted(b, &id, &process, n, || async {
        produce(WARMUP, WARMUP + n).await?;
        let got =
            sub.wait_for(WARMUP + n, Duration::from_secs(120), Duration::from_secs(600)).await;
        if got < WARMUP + n {
            return Err(format!("sink: {} of {n} arrived", got.saturating_sub(WARMUP)));
        }
        Ok(())
    })
    .await?;
    process.check_running()?;
    Ok(count)
}
