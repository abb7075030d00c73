//! [`MqttSinkConnector`]: MQTT clients (one per task, `tasks`) publishing the records of its
//! Kafka topics.

use connector_core::{ConnectorConfig, Error, Result, SinkConnector, StartFrom};
use connector_mqtt_common::MqttVersion;
use rumqttc::QoS;

use crate::config::{check_template, MqttSinkConfig, SinkFormat};
use crate::properties::PropertyRules;
use crate::task::{MqttSinkTask, MqttSinkTaskConfig};

/// The MQTT sink connector (`type = "mqtt-sink"`).
///
/// ```
/// use connector_core::{DynSinkConnector, SinkConnector};
/// use connector_mqtt_sink::{MqttSinkConfig, MqttSinkConnector};
///
/// let config = MqttSinkConfig::new("mqtt://127.0.0.1:1883", vec!["commands".into()], "cars/{key}/cmd");
/// let connector = MqttSinkConnector::create("commands", config).unwrap();
/// assert_eq!(DynSinkConnector::topics(&connector), vec!["commands".to_string()]);
/// ```
#[derive(Debug)]
pub struct MqttSinkConnector {
    config: MqttSinkConfig,
    base: MqttSinkTaskConfig,
}

impl SinkConnector for MqttSinkConnector {
    type Config = MqttSinkConfig;
    type TaskConfig = MqttSinkTaskConfig;
    type Task = MqttSinkTask;

    fn create(name: &str, config: MqttSinkConfig) -> Result<Self> {
        if let Some(first) = config.validate().into_iter().next() {
            return Err(Error::config(first.path, first.message));
        }
        let mqtt_topic = match (config.format, config.mqtt_topic.as_str()) {
            (SinkFormat::SparkplugB, "") => None,
            (_, t) => Some(check_template(t).map_err(|m| Error::config("mqtt_topic", m))?),
        };
        let sparkplug = (config.format == SinkFormat::SparkplugB)
            .then(|| config.sparkplug.clone().unwrap_or_default());
        let base = MqttSinkTaskConfig {
            connection: config.connection.settings(name, config.clean_session)?,
            mqtt_topic,
            sparkplug,
            qos: match config.qos {
                0 => QoS::AtMostOnce,
                2 => QoS::ExactlyOnce,
                _ => QoS::AtLeastOnce,
            },
            retain: config.retain,
            retain_header: config.retain_header.clone(),
            tombstones: config.tombstones,
            inflight: config.inflight,
            exactly_once: config.exactly_once,
            reconnect_backoff: config.connection.reconnect_backoff,
            properties: PropertyRules {
                v5: config.connection.mqtt_version == MqttVersion::V5,
                user_properties: config.user_properties,
                prefix: config.user_property_prefix.clone().unwrap_or_default(),
                default_expiry_secs: config.message_expiry_secs,
            },
        };
        Ok(Self { config, base })
    }

    fn topics(&self) -> Vec<String> {
        self.config.topics.clone()
    }

    /// Exactly once reads only committed Kafka transactions: a record of an aborted one was
    /// never meant to be sent.
    fn read_committed(&self) -> bool {
        self.config.exactly_once
    }

    fn start_from(&self) -> StartFrom {
        self.config.start
    }

    fn task_configs(&self, max_tasks: usize) -> Result<Vec<MqttSinkTaskConfig>> {
        // Each task its own MQTT client: two with one client id would take each other's place.
        let n = self.config.tasks.min(max_tasks.max(1)).max(1);
        if n == 1 {
            return Ok(vec![self.base.clone()]);
        }
        Ok((0..n)
            .map(|i| {
                let mut c = self.base.clone();
                c.connection.client_id = format!("{}-{i}", self.base.connection.client_id);
                c
            })
            .collect())
    }

    fn create_task(&self, config: MqttSinkTaskConfig) -> Result<MqttSinkTask> {
        Ok(MqttSinkTask::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tasks_get_their_own_client_ids() {
        let mut c = MqttSinkConfig::new("mqtt://127.0.0.1:1883", vec!["cmd".into()], "c/{key}");
        c.connection.client_id = Some("sink".into());
        let one = MqttSinkConnector::create("s", c.clone()).unwrap().task_configs(8).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].connection.client_id, "sink");
        c.tasks = 3;
        let conn = MqttSinkConnector::create("s", c).unwrap();
        let ids: Vec<_> =
            conn.task_configs(8).unwrap().iter().map(|t| t.connection.client_id.clone()).collect();
        assert_eq!(ids, ["sink-0", "sink-1", "sink-2"]);
        assert_eq!(conn.task_configs(2).unwrap().len(), 2, "max_tasks caps");
    }
}
