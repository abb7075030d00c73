#![doc = include_str!("../README.md")]

pub mod backoff;
mod config;
mod error;
pub mod kafka;
mod offset;
mod record;
pub mod runner;
pub mod runtime;
mod secret;
mod sink;
mod source;
pub mod template;

pub use config::{join_path, ConfigError, ConfigErrors, ConnectorConfig};
pub use error::{Error, ErrorContext, ErrorKind, Result, SharedError};
pub use offset::{FileOffsetStore, KafkaOffsetStore, MemoryOffsetStore, OffsetMap, OffsetStore};
pub use record::{
    Header, Headers, RecordMetadata, SinkRecord, SourceOffset, SourcePartition, SourceRecord,
    Timestamp, TopicPartition,
};
pub use secret::Secret;
pub use sink::{DynSinkConnector, SinkConnector, SinkTask, SinkTaskContext, StartFrom};
pub use source::{DynSourceConnector, SourceConnector, SourceTask, SourceTaskContext};
