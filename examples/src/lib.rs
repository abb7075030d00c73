//! Examples built on `connector-core`: a custom source connector that tails a file
//! ([`FileSourceConnector`], byte position as its source offset), a custom sink connector that
//! appends records to a file ([`FileSinkConnector`]), the [`registry`] of connector types the
//! `connect` runner knows, and the in-process brokers of the quickstart ([`embedded`]).
//!
//! `docs/writing-a-connector.md` walks through writing connectors like these from zero.

pub mod embedded;
mod file_sink;
mod file_source;
mod heartbeat;
mod record_line;
mod registry;

pub use file_sink::{FileSinkConfig, FileSinkConnector, FileSinkTask};
pub use file_source::{FileSourceConfig, FileSourceConnector, FileSourceTask};
pub use heartbeat::{HeartbeatConfig, HeartbeatConnector, HeartbeatTask};
pub use record_line::{LineFormat, RecordLine};
pub use registry::registry;
