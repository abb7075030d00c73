//! The metadata cache: topics, their partitions and leaders as Metadata responses describe them,
//! looked up from cache while fresh (`metadata_max_age_ms`) and marked stale when a broker says a
//! leader moved. Fetching metadata also keeps the broker map (and the controller) current.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::{MetadataRequest, MetadataRequestTopic, MetadataResponse};
use crate::kafka::wire::primitives::{Boolean, String_};

use super::lanes::Target;
use super::{CachedTopic, KafkaClient, State};
use crate::kafka::errors::{api_error, invalidates_metadata};
use crate::{Error, Result};

/// A topic's partitions and their leaders, as last seen in a Metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: Arc<str>,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    /// Number of partitions.
    pub fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }

    /// Leader of `partition`, if it has one.
    pub fn leader(&self, partition: i32) -> Option<i32> {
        usize::try_from(partition).ok().and_then(|p| self.partitions.get(p)).and_then(|p| p.leader)
    }
}

/// One partition of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Partition index.
    pub partition: i32,
    /// Broker id of the leader; `None` while the partition has no leader.
    pub leader: Option<i32>,
}

impl KafkaClient {
    /// Metadata for `topic`, from cache when fresh. `Ok(None)` when the topic does not exist.
    ///
    /// # Errors
    /// Retriable when no broker answered.
    pub async fn topic_metadata(&self, topic: &str) -> Result<Option<Arc<TopicMetadata>>> {
        if let Some(meta) = self.cached_topic(topic) {
            return Ok(Some(meta));
        }
        self.refresh_topic(topic).await
    }

    /// Fetches fresh metadata for `topic`, ignoring the cache.
    ///
    /// # Errors
    /// Retriable when no broker answered.
    pub async fn refresh_topic(&self, topic: &str) -> Result<Option<Arc<TopicMetadata>>> {
        let response = self.fetch_metadata(Some(&[topic])).await?;
        let mut found = None;
        for t in response.topics {
            if t.name.0 != topic {
                continue;
            }
            match t.error {
                None | Some(ApiError::LeaderNotAvailable) => {}
                Some(ApiError::UnknownTopicOrPartition) => return Ok(None),
                Some(ApiError::InvalidTopicException) => {
                    return Err(Error::rejected(format!(
                        "{topic:?} is not a valid Kafka topic name"
                    ))
                    .with_topic(topic))
                }
                Some(e) => return Err(api_error(e, format!("metadata for topic {topic}"))),
            }
            let mut partitions: Vec<PartitionMetadata> = t
                .partitions
                .iter()
                .map(|p| PartitionMetadata {
                    partition: p.partition_index.0,
                    leader: (p.leader_id.0 >= 0
                        && p.error.is_none_or(|e| !invalidates_metadata(e)))
                    .then_some(p.leader_id.0),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let contiguous = partitions
                .iter()
                .enumerate()
                .all(|(i, p)| usize::try_from(p.partition).is_ok_and(|n| n == i));
            if !contiguous || partitions.is_empty() {
                // A topic being created can briefly report no or some partitions.
                return Err(Error::retriable(format!(
                    "metadata for topic {topic} is incomplete ({} partitions listed)",
                    partitions.len()
                )));
            }
            let meta = Arc::new(TopicMetadata { name: Arc::from(topic), partitions });
            self.inner.state.lock().topics.insert(
                Arc::clone(&meta.name),
                CachedTopic { meta: Arc::clone(&meta), fetched: Instant::now(), stale: false },
            );
            found = Some(meta);
        }
        Ok(found)
    }

    /// Leader of `topic`/`partition`, from cache or a metadata refresh.
    pub(crate) async fn leader_for(&self, topic: &str, partition: i32) -> Result<i32> {
        let meta = match self.topic_metadata(topic).await? {
            Some(m) => m,
            None => {
                return Err(
                    Error::retriable(format!("topic {topic} does not exist")).with_topic(topic)
                )
            }
        };
        if partition < 0 || partition >= meta.partition_count() {
            return Err(Error::fatal(format!(
                "partition {partition} does not exist (topic {topic} has {})",
                meta.partition_count()
            )));
        }
        match meta.leader(partition) {
            Some(l) => Ok(l),
            None => {
                self.invalidate_topic(topic);
                Err(Error::retriable(format!("{topic}-{partition} has no leader")))
            }
        }
    }

    /// Cached metadata for `topic` if present and fresh.
    pub(crate) fn cached_topic(&self, topic: &str) -> Option<Arc<TopicMetadata>> {
        let max_age = Duration::from_millis(self.inner.config.metadata_max_age_ms);
        let state = self.inner.state.lock();
        state
            .topics
            .get(topic)
            .filter(|c| !c.stale && c.fetched.elapsed() < max_age)
            .map(|c| Arc::clone(&c.meta))
    }

    /// Marks `topic`'s metadata stale, so the next lookup refreshes it.
    pub(crate) fn invalidate_topic(&self, topic: &str) {
        if let Some(c) = self.inner.state.lock().topics.get_mut(topic) {
            c.stale = true;
        }
    }

    /// Drops `topic` from the metadata cache (a producer evicted it as idle), so the cache holds
    /// no more topics than are in use.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.inner.state.lock().topics.remove(topic);
    }

    /// Every topic of the cluster and its partition ids (one Metadata request for all topics).
    pub(crate) async fn all_topic_partitions(&self) -> Result<Vec<(String, Vec<i32>)>> {
        let response = self.fetch_metadata(None).await?;
        Ok(response
            .topics
            .into_iter()
            .map(|t| (t.name.0, t.partitions.iter().map(|p| p.partition_index.0).collect()))
            .collect())
    }

    /// Fetches metadata (`None` = all topics, `Some(&[])` = brokers only) and updates the broker map.
    pub(super) async fn fetch_metadata(&self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let names = topics.map(|ts| {
            ts.iter().map(|t| MetadataRequestTopic { name: String_((*t).to_owned()) }).collect()
        });
        let refuse = self.inner.metadata_can_refuse_auto_create.load(Ordering::Relaxed);
        let request = MetadataRequest {
            topics: names,
            allow_auto_topic_creation: refuse.then_some(Boolean(false)),
        };
        let response = match self.request(Target::Any, &request).await {
            Err(Error::Fatal { message, .. })
                if refuse && message.contains("allow_auto_topic_creation") =>
            {
                // The broker speaks Metadata < v4, which has no such field (and never auto-creates
                // on our behalf unless configured to).
                self.inner.metadata_can_refuse_auto_create.store(false, Ordering::Relaxed);
                let request =
                    MetadataRequest { topics: request.topics, allow_auto_topic_creation: None };
                self.request(Target::Any, &request).await?
            }
            other => other?,
        };
        let mut state = self.inner.state.lock();
        let brokers: HashMap<i32, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.0, b.port.0)))
            .collect();
        if !brokers.is_empty() {
            // Drop connections to brokers that left or moved.
            let State { conns, brokers: known, .. } = &mut *state;
            conns.retain(|(id, _), _| brokers.get(id).is_some_and(|a| known.get(id) == Some(a)));
            *known = brokers;
        }
        if let Some(c) = response.controller_id {
            state.controller = (c.0 >= 0).then_some(c.0);
        }
        Ok(response)
    }
}
