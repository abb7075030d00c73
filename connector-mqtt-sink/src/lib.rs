#![doc = include_str!("../README.md")]

mod config;
mod connector;
mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
mod properties;
mod render;
mod task;
mod tracker;

pub use config::{MqttSinkConfig, Tombstones};
pub use connector::MqttSinkConnector;
pub use properties::{PropertyRules, UserProperties};
pub use task::{MqttSinkCounters, MqttSinkTask, MqttSinkTaskConfig};
