//! The MQTT connection of one sink task, driven in its own task.
//!
//! rumqttc opens the connection (TCP or TLS, CONNECT, CONNACK); then this loop drives it through a
//! [`Link`]: it sends what the [`Tracker`]'s backlog holds while the in-flight window allows, many
//! publishes per write; reads acknowledgements in bulk and feeds them to the tracker; completes
//! QoS 2 flows; sends keep-alive pings; and reconnects with backoff. The sink task only adds to
//! the tracker and wakes this loop.

use std::sync::Arc;
use std::time::Duration;

use connector_core::backoff::{Backoff, BackoffConfig};
use connector_core::ErrorKind;
use connector_mqtt_common::{
    classify, connection_error, pause_before_reconnect, Link, MqttUrl, Status,
};
use parking_lot::Mutex;
use rumqttc::{ConnectionError, Event, EventLoop, Packet, PingReq, Request};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::tracker::Tracker;

/// State shared by the sink task and its event loop.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) tracker: Mutex<Tracker>,
    /// Woken (all waiters) when publishes complete or the connection changes.
    pub(crate) changed: Notify,
    /// Wakes the event loop: the backlog has something new.
    pub(crate) work: Notify,
}

pub(crate) struct LoopSettings {
    pub(crate) url: MqttUrl,
    pub(crate) client_id: String,
    pub(crate) backoff: BackoffConfig,
    pub(crate) keep_alive: Duration,
    /// Longest a write may wait for the broker to take our bytes.
    pub(crate) write_timeout: Duration,
    /// Most publishes in flight.
    pub(crate) window: usize,
}

/// Why a connection's loop ended.
enum End {
    /// `stop` was cancelled (DISCONNECT sent).
    Stopped,
    /// The connection broke; reconnect.
    Lost(Box<ConnectionError>),
}

impl From<Box<ConnectionError>> for End {
    fn from(e: Box<ConnectionError>) -> Self {
        End::Lost(e)
    }
}

impl From<rumqttc::StateError> for End {
    fn from(e: rumqttc::StateError) -> Self {
        End::Lost(Box::new(ConnectionError::MqttState(e)))
    }
}

/// Runs until the connection is refused for good or `stop` is cancelled.
pub(crate) async fn run(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    status: watch::Sender<Status>,
    settings: LoopSettings,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.backoff);
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            r = eventloop.poll() => r,
        };
        let end = match connected {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                eventloop.pending.clear();
                let mut resend = Vec::new();
                let republished = {
                    let mut t = shared.tracker.lock();
                    let before = t.republished;
                    t.connected(ack.session_present, &mut resend);
                    t.republished - before
                };
                info!(
                    client_id = %settings.client_id,
                    url = %settings.url,
                    session_present = ack.session_present,
                    resent = resend.len(),
                    republished,
                    "connected to MQTT broker"
                );
                status.send_replace(Status { connected: true, last_error: None, fatal: None });
                shared.changed.notify_waiters();
                let mut link = Link::new(&mut eventloop, settings.write_timeout);
                match drive(&mut link, &shared, &settings, &stop, resend).await {
                    Ok(()) => End::Stopped,
                    Err(end) => end,
                }
            }
            Ok(_) => End::Lost(Box::new(ConnectionError::NotConnAck(Packet::PingResp))),
            Err(e) => End::Lost(Box::new(e)),
        };
        let e = match end {
            End::Stopped => return,
            End::Lost(e) => e,
        };
        let error = connection_error(&e, &settings.url);
        if classify(&e) == ErrorKind::Fatal {
            status.send_replace(Status {
                connected: false,
                last_error: None,
                fatal: Some(error.to_string()),
            });
            shared.tracker.lock().failed = Some(error);
            shared.changed.notify_waiters();
            return;
        }
        shared.tracker.lock().disconnected();
        status.send_replace(Status {
            connected: false,
            last_error: Some(error.to_string()),
            fatal: None,
        });
        shared.changed.notify_waiters();
        let delay = backoff.next_delay();
        let stopped = stop.cancelled();
        if !pause_before_reconnect(&mut eventloop, &settings.client_id, &error, delay, stopped)
            .await
        {
            return;
        }
    }
}

/// Drives one established connection until it ends.
async fn drive(
    link: &mut Link<'_>,
    shared: &Shared,
    settings: &LoopSettings,
    stop: &CancellationToken,
    resend: Vec<Packet>,
) -> Result<(), End> {
    for packet in resend {
        link.write(packet).await?;
    }
    link.flush().await?;
    let mut keepalive = tokio::time::interval(settings.keep_alive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    let mut out: Vec<Packet> = Vec::new();
    loop {
        // Send what the window allows, in one write.
        shared.tracker.lock().take_sendable(settings.window, &mut out);
        if !out.is_empty() {
            for packet in out.drain(..) {
                link.write(packet).await?;
            }
            link.flush().await?;
            // QoS 0 publishes are done once written.
            shared.changed.notify_waiters();
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                link.write(Packet::Disconnect).await?;
                link.flush().await?;
                debug!(client_id = %settings.client_id, "DISCONNECT sent");
                return Ok(());
            }
            () = shared.work.notified() => {}
            packet = link.read() => {
                let mut next = Some(packet);
                while let Some(packet) = next.take() {
                    match packet? {
                        Packet::PubAck(ack) => shared.tracker.lock().acknowledged(ack.pkid),
                        Packet::PubComp(comp) => shared.tracker.lock().acknowledged(comp.pkid),
                        Packet::PubRec(rec) => {
                            let rel = shared.tracker.lock().received(rec.pkid);
                            link.write(rel).await?;
                        }
                        Packet::PingResp => {
                            link.state().handle_incoming_packet(Packet::PingResp)?;
                        }
                        other => debug!(packet = ?other, "ignoring an unexpected packet"),
                    }
                    next = link.read_buffered();
                }
                link.state().events.clear();
                link.flush().await?;
                shared.changed.notify_waiters();
            }
            _ = keepalive.tick() => {
                // Fails when the previous ping got no answer: the connection is dead.
                if let Some(packet) = link.state().handle_outgoing_packet(Request::PingReq(PingReq))? {
                    link.write(packet).await?;
                    link.flush().await?;
                }
                link.state().events.clear();
            }
        }
    }
}
