//! Records in: per-topic state and metadata lookups, the partition a record goes to, appending to
//! the partition's open batch, and evicting topics left idle.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{Actor, Batch, Delivery, Event, PartitionState, TopicState};
use crate::backoff::Backoff;
use crate::kafka::client::TopicMetadata;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::records::{PendingRecord, ProducerRecord};
use crate::record::{Timestamp, TopicPartition};
use crate::{Error, Result};

impl<T: Send + 'static> Actor<T> {
    /// Drops the state of topics that got no record for `idle` and have nothing waiting, queued
    /// or in flight: their partitions, and their metadata in the client's cache.
    pub(super) fn evict_idle(&mut self, idle: Duration) {
        let busy: HashSet<&Arc<str>> = self
            .partitions
            .iter()
            .filter(|(_, ps)| ps.in_flight || ps.open.is_some() || !ps.queue.is_empty())
            .map(|(tp, _)| &tp.topic)
            .collect();
        let evict: Vec<Arc<str>> = self
            .topics
            .iter()
            .filter(|(name, t)| {
                t.last_used.elapsed() >= idle
                    && t.waiting.is_empty()
                    && !t.resolving
                    && !busy.contains(name)
            })
            .map(|(name, _)| Arc::clone(name))
            .collect();
        if evict.is_empty() {
            return;
        }
        for topic in &evict {
            self.topics.remove(topic);
            self.client.forget_topic(topic);
        }
        let topics = &self.topics;
        self.partitions.retain(|tp, _| topics.contains_key(&tp.topic));
        debug!(evicted = evict.len(), topics = self.topics.len(), "evicted idle Kafka topics");
    }

    pub(super) async fn on_send(&mut self, records: Vec<(ProducerRecord, T)>) {
        let now = Timestamp::now();
        let mut failed = Vec::new();
        for (mut record, tag) in records {
            record.timestamp.get_or_insert(now);
            let topic = Arc::clone(&record.topic);
            if !self.budget.admit(&topic) {
                let max = self.budget.max_topics();
                failed.push(Delivery {
                    tag,
                    result: Err(Error::rejected(format!(
                        "Kafka topic {topic:?} would be one more than the {max} distinct topics this connector may write to at once (max_kafka_topics = {max}; a topic stops counting after kafka_topic_idle_ms = {} without records)",
                        self.budget.idle().as_millis()
                    ))
                    .with_topic(&*topic)),
                });
                continue;
            }
            let max_age = Duration::from_millis(self.client.config().metadata_max_age_ms);
            let state = self.topics.entry(Arc::clone(&topic)).or_insert_with(|| TopicState {
                meta: None,
                fetched: Instant::now(),
                last_used: Instant::now(),
                waiting: Vec::new(),
                flush_waiting: false,
                resolving: false,
                sticky: None,
            });
            state.last_used = Instant::now();
            let Some(meta) = state.meta.clone() else {
                state.waiting.push((record, tag));
                if !state.resolving {
                    state.resolving = true;
                    self.resolve(topic, Duration::ZERO, false);
                }
                continue;
            };
            if state.fetched.elapsed() > max_age && !state.resolving {
                state.resolving = true;
                self.resolve(Arc::clone(&topic), Duration::ZERO, true);
            }
            if let Err((tag, e)) = self.append(&meta, record, tag) {
                failed.push(Delivery { tag, result: Err(e) });
            }
        }
        if !failed.is_empty() {
            self.deliver(failed).await;
        }
    }

    /// Puts `record` into its partition's open batch.
    fn append(
        &mut self,
        meta: &TopicMetadata,
        record: ProducerRecord,
        tag: T,
    ) -> std::result::Result<(), (T, Error)> {
        let count = meta.partition_count();
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < 0 || p >= count => {
                return Err((
                    tag,
                    Error::rejected(format!(
                        "partition {p} does not exist (topic {} has {count})",
                        meta.name
                    ))
                    .with_topic(&*meta.name),
                ));
            }
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => match self.topics.get_mut(&meta.name) {
                Some(state) => match state.sticky {
                    Some(p) if p < count => p,
                    _ => {
                        let p = fastrand::i32(0..count.max(1));
                        state.sticky = Some(p);
                        p
                    }
                },
                None => 0,
            },
        };
        let tp = TopicPartition { topic: Arc::clone(&meta.name), partition };
        let backoff_config = self.client.config().retry_backoff;
        let ps = self.partitions.entry(tp).or_insert_with(|| PartitionState {
            open: None,
            queue: VecDeque::new(),
            in_flight: false,
            retry_at: None,
            backoff: Backoff::new(backoff_config),
            last_len: 0,
        });
        let pending = PendingRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp.unwrap_or_else(Timestamp::now).as_millis(),
        };
        let size = pending.size();
        if let Some(open) = &ps.open {
            if open.records.len() >= self.max_records
                || (!open.records.is_empty() && open.bytes + size > self.max_bytes)
            {
                if let Some(full) = ps.open.take() {
                    ps.last_len = full.records.len();
                    ps.queue.push_back(full);
                }
            }
        }
        let hint = ps.last_len.min(self.max_records);
        let open = ps.open.get_or_insert_with(|| Batch::with_capacity(hint));
        open.records.push(pending);
        open.tags.push(tag);
        open.bytes += size;
        Ok(())
    }

    pub(super) fn on_flush(&mut self) {
        for ps in self.partitions.values_mut() {
            if let Some(open) = &mut ps.open {
                open.flush = true;
            }
        }
        for t in self.topics.values_mut() {
            if !t.waiting.is_empty() {
                t.flush_waiting = true;
            }
        }
    }

    /// Looks up (and creates, if configured) `topic` in the background after `delay`; `fresh`
    /// bypasses the client's metadata cache.
    pub(super) fn resolve(&self, topic: Arc<str>, delay: Duration, fresh: bool) {
        let client = self.client.clone();
        self.tasks.push(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fresh {
                client.invalidate_topic(&topic);
            }
            let result = client.ensure_topic(&topic).await;
            Event::Metadata { topic, result }
        }));
    }
    pub(super) async fn on_metadata(
        &mut self,
        topic: Arc<str>,
        result: Result<Arc<TopicMetadata>>,
    ) {
        let Some(state) = self.topics.get_mut(&topic) else {
            return;
        };
        match result {
            Ok(meta) => {
                state.resolving = false;
                state.fetched = Instant::now();
                if state
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.partition_count() != meta.partition_count())
                {
                    debug!(topic = %topic, partitions = meta.partition_count(), "partition count changed");
                    state.sticky = None;
                }
                state.meta = Some(Arc::clone(&meta));
                let waiting = std::mem::take(&mut state.waiting);
                let flush = std::mem::take(&mut state.flush_waiting);
                let mut failed = Vec::new();
                for (record, tag) in waiting {
                    if let Err((tag, e)) = self.append(&meta, record, tag) {
                        failed.push(Delivery { tag, result: Err(e) });
                    }
                }
                if flush {
                    for (tp, ps) in &mut self.partitions {
                        if tp.topic == topic {
                            if let Some(open) = &mut ps.open {
                                open.flush = true;
                            }
                        }
                    }
                }
                if !failed.is_empty() {
                    self.deliver(failed).await;
                }
            }
            Err(e) if e.is_retriable() => {
                warn!(topic = %topic, error = %e.report(), "Kafka topic metadata unavailable; retrying");
                let delay =
                    Duration::from_millis(self.client.config().retry_backoff.max_ms.min(1000));
                self.resolve(topic, delay, true);
            }
            Err(e) => {
                // The topic cannot be used (invalid name, auto-create off, not authorized):
                // every record waiting for it fails with that reason.
                state.resolving = false;
                let waiting = std::mem::take(&mut state.waiting);
                let e = e.with_topic(&*topic);
                let failed = waiting
                    .into_iter()
                    .map(|(_, tag)| Delivery { tag, result: Err(e.clone()) })
                    .collect();
                self.deliver(failed).await;
                if state_has_no_meta(&self.topics, &topic) {
                    self.topics.remove(&topic);
                }
            }
        }
    }
}

fn state_has_no_meta<T>(topics: &super::FastMap<Arc<str>, TopicState<T>>, topic: &str) -> bool {
    topics.get(topic).is_some_and(|t| t.meta.is_none() && t.waiting.is_empty())
}
