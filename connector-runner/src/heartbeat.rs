//! [`HeartbeatConnector`]: the smallest useful source connector, the running example of
//! `docs/writing-a-connector.md`. Every `interval_ms` it writes a heartbeat record for a device,
//! numbered from 0; the number is its source offset, so after a restart the count goes on where
//! Kafka last acknowledged it.

use std::time::Duration;

use async_trait::async_trait;
use connector_core::{
    ConfigErrors, ConnectorConfig, Result, SourceConnector, SourcePartition, SourceRecord,
    SourceTask, SourceTaskContext,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Writes a numbered heartbeat for a device every `interval_ms` (`type = "heartbeat"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Kafka topic to write to.
    pub topic: String,
    /// Device the heartbeats are for; also the record key.
    pub device: String,
    /// Milliseconds between heartbeats.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_interval_ms() -> u64 {
    1000
}

impl ConnectorConfig for HeartbeatConfig {
    fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if let Err(msg) = connector_core::kafka::validate_topic_name(&self.topic) {
            e.push("topic", msg);
        }
        if self.device.is_empty() {
            e.push("device", "must not be empty");
        }
        if self.interval_ms == 0 {
            e.push("interval_ms", "must be at least 1");
        }
        e
    }
}

/// The connector: one task per device.
///
/// ```
/// use connector_core::{DynSourceConnector, SourceConnector};
/// use connector_runner::{HeartbeatConfig, HeartbeatConnector};
///
/// let config = HeartbeatConfig { topic: "heartbeats".into(), device: "pump-1".into(), interval_ms: 100 };
/// let connector = HeartbeatConnector::create("pump-1-heartbeat", config).unwrap();
/// assert_eq!(connector.create_tasks(1).unwrap().len(), 1);
/// ```
#[derive(Debug)]
pub struct HeartbeatConnector {
    config: HeartbeatConfig,
}

impl SourceConnector for HeartbeatConnector {
    type Config = HeartbeatConfig;
    type TaskConfig = HeartbeatConfig;
    type Task = HeartbeatTask;

    fn create(_name: &str, config: HeartbeatConfig) -> Result<Self> {
        Ok(Self { config })
    }

    fn task_configs(&self, _max_tasks: usize) -> Result<Vec<HeartbeatConfig>> {
        Ok(vec![self.config.clone()])
    }

    fn create_task(&self, config: HeartbeatConfig) -> Result<HeartbeatTask> {
        Ok(HeartbeatTask { config, next: 0, every: None })
    }
}

/// Emits the heartbeats.
#[derive(Debug)]
pub struct HeartbeatTask {
    config: HeartbeatConfig,
    next: u64,
    /// The heartbeat clock, kept across polls (made in `start`, inside the runtime).
    every: Option<tokio::time::Interval>,
}

impl HeartbeatTask {
    fn partition(&self) -> SourcePartition {
        let mut p = SourcePartition::new();
        p.insert("device".into(), Value::from(self.config.device.clone()));
        p
    }
}

#[async_trait]
impl SourceTask for HeartbeatTask {
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()> {
        // Resume after the last heartbeat Kafka acknowledged (and whose offset was committed).
        self.next = ctx.offset(&self.partition()).and_then(|o| o.get_u64("next")).unwrap_or(0);
        // An Interval kept in the task, not a sleep in poll: the runtime drops a waiting poll when
        // acknowledgements arrive, and a sleep would start over; the next tick stays put.
        self.every = Some(tokio::time::interval(Duration::from_millis(self.config.interval_ms)));
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        // Cancel-safe: if the runtime drops this future while waiting, nothing was taken yet.
        if let Some(every) = &mut self.every {
            every.tick().await;
        }
        let seq = self.next;
        self.next += 1;
        let record = SourceRecord::new(self.config.topic.clone(), format!("{{\"seq\":{seq}}}"))
            .with_key(self.config.device.clone())
            .with_header("device", self.config.device.clone())
            .with_source(self.partition(), [("next", seq + 1)]);
        Ok(vec![record])
    }
}
