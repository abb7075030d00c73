//! MQTT pieces shared by the MQTT source and sink connectors: broker URLs ([`MqttUrl`]), MQTT's
//! topic and filter rules, the connection keys every MQTT connector config has
//! ([`MqttConnectionConfig`], embedded with [`mqtt_connector_config!`]), connection settings
//! ([`ConnectionSettings`], [`MqttTlsConfig`]), and the
//! connection itself in MQTT 3.1.1 or 5 ([`Session`]: our own socket and rumqttc's packet codec),
//! driven with bulk reads and writes ([`Link`]) in the version-neutral packets of [`Inbound`] and
//! [`Outbound`].

mod config;
mod connection;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
mod link;
mod session;
mod status;
mod tls;
mod topic;
mod url;
mod wire;

#[doc(hidden)]
pub use config::deserialize_flat as __deserialize_flat;
pub use config::{MqttConnectionConfig, DEFAULT_STATUS_TOPIC, MQTT_MAX_PACKET};
pub use connection::{ConnectionSettings, Will, STATUS_OFFLINE, STATUS_ONLINE};
pub use link::{
    count_reconnect, pause_before_reconnect, reconnect_reason, Link, RECONNECT_REASONS,
};
pub use session::{Connected, Session};
pub use status::{wait_connected, Status};
pub use tls::MqttTlsConfig;
pub use topic::{validate_filter, validate_topic, TopicError, MAX_TOPIC_LEN};
pub use url::{MqttUrl, UrlError};
pub use wire::{
    publish_size, AckPacket, Inbound, Message, MqttVersion, Outbound, PublishProperties, Refusal,
};
