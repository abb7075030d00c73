//! MQTT test clients: an [`MqttPublisher`] that counts broker acknowledgements and survives broker
//! restarts, and an [`MqttSubscriber`] that collects what it receives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::task::JoinHandle;

use crate::error::{Result, TestkitError};

fn options(url: &str, client_id: &str) -> Result<MqttOptions> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        TestkitError::Timeout(format!("test clients speak mqtt:// only, got {url}"))
    })?;
    let (host, port) = rest
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_owned(), p)))
        .ok_or_else(|| TestkitError::Timeout(format!("bad MQTT URL {url}")))?;
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_clean_session(false);
    o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    o.set_inflight(200);
    o.set_request_channel_capacity(100_000);
    Ok(o)
}

/// Polls an event loop forever, reconnecting after errors, calling `on_event` for each event.
fn drive(
    mut eventloop: EventLoop,
    mut on_event: impl FnMut(Event) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(e) => on_event(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
}

/// Publishes test messages and counts what the broker acknowledged.
///
/// ```no_run
/// # async fn example() -> connector_testkit::Result<()> {
/// use rumqttc::QoS;
/// let p = connector_testkit::MqttPublisher::connect("mqtt://127.0.0.1:1883", "pub-1").await?;
/// p.publish("devices/d1/temp", QoS::AtLeastOnce, false, b"21.5".to_vec()).await?;
/// p.wait_acknowledged(1, std::time::Duration::from_secs(5)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MqttPublisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttPublisher {
    /// Connects a publisher (persistent session, so unacknowledged publishes are resent after a
    /// broker restart).
    ///
    /// # Errors
    /// For a malformed URL.
    pub async fn connect(url: &str, client_id: &str) -> Result<Self> {
        let (client, eventloop) = AsyncClient::new(options(url, client_id)?, 100_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        let task = drive(eventloop, move |e| match e {
            Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Event::Outgoing(Outgoing::Publish(0)) => {
                // QoS 0: sent is all there is.
                counter.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
        Ok(Self { client, acked, task })
    }

    /// Queues one message.
    ///
    /// # Errors
    /// When the client has stopped.
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<()> {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .map_err(|e| TestkitError::Timeout(format!("publish failed: {e}")))
    }

    /// Publishes acknowledged by the broker so far (QoS 0: sent).
    pub fn acknowledged(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` publishes were acknowledged.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] with the count reached.
    pub async fn wait_acknowledged(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.acknowledged() < n {
            if Instant::now() > deadline {
                return Err(TestkitError::Timeout(format!(
                    "{} of {n} publishes acknowledged within {timeout:?}",
                    self.acknowledged()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Subscribes and collects every message received.
#[derive(Debug)]
pub struct MqttSubscriber {
    client: AsyncClient,
    received: Arc<Mutex<Vec<Publish>>>,
    task: JoinHandle<()>,
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttSubscriber {
    /// Connects and subscribes to `filter` at `qos`; waits until the subscription is acknowledged.
    ///
    /// # Errors
    /// When the subscription is not acknowledged within 10 s.
    pub async fn connect(url: &str, client_id: &str, filter: &str, qos: QoS) -> Result<Self> {
        let (client, eventloop) = AsyncClient::new(options(url, client_id)?, 100_000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let subacked = Arc::new(AtomicU64::new(0));
        let (sink, subs) = (Arc::clone(&received), Arc::clone(&subacked));
        let task = drive(eventloop, move |e| match e {
            Event::Incoming(Packet::Publish(p)) => sink.lock().push(p),
            Event::Incoming(Packet::SubAck(_)) => {
                subs.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
        client
            .subscribe(filter, qos)
            .await
            .map_err(|e| TestkitError::Timeout(format!("subscribe failed: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while subacked.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                return Err(TestkitError::Timeout(format!("no SUBACK for {filter}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self { client, received, task })
    }

    /// Everything received so far, in arrival order.
    pub fn messages(&self) -> Vec<Publish> {
        self.received.lock().clone()
    }

    /// Number of messages received so far.
    pub fn count(&self) -> usize {
        self.received.lock().len()
    }

    /// Waits until at least `n` messages arrived; returns them all.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] with the count reached.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Publish>> {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() > deadline {
                return Err(TestkitError::Timeout(format!(
                    "{} of {n} messages received within {timeout:?}",
                    self.count()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.messages())
    }

    /// The underlying client (to unsubscribe or disconnect).
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }
}
