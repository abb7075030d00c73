//! [`MqttSourceConfig`]: the keys of a `type = "mqtt-source"` connector.

use connector_core::template::Template;
use connector_core::{ConfigErrors, ConnectorConfig, ErrorPolicyConfig, Tolerance};
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
        /// `""` writes records without a key. With `format = "sparkplug_b"` the key is
        /// `sparkplug.key` instead (leave this one out).
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
        /// How message payloads are read: "raw" (default) forwards each payload as it is, one record
        /// per message; "sparkplug_b" decodes Sparkplug B (topics under `spBv1.0/`) as a host
        /// application and writes JSON records (see `sparkplug` and docs/sparkplug.md). Sparkplug
        /// needs `tasks = 1`: sequence numbers are checked per edge node, in order.
        #[serde(default)]
        pub format: SourceFormat,
        /// Sparkplug B settings; only with `format = "sparkplug_b"` (left out: every default).
        #[serde(default)]
        pub sparkplug: Option<SparkplugSourceConfig>,
        /// Exactly once into Kafka (default false: at least once). Each QoS 2 message is written in
        /// a Kafka transaction together with "packet id P of this session received" in the offsets
        /// topic, and PUBREC is sent only after the commit; a redelivered message whose id is
        /// recorded is acknowledged without being written again, and on PUBREL the id is cleared
        /// in a committed transaction before the PUBCOMP. Consumers must read with
        /// `isolation.level = read_committed`. Needs `qos = 2`, `clean_session = false`,
        /// `format = "raw"` and the Kafka offset store (`[offsets] store = "kafka"`); the
        /// transactional id is `<connector>-<task>`. See docs/delivery-guarantees.md.
        #[serde(default)]
        pub exactly_once: bool,
    }
}

/// How the MQTT source reads message payloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// The payload as it is, one record per message.
    #[default]
    Raw,
    /// Sparkplug B (protobuf), decoded with the BIRTH state into JSON records.
    SparkplugB,
}

/// How the Sparkplug host application connects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SparkplugMode {
    /// A plain subscriber with a persistent session (default): the broker keeps what arrives
    /// while the connector is down and redelivers what Kafka did not have yet, so every message
    /// the broker accepted reaches Kafka at least once. No STATE messages.
    #[default]
    Persistent,
    /// A Sparkplug 3.0 Primary Host Application: clean session, `spBv1.0/STATE/<host_id>`
    /// online/offline (retained, QoS 1, offline as the will). Edge nodes that watch it stop
    /// publishing while the host is offline and send their BIRTH again when it comes back;
    /// what was published during an outage is not redelivered by the broker.
    PrimaryHost,
}

/// The Kafka records a Sparkplug message becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SparkplugOutput {
    /// One record per metric (default), timestamped with the metric's own timestamp.
    #[default]
    Metric,
    /// One record per message, with all its metrics.
    Message,
}

/// The `[sparkplug]` table of an MQTT source with `format = "sparkplug_b"`.
///
/// ```
/// use connector_mqtt_source::{SparkplugMode, SparkplugSourceConfig};
///
/// let c: SparkplugSourceConfig = serde_json::from_value(serde_json::json!({
///     "mode": "primary_host", "host_id": "scada-1"
/// })).unwrap();
/// assert_eq!(c.mode, SparkplugMode::PrimaryHost);
/// assert_eq!(c.reorder_timeout_ms, 2000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SparkplugSourceConfig {
    /// "persistent" (default: persistent session, at-least-once from the broker, no STATE) or
    /// "primary_host" (Sparkplug 3.0 Primary Host: clean session, STATE messages, recovery by
    /// rebirth and the persisted BIRTH state). With "primary_host" the `status_topic` and
    /// `clean_session` keys are not used.
    #[serde(default)]
    pub mode: SparkplugMode,
    /// Host application id, the last level of `spBv1.0/STATE/<host_id>`; required with
    /// `mode = "primary_host"`.
    #[serde(default)]
    pub host_id: Option<String>,
    /// "metric" (default): one record per metric; "message": one record per message.
    #[serde(default)]
    pub output: SparkplugOutput,
    /// Record key template. Left out: `group/node` for an edge node's messages and
    /// `group/node/device` for a device's. Placeholders: `{group}`, `{node}`, `{device}` (empty
    /// for an edge node's own messages), `{topic}` and topic levels `{N}`; `""` writes no key.
    /// (The top-level `key` is not used with Sparkplug.)
    #[serde(default)]
    pub key: Option<String>,
    /// Milliseconds a sequence-number gap may wait for the missing messages before a Rebirth is
    /// requested (messages are forwarded at once, not held back).
    #[serde(default = "default_reorder_timeout_ms")]
    pub reorder_timeout_ms: u64,
    /// At most one Rebirth request (NCMD `Node Control/Rebirth`, QoS 0) per edge node within
    /// this many milliseconds.
    #[serde(default = "default_rebirth_interval_ms")]
    pub rebirth_interval_ms: u64,
    /// Also write the NCMD/DCMD messages seen on the subscribed topics (default false: a host
    /// application sends commands, it does not forward them).
    #[serde(default)]
    pub forward_commands: bool,
    /// Publish the Rebirth requests (default true). Sparkplug leaves commands to the primary
    /// host: a `persistent` bridge running next to the plant's own SCADA may turn them off; the
    /// rebirths it would have asked for are then only counted and logged.
    #[serde(default = "default_true")]
    pub request_rebirths: bool,
}

fn default_true() -> bool {
    true
}

fn default_reorder_timeout_ms() -> u64 {
    2000
}
fn default_rebirth_interval_ms() -> u64 {
    10_000
}

impl Default for SparkplugSourceConfig {
    fn default() -> Self {
        Self {
            mode: SparkplugMode::default(),
            host_id: None,
            output: SparkplugOutput::default(),
            key: None,
            reorder_timeout_ms: default_reorder_timeout_ms(),
            rebirth_interval_ms: default_rebirth_interval_ms(),
            forward_commands: false,
            request_rebirths: true,
        }
    }
}

impl SparkplugSourceConfig {
    /// Every problem, at its key path under `sparkplug.` (pure).
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        match (&self.host_id, self.mode) {
            (None, SparkplugMode::PrimaryHost) => {
                e.push("sparkplug.host_id", "required with mode = \"primary_host\"");
            }
            (Some(id), _) if id.is_empty() || id.contains(['/', '+', '#']) => {
                e.push(
                    "sparkplug.host_id",
                    "must be one non-empty topic level (no '/', '+' or '#')",
                );
            }
            (Some(id), _) => {
                if let Err(msg) = connector_mqtt_common::validate_topic(&state_topic(id)) {
                    e.push("sparkplug.host_id", msg.to_string());
                }
            }
            (None, SparkplugMode::Persistent) => {}
        }
        if let Some(key) = &self.key {
            if let Err(msg) = check_sparkplug_key(key) {
                e.push("sparkplug.key", msg);
            }
        }
        if self.reorder_timeout_ms > 600_000 {
            e.push("sparkplug.reorder_timeout_ms", "expected 0 to 600000 (10 minutes)");
        }
        if !(100..=86_400_000).contains(&self.rebirth_interval_ms) {
            e.push("sparkplug.rebirth_interval_ms", "expected 100 to 86400000 (a day)");
        }
        e
    }
}

/// `spBv1.0/STATE/<host_id>`.
pub(crate) fn state_topic(host_id: &str) -> String {
    format!("spBv1.0/STATE/{host_id}")
}

/// Checks a Sparkplug key template: placeholders `group`, `node`, `device`, `topic` or a level.
pub(crate) fn check_sparkplug_key(source: &str) -> Result<Template, String> {
    let t = Template::parse(source).map_err(|e| e.to_string())?;
    for p in t.placeholders() {
        if !matches!(p, "topic" | "group" | "node" | "device") && p.parse::<usize>().is_err() {
            return Err(format!(
                "unknown placeholder {{{p}}}: use {{group}}, {{node}}, {{device}}, {{topic}} or a topic level like {{0}}"
            ));
        }
    }
    Ok(t)
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
            format: SourceFormat::default(),
            sparkplug: None,
            exactly_once: false,
        }
    }

    /// The Sparkplug settings in effect (the defaults when the table is left out).
    pub fn sparkplug_settings(&self) -> SparkplugSourceConfig {
        self.sparkplug.clone().unwrap_or_default()
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
        match self.format {
            SourceFormat::Raw => {
                if self.sparkplug.is_some() {
                    e.push("sparkplug", "only used with format = \"sparkplug_b\"");
                }
            }
            SourceFormat::SparkplugB => {
                if self.key != default_key() {
                    e.push("key", "not used with format = \"sparkplug_b\": set sparkplug.key");
                }
                if self.tasks != 1 {
                    e.push(
                        "tasks",
                        "format = \"sparkplug_b\" needs tasks = 1 (sequence numbers are checked per edge node, in order; a shared subscription would split them)",
                    );
                }
                e.extend(self.sparkplug_settings().validate());
            }
        }
        if self.exactly_once {
            if self.qos != 2 {
                e.push("qos", "exactly_once = true needs qos = 2 (the QoS 2 handshake is what lets a redelivered message be recognised)");
            }
            if self.clean_session {
                e.push("clean_session", "exactly_once = true needs clean_session = false (the recorded packet ids belong to the broker's persistent session)");
            }
            if self.format != SourceFormat::Raw {
                e.push("format", "exactly_once = true needs format = \"raw\": a Sparkplug message becomes several records plus edge-node state, which the exactly-once protocol does not cover yet");
            }
        }
        e
    }

    fn validate_error_policy(&self, policy: &ErrorPolicyConfig) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.format == SourceFormat::SparkplugB && policy.tolerance == Tolerance::None {
            e.push(
                "errors.tolerance",
                "format = \"sparkplug_b\" needs tolerance = \"all\": DATA before its BIRTH is routine \
                 (a first start on a live plant) and with \"none\" it stops the connector, again after \
                 every restart since the broker redelivers that message first; set \
                 tolerance = \"all\" with a dead_letter_topic",
            );
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
    fn exactly_once_needs_qos_2_a_persistent_session_and_raw_payloads() {
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["a/#".into()], "t");
        c.exactly_once = true;
        assert_eq!(paths(&c), ["qos"], "default qos 1");
        c.qos = 2;
        assert!(c.validate().is_empty());
        c.clean_session = true;
        c.format = SourceFormat::SparkplugB;
        c.key = default_key();
        let errors = c.validate();
        let got: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(got, ["clean_session", "format"]);
        assert!(errors.iter().all(|e| e.message.contains("exactly_once")), "{errors:?}");
        c.exactly_once = false;
        assert!(c.validate().is_empty(), "at-least-once allows them");
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
    fn sparkplug_needs_the_error_tolerance_all() {
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["spBv1.0/#".into()], "sp");
        let none = ErrorPolicyConfig::default();
        let all = ErrorPolicyConfig { tolerance: Tolerance::All, ..ErrorPolicyConfig::default() };
        assert!(c.validate_error_policy(&none).is_empty(), "raw: any tolerance");
        c.format = SourceFormat::SparkplugB;
        let e = c.validate_error_policy(&none);
        assert_eq!(e.iter().map(|e| e.path.clone()).collect::<Vec<_>>(), ["errors.tolerance"]);
        assert!(e.to_string().contains("dead_letter_topic"), "{e}");
        assert!(c.validate_error_policy(&all).is_empty());
    }

    #[test]
    fn sparkplug_settings_are_checked_at_their_key_paths() {
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["spBv1.0/#".into()], "sp");
        c.sparkplug = Some(SparkplugSourceConfig::default());
        assert_eq!(paths(&c), ["sparkplug"], "a [sparkplug] table needs the format");
        c.format = SourceFormat::SparkplugB;
        assert!(c.validate().is_empty());
        c.tasks = 2;
        c.key = "{1}".into();
        c.sparkplug = Some(SparkplugSourceConfig {
            mode: SparkplugMode::PrimaryHost,
            key: Some("{line}".into()),
            rebirth_interval_ms: 0,
            ..SparkplugSourceConfig::default()
        });
        assert_eq!(
            paths(&c),
            ["key", "tasks", "sparkplug.host_id", "sparkplug.key", "sparkplug.rebirth_interval_ms"]
        );
        c.tasks = 1;
        c.key = default_key();
        c.sparkplug = Some(SparkplugSourceConfig {
            host_id: Some("a/b".into()),
            key: Some("{group}.{node}.{device}".into()),
            ..SparkplugSourceConfig::default()
        });
        assert_eq!(paths(&c), ["sparkplug.host_id"]);
        let parsed: MqttSourceConfig = serde_json::from_value(serde_json::json!({
            "mqtt_url": "mqtt://h", "topics": ["spBv1.0/#"], "kafka_topic": "sp",
            "format": "sparkplug_b",
            "sparkplug": {"mode": "primary_host", "host_id": "scada", "output": "message"}
        }))
        .unwrap();
        assert!(parsed.validate().is_empty());
        assert_eq!(parsed.sparkplug_settings().output, SparkplugOutput::Message);
        let err = serde_json::from_value::<MqttSourceConfig>(serde_json::json!({
            "mqtt_url": "mqtt://h", "topics": ["a"], "kafka_topic": "t",
            "format": "sparkplug_b", "sparkplug": {"hostid": "x"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("hostid"), "{err}");
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
