//! The transaction requests, which rskafka 0.6's protocol module does not have: encoded and
//! decoded here with its primitives, like `group/codec.rs`. Error codes are kept as the raw
//! `int16` (0 = none) and mapped by the caller.
//!
//! Layouts (from the Kafka protocol's message definitions, `clients/src/main/resources/common/
//! message/*.json`):
//! ```text
//! FindCoordinator v1-2 (key 10)
//!   request:  key string, key_type int8 (1 = transaction)
//!   response: throttle_time_ms int32, error_code int16, error_message nullable string,
//!             node_id int32, host string, port int32
//! InitProducerId v3-4 (key 22, flexible: compact strings, tagged fields)
//!   request:  transactional_id compact nullable string, transaction_timeout_ms int32,
//!             producer_id int64, producer_epoch int16
//!   response: throttle_time_ms int32, error_code int16, producer_id int64, producer_epoch int16
//! AddPartitionsToTxn v0-2 (key 24)
//!   request:  transactional_id string, producer_id int64, producer_epoch int16,
//!             [name string, [partition int32]]
//!   response: throttle_time_ms int32, [name string, [partition_index int32, error_code int16]]
//! EndTxn v0-2 (key 26)
//!   request:  transactional_id string, producer_id int64, producer_epoch int16, committed bool
//!   response: throttle_time_ms int32, error_code int16
//! ```
//! InitProducerId is spoken at v3+ only: the producer id and epoch fields start there, and Tansu
//! 0.6 answers a request without them (v0-2) with UNKNOWN_SERVER_ERROR. AddPartitionsToTxn v4+
//! (batched, for brokers) is not spoken: Tansu 0.6 panics on it.

use std::io::{Read, Write};

use crate::kafka::group::codec::read_len;
use crate::kafka::wire::api_key::ApiKey;
use crate::kafka::wire::api_version::{ApiVersion, ApiVersionRange};
use crate::kafka::wire::messages::{
    ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};
use crate::kafka::wire::primitives::{
    Boolean, CompactNullableString, Int16, Int32, Int64, Int8, NullableString, String_,
    TaggedFields,
};
use crate::kafka::wire::traits::{ReadType, WriteError, WriteType};

const fn range(min: i16, max: i16) -> ApiVersionRange {
    ApiVersionRange::new(ApiVersion(Int16(min)), ApiVersion(Int16(max)))
}

fn string<W: Write>(w: &mut W, s: &str) -> Result<(), WriteVersionedError> {
    let n = i16::try_from(s.len()).map_err(WriteError::from)?;
    Int16(n).write(w)?;
    w.write_all(s.as_bytes()).map_err(WriteError::from)?;
    Ok(())
}

fn len32(len: usize) -> Result<Int32, WriteVersionedError> {
    let n = i32::try_from(len).map_err(WriteError::from)?;
    Ok(Int32(n))
}

/// FindCoordinator for a transactional id.
#[derive(Debug)]
pub(crate) struct FindTxnCoordinatorRequest {
    pub(crate) transactional_id: String,
}

/// The answer to [`FindTxnCoordinatorRequest`].
#[derive(Debug)]
pub(crate) struct FindTxnCoordinatorResponse {
    pub(crate) error_code: i16,
    pub(crate) error_message: Option<String>,
    pub(crate) node_id: i32,
}

impl RequestBody for FindTxnCoordinatorRequest {
    type ResponseBody = FindTxnCoordinatorResponse;
    const API_KEY: ApiKey = ApiKey::FindCoordinator;
    const API_VERSION_RANGE: ApiVersionRange = range(1, 2);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(3));
}

impl<W: Write> WriteVersionedType<W> for FindTxnCoordinatorRequest {
    fn write_versioned(&self, w: &mut W, _version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.transactional_id)?;
        Int8(1).write(w)?;
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for FindTxnCoordinatorResponse {
    fn read_versioned(r: &mut R, _version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let _throttle_time_ms = Int32::read(r)?;
        let error_code = Int16::read(r)?.0;
        let error_message = NullableString::read(r)?.0;
        let node_id = Int32::read(r)?.0;
        let _host = String_::read(r)?;
        let _port = Int32::read(r)?;
        Ok(Self { error_code, error_message, node_id })
    }
}

/// InitProducerId (v3+): a producer id and epoch for `transactional_id` (or an idempotent
/// producer when `None`).
#[derive(Debug)]
pub(crate) struct InitProducerIdRequest {
    pub(crate) transactional_id: Option<String>,
    pub(crate) transaction_timeout_ms: i32,
    /// `-1` for a new producer.
    pub(crate) producer_id: i64,
    /// `-1` for a new producer.
    pub(crate) producer_epoch: i16,
}

/// The answer to [`InitProducerIdRequest`].
#[derive(Debug)]
pub(crate) struct InitProducerIdResponse {
    pub(crate) error_code: i16,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
}

impl RequestBody for InitProducerIdRequest {
    type ResponseBody = InitProducerIdResponse;
    const API_KEY: ApiKey = ApiKey::InitProducerId;
    const API_VERSION_RANGE: ApiVersionRange = range(3, 4);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(2));
}

impl<W: Write> WriteVersionedType<W> for InitProducerIdRequest {
    fn write_versioned(&self, w: &mut W, _version: ApiVersion) -> Result<(), WriteVersionedError> {
        CompactNullableString(self.transactional_id.clone()).write(w)?;
        Int32(self.transaction_timeout_ms).write(w)?;
        Int64(self.producer_id).write(w)?;
        Int16(self.producer_epoch).write(w)?;
        TaggedFields::default().write(w)?;
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for InitProducerIdResponse {
    fn read_versioned(r: &mut R, _version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let _throttle_time_ms = Int32::read(r)?;
        let error_code = Int16::read(r)?.0;
        let producer_id = Int64::read(r)?.0;
        let producer_epoch = Int16::read(r)?.0;
        let _tagged = TaggedFields::read(r)?;
        Ok(Self { error_code, producer_id, producer_epoch })
    }
}

/// AddPartitionsToTxn: partitions the current transaction writes to.
#[derive(Debug)]
pub(crate) struct AddPartitionsToTxnRequest {
    pub(crate) transactional_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    /// (topic, partitions).
    pub(crate) topics: Vec<(String, Vec<i32>)>,
}

/// The answer to [`AddPartitionsToTxnRequest`]: (topic, partition, error code).
#[derive(Debug)]
pub(crate) struct AddPartitionsToTxnResponse {
    pub(crate) results: Vec<(String, i32, i16)>,
}

impl RequestBody for AddPartitionsToTxnRequest {
    type ResponseBody = AddPartitionsToTxnResponse;
    const API_KEY: ApiKey = ApiKey::AddPartitionsToTxn;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 2);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(3));
}

impl<W: Write> WriteVersionedType<W> for AddPartitionsToTxnRequest {
    fn write_versioned(&self, w: &mut W, _version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.transactional_id)?;
        Int64(self.producer_id).write(w)?;
        Int16(self.producer_epoch).write(w)?;
        len32(self.topics.len())?.write(w)?;
        for (topic, partitions) in &self.topics {
            string(w, topic)?;
            len32(partitions.len())?.write(w)?;
            for p in partitions {
                Int32(*p).write(w)?;
            }
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for AddPartitionsToTxnResponse {
    fn read_versioned(r: &mut R, _version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let _throttle_time_ms = Int32::read(r)?;
        let mut results = Vec::new();
        for _ in 0..read_len(r)? {
            let topic = String_::read(r)?.0;
            for _ in 0..read_len(r)? {
                let partition = Int32::read(r)?.0;
                let code = Int16::read(r)?.0;
                results.push((topic.clone(), partition, code));
            }
        }
        Ok(Self { results })
    }
}

/// EndTxn: commit or abort the current transaction.
#[derive(Debug)]
pub(crate) struct EndTxnRequest {
    pub(crate) transactional_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) committed: bool,
}

/// The answer to [`EndTxnRequest`].
#[derive(Debug)]
pub(crate) struct EndTxnResponse {
    pub(crate) error_code: i16,
}

impl RequestBody for EndTxnRequest {
    type ResponseBody = EndTxnResponse;
    const API_KEY: ApiKey = ApiKey::EndTxn;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 2);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(3));
}

impl<W: Write> WriteVersionedType<W> for EndTxnRequest {
    fn write_versioned(&self, w: &mut W, _version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.transactional_id)?;
        Int64(self.producer_id).write(w)?;
        Int16(self.producer_epoch).write(w)?;
        Boolean(self.committed).write(w)?;
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for EndTxnResponse {
    fn read_versioned(r: &mut R, _version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let _throttle_time_ms = Int32::read(r)?;
        Ok(Self { error_code: Int16::read(r)?.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_producer_id_v3_is_laid_out_as_kafka_defines_it() {
        let req = InitProducerIdRequest {
            transactional_id: Some("t".into()),
            transaction_timeout_ms: 60_000,
            producer_id: -1,
            producer_epoch: -1,
        };
        let mut out = Vec::new();
        req.write_versioned(&mut out, ApiVersion(Int16(3))).unwrap();
        // compact string: length + 1, then bytes; int32; int64; int16; no tagged fields.
        let mut want = vec![2, b't'];
        want.extend_from_slice(&60_000i32.to_be_bytes());
        want.extend_from_slice(&(-1i64).to_be_bytes());
        want.extend_from_slice(&(-1i16).to_be_bytes());
        want.push(0);
        assert_eq!(out, want);
    }

    #[test]
    fn add_partitions_response_lists_every_partition() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0i32.to_be_bytes());
        bytes.extend_from_slice(&1i32.to_be_bytes());
        bytes.extend_from_slice(&1i16.to_be_bytes());
        bytes.push(b'a');
        bytes.extend_from_slice(&2i32.to_be_bytes());
        for (p, code) in [(0i32, 0i16), (1, 90)] {
            bytes.extend_from_slice(&p.to_be_bytes());
            bytes.extend_from_slice(&code.to_be_bytes());
        }
        let r = AddPartitionsToTxnResponse::read_versioned(
            &mut std::io::Cursor::new(bytes),
            ApiVersion(Int16(1)),
        )
        .unwrap();
        assert_eq!(r.results, [("a".to_owned(), 0, 0), ("a".to_owned(), 1, 90)]);
    }
}
