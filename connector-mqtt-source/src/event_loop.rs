//! The MQTT connection of one source task, driven in its own task.
//!
//! A [`Session`] opens the connection (TCP or TLS, CONNECT, CONNACK; MQTT 3.1.1 or 5). From then
//! on this loop drives it through a [`Link`]: it reads packets in bulk and hands received
//! messages to the source task in batches through a bounded channel; writes the acknowledgements
//! the task releases, many per system call; sends keep-alive pings; subscribes when the broker did
//! not keep the session; and reconnects with backoff. (rumqttc's own loop writes and flushes each
//! acknowledgement on its own, one system call per message: most of a QoS 1 source's CPU time.)
//!
//! While the task does not take messages (Kafka slow or unreachable), the loop keeps reading into
//! a buffer of up to `inflight` messages, so pings are still answered and a healthy connection is
//! not taken for dead: the broker sends no more unacknowledged QoS 1/2 messages than its in-flight
//! window (MQTT 5: our Receive Maximum, set to `inflight`; MQTT 3.1.1: the broker's own setting,
//! Mosquitto's `max_inflight_messages`). Only when that buffer is full (QoS 0, or a 3.1.1 broker
//! with a larger window) does reading pause, and a ping unanswered meanwhile is not held against
//! the connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use connector_core::backoff::{Backoff, BackoffConfig};
use connector_core::{Error, ErrorKind, Timestamp};
use connector_mqtt_common::{
    pause_before_reconnect, Inbound, Link, Message, MqttUrl, Outbound, Session, Status, Will,
};
use parking_lot::Mutex;
use rumqttc::QoS;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most messages handed to the source task at once.
pub(crate) const MAX_BATCH: usize = 1024;

/// A message as received, tagged with the connection it arrived on.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) publish: Message,
    pub(crate) generation: u64,
    pub(crate) received: Timestamp,
    /// Size of a PUBLISH over `max_packet_size`, whose payload was dropped unread.
    pub(crate) oversize: Option<usize>,
    /// Exactly-once only: not a message but the broker's PUBREL of QoS 2 packet id
    /// `publish.pkid` (the rest of `publish` is empty). Its PUBCOMP goes out once the id is
    /// cleared in a committed transaction.
    pub(crate) released: bool,
}

impl Received {
    /// The PUBREL of `pkid`, in order with the messages.
    fn pubrel(pkid: u16, generation: u64, received: Timestamp) -> Self {
        Self {
            publish: Message {
                topic: String::new(),
                payload: bytes::Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: false,
                dup: false,
                pkid,
                properties: None,
            },
            generation,
            received,
            oversize: None,
            released: true,
        }
    }
}

/// An acknowledgement the source task releases to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after the MQTT packets
pub(crate) enum Ack {
    /// QoS 1: the message is ours.
    PubAck(u16),
    /// QoS 2, first step: the message is ours; the broker answers with PUBREL.
    PubRec(u16),
    /// QoS 2, last step (exactly-once only: after the id was cleared in Kafka).
    PubComp(u16),
}

impl Ack {
    /// The acknowledgement of a message of `qos` (none for QoS 0).
    pub(crate) fn of(pkid: u16, qos: QoS) -> Option<Self> {
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Self::PubAck(pkid)),
            QoS::ExactlyOnce => Some(Self::PubRec(pkid)),
        }
    }

    /// Its packet id.
    #[cfg(test)]
    pub(crate) fn pkid(self) -> u16 {
        match self {
            Self::PubAck(p) | Self::PubRec(p) | Self::PubComp(p) => p,
        }
    }
}

/// What the event loop hands to the source task.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Messages in the order they arrived.
    Messages(Vec<Received>),
    /// The connection cannot be used any more (refused login, refused subscription).
    Failed(Error),
    /// Exactly-once only: the broker did not keep our session (CONNACK session present = 0), so
    /// the recorded QoS 2 packet ids mean nothing any more. Sent before any message of that
    /// connection.
    NewSession,
    /// A primary host's connection was lost (after the messages read on it): Sparkplug 3.0
    /// marks the data of every node on that broker stale. Sent once per lost connection.
    ConnectionLost {
        /// When the loss was noticed.
        at: Timestamp,
        /// The lost connection's generation.
        generation: u64,
    },
}

/// Acknowledgements released by the source task, waiting to be written.
///
/// The generation counts lost connections. Packet ids belong to a connection's session: after a
/// reconnect the broker resends unacknowledged messages, and may give a freed id to a new message.
/// Acknowledging a message from an earlier connection could therefore acknowledge a different,
/// newer message that is not in Kafka yet. So a message is acknowledged only on the connection it
/// arrived on: [`Acks::release`] checks the generation and queues under one lock, and a lost
/// connection bumps the generation and drops what is queued under the same lock.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    state: Mutex<AckState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct AckState {
    generation: u64,
    queued: Vec<Ack>,
}

impl Acks {
    /// Queues acknowledgements of `(ack, generation)`; those of an earlier connection are left
    /// out (the broker redelivers their messages). Returns how many were left out.
    pub(crate) fn release(&self, acks: impl IntoIterator<Item = (Ack, u64)>) -> u64 {
        let mut stale = 0;
        let mut queued_any = false;
        {
            let mut state = self.state.lock();
            let current = state.generation;
            for (ack, generation) in acks {
                if generation == current {
                    state.queued.push(ack);
                    queued_any = true;
                } else {
                    stale += 1;
                }
            }
        }
        if queued_any {
            self.ready.notify_one();
        }
        stale
    }

    /// The current connection's generation.
    pub(crate) fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// Moves the queued acknowledgements into `into`.
    fn take(&self, into: &mut Vec<Ack>) {
        std::mem::swap(&mut self.state.lock().queued, into);
    }

    /// The connection was lost: later releases for it are stale, queued ones are dropped.
    fn connection_lost(&self) {
        let mut state = self.state.lock();
        state.generation += 1;
        state.queued.clear();
    }
}

pub(crate) struct LoopSettings {
    pub(crate) url: MqttUrl,
    pub(crate) client_id: String,
    pub(crate) filters: Vec<(String, QoS)>,
    pub(crate) backoff: BackoffConfig,
    /// Longest a write may wait for the broker to take our bytes.
    pub(crate) write_timeout: Duration,
    /// Most messages read and not yet handed to the task (the in-flight window).
    pub(crate) buffer: usize,
    /// `max_packet_size`, for the log of an oversize message.
    pub(crate) max_packet_size: usize,
    /// Where reconnects are counted.
    pub(crate) counters: connector_core::runtime::TaskCounterHandle,
    /// Sparkplug Primary Host: the STATE topic `spBv1.0/STATE/<host_id>` (also in `filters`).
    pub(crate) state_topic: Option<String>,
    /// Exactly once: PUBRELs go to the task (PUBCOMP once the id is cleared in Kafka), and a
    /// session the broker did not keep is announced ([`Incoming::NewSession`]).
    pub(crate) exactly_once: bool,
}

/// A Sparkplug primary host's STATE messages for one connection: `{"online":..,"timestamp":T}`,
/// QoS 1, retained, with the same `T` in the will (sent with CONNECT), the birth (published once
/// the subscription is acknowledged) and the death published before a clean DISCONNECT.
#[derive(Debug, Clone)]
pub(crate) struct HostStatus {
    topic: String,
    timestamp: u64,
    next_pkid: u16,
}

/// Packet ids of our own QoS 1 STATE publishes (the SUBSCRIBE uses 1; nothing else of ours is
/// QoS 1 or 2). They cycle, so a republished STATE never reuses the id of one still in flight.
const STATE_PKIDS: std::ops::RangeInclusive<u16> = 2..=1000;

impl HostStatus {
    fn new(topic: String) -> Self {
        let timestamp = u64::try_from(Timestamp::now().as_millis()).unwrap_or(0);
        Self { topic, timestamp, next_pkid: *STATE_PKIDS.start() }
    }

    fn payload(&self, online: bool) -> bytes::Bytes {
        bytes::Bytes::from(format!(r#"{{"online":{online},"timestamp":{}}}"#, self.timestamp))
    }

    fn will(&self) -> Will {
        Will {
            topic: self.topic.clone(),
            payload: self.payload(false),
            qos: QoS::AtLeastOnce,
            retain: true,
        }
    }

    fn message(&mut self, online: bool) -> Message {
        let pkid = self.next_pkid;
        self.next_pkid = if pkid >= *STATE_PKIDS.end() { *STATE_PKIDS.start() } else { pkid + 1 };
        Message {
            topic: self.topic.clone(),
            payload: self.payload(online),
            qos: QoS::AtLeastOnce,
            retain: true,
            dup: false,
            pkid,
            properties: None,
        }
    }

    /// Whether `m` says this host is offline as of this connection or later (someone else
    /// published it, or a will of ours outlived us): then the birth is published again. An
    /// older offline (the retained will of an earlier connection, sent on subscribe) is not.
    fn is_offline_for_us(&self, m: &Message) -> bool {
        if m.topic != self.topic {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else { return false };
        let online = v.get("online").and_then(serde_json::Value::as_bool);
        let timestamp = v.get("timestamp").and_then(serde_json::Value::as_u64);
        // A retained offline delivered on subscribe is only news when it is not older than this
        // connection; a live one (someone overwrote our retained birth) always is.
        online == Some(false) && (!m.retain || timestamp.is_none_or(|t| t >= self.timestamp))
    }
}

/// The channels between the event loop and its source task.
pub(crate) struct LoopChannels {
    pub(crate) tx: mpsc::Sender<Incoming>,
    pub(crate) acks: Arc<Acks>,
    pub(crate) status: watch::Sender<Status>,
    /// Cancelled by the task's `stop`: write the queued acknowledgements, DISCONNECT, return.
    pub(crate) stop: CancellationToken,
    /// Messages the task publishes (Sparkplug Rebirth requests, QoS 0), written in order on the
    /// current connection; they wait here while there is none.
    pub(crate) publish: mpsc::Receiver<Message>,
}

/// Runs until the connection is refused for good, the source task goes away, or `stop`.
pub(crate) async fn run(mut session: Session, mut channels: LoopChannels, settings: LoopSettings) {
    let mut backoff = Backoff::new(settings.backoff);
    // Whether the broker holds our subscription: a kept session keeps it, once acknowledged.
    let mut subscribed = false;
    // Read and not yet handed to the task; handed over in batches of up to MAX_BATCH.
    let mut pending: VecDeque<Received> = VecDeque::new();
    loop {
        // A primary host's STATE timestamp is new for every connection, the will included.
        let mut host = settings.state_topic.clone().map(HostStatus::new);
        if let Some(h) = &host {
            session.set_will(Some(h.will()));
        }
        let connected = tokio::select! {
            () = channels.stop.cancelled() => return,
            r = session.connect() => r,
        };
        let was_connected = connected.is_ok();
        let ended = match connected {
            Ok(c) => {
                backoff.reset();
                info!(client_id = %settings.client_id, url = %settings.url, session_present = c.session_present, "connected to MQTT broker");
                subscribed &= c.session_present;
                // Nothing of a lost connection is pending here (handed over before the
                // reconnect), so the task hears of the new session before its messages.
                if settings.exactly_once && !c.session_present {
                    let sent = tokio::select! {
                        () = channels.stop.cancelled() => return,
                        r = channels.tx.send(Incoming::NewSession) => r,
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                channels.status.send_replace(Status {
                    connected: true,
                    last_error: None,
                    fatal: None,
                });
                let statuses = session.settings().status_messages();
                let mut link = session.link(settings.write_timeout);
                let keep_alive = c.keep_alive;
                let state = (&mut subscribed, &mut pending, host.as_mut());
                drive_link(&mut link, &mut channels, &settings, state, keep_alive, statuses).await
            }
            Err(e) => Err(e),
        };
        // Ok: stopped, or the source task went away.
        let Err(error) = ended else { return };
        if error.kind() == ErrorKind::Fatal {
            fail(&channels, error).await;
            return;
        }
        channels.status.send_replace(Status {
            connected: false,
            last_error: Some(error.to_string()),
            fatal: None,
        });
        // Messages received so far belong to the lost connection: their acks must not reach
        // the next one (see `Acks`).
        let generation = channels.acks.generation();
        channels.acks.connection_lost();
        // What was read but not yet handed over still goes to Kafka: a broker that crashed may
        // come back from a save that no longer holds it, so dropping it here could lose it. (A
        // broker that kept it delivers it again: a duplicate, bounded by the buffer.)
        if !hand_over(&mut pending, &channels).await {
            return;
        }
        if was_connected && settings.state_topic.is_some() {
            let lost = Incoming::ConnectionLost { at: Timestamp::now(), generation };
            let sent = tokio::select! {
                () = channels.stop.cancelled() => return,
                r = channels.tx.send(lost) => r,
            };
            if sent.is_err() {
                return;
            }
        }
        connector_mqtt_common::count_reconnect(&settings.counters, &error);
        let delay = backoff.next_delay();
        let stopped = channels.stop.cancelled();
        if !pause_before_reconnect(&mut session, &error, delay, stopped).await {
            return;
        }
    }
}

/// Hands everything in `pending` to the source task, in batches of up to MAX_BATCH. Returns
/// `false` when the task went away or the connector is stopping (then nothing more is handed).
async fn hand_over(pending: &mut VecDeque<Received>, channels: &LoopChannels) -> bool {
    while !pending.is_empty() {
        let permit = tokio::select! {
            () = channels.stop.cancelled() => return false,
            p = channels.tx.reserve() => p,
        };
        let Ok(permit) = permit else { return false };
        let n = pending.len().min(MAX_BATCH);
        permit.send(Incoming::Messages(pending.drain(..n).collect()));
    }
    true
}

/// Packet id of our SUBSCRIBE (the broker's messages use their own ids).
const SUBSCRIBE_PKID: u16 = 1;

async fn drive_link(
    link: &mut Link<'_>,
    channels: &mut LoopChannels,
    settings: &LoopSettings,
    (subscribed, pending, mut host): (&mut bool, &mut VecDeque<Received>, Option<&mut HostStatus>),
    keep_alive: Duration,
    (online, offline): (Option<Message>, Option<Message>),
) -> Result<(), Error> {
    let generation = channels.acks.generation();
    if let Some(online) = online {
        link.write(Outbound::Publish(online)).await?;
    }
    if !*subscribed {
        let filters = settings.filters.clone();
        link.write(Outbound::Subscribe { pkid: SUBSCRIBE_PKID, filters }).await?;
    }
    link.flush().await?;
    let mut keepalive = tokio::time::interval(keep_alive.max(Duration::from_secs(1)));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    let buffer = settings.buffer.max(MAX_BATCH);
    let mut acks: Vec<Ack> = Vec::new();
    // Whether the task's publishes may go out: at once, or after a primary host's STATE birth.
    let mut born = host.is_none();

    loop {
        let can_read = pending.len() < buffer;
        if !can_read {
            // The answer to a ping may be waiting unread behind messages.
            link.reading_paused();
        }
        tokio::select! {
            biased;
            () = channels.stop.cancelled() => {
                // Queued acknowledgements go out before the DISCONNECT; the session stays.
                channels.acks.take(&mut acks);
                for ack in acks.drain(..) {
                    link.write(ack_packet(ack)).await?;
                }
                // A primary host's death certificate, with the timestamp of its birth.
                let offline = match host.as_deref_mut() {
                    Some(h) => Some(h.message(false)),
                    None => offline,
                };
                link.disconnect(offline).await?;
                debug!(client_id = %settings.client_id, "DISCONNECT sent");
                return Ok(());
            }
            () = channels.acks.ready.notified() => {
                channels.acks.take(&mut acks);
                let pubrecs = acks.iter().any(|a| matches!(a, Ack::PubRec(_)));
                let pubcomps = acks.iter().filter(|a| matches!(a, Ack::PubComp(_))).count();
                debug!(acks = acks.len(), pubrecs, pubcomps, "writing acknowledgements");
                for ack in acks.drain(..) {
                    link.write(ack_packet(ack)).await?;
                }
                link.flush().await?;
                if pubrecs && settings.exactly_once {
                    connector_core::crash_point("source.after_pubrec");
                }
            }
            // A primary host publishes nothing before its STATE birth (Sparkplug 3.0).
            Some(message) = channels.publish.recv(), if born => {
                debug!(topic = %message.topic, "publishing");
                link.write(Outbound::Publish(message)).await?;
                link.flush().await?;
            }
            permit = channels.tx.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => {
                    let n = pending.len().min(MAX_BATCH);
                    permit.send(Incoming::Messages(pending.drain(..n).collect()));
                }
                // The source task went away.
                Err(_) => return Ok(()),
            },
            packet = link.read(), if can_read => {
                let received = Timestamp::now();
                let mut next = Some(packet);
                // Everything already buffered is handled now; its replies go out in one write.
                while let Some(packet) = next.take() {
                    match packet? {
                        Inbound::Publish(publish) => {
                            if let Some(h) = host.as_deref_mut().filter(|h| h.is_offline_for_us(&publish)) {
                                info!(topic = %publish.topic, "our STATE was set offline: publishing online again");
                                link.write(Outbound::Publish(h.message(true))).await?;
                            }
                            pending.push_back(Received { publish, generation, received, oversize: None, released: false });
                        }
                        Inbound::Oversize { message, size } => {
                            warn!(
                                client_id = %settings.client_id,
                                topic = %message.topic,
                                size,
                                max_packet_size = settings.max_packet_size,
                                "MQTT message over max_packet_size: payload dropped, record goes to the error policy"
                            );
                            pending.push_back(Received {
                                publish: message,
                                generation,
                                received,
                                oversize: Some(size),
                                released: false,
                            });
                        }
                        Inbound::SubAck { pkid, refused }
                            if pkid == SUBSCRIBE_PKID && !*subscribed =>
                        {
                            check_suback(&refused, settings)?;
                            *subscribed = true;
                            debug!(filters = ?settings.filters, "subscribed");
                            // Sparkplug 3.0: the birth follows the subscription to our own STATE.
                            if let Some(h) = host.as_deref_mut() {
                                link.write(Outbound::Publish(h.message(true))).await?;
                                born = true;
                                info!(topic = %h.topic, timestamp = h.timestamp, "primary host STATE online");
                            }
                        }
                        // The broker releases a QoS 2 message we acknowledged with PUBREC.
                        // Exactly once: the task clears the id in Kafka first (see `Received`).
                        Inbound::PubRel(pkid) if settings.exactly_once => {
                            pending.push_back(Received::pubrel(pkid, generation, received));
                        }
                        Inbound::PubRel(pkid) => link.write(Outbound::PubComp(pkid)).await?,
                        Inbound::Disconnect(reason) => {
                            return Err(Error::retriable(format!(
                                "MQTT broker {} closed the connection: {reason}",
                                settings.url
                            )));
                        }
                        _ => {}
                    }
                    if pending.len() < buffer {
                        next = link.read_buffered();
                    }
                }
                link.flush().await?;
            }
            _ = keepalive.tick() => link.ping().await?,
        }
    }
}

/// The packet of an acknowledgement: PUBACK for QoS 1, PUBREC for QoS 2 (the broker then sends
/// PUBREL, answered with PUBCOMP).
fn ack_packet(ack: Ack) -> Outbound {
    match ack {
        Ack::PubAck(pkid) => Outbound::PubAck(pkid),
        Ack::PubRec(pkid) => Outbound::PubRec(pkid),
        Ack::PubComp(pkid) => Outbound::PubComp(pkid),
    }
}

/// A refused filter is fatal: a source subscribed to less than it was told would run and
/// silently get nothing.
fn check_suback(refused: &[(usize, String)], settings: &LoopSettings) -> Result<(), Error> {
    if refused.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = refused
        .iter()
        .map(|(i, why)| {
            let filter = settings.filters.get(*i).map_or("?", |(f, _)| f.as_str());
            format!("{filter:?} ({why})")
        })
        .collect();
    Err(Error::fatal(format!(
        "MQTT broker {} refused the subscription to {}",
        settings.url,
        names.join(", ")
    )))
}

/// Reports a failure the connection cannot recover from, to `start` and to `poll`.
async fn fail(channels: &LoopChannels, error: Error) {
    channels.status.send_replace(Status {
        connected: false,
        last_error: None,
        fatal: Some(error.to_string()),
    });
    let _ = channels.tx.send(Incoming::Failed(error)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_of_an_earlier_connection_are_left_out() {
        let acks = Acks::default();
        let g = acks.generation();
        assert_eq!(acks.release([(Ack::PubAck(1), g), (Ack::PubRec(2), g)]), 0);
        acks.connection_lost();
        let mut taken = Vec::new();
        acks.take(&mut taken);
        assert!(taken.is_empty(), "queued acks of the lost connection are dropped");
        assert_eq!(acks.release([(Ack::PubAck(3), g)]), 1, "stale");
        assert_eq!(acks.release([(Ack::PubRec(4), g + 1), (Ack::PubComp(5), g + 1)]), 0);
        acks.take(&mut taken);
        assert_eq!(taken, vec![Ack::PubRec(4), Ack::PubComp(5)]);
        assert_eq!(Ack::of(6, QoS::AtMostOnce), None);
    }
}
