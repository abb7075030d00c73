//! Conversion between our records and Kafka's v2 record batches (rskafka's wire types), keeping
//! header order and duplicate header keys in both directions.

use std::sync::Arc;

use bytes::Bytes;
use rskafka::protocol::record::{
    ControlBatchOrRecords, Record as WireRecord, RecordBatch, RecordBatchCompression,
    RecordBatchTimestampType, RecordHeader,
};

use crate::kafka::config::Compression;
use crate::record::{Header, Headers, SinkRecord, SourceRecord, Timestamp};
use crate::{Error, Result};

/// A record ready to be written to Kafka: the part of a [`SourceRecord`] Kafka stores.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Explicit partition, or `None` for the partitioner to choose.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Bytes>,
    /// Value (`None` = tombstone).
    pub value: Option<Bytes>,
    /// Ordered headers.
    pub headers: Headers,
    /// Timestamp; `None` = when it is handed to the producer.
    pub timestamp: Option<Timestamp>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<Arc<str>>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Headers::new(),
            timestamp: None,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(key, value);
        self
    }

    /// Sets the partition.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, ts: Timestamp) -> Self {
        self.timestamp = Some(ts);
        self
    }

    /// Key + value + header bytes.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.encoded_len()
    }
}

impl From<&SourceRecord> for ProducerRecord {
    fn from(r: &SourceRecord) -> Self {
        Self {
            topic: Arc::from(r.topic.as_str()),
            partition: r.partition,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp: r.timestamp,
        }
    }
}

impl From<SourceRecord> for ProducerRecord {
    fn from(r: SourceRecord) -> Self {
        Self {
            topic: Arc::from(r.topic),
            partition: r.partition,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp: r.timestamp,
        }
    }
}

/// One record as it sits in a producer batch: timestamp resolved, bytes owned.
#[derive(Debug, Clone)]
pub(crate) struct PendingRecord {
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Headers,
    pub(crate) timestamp: i64,
}

impl PendingRecord {
    pub(crate) fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.encoded_len()
    }
}

/// Builds one v2 record batch from `records` (non-empty).
pub(crate) fn build_batch(records: &[PendingRecord], compression: Compression) -> RecordBatch {
    let first_ts = records.first().map_or(0, |r| r.timestamp);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(first_ts);
    let wire: Vec<WireRecord> = records
        .iter()
        .enumerate()
        .map(|(i, r)| WireRecord {
            timestamp_delta: r.timestamp - first_ts,
            offset_delta: i32::try_from(i).unwrap_or(i32::MAX),
            key: r.key.as_ref().map(|b| b.to_vec()),
            value: r.value.as_ref().map(|b| b.to_vec()),
            headers: r
                .headers
                .iter()
                .map(|h| RecordHeader { key: h.key.clone(), value: h.value.to_vec() })
                .collect(),
        })
        .collect();
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        last_offset_delta: i32::try_from(records.len().saturating_sub(1)).unwrap_or(i32::MAX),
        first_timestamp: first_ts,
        max_timestamp: max_ts,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: ControlBatchOrRecords::Records(wire),
        compression: match compression {
            Compression::None => RecordBatchCompression::NoCompression,
            Compression::Gzip => RecordBatchCompression::Gzip,
            Compression::Snappy => RecordBatchCompression::Snappy,
            Compression::Lz4 => RecordBatchCompression::Lz4,
            Compression::Zstd => RecordBatchCompression::Zstd,
        },
        is_transactional: false,
        timestamp_type: RecordBatchTimestampType::CreateTime,
    }
}

/// Turns fetched batches into sink records at or after `from_offset` (brokers return whole
/// batches, so the first may start before it), in strictly increasing offset order: a record at or
/// below one already taken is dropped (some brokers repeat batches within one response). Control
/// batches (transaction markers) are skipped.
pub(crate) fn decode_batches(
    topic: &Arc<str>,
    partition: i32,
    batches: Vec<RecordBatch>,
    from_offset: i64,
) -> Result<Vec<SinkRecord>> {
    let mut out: Vec<SinkRecord> = Vec::new();
    let mut next_expected = from_offset;
    for batch in batches {
        let ControlBatchOrRecords::Records(records) = batch.records else {
            continue;
        };
        out.reserve(records.len());
        for r in records {
            let offset = batch.base_offset + i64::from(r.offset_delta);
            if offset < next_expected {
                continue;
            }
            next_expected = offset + 1;
            let timestamp = match batch.timestamp_type {
                RecordBatchTimestampType::LogAppendTime => batch.max_timestamp,
                RecordBatchTimestampType::CreateTime => {
                    batch.first_timestamp.checked_add(r.timestamp_delta).ok_or_else(|| {
                        Error::fatal(format!(
                            "record at {topic}-{partition}@{offset} has an overflowing timestamp"
                        ))
                    })?
                }
            };
            out.push(SinkRecord {
                topic: Arc::clone(topic),
                original_topic: Arc::clone(topic),
                partition,
                offset,
                key: r.key.map(Bytes::from),
                value: r.value.map(Bytes::from),
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| Header { key: h.key, value: Bytes::from(h.value) })
                    .collect::<Vec<_>>()
                    .into(),
                timestamp: Timestamp::from_millis(timestamp),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::protocol::traits::{ReadType, WriteType};

    #[test]
    fn a_batch_round_trips_with_duplicate_headers_in_order() {
        let mut headers = Headers::new();
        headers.push("b", "1");
        headers.push("a", "2");
        headers.push("b", "3");
        let records = vec![
            PendingRecord { key: Some(Bytes::from("k1")), value: None, headers, timestamp: 1000 },
            PendingRecord {
                key: None,
                value: Some(Bytes::from("v2")),
                headers: Headers::new(),
                timestamp: 990,
            },
        ];
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let mut batch = build_batch(&records, compression);
            batch.base_offset = 40;
            let mut buf = Vec::new();
            batch.write(&mut buf).unwrap();
            let read = RecordBatch::read(&mut std::io::Cursor::new(buf)).unwrap();
            let topic: Arc<str> = Arc::from("t");
            let out = decode_batches(&topic, 3, vec![read], 40).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].offset, 40);
            assert_eq!(out[0].timestamp.as_millis(), 1000);
            assert_eq!(out[1].timestamp.as_millis(), 990);
            let keys: Vec<_> =
                out[0].headers.iter().map(|h| (h.key.as_str(), h.value.to_vec())).collect();
            assert_eq!(keys, [("b", b"1".to_vec()), ("a", b"2".to_vec()), ("b", b"3".to_vec())]);
            assert_eq!(out[1].value.as_deref(), Some(&b"v2"[..]));
            assert_eq!(out[0].value, None);
        }
    }

    /// `n` records whose value is their index.
    fn numbered(n: u8) -> Vec<PendingRecord> {
        (0..n)
            .map(|i| PendingRecord {
                key: None,
                value: Some(Bytes::from(vec![i])),
                headers: Headers::new(),
                timestamp: 1,
            })
            .collect()
    }

    #[test]
    fn repeated_batches_in_one_response_yield_each_record_once() {
        let records = numbered(3);
        let mut a = build_batch(&records, Compression::None);
        a.base_offset = 10;
        let mut b = build_batch(&records, Compression::None);
        b.base_offset = 10;
        let topic: Arc<str> = Arc::from("t");
        let out = decode_batches(&topic, 0, vec![a, b], 10).unwrap();
        let offsets: Vec<_> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [10, 11, 12]);
    }

    #[test]
    fn records_before_the_requested_offset_are_dropped() {
        let records = numbered(5);
        let mut batch = build_batch(&records, Compression::None);
        batch.base_offset = 100;
        let topic: Arc<str> = Arc::from("t");
        let out = decode_batches(&topic, 0, vec![batch], 103).unwrap();
        let offsets: Vec<_> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [103, 104]);
    }
}
