//! The connector types the `connect` runner knows: the MQTT source and sink, and the file and
//! heartbeat connectors, registered by name. An application adds its own with
//! [`Registry::register_source`] / [`Registry::register_sink`].

use connector_core::runner::Registry;

use crate::{FileSinkConnector, FileSourceConnector, HeartbeatConnector};

/// The built-in connector types: `mqtt-source`, `mqtt-sink`, `file-source`, `file-sink` and
/// `heartbeat`. Register your own types on the returned registry to run them next to these.
///
/// ```
/// let registry = connector_runner::builtin_registry();
/// let names: Vec<_> = registry.type_names().collect();
/// assert_eq!(names, ["file-sink", "file-source", "heartbeat", "mqtt-sink", "mqtt-source"]);
/// ```
pub fn builtin_registry() -> Registry {
    let mut r = Registry::new();
    connector_mqtt_source::register(&mut r);
    connector_mqtt_sink::register(&mut r);
    r.register_source::<FileSourceConnector>("file-source")
        .register_sink::<FileSinkConnector>("file-sink")
        .register_source::<HeartbeatConnector>("heartbeat");
    r
}
