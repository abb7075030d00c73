#![doc = include_str!("../README.md")]

mod config;
mod connector;
mod event_loop;
mod render;
mod task;

pub use config::MqttSourceConfig;
pub use connector::MqttSourceConnector;
pub use task::{MqttSourceCounters, MqttSourceTask, MqttSourceTaskConfig};
