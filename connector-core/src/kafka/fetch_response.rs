//! Fetch v4 answers decoded by our own reader: control batches (transaction markers) read
//! correctly, and uncompressed records handed out as slices of the fetched buffer.
//!
//! rskafka 0.6 reads a control batch's records section as if it were the bare control key
//! (`version int16, type int16`); Kafka (and Tansu) store it as an ordinary record whose *key* is
//! that control key. rskafka therefore fails on every fetch response holding a commit or abort
//! marker ("Unknown control batch record version"), so no partition a transactional producer
//! wrote to could be read, at either isolation level. [`RawFetchRequest`] sends rskafka's
//! [`FetchRequest`] unchanged and decodes the answer here into [`Batch`]es: every batch is cut
//! out by its length; a control batch is parsed by hand (fixed header, one record, its key), and
//! so is an uncompressed data batch, the common case. Its CRC-32C is checked and each record's
//! key, value and header values are [`Bytes`] slices of the response buffer, taken over from
//! rskafka's messenger without a copy (rskafka's reader zero-fills and copies every field
//! through a growable buffer and reads varints byte by byte: issue 18). A compressed batch is
//! handed to rskafka's [`RecordBatch`] reader, which decompresses it.
//!
//! Fetch v4 response layout: `throttle_time_ms int32, [topic string, [partition_index int32,
//! error_code int16, high_watermark int64, last_stable_offset int64, [producer_id int64,
//! first_offset int64], records nullable bytes]]`.

use std::io::{Cursor, Write};

use bytes::Bytes;

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
    ControlBatchOrRecords, ControlBatchRecord, RecordBatch, RecordBatchTimestampType,
};
use crate::kafka::wire::traits::{ReadError, ReadType};
use crate::record::{Header, Headers};

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
    pub(crate) batches: Vec<Batch>,
}

/// The answer to a [`RawFetchRequest`]: (topic, partitions).
#[derive(Debug)]
pub(crate) struct RawFetchResponse {
    pub(crate) topics: Vec<(String, Vec<RawFetchPartition>)>,
}

/// One v2 record batch of a fetch answer: the header fields the fetch uses and its records.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub(crate) base_offset: i64,
    pub(crate) last_offset_delta: i32,
    pub(crate) first_timestamp: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) is_transactional: bool,
    pub(crate) timestamp_type: RecordBatchTimestampType,
    pub(crate) records: BatchRecords,
}

/// What a [`Batch`] holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BatchRecords {
    /// A transaction marker.
    Control(ControlBatchRecord),
    /// Data records, in batch order.
    Records(Vec<FetchedRecord>),
}

/// One record of a data batch; key, value and header values share the fetched buffer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FetchedRecord {
    pub(crate) timestamp_delta: i64,
    pub(crate) offset_delta: i32,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Headers,
}

impl From<RecordBatch> for Batch {
    /// A batch as rskafka read it (a compressed one; the fetch tests' batches).
    fn from(b: RecordBatch) -> Self {
        let records = match b.records {
            ControlBatchOrRecords::ControlBatch(c) => BatchRecords::Control(c),
            ControlBatchOrRecords::Records(records) => BatchRecords::Records(
                records
                    .into_iter()
                    .map(|r| FetchedRecord {
                        timestamp_delta: r.timestamp_delta,
                        offset_delta: r.offset_delta,
                        key: r.key.map(Bytes::from),
                        value: r.value.map(Bytes::from),
                        headers: r
                            .headers
                            .into_iter()
                            .map(|h| Header { key: h.key.into(), value: Bytes::from(h.value) })
                            .collect::<Vec<_>>()
                            .into(),
                    })
                    .collect(),
            ),
        };
        Self {
            base_offset: b.base_offset,
            last_offset_delta: b.last_offset_delta,
            first_timestamp: b.first_timestamp,
            max_timestamp: b.max_timestamp,
            producer_id: b.producer_id,
            producer_epoch: b.producer_epoch,
            is_transactional: b.is_transactional,
            timestamp_type: b.timestamp_type,
            records,
        }
    }
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

impl ReadVersionedType<Cursor<Vec<u8>>> for RawFetchResponse {
    /// Takes the response buffer over from rskafka's messenger (the records sections become
    /// slices of it) and leaves the cursor empty and at its end, which is what the messenger
    /// checks after reading a body.
    fn read_versioned(
        r: &mut Cursor<Vec<u8>>,
        version: ApiVersion,
    ) -> Result<Self, ReadVersionedError> {
        if version.0 .0 != 4 {
            return Err(ReadError::Malformed(
                format!("fetch response version {} is not 4", version.0 .0).into(),
            )
            .into());
        }
        let start = usize::try_from(r.position()).map_err(ReadError::Overflow)?;
        let buf = Bytes::from(std::mem::take(r.get_mut()));
        r.set_position(0);
        let body = buf.get(start..).unwrap_or_default();
        let response = read_response(&buf, start, body)?;
        Ok(response)
    }
}

/// Reads a fetch v4 answer: `body` is `buf` from `start` on.
fn read_response(
    buf: &Bytes,
    start: usize,
    body: &[u8],
) -> Result<RawFetchResponse, ReadVersionedError> {
    let mut r = Cursor::new(body);
    let _throttle_time_ms = Int32::read(&mut r)?;
    let mut topics = Vec::new();
    for _ in 0..read_len(&mut r)? {
        let topic = String_::read(&mut r)?.0;
        let mut partitions = Vec::new();
        for _ in 0..read_len(&mut r)? {
            let partition_index = Int32::read(&mut r)?.0;
            let error_code = ApiError::new(Int16::read(&mut r)?.0);
            let high_watermark = Int64::read(&mut r)?.0;
            let last_stable_offset = Int64::read(&mut r)?.0;
            for _ in 0..read_len(&mut r)? {
                let _producer_id = Int64::read(&mut r)?;
                let _first_offset = Int64::read(&mut r)?;
            }
            let len = Int32::read(&mut r)?.0;
            let batches = if len <= 0 {
                Vec::new()
            } else {
                let len = usize::try_from(len).map_err(ReadError::Overflow)?;
                let at = usize::try_from(r.position()).map_err(ReadError::Overflow)?;
                let end = at.checked_add(len).filter(|&e| e <= body.len()).ok_or_else(|| {
                    ReadError::Malformed("fetch response cut off in a records section".into())
                })?;
                r.set_position(end as u64);
                read_batches(&buf.slice(start + at..start + end))?
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
    if usize::try_from(r.position()).map_err(ReadError::Overflow)? != body.len() {
        return Err(ReadError::Malformed("bytes left over after a fetch response".into()).into());
    }
    Ok(RawFetchResponse { topics })
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
fn batch_header(b: &[u8], attributes: i16, records: BatchRecords) -> Result<Batch, ReadError> {
    Ok(Batch {
        base_offset: i64::from_be_bytes(field(b, 0)?),
        last_offset_delta: i32::from_be_bytes(field(b, 23)?),
        first_timestamp: i64::from_be_bytes(field(b, 27)?),
        max_timestamp: i64::from_be_bytes(field(b, 35)?),
        producer_id: i64::from_be_bytes(field(b, 43)?),
        producer_epoch: i16::from_be_bytes(field(b, 51)?),
        is_transactional: attributes & TRANSACTIONAL != 0,
        timestamp_type: if attributes & LOG_APPEND_TIME != 0 {
            RecordBatchTimestampType::LogAppendTime
        } else {
            RecordBatchTimestampType::CreateTime
        },
        records,
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

    /// A varint that must fit a `usize` (a length or a count).
    fn len(&mut self, what: &str) -> Result<usize, ReadError> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| ReadError::Malformed(format!("{what} of length {n}").into()))
    }

    /// The next `len` bytes, as positions in `buf`.
    fn span(&mut self, len: usize, what: &str) -> Result<std::ops::Range<usize>, ReadError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| Self::short(what))?;
        let span = self.pos..end;
        self.pos = end;
        Ok(span)
    }

    /// A varint length, then that many bytes, as positions in `buf`; `None` for length -1.
    fn nullable(&mut self, what: &str) -> Result<Option<std::ops::Range<usize>>, ReadError> {
        match self.varint()? {
            -1 => Ok(None),
            n => {
                let len = usize::try_from(n)
                    .map_err(|_| ReadError::Malformed(format!("{what} of length {n}").into()))?;
                self.span(len, what).map(Some)
            }
        }
    }
}

/// An uncompressed data batch (`b`, cut out of the fetched buffer): its CRC-32C checked, its
/// records read straight from it, key, value and header values as slices of it.
fn read_data_batch(b: &Bytes, attributes: i16) -> Result<Batch, ReadError> {
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
    let slice = |s: Option<std::ops::Range<usize>>| s.map(|s| b.slice(s));
    // Never trust the count for the allocation: each record takes at least 7 bytes.
    let mut records = Vec::with_capacity(count.min(b.len() / 7));
    for _ in 0..count {
        let len = f.len("a record")?;
        let body = f.span(len, "a record")?;
        // The record's fields, after its attributes byte, inside its length.
        let mut r = Fields { buf: &b[..body.end], pos: body.start + 1 };
        let timestamp_delta = r.varint()?;
        let offset_delta = r.varint()?;
        let offset_delta = i32::try_from(offset_delta).map_err(|_| {
            ReadError::Malformed(format!("record offset delta {offset_delta}").into())
        })?;
        let key = slice(r.nullable("a record key")?);
        let value = slice(r.nullable("a record value")?);
        let n = r.len("record headers")?;
        let mut headers = Headers::with_capacity(n.min(len / 2));
        for _ in 0..n {
            let key = r.nullable("a header key")?.map(|s| &b[s]).unwrap_or_default();
            let key = std::str::from_utf8(key)
                .map_err(|_| ReadError::Malformed("a header key is not UTF-8".into()))?;
            let value = slice(r.nullable("a header value")?).unwrap_or_default();
            headers.push(key.to_owned(), value);
        }
        records.push(FetchedRecord { timestamp_delta, offset_delta, key, value, headers });
    }
    batch_header(b, attributes, BatchRecords::Records(records))
}

/// The record batches in a fetch response's records section (`buf`, a slice of the fetched
/// buffer); a batch cut off at the end (the broker stopped at `max_bytes`) is left out.
pub(crate) fn read_batches(buf: &Bytes) -> Result<Vec<Batch>, ReadError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 12 <= buf.len() {
        let len = i32::from_be_bytes(field(buf, pos + 8)?);
        let len = usize::try_from(len).map_err(ReadError::Overflow)?;
        let end = pos + 12 + len;
        if end > buf.len() {
            break;
        }
        let slice = buf.slice(pos..end);
        let attributes = i16::from_be_bytes(field(&slice, 21)?);
        if attributes & CONTROL != 0 {
            out.push(read_control_batch(&slice, attributes)?);
        } else if attributes & COMPRESSION == 0 {
            out.push(read_data_batch(&slice, attributes)?);
        } else {
            out.push(RecordBatch::read(&mut Cursor::new(&slice[..]))?.into());
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
fn read_control_batch(b: &[u8], attributes: i16) -> Result<Batch, ReadError> {
    let mut r = Fields { buf: b, pos: HEADER };
    let _length = r.varint()?;
    r.span(1, "a control record")?; // record attributes
    let _timestamp_delta = r.varint()?;
    let _offset_delta = r.varint()?;
    let key = r.nullable("a control record key")?.map(|s| &b[s]).unwrap_or_default();
    if key.len() < 4 {
        let n = key.len();
        return Err(ReadError::Malformed(format!("control record key of {n} bytes").into()));
    }
    let version = i16::from_be_bytes(field(key, 0)?);
    let kind = i16::from_be_bytes(field(key, 2)?);
    let control = match (version, kind) {
        (0, 0) => ControlBatchRecord::Abort,
        (0, 1) => ControlBatchRecord::Commit,
        _ => {
            return Err(ReadError::Malformed(
                format!("control record version {version} type {kind}").into(),
            ))
        }
    };
    batch_header(b, attributes, BatchRecords::Control(control))
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
        let batches = read_batches(&Bytes::from(buf)).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].base_offset, 7);
        assert_eq!(batches[0].producer_id, 42);
        assert_eq!(batches[0].producer_epoch, 3);
        assert!(batches[0].is_transactional);
        assert!(matches!(batches[0].records, BatchRecords::Control(ControlBatchRecord::Commit)));
        assert!(matches!(batches[1].records, BatchRecords::Control(ControlBatchRecord::Abort)));
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
        let ours = read_batches(&Bytes::from(buf.clone())).unwrap();
        let theirs = RecordBatch::read(&mut Cursor::new(&buf[..])).unwrap();
        assert_eq!(ours, vec![Batch::from(theirs)]);
        // A flipped bit fails the CRC; a cut-off record is an error, not a panic.
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(read_batches(&Bytes::from(bad)).is_err());
        let mut short = buf.clone();
        let len = i32::from_be_bytes(short[8..12].try_into().unwrap());
        short.truncate(short.len() - 5);
        short[8..12].copy_from_slice(&(len - 5).to_be_bytes());
        assert!(read_batches(&Bytes::from(short)).is_err());
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
        let batches = read_batches(&Bytes::from(buf)).unwrap();
        assert_eq!(batches.len(), 2);
        assert!(matches!(batches[0].records, BatchRecords::Records(ref r) if r.len() == 1));
    }

    /// A fetch v4 answer for topic `t`, partition 0, with `records` as its records section.
    fn fetch_answer(records: &[u8]) -> Vec<u8> {
        let mut out = 0i32.to_be_bytes().to_vec(); // throttle
        out.extend_from_slice(&1i32.to_be_bytes()); // one topic
        out.extend_from_slice(&1i16.to_be_bytes());
        out.push(b't');
        out.extend_from_slice(&1i32.to_be_bytes()); // one partition
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes()); // no error
        out.extend_from_slice(&9i64.to_be_bytes()); // high watermark
        out.extend_from_slice(&9i64.to_be_bytes()); // last stable offset
        out.extend_from_slice(&0i32.to_be_bytes()); // no aborted transactions
        out.extend_from_slice(&i32::try_from(records.len()).unwrap().to_be_bytes());
        out.extend_from_slice(records);
        out
    }

    #[test]
    fn records_are_slices_of_the_fetched_buffer_and_the_cursor_is_left_consumed() {
        use crate::kafka::config::Compression;
        use crate::kafka::records::{encode_batch, PendingRecord};
        let mut headers = crate::record::Headers::new();
        headers.push("h", vec![5u8; 64]);
        let records = vec![PendingRecord {
            key: Some(bytes::Bytes::from_static(b"key")),
            value: Some(bytes::Bytes::from(vec![7u8; 4096])),
            headers,
            timestamp: 1,
        }];
        let mut batch = Vec::new();
        encode_batch(&records, Compression::None, &mut batch).unwrap();
        // A response header the messenger already read, then the body.
        let mut message = vec![0u8; 4];
        message.extend(fetch_answer(&batch));
        let range = message.as_ptr_range();
        let mut cursor = Cursor::new(message);
        cursor.set_position(4);
        let response = RawFetchResponse::read_versioned(&mut cursor, ApiVersion(Int16(4))).unwrap();
        assert_eq!(cursor.position(), cursor.get_ref().len() as u64, "the messenger's check");
        let (topic, partitions) = &response.topics[0];
        assert_eq!((topic.as_str(), partitions[0].high_watermark), ("t", 9));
        let BatchRecords::Records(read) = &partitions[0].batches[0].records else { panic!() };
        let value = read[0].value.as_ref().unwrap();
        assert_eq!(&value[..], &[7u8; 4096][..]);
        assert!(range.contains(&value.as_ptr()), "the value was copied");
        let header = &read[0].headers.iter().next().unwrap().value;
        assert!(range.contains(&header.as_ptr()), "the header value was copied");

        // Cut off inside the records section, or with bytes after it: an error, not a panic.
        let mut cut = fetch_answer(&batch);
        cut.truncate(cut.len() - 10);
        assert!(
            RawFetchResponse::read_versioned(&mut Cursor::new(cut), ApiVersion(Int16(4))).is_err()
        );
        let mut long = fetch_answer(&batch);
        long.push(0);
        assert!(
            RawFetchResponse::read_versioned(&mut Cursor::new(long), ApiVersion(Int16(4))).is_err()
        );
    }
}
