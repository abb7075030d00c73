//! The `connect` runner's crate: [`builtin_registry`], the connector types the runner knows
//! (the MQTT source and sink, and the connectors that ship with the runner, as Kafka Connect ships
//! its FileStream connectors: [`FileSourceConnector`] tailing a file with its byte position as
//! the source offset, [`FileSinkConnector`] appending records to a file, and
//! [`HeartbeatConnector`]). An application that runs its own connector types next to the
//! built-in ones starts from [`builtin_registry`] and registers its own.
//!
//! [`run`] runs a configuration as `connect run` does: with the built-in types, and with the
//! REST API ([`rest`]: Kafka Connect's, with `/health` and Prometheus [`metrics`]) when the file
//! has a `[rest]` table.
//!
//! No embedded brokers are linked here; the quickstart's are in the examples crate.
//! `docs/writing-a-connector.md` walks through writing connectors like these from zero.

mod file_sink;
mod file_source;
mod heartbeat;
pub mod metrics;
mod record_line;
mod registry;
pub mod rest;

use std::sync::Arc;

use connector_core::runner::ConnectFile;
use tokio_util::sync::CancellationToken;

pub use file_sink::{FileSinkConfig, FileSinkConnector, FileSinkTask};
pub use file_source::{FileSourceConfig, FileSourceConnector, FileSourceTask};
pub use heartbeat::{HeartbeatConfig, HeartbeatConnector, HeartbeatTask};
pub use record_line::{LineFormat, RecordLine};
pub use registry::builtin_registry;

/// Runs `file` as `connect run` does: API-created connectors are built with
/// [`builtin_registry`], and the REST API ([`rest::RestApi`]) is served when `[rest]` is set.
///
/// ```no_run
/// # async fn example() -> connector_core::Result<()> {
/// let file = connector_core::runner::ConnectFile::load(
///     "connect.toml".as_ref(),
///     &connector_runner::builtin_registry(),
/// )
/// .map_err(connector_core::Error::from)?;
/// connector_runner::run(file, tokio_util::sync::CancellationToken::new()).await
/// # }
/// ```
///
/// # Errors
/// As [`connector_core::runner::run_with`].
pub async fn run(file: ConnectFile, shutdown: CancellationToken) -> connector_core::Result<()> {
    connector_core::runner::run_with(
        file,
        Arc::new(builtin_registry()),
        Some(Arc::new(rest::RestApi)),
        shutdown,
    )
    .await
}
