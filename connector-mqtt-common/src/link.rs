//! [`Link`]: an established MQTT connection (either version) that the connector drives itself.
//!
//! rumqttc's event loop handles one request per turn and flushes after each: every PUBACK a source
//! sends and every PUBLISH a sink sends would cost a system call of its own, most of the CPU time
//! of a busy connector. So the connectors let a [`Session`](crate::Session) connect, then read and
//! write packets through a `Link` over the same connection: packets read in bulk, replies queued
//! and written out together by one [`Link::flush`]. Pings are the link's own: a second ping
//! while the first is unanswered means the connection is dead (unless the owner paused reading
//! meanwhile, [`Link::reading_paused`]).

use std::time::Duration;

use connector_core::{Error, Result};
use futures::FutureExt;

use crate::session::{Connection, Session};
use crate::wire::{Inbound, Outbound};

/// The established connection of a [`Session`], driven packet by packet.
///
/// ```no_run
/// # async fn example(session: &mut connector_mqtt_common::Session) -> connector_core::Result<()> {
/// use connector_mqtt_common::{Inbound, Outbound};
///
/// session.connect().await?;
/// let mut link = session.link(std::time::Duration::from_secs(10));
/// if let Inbound::Publish(m) = link.read().await? {
///     link.write(Outbound::PubAck(m.pkid)).await?;
///     link.flush().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct Link<'a> {
    conn: Option<&'a mut Connection>,
    write_timeout: Duration,
    ping_outstanding: bool,
}

impl std::fmt::Debug for Link<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("connected", &self.conn.is_some()).finish()
    }
}

fn not_connected() -> Error {
    Error::retriable("MQTT connection lost: not connected")
}

fn lost(e: impl std::fmt::Display) -> Error {
    Error::retriable(format!("MQTT connection lost: {e}"))
}

impl<'a> Link<'a> {
    pub(crate) fn new(conn: Option<&'a mut Connection>, write_timeout: Duration) -> Self {
        Self { conn, write_timeout, ping_outstanding: false }
    }

    /// The next packet from the broker. Cancel-safe: a packet is never half read.
    ///
    /// # Errors
    /// Retriable when the connection broke or the broker sent something malformed.
    pub async fn read(&mut self) -> Result<Inbound> {
        let packet = self.conn.as_mut().ok_or_else(not_connected)?.read().await?;
        if packet == Inbound::PingResp {
            self.ping_outstanding = false;
        }
        Ok(packet)
    }

    /// The next packet if it is already buffered, without waiting.
    pub fn read_buffered(&mut self) -> Option<Result<Inbound>> {
        self.read().now_or_never()
    }

    /// Queues `packet` for the next [`flush`](Self::flush) (written earlier only when the buffer
    /// is full).
    ///
    /// # Errors
    /// Retriable when the connection broke.
    pub async fn write(&mut self, packet: Outbound) -> Result<()> {
        self.conn.as_mut().ok_or_else(not_connected)?.write(packet)
    }

    /// Writes out everything queued.
    ///
    /// # Errors
    /// Retriable when the connection broke, or the broker did not take the bytes within the write
    /// timeout.
    pub async fn flush(&mut self) -> Result<()> {
        let c = self.conn.as_mut().ok_or_else(not_connected)?;
        let flushed = tokio::time::timeout(self.write_timeout, c.flush()).await;
        flushed.unwrap_or_else(|_| {
            Err(lost(format!("the broker took no data for {:?}", self.write_timeout)))
        })
    }

    /// Tells the link that its owner stopped reading for now (back-pressure): the answer to an
    /// outstanding ping may be waiting unread, so it is not counted as missing.
    pub fn reading_paused(&mut self) {
        self.ping_outstanding = false;
    }

    /// Sends a keep-alive ping.
    ///
    /// # Errors
    /// Retriable when the previous ping is still unanswered (the connection is dead) or the
    /// connection broke.
    pub async fn ping(&mut self) -> Result<()> {
        if self.ping_outstanding {
            return Err(lost("the broker did not answer the last ping"));
        }
        self.write(Outbound::PingReq).await?;
        self.flush().await?;
        self.ping_outstanding = true;
        Ok(())
    }

    /// A clean stop: publishes `offline` (the retained status message, if the connector has a
    /// status topic), then DISCONNECT, and flushes, so the broker drops the last will. Whatever
    /// the caller queued before is written first.
    ///
    /// # Errors
    /// Retriable when the connection broke.
    pub async fn disconnect(&mut self, offline: Option<crate::wire::Message>) -> Result<()> {
        if let Some(offline) = offline {
            self.write(Outbound::Publish(offline)).await?;
        }
        self.write(Outbound::Disconnect).await?;
        self.flush().await?;
        // The broker has processed everything before the DISCONNECT (acknowledgements included)
        // once it closes the connection. Waiting for that (bounded) keeps a client that connects
        // again at once with the same client id (a config change) from taking the session over
        // before those acknowledgements count: the broker would redeliver their messages.
        let closed = async { while self.read().await.is_ok() {} };
        let _ = tokio::time::timeout(DISCONNECT_WAIT, closed).await;
        Ok(())
    }
}

/// How long a clean stop waits for the broker to close the connection after DISCONNECT.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// What both MQTT connectors do after losing a connection they will retry: forget the connection
/// (the connector's own state decides what is sent again), log, and wait out `delay`. Returns
/// `false` when `stopped` completes first.
///
/// ```no_run
/// # async fn example(session: &mut connector_mqtt_common::Session, error: connector_core::Error) {
/// let stop = tokio::sync::Notify::new();
/// let delay = std::time::Duration::from_secs(1);
/// if !connector_mqtt_common::pause_before_reconnect(session, &error, delay, stop.notified()).await {
///     return; // stopped
/// }
/// # }
/// ```
pub async fn pause_before_reconnect(
    session: &mut Session,
    error: &Error,
    delay: Duration,
    stopped: impl std::future::Future<Output = ()>,
) -> bool {
    session.disconnected();
    tracing::warn!(
        client_id = %session.settings().client_id,
        error = %error,
        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        "MQTT connection lost; reconnecting"
    );
    tokio::select! {
        () = stopped => false,
        () = tokio::time::sleep(delay) => true,
    }
}
