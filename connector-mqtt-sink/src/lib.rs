#![doc = include_str!("../README.md")]

mod config;
mod connector;
mod event_loop;
mod exactly_once;
#[doc(hidden)]
pub mod fuzzing;
mod properties;
mod render;
mod sparkplug;
mod task;
mod tracker;

pub use config::{MqttSinkConfig, SinkFormat, SinkSparkplugConfig, Tombstones};
pub use connector::MqttSinkConnector;
pub use properties::{PropertyRules, UserProperties};
pub use task::{MqttSinkCounters, MqttSinkTask, MqttSinkTaskConfig};

/// Registers the MQTT sink as `type = "mqtt-sink"`, so an application's
/// [`Registry`](connector_core::runner::Registry) builds it from a `[[connector]]` table without
/// the examples crate.
///
/// ```
/// use connector_core::runner::Registry;
///
/// let mut registry = Registry::new();
/// connector_mqtt_sink::register(&mut registry);
/// assert!(registry.type_names().any(|t| t == "mqtt-sink"));
/// ```
pub fn register(
    registry: &mut connector_core::runner::Registry,
) -> &mut connector_core::runner::Registry {
    registry.register_sink::<MqttSinkConnector>("mqtt-sink")
}
