#![doc = include_str!("../README.md")]

mod config;
mod connector;
mod event_loop;
mod render;
mod task;
mod tracker;

pub use config::{MqttSinkConfig, Tombstones};
pub use connector::MqttSinkConnector;
pub use task::{MqttSinkTask, MqttSinkTaskConfig};
