//! MQTT pieces shared by the MQTT source and sink connectors: broker URLs ([`MqttUrl`]), MQTT's
//! topic and filter rules, building rumqttc client options from connector settings
//! ([`ConnectionSettings`]), what a connection error means ([`classify`]), and driving a
//! connection rumqttc opened with bulk reads and writes ([`Link`]).

mod connection;
mod keys;
mod link;
mod status;
mod topic;
mod url;

pub use connection::{classify, connection_error, tls_config, ConnectionSettings, MAX_PACKET_IDS};
pub use keys::{ConnectionKeys, MQTT_MAX_PACKET};
pub use link::{pause_before_reconnect, Link, LinkResult};
pub use status::{wait_connected, Status};
pub use topic::{validate_filter, validate_topic, MAX_TOPIC_LEN};
pub use url::MqttUrl;
