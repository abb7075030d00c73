//! Batches out: choosing the batches that are ready, one Produce request per leader broker, and
//! handling the answer (deliveries, retries with backoff, splitting a batch that is too large).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::ProduceResponse;
use tracing::{debug, warn};

use super::{Actor, Batch, Delivery, Event};
use crate::kafka::client::Lane;
use crate::kafka::errors::{api_error, invalidates_metadata, is_retriable_code};
use crate::kafka::records::{encode_batch, EncodedBatch, EncodedProduceRequest};
use crate::record::{RecordMetadata, Timestamp, TopicPartition};
use crate::{Error, Result};

impl<T: Send + 'static> Actor<T> {
    /// Sends every batch that is ready, one request per leader broker.
    pub(super) fn dispatch(&mut self) {
        let now = Instant::now();
        let mut per_node: HashMap<i32, Vec<(TopicPartition, Batch<T>)>> = HashMap::new();
        let mut refresh = Vec::new();
        for (tp, ps) in &mut self.partitions {
            if ps.in_flight || ps.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            ps.retry_at = None;
            if ps.queue.is_empty() {
                let ready = ps.open.as_ref().is_some_and(|b| {
                    b.flush
                        || b.records.len() >= self.max_records
                        || b.bytes >= self.max_bytes
                        || now >= b.created + self.linger
                });
                if ready {
                    if let Some(b) = ps.open.take() {
                        ps.last_len = b.records.len();
                        ps.queue.push_back(b);
                        if let Some(t) = self.topics.get_mut(&tp.topic) {
                            if t.sticky == Some(tp.partition) {
                                t.sticky = None;
                            }
                        }
                    }
                }
            }
            if ps.queue.is_empty() {
                continue;
            }
            let leader = self
                .topics
                .get(&tp.topic)
                .and_then(|t| t.meta.as_ref())
                .and_then(|m| m.leader(tp.partition));
            let Some(leader) = leader else {
                refresh.push(Arc::clone(&tp.topic));
                ps.retry_at = Some(now + ps.backoff.next_delay());
                continue;
            };
            if let Some(mut batch) = ps.queue.pop_front() {
                batch.first_sent.get_or_insert(now);
                ps.in_flight = true;
                per_node.entry(leader).or_default().push((tp.clone(), batch));
            }
        }
        for topic in refresh {
            self.refresh_topic(topic);
        }
        for (node, batches) in per_node {
            self.send_request(node, batches);
        }
    }

    fn refresh_topic(&mut self, topic: Arc<str>) {
        if let Some(t) = self.topics.get_mut(&topic) {
            if !t.resolving {
                t.resolving = true;
                self.resolve(topic, Duration::ZERO, true);
            }
        }
    }

    fn send_request(&self, node: i32, batches: Vec<(TopicPartition, Batch<T>)>) {
        let config = self.client.config();
        let mut topics: Vec<(Arc<str>, Vec<EncodedBatch>)> = Vec::new();
        for (tp, batch) in &batches {
            // The batch's bytes plus room for each record's framing (varints, attributes).
            let mut encoded = Vec::with_capacity(64 + batch.bytes + 32 * batch.records.len());
            if let Err(e) = encode_batch(&batch.records, config.compression, &mut encoded) {
                // Not reachable within the batch size limits; fail the request's records rather
                // than send a broken batch.
                self.tasks.push(Box::pin(async move {
                    Event::Produced { node, batches, result: Err(e) }
                }));
                return;
            }
            match topics.iter_mut().find(|(name, _)| *name == tp.topic) {
                Some((_, partitions)) => partitions.push((tp.partition, encoded)),
                None => topics.push((Arc::clone(&tp.topic), vec![(tp.partition, encoded)])),
            }
        }
        let request =
            EncodedProduceRequest { acks: -1, timeout_ms: config.request_timeout_field(), topics };
        let client = self.client.clone();
        self.tasks.push(Box::pin(async move {
            let result = client.request_node(node, Lane::Produce, request).await;
            Event::Produced { node, batches, result }
        }));
    }

    pub(super) async fn on_produced(
        &mut self,
        node: i32,
        batches: Vec<(TopicPartition, Batch<T>)>,
        result: Result<ProduceResponse>,
    ) {
        let mut deliveries = Vec::new();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                for (tp, batch) in batches {
                    self.retry_or_fail(tp, batch, e.clone(), &mut deliveries);
                }
                self.deliver(deliveries).await;
                return;
            }
        };
        let mut by_partition = HashMap::new();
        for t in response.responses {
            for p in t.partition_responses {
                by_partition.insert((t.name.0.clone(), p.index.0), p);
            }
        }
        for (tp, batch) in batches {
            let Some(p) = by_partition.remove(&(tp.topic.to_string(), tp.partition)) else {
                let e = Error::retriable(format!("broker {node} sent no answer for {tp}"));
                self.retry_or_fail(tp, batch, e, &mut deliveries);
                continue;
            };
            match p.error {
                None => {
                    let base = p.base_offset.0;
                    let append_time = p.log_append_time_ms.map(|t| t.0).filter(|t| *t >= 0);
                    for (i, (tag, record)) in batch.tags.into_iter().zip(batch.records).enumerate()
                    {
                        deliveries.push(Delivery {
                            tag,
                            result: Ok(RecordMetadata {
                                topic: Arc::clone(&tp.topic),
                                partition: tp.partition,
                                offset: base + i64::try_from(i).unwrap_or(i64::MAX),
                                timestamp: Timestamp::from_millis(
                                    append_time.unwrap_or(record.timestamp),
                                ),
                            }),
                        });
                    }
                    if let Some(ps) = self.partitions.get_mut(&tp) {
                        ps.in_flight = false;
                        ps.backoff.reset();
                    }
                }
                Some(code @ (ApiError::MessageTooLarge | ApiError::RecordListTooLarge))
                    if batch.records.len() > 1 =>
                {
                    debug!(%tp, records = batch.records.len(), ?code, "batch too large; splitting");
                    let (first, second) = batch.split();
                    if let Some(ps) = self.partitions.get_mut(&tp) {
                        ps.queue.push_front(second);
                        ps.queue.push_front(first);
                        ps.in_flight = false;
                    }
                }
                Some(code) => {
                    if invalidates_metadata(code) {
                        self.client.invalidate_topic(&tp.topic);
                        self.refresh_topic(Arc::clone(&tp.topic));
                    }
                    let e = match code {
                        ApiError::MessageTooLarge | ApiError::RecordListTooLarge => Error::rejected(format!(
                            "a record of {} bytes is larger than the broker accepts for {tp} ({code:?}); raise the topic's max.message.bytes or send smaller records",
                            batch.bytes
                        )),
                        _ => api_error(code, format!("produce to {tp}")),
                    }
                    .with_topic(&*tp.topic)
                    .with_partition(tp.partition);
                    if is_retriable_code(code) {
                        self.retry_or_fail(tp, batch, e, &mut deliveries);
                    } else {
                        if let Some(ps) = self.partitions.get_mut(&tp) {
                            ps.in_flight = false;
                        }
                        deliveries.extend(
                            batch
                                .tags
                                .into_iter()
                                .map(|tag| Delivery { tag, result: Err(e.clone()) }),
                        );
                    }
                }
            }
        }
        self.deliver(deliveries).await;
    }

    /// Puts a failed batch back at the front of its partition's queue after a backoff, or fails it
    /// when the error is not retriable or the delivery timeout has passed.
    fn retry_or_fail(
        &mut self,
        tp: TopicPartition,
        batch: Batch<T>,
        error: Error,
        deliveries: &mut Vec<Delivery<T>>,
    ) {
        let Some(ps) = self.partitions.get_mut(&tp) else {
            return;
        };
        ps.in_flight = false;
        let expired = match (self.delivery_timeout, batch.first_sent) {
            (Some(limit), Some(first)) => first.elapsed() >= limit,
            _ => false,
        };
        if !error.is_retriable() || expired {
            let error = if expired {
                Error::retriable(format!(
                    "delivery to {tp} timed out after {:?}: {}",
                    self.delivery_timeout.unwrap_or_default(),
                    error.report()
                ))
            } else {
                error
            };
            deliveries.extend(
                batch.tags.into_iter().map(|tag| Delivery { tag, result: Err(error.clone()) }),
            );
            return;
        }
        let delay = ps.backoff.next_delay();
        warn!(
            %tp,
            records = batch.records.len(),
            attempt = ps.backoff.attempts(),
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %error.report(),
            "produce failed; will retry"
        );
        ps.retry_at = Some(Instant::now() + delay);
        ps.queue.push_front(batch);
        self.client.invalidate_topic(&tp.topic);
        self.refresh_topic(Arc::clone(&tp.topic));
    }
}
