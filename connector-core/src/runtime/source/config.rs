//! [`SourceRuntimeConfig`]: how the source runtime bounds and paces a task.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::ConfigErrors;
use crate::kafka::TopicBudget;
use crate::runtime::pipeline::Pipeline;

/// How the source runtime bounds and paces a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRuntimeConfig {
    /// Most records handed to Kafka and not yet acknowledged. For the MQTT source this is also the
    /// most MQTT messages held unacknowledged, so size it with the broker's in-flight limit.
    #[serde(default = "default_max_in_flight_records")]
    pub max_in_flight_records: usize,
    /// Most bytes (keys, values, headers) of records polled and not yet committed.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// How often offsets of acknowledged records are saved.
    #[serde(default = "default_offset_flush_interval_ms")]
    pub offset_flush_interval_ms: u64,
    /// How long shutdown waits for in-flight records to be acknowledged; the final offset save
    /// then gets as long again.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Most distinct Kafka topics the connector (all its tasks together) writes to at once. A
    /// record for one topic more is rejected to the error policy (`errors.tolerance = "all"`:
    /// dead-lettered, naming this limit). A topic counts from its first record until it has gone
    /// `kafka_topic_idle_ms` without one. Bounds the per-topic state a `kafka_topic` template fed
    /// by publishers can create.
    #[serde(default = "default_max_kafka_topics")]
    pub max_kafka_topics: usize,
    /// Milliseconds without a record after which a Kafka topic is forgotten: its producer and
    /// partition state and its cached metadata are dropped, and it no longer counts toward
    /// `max_kafka_topics`.
    #[serde(default = "default_kafka_topic_idle_ms")]
    pub kafka_topic_idle_ms: u64,
    /// Exactly-once sources only: most records (offset-only ones included) in one Kafka
    /// transaction. Clipped to `max_in_flight_records` (the MQTT source: its `inflight`), since
    /// a source holds its records unacknowledged until their transaction commits.
    #[serde(default = "default_transaction_max_records")]
    pub transaction_max_records: usize,
    /// Exactly-once sources only: longest a transaction stays open for more records after its
    /// first one was polled; it then commits with what it has.
    #[serde(default = "default_transaction_interval_ms")]
    pub transaction_interval_ms: u64,
    /// Whether the connector asked for exactly-once delivery
    /// ([`SourceConnector::exactly_once`](crate::SourceConnector::exactly_once); set by the
    /// runtime from the connector).
    #[serde(skip)]
    #[schemars(skip)]
    pub exactly_once: bool,
    /// The count behind `max_kafka_topics`, shared by the connector's tasks (set by the runner;
    /// `None`: each task counts alone).
    #[serde(skip)]
    #[schemars(skip)]
    pub topic_budget: Option<TopicBudget>,
    /// Transforms, converters and the error policy (the connector's `errors`, `transforms`,
    /// `key_converter`, `value_converter` keys).
    #[serde(skip)]
    #[schemars(skip)]
    pub pipeline: Pipeline,
}

fn default_max_in_flight_records() -> usize {
    10_000
}
fn default_max_in_flight_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_offset_flush_interval_ms() -> u64 {
    5_000
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_max_kafka_topics() -> usize {
    10_000
}
fn default_kafka_topic_idle_ms() -> u64 {
    300_000
}
fn default_transaction_max_records() -> usize {
    1_000
}
fn default_transaction_interval_ms() -> u64 {
    100
}

impl Default for SourceRuntimeConfig {
    fn default() -> Self {
        Self {
            max_in_flight_records: default_max_in_flight_records(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            offset_flush_interval_ms: default_offset_flush_interval_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            max_kafka_topics: default_max_kafka_topics(),
            kafka_topic_idle_ms: default_kafka_topic_idle_ms(),
            transaction_max_records: default_transaction_max_records(),
            transaction_interval_ms: default_transaction_interval_ms(),
            exactly_once: false,
            topic_budget: None,
            pipeline: Pipeline::default(),
        }
    }
}

impl SourceRuntimeConfig {
    /// Checks the values; paths are relative to this table.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.max_in_flight_records == 0 {
            e.push("max_in_flight_records", "must be at least 1");
        }
        if self.max_in_flight_bytes < 1024 {
            e.push("max_in_flight_bytes", "must be at least 1024");
        }
        if self.offset_flush_interval_ms == 0 {
            e.push("offset_flush_interval_ms", "must be at least 1");
        }
        if self.max_kafka_topics == 0 {
            e.push("max_kafka_topics", "must be at least 1");
        }
        if self.kafka_topic_idle_ms < 1000 {
            e.push("kafka_topic_idle_ms", "must be at least 1000");
        }
        if self.transaction_max_records == 0 {
            e.push("transaction_max_records", "must be at least 1");
        }
        if self.transaction_interval_ms == 0 {
            e.push("transaction_interval_ms", "must be at least 1");
        }
        e
    }

    /// The connector's topic budget: the shared one, or a new one from the limits.
    pub fn topic_budget(&self) -> TopicBudget {
        self.topic_budget.clone().unwrap_or_else(|| {
            TopicBudget::new(
                self.max_kafka_topics.max(1),
                Duration::from_millis(self.kafka_topic_idle_ms.max(1)),
            )
        })
    }
}
