//! Topic administration and offset lookups: creating (and waiting for) topics, deleting them,
//! reading their configs, and the earliest or latest offset of a partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::{
    CreateTopicConfig, CreateTopicRequest, CreateTopicsRequest, DeleteTopicsRequest,
    ListOffsetsRequest, ListOffsetsRequestPartition, ListOffsetsRequestTopic, NORMAL_CONSUMER,
};
use crate::kafka::wire::primitives::{Array, Int16, Int32, Int64, NullableString, String_};
use tracing::{debug, info, warn};

use super::lanes::{Lane, Target};
use super::{KafkaClient, TopicMetadata};
use crate::backoff::Backoff;
use crate::kafka::describe_configs::{DescribeConfigsRequest, RESOURCE_TOPIC};
use crate::kafka::errors::{api_error, invalidates_metadata};
use crate::{Error, Result};

/// Which end of a partition to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still stored.
    Earliest,
    /// The offset the next written record will get (the high watermark).
    Latest,
}

impl KafkaClient {
    /// Metadata for `topic`, creating it first (with the configured partitions and replication
    /// factor) when it does not exist and `auto_create_topics` is on. Waits until every partition
    /// has a leader.
    ///
    /// # Errors
    /// Fatal when the topic does not exist and auto-creation is off; retriable when the cluster did
    /// not answer or the new topic did not get leaders within the request timeout.
    pub async fn ensure_topic(&self, topic: &str) -> Result<Arc<TopicMetadata>> {
        if let Some(meta) = self.cached_topic(topic) {
            if meta.partitions.iter().all(|p| p.leader.is_some()) {
                return Ok(meta);
            }
        }
        let deadline = Instant::now() + self.inner.config.request_timeout();
        let mut backoff = Backoff::new(self.inner.config.retry_backoff);
        let mut created = false;
        loop {
            let result = match self.refresh_topic(topic).await {
                Ok(Some(meta)) if meta.partitions.iter().all(|p| p.leader.is_some()) => {
                    return Ok(meta)
                }
                Ok(Some(_)) => {
                    Err(Error::retriable(format!("topic {topic} has partitions without a leader")))
                }
                Ok(None) if !self.inner.config.auto_create_topics => {
                    return Err(Error::fatal(format!(
                        "Kafka topic {topic} does not exist and kafka.auto_create_topics is false"
                    ))
                    .with_topic(topic))
                }
                Ok(None) if !created => {
                    let config = &self.inner.config;
                    self.create_topic(
                        topic,
                        config.topic_partitions,
                        config.topic_replication_factor,
                    )
                    .await
                    .map(|()| created = true)
                }
                Ok(None) => {
                    Err(Error::retriable(format!("created topic {topic} is not visible yet")))
                }
                Err(e) => Err(e),
            };
            match result {
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::retriable(format!(
                        "topic {topic} not ready: {}",
                        e.report()
                    )))
                }
                Err(e) => debug!(topic, error = %e.report(), "topic not ready yet"),
                Ok(()) => {}
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Creates `topic`. An existing topic is not an error.
    ///
    /// # Errors
    /// Fatal when the broker refuses (invalid name, too many partitions, policy); retriable when no
    /// broker answered.
    pub async fn create_topic(&self, topic: &str, partitions: i32, replication: i16) -> Result<()> {
        self.create_topic_with_configs(topic, partitions, replication, &[]).await
    }

    /// Creates `topic` with topic-level `configs` (such as `("cleanup.policy", "compact")`). An
    /// existing topic is not an error, and its configs are left as they are.
    ///
    /// # Errors
    /// As for [`create_topic`](Self::create_topic); also fatal when the broker refuses a config.
    pub async fn create_topic_with_configs(
        &self,
        topic: &str,
        partitions: i32,
        replication: i16,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let request = CreateTopicsRequest {
            topics: vec![CreateTopicRequest {
                name: String_(topic.to_owned()),
                num_partitions: Int32(partitions),
                replication_factor: Int16(replication),
                assignments: vec![],
                configs: configs
                    .iter()
                    .map(|(name, value)| CreateTopicConfig {
                        name: String_((*name).to_owned()),
                        value: NullableString(Some((*value).to_owned())),
                        tagged_fields: None,
                    })
                    .collect(),
                tagged_fields: None,
            }],
            timeout_ms: Int32(self.inner.config.request_timeout_field()),
            validate_only: None,
            tagged_fields: None,
        };
        let response = self.request(self.controller(), &request).await?;
        for t in response.topics {
            match t.error {
                None => {
                    info!(topic, partitions, replication, ?configs, "created Kafka topic");
                }
                Some(ApiError::TopicAlreadyExists) => {}
                Some(ApiError::NotController) => {
                    self.inner.state.lock().controller = None;
                    return Err(Error::retriable(format!(
                        "create topic {topic}: not the controller"
                    )));
                }
                Some(e) => {
                    let detail = t.error_message.and_then(|m| m.0).unwrap_or_default();
                    return Err(
                        api_error(e, format!("create topic {topic} ({detail})")).with_topic(topic)
                    );
                }
            }
        }
        self.invalidate_topic(topic);
        Ok(())
    }

    /// Deletes `topic`. A topic that does not exist is not an error.
    ///
    /// # Errors
    /// Fatal when the broker refuses (not allowed); retriable when no broker answered.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let request = DeleteTopicsRequest {
            topic_names: Array(Some(vec![String_(topic.to_owned())])),
            timeout_ms: Int32(self.inner.config.request_timeout_field()),
            tagged_fields: None,
        };
        let response = self.request(self.controller(), &request).await?;
        for t in response.responses {
            match t.error {
                None => info!(topic, "deleted Kafka topic"),
                Some(ApiError::UnknownTopicOrPartition) => {}
                Some(e) => {
                    return Err(api_error(e, format!("delete topic {topic}")).with_topic(topic))
                }
            }
        }
        self.invalidate_topic(topic);
        Ok(())
    }

    /// The topic-level configs of `topic` the broker lists (DescribeConfigs), as name -> value.
    /// Kafka lists every config, defaults included; some brokers (Tansu 0.6) list only the ones
    /// set when the topic was created. `Ok(None)` when the broker does not answer DescribeConfigs
    /// (it does not support it, or refuses us the describe permission), so the caller cannot check.
    ///
    /// # Errors
    /// Retriable when no broker answered; fatal for any other error the broker names.
    pub async fn topic_configs(
        &self,
        topic: &str,
    ) -> Result<Option<HashMap<String, Option<String>>>> {
        let request =
            DescribeConfigsRequest { resources: vec![(RESOURCE_TOPIC, topic.to_owned(), None)] };
        let response = match self.request(Target::Any, &request).await {
            Ok(r) => r,
            Err(e) if e.to_string().contains("supports no version of") => {
                debug!(topic, "broker does not support DescribeConfigs");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(result) = response.results.into_iter().find(|r| r.resource_name == topic) else {
            return Err(Error::retriable(format!("describe configs: no answer for topic {topic}")));
        };
        match result.error {
            None => Ok(Some(result.configs.into_iter().collect())),
            Some(ApiError::TopicAuthorizationFailed | ApiError::ClusterAuthorizationFailed) => {
                warn!(topic, "not allowed to describe the topic's configs; cannot check them");
                Ok(None)
            }
            Some(e) => {
                let detail = result.error_message.unwrap_or_default();
                Err(api_error(e, format!("describe configs of topic {topic} ({detail})"))
                    .with_topic(topic))
            }
        }
    }

    /// The earliest or latest offset of a partition.
    ///
    /// # Errors
    /// Retriable when the leader did not answer or moved.
    pub async fn list_offset(&self, topic: &str, partition: i32, spec: OffsetSpec) -> Result<i64> {
        let leader = self.leader_for(topic, partition).await?;
        let request = ListOffsetsRequest {
            replica_id: NORMAL_CONSUMER,
            isolation_level: None,
            topics: vec![ListOffsetsRequestTopic {
                name: String_(topic.to_owned()),
                partitions: vec![ListOffsetsRequestPartition {
                    partition_index: Int32(partition),
                    timestamp: Int64(match spec {
                        OffsetSpec::Earliest => -2,
                        OffsetSpec::Latest => -1,
                    }),
                    max_num_offsets: Some(Int32(1)),
                }],
            }],
        };
        let response = self.request(Target::Node(leader, Lane::Control), &request).await?;
        let found = response
            .topics
            .into_iter()
            .filter(|t| t.name.0 == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index.0 == partition);
        let Some(p) = found else {
            return Err(Error::retriable(format!(
                "list offsets: no answer for {topic}-{partition}"
            )));
        };
        if let Some(e) = p.error_code {
            if invalidates_metadata(e) {
                self.invalidate_topic(topic);
            }
            return Err(api_error(e, format!("list offsets of {topic}-{partition}"))
                .with_topic(topic)
                .with_partition(partition));
        }
        p.offset
            .map(|o| o.0)
            .or_else(|| p.old_style_offsets.and_then(|a| a.0).and_then(|v| v.first().map(|o| o.0)))
            .ok_or_else(|| {
                Error::retriable(format!("list offsets of {topic}-{partition}: no offset"))
            })
    }

    /// Where topic creation and deletion go: the controller when metadata named one, else any
    /// broker (which forwards or answers NotController).
    fn controller(&self) -> Target {
        let controller = self.inner.state.lock().controller;
        controller.map_or(Target::Any, |c| Target::Node(c, Lane::Control))
    }
}
