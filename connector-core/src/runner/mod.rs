//! The runner behind the `connect` binary: connector types registered by name ([`Registry`]),
//! the configuration file ([`ConnectFile`]: `[kafka]`, `[offsets]`, `[progress]`,
//! `[cluster]`, `[[connector]]`) read with every problem reported at its key path, its JSON
//! Schema and the Markdown reference generated from it, [`run`], which runs every connector
//! until shutdown (or this worker's share of a worker group's tasks), and [`cluster_status`].
//!
//! An application builds its own runner by registering its connector types next to the
//! built-in ones and calling [`ConnectFile::load`] and [`run`].

pub mod control;
mod file;
mod registry;
mod run;
mod schema;
mod status;

pub use file::{
    connector_from_json, ConnectFile, ConnectorEntry, OffsetStoreKind, OffsetsConfig,
    ProgressConfig, RestConfig, RestTlsConfig,
};
pub use registry::{BuiltConnector, ConnectorKind, Registry};
pub use run::{run, run_with, ControlApi, ControlApiHandle};
pub use schema::{file_schema, markdown};
pub use status::{
    cluster_status, describe_cluster, ClusterStatus, SinkGroupStatus, SinkMemberStatus,
    WorkerStatus,
};
