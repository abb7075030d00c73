//! The runner behind the `connect` binary: connector types registered by name ([`Registry`]),
//! the configuration file ([`ConnectFile`]: `[kafka]`, `[offsets]`, `[progress]`,
//! `[[connector]]`) read with every problem reported at its key path, its JSON Schema and the
//! Markdown reference generated from it, and [`run`], which runs every connector until shutdown.
//!
//! An application builds its own runner by registering its connector types next to the
//! built-in ones and calling [`ConnectFile::load`] and [`run`].

mod file;
mod registry;
mod run;
mod schema;

pub use file::{ConnectFile, ConnectorEntry, OffsetStoreKind, OffsetsConfig, ProgressConfig};
pub use registry::{BuiltConnector, ConnectorKind, Registry};
pub use run::run;
pub use schema::{file_schema, markdown};
