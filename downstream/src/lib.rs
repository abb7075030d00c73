//! A user's crate: the connector of docs/writing-a-connector.md ([`heartbeat`]) and the
//! [`registry`] its own runner uses (src/main.rs), with the built-in types next to its own.

pub mod heartbeat;

use connector_core::runner::Registry;

/// The built-in types of the `connect` runner (`mqtt-source`, `mqtt-sink`, `file-source`,
/// `file-sink`, `heartbeat`) and ours, `my-heartbeat`.
pub fn registry() -> Registry {
    let mut registry = connector_runner::builtin_registry();
    registry.register_source::<heartbeat::HeartbeatConnector>("my-heartbeat");
    registry
}
