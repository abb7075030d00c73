//! [`MqttSinkConfig`]: the keys of a `type = "mqtt-sink"` connector.

use connector_core::template::{Part, Template};
use connector_core::{ConfigErrors, ConnectorConfig, StartFrom};
use connector_mqtt_common::{mqtt_connector_config, validate_topic, MqttConnectionConfig};

use crate::properties::UserProperties;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a record becomes an MQTT publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SinkFormat {
    /// The record value is the payload, as is (default).
    #[default]
    #[serde(rename = "raw")]
    Raw,
    /// The record value is a JSON command (`{"metrics":[{"name","value","datatype"?}]}` or one
    /// `{"name","value","datatype"?}`), encoded as a Sparkplug B NCMD or DCMD payload; see
    /// docs/sparkplug.md.
    #[serde(rename = "sparkplug_b")]
    SparkplugB,
}

/// The `[sparkplug]` keys of a sink with `format = "sparkplug_b"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkSparkplugConfig {
    /// Learn metric aliases and datatypes from the BIRTH messages of the edge nodes (default
    /// true): the sink's own connection subscribes to `spBv1.0/<group>/NBIRTH/+` and
    /// `spBv1.0/<group>/DBIRTH/+/+`, and a command to a metric it saw in a BIRTH carries that
    /// metric's alias and datatype. Without a BIRTH (or with `false`), a command carries the
    /// metric's name and the datatype the record gives or its JSON value implies.
    #[serde(default = "default_true")]
    pub learn_births: bool,
    /// The Sparkplug group ids whose BIRTHs to learn from (default: every group, `+`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Most edge nodes whose BIRTHs are kept (default 10,000); BIRTHs of further nodes are not
    /// learned, and commands to those carry names.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
}

impl Default for SinkSparkplugConfig {
    fn default() -> Self {
        Self { learn_births: true, groups: Vec::new(), max_nodes: default_max_nodes() }
    }
}

fn default_max_nodes() -> usize {
    10_000
}

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
        /// published, so a key cannot steer a command to another device's topic. Required with
        /// `format = "raw"`; with `format = "sparkplug_b"` leave it out to publish to the topic the
        /// record key `group/node[/device]` names (`spBv1.0/<group>/NCMD/<node>` or
        /// `spBv1.0/<group>/DCMD/<node>/<device>`), or set it to a template whose result is such
        /// a topic (it then names the target, the key is not used for it).
        #[serde(default)]
        pub mqtt_topic: String,
        /// `raw` (default: the record value is the payload) or `sparkplug_b` (the record value is
        /// a JSON command, published as a Sparkplug B NCMD/DCMD; see docs/sparkplug.md).
        #[serde(default)]
        pub format: SinkFormat,
        /// With `format = "sparkplug_b"`: where aliases come from (`learn_births`, `groups`,
        /// `max_nodes`).
        #[serde(default)]
        pub sparkplug: Option<SinkSparkplugConfig>,
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
        /// that reuses a packet id still pending there, unless `exactly_once = true` (which needs
        /// it, and keeps the pending packet ids itself).
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
        /// Deliver each record exactly once to QoS 2 subscribers, across crashes of the connector
        /// (default false: at least once). Needs `qos = 2`, `clean_session = false` (the broker
        /// keeps our QoS 2 packet-id state) and `tasks = 1`; the packet ids in flight are kept in
        /// the runner's offset store, and Kafka is read at `read_committed`. See
        /// docs/delivery-guarantees.md.
        #[serde(default)]
        pub exactly_once: bool,
    }
}

fn default_qos() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
/// Largest `inflight` with `exactly_once = true`: the saved state stays well below 1 MB.
const MAX_EXACTLY_ONCE_INFLIGHT: usize = 4096;

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
            exactly_once: false,
            format: SinkFormat::Raw,
            sparkplug: None,
        }
    }

    /// A config with `format = "sparkplug_b"`: JSON command records become NCMD/DCMD publishes to
    /// the topic their key `group/node[/device]` names.
    ///
    /// ```
    /// use connector_core::ConnectorConfig;
    /// use connector_mqtt_sink::MqttSinkConfig;
    ///
    /// let config = MqttSinkConfig::sparkplug_b("mqtt://127.0.0.1:1883", vec!["factory.commands".into()]);
    /// assert!(config.validate().is_empty());
    /// ```
    pub fn sparkplug_b(mqtt_url: impl Into<String>, topics: Vec<String>) -> Self {
        Self { format: SinkFormat::SparkplugB, ..Self::new(mqtt_url, topics, "") }
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
        match self.format {
            SinkFormat::Raw => {
                if self.mqtt_topic.is_empty() {
                    e.push(
                        "mqtt_topic",
                        "required (only format = \"sparkplug_b\" takes the topic from the record key)",
                    );
                } else if let Err(msg) = check_template(&self.mqtt_topic) {
                    e.push("mqtt_topic", msg);
                }
                if self.sparkplug.is_some() {
                    e.push("sparkplug", "only used with format = \"sparkplug_b\"");
                }
            }
            SinkFormat::SparkplugB => self.validate_sparkplug(&mut e),
        }
        if self.qos > 2 {
            e.push("qos", "expected 0, 1 or 2");
        }
        if !(1..=256).contains(&self.tasks) {
            e.push("tasks", "expected 1 to 256");
        }
        if self.exactly_once {
            self.validate_exactly_once(&mut e);
        } else if self.qos == 2 && !self.clean_session {
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

impl MqttSinkConfig {
    /// `exactly_once = true`: the settings the QoS 2 sender protocol relies on.
    fn validate_exactly_once(&self, e: &mut ConfigErrors) {
        if self.qos != 2 {
            e.push(
                "qos",
                format!("must be 2 with exactly_once = true (is {}): only the QoS 2 handshake lets the broker discard a publish sent again after a crash", self.qos),
            );
        }
        if self.clean_session {
            e.push(
                "clean_session",
                "must be false with exactly_once = true: the broker must keep the session whose QoS 2 packet ids a restarted task finishes",
            );
        }
        if self.tasks != 1 {
            e.push(
                "tasks",
                format!("must be 1 with exactly_once = true (is {}): a partition moving to another task would change the MQTT session, whose packet ids the other task cannot finish", self.tasks),
            );
        }
        if self.inflight > MAX_EXACTLY_ONCE_INFLIGHT {
            e.push(
                "inflight",
                format!("must be at most {MAX_EXACTLY_ONCE_INFLIGHT} with exactly_once = true (is {}): the saved QoS 2 state holds up to one entry of ~100 bytes per publish in flight, and must fit one record of the offset store (Kafka's default limit is 1 MB)", self.inflight),
            );
        }
    }

    fn validate_sparkplug(&self, e: &mut ConfigErrors) {
        if !self.mqtt_topic.is_empty() {
            match check_template(&self.mqtt_topic) {
                Err(msg) => e.push("mqtt_topic", msg),
                Ok(t) => {
                    if let Some(fixed) = t.as_literal() {
                        if let Err(msg) = crate::sparkplug::command_target(fixed) {
                            e.push("mqtt_topic", msg);
                        }
                    }
                }
            }
        }
        if self.retain || self.retain_header.is_some() {
            let key = if self.retain { "retain" } else { "retain_header" };
            e.push(
                key,
                "Sparkplug commands are never retained (a retained command would run again on every reconnect)",
            );
        }
        if self.tombstones == Tombstones::Publish {
            e.push(
                "tombstones",
                "an empty payload is not a Sparkplug command: use \"skip\" with format = \"sparkplug_b\"",
            );
        }
        let learning = self.sparkplug.as_ref().is_none_or(|s| s.learn_births);
        if learning && self.inflight == 65_535 {
            e.push(
                "inflight",
                "at most 65534 while the sink learns BIRTHs (its SUBSCRIBE needs a packet identifier too)",
            );
        }
        let Some(s) = &self.sparkplug else { return };
        for (i, g) in s.groups.iter().enumerate() {
            if g.is_empty() || g.contains(['/', '+', '#', '\0']) {
                e.push(
                    format!("sparkplug.groups[{i}]"),
                    format!("{g:?} is not a Sparkplug group id (non-empty, without '/', '+', '#')"),
                );
            }
        }
        if s.max_nodes == 0 {
            e.push("sparkplug.max_nodes", "must be at least 1");
        }
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

    #[test]
    fn exactly_once_needs_qos_2_a_kept_session_and_one_task() {
        let mut c = MqttSinkConfig::new("mqtt://h", vec!["cmd".into()], "cars/{key}/cmd");
        c.exactly_once = true;
        c.tasks = 2;
        let e = c.validate();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["qos", "clean_session", "tasks"]);
        assert!(e.iter().all(|e| e.message.contains("exactly_once = true")), "{e:?}");
        c.qos = 2;
        c.clean_session = false;
        c.tasks = 1;
        assert!(c.validate().is_empty(), "qos 2 with a kept session is what exactly once needs");
        c.inflight = MAX_EXACTLY_ONCE_INFLIGHT + 1;
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["inflight"], "the state must fit one offset-store record");
        c.inflight = MAX_EXACTLY_ONCE_INFLIGHT;
        c.exactly_once = false;
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["clean_session"], "still refused without exactly_once");
    }

    #[test]
    fn sparkplug_keys_are_checked_at_their_paths() {
        let ok = MqttSinkConfig::sparkplug_b("mqtt://h", vec!["cmd".into()]);
        assert!(ok.validate().is_empty());
        let raw = MqttSinkConfig::new("mqtt://h", vec!["cmd".into()], "");
        let e = raw.validate();
        assert_eq!(e.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["mqtt_topic"]);
        assert!(e.iter().any(|e| e.message.contains("sparkplug_b")), "{e:?}");

        let mut bad = ok.clone();
        bad.mqtt_topic = "plant/commands".into();
        bad.retain = true;
        bad.tombstones = Tombstones::Publish;
        bad.sparkplug = Some(SinkSparkplugConfig {
            groups: vec!["ok".into(), "a/b".into()],
            max_nodes: 0,
            ..SinkSparkplugConfig::default()
        });
        let paths: Vec<_> = bad.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            ["mqtt_topic", "retain", "tombstones", "sparkplug.groups[1]", "sparkplug.max_nodes"]
        );

        let mut fixed = ok.clone();
        fixed.mqtt_topic = "spBv1.0/plant/DCMD/line-1/press-2".into();
        assert!(fixed.validate().is_empty());
        fixed.mqtt_topic = "spBv1.0/{header.group}/NCMD/{header.node}".into();
        assert!(fixed.validate().is_empty(), "a template is checked per record");

        let mut raw_with_table = MqttSinkConfig::new("mqtt://h", vec!["cmd".into()], "x/{key}");
        raw_with_table.sparkplug = Some(SinkSparkplugConfig::default());
        let paths: Vec<_> = raw_with_table.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["sparkplug"]);
    }

    #[test]
    fn the_sparkplug_table_parses_with_defaults() {
        let c: MqttSinkConfig = serde_json::from_value(serde_json::json!({
            "mqtt_url": "mqtt://h",
            "topics": ["cmd"],
            "format": "sparkplug_b",
            "sparkplug": { "groups": ["plant"] },
        }))
        .unwrap();
        assert_eq!(c.format, SinkFormat::SparkplugB);
        let s = c.sparkplug.unwrap();
        assert!(s.learn_births);
        assert_eq!((s.groups, s.max_nodes), (vec!["plant".to_owned()], 10_000));
        let unknown = serde_json::from_value::<MqttSinkConfig>(serde_json::json!({
            "mqtt_url": "mqtt://h", "topics": ["cmd"], "format": "sparkplug_b",
            "sparkplug": { "group": ["plant"] },
        }));
        assert!(unknown.is_err());
    }
}
