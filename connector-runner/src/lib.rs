//! The `connect` runner's crate: [`builtin_registry`], the connector types the runner knows
//! (the MQTT source and sink, and the connectors that ship with the runner, as Kafka Connect ships
//! its FileStream connectors: [`FileSourceConnector`] tailing a file with its byte position as
//! the source offset, [`FileSinkConnector`] appending records to a file, and
//! [`HeartbeatConnector`]). An application that runs its own connector types next to the
//! built-in ones starts from [`builtin_registry`] and registers its own.
//!
//! No embedded brokers are linked here; the quickstart's are in the examples crate.
//! `docs/writing-a-connector.md` walks through writing connectors like these from zero.

mod file_sink;
mod file_source;
mod heartbeat;
pub mod metrics;
mod record_line;
mod registry;

pub use file_sink::{FileSinkConfig, FileSinkConnector, FileSinkTask};
pub use file_source::{FileSourceConfig, FileSourceConnector, FileSourceTask};
pub use heartbeat::{HeartbeatConfig, HeartbeatConnector, HeartbeatTask};
pub use record_line::{LineFormat, RecordLine};
pub use registry::builtin_registry;
