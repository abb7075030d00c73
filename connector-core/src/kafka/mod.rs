//! Kafka I/O over rskafka's wire protocol: the [`KafkaClient`] broker pool and metadata cache, the
//! batching [`Producer`], fetching, topic creation, the Java-compatible partitioner, the group
//! protocol client ([`group`]), the [`TransactionalProducer`], and the `[kafka]` configuration.
//!
//! We use rskafka's request/response codecs and its pipelined request multiplexer, over a TCP
//! transport of our own (with `TCP_NODELAY`, one write per request), and do batching,
//! partitioning, leader tracking, timeouts and retries here. `docs/kafka-io.md` explains why.

mod client;
mod config;
mod connection;
mod describe_configs;
mod errors;
mod fetch;
pub(crate) mod fetch_response;
pub mod group;
mod partitioner;
mod produce;
mod producer;
pub(crate) mod records;
mod security;
mod topic_name;
mod txn;
pub(crate) mod wire;

pub use client::{KafkaClient, OffsetSpec, PartitionMetadata, TopicMetadata};
pub use config::{Compression, KafkaConfig, SaslMechanism, SecurityProtocol};
pub use fetch::{FetchResult, Fetched, Isolation};
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{Delivery, Producer, ProducerState, TopicBudget, DEFAULT_TOPIC_IDLE};
pub use records::ProducerRecord;
pub use topic_name::{
    validate_topic_name, validate_topic_template, TopicNameError, MAX_TOPIC_NAME_LEN,
};
pub use txn::{ProducerFenced, TransactionalProducer};
