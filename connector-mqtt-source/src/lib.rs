#![doc = include_str!("../README.md")]

mod config;
mod connector;
mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
mod render;
mod task;

pub use config::{ExpiredMessages, MqttSourceConfig};
pub use connector::MqttSourceConnector;
pub use task::{MqttSourceCounters, MqttSourceTask, MqttSourceTaskConfig};
