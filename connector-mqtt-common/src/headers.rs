//! Names of the Kafka headers the MQTT source writes and the MQTT sink reads back. Every name
//! starts with [`PREFIX`]; MQTT 5 user properties travel under their own names.
//!
//! ```
//! use connector_mqtt_common::headers;
//!
//! assert!(headers::CONTENT_TYPE.starts_with(headers::PREFIX));
//! ```

/// Prefix of the connector's own bookkeeping headers (never sent as MQTT user properties).
pub const PREFIX: &str = "mqtt.";
/// The MQTT topic a message arrived on.
pub const TOPIC: &str = "mqtt.topic";
/// Its QoS (`0`, `1`, `2`).
pub const QOS: &str = "mqtt.qos";
/// Its retain flag (`true`/`false`).
pub const RETAIN: &str = "mqtt.retain";
/// Its duplicate flag (`true`/`false`).
pub const DUP: &str = "mqtt.dup";
/// MQTT 5 content type.
pub const CONTENT_TYPE: &str = "mqtt.content_type";
/// MQTT 5 response topic (request/response).
pub const RESPONSE_TOPIC: &str = "mqtt.response_topic";
/// MQTT 5 correlation data (request/response), as sent.
pub const CORRELATION_DATA: &str = "mqtt.correlation_data";
/// MQTT 5 payload format indicator (`0` bytes, `1` UTF-8).
pub const PAYLOAD_FORMAT: &str = "mqtt.payload_format_indicator";
/// MQTT 5 message expiry interval in seconds, counted from the record's timestamp.
pub const MESSAGE_EXPIRY: &str = "mqtt.message_expiry_interval";
/// Size in bytes of a PUBLISH over `max_packet_size` whose payload the source dropped (on its
/// dead-letter record, which has no value).
pub const PACKET_SIZE: &str = "mqtt.packet_size";
