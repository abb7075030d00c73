//! Fetch v4 answers decoded with control batches (transaction markers) read correctly.
//!
//! rskafka 0.6 reads a control batch's records section as if it were the bare control key
//! (`version int16, type int16`); Kafka (and Tansu) store it as an ordinary record whose *key* is
//! that control key. rskafka therefore fails on every fetch response holding a commit or abort
//! marker ("Unknown control batch record version"), so no partition a transactional producer
//! wrote to could be read, at either isolation level. [`RawFetchRequest`] sends rskafka's
//! [`FetchRequest`] unchanged and decodes the answer here: every batch is cut out by its length;
//! a control batch is parsed by hand (fixed header, one record, its key), and so is an
//! uncompressed data batch (the common case: rskafka's reader zero-fills and copies each field
//! through a growable buffer and reads varints byte by byte, ~900 instructions per record of a
//! sink's ~8,000, issue 18); a compressed batch is handed to rskafka's [`RecordBatch`] reader.
//!
//! Fetch v4 response layout: `throttle_time_ms int32, [topic string, [partition_index int32,
//! error_code int16, high_watermark int64, last_stable_offset int64, [producer_id int64,
//! first_offset int64], records nullable bytes]]`.

use std::io::{Cursor, Read, Write};

use crate::kafka::group::codec::read_len;
use crate::kafka::wire::api_key::ApiKey;
use crate::kafka::wire::api_version::{ApiVersion, ApiVersionRange};
use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::{
    FetchRequest, ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError,
    WriteVersionedType,
};
use crate::kafka::wire::primitives::{Int16, Int32, Int64, String_};
use crate::kafka::wire::record::{
    ControlBatchOrRecords, ControlBatchRecord, RecordBatch, RecordBatchCompression,
    RecordBatchTimestampType,
};
use crate::kafka::wire::traits::{ReadError, ReadType};

/// rskafka's [`FetchRequest`], answered with a [`RawFetchResponse`].
#[derive(Debug)]
pub(crate) struct RawFetchRequest(pub(crate) FetchRequest);

/// One partition of a [`RawFetchResponse`].
#[derive(Debug)]
pub(crate) struct RawFetchPartition {
    pub(crate) partition_index: i32,
    pub(crate) error_code: Option<ApiError>,
    pub(crate) high_watermark: i64,
    pub(crate) last_stable_offset: i64,
    pub(crate) batches: Vec<RecordBatch>,
}

/// The answer to a [`RawFetchRequest`]: (topic, partitions).
#[derive(Debug)]
pub(crate) struct RawFetchResponse {
    pub(crate) topics: Vec<(String, Vec<RawFetchPartition>)>,
}

impl RequestBody for RawFetchRequest {
    type ResponseBody = RawFetchResponse;
    const API_KEY: ApiKey = ApiKey::Fetch;
    const API_VERSION_RANGE: ApiVersionRange = FetchRequest::API_VERSION_RANGE;
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        FetchRequest::FIRST_TAGGED_FIELD_IN_REQUEST_VERSION;
}

impl<W: Write> WriteVersionedType<W> for RawFetchRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        self.0.write_versioned(w, version)
    }
}

impl<R: Read> ReadVersionedType<R> for RawFetchResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        if version.0 .0 != 4 {
            return Err(ReadError::Malformed(
                format!("fetch response version {} is not 4", version.0 .0).into(),
            )
            .into());
        }
        let _throttle_time_ms = Int32::read(r)?;
        let mut topics = Vec::new();
        for _ in 0..read_len(r)? {
            let topic = String_::read(r)?.0;
            let mut partitions = Vec::new();
            for _ in 0..read_len(r)? {
                let partition_index = Int32::read(r)?.0;
                let error_code = ApiError::new(Int16::read(r)?.0);
                let high_watermark = Int64::read(r)?.0;
                let last_stable_offset = Int64::read(r)?.0;
                for _ in 0..read_len(r)? {
                    let _producer_id = Int64::read(r)?;
                    let _first_offset = Int64::read(r)?;
                }
                let len = Int32::read(r)?.0;
                let batches = if len <= 0 {
                    Vec::new()
                } else {
                    let len = usize::try_from(len).map_err(ReadError::Overflow)?;
                    let mut buf = vec![0; len];
                    r.read_exact(&mut buf).map_err(ReadError::IO)?;
                    read_batches(&buf)?
                };
                partitions.push(RawFetchPartition {
                    partition_index,
                    error_code,
                    high_watermark,
                    last_stable_offset,
                    batches,
                });
            }
            topics.push((topic, partitions));
        }
        Ok(Self { topics })
    }
}

/// Bit of a batch's attributes that marks a control batch.
const CONTROL: i16 = 1 << 5;
/// Bit of a batch's attributes that marks a transactional batch.
const TRANSACTIONAL: i16 = 1 << 4;
/// Bit of a batch's attributes that marks log-append time.
const LOG_APPEND_TIME: i16 = 1 << 3;
/// Bits of a batch's attributes that name its compression (0: none).
const COMPRESSION: i16 = 0x07;
/// Bytes of a v2 batch header before its records.
const HEADER: usize = 61;

/// The batch header's fields (v2), from a batch cut out by its length.
fn batch_header(
    b: &[u8],
    attributes: i16,
    records: ControlBatchOrRecords,
) -> Result<RecordBatch, ReadError> {
    Ok(RecordBatch {
        base_offset: i64::from_be_bytes(field(b, 0)?),
        partition_leader_epoch: i32::from_be_bytes(field(b, 12)?),
        last_offset_delta: i32::from_be_bytes(field(b, 23)?),
        first_timestamp: i64::from_be_bytes(field(b, 27)?),
        max_timestamp: i64::from_be_bytes(field(b, 35)?),
        producer_id: i64::from_be_bytes(field(b, 43)?),
        producer_epoch: i16::from_be_bytes(field(b, 51)?),
        base_sequence: i32::from_be_bytes(field(b, 53)?),
        records,
        compression: RecordBatchCompression::NoCompression,
        is_transactional: attributes & TRANSACTIONAL != 0,
        timestamp_type: if attributes & LOG_APPEND_TIME != 0 {
            RecordBatchTimestampType::LogAppendTime
        } else {
            RecordBatchTimestampType::CreateTime
        },
    })
}

/// Reads a v2 record batch's fields from a slice, front to back.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn short(what: &str) -> ReadError {
        ReadError::Malformed(format!("record batch cut off in {what}").into())
    }

    /// A zigzag varint (at most 10 bytes).
    fn varint(&mut self) -> Result<i64, ReadError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or_else(|| Self::short("a varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(ReadError::Malformed("varint longer than 10 bytes".into()))
    }

    fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], ReadError> {
        let end = self.pos.checked_add(len).ok_or_else(|| Self::short(what))?;
        let out = self.buf.get(self.pos..end).ok_or_else(|| Self::short(what))?;
        self.pos = end;
        Ok(out)
    }

    /// A varint length, then that many bytes; `None` for length -1.
    fn nullable(&mut self, what: &str) -> Result<Option<&'a [u8]>, ReadError> {
        match self.varint()? {
            -1 => Ok(None),
            n => {
                let len = usize::try_from(n)
                    .map_err(|_| ReadError::Malformed(format!("{what} of length {n}").into()))?;
                self.bytes(len, what).map(Some)
            }
        }
    }
}

/// An uncompressed data batch: its CRC-32C checked, its records read straight from the slice.
fn read_data_batch(b: &[u8], attributes: i16) -> Result<RecordBatch, ReadError> {
    let magic = *b.get(16).ok_or_else(|| Fields::short("the header"))?;
    if magic != 2 {
        return Err(ReadError::Malformed(format!("record batch magic {magic}").into()));
    }
    let crc = u32::from_be_bytes(field(b, 17)?);
    if crc32c::crc32c(b.get(21..).unwrap_or_default()) != crc {
        return Err(ReadError::Malformed("record batch CRC-32C does not match".into()));
    }
    let count = i32::from_be_bytes(field(b, 57)?);
    let count = usize::try_from(count)
        .map_err(|_| ReadError::Malformed(format!("record batch of {count} records").into()))?;
    let mut f = Fields { buf: b, pos: HEADER };
    // Never trust the count for the allocation: each record takes at least 7 bytes.
    let mut records = Vec::with_capacity(count.min(b.len() / 7));
    for _ in 0..count {
        let len = f.varint()?;
        let len = usize::try_from(len)
            .map_err(|_| ReadError::Malformed(format!("record of length {len}").into()))?;
        let body = f.bytes(len, "a record")?;
        let mut r = Fields { buf: body, pos: 1 }; // after the record attributes
        let timestamp_delta = r.varint()?;
        let offset_delta = r.varint()?;
        let offset_delta = i32::try_from(offset_delta).map_err(|_| {
            ReadError::Malformed(format!("record offset delta {offset_delta}").into())
        })?;
        let key = r.nullable("a record key")?.map(<[u8]>::to_vec);
        let value = r.nullable("a record value")?.map(<[u8]>::to_vec);
        let n = r.varint()?;
        let n = usize::try_from(n)
            .map_err(|_| ReadError::Malformed(format!("{n} record headers").into()))?;
        let mut headers = Vec::with_capacity(n.min(body.len() / 2));
        for _ in 0..n {
            let key = r.nullable("a header key")?.unwrap_or_default();
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| ReadError::Malformed("a header key is not UTF-8".into()))?;
            let value = r.nullable("a header value")?.unwrap_or_default().to_vec();
            headers.push(crate::kafka::wire::record::RecordHeader { key, value });
        }
        records.push(crate::kafka::wire::record::Record {
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        });
    }
    batch_header(b, attributes, ControlBatchOrRecords::Records(records))
}

/// The record batches in a fetch response's records bytes; a batch cut off at the end (the
/// broker stopped at `max_bytes`) is left out.
fn read_batches(buf: &[u8]) -> Result<Vec<RecordBatch>, ReadError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 12 <= buf.len() {
        let len = i32::from_be_bytes(field(buf, pos + 8)?);
        let len = usize::try_from(len).map_err(ReadError::Overflow)?;
        let end = pos + 12 + len;
        if end > buf.len() {
            break;
        }
        let slice = &buf[pos..end];
        let attributes = i16::from_be_bytes(field(slice, 21)?);
        if attributes & CONTROL != 0 {
            out.push(read_control_batch(slice, attributes)?);
        } else if attributes & COMPRESSION == 0 {
            out.push(read_data_batch(slice, attributes)?);
        } else {
            out.push(RecordBatch::read(&mut Cursor::new(slice))?);
        }
        pos = end;
    }
    Ok(out)
}

/// `N` bytes of `buf` at `at`.
fn field<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], ReadError> {
    buf.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ReadError::Malformed("record batch shorter than its header".into()))
}

/// A control batch: the v2 header, then one record whose key is `version int16, type int16`
/// (type 0 = abort, 1 = commit).
fn read_control_batch(b: &[u8], attributes: i16) -> Result<RecordBatch, ReadError> {
    let records = b.get(HEADER..).unwrap_or_default();
    let mut r = Cursor::new(records);
    let _length = varint(&mut r)?;
    let mut one = [0u8; 1];
    r.read_exact(&mut one)?; // record attributes
    let _timestamp_delta = varint(&mut r)?;
    let _offset_delta = varint(&mut r)?;
    let key_len = varint(&mut r)?;
    if key_len < 4 {
        return Err(ReadError::Malformed(format!("control record key of {key_len} bytes").into()));
    }
    let version = Int16::read(&mut r)?.0;
    let kind = Int16::read(&mut r)?.0;
    let control = match (version, kind) {
        (0, 0) => ControlBatchRecord::Abort,
        (0, 1) => ControlBatchRecord::Commit,
        _ => {
            return Err(ReadError::Malformed(
                format!("control record version {version} type {kind}").into(),
            ))
        }
    };
    batch_header(b, attributes, ControlBatchOrRecords::ControlBatch(control))
}

/// A zigzag varint (at most 10 bytes).
fn varint<R: Read>(r: &mut R) -> Result<i64, ReadError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            let v = (value >> 1) as i64 ^ -((value & 1) as i64);
            return Ok(v);
        }
    }
    Err(ReadError::Malformed("varint longer than 10 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control batch as Kafka and Tansu write it: header, then one record keyed by the
    /// control key.
    fn control_batch(base: i64, pid: i64, commit: bool) -> Vec<u8> {
        let key: [u8; 4] = [0, 0, 0, u8::from(commit)];
        let value: [u8; 6] = [0, 0, 0, 0, 0, 0];
        // record: attributes, ts delta 0, offset delta 0, key len 4 + key, value len 6 + value,
        // headers 0.
        let mut rec = vec![0u8, 0, 0, 8];
        rec.extend_from_slice(&key);
        rec.push(12);
        rec.extend_from_slice(&value);
        rec.push(0);
        let mut body = Vec::new();
        body.extend_from_slice(&(-1i32).to_be_bytes()); // leader epoch
        body.push(2); // magic
        body.extend_from_slice(&0u32.to_be_bytes()); // crc (not checked here)
        body.extend_from_slice(&(CONTROL | TRANSACTIONAL).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
        body.extend_from_slice(&5i64.to_be_bytes());
        body.extend_from_slice(&5i64.to_be_bytes());
        body.extend_from_slice(&pid.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.push(u8::try_from(rec.len() * 2).unwrap()); // zigzag length
        body.extend_from_slice(&rec);
        let mut out = base.to_be_bytes().to_vec();
        out.extend_from_slice(&i32::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn control_batches_are_read_as_markers_and_a_cut_off_batch_is_left_out() {
        let mut buf = control_batch(7, 42, true);
        buf.extend(control_batch(8, 43, false));
        buf.extend_from_slice(&control_batch(9, 44, true)[..20]);
        let batches = read_batches(&buf).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].base_offset, 7);
        assert_eq!(batches[0].producer_id, 42);
        assert_eq!(batches[0].producer_epoch, 3);
        assert!(batches[0].is_transactional);
        assert!(matches!(
            batches[0].records,
            ControlBatchOrRecords::ControlBatch(ControlBatchRecord::Commit)
        ));
        assert!(matches!(
            batches[1].records,
            ControlBatchOrRecords::ControlBatch(ControlBatchRecord::Abort)
        ));
    }

    #[test]
    fn uncompressed_batches_read_as_rskafka_reads_them() {
        use crate::kafka::config::Compression;
        use crate::kafka::records::{encode_batch, PendingRecord};
        let mut headers = crate::record::Headers::new();
        headers.push("b", "1");
        headers.push("a", bytes::Bytes::new());
        headers.push("b", vec![0u8; 300]);
        let records = vec![
            PendingRecord {
                key: Some(bytes::Bytes::from_static(b"k")),
                value: Some(bytes::Bytes::from(vec![7u8; 1000])),
                headers,
                timestamp: 1_700_000_000_000,
            },
            PendingRecord {
                key: None,
                value: None,
                headers: crate::record::Headers::new(),
                timestamp: 1_699_999_999_000,
            },
            PendingRecord {
                key: Some(bytes::Bytes::new()),
                value: Some(bytes::Bytes::from_static(b"v")),
                headers: crate::record::Headers::new(),
                timestamp: 1_700_000_100_000,
            },
        ];
        let mut buf = Vec::new();
        encode_batch(&records, Compression::None, &mut buf).unwrap();
        let ours = read_batches(&buf).unwrap();
        let theirs = RecordBatch::read(&mut Cursor::new(&buf[..])).unwrap();
        assert_eq!(ours, vec![theirs]);
        // A flipped bit fails the CRC; a cut-off record is an error, not a panic.
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(read_batches(&bad).is_err());
        let mut short = buf.clone();
        let len = i32::from_be_bytes(short[8..12].try_into().unwrap());
        short.truncate(short.len() - 5);
        short[8..12].copy_from_slice(&(len - 5).to_be_bytes());
        assert!(read_batches(&short).is_err());
    }

    #[test]
    fn data_batches_go_through_rskafka() {
        use crate::kafka::config::Compression;
        use crate::kafka::records::{encode_batch, PendingRecord};
        let records = vec![PendingRecord {
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: crate::record::Headers::new(),
            timestamp: 1,
        }];
        let mut buf = Vec::new();
        encode_batch(&records, Compression::None, &mut buf).unwrap();
        buf.extend(control_batch(1, 9, true));
        let batches = read_batches(&buf).unwrap();
        assert_eq!(batches.len(), 2);
        assert!(
            matches!(batches[0].records, ControlBatchOrRecords::Records(ref r) if r.len() == 1)
        );
    }
}
