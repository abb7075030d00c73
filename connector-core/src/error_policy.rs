//! The error policy: what happens to a record that fails (a bad conversion, a failed transform, a
//! record the destination refuses), in Kafka Connect's terms: `tolerance` `none` stops the task;
//! `all` sends the record to a dead-letter topic with `__connect.errors.*` context headers, or logs
//! it when there is none, and the stream goes on. Either way nothing vanishes: a tolerated record
//! is acknowledged upstream (source) or committed past (sink) only after it is in the dead-letter
//! topic or the log.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::ConfigErrors;
use crate::kafka::{KafkaClient, ProducerRecord};
use crate::record::Headers;
use crate::runtime::TaskCounters;
use crate::{Error, Result};

/// Whether record errors stop the task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tolerance {
    /// The first record error stops the task; nothing is committed past the record (default).
    #[default]
    None,
    /// Record errors go to the dead-letter topic (or the log) and the stream goes on.
    All,
}

/// How long a retriable failure of the task is retried before the connector stops
/// (`retry_timeout_ms`: `-1` is [`Forever`](RetryTimeout::Forever), `0` or more milliseconds
/// [`After`](RetryTimeout::After)).
///
/// ```
/// use std::time::Duration;
/// use connector_core::{ErrorPolicyConfig, RetryTimeout};
///
/// let c: ErrorPolicyConfig = toml::from_str("retry_timeout_ms = 1500").unwrap();
/// assert_eq!(c.retry_timeout_ms, RetryTimeout::After(Duration::from_millis(1500)));
/// let c: ErrorPolicyConfig = toml::from_str("retry_timeout_ms = -1").unwrap();
/// assert_eq!(c.retry_timeout_ms, RetryTimeout::Forever);
/// assert!(toml::from_str::<ErrorPolicyConfig>("retry_timeout_ms = -2").is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum RetryTimeout {
    /// Retry as long as it takes (default: a broker outage should be waited out, not turned into
    /// lost data). Written `-1`.
    #[default]
    Forever,
    /// Stop once the failures have lasted this long; zero means no retry.
    After(std::time::Duration),
}

impl RetryTimeout {
    /// The time limit, `None` for no limit.
    pub fn limit(self) -> Option<std::time::Duration> {
        match self {
            RetryTimeout::Forever => None,
            RetryTimeout::After(d) => Some(d),
        }
    }
}

impl TryFrom<i64> for RetryTimeout {
    type Error = String;
    fn try_from(ms: i64) -> std::result::Result<Self, String> {
        match ms {
            -1 => Ok(RetryTimeout::Forever),
            0.. => Ok(RetryTimeout::After(std::time::Duration::from_millis(ms.unsigned_abs()))),
            _ => Err("expected -1 (forever), 0 (no retry) or a number of milliseconds".to_owned()),
        }
    }
}

impl From<RetryTimeout> for i64 {
    fn from(t: RetryTimeout) -> Self {
        match t {
            RetryTimeout::Forever => -1,
            RetryTimeout::After(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

impl JsonSchema for RetryTimeout {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RetryTimeout".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "format": "int64", "minimum": -1 })
    }
}

/// The `[connector.errors]` table.
///
/// ```
/// use connector_core::{ErrorPolicyConfig, Tolerance};
///
/// let c: ErrorPolicyConfig = toml::from_str(r#"
///     tolerance = "all"
///     dead_letter_topic = "telemetry.dlq"
/// "#).unwrap();
/// assert_eq!(c.tolerance, Tolerance::All);
/// assert!(c.validate().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorPolicyConfig {
    /// `none` (default): the first record error stops the connector. `all`: bad records go to the
    /// dead-letter topic (or the log) and the stream goes on.
    #[serde(default)]
    pub tolerance: Tolerance,
    /// How long a retriable failure of the task (`poll`, `put`) is retried before the connector
    /// stops: milliseconds, `0` = no retry, `-1` = retry as long as it takes (default: a broker
    /// outage should be waited out, not turned into lost data).
    #[serde(default)]
    pub retry_timeout_ms: RetryTimeout,
    /// Largest delay between those retries, in milliseconds (jittered exponential backoff).
    #[serde(default = "default_retry_max_delay_ms")]
    pub retry_max_delay_ms: u64,
    /// Kafka topic for records that failed, with their original key, value and headers and
    /// `__connect.errors.*` headers saying where and why. Needs `tolerance = "all"`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Log every record error (records skipped without a dead-letter topic are always logged).
    #[serde(default)]
    pub log: bool,
    /// Include the record's key, value and headers in those log lines.
    #[serde(default)]
    pub log_include_messages: bool,
}

fn default_retry_max_delay_ms() -> u64 {
    60_000
}

impl Default for ErrorPolicyConfig {
    fn default() -> Self {
        Self {
            tolerance: Tolerance::None,
            retry_timeout_ms: RetryTimeout::Forever,
            retry_max_delay_ms: default_retry_max_delay_ms(),
            dead_letter_topic: None,
            log: false,
            log_include_messages: false,
        }
    }
}

impl ErrorPolicyConfig {
    /// Checks the values; paths are relative to the `errors` table.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.retry_max_delay_ms == 0 {
            e.push("retry_max_delay_ms", "must be at least 1");
        }
        if let Some(t) = &self.dead_letter_topic {
            if let Err(msg) = crate::kafka::validate_topic_name(t) {
                e.push("dead_letter_topic", msg);
            }
            if self.tolerance == Tolerance::None {
                e.push(
                    "dead_letter_topic",
                    "needs tolerance = \"all\" (with \"none\" the first error stops the connector)",
                );
            }
        }
        e
    }

    /// The retry time limit, `None` for no limit.
    pub(crate) fn retry_limit(&self) -> Option<std::time::Duration> {
        self.retry_timeout_ms.limit()
    }
}

/// Where in the pipeline a record failed (Kafka Connect's stage names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Stage {
    /// The source task marked the record as bad.
    TaskPoll,
    /// A transform failed.
    Transformation,
    /// The key converter refused the key.
    KeyConverter,
    /// The value converter refused the value.
    ValueConverter,
    /// Kafka refused the record (too large, invalid topic).
    KafkaProduce,
    /// The sink task refused the record.
    TaskPut,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::TaskPoll => "TASK_POLL",
            Stage::Transformation => "TRANSFORMATION",
            Stage::KeyConverter => "KEY_CONVERTER",
            Stage::ValueConverter => "VALUE_CONVERTER",
            Stage::KafkaProduce => "KAFKA_PRODUCE",
            Stage::TaskPut => "TASK_PUT",
        })
    }
}

/// A record that failed, with where it was.
#[derive(Debug)]
pub(crate) struct FailedRecord<'a> {
    /// Where it failed.
    pub stage: Stage,
    /// Why.
    pub error: &'a Error,
    /// Its Kafka topic (the one read from for a sink; the one it was going to for a source).
    pub topic: &'a str,
    /// Its partition, if known.
    pub partition: Option<i32>,
    /// Its offset, if known (sinks).
    pub offset: Option<i64>,
    /// Its key.
    pub key: Option<&'a Bytes>,
    /// Its value.
    pub value: Option<&'a Bytes>,
    /// Its headers.
    pub headers: &'a Headers,
}

/// Applies an [`ErrorPolicyConfig`] for one task.
#[derive(Debug, Clone)]
pub(crate) struct ErrorHandler {
    config: ErrorPolicyConfig,
    connector: Arc<str>,
    task: usize,
    client: KafkaClient,
    stats: Arc<TaskCounters>,
}

/// What the error policy did with a record it tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Written to the dead-letter topic.
    DeadLettered,
    /// Logged and skipped (no dead-letter topic).
    Skipped,
}

/// How much of a value a log line shows.
const LOG_PREVIEW: usize = 256;

fn preview(b: Option<&Bytes>) -> String {
    match b {
        None => "null".to_owned(),
        Some(b) => {
            let text = String::from_utf8_lossy(&b[..b.len().min(LOG_PREVIEW)]).into_owned();
            if b.len() > LOG_PREVIEW {
                format!("{text}... ({} bytes)", b.len())
            } else {
                text
            }
        }
    }
}

impl ErrorHandler {
    /// A handler for task `task` of `connector`, writing dead letters through `client`.
    pub(crate) fn new(
        config: ErrorPolicyConfig,
        connector: Arc<str>,
        task: usize,
        client: KafkaClient,
        stats: Arc<TaskCounters>,
    ) -> Self {
        Self { config, connector, task, client, stats }
    }

    /// Handles a failed record: `Ok` when it was tolerated (now in the dead-letter topic, or
    /// logged), so the stream may go past it.
    ///
    /// # Errors
    /// The record's error, when the policy does not tolerate it (the task must stop), or the
    /// dead-letter write's error.
    pub(crate) async fn handle(&self, f: FailedRecord<'_>) -> Result<Handled> {
        self.stats.add_record_error();
        let error = f
            .error
            .clone()
            .with_connector(&*self.connector)
            .with_task(self.task)
            .with_topic(f.topic);
        let error = match (f.partition, f.offset) {
            (Some(p), Some(o)) => error.with_partition(p).with_offset(o),
            (Some(p), None) => error.with_partition(p),
            _ => error,
        };
        if self.config.tolerance == Tolerance::None {
            return Err(error);
        }
        let dead_letter = self.config.dead_letter_topic.as_deref();
        if self.config.log || dead_letter.is_none() {
            let outcome = match dead_letter {
                Some(t) => format!("sent to dead-letter topic {t}"),
                None => "skipped (tolerance = \"all\", no dead-letter topic)".to_owned(),
            };
            if self.config.log_include_messages {
                let headers: Vec<String> = f
                    .headers
                    .iter()
                    .map(|h| format!("{}={}", h.key, preview(Some(&h.value))))
                    .collect();
                warn!(connector = %self.connector, task = self.task, stage = %f.stage, error = %error,
                    key = %preview(f.key), value = %preview(f.value), headers = %headers.join(", "),
                    "record error; {outcome}");
            } else {
                warn!(connector = %self.connector, task = self.task, stage = %f.stage, error = %error, "record error; {outcome}");
            }
        }
        if let Some(topic) = dead_letter {
            let mut headers = f.headers.clone();
            let mut add =
                |k: &str, v: String| headers.push(format!("__connect.errors.{k}"), Bytes::from(v));
            add("topic", f.topic.to_owned());
            add("partition", f.partition.unwrap_or(-1).to_string());
            add("offset", f.offset.unwrap_or(-1).to_string());
            add("connector.name", self.connector.to_string());
            add("task.id", self.task.to_string());
            add("stage", f.stage.to_string());
            add("exception.class.name", f.error.kind().to_string());
            add("exception.message", f.error.report());
            let record = ProducerRecord {
                topic: Arc::from(topic),
                partition: None,
                key: f.key.cloned(),
                value: f.value.cloned(),
                headers,
                timestamp: None,
            };
            self.stats.add_dlq_request();
            self.client.produce(vec![record]).await.map_err(|e| {
                self.stats.add_dlq_failure();
                Error::fatal(format!("cannot write to dead-letter topic {topic}: {}", e.report()))
                    .with_connector(&*self.connector)
            })?;
            self.stats.add_dead_letter();
            self.stats.add_record_skipped();
            return Ok(Handled::DeadLettered);
        }
        self.stats.add_record_skipped();
        Ok(Handled::Skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_topic_needs_tolerance_all_and_a_legal_name() {
        let c =
            ErrorPolicyConfig { dead_letter_topic: Some("bad topic".into()), ..Default::default() };
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["dead_letter_topic", "dead_letter_topic"]);
    }

    #[test]
    fn the_retry_timeout_reads_and_writes_minus_one_as_forever() {
        use std::time::Duration;
        assert_eq!(ErrorPolicyConfig::default().retry_limit(), None);
        let c = ErrorPolicyConfig {
            retry_timeout_ms: RetryTimeout::After(Duration::from_millis(1500)),
            ..Default::default()
        };
        assert_eq!(c.retry_limit(), Some(Duration::from_millis(1500)));
        for (ms, t) in [
            (-1, RetryTimeout::Forever),
            (0, RetryTimeout::After(Duration::ZERO)),
            (60_000, RetryTimeout::After(Duration::from_secs(60))),
        ] {
            assert_eq!(RetryTimeout::try_from(ms), Ok(t));
            assert_eq!(i64::from(t), ms);
        }
        let e = toml::from_str::<ErrorPolicyConfig>("retry_timeout_ms = -2").unwrap_err();
        assert!(e.message().contains("expected -1 (forever), 0 (no retry)"), "{e}");
        let schema = schemars::schema_for!(ErrorPolicyConfig).to_value();
        let p = &schema["properties"]["retry_timeout_ms"];
        assert_eq!((p["type"].as_str(), p["default"].as_i64()), (Some("integer"), Some(-1)), "{p}");
    }

    #[test]
    fn stages_use_kafka_connect_names() {
        assert_eq!(Stage::ValueConverter.to_string(), "VALUE_CONVERTER");
        assert_eq!(Stage::TaskPut.to_string(), "TASK_PUT");
    }
}
