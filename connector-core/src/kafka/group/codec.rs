//! The group protocol's requests, which rskafka 0.6's protocol module does not have: encoded and
//! decoded here with its primitives, like `describe_configs.rs`. Only the non-flexible versions
//! (no tagged fields) are spoken; every broker since Kafka 2.4 still accepts them. Error codes are
//! kept as the raw `int16` (0 = none) and mapped by the caller.
//!
//! Layouts (from the Kafka protocol's message definitions, `clients/src/main/resources/common/
//! message/*.json`; `(vN+)` = only from version N, `(vN-M)` = only in versions N to M):
//! ```text
//! FindCoordinator v0-2 (key 10)
//!   request:  key string, key_type int8 (v1+, 0 = group)
//!   response: throttle_time_ms int32 (v1+), error_code int16, error_message nullable string (v1+),
//!             node_id int32, host string, port int32
//! JoinGroup v0-5 (key 11)
//!   request:  group_id string, session_timeout_ms int32, rebalance_timeout_ms int32 (v1+),
//!             member_id string, group_instance_id nullable string (v5+, we send null),
//!             protocol_type string, [name string, metadata bytes]
//!   response: throttle_time_ms int32 (v2+), error_code int16, generation_id int32,
//!             protocol_name string, leader string, member_id string,
//!             [member_id string, group_instance_id nullable string (v5+), metadata bytes]
//! SyncGroup v0-3 (key 14)
//!   request:  group_id string, generation_id int32, member_id string,
//!             group_instance_id nullable string (v3+), [member_id string, assignment bytes]
//!   response: throttle_time_ms int32 (v1+), error_code int16, assignment bytes
//! Heartbeat v0-3 (key 12)
//!   request:  group_id string, generation_id int32, member_id string,
//!             group_instance_id nullable string (v3+)
//!   response: throttle_time_ms int32 (v1+), error_code int16
//! LeaveGroup v0-3 (key 13)
//!   request:  group_id string, member_id string (v0-2),
//!             [member_id string, group_instance_id nullable string] (v3+)
//!   response: throttle_time_ms int32 (v1+), error_code int16,
//!             [member_id string, group_instance_id nullable string, error_code int16] (v3+)
//! OffsetCommit v2-7 (key 8)
//!   request:  group_id string, generation_id int32, member_id string,
//!             group_instance_id nullable string (v7+), retention_time_ms int64 (v2-4, -1),
//!             [name string, [partition_index int32, committed_offset int64,
//!              committed_leader_epoch int32 (v6+, -1), committed_metadata nullable string]]
//!   response: throttle_time_ms int32 (v3+), [name string, [partition_index int32, error_code int16]]
//! OffsetFetch v1-5 (key 9)
//!   request:  group_id string, [name string, [partition_index int32]] (null = all topics, v2+)
//!   response: throttle_time_ms int32 (v3+), [name string, [partition_index int32,
//!              committed_offset int64, committed_leader_epoch int32 (v5+),
//!              metadata nullable string, error_code int16]], error_code int16 (v2+)
//!             (Tansu 0.6 answers a null topics request without the topics array at all)
//! DescribeGroups v0-4 (key 15)
//!   request:  [group string], include_authorized_operations bool (v3+)
//!   response: throttle_time_ms int32 (v1+), [error_code int16, group_id string,
//!             group_state string, protocol_type string, protocol_data string,
//!             [member_id string, group_instance_id nullable string (v4+), client_id string,
//!              client_host string, member_metadata bytes, member_assignment bytes],
//!             authorized_operations int32 (v3+)]
//! ```
//! Every array length read is bounded by [`MAX_ARRAY`] before anything is allocated for it.

use std::io::{Read, Write};

use crate::kafka::wire::api_key::ApiKey;
use crate::kafka::wire::api_version::{ApiVersion, ApiVersionRange};
use crate::kafka::wire::messages::{
    ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};
use crate::kafka::wire::primitives::{
    Boolean, Bytes, Int16, Int32, Int64, Int8, NullableString, String_,
};
use crate::kafka::wire::traits::{ReadError, ReadType, WriteError, WriteType};

/// Largest array length we accept in a response before allocating (a corrupt length must not
/// make us reserve gigabytes).
pub(crate) const MAX_ARRAY: usize = 100_000;

const fn range(min: i16, max: i16) -> ApiVersionRange {
    ApiVersionRange::new(ApiVersion(Int16(min)), ApiVersion(Int16(max)))
}

fn len32(len: usize) -> Result<Int32, WriteVersionedError> {
    let n = i32::try_from(len).map_err(WriteError::from)?;
    Ok(Int32(n))
}

fn string<W: Write>(w: &mut W, s: &str) -> Result<(), WriteVersionedError> {
    let n = i16::try_from(s.len()).map_err(WriteError::from)?;
    Int16(n).write(w)?;
    w.write_all(s.as_bytes()).map_err(WriteError::from)?;
    Ok(())
}

fn null_string<W: Write>(w: &mut W) -> Result<(), WriteVersionedError> {
    Ok(Int16(-1).write(w)?)
}

fn bytes<W: Write>(w: &mut W, b: &[u8]) -> Result<(), WriteVersionedError> {
    len32(b.len())?.write(w)?;
    w.write_all(b).map_err(WriteError::from)?;
    Ok(())
}

/// An array length from the wire: `-1` (null) reads as 0; more than [`MAX_ARRAY`] is an error.
pub(crate) fn read_len<R: Read>(r: &mut R) -> Result<usize, ReadVersionedError> {
    let len = Int32::read(r)?.0;
    if len == -1 {
        return Ok(0);
    }
    let len = usize::try_from(len).map_err(ReadError::Overflow)?;
    if len > MAX_ARRAY {
        return Err(ReadError::Malformed(format!("array of {len} elements").into()).into());
    }
    Ok(len)
}

fn read_string<R: Read>(r: &mut R) -> Result<String, ReadVersionedError> {
    Ok(String_::read(r)?.0)
}

fn read_bytes<R: Read>(r: &mut R) -> Result<Vec<u8>, ReadVersionedError> {
    Ok(Bytes::read(r)?.0)
}

/// FindCoordinator for a group.
#[derive(Debug)]
pub(crate) struct FindCoordinatorRequest {
    pub(crate) group_id: String,
}

/// The answer to [`FindCoordinatorRequest`].
#[derive(Debug)]
pub(crate) struct FindCoordinatorResponse {
    pub(crate) error_code: i16,
    pub(crate) error_message: Option<String>,
    pub(crate) node_id: i32,
    pub(crate) host: String,
    pub(crate) port: i32,
}

impl RequestBody for FindCoordinatorRequest {
    type ResponseBody = FindCoordinatorResponse;
    const API_KEY: ApiKey = ApiKey::FindCoordinator;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 2);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(3));
}

impl<W: Write> WriteVersionedType<W> for FindCoordinatorRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.group_id)?;
        if version.0 .0 >= 1 {
            Int8(0).write(w)?;
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for FindCoordinatorResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0 .0;
        if v >= 1 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        let error_code = Int16::read(r)?.0;
        let error_message = if v >= 1 { NullableString::read(r)?.0 } else { None };
        Ok(Self {
            error_code,
            error_message,
            node_id: Int32::read(r)?.0,
            host: read_string(r)?,
            port: Int32::read(r)?.0,
        })
    }
}

/// JoinGroup.
#[derive(Debug)]
pub(crate) struct JoinGroupRequest {
    pub(crate) group_id: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) member_id: String,
    pub(crate) protocol_type: String,
    /// (protocol name, member metadata).
    pub(crate) protocols: Vec<(String, Vec<u8>)>,
}

/// One member in the leader's [`JoinGroupResponse`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JoinGroupResponseMember {
    pub(crate) member_id: String,
    pub(crate) metadata: Vec<u8>,
}

/// The answer to [`JoinGroupRequest`].
#[derive(Debug)]
pub(crate) struct JoinGroupResponse {
    pub(crate) error_code: i16,
    pub(crate) generation_id: i32,
    pub(crate) protocol_name: String,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    pub(crate) members: Vec<JoinGroupResponseMember>,
}

impl RequestBody for JoinGroupRequest {
    type ResponseBody = JoinGroupResponse;
    const API_KEY: ApiKey = ApiKey::JoinGroup;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 5);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(6));
}

impl<W: Write> WriteVersionedType<W> for JoinGroupRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        let v = version.0 .0;
        string(w, &self.group_id)?;
        Int32(self.session_timeout_ms).write(w)?;
        if v >= 1 {
            Int32(self.rebalance_timeout_ms).write(w)?;
        }
        string(w, &self.member_id)?;
        if v >= 5 {
            null_string(w)?;
        }
        string(w, &self.protocol_type)?;
        len32(self.protocols.len())?.write(w)?;
        for (name, metadata) in &self.protocols {
            string(w, name)?;
            bytes(w, metadata)?;
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for JoinGroupResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0 .0;
        if v >= 2 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        let error_code = Int16::read(r)?.0;
        let generation_id = Int32::read(r)?.0;
        let protocol_name = read_string(r)?;
        let leader = read_string(r)?;
        let member_id = read_string(r)?;
        let n = read_len(r)?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let member_id = read_string(r)?;
            if v >= 5 {
                let _group_instance_id = NullableString::read(r)?;
            }
            members.push(JoinGroupResponseMember { member_id, metadata: read_bytes(r)? });
        }
        Ok(Self { error_code, generation_id, protocol_name, leader, member_id, members })
    }
}

/// SyncGroup.
#[derive(Debug)]
pub(crate) struct SyncGroupRequest {
    pub(crate) group_id: String,
    pub(crate) generation_id: i32,
    pub(crate) member_id: String,
    /// (member id, assignment); empty from followers.
    pub(crate) assignments: Vec<(String, Vec<u8>)>,
}

/// The answer to [`SyncGroupRequest`].
#[derive(Debug)]
pub(crate) struct SyncGroupResponse {
    pub(crate) error_code: i16,
    pub(crate) assignment: Vec<u8>,
}

impl RequestBody for SyncGroupRequest {
    type ResponseBody = SyncGroupResponse;
    const API_KEY: ApiKey = ApiKey::SyncGroup;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 3);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(4));
}

impl<W: Write> WriteVersionedType<W> for SyncGroupRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.group_id)?;
        Int32(self.generation_id).write(w)?;
        string(w, &self.member_id)?;
        if version.0 .0 >= 3 {
            null_string(w)?;
        }
        len32(self.assignments.len())?.write(w)?;
        for (member, assignment) in &self.assignments {
            string(w, member)?;
            bytes(w, assignment)?;
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for SyncGroupResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        if version.0 .0 >= 1 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        Ok(Self { error_code: Int16::read(r)?.0, assignment: read_bytes(r)? })
    }
}

/// Heartbeat.
#[derive(Debug)]
pub(crate) struct HeartbeatRequest {
    pub(crate) group_id: String,
    pub(crate) generation_id: i32,
    pub(crate) member_id: String,
}

/// The answer to [`HeartbeatRequest`] (and to [`LeaveGroupRequest`] below v3).
#[derive(Debug)]
pub(crate) struct HeartbeatResponse {
    pub(crate) error_code: i16,
}

impl RequestBody for HeartbeatRequest {
    type ResponseBody = HeartbeatResponse;
    const API_KEY: ApiKey = ApiKey::Heartbeat;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 3);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(4));
}

impl<W: Write> WriteVersionedType<W> for HeartbeatRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.group_id)?;
        Int32(self.generation_id).write(w)?;
        string(w, &self.member_id)?;
        if version.0 .0 >= 3 {
            null_string(w)?;
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for HeartbeatResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        if version.0 .0 >= 1 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        Ok(Self { error_code: Int16::read(r)?.0 })
    }
}

/// LeaveGroup of one member.
#[derive(Debug)]
pub(crate) struct LeaveGroupRequest {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
}

/// The answer to [`LeaveGroupRequest`]: the top-level error, else the member's own (v3+).
#[derive(Debug)]
pub(crate) struct LeaveGroupResponse {
    pub(crate) error_code: i16,
    /// (member id, error code) per member (v3+).
    pub(crate) members: Vec<(String, i16)>,
}

impl RequestBody for LeaveGroupRequest {
    type ResponseBody = LeaveGroupResponse;
    const API_KEY: ApiKey = ApiKey::LeaveGroup;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 3);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(4));
}

impl<W: Write> WriteVersionedType<W> for LeaveGroupRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.group_id)?;
        if version.0 .0 >= 3 {
            Int32(1).write(w)?;
            string(w, &self.member_id)?;
            null_string(w)?;
        } else {
            string(w, &self.member_id)?;
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for LeaveGroupResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0 .0;
        if v >= 1 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        let error_code = Int16::read(r)?.0;
        let mut members = Vec::new();
        if v >= 3 {
            let n = read_len(r)?;
            members.reserve(n);
            for _ in 0..n {
                let member_id = read_string(r)?;
                let _group_instance_id = NullableString::read(r)?;
                members.push((member_id, Int16::read(r)?.0));
            }
        }
        Ok(Self { error_code, members })
    }
}

/// OffsetCommit of the next offsets to read, by topic.
#[derive(Debug)]
pub(crate) struct OffsetCommitRequest {
    pub(crate) group_id: String,
    pub(crate) generation_id: i32,
    pub(crate) member_id: String,
    /// (topic, [(partition, next offset)]).
    pub(crate) topics: Vec<(String, Vec<(i32, i64)>)>,
}

/// The answer to [`OffsetCommitRequest`]: (topic, [(partition, error code)]).
#[derive(Debug)]
pub(crate) struct OffsetCommitResponse {
    pub(crate) topics: Vec<(String, Vec<(i32, i16)>)>,
}

impl RequestBody for OffsetCommitRequest {
    type ResponseBody = OffsetCommitResponse;
    const API_KEY: ApiKey = ApiKey::OffsetCommit;
    const API_VERSION_RANGE: ApiVersionRange = range(2, 7);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(8));
}

impl<W: Write> WriteVersionedType<W> for OffsetCommitRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        let v = version.0 .0;
        string(w, &self.group_id)?;
        Int32(self.generation_id).write(w)?;
        string(w, &self.member_id)?;
        if v >= 7 {
            null_string(w)?;
        }
        if (2..=4).contains(&v) {
            Int64(-1).write(w)?;
        }
        len32(self.topics.len())?.write(w)?;
        for (topic, partitions) in &self.topics {
            string(w, topic)?;
            len32(partitions.len())?.write(w)?;
            for (partition, offset) in partitions {
                Int32(*partition).write(w)?;
                Int64(*offset).write(w)?;
                if v >= 6 {
                    Int32(-1).write(w)?;
                }
                string(w, "")?;
            }
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for OffsetCommitResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        if version.0 .0 >= 3 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        let n = read_len(r)?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            let name = read_string(r)?;
            let m = read_len(r)?;
            let mut partitions = Vec::with_capacity(m);
            for _ in 0..m {
                partitions.push((Int32::read(r)?.0, Int16::read(r)?.0));
            }
            topics.push((name, partitions));
        }
        Ok(Self { topics })
    }
}

/// OffsetFetch of a group's committed offsets.
#[derive(Debug)]
pub(crate) struct OffsetFetchRequest {
    pub(crate) group_id: String,
    /// (topic, partitions); `None` = every topic (v2+).
    pub(crate) topics: Option<Vec<(String, Vec<i32>)>>,
}

/// One partition of an [`OffsetFetchResponse`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OffsetFetchPartition {
    pub(crate) partition: i32,
    /// -1 when nothing is committed.
    pub(crate) committed_offset: i64,
    pub(crate) error_code: i16,
}

/// The answer to [`OffsetFetchRequest`].
#[derive(Debug)]
pub(crate) struct OffsetFetchResponse {
    pub(crate) topics: Vec<(String, Vec<OffsetFetchPartition>)>,
    /// Top-level error (v2+; 0 below).
    pub(crate) error_code: i16,
    /// The broker left the topics array out (Tansu 0.6 answering "all topics"): ask for the
    /// topics by name instead.
    pub(crate) topics_omitted: bool,
}

impl RequestBody for OffsetFetchRequest {
    type ResponseBody = OffsetFetchResponse;
    const API_KEY: ApiKey = ApiKey::OffsetFetch;
    const API_VERSION_RANGE: ApiVersionRange = range(1, 5);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(6));
}

impl<W: Write> WriteVersionedType<W> for OffsetFetchRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        string(w, &self.group_id)?;
        match &self.topics {
            None if version.0 .0 < 2 => {
                return Err(WriteVersionedError::FieldNotAvailable {
                    field: "OffsetFetch topics = null (all topics)".to_owned(),
                    version,
                })
            }
            None => Int32(-1).write(w)?,
            Some(topics) => {
                len32(topics.len())?.write(w)?;
                for (topic, partitions) in topics {
                    string(w, topic)?;
                    len32(partitions.len())?.write(w)?;
                    for p in partitions {
                        Int32(*p).write(w)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for OffsetFetchResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0 .0;
        if v >= 3 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        // The body is already in memory (bounded by the maximum message size).
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).map_err(ReadError::IO)?;
        let top_level_error = if v >= 2 { 2 } else { 0 };
        if rest.len() == top_level_error {
            // Tansu 0.6 leaves the topics array out altogether when asked for all topics.
            let error_code = if v >= 2 { i16::from_be_bytes([rest[0], rest[1]]) } else { 0 };
            return Ok(Self { topics: Vec::new(), error_code, topics_omitted: true });
        }
        let r = &mut std::io::Cursor::new(rest);
        let n = read_len(r)?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            let name = read_string(r)?;
            let m = read_len(r)?;
            let mut partitions = Vec::with_capacity(m);
            for _ in 0..m {
                let partition = Int32::read(r)?.0;
                let committed_offset = Int64::read(r)?.0;
                if v >= 5 {
                    let _leader_epoch = Int32::read(r)?;
                }
                let _metadata = NullableString::read(r)?;
                let error_code = Int16::read(r)?.0;
                partitions.push(OffsetFetchPartition { partition, committed_offset, error_code });
            }
            topics.push((name, partitions));
        }
        let error_code = if v >= 2 { Int16::read(r)?.0 } else { 0 };
        Ok(Self { topics, error_code, topics_omitted: false })
    }
}

/// DescribeGroups.
#[derive(Debug)]
pub(crate) struct DescribeGroupsRequest {
    pub(crate) groups: Vec<String>,
}

/// One member of a [`DescribedGroup`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DescribedMember {
    pub(crate) member_id: String,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) metadata: Vec<u8>,
    pub(crate) assignment: Vec<u8>,
}

/// One group of a [`DescribeGroupsResponse`].
#[derive(Debug)]
pub(crate) struct DescribedGroup {
    pub(crate) error_code: i16,
    pub(crate) group_id: String,
    pub(crate) state: String,
    pub(crate) protocol_type: String,
    pub(crate) protocol_data: String,
    pub(crate) members: Vec<DescribedMember>,
}

/// The answer to [`DescribeGroupsRequest`].
#[derive(Debug)]
pub(crate) struct DescribeGroupsResponse {
    pub(crate) groups: Vec<DescribedGroup>,
}

impl RequestBody for DescribeGroupsRequest {
    type ResponseBody = DescribeGroupsResponse;
    const API_KEY: ApiKey = ApiKey::DescribeGroups;
    const API_VERSION_RANGE: ApiVersionRange = range(0, 4);
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(5));
}

impl<W: Write> WriteVersionedType<W> for DescribeGroupsRequest {
    fn write_versioned(&self, w: &mut W, version: ApiVersion) -> Result<(), WriteVersionedError> {
        len32(self.groups.len())?.write(w)?;
        for g in &self.groups {
            string(w, g)?;
        }
        if version.0 .0 >= 3 {
            Boolean(false).write(w)?;
        }
        Ok(())
    }
}

impl<R: Read> ReadVersionedType<R> for DescribeGroupsResponse {
    fn read_versioned(r: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0 .0;
        if v >= 1 {
            let _throttle_time_ms = Int32::read(r)?;
        }
        let n = read_len(r)?;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            let error_code = Int16::read(r)?.0;
            let group_id = read_string(r)?;
            let state = read_string(r)?;
            let protocol_type = read_string(r)?;
            let protocol_data = read_string(r)?;
            let m = read_len(r)?;
            let mut members = Vec::with_capacity(m);
            for _ in 0..m {
                let member_id = read_string(r)?;
                if v >= 4 {
                    let _group_instance_id = NullableString::read(r)?;
                }
                members.push(DescribedMember {
                    member_id,
                    client_id: read_string(r)?,
                    client_host: read_string(r)?,
                    metadata: read_bytes(r)?,
                    assignment: read_bytes(r)?,
                });
            }
            if v >= 3 {
                let _authorized_operations = Int32::read(r)?;
            }
            groups.push(DescribedGroup {
                error_code,
                group_id,
                state,
                protocol_type,
                protocol_data,
                members,
            });
        }
        Ok(Self { groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn v(n: i16) -> ApiVersion {
        ApiVersion(Int16(n))
    }

    fn write<T: WriteVersionedType<Vec<u8>>>(t: &T, version: i16) -> Vec<u8> {
        let mut out = Vec::new();
        t.write_versioned(&mut out, v(version)).unwrap();
        out
    }

    /// Reads `b` at `version` and checks that every byte was consumed.
    fn read<T: ReadVersionedType<Cursor<Vec<u8>>>>(b: Vec<u8>, version: i16) -> T {
        let len = b.len() as u64;
        let mut cursor = Cursor::new(b);
        let t = T::read_versioned(&mut cursor, v(version)).unwrap();
        assert_eq!(cursor.position(), len, "v{version} read to the end");
        t
    }

    /// A tiny builder of expected bytes.
    #[derive(Default)]
    struct B(Vec<u8>);
    impl B {
        fn i8(mut self, x: i8) -> Self {
            self.0.extend_from_slice(&x.to_be_bytes());
            self
        }
        fn i16(mut self, x: i16) -> Self {
            self.0.extend_from_slice(&x.to_be_bytes());
            self
        }
        fn i32(mut self, x: i32) -> Self {
            self.0.extend_from_slice(&x.to_be_bytes());
            self
        }
        fn i64(mut self, x: i64) -> Self {
            self.0.extend_from_slice(&x.to_be_bytes());
            self
        }
        fn s(self, x: &str) -> Self {
            let mut b = self.i16(x.len() as i16);
            b.0.extend_from_slice(x.as_bytes());
            b
        }
        fn null(self) -> Self {
            self.i16(-1)
        }
        fn bytes(self, x: &[u8]) -> Self {
            let mut b = self.i32(x.len() as i32);
            b.0.extend_from_slice(x);
            b
        }
    }

    #[test]
    fn find_coordinator_v0_and_v2() {
        let req = FindCoordinatorRequest { group_id: "g".into() };
        assert_eq!(write(&req, 0), B::default().s("g").0);
        assert_eq!(write(&req, 2), B::default().s("g").i8(0).0);
        let r: FindCoordinatorResponse = read(B::default().i16(0).i32(7).s("h").i32(9092).0, 0);
        assert_eq!((r.error_code, r.node_id, r.host.as_str(), r.port), (0, 7, "h", 9092));
        let r: FindCoordinatorResponse =
            read(B::default().i32(0).i16(15).s("loading").i32(-1).s("").i32(-1).0, 2);
        assert_eq!(r.error_code, 15);
        assert_eq!(r.error_message.as_deref(), Some("loading"));
    }

    #[test]
    fn join_group_v0_v1_v5_requests_and_responses() {
        let req = JoinGroupRequest {
            group_id: "g".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            member_id: "".into(),
            protocol_type: "connect".into(),
            protocols: vec![("p".into(), vec![1, 2])],
        };
        let tail = |b: B| b.s("connect").i32(1).s("p").bytes(&[1, 2]).0;
        assert_eq!(write(&req, 0), tail(B::default().s("g").i32(10_000).s("")));
        assert_eq!(write(&req, 1), tail(B::default().s("g").i32(10_000).i32(60_000).s("")));
        assert_eq!(write(&req, 5), tail(B::default().s("g").i32(10_000).i32(60_000).s("").null()));
        for version in [0i16, 2, 5] {
            let mut b = B::default();
            if version >= 2 {
                b = b.i32(0);
            }
            b = b.i16(0).i32(3).s("p").s("m1").s("m1").i32(2).s("m1");
            if version >= 5 {
                b = b.null();
            }
            b = b.bytes(&[9]).s("m2");
            if version >= 5 {
                b = b.s("instance");
            }
            b = b.bytes(&[]);
            let r: JoinGroupResponse = read(b.0, version);
            assert_eq!((r.generation_id, r.leader.as_str(), r.member_id.as_str()), (3, "m1", "m1"));
            assert_eq!(r.protocol_name, "p");
            assert_eq!(
                r.members,
                vec![
                    JoinGroupResponseMember { member_id: "m1".into(), metadata: vec![9] },
                    JoinGroupResponseMember { member_id: "m2".into(), metadata: vec![] },
                ]
            );
        }
    }

    #[test]
    fn sync_heartbeat_and_leave_at_their_first_and_last_versions() {
        let sync = SyncGroupRequest {
            group_id: "g".into(),
            generation_id: 4,
            member_id: "m".into(),
            assignments: vec![("m".into(), vec![5])],
        };
        assert_eq!(write(&sync, 0), B::default().s("g").i32(4).s("m").i32(1).s("m").bytes(&[5]).0);
        assert_eq!(
            write(&sync, 3),
            B::default().s("g").i32(4).s("m").null().i32(1).s("m").bytes(&[5]).0
        );
        let r: SyncGroupResponse = read(B::default().i16(0).bytes(&[5, 6]).0, 0);
        assert_eq!((r.error_code, r.assignment), (0, vec![5, 6]));
        let r: SyncGroupResponse = read(B::default().i32(0).i16(27).bytes(&[]).0, 3);
        assert_eq!(r.error_code, 27);

        let hb = HeartbeatRequest { group_id: "g".into(), generation_id: 4, member_id: "m".into() };
        assert_eq!(write(&hb, 0), B::default().s("g").i32(4).s("m").0);
        assert_eq!(write(&hb, 3), B::default().s("g").i32(4).s("m").null().0);
        let r: HeartbeatResponse = read(B::default().i16(25).0, 0);
        assert_eq!(r.error_code, 25);
        let r: HeartbeatResponse = read(B::default().i32(0).i16(0).0, 3);
        assert_eq!(r.error_code, 0);

        let leave = LeaveGroupRequest { group_id: "g".into(), member_id: "m".into() };
        assert_eq!(write(&leave, 0), B::default().s("g").s("m").0);
        assert_eq!(write(&leave, 3), B::default().s("g").i32(1).s("m").null().0);
        let r: LeaveGroupResponse = read(B::default().i16(0).0, 0);
        assert!(r.members.is_empty());
        let r: LeaveGroupResponse =
            read(B::default().i32(0).i16(0).i32(1).s("m").null().i16(25).0, 3);
        assert_eq!(r.members, vec![("m".to_owned(), 25)]);
    }

    #[test]
    fn offset_commit_v2_v6_v7() {
        let req = OffsetCommitRequest {
            group_id: "g".into(),
            generation_id: 2,
            member_id: "m".into(),
            topics: vec![("t".into(), vec![(0, 42)])],
        };
        let head = B::default().s("g").i32(2).s("m");
        assert_eq!(write(&req, 2), head.i64(-1).i32(1).s("t").i32(1).i32(0).i64(42).s("").0);
        let head = B::default().s("g").i32(2).s("m");
        assert_eq!(write(&req, 6), head.i32(1).s("t").i32(1).i32(0).i64(42).i32(-1).s("").0);
        let head = B::default().s("g").i32(2).s("m");
        assert_eq!(write(&req, 7), head.null().i32(1).s("t").i32(1).i32(0).i64(42).i32(-1).s("").0);
        let r: OffsetCommitResponse = read(B::default().i32(1).s("t").i32(1).i32(0).i16(22).0, 2);
        assert_eq!(r.topics, vec![("t".to_owned(), vec![(0, 22)])]);
        let r: OffsetCommitResponse =
            read(B::default().i32(0).i32(1).s("t").i32(1).i32(0).i16(0).0, 7);
        assert_eq!(r.topics, vec![("t".to_owned(), vec![(0, 0)])]);
    }

    #[test]
    fn offset_fetch_v1_v2_v5_and_all_topics_needs_v2() {
        let all = OffsetFetchRequest { group_id: "g".into(), topics: None };
        assert_eq!(write(&all, 2), B::default().s("g").i32(-1).0);
        let mut out = Vec::new();
        assert!(matches!(
            all.write_versioned(&mut out, v(1)),
            Err(WriteVersionedError::FieldNotAvailable { .. })
        ));
        let some =
            OffsetFetchRequest { group_id: "g".into(), topics: Some(vec![("t".into(), vec![3])]) };
        assert_eq!(write(&some, 1), B::default().s("g").i32(1).s("t").i32(1).i32(3).0);
        let want = vec![(
            "t".to_owned(),
            vec![OffsetFetchPartition { partition: 3, committed_offset: 42, error_code: 0 }],
        )];
        let r: OffsetFetchResponse =
            read(B::default().i32(1).s("t").i32(1).i32(3).i64(42).s("").i16(0).0, 1);
        assert_eq!((r.topics, r.error_code), (want, 0));
        let r: OffsetFetchResponse =
            read(B::default().i32(1).s("t").i32(1).i32(3).i64(42).null().i16(0).i16(16).0, 2);
        assert_eq!(r.error_code, 16);
        let r: OffsetFetchResponse = read(
            B::default().i32(0).i32(1).s("t").i32(1).i32(3).i64(-1).i32(-1).null().i16(0).i16(0).0,
            5,
        );
        assert_eq!(r.topics[0].1[0].committed_offset, -1);
        // Tansu 0.6's answer to "all topics": the array left out.
        let r: OffsetFetchResponse = read(B::default().i32(0).i16(0).0, 5);
        assert!(r.topics_omitted && r.topics.is_empty());
        let r: OffsetFetchResponse = read(B::default().i32(0).i32(0).i16(0).0, 5);
        assert!(!r.topics_omitted);
    }

    #[test]
    fn describe_groups_v0_and_v4() {
        let req = DescribeGroupsRequest { groups: vec!["g".into()] };
        assert_eq!(write(&req, 0), B::default().i32(1).s("g").0);
        assert_eq!(write(&req, 4), B::default().i32(1).s("g").i8(0).0);
        for version in [0i16, 1, 3, 4] {
            let mut b = B::default();
            if version >= 1 {
                b = b.i32(0);
            }
            b = b.i32(1).i16(0).s("g").s("Stable").s("connect").s("p").i32(1).s("m");
            if version >= 4 {
                b = b.null();
            }
            b = b.s("worker-1").s("/127.0.0.1").bytes(&[1]).bytes(&[2, 3]);
            if version >= 3 {
                b = b.i32(-2_147_483_648);
            }
            let r: DescribeGroupsResponse = read(b.0, version);
            let g = &r.groups[0];
            assert_eq!((g.state.as_str(), g.protocol_data.as_str()), ("Stable", "p"));
            assert_eq!(
                g.members,
                vec![DescribedMember {
                    member_id: "m".into(),
                    client_id: "worker-1".into(),
                    client_host: "/127.0.0.1".into(),
                    metadata: vec![1],
                    assignment: vec![2, 3],
                }]
            );
        }
    }

    #[test]
    fn a_corrupt_array_length_is_refused_before_allocating() {
        let b = B::default().i32(0).i32(i32::MAX).0;
        let mut cursor = Cursor::new(b);
        assert!(DescribeGroupsResponse::read_versioned(&mut cursor, v(1)).is_err());
        let b = B::default().i32(-5).0;
        let mut cursor = Cursor::new(b);
        assert!(OffsetCommitResponse::read_versioned(&mut cursor, v(2)).is_err());
    }
}
