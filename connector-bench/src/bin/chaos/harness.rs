//! What every scenario needs: the `connect` runner as a child process that can be SIGKILLed and
//! started again on the same configuration and offsets file, its TOML configuration, Mosquitto's
//! settings, and counting what reached Kafka.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_testkit::{kafka, MosquittoOptions};

use crate::load::Tally;

/// Errors of the driver: a message saying what failed.
pub type Result<T> = std::result::Result<T, String>;

/// Kafka topic the source writes to.
pub const SOURCE_TOPIC: &str = "chaos-telemetry";
/// MQTT topics the devices publish on (`PREFIX/dN`), under the source's filter `PREFIX/#`.
pub const SOURCE_PREFIX: &str = "chaos/telemetry";
/// Kafka topic the sink reads commands from.
pub const SINK_TOPIC: &str = "chaos-commands";
/// MQTT topics the sink publishes to (`PREFIX/{key}`), under the subscriber's filter `PREFIX/#`.
pub const SINK_PREFIX: &str = "chaos/commands";

/// Mosquitto as a zero-loss deployment needs it (docs/operations.md): persistence on (saved every
/// second), and in-flight and queue limits far above what a run holds, so Mosquitto itself never
/// drops a QoS 1 message for a persistent client that is down or slow.
pub fn mosquitto_options() -> MosquittoOptions {
    MosquittoOptions {
        persistence: true,
        max_inflight_messages: 1_000,
        max_queued_messages: 1_000_000,
        extra_config: vec!["max_queued_bytes 0".into()],
    }
}

/// Which connectors a runner configuration holds, and where they connect.
pub struct Connectors<'a> {
    /// `bootstrap_servers` of the runner.
    pub kafka: String,
    /// The offsets file (kept across kills).
    pub offsets: &'a Path,
    /// The MQTT URL of the source, if the runner has one.
    pub source: Option<String>,
    /// The MQTT URL of the sink, if the runner has one.
    pub sink: Option<String>,
}

/// The runner's configuration: file offsets, no progress lines, the connectors' defaults except
/// what names the topics.
pub fn runner_config(c: &Connectors<'_>) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "[kafka]\nbootstrap_servers = [\"{}\"]\n", c.kafka);
    let _ = writeln!(t, "[offsets]\nstore = \"file\"\npath = \"{}\"\n", c.offsets.display());
    let _ = writeln!(t, "[progress]\ninterval_secs = 0\n");
    if let Some(url) = &c.source {
        let _ = writeln!(
            t,
            "[[connector]]\nname = \"chaos-source\"\ntype = \"mqtt-source\"\nmqtt_url = \"{url}\"\ntopics = [\"{SOURCE_PREFIX}/#\"]\nqos = 1\nkafka_topic = \"{SOURCE_TOPIC}\"\n"
        );
    }
    if let Some(url) = &c.sink {
        let _ = writeln!(
            t,
            "[[connector]]\nname = \"chaos-sink\"\ntype = \"mqtt-sink\"\nmqtt_url = \"{url}\"\ntopics = [\"{SINK_TOPIC}\"]\nqos = 1\nmqtt_topic = \"{SINK_PREFIX}/{{key}}\"\n"
        );
    }
    t
}

/// The `connect run` process under test. SIGKILLed when dropped.
pub struct Runner {
    connect: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Runner {
    /// Writes `config` to `dir/connect.toml` and starts `connect run` on it, stderr appended to
    /// `dir/connect.log` (`CHAOS_CONNECT_LOG` sets its log filter; default `warn`).
    pub fn start(connect: &Path, dir: &Path, config: &str) -> Result<Self> {
        let path = dir.join("connect.toml");
        std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = Self {
            connect: connect.to_path_buf(),
            config: path,
            log: dir.join("connect.log"),
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let filter = std::env::var("CHAOS_CONNECT_LOG").unwrap_or_else(|_| "warn".to_owned());
        let child = Command::new(&self.connect)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.connect.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL (a crash: no drain, no final commit) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same configuration and offsets file.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Fails, quoting the log's end, if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err("the runner is not running".into());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the runner exited ({status}); {} ends:\n{}",
                self.log.display(),
                tail(&self.log, 15)
            )),
            Err(e) => Err(format!("cannot check the runner: {e}")),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The high watermark of partition 0 of `topic`, or None while Kafka cannot be reached (a cut, a
/// restart) or answers slower than 5 s.
pub async fn end_offset(client: &KafkaClient, topic: &str) -> Option<i64> {
    tokio::time::timeout(Duration::from_secs(5), client.end_offset(topic, 0)).await.ok()?.ok()
}

/// Tallies the numbered records of `topic` (sequence numbers below `capacity`).
pub async fn tally_kafka(client: &KafkaClient, topic: &str, capacity: u64) -> Result<Tally> {
    let records =
        kafka::consume_all(client, topic).await.map_err(|e| format!("read {topic}: {e}"))?;
    let mut t = Tally::new(capacity);
    for r in &records {
        if let Some(v) = r.value.as_deref() {
            t.add(v);
        }
    }
    Ok(t)
}

/// Waits until `progress` (a counter read by polling) grows past `from`; returns how long that
/// took from `since`, or None after `timeout`.
pub async fn wait_growth<F, Fut>(
    since: Instant,
    from: u64,
    timeout: Duration,
    mut progress: F,
) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if progress().await.is_some_and(|p| p > from) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A deterministic generator of the kill moments (SplitMix64), so a seed replays a run.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number, uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + z % (hi.saturating_sub(lo) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_kill_moments_within_bounds() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.between(1_000, 5_000)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.between(1_000, 5_000)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (1_000..=5_000).contains(x)));
        assert!(xs.iter().any(|x| *x != xs[0]));
    }
}
