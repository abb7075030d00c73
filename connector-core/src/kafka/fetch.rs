//! Reading records: one Fetch from a partition leader, decoded into [`SinkRecord`]s with their
//! headers in order, plus the partition's end offset (the high watermark).

use std::sync::Arc;
use std::time::Duration;

use rskafka::protocol::error::Error as ApiError;
use rskafka::protocol::messages::{
    FetchRequest, FetchRequestPartition, FetchRequestTopic, IsolationLevel, NORMAL_CONSUMER,
};
use rskafka::protocol::primitives::{Int32, Int64, String_};

use crate::kafka::client::{KafkaClient, OffsetSpec};
use crate::kafka::errors::{api_error, invalidates_metadata};
use crate::kafka::records::decode_batches;
use crate::record::SinkRecord;
use crate::{Error, Result};

/// What one fetch returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// Records at or after the requested offset, in offset order.
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
        let response = self.request_node(leader, &request).await?;
        let found = response
            .responses
            .into_iter()
            .filter(|t| t.topic.0 == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index.0 == partition);
        let Some(p) = found else {
            return Err(Error::retriable(format!("fetch: broker sent no data for {topic}-{partition}")));
        };
        match p.error_code {
            None => {}
            Some(ApiError::OffsetOutOfRange) => return Ok(FetchResult::OffsetOutOfRange),
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
        let batch_end = p
            .records
            .0
            .iter()
            .map(|b| b.base_offset + i64::from(b.last_offset_delta) + 1)
            .max()
            .unwrap_or(offset);
        let topic_name: Arc<str> = Arc::from(topic);
        let records = decode_batches(&topic_name, partition, p.records.0, offset)?;
        let next_offset = records.last().map_or(offset, |r| r.offset + 1).max(batch_end).max(offset);
        Ok(FetchResult::Records(Fetched {
            records,
            next_offset,
            high_watermark: p.high_watermark.0,
        }))
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
        match self.fetch(topic, partition, earliest, Duration::from_millis(1)).await? {
            FetchResult::Records(f) => Ok(f.high_watermark),
            FetchResult::OffsetOutOfRange => Err(Error::retriable(format!(
                "{topic}-{partition}: earliest offset {earliest} moved while reading the end offset"
            ))),
        }
    }
}
