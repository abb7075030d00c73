//! [`MqttSinkConfig`]: the keys of a `type = "mqtt-sink"` connector.

use connector_core::template::{Part, Template};
use connector_core::{ConfigErrors, ConnectorConfig, StartFrom};
use connector_mqtt_common::{mqtt_connector_config, validate_topic, MqttConnectionConfig};

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

mqtt_connector_config! {
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
    #[derive(Debug, Clone, PartialEq)]
    pub struct MqttSinkConfig {
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
        /// Number of tasks (the topics' partitions are spread over them). With more than one,
        /// each task is its own MQTT client (`<client_id>-<i>`).
        #[serde(default = "default_tasks")]
        pub tasks: usize,
    }
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
fn default_tasks() -> usize {
    1
}

impl MqttSinkConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(
        mqtt_url: impl Into<String>,
        topics: Vec<String>,
        mqtt_topic: impl Into<String>,
    ) -> Self {
        Self {
            connection: MqttConnectionConfig::new(mqtt_url),
            topics,
            mqtt_topic: mqtt_topic.into(),
            qos: default_qos(),
            retain: false,
            retain_header: None,
            start: StartFrom::Earliest,
            inflight: default_inflight(),
            tombstones: Tombstones::Skip,
            clean_session: true,
            user_properties: UserProperties::default(),
            user_property_prefix: None,
            message_expiry_secs: None,
            tasks: default_tasks(),
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
        validate_topic(fixed).map_err(|e| e.to_string())?;
    }
    Ok(t)
}

impl ConnectorConfig for MqttSinkConfig {
    fn validate(&self) -> ConfigErrors {
        let mut e = self.connection.validate();
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
        if !(1..=256).contains(&self.tasks) {
            e.push("tasks", "expected 1 to 256");
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
