//! The connector of docs/writing-a-connector.md, complete: every `interval_ms` it writes a
//! numbered heartbeat for a device; the number is its source offset, so after a restart the
//! count goes on where Kafka last acknowledged it.

use std::time::Duration;

use async_trait::async_trait;
use connector_core::{
    ConfigErrors, ConnectorConfig, Result, SourceConnector, SourceOffset, SourcePartition,
    SourceRecord, SourceTask, SourceTaskContext,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::{Interval, MissedTickBehavior};

/// Writes a numbered heartbeat for a device every `interval_ms` (`type = "my-heartbeat"`).
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
#[derive(Debug)]
pub struct HeartbeatConnector {
    config: HeartbeatConfig,
}

/// Emits the heartbeats.
#[derive(Debug)]
pub struct HeartbeatTask {
    config: HeartbeatConfig,
    next: u64,
    tick: Option<Interval>,
}

impl SourceConnector for HeartbeatConnector {
    type Config = HeartbeatConfig;
    type TaskConfig = HeartbeatConfig; // what one task needs
    type Task = HeartbeatTask;

    fn create(_name: &str, config: HeartbeatConfig) -> Result<Self> {
        Ok(Self { config })
    }
    fn task_configs(&self, _max_tasks: usize) -> Result<Vec<HeartbeatConfig>> {
        Ok(vec![self.config.clone()]) // one device, one task
    }
    fn create_task(&self, config: HeartbeatConfig) -> Result<HeartbeatTask> {
        Ok(HeartbeatTask { config, next: 0, tick: None })
    }
}

impl HeartbeatTask {
    /// The source partition: one per device.
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
        let offset = ctx.offset(&self.partition()).and_then(|o| o.get("next"));
        self.next = offset.and_then(Value::as_u64).unwrap_or(0);
        Ok(())
    }

    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        // The interval lives in the task: a poll dropped while waiting loses no tick, and a slow
        // Kafka does not shift the beat. Cancel-safe: nothing is taken before the `.await`.
        let period = Duration::from_millis(self.config.interval_ms);
        let tick = self.tick.get_or_insert_with(|| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        });
        tick.tick().await;
        let seq = self.next;
        self.next += 1;
        let mut offset = SourceOffset::new();
        offset.insert("next".into(), Value::from(seq + 1));
        Ok(vec![SourceRecord::new(self.config.topic.clone(), format!("{{\"seq\":{seq}}}"))
            .with_key(self.config.device.clone())
            .with_header("device", self.config.device.clone())
            .with_source(self.partition(), offset)])
    }
}
