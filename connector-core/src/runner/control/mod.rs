//! The operations behind the REST API (Kafka Connect's): one trait, [`ConnectControl`], with a
//! standalone implementation (one worker, changes kept in a config directory) and a distributed
//! one (a worker group, changes kept in a Kafka config topic).
//!
//! The types here serialize (serde) to exactly the JSON bodies Kafka Connect's REST API returns,
//! so its users' scripts and UIs read them unchanged.
pub mod config_topic;
pub mod distributed;
pub mod probe;
pub mod standalone;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ConfigErrors;
use crate::runner::ConnectorKind;
use crate::runtime::Worker;

/// What an operator asked a connector to be (persisted with its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TargetState {
    /// Its tasks run (the default).
    #[default]
    Running,
    /// Its tasks exist but do not poll or deliver.
    Paused,
    /// Its tasks are drained and stopped; the config is kept (KIP-875: offsets can be changed).
    Stopped,
}

/// A connector's configuration as the API shows it: the `[[connector]]` table as JSON, with
/// `name` and `type`, `${VAR}`s NOT expanded (secrets stay references).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorInfo {
    /// The connector's name.
    pub name: String,
    /// Source or sink (JSON `"type": "source"` / `"sink"`).
    pub kind: ConnectorKind,
    /// The table as written, `name` and `type` included.
    pub config: Map<String, Value>,
    /// How many tasks it has (0 when STOPPED).
    pub tasks: usize,
}

/// Kafka Connect's state names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StateName {
    /// Running.
    Running,
    /// Paused by an operator.
    Paused,
    /// Stopped by an operator (no tasks).
    Stopped,
    /// Failed; the report's `trace` says why.
    Failed,
    /// Not assigned to any worker (yet).
    Unassigned,
    /// Being restarted.
    Restarting,
}

/// One task's state (an entry of a status body's `"tasks"`, and
/// `GET /connectors/{c}/tasks/{t}/status`'s body).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// The task's index within its connector.
    pub id: usize,
    /// Its state.
    pub state: StateName,
    /// The worker it runs on.
    pub worker_id: String,
    /// Why it failed (only when FAILED).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// GET /connectors/{c}/status's body, exactly (serde gives KC's JSON):
/// {"name":..,"connector":{"state":..,"worker_id":..},"tasks":[{"id":0,"state":..,"worker_id":..,"trace"?}],"type":"source"}
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectorReport {
    /// The connector's name.
    pub name: String,
    /// The connector's own state.
    pub connector: ConnectorStateReport,
    /// Each task's state.
    pub tasks: Vec<TaskReport>,
    /// `"source"` or `"sink"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// The `"connector"` object of a status body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectorStateReport {
    /// The connector's state.
    pub state: StateName,
    /// The worker that runs it.
    pub worker_id: String,
    /// Why it failed (only when FAILED).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// One source partition's or sink partition's offset (KIP-875's shape).
/// Sources: partition/offset as the connector stores them. Sinks: partition
/// {"kafka_topic": t, "kafka_partition": p}, offset {"kafka_offset": o}. `offset: None` (JSON null) in a
/// PATCH resets that partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetEntry {
    /// Which partition (source: the connector's partition map; sink: topic and partition).
    pub partition: Map<String, Value>,
    /// Its offset; `None` (JSON null) resets it in a PATCH.
    pub offset: Option<Map<String, Value>>,
}

/// `POST /connectors/{c}/restart`'s query flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestartRequest {
    /// `includeTasks`: restart the tasks too, not only the connector.
    pub include_tasks: bool,
    /// `onlyFailed`: restart only what is FAILED.
    pub only_failed: bool,
}

/// Whether a config write made a new connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The connector did not exist (201).
    Created,
    /// An existing connector's config was replaced (200).
    Updated,
}

/// KIP-1017 semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Up, Kafka reachable, no task FAILED.
    Healthy,
    /// Still starting (the reason says what it waits for).
    Starting(String),
    /// Kafka unreachable or a task FAILED (the reason names it).
    Unhealthy(String),
}

/// A plugin (GET /connector-plugins): "class" is our type name, "type" source|sink|transformation|predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// The type name (`mqtt-source`, `drop-field`, ...).
    pub class: String,
    /// `source`, `sink`, `transformation` or `predicate`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The version of the crate that provides it.
    pub version: String,
}

/// Why an operation was refused; the REST layer maps each to its status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// 404: no such connector, task or plugin.
    #[error("{0}")]
    NotFound(String),
    /// 409: a rebalance in progress, name taken on POST.
    #[error("{0}")]
    Conflict(String),
    /// 400: an invalid config; the message lists every "path: problem".
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// 400: a malformed request, or offsets changed while not STOPPED (KIP-875).
    #[error("{0}")]
    BadRequest(String),
    /// 503: no leader yet, Kafka unreachable for a write.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else.
    #[error("{0}")]
    Internal(String),
}

/// Everything the REST API does, for one worker (standalone) or one worker of a group.
#[async_trait::async_trait]
pub trait ConnectControl: Send + Sync + 'static {
    /// This worker's id (status bodies' "worker_id"; standalone: `<host>:<port>` of the REST listener or the hostname).
    fn worker_id(&self) -> String;
    /// The worker whose tasks run in this process (GET /metrics renders its counters).
    fn worker(&self) -> Worker;
    /// Names of every connector (all of the group's in distributed mode), sorted.
    async fn connectors(&self) -> Vec<String>;
    /// One connector's config and task count.
    async fn info(&self, name: &str) -> Result<ConnectorInfo, ControlError>;
    /// One connector's state and its tasks'.
    async fn status(&self, name: &str) -> Result<ConnectorReport, ControlError>;
    /// Each task's config (the connector's, plus "task.id").
    async fn task_configs(&self, name: &str) -> Result<Vec<Map<String, Value>>, ControlError>;
    /// Creates or replaces a connector's config (`config` without or with a matching "name").
    /// Replacing drains the old tasks (acks in, offsets committed) before the new ones start; the
    /// change is persisted before this returns Ok.
    async fn put_config(
        &self,
        name: &str,
        config: Map<String, Value>,
    ) -> Result<PutOutcome, ControlError>;
    /// Drains and removes a connector; persisted.
    async fn delete(&self, name: &str) -> Result<(), ControlError>;
    /// PUT pause / resume / stop (persisted; STOPPED drains and stops its tasks, keeps the config).
    async fn set_target(&self, name: &str, target: TargetState) -> Result<(), ControlError>;
    /// Restarts the connector (and, per `req`, its tasks); returns the status after.
    async fn restart(
        &self,
        name: &str,
        req: RestartRequest,
    ) -> Result<ConnectorReport, ControlError>;
    /// Restarts one task.
    async fn restart_task(&self, name: &str, task: usize) -> Result<(), ControlError>;
    /// The connector's committed offsets (KIP-875's shape).
    async fn offsets(&self, name: &str) -> Result<Vec<OffsetEntry>, ControlError>;
    /// PATCH offsets: only when STOPPED (else BadRequest, 400, as KIP-875).
    async fn alter_offsets(
        &self,
        name: &str,
        offsets: Vec<OffsetEntry>,
    ) -> Result<(), ControlError>;
    /// DELETE offsets: only when STOPPED (else BadRequest, 400, as KIP-875).
    async fn reset_offsets(&self, name: &str) -> Result<(), ControlError>;
    /// The problems `connect validate` would report for this connector config (key paths relative
    /// to the connector table, e.g. "qos"); unknown type -> NotFound.
    fn validate(
        &self,
        type_name: &str,
        config: Map<String, Value>,
    ) -> Result<ConfigErrors, ControlError>;
    /// Every registered type (connectors, transformations, predicates).
    fn plugins(&self) -> Vec<PluginInfo>;
    /// KIP-1017: this worker's health.
    async fn health(&self) -> Health;
    /// The Kafka cluster's id, once known (`GET /`'s `kafka_cluster_id`); `None` by default.
    fn kafka_cluster_id(&self) -> Option<String> {
        None
    }
    /// `POST /connectors`: creates connector `name` as [`put_config`](Self::put_config) does,
    /// refused with [`ControlError::Conflict`] when it exists. The default checks, then writes
    /// (two concurrent creations may both succeed); implementations that can check under the
    /// lock of their writes override it.
    async fn create(&self, name: &str, config: Map<String, Value>) -> Result<(), ControlError> {
        if self.info(name).await.is_ok() {
            return Err(ControlError::Conflict(format!("Connector {name} already exists")));
        }
        self.put_config(name, config).await.map(|_| ())
    }
}
