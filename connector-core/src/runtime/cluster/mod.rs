//! Distributed mode: workers sharing the work through Kafka's group protocol (Kafka Connect's
//! distributed herder). Every worker runs the same configuration; they join one group
//! (`[cluster] group_id`, protocol type [`PROTOCOL_TYPE`]), its leader deals every connector's
//! tasks to the members with the sticky, cooperative [`assign`]or, and each worker runs its share
//! on a [`Worker`](crate::runtime::Worker) ([`Herder`]).

mod assign;
mod herder;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::time::Duration;

use crate::config::ConfigErrors;
use crate::kafka::group::GroupTimeouts;

pub use assign::{assign, MemberAssignment, MemberTasks, TaskId};
pub use herder::{
    ConnectorSet, GenerationMap, GroupConnector, Herder, HerderConfig, HerderError, Membership,
    RestartOrder, StatusRecord, WorkerAssignment, WorkerMetadata, PROTOCOL_NAME, PROTOCOL_TYPE,
    STATUS_TOPIC,
};

/// The `[cluster]` table: distributed mode. Without `group_id` (here or `connect run --group`)
/// the process runs every task itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The worker group: processes with the same `group_id` (and the same configuration file)
    /// share the connectors' tasks. Unset: single-process mode.
    #[serde(default)]
    pub group_id: Option<String>,
    /// This worker's id in the group, shown by `connect status` and in the logs (default:
    /// `<hostname>-<pid>`). Not part of the configuration hash, so one file serves every worker.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// A worker that sends no heartbeat for this long loses its tasks to the others
    /// (session.timeout.ms).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How often a worker heartbeats (heartbeat.interval.ms); below `session_timeout_ms`.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// How long a rebalance waits for every worker to rejoin (rebalance.timeout.ms).
    #[serde(default = "default_rebalance_timeout_ms")]
    pub rebalance_timeout_ms: u64,
    /// The compacted, one-partition topic where the REST API keeps the group's connector
    /// changes (Kafka Connect's config.storage.topic); created if missing. Every worker reads it
    /// to its end at start and follows it.
    #[serde(default = "default_config_topic")]
    pub config_topic: String,
}

fn default_config_topic() -> String {
    "connect-configs".to_owned()
}

fn default_session_timeout_ms() -> u64 {
    10_000
}
fn default_heartbeat_interval_ms() -> u64 {
    3_000
}
fn default_rebalance_timeout_ms() -> u64 {
    60_000
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            group_id: None,
            worker_id: None,
            session_timeout_ms: default_session_timeout_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            rebalance_timeout_ms: default_rebalance_timeout_ms(),
            config_topic: default_config_topic(),
        }
    }
}

impl ClusterConfig {
    /// Every problem, at its key.
    ///
    /// ```
    /// let mut c = connector_core::runtime::cluster::ClusterConfig::default();
    /// c.heartbeat_interval_ms = c.session_timeout_ms;
    /// assert!(c.validate().to_string().contains("heartbeat_interval_ms"));
    /// ```
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.group_id.as_deref().is_some_and(|g| g.trim().is_empty()) {
            e.push("group_id", "must not be empty");
        }
        if self.worker_id.as_deref().is_some_and(|w| w.trim().is_empty()) {
            e.push("worker_id", "must not be empty");
        }
        if !(1_000..=3_600_000).contains(&self.session_timeout_ms) {
            e.push("session_timeout_ms", "expected 1000..=3600000");
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.session_timeout_ms
        {
            e.push("heartbeat_interval_ms", "must be above 0 and below session_timeout_ms");
        }
        if self.rebalance_timeout_ms < self.session_timeout_ms {
            e.push("rebalance_timeout_ms", "must be at least session_timeout_ms");
        }
        if let Err(msg) = crate::kafka::validate_topic_name(&self.config_topic) {
            e.push("config_topic", msg);
        }
        e
    }

    /// The group membership's timeouts.
    pub fn timeouts(&self) -> GroupTimeouts {
        GroupTimeouts {
            session: Duration::from_millis(self.session_timeout_ms),
            heartbeat: Duration::from_millis(self.heartbeat_interval_ms),
            rebalance: Duration::from_millis(self.rebalance_timeout_ms),
        }
    }

    /// `worker_id`, or `<hostname>-<pid>` (the host name from `HOSTNAME` or /etc/hostname).
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(default_worker_id)
    }
}

/// `<hostname>-<pid>`.
fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}
