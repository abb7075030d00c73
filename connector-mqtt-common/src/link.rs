//! [`Link`]: an MQTT connection that rumqttc opened and the connector drives itself.
//!
//! rumqttc's event loop handles one request per turn and flushes after each: every PUBACK a source
//! sends and every PUBLISH a sink sends costs a system call of its own, most of the CPU time of a
//! busy connector. Its connection setup (TCP or TLS, CONNECT, CONNACK) and its packet reader and
//! writer are fine, and public. So the connectors let [`EventLoop::poll`] connect, then read and
//! write packets through a `Link` over the same connection: packets read in bulk, replies queued
//! and written out together by one [`Link::flush`].

use std::time::Duration;

use futures::FutureExt;
use rumqttc::{ConnectionError, EventLoop, MqttState, Packet};

/// The established connection of an [`EventLoop`], driven packet by packet.
///
/// ```no_run
/// # async fn example(eventloop: &mut rumqttc::EventLoop) -> connector_mqtt_common::LinkResult<()> {
/// use connector_mqtt_common::Link;
/// use rumqttc::{Packet, PubAck};
///
/// eventloop.poll().await.map_err(Box::new)?; // connects: CONNACK
/// let mut link = Link::new(eventloop, std::time::Duration::from_secs(10));
/// if let Packet::Publish(p) = link.read().await? {
///     link.write(Packet::PubAck(PubAck::new(p.pkid))).await?;
///     link.flush().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct Link<'a> {
    eventloop: &'a mut EventLoop,
    write_timeout: Duration,
}

/// What a [`Link`] operation returns: a boxed rumqttc error (it is large).
pub type LinkResult<T> = Result<T, Box<ConnectionError>>;

fn state_error(e: rumqttc::StateError) -> Box<ConnectionError> {
    Box::new(ConnectionError::MqttState(e))
}

impl std::fmt::Debug for Link<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("connected", &self.eventloop.network.is_some()).finish()
    }
}

fn not_connected() -> Box<ConnectionError> {
    Box::new(ConnectionError::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "not connected",
    )))
}

impl<'a> Link<'a> {
    /// The connection `eventloop` established; a flush may wait `write_timeout` for the broker.
    pub fn new(eventloop: &'a mut EventLoop, write_timeout: Duration) -> Self {
        Self { eventloop, write_timeout }
    }

    /// The next packet from the broker. Cancel-safe: a packet is never half read.
    ///
    /// # Errors
    /// When the connection broke or the broker sent something malformed.
    pub async fn read(&mut self) -> LinkResult<Packet> {
        let network = self.eventloop.network.as_mut().ok_or_else(not_connected)?;
        network.read().await.map_err(state_error)
    }

    /// The next packet if it is already buffered, without waiting.
    pub fn read_buffered(&mut self) -> Option<LinkResult<Packet>> {
        let Some(network) = self.eventloop.network.as_mut() else {
            return Some(Err(not_connected()));
        };
        network.read().now_or_never().map(|r| r.map_err(state_error))
    }

    /// Queues `packet` for the next [`flush`](Self::flush) (written earlier only when the buffer
    /// is full).
    ///
    /// # Errors
    /// When the connection broke.
    pub async fn write(&mut self, packet: Packet) -> LinkResult<()> {
        let network = self.eventloop.network.as_mut().ok_or_else(not_connected)?;
        network.write(packet).await.map_err(state_error)
    }

    /// Writes out everything queued.
    ///
    /// # Errors
    /// When the connection broke, or the broker did not take the bytes within the write timeout.
    pub async fn flush(&mut self) -> LinkResult<()> {
        let network = self.eventloop.network.as_mut().ok_or_else(not_connected)?;
        match tokio::time::timeout(self.write_timeout, network.flush()).await {
            Ok(r) => r.map_err(state_error),
            Err(_) => Err(Box::new(ConnectionError::FlushTimeout)),
        }
    }

    /// rumqttc's protocol state of this connection (pings, QoS 2 flows, subscription ids). It keeps
    /// a copy of each packet it handles as an event, which the link's users clear.
    pub fn state(&mut self) -> &mut MqttState {
        &mut self.eventloop.state
    }
}

/// What both MQTT connectors do after losing a connection they will retry: forget what rumqttc
/// still holds for the old connection (the connector's own state decides what is sent again),
/// log, and wait out `delay`. Returns `false` when `stopped` completes first.
///
/// ```no_run
/// # async fn example(eventloop: &mut rumqttc::EventLoop, error: connector_core::Error) {
/// let stop = tokio::sync::Notify::new();
/// let delay = std::time::Duration::from_secs(1);
/// if !connector_mqtt_common::pause_before_reconnect(eventloop, "c1", &error, delay, stop.notified()).await {
///     return; // stopped
/// }
/// # }
/// ```
pub async fn pause_before_reconnect(
    eventloop: &mut EventLoop,
    client_id: &str,
    error: &connector_core::Error,
    delay: Duration,
    stopped: impl std::future::Future<Output = ()>,
) -> bool {
    eventloop.clean();
    eventloop.pending.clear();
    tracing::warn!(
        client_id = %client_id,
        error = %error,
        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        "MQTT connection lost; reconnecting"
    );
    tokio::select! {
        () = stopped => false,
        () = tokio::time::sleep(delay) => true,
    }
}
