//! [`MqttSourceConnector`]: builds one task per MQTT client (`tasks`), sharing the subscription
//! with `$share/<connector>/<filter>` when there are several.

use connector_core::{ConnectorConfig, Error, Result, SourceConnector};
use rumqttc::QoS;

use crate::config::{check_template, state_topic, MqttSourceConfig, SourceFormat, SparkplugMode};
use crate::task::{MqttSourceTask, MqttSourceTaskConfig};

/// The MQTT source connector (`type = "mqtt-source"`).
///
/// ```
/// use connector_core::{DynSourceConnector, SourceConnector};
/// use connector_mqtt_source::{MqttSourceConfig, MqttSourceConnector};
///
/// let mut config = MqttSourceConfig::new("mqtt://127.0.0.1:1883", vec!["plant/#".into()], "plant.{1}");
/// config.tasks = 2;
/// let connector = MqttSourceConnector::create("telemetry", config).unwrap();
/// assert_eq!(connector.create_tasks(8).unwrap().len(), 2);
/// ```
#[derive(Debug)]
pub struct MqttSourceConnector {
    name: String,
    config: MqttSourceConfig,
    base: MqttSourceTaskConfig,
}

pub(crate) fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

impl SourceConnector for MqttSourceConnector {
    type Config = MqttSourceConfig;
    type TaskConfig = MqttSourceTaskConfig;
    type Task = MqttSourceTask;

    fn create(name: &str, config: MqttSourceConfig) -> Result<Self> {
        if let Some(first) = config.validate().into_iter().next() {
            return Err(Error::config(first.path, first.message));
        }
        let kafka_topic =
            check_template(&config.kafka_topic).map_err(|m| Error::config("kafka_topic", m))?;
        let key = check_template(&config.key).map_err(|m| Error::config("key", m))?;
        let sparkplug =
            (config.format == SourceFormat::SparkplugB).then(|| config.sparkplug_settings());
        let primary_host = sparkplug
            .as_ref()
            .filter(|s| s.mode == SparkplugMode::PrimaryHost)
            .and_then(|s| s.host_id.clone());
        // Sparkplug 3.0: a primary host connects with a clean session, and its will is its
        // STATE death certificate (set by the event loop for each connection).
        let clean_session = config.clean_session || primary_host.is_some();
        let mut connection = config.connection.settings(name, clean_session)?;
        // The broker sends no more unacknowledged messages than the source's window (MQTT 5).
        connection.receive_maximum = Some(u16::try_from(config.inflight).unwrap_or(u16::MAX));
        let mut filters = config.topics.clone();
        if let Some(host_id) = &primary_host {
            connection.status_topic = None;
            let own = state_topic(host_id);
            if !filters.contains(&own) {
                filters.push(own);
            }
        }
        let base = MqttSourceTaskConfig {
            connection,
            filters,
            qos: qos(config.qos),
            kafka_topic,
            key,
            skip_retained: config.skip_retained,
            inflight: config.inflight,
            reconnect_backoff: config.connection.reconnect_backoff,
            expired_messages: config.expired_messages,
            sparkplug,
            exactly_once: config.exactly_once,
        };
        Ok(Self { name: name.to_owned(), config, base })
    }

    fn task_configs(&self, max_tasks: usize) -> Result<Vec<MqttSourceTaskConfig>> {
        let n = self.config.tasks.min(max_tasks.max(1)).max(1);
        if n == 1 {
            return Ok(vec![self.base.clone()]);
        }
        Ok((0..n)
            .map(|i| {
                let mut c = self.base.clone();
                c.connection.client_id = format!("{}-{i}", self.base.connection.client_id);
                c.filters =
                    self.base.filters.iter().map(|f| format!("$share/{}/{f}", self.name)).collect();
                c
            })
            .collect())
    }

    fn create_task(&self, config: MqttSourceTaskConfig) -> Result<MqttSourceTask> {
        Ok(MqttSourceTask::new(config))
    }

    fn max_in_flight_records(&self) -> Option<usize> {
        Some(self.config.inflight)
    }

    fn exactly_once(&self) -> bool {
        self.config.exactly_once
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tasks_get_their_own_client_ids_and_shared_subscriptions() {
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["a/#".into(), "b".into()], "t");
        c.tasks = 3;
        let conn = MqttSourceConnector::create("fleet", c).unwrap();
        let tasks = conn.task_configs(10).unwrap();
        let ids: Vec<_> = tasks.iter().map(|t| t.connection.client_id.clone()).collect();
        assert_eq!(ids, ["fleet-0", "fleet-1", "fleet-2"]);
        assert_eq!(tasks[1].filters, ["$share/fleet/a/#", "$share/fleet/b"]);
        assert_eq!(conn.task_configs(2).unwrap().len(), 2, "max_tasks caps");
    }

    #[test]
    fn a_single_task_uses_the_client_id_and_filters_as_given() {
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["a/#".into()], "t");
        c.connection.client_id = Some("edge-1".into());
        let tasks = MqttSourceConnector::create("fleet", c).unwrap().task_configs(4).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].connection.client_id, "edge-1");
        assert_eq!(tasks[0].filters, ["a/#"]);
    }

    #[test]
    fn a_primary_host_connects_clean_and_subscribes_to_its_own_state() {
        let mut c = MqttSourceConfig::new("mqtt://h", vec!["spBv1.0/#".into()], "t");
        c.format = SourceFormat::SparkplugB;
        c.sparkplug = Some(crate::SparkplugSourceConfig {
            mode: SparkplugMode::PrimaryHost,
            host_id: Some("scada".into()),
            ..Default::default()
        });
        let tasks = MqttSourceConnector::create("host", c).unwrap().task_configs(4).unwrap();
        assert_eq!(tasks[0].filters, ["spBv1.0/#", "spBv1.0/STATE/scada"]);
        assert!(tasks[0].connection.clean_session);
        assert_eq!(tasks[0].connection.status_topic, None);
    }

    #[test]
    fn an_invalid_config_is_refused_with_its_key() {
        let c = MqttSourceConfig::new("mqtt://h", vec![], "t");
        let e = MqttSourceConnector::create("x", c).unwrap_err();
        assert_eq!(e.to_string(), "topics: at least one topic filter is required");
    }
}
