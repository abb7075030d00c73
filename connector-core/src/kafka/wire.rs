//! The one door to rskafka's wire layer: every item of rskafka's `protocol` and `messenger`
//! modules this crate uses is re-exported here, and nothing else in the workspace names those
//! modules.
//!
//! rskafka makes `protocol` (the request and response codecs, record batches, primitives) and
//! `messenger` (the pipelined request multiplexer with API version negotiation) public only
//! behind its `unstable-fuzzing` feature, so the workspace enables that feature and pins
//! `rskafka = "=0.6.0"`: the API behind it may change in any release. Keeping the use in one list
//! makes an rskafka upgrade, or leaving rskafka, a change to this file and the code that names
//! these items. What would replace the feature:
//!
//! - rskafka exposing `protocol` and `messenger` as stable API (then only the feature and the
//!   exact pin go), or
//! - our own codec over the `kafka-protocol` crate (its generated, versioned message types) and a
//!   small multiplexer of our own in place of [`messenger::Messenger`] (correlation ids,
//!   pipelining, ApiVersions negotiation, SASL handshake).
//!
//! The stable parts of rskafka we use (`rskafka::client::{Credentials, SaslConfig}` for SASL,
//! and its high-level client in the `produce` bench for comparison) do not need the feature and
//! are named directly. `docs/kafka-io.md` explains why we use the protocol layer at all.

/// rskafka's request multiplexer over one connection.
pub(crate) mod messenger {
    pub(crate) use rskafka::messenger::{Messenger, RequestError, SaslError};
}

/// API keys.
pub(crate) mod api_key {
    pub(crate) use rskafka::protocol::api_key::ApiKey;
}

/// API versions and version ranges.
pub(crate) mod api_version {
    pub(crate) use rskafka::protocol::api_version::{ApiVersion, ApiVersionRange};
}

/// Kafka's error codes.
pub(crate) mod error {
    pub(crate) use rskafka::protocol::error::Error;
}

/// Request and response bodies, and the versioned read/write traits.
pub(crate) mod messages {
    pub(crate) use rskafka::protocol::messages::{
        CreateTopicConfig, CreateTopicRequest, CreateTopicsRequest, DeleteTopicsRequest,
        FetchRequest, FetchRequestPartition, FetchRequestTopic, IsolationLevel, ListOffsetsRequest,
        ListOffsetsRequestPartition, ListOffsetsRequestTopic, MetadataRequest,
        MetadataRequestTopic, MetadataResponse, ProduceRequest, ProduceRequestPartitionData,
        ProduceRequestTopicData, ProduceResponse, ReadVersionedError, ReadVersionedType,
        RequestBody, WriteVersionedError, WriteVersionedType, NORMAL_CONSUMER,
    };
}

/// Protocol primitives.
pub(crate) mod primitives {
    pub(crate) use rskafka::protocol::primitives::{
        Array, Boolean, Bytes, CompactNullableString, Int16, Int32, Int64, Int8, NullableString,
        Records, String_, TaggedFields,
    };
}

/// v2 record batches.
pub(crate) mod record {
    pub(crate) use rskafka::protocol::record::{
        ControlBatchOrRecords, ControlBatchRecord, Record, RecordBatch, RecordBatchCompression,
        RecordBatchTimestampType, RecordHeader,
    };
}

/// The unversioned read/write traits and their errors.
pub(crate) mod traits {
    pub(crate) use rskafka::protocol::traits::{ReadError, ReadType, WriteError, WriteType};
}
