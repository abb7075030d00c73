//! MQTT pieces shared by the MQTT source and sink connectors: broker URLs ([`MqttUrl`]), MQTT's
//! topic and filter rules, connection settings ([`ConnectionSettings`], [`TlsFiles`]), and the
//! connection itself in MQTT 3.1.1 or 5 ([`Session`]: our own socket and rumqttc's packet codec),
//! driven with bulk reads and writes ([`Link`]) in the version-neutral packets of [`Inbound`] and
//! [`Outbound`].

mod connection;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
mod keys;
mod link;
mod session;
mod status;
mod tls;
mod topic;
mod url;
mod wire;

pub use connection::{ConnectionSettings, Will, STATUS_OFFLINE, STATUS_ONLINE};
pub use keys::{ConnectionKeys, DEFAULT_STATUS_TOPIC, MQTT_MAX_PACKET};
pub use link::{pause_before_reconnect, Link};
pub use session::{Connected, Session};
pub use status::{wait_connected, Status};
pub use tls::{client_config, TlsFiles};
pub use topic::{validate_filter, validate_topic, MAX_TOPIC_LEN};
pub use url::MqttUrl;
pub use wire::{
    publish_size, AckPacket, Inbound, Message, MqttVersion, Outbound, PublishProperties, Refusal,
};
