#![doc = include_str!("../README.md")]

pub mod backoff;
mod config;
pub mod converter;
mod crash_point;
mod error;
mod error_policy;
#[doc(hidden)]
pub mod fuzzing;
pub mod kafka;
mod offset;
mod record;
pub mod runner;
pub mod runtime;
mod secret;
mod sink;
mod source;
pub mod template;
pub mod tls;
pub mod transform;

pub use config::{ConfigError, ConfigErrors, ConnectorConfig};
pub use converter::Converter;
pub use crash_point::crash_point;
pub use error::{Error, ErrorContext, ErrorKind, Result};
pub use error_policy::{ErrorPolicyConfig, RetryTimeout, Tolerance};
pub use offset::{FileOffsetStore, KafkaOffsetStore, MemoryOffsetStore, OffsetMap, OffsetStore};
pub use record::{
    Header, Headers, RecordMetadata, SinkRecord, SourceOffset, SourcePartition, SourceRecord,
    Timestamp, TopicPartition,
};
pub use secret::{Secret, SecretError};
pub use sink::{
    DynSinkConnector, ErrantRecordReporter, SinkConnector, SinkTask, SinkTaskContext, StartFrom,
};
pub use source::{DynSourceConnector, SourceConnector, SourceTask, SourceTaskContext};
