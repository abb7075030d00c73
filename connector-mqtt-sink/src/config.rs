//! [`MqttSinkConfig`]: the keys of a `type = "mqtt-sink"` connector.

use connector_core::backoff::BackoffConfig;
use connector_core::template::{Part, Template};
use connector_core::{ConfigErrors, ConnectorConfig, Secret, StartFrom};
use connector_mqtt_common::{
    validate_topic, ConnectionKeys, MqttVersion, TlsFiles, DEFAULT_STATUS_TOPIC,
};

use crate::properties::UserProperties;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to do with a Kafka record whose value is null (a tombstone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tombstones {
    /// Publish nothing (default).
    #[default]
    Skip,
    /// Publish an empty payload; with `retain`, this clears the topic's retained message.
    Publish,
}

/// Publishes Kafka records to MQTT, committing a Kafka offset only after the broker acknowledged
/// every publish before it.
///
/// ```
/// use connector_core::ConnectorConfig;
/// use connector_mqtt_sink::MqttSinkConfig;
///
/// let config: MqttSinkConfig = serde_json::from_value(serde_json::json!({
///     "mqtt_url": "mqtt://127.0.0.1:1883",
///     "topics": ["commands"],
///     "mqtt_topic": "cars/{key}/cmd",
/// }))
/// .unwrap();
/// assert!(config.validate().is_empty());
/// assert_eq!(config.qos, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// Broker URL: `mqtt://host[:port]` (port 1883 by default) or `mqtts://host[:port]` (TLS, 8883).
    pub mqtt_url: String,
    /// MQTT client id. Defaults to the connector name. Keep it stable: with a persistent session
    /// the broker keeps our unacknowledged publishes across a reconnect.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Kafka topics to read.
    pub topics: Vec<String>,
    /// MQTT topic template: `{key}` (the record key), `{topic}` (Kafka topic), `{partition}`,
    /// `{header.NAME}` (a record header). A fixed topic is allowed. A substituted value containing
    /// `/`, `+`, `#` or NUL, or an empty one, sends the record to the error policy: it is never
    /// published, so a key cannot steer a command to another device's topic.
    pub mqtt_topic: String,
    /// Publish QoS: 0, 1 (default) or 2. With 0 there is no acknowledgement: a record counts as
    /// delivered once sent.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish with the retain flag (default false).
    #[serde(default)]
    pub retain: bool,
    /// Take the retain flag from this record header instead (`true`/`1` or `false`/`0`); records
    /// without the header use `retain`.
    #[serde(default)]
    pub retain_header: Option<String>,
    /// Where to start in a partition with no committed offset: `earliest` (default) or `latest`.
    #[serde(default)]
    pub start: StartFrom,
    /// Most publishes in flight (sent, not yet acknowledged).
    #[serde(default = "default_inflight")]
    pub inflight: usize,
    /// What to do with tombstones (null values): `skip` (default) or `publish` an empty payload.
    #[serde(default)]
    pub tombstones: Tombstones,
    /// Start a clean session on every connect (default true). A publisher gains little from a
    /// kept session: after any reconnect without one, the sink sends every unacknowledged publish
    /// again. `false` lets the broker's kept session finish interrupted publishes instead; it is refused with
    /// `qos = 2`, where a session left by an earlier run can make the broker discard a new publish
    /// that reuses a packet id still pending there.
    #[serde(default = "default_true")]
    pub clean_session: bool,
    /// Seconds between keep-alive pings when nothing else is sent.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Seconds to wait for the broker to accept a connection.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// User name, if the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password; write `${ENV_VAR}` to read it from the environment or `${file:/path}` to read it
    /// from a file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Largest MQTT packet sent, in bytes (default 1 MiB). A record whose PUBLISH would be
    /// larger, or larger than the Maximum Packet Size an MQTT 5 broker announces, goes to the
    /// error policy unsent.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
    /// Backoff between reconnect attempts.
    #[serde(default = "default_reconnect_backoff")]
    pub reconnect_backoff: BackoffConfig,
    /// MQTT protocol version: "3.1.1" (default) or "5". With 5, record headers become user
    /// properties (see `user_properties`), and the `mqtt.content_type`, `mqtt.response_topic`,
    /// `mqtt.correlation_data` and `mqtt.payload_format_indicator` headers (as the MQTT source
    /// writes them) become the matching MQTT 5 properties.
    #[serde(default)]
    pub mqtt_version: MqttVersion,
    /// TLS settings for an `mqtts://` URL: CA file, client certificate and key, server name.
    /// Without them the system's roots are trusted and no client certificate is sent.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Status topic of the connector's MQTT client (`{client_id}` is replaced): `online` is
    /// published there (retained) on connect, `offline` on a clean stop, and the broker publishes
    /// `offline` (the last will) when the connector dies or loses its network. `""` turns it off.
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// MQTT 5: which record headers become user properties: "all" (default; every header except
    /// the connector's own `mqtt.*` ones, in order, duplicates kept), "prefix" (only headers
    /// starting with `user_property_prefix`, prefix removed) or "none".
    #[serde(default)]
    pub user_properties: UserProperties,
    /// The prefix for `user_properties = "prefix"`.
    #[serde(default)]
    pub user_property_prefix: Option<String>,
    /// Seconds a command stays valid, counted from its Kafka timestamp, for records without an
    /// `mqtt.message_expiry_interval` header. An expired record is not published (it is counted
    /// and its offset committed); a valid one is published, on MQTT 5, with the seconds left as
    /// its message expiry interval, so the broker does not deliver it late either. Default: none.
    #[serde(default)]
    pub message_expiry_secs: Option<u32>,
}

fn default_status_topic() -> String {
    DEFAULT_STATUS_TOPIC.to_owned()
}

fn default_qos() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_inflight() -> usize {
    1000
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_max_packet_size() -> usize {
    1024 * 1024
}
fn default_reconnect_backoff() -> BackoffConfig {
    BackoffConfig::default()
}

impl MqttSinkConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(
        mqtt_url: impl Into<String>,
        topics: Vec<String>,
        mqtt_topic: impl Into<String>,
    ) -> Self {
        Self {
            mqtt_url: mqtt_url.into(),
            client_id: None,
            topics,
            mqtt_topic: mqtt_topic.into(),
            qos: default_qos(),
            retain: false,
            retain_header: None,
            start: StartFrom::Earliest,
            inflight: default_inflight(),
            tombstones: Tombstones::Skip,
            clean_session: true,
            keep_alive_secs: default_keep_alive_secs(),
            connect_timeout_secs: default_connect_timeout_secs(),
            username: None,
            password: None,
            max_packet_size: default_max_packet_size(),
            reconnect_backoff: default_reconnect_backoff(),
            mqtt_version: MqttVersion::default(),
            tls: None,
            status_topic: default_status_topic(),
            user_properties: UserProperties::default(),
            user_property_prefix: None,
            message_expiry_secs: None,
        }
    }

    /// The connection keys, as the shared checks and settings see them.
    pub(crate) fn connection_keys(&self) -> ConnectionKeys<'_> {
        ConnectionKeys {
            mqtt_url: &self.mqtt_url,
            client_id: self.client_id.as_deref(),
            clean_session: self.clean_session,
            keep_alive_secs: self.keep_alive_secs,
            connect_timeout_secs: self.connect_timeout_secs,
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            max_packet_size: self.max_packet_size,
            reconnect_backoff: &self.reconnect_backoff,
            mqtt_version: self.mqtt_version,
            tls: self.tls.as_ref(),
            status_topic: &self.status_topic,
        }
    }
}

/// Parses an `mqtt_topic` template: known placeholders only, and fixed parts without wildcards.
pub(crate) fn check_template(source: &str) -> Result<Template, String> {
    let t = Template::parse(source).map_err(|e| e.to_string())?;
    for part in t.parts() {
        match part {
            Part::Placeholder(p) => {
                let known = matches!(p.as_str(), "key" | "topic" | "partition")
                    || p.strip_prefix("header.").is_some_and(|h| !h.is_empty());
                if !known {
                    return Err(format!(
                        "unknown placeholder {{{p}}}: use {{key}}, {{topic}}, {{partition}} or {{header.NAME}}"
                    ));
                }
            }
            Part::Literal(l) => {
                if l.contains(['+', '#', '\0']) {
                    return Err(format!(
                        "{source:?}: an MQTT topic to publish to cannot contain '+', '#' or NUL"
                    ));
                }
            }
        }
    }
    let literal_bytes: usize = t
        .parts()
        .iter()
        .map(|p| match p {
            Part::Literal(l) => l.len(),
            Part::Placeholder(_) => 0,
        })
        .sum();
    if literal_bytes > usize::from(u16::MAX) {
        return Err(format!(
            "the template has {literal_bytes} bytes outside its placeholders; an MQTT topic has at most 65535"
        ));
    }
    if let Some(fixed) = t.as_literal() {
        validate_topic(fixed)?;
    }
    Ok(t)
}

impl ConnectorConfig for MqttSinkConfig {
    fn validate(&self) -> ConfigErrors {
        let mut e = self.connection_keys().validate();
        if self.topics.is_empty() {
            e.push("topics", "at least one Kafka topic is required");
        }
        let prefix_set = self.user_property_prefix.as_deref().is_some_and(|p| !p.is_empty());
        match (self.user_properties, prefix_set) {
            (UserProperties::Prefix, false) => {
                e.push("user_property_prefix", "user_properties = \"prefix\" needs a prefix");
            }
            (UserProperties::All | UserProperties::None, true) => {
                e.push("user_property_prefix", "only used with user_properties = \"prefix\"")
            }
            _ => {}
        }
        if self.message_expiry_secs == Some(0) {
            e.push("message_expiry_secs", "must be at least 1 (leave it out for no expiry)");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(msg) = connector_core::kafka::validate_topic_name(t) {
                e.push(format!("topics[{i}]"), msg);
            }
        }
        if let Err(msg) = check_template(&self.mqtt_topic) {
            e.push("mqtt_topic", msg);
        }
        if self.qos > 2 {
            e.push("qos", "expected 0, 1 or 2");
        }
        if self.qos == 2 && !self.clean_session {
            e.push(
                "clean_session",
                "must be true with qos = 2: a QoS 2 session left by an earlier run can make the broker discard a new publish reusing a pending packet id",
            );
        }
        if self.retain_header.as_deref().is_some_and(str::is_empty) {
            e.push("retain_header", "must not be empty");
        }
        if !(1..=65_535).contains(&self.inflight) {
            e.push("inflight", "expected 1 to 65535 (MQTT packet identifiers)");
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_know_their_placeholders_and_refuse_wildcards() {
        assert!(check_template("cars/{key}/cmd").is_ok());
        assert!(check_template("fleet/{topic}/{partition}/{header.device}").is_ok());
        assert!(check_template("fixed/commands").is_ok());
        assert!(check_template("cars/{car}/cmd").is_err());
        assert!(check_template("cars/{header.}/cmd").is_err());
        assert!(check_template("cars/+/{key}").is_err());
        assert!(check_template("cars/#").is_err());
        assert!(check_template("").is_err(), "an empty fixed topic");
        assert!(check_template("cars/{key}/\0").is_err());
        assert!(check_template(&format!("{}/{{key}}", "x".repeat(65_535))).is_err());
        assert!(check_template(&format!("{}/{{key}}", "x".repeat(65_000))).is_ok());
    }

    #[test]
    fn each_bad_value_is_reported_at_its_key() {
        let mut c = MqttSinkConfig::new("mqtt://h", vec!["bad topic".into()], "x/{nope}");
        c.qos = 7;
        c.inflight = 0;
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["topics[0]", "mqtt_topic", "qos", "inflight"]);
    }
}
