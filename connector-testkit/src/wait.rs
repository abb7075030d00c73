//! Waiting in tests: for a condition, and for a source connector's MQTT subscription to be live.

use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use rumqttc::QoS;

use crate::error::{Result, TestkitError};
use crate::mqtt::MqttPublisher;

/// Polls `done` every 25 ms until it holds.
///
/// # Errors
/// [`TestkitError::Timeout`] naming `what` when `timeout` passes first.
pub async fn wait_until<F: FnMut() -> bool>(
    what: &str,
    timeout: Duration,
    mut done: F,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return Err(TestkitError::Timeout(format!("{what} (waited {timeout:?})")));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// Publishes `probe` on `mqtt_topic` every 200 ms until a record reaches `kafka_topic`: then the
/// source connector's subscription is live (MQTT drops messages nobody is subscribed to).
///
/// # Errors
/// [`TestkitError::Timeout`] when nothing arrives within 30 s.
pub async fn wait_source_subscribed(
    publisher: &MqttPublisher,
    mqtt_topic: &str,
    probe: &[u8],
    client: &KafkaClient,
    kafka_topic: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publisher.publish(mqtt_topic, QoS::AtLeastOnce, false, probe.to_vec()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if crate::kafka::count(client, kafka_topic).await? > 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TestkitError::Timeout(format!(
                "no probe from {mqtt_topic} reached {kafka_topic}: the source never subscribed"
            )));
        }
    }
}
