//! The `[kafka]` table: where the brokers are and how we talk to them (timeouts, backoff,
//! batching, fetch sizes, topic auto-creation).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backoff::BackoffConfig;
use crate::config::{join_path, ConfigErrors};

/// Compression applied to produced record batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression (default; fastest on a LAN).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// How to reach Kafka and how to batch, retry and fetch.
///
/// ```
/// use connector_core::kafka::KafkaConfig;
///
/// let config: KafkaConfig = serde_json::from_str(r#"{"bootstrap_servers": ["127.0.0.1:9092"]}"#)
///     .expect("valid");
/// assert_eq!(config.linger_ms, 5);
/// assert!(config.validate().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from, as `host:port`. The rest of the cluster is discovered.
    pub bootstrap_servers: Vec<String>,
    /// Client id sent to the brokers (shows in broker logs and quotas).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Largest time a broker may take to answer one request before we give up on it, drop the
    /// connection and retry.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest time to establish a TCP connection (and agree API versions) with a broker.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Cached topic metadata older than this is refreshed, so added partitions and moved leaders
    /// are picked up even when no error says so.
    #[serde(default = "default_metadata_max_age_ms")]
    pub metadata_max_age_ms: u64,
    /// Backoff between retries of failed broker calls.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: BackoffConfig,
    /// How long a partition's batch may wait for more records before it is sent. A batch is sent
    /// sooner when it is full, or when the task cannot deliver more until acknowledgements arrive.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Most records in one partition's batch.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Most bytes (keys, values, headers) in one partition's batch.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Compression of produced batches.
    #[serde(default)]
    pub compression: Compression,
    /// Give up on a record that could not be delivered within this many milliseconds of its first
    /// attempt (0 = keep retrying while the task runs, the default: at-least-once holds either way,
    /// because an undelivered record is never acknowledged upstream).
    #[serde(default)]
    pub delivery_timeout_ms: u64,
    /// Create a topic that does not exist when a record is first written to it.
    #[serde(default = "default_true")]
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    #[serde(default = "default_topic_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of an auto-created topic.
    #[serde(default = "default_topic_replication_factor")]
    pub topic_replication_factor: i16,
    /// Most bytes one fetch may return per partition.
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch waiting for new records.
    #[serde(default = "default_fetch_max_wait_ms")]
    pub fetch_max_wait_ms: u64,
    /// Largest response we accept from a broker, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
}

fn default_client_id() -> String {
    "iiot-connect".to_owned()
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_metadata_max_age_ms() -> u64 {
    300_000
}
fn default_retry_backoff() -> BackoffConfig {
    BackoffConfig::default()
}
fn default_linger_ms() -> u64 {
    5
}
fn default_batch_max_records() -> usize {
    10_000
}
fn default_batch_max_bytes() -> usize {
    1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_topic_partitions() -> i32 {
    1
}
fn default_topic_replication_factor() -> i16 {
    1
}
fn default_fetch_max_bytes() -> i32 {
    1024 * 1024
}
fn default_fetch_max_wait_ms() -> u64 {
    500
}
fn default_max_message_size() -> usize {
    100 * 1024 * 1024
}

impl KafkaConfig {
    /// Defaults for everything but the bootstrap servers.
    pub fn new(bootstrap_servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into_iter().map(Into::into).collect(),
            client_id: default_client_id(),
            request_timeout_ms: default_request_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            metadata_max_age_ms: default_metadata_max_age_ms(),
            retry_backoff: default_retry_backoff(),
            linger_ms: default_linger_ms(),
            batch_max_records: default_batch_max_records(),
            batch_max_bytes: default_batch_max_bytes(),
            compression: Compression::None,
            delivery_timeout_ms: 0,
            auto_create_topics: true,
            topic_partitions: default_topic_partitions(),
            topic_replication_factor: default_topic_replication_factor(),
            fetch_max_bytes: default_fetch_max_bytes(),
            fetch_max_wait_ms: default_fetch_max_wait_ms(),
            max_message_size: default_max_message_size(),
        }
    }

    /// Checks the values; paths are relative to the `[kafka]` table.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.bootstrap_servers.is_empty() {
            e.push("bootstrap_servers", "at least one `host:port` is required");
        }
        for (i, s) in self.bootstrap_servers.iter().enumerate() {
            if let Err(msg) = check_host_port(s) {
                e.push(format!("bootstrap_servers[{i}]"), msg);
            }
        }
        if self.client_id.is_empty() {
            e.push("client_id", "must not be empty");
        }
        for (key, v) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("metadata_max_age_ms", self.metadata_max_age_ms),
            ("fetch_max_wait_ms", self.fetch_max_wait_ms),
        ] {
            if v == 0 {
                e.push(key, "must be at least 1");
            }
        }
        if self.batch_max_records == 0 {
            e.push("batch_max_records", "must be at least 1");
        }
        if self.batch_max_bytes < 1024 {
            e.push("batch_max_bytes", "must be at least 1024");
        }
        if self.topic_partitions < 1 {
            e.push("topic_partitions", "must be at least 1");
        }
        if self.topic_replication_factor < 1 {
            e.push("topic_replication_factor", "must be at least 1");
        }
        if self.fetch_max_bytes < 1024 {
            e.push("fetch_max_bytes", "must be at least 1024");
        }
        if self.max_message_size < 1024 * 1024 {
            e.push("max_message_size", "must be at least 1048576");
        }
        for err in self.retry_backoff.validate() {
            e.push(join_path("retry_backoff", &err.path), err.message);
        }
        e
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

/// Checks a `host:port` string.
pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("expected host:port, got {s:?}"));
    };
    if host.is_empty() {
        return Err(format!("missing host in {s:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("invalid port in {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_reported_with_their_key_paths() {
        let mut c = KafkaConfig::new(["localhost:9092", "nohost", "h:0"]);
        c.linger_ms = 0; // allowed: send at once
        c.batch_max_records = 0;
        c.retry_backoff.jitter = 3.0;
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "bootstrap_servers[1]",
                "bootstrap_servers[2]",
                "batch_max_records",
                "retry_backoff.jitter"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            serde_json::from_str::<KafkaConfig>(r#"{"bootstrap_servers": ["a:1"], "lingerms": 3}"#)
                .expect_err("unknown key");
        assert!(err.to_string().contains("lingerms"), "{err}");
    }
}
