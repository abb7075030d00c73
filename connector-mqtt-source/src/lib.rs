#![doc = include_str!("../README.md")]

mod config;
mod connector;
mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
mod qos2;
mod render;
mod sparkplug;
mod task;

pub use config::{
    ExpiredMessages, MqttSourceConfig, SourceFormat, SparkplugMode, SparkplugOutput,
    SparkplugSourceConfig,
};
pub use connector::MqttSourceConnector;
pub use task::{MqttSourceCounters, MqttSourceTask, MqttSourceTaskConfig};

/// Registers the MQTT source as `type = "mqtt-source"`, so an application's
/// [`Registry`](connector_core::runner::Registry) builds it from a `[[connector]]` table without
/// the examples crate.
///
/// ```
/// use connector_core::runner::Registry;
///
/// let mut registry = Registry::new();
/// connector_mqtt_source::register(&mut registry);
/// assert!(registry.type_names().any(|t| t == "mqtt-source"));
/// ```
pub fn register(
    registry: &mut connector_core::runner::Registry,
) -> &mut connector_core::runner::Registry {
    registry.register_source::<MqttSourceConnector>("mqtt-source")
}
