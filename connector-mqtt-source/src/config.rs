//! [`MqttSourceConfig`]: the keys of a `type = "mqtt-source"` connector.

use connector_core::template::Template;
use connector_core::{ConfigErrors, ConnectorConfig};
use connector_mqtt_common::{mqtt_connector_config, validate_filter, MqttConnectionConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mqtt_connector_config! {
    /// Reads MQTT messages into Kafka, acknowledging each one to the broker only after Kafka has it.
    ///
    /// ```
    /// use connector_core::ConnectorConfig;
    /// use connector_mqtt_source::MqttSourceConfig;
    ///
    /// let config: MqttSourceConfig = serde_json::from_value(serde_json::json!({
    ///     "mqtt_url": "mqtt://127.0.0.1:1883",
    ///     "topics": ["plant/+/sensors/#"],
    ///     "kafka_topic": "plant.{1}",
    /// }))
    /// .unwrap();
    /// assert!(config.validate().is_empty());
    /// assert_eq!(config.qos, 1);
    /// assert_eq!(config.key, "{topic}");
    /// ```
    #[derive(Debug, Clone, PartialEq)]
    pub struct MqttSourceConfig {
        /// Topic filters to subscribe to; `+` matches one level, `#` all remaining levels.
        pub topics: Vec<String>,
        /// Subscription QoS: 0 (at most once), 1 (at least once, default) or 2 (exactly once between
        /// broker and connector; still at least once into Kafka).
        #[serde(default = "default_qos")]
        pub qos: u8,
        /// Start a clean session on every connect. Default false: the broker keeps the session, so
        /// messages published while the connector is down are delivered when it comes back.
        #[serde(default)]
        pub clean_session: bool,
        /// Kafka topic template. `{topic}` is the MQTT topic, `{N}` its level N (0-based); every `/`
        /// in the result becomes `.`. `"plant.{1}"` sends `plant/line1/temp` to `plant.line1`. Its
        /// fixed parts must be legal in a topic name (`[a-zA-Z0-9._-]`, `/`, at most 249 characters),
        /// or `connect validate` refuses it; a rendered result that is not a legal Kafka topic name
        /// goes to the error policy.
        pub kafka_topic: String,
        /// Record key template, with the same placeholders (no `/` replacement). Default `"{topic}"`:
        /// the MQTT topic verbatim, so one device's messages share a partition and keep their order.
        /// `""` writes records without a key.
        #[serde(default = "default_key")]
        pub key: String,
        /// Most messages received and not yet acknowledged to the broker (waiting for Kafka); with
        /// MQTT 5 also the Receive Maximum announced to the broker. The broker's own limit (Mosquitto
        /// `max_inflight_messages`) should equal this: lower, the window is not used (throughput is
        /// about window / Kafka round trip); higher (MQTT 3.1.1), a Kafka outage can fill the
        /// source's read buffer, and reading pauses.
        #[serde(default = "default_inflight")]
        pub inflight: usize,
        /// Do not forward retained messages (the broker's last-known value sent on subscribe); they
        /// are acknowledged and counted, not written.
        #[serde(default)]
        pub skip_retained: bool,
        /// Number of tasks. With more than one, each task is its own MQTT client
        /// (`<client_id>-<i>`) and subscribes with `$share/<connector name>/<filter>`, so the broker
        /// spreads messages across them.
        #[serde(default = "default_tasks")]
        pub tasks: usize,
        /// MQTT 5 messages whose message expiry interval passed before they were handed to Kafka:
        /// "produce" (default) writes them anyway, "drop" acknowledges them without writing and
        /// counts them.
        #[serde(default)]
        pub expired_messages: ExpiredMessages,
    }
}

/// What the MQTT source does with an MQTT 5 message whose expiry interval has passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExpiredMessages {
    /// Write it to Kafka anyway (with its `mqtt.message_expiry_interval` header).
    #[default]
    Produce,
    /// Acknowledge it without writing it, and count it.
    Drop,
}

fn default_qos() -> u8 {
    1
}
fn default_key() -> String {
    "{topic}".to_owned()
}
fn default_inflight() -> usize {
    1000
}
fn default_tasks() -> usize {
    1
}

impl MqttSourceConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(
        mqtt_url: impl Into<String>,
        topics: Vec<String>,
        kafka_topic: impl Into<String>,
    ) -> Self {
        Self {
            connection: MqttConnectionConfig::new(mqtt_url),
            topics,
            qos: default_qos(),
            clean_session: false,
            kafka_topic: kafka_topic.into(),
            key: default_key(),
            inflight: default_inflight(),
            skip_retained: false,
            tasks: default_tasks(),
            expired_messages: ExpiredMessages::default(),
        }
    }
}

/// Checks a topic or key template: placeholders must be `topic` or a level number.
pub(crate) fn check_template(source: &str) -> Result<Template, String> {
    let t = Template::parse(source).map_err(|e| e.to_string())?;
    for p in t.placeholders() {
        if p != "topic" && p.parse::<usize>().is_err() {
            return Err(format!(
                "unknown placeholder {{{p}}}: use {{topic}} or a topic level like {{0}}"
            ));
        }
    }
    Ok(t)
}

impl ConnectorConfig for MqttSourceConfig {
    fn validate(&self) -> ConfigErrors {
        let mut e = self.connection.validate();
        if self.topics.is_empty() {
            e.push("topics", "at least one topic filter is required");
        }
        for (i, f) in self.topics.iter().enumerate() {
            if let Err(msg) = validate_filter(f) {
                e.push(format!("topics[{i}]"), msg.to_string());
            } else if self.tasks > 1 && f.starts_with("$share/") {
                e.push(format!("topics[{i}]"), "with tasks > 1 the connector adds $share/ itself");
            }
        }
        if self.qos > 2 {
            e.push("qos", "expected 0, 1 or 2");
        }
        match check_template(&self.kafka_topic) {
            Err(msg) => e.push("kafka_topic", msg),
            Ok(t) => {
                // The fixed parts alone can already rule out every legal topic name.
                if let Err(msg) = connector_core::kafka::validate_topic_template(&t, true) {
                    e.push("kafka_topic", msg);
                }
            }
        }
        if let Err(msg) = check_template(&self.key) {
            e.push("key", msg);
        }
        if !(1..=65_535).contains(&self.inflight) {
            e.push("inflight", "expected 1 to 65535 (MQTT packet identifiers)");
        }
        if !(1..=256).contains(&self.tasks) {
            e.push("tasks", "expected 1 to 256");
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_core::Secret;

    fn paths(c: &MqttSourceConfig) -> Vec<String> {
        c.validate().iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn each_bad_value_is_reported_at_its_key() {
        let mut c = MqttSourceConfig::new("http://x", vec!["a/#/b".into(), "ok/+".into()], "a b");
        c.qos = 3;
        c.key = "{device}".into();
        c.inflight = 0;
        c.connection.password = Some(Secret::new("${X}"));
        assert_eq!(
            paths(&c),
            ["mqtt_url", "password", "topics[0]", "qos", "kafka_topic", "key", "inflight"]
        );
    }

    #[test]
    fn templates_accept_topic_and_levels_only() {
        assert!(check_template("plant.{1}.{topic}").is_ok());
        assert!(check_template("{x}").is_err());
        assert!(check_template("{1").is_err());
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["a".into()], "plant.{1}");
        assert!(c.validate().is_empty());
        c.kafka_topic = "fixed/topic".into();
        assert!(c.validate().is_empty(), "a fixed topic is allowed; '/' becomes '.'");
        for bad in ["plant {1}", "plant.{1}#", "{topic}.r\u{e9}sum\u{e9}", "plant:{1}"] {
            c.kafka_topic = bad.into();
            assert_eq!(paths(&c), ["kafka_topic"], "{bad}");
        }
        c.kafka_topic = format!("{}.{{1}}", "x".repeat(249));
        assert_eq!(paths(&c), ["kafka_topic"], "250 fixed characters");
        c.kafka_topic = "plant/{1}/raw".into();
        assert!(c.validate().is_empty());
        c.tasks = 2;
        c.topics = vec!["$share/g/a".into()];
        assert_eq!(paths(&c), ["topics[0]"]);
    }

    #[test]
    fn debug_output_never_shows_a_literal_password() {
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["a".into()], "t");
        c.connection.username = Some("bridge".into());
        c.connection.password = Some(Secret::new("Sup3r-Secret"));
        let shown = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(!shown.contains("Sup3r-Secret"), "{shown}");
        assert!(shown.contains("bridge"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = serde_json::from_value::<MqttSourceConfig>(serde_json::json!({
            "mqtt_url": "mqtt://h", "topics": ["a"], "kafka_topic": "t", "qso": 1
        }))
        .unwrap_err();
        assert!(err.to_string().contains("qso"), "{err}");
    }
}
