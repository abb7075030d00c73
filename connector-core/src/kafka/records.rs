//! Conversion between our records and Kafka's v2 record batches (rskafka's wire types), keeping
//! header order and duplicate header keys in both directions. Produced batches are encoded
//! directly into the request ([`encode_batch`], [`EncodedProduceRequest`]); fetched ones are read
//! by `fetch_response.rs` and turned into [`SinkRecord`]s here ([`decode_batches`]).

use std::sync::Arc;

use std::io::Write;

use crate::kafka::wire::api_key::ApiKey;
use crate::kafka::wire::api_version::{ApiVersion, ApiVersionRange};
use crate::kafka::wire::messages::{
    ProduceRequest, ProduceResponse, RequestBody, WriteVersionedError, WriteVersionedType,
};
use crate::kafka::wire::record::{
    ControlBatchOrRecords, Record as WireRecord, RecordBatch, RecordBatchCompression,
    RecordBatchTimestampType, RecordHeader,
};
use crate::kafka::wire::traits::WriteError;
use bytes::Bytes;

use crate::kafka::config::Compression;
use crate::kafka::fetch_response::{Batch, BatchRecords};
use crate::record::{Headers, SinkRecord, SourceRecord, Timestamp};
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

    /// Key + value + header bytes.
    pub fn size(&self) -> usize {
        crate::record::record_size(self.key.as_ref(), self.value.as_ref(), &self.headers)
    }
}

crate::record::record_builders!(ProducerRecord, optional);

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
        crate::record::record_size(self.key.as_ref(), self.value.as_ref(), &self.headers)
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
                .map(|h| RecordHeader { key: h.key.to_string(), value: h.value.to_vec() })
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

/// Encodes one v2 record batch from `records` (non-empty) straight into `out`, the way Kafka's
/// protocol lays it out, and returns nothing else: no per-record allocation or copy besides the
/// bytes themselves. Compressed batches go through rskafka's encoder ([`build_batch`]), whose
/// compression we reuse; uncompressed ones, the common case on a LAN, take this direct path,
/// which a test checks byte for byte against rskafka's encoder.
pub(crate) fn encode_batch(
    records: &[PendingRecord],
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<()> {
    if compression != Compression::None {
        use crate::kafka::wire::traits::WriteType;
        return build_batch(records, compression)
            .write(out)
            .map_err(|e| Error::fatal(format!("cannot encode a record batch: {e}")));
    }
    let first_ts = records.first().map_or(0, |r| r.timestamp);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(first_ts);
    let count = i32::try_from(records.len())
        .map_err(|_| Error::fatal("a record batch cannot hold more than i32::MAX records"))?;
    let start = out.len();
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset
    out.extend_from_slice(&0i32.to_be_bytes()); // batch length, patched below
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2); // magic
    let crc_at = out.len();
    out.extend_from_slice(&0u32.to_be_bytes()); // CRC-32C, patched below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, CreateTime
    out.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    out.extend_from_slice(&first_ts.to_be_bytes());
    out.extend_from_slice(&max_ts.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&count.to_be_bytes());
    for (i, r) in records.iter().enumerate() {
        let ts_delta = r.timestamp - first_ts;
        // `i < count <= i32::MAX`, so this cannot truncate.
        let offset_delta = i as i64;
        let mut body = 1 + varint_len(ts_delta) + varint_len(offset_delta);
        body += nullable_len(r.key.as_deref()) + nullable_len(r.value.as_deref());
        body += varint_len(r.headers.len() as i64);
        for h in r.headers.iter() {
            body += nullable_len(Some(h.key.as_bytes())) + nullable_len(Some(&h.value));
        }
        put_varint(out, body as i64);
        out.push(0); // record attributes
        put_varint(out, ts_delta);
        put_varint(out, offset_delta);
        put_nullable(out, r.key.as_deref());
        put_nullable(out, r.value.as_deref());
        put_varint(out, r.headers.len() as i64);
        for h in r.headers.iter() {
            put_nullable(out, Some(h.key.as_bytes()));
            put_nullable(out, Some(&h.value));
        }
    }
    let batch_len = i32::try_from(out.len() - start - 12)
        .map_err(|_| Error::fatal("a record batch cannot exceed 2 GiB"))?;
    out[start + 8..start + 12].copy_from_slice(&batch_len.to_be_bytes());
    let crc = crc32c::crc32c(&out[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Bytes of a zigzag varint.
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends a zigzag varint (Kafka's `varint` / `varlong`).
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Bytes of a varint-length-prefixed, nullable byte string.
fn nullable_len(b: Option<&[u8]>) -> usize {
    b.map_or(1, |b| varint_len(b.len() as i64) + b.len())
}

/// Appends a varint-length-prefixed, nullable byte string (-1 = null).
fn put_nullable(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

/// A partition and its encoded record batch.
pub(crate) type EncodedBatch = (i32, Vec<u8>);

/// A produce request (versions 3 to 7, which share one layout) whose record batches are already
/// encoded by [`encode_batch`], so building the request copies nothing per record.
#[derive(Debug)]
pub(crate) struct EncodedProduceRequest {
    /// Acks required (-1 = all in-sync replicas).
    pub(crate) acks: i16,
    /// How long the broker may wait for replication.
    pub(crate) timeout_ms: i32,
    /// Per topic, per partition: one encoded record batch.
    pub(crate) topics: Vec<(Arc<str>, Vec<EncodedBatch>)>,
}

impl<W: Write> WriteVersionedType<W> for EncodedProduceRequest {
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> std::result::Result<(), WriteVersionedError> {
        let mut put = |bytes: &[u8]| writer.write_all(bytes).map_err(WriteError::from);
        if version.0 .0 >= 3 {
            put(&(-1i16).to_be_bytes())?; // transactional id: null
        }
        put(&self.acks.to_be_bytes())?;
        put(&self.timeout_ms.to_be_bytes())?;
        put(&array_len(self.topics.len())?.to_be_bytes())?;
        for (topic, partitions) in &self.topics {
            let name_len =
                i16::try_from(topic.len()).map_err(|e| WriteError::Malformed(Box::new(e)))?;
            put(&name_len.to_be_bytes())?;
            put(topic.as_bytes())?;
            put(&array_len(partitions.len())?.to_be_bytes())?;
            for (partition, batch) in partitions {
                put(&partition.to_be_bytes())?;
                put(&array_len(batch.len())?.to_be_bytes())?;
                put(batch)?;
            }
        }
        Ok(())
    }
}

/// A length as Kafka's INT32 prefix.
fn array_len(n: usize) -> std::result::Result<i32, WriteError> {
    i32::try_from(n).map_err(|e| WriteError::Malformed(Box::new(e)))
}

impl RequestBody for EncodedProduceRequest {
    type ResponseBody = ProduceResponse;
    const API_KEY: ApiKey = ApiKey::Produce;
    const API_VERSION_RANGE: ApiVersionRange = ProduceRequest::API_VERSION_RANGE;
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        ProduceRequest::FIRST_TAGGED_FIELD_IN_REQUEST_VERSION;
}

/// Turns fetched batches into sink records at or after `from_offset` (brokers return whole
/// batches, so the first may start before it), in strictly increasing offset order: a record at or
/// below one already taken is dropped (some brokers repeat batches within one response). Control
/// batches (transaction markers) are skipped.
///
/// The batches must be in offset order and without gaps the caller does not mean to step over:
/// records of a batch handed in after a later one would be dropped as "already taken". The fetch
/// sorts them and cuts them at the first gap before decoding (`contiguous_run` in `fetch.rs`).
pub(crate) fn decode_batches(
    topic: &Arc<str>,
    partition: i32,
    batches: Vec<Batch>,
    from_offset: i64,
) -> Result<Vec<SinkRecord>> {
    let mut out: Vec<SinkRecord> = Vec::new();
    let mut next_expected = from_offset;
    for batch in batches {
        let BatchRecords::Records(records) = batch.records else {
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
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp: Timestamp::from_millis(timestamp),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::wire::traits::WriteType;

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
            let read = crate::kafka::fetch_response::read_batches(&Bytes::from(buf)).unwrap();
            let topic: Arc<str> = Arc::from("t");
            let out = decode_batches(&topic, 3, read, 40).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].offset, 40);
            assert_eq!(out[0].timestamp.as_millis(), 1000);
            assert_eq!(out[1].timestamp.as_millis(), 990);
            let keys: Vec<_> = out[0].headers.iter().map(|h| (&*h.key, h.value.to_vec())).collect();
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
        let out = decode_batches(&topic, 0, vec![a.into(), b.into()], 10).unwrap();
        let offsets: Vec<_> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [10, 11, 12]);
    }

    #[test]
    fn records_before_the_requested_offset_are_dropped() {
        let records = numbered(5);
        let mut batch = build_batch(&records, Compression::None);
        batch.base_offset = 100;
        let topic: Arc<str> = Arc::from("t");
        let out = decode_batches(&topic, 0, vec![batch.into()], 103).unwrap();
        let offsets: Vec<_> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [103, 104]);
    }

    #[test]
    fn the_direct_encoder_writes_what_rskafka_writes() {
        let mut headers = Headers::new();
        headers.push("mqtt.topic", "plant/line-1/temp");
        headers.push("dup", "");
        headers.push("dup", vec![0u8; 300]);
        let big = Bytes::from(vec![7u8; 70_000]);
        let records = [
            PendingRecord {
                key: Some(Bytes::from("k1")),
                value: None,
                headers,
                timestamp: 1_700_000_000_000,
            },
            PendingRecord {
                key: None,
                value: Some(Bytes::new()),
                headers: Headers::new(),
                timestamp: 1_699_999_999_000,
            },
            PendingRecord {
                key: Some(Bytes::new()),
                value: Some(big),
                headers: Headers::new(),
                timestamp: 1_700_000_000_100,
            },
        ];
        let mut many = numbered(200);
        for (i, r) in many.iter_mut().enumerate() {
            r.timestamp = 5 + i as i64 * 1000;
        }
        for set in [&records[..], &records[..1], &many[..]] {
            let mut ours = Vec::new();
            encode_batch(set, Compression::None, &mut ours).unwrap();
            let mut theirs = Vec::new();
            build_batch(set, Compression::None).write(&mut theirs).unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in
            [0i64, 1, -1, 63, 64, -64, -65, 8191, 8192, i64::from(i32::MAX), i64::MIN, i64::MAX]
        {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn the_encoded_request_matches_rskafkas_produce_request() {
        use crate::kafka::wire::messages::{ProduceRequestPartitionData, ProduceRequestTopicData};
        use crate::kafka::wire::primitives::{Int16, Int32, NullableString, Records, String_};
        let records = numbered(3);
        let mut batch = Vec::new();
        encode_batch(&records, Compression::None, &mut batch).unwrap();
        let ours = EncodedProduceRequest {
            acks: -1,
            timeout_ms: 30_000,
            topics: vec![(Arc::from("telemetry"), vec![(2, batch)])],
        };
        let theirs = ProduceRequest {
            transactional_id: NullableString(None),
            acks: Int16(-1),
            timeout_ms: Int32(30_000),
            topic_data: vec![ProduceRequestTopicData {
                name: String_("telemetry".into()),
                partition_data: vec![ProduceRequestPartitionData {
                    index: Int32(2),
                    records: Records(vec![build_batch(&records, Compression::None)]),
                }],
            }],
        };
        for v in 3..=7 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            ours.write_versioned(&mut a, ApiVersion(Int16(v))).unwrap();
            theirs.write_versioned(&mut b, ApiVersion(Int16(v))).unwrap();
            assert_eq!(a, b, "version {v}");
        }
    }
}
