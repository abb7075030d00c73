//! Reading records: Fetch from a partition leader, decoded into [`SinkRecord`]s with their headers
//! in order, plus the partition's end offset (the high watermark).
//!
//! Kafka answers a fetch with whole record batches, the first one *containing* the requested
//! offset. Some Kafka-compatible brokers (Tansu 0.6) instead return only batches that *start* at or
//! after it, silently skipping the rest of the batch the offset is in, and may repeat batches in
//! one response. A consumer resuming inside a batch (a sink whose acknowledged prefix ended
//! mid-batch) would lose records. [`KafkaClient::fetch`] therefore checks that the first batch
//! covers the requested offset and, when it does not, steps back to find the batch that does, and
//! decodes records in strictly increasing offset order.

use std::sync::Arc;
use std::time::Duration;

use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::{
    FetchRequest, FetchRequestPartition, FetchRequestTopic, IsolationLevel, NORMAL_CONSUMER,
};
use crate::kafka::wire::primitives::{Int32, Int64, String_};
use crate::kafka::wire::record::RecordBatch;
use tracing::debug;

use crate::kafka::client::{KafkaClient, Lane, OffsetSpec};
use crate::kafka::errors::{api_error, invalidates_metadata};
use crate::kafka::records::decode_batches;
use crate::record::SinkRecord;
use crate::{Error, Result};

/// What one fetch returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// Records at or after the requested offset, in strictly increasing offset order.
    pub records: Vec<SinkRecord>,
    /// The offset to fetch next (past any transaction markers or skipped records).
    pub next_offset: i64,
    /// The partition's high watermark: the offset the next written record will get.
    pub high_watermark: i64,
}

/// The outcome of a fetch.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchResult {
    /// Records (possibly none, when nothing arrived within the wait).
    Records(Fetched),
    /// The offset is not (or no longer) in the partition; the caller resets it.
    OffsetOutOfRange,
}

/// Raw batches of one partition and its high watermark.
struct RawFetch {
    batches: Vec<RecordBatch>,
    high_watermark: i64,
}

fn batch_end(b: &RecordBatch) -> i64 {
    b.base_offset + i64::from(b.last_offset_delta) + 1
}

/// The connection lane of `topic`/`partition`'s fetches: its own, so a long poll on one partition
/// holds up nothing else.
fn fetch_lane(topic: &str, partition: i32) -> Lane {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (topic, partition).hash(&mut h);
    Lane::Fetch(h.finish())
}

/// Most step-back fetches spent finding the batch that holds a mid-batch offset.
const MAX_LOCATE_FETCHES: usize = 64;

impl KafkaClient {
    /// Fetches records of `topic`/`partition` from `offset`, waiting up to `max_wait` for some to
    /// arrive, and at most the configured `fetch_max_bytes` (a larger first batch is still returned
    /// whole).
    ///
    /// # Errors
    /// Retriable when the leader is unreachable or moved; fatal for authorization and similar.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
    ) -> Result<FetchResult> {
        let Some(mut raw) = self.raw_fetch(topic, partition, offset, max_wait).await? else {
            return Ok(FetchResult::OffsetOutOfRange);
        };
        let skipped =
            raw.batches.first().map_or(offset < raw.high_watermark, |b| b.base_offset > offset);
        if skipped {
            if let Some(found) = self.locate(topic, partition, offset).await? {
                raw = found;
            }
        }
        let last_end = raw.batches.iter().map(batch_end).max().unwrap_or(offset);
        let topic_name: Arc<str> = Arc::from(topic);
        let records = decode_batches(&topic_name, partition, raw.batches, offset)?;
        let next_offset = records.last().map_or(offset, |r| r.offset + 1).max(last_end).max(offset);
        Ok(FetchResult::Records(Fetched {
            records,
            next_offset,
            high_watermark: raw.high_watermark,
        }))
    }

    /// Finds the batches from the one holding `offset` when a fetch at `offset` skipped it: fetch
    /// from further back (1, 2, 4, ... records) until a batch starts at or before `offset`, then walk
    /// forward batch by batch until one ends after it. `None` when no batch holds it (the records
    /// were deleted or compacted away), in which case the skip was right.
    async fn locate(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<RawFetch>> {
        let earliest = self.list_offset(topic, partition, OffsetSpec::Earliest).await?;
        let mut back: i64 = 1;
        let mut probe = offset.saturating_sub(back).max(earliest);
        for _ in 0..MAX_LOCATE_FETCHES {
            if probe >= offset {
                return Ok(None);
            }
            let Some(raw) =
                self.raw_fetch(topic, partition, probe, Duration::from_millis(1)).await?
            else {
                return Ok(None);
            };
            let starts_before = raw.batches.first().is_some_and(|b| b.base_offset <= offset);
            if raw.batches.iter().any(|b| b.base_offset <= offset && batch_end(b) > offset) {
                debug!(
                    topic,
                    partition, offset, probe, "found the batch holding a mid-batch offset"
                );
                return Ok(Some(raw));
            }
            if starts_before {
                // Every returned batch ends at or before `offset`: walk forward from the last.
                let end = raw.batches.iter().map(batch_end).max().unwrap_or(offset);
                if end <= probe {
                    return Ok(None);
                }
                probe = end;
            } else if probe <= earliest {
                return Ok(None);
            } else {
                back = back.saturating_mul(2);
                probe = offset.saturating_sub(back).max(earliest);
            }
        }
        Err(Error::retriable(format!(
            "could not find the record batch holding {topic}-{partition}@{offset}"
        )))
    }

    /// One Fetch request; `None` when the offset is out of range.
    async fn raw_fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
    ) -> Result<Option<RawFetch>> {
        let leader = self.leader_for(topic, partition).await?;
        let max_bytes = self.config().fetch_max_bytes;
        let request = FetchRequest {
            replica_id: NORMAL_CONSUMER,
            // Tansu rejects a zero wait; 1 ms is "return what you have".
            max_wait_ms: Int32(i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX).max(1)),
            min_bytes: Int32(1),
            max_bytes: Some(Int32(max_bytes)),
            isolation_level: Some(IsolationLevel::ReadUncommitted),
            topics: vec![FetchRequestTopic {
                topic: String_(topic.to_owned()),
                partitions: vec![FetchRequestPartition {
                    partition: Int32(partition),
                    fetch_offset: Int64(offset),
                    partition_max_bytes: Int32(max_bytes),
                }],
            }],
        };
        let response = self.request_node(leader, fetch_lane(topic, partition), &request).await?;
        let found = response
            .responses
            .into_iter()
            .filter(|t| t.topic.0 == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index.0 == partition);
        let Some(p) = found else {
            return Err(Error::retriable(format!(
                "fetch: broker sent no data for {topic}-{partition}"
            )));
        };
        match p.error_code {
            None => {}
            Some(ApiError::OffsetOutOfRange) => return Ok(None),
            Some(e) => {
                if invalidates_metadata(e) {
                    self.invalidate_topic(topic);
                }
                return Err(api_error(e, format!("fetch from {topic}-{partition}@{offset}"))
                    .with_topic(topic)
                    .with_partition(partition)
                    .with_offset(offset));
            }
        }
        Ok(Some(RawFetch { batches: p.records.0, high_watermark: p.high_watermark.0 }))
    }

    /// The offset the next record written to the partition will get.
    ///
    /// Read from a fetch's high watermark rather than ListOffsets, which some Kafka-compatible
    /// brokers (Tansu 0.6 on memory storage) answer with the last batch's base offset + 1.
    ///
    /// # Errors
    /// Retriable when the leader is unreachable.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64> {
        let earliest = self.list_offset(topic, partition, OffsetSpec::Earliest).await?;
        match self.raw_fetch(topic, partition, earliest, Duration::from_millis(1)).await? {
            Some(raw) => Ok(raw.high_watermark),
            None => Err(Error::retriable(format!(
                "{topic}-{partition}: earliest offset {earliest} moved while reading the end offset"
            ))),
        }
    }
}
