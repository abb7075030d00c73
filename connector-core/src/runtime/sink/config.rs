//! [`SinkRuntimeConfig`]: how the sink runtime reads, retries and commits.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::ConfigErrors;
use crate::runtime::pipeline::Pipeline;
use crate::sink::StartFrom;

/// How the sink runtime reads, retries and commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkRuntimeConfig {
    /// Where to start in a partition with no committed offset.
    #[serde(default)]
    pub start: StartFrom,
    /// Longest time between commits (`pre_commit`, then saving its offsets). A task that requests
    /// commits (the MQTT sink, when acknowledgements arrive) is committed sooner.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Fetched batches queued per partition ahead of `put`.
    #[serde(default = "default_prefetch_batches")]
    pub prefetch_batches: usize,
    /// Most records handed to one `put` (Kafka Connect's `max.poll.records`); a larger fetched
    /// batch is put in pieces, and commits can start between two pieces. With commits that follow
    /// acknowledgements, a crash repeats at most the task's in-flight window plus about this many
    /// records plus one offset save's worth.
    #[serde(default = "default_max_put_records")]
    pub max_put_records: usize,
    /// How long the drain at shutdown may take in all: the save in flight, the final flush and
    /// the final commit.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Converters, transforms and the error policy (the connector's `errors`, `transforms`,
    /// `key_converter`, `value_converter` keys).
    #[serde(skip)]
    #[schemars(skip)]
    pub pipeline: Pipeline,
    /// Fetch at `read_committed` (set from [`SinkConnector::read_committed`](crate::SinkConnector::read_committed),
    /// not a config key).
    #[serde(skip)]
    #[schemars(skip)]
    pub read_committed: bool,
}

fn default_commit_interval_ms() -> u64 {
    5_000
}
fn default_prefetch_batches() -> usize {
    2
}
fn default_max_put_records() -> usize {
    500
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}

impl Default for SinkRuntimeConfig {
    fn default() -> Self {
        Self {
            start: StartFrom::Earliest,
            commit_interval_ms: default_commit_interval_ms(),
            prefetch_batches: default_prefetch_batches(),
            max_put_records: default_max_put_records(),
            pipeline: Pipeline::default(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            read_committed: false,
        }
    }
}

impl SinkRuntimeConfig {
    /// Checks the values; paths are relative to this table.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.commit_interval_ms == 0 {
            e.push("commit_interval_ms", "must be at least 1");
        }
        if self.prefetch_batches == 0 {
            e.push("prefetch_batches", "must be at least 1");
        }
        if self.max_put_records == 0 {
            e.push("max_put_records", "must be at least 1");
        }
        e
    }
}
