//! [`Pipeline`]: what a connector's records go through on their way between the task and Kafka,
//! and what happens when one fails. A source applies transforms, then the key and value converters;
//! a sink applies the converters, then the transforms. Failures go to the error policy.

use std::sync::Arc;
use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::converter::{Converter, JsonOutput};
use crate::error_policy::{ErrorPolicyConfig, Stage};
use crate::kafka::ProducerRecord;
use crate::record::{SinkRecord, SourceRecord};
use crate::transform::{TransformChain, TransformRecord};

/// A connector's converters, transforms and error policy.
///
/// ```
/// use connector_core::runtime::Pipeline;
/// use connector_core::{Converter, ErrorPolicyConfig, Tolerance};
///
/// let pipeline = Pipeline {
///     value_converter: Converter::Json,
///     errors: ErrorPolicyConfig { tolerance: Tolerance::All, dead_letter_topic: Some("dlq".into()), ..Default::default() },
///     ..Pipeline::default()
/// };
/// assert!(!pipeline.is_passthrough());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pipeline {
    /// Checks record keys.
    pub key_converter: Converter,
    /// Checks record values.
    pub value_converter: Converter,
    /// Rewrite JSON keys and values compactly.
    pub json_reserialize: bool,
    /// Transforms, in order.
    pub transforms: TransformChain,
    /// What happens to records that fail.
    pub errors: ErrorPolicyConfig,
}

impl Pipeline {
    /// True when records pass through unchanged (no transforms, `bytes` converters).
    pub fn is_passthrough(&self) -> bool {
        self.transforms.is_empty()
            && self.key_converter == Converter::Bytes
            && self.value_converter == Converter::Bytes
    }

    /// Backoff for retriable task failures (`poll`, `put`), up to `retry_max_delay_ms`.
    pub(crate) fn task_backoff(&self) -> BackoffConfig {
        let max_ms = self.errors.retry_max_delay_ms.max(1);
        BackoffConfig { min_ms: 100.min(max_ms), max_ms, jitter: 0.2 }
    }

    /// How long retriable task failures are retried, `None` = no limit.
    pub(crate) fn retry_limit(&self) -> Option<Duration> {
        self.errors.retry_limit()
    }

    fn convert(&self, r: TransformRecord) -> Result<TransformRecord, (Stage, String)> {
        let json = if self.json_reserialize { JsonOutput::Compact } else { JsonOutput::AsReceived };
        let key = self
            .key_converter
            .convert(r.key, json)
            .map_err(|m| (Stage::KeyConverter, format!("key: {m}")))?;
        let value = self
            .value_converter
            .convert(r.value, json)
            .map_err(|m| (Stage::ValueConverter, format!("value: {m}")))?;
        Ok(TransformRecord { key, value, ..r })
    }

    fn transform(&self, r: TransformRecord) -> Result<Option<TransformRecord>, (Stage, String)> {
        self.transforms.apply(r).map_err(|e| (Stage::Transformation, e.to_string()))
    }

    /// What a source record becomes in Kafka: `Ok(None)` when a transform dropped it.
    /// `topics` hands out the Kafka topic, checked once for consecutive records of one topic.
    pub(crate) fn source(
        &self,
        r: &SourceRecord,
        topics: &mut TopicCache,
    ) -> Result<Option<ProducerRecord>, (Stage, String)> {
        if self.is_passthrough() {
            return Ok(Some(ProducerRecord {
                topic: topics.get(&r.topic)?,
                partition: r.partition,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
                timestamp: r.timestamp,
            }));
        }
        let t = TransformRecord {
            topic: r.topic.clone(),
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp: r.timestamp,
        };
        let Some(t) = self.transform(t)? else { return Ok(None) };
        let t = self.convert(t)?;
        Ok(Some(ProducerRecord {
            topic: topics.get(&t.topic)?,
            partition: r.partition,
            key: t.key,
            value: t.value,
            headers: t.headers,
            timestamp: t.timestamp,
        }))
    }

    /// What a fetched record becomes for `put`: `Ok(None)` when a transform dropped it. Offsets stay
    /// with the record's original topic and partition.
    pub(crate) fn sink(&self, r: &SinkRecord) -> Result<Option<SinkRecord>, (Stage, String)> {
        let t = TransformRecord {
            topic: r.topic.to_string(),
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp: Some(r.timestamp),
        };
        let t = self.convert(t)?;
        let Some(t) = self.transform(t)? else { return Ok(None) };
        Ok(Some(SinkRecord {
            topic: if *t.topic == *r.topic { Arc::clone(&r.topic) } else { Arc::from(t.topic) },
            original_topic: Arc::clone(&r.original_topic),
            partition: r.partition,
            offset: r.offset,
            key: t.key,
            value: t.value,
            headers: t.headers,
            timestamp: t.timestamp.unwrap_or(r.timestamp),
        }))
    }
}

/// The Kafka topic of the last source record, shared and already checked: consecutive records
/// for one topic (the common case) take neither an allocation nor a check of the name.
#[derive(Debug, Default)]
pub(crate) struct TopicCache(Option<Arc<str>>);

impl TopicCache {
    /// `topic` as a shared name, or why Kafka would refuse it.
    pub(crate) fn get(&mut self, topic: &str) -> Result<Arc<str>, (Stage, String)> {
        if let Some(last) = &self.0 {
            if **last == *topic {
                return Ok(Arc::clone(last));
            }
        }
        crate::kafka::validate_topic_name(topic).map_err(|why| {
            (Stage::KafkaProduce, format!("cannot write to Kafka topic {topic:?}: {why}"))
        })?;
        let shared: Arc<str> = Arc::from(topic);
        self.0 = Some(Arc::clone(&shared));
        Ok(shared)
    }
}
