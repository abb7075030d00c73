//! The MQTT connection of one sink task, driven in its own task.
//!
//! A [`Session`] opens the connection (TCP or TLS, CONNECT, CONNACK; MQTT 3.1.1 or 5); then this
//! loop drives it through a [`Link`]: it sends what the [`Tracker`]'s backlog holds while the in-flight window allows, many
//! publishes per write; reads acknowledgements in bulk and feeds them to the tracker; completes
//! QoS 2 flows; sends keep-alive pings; and reconnects with backoff. The sink task only adds to
//! the tracker and wakes this loop.
//!
//! With `format = "sparkplug_b"` the loop also subscribes (on every connection) to the BIRTH
//! topics of the edge nodes and feeds what arrives into [`Births`], acknowledging each message
//! at once (QoS 1 PUBACK, QoS 2 PUBREC/PUBCOMP): they are learned, not forwarded, so nothing
//! waits on Kafka. The SUBSCRIBE's packet id is reserved in the tracker until its SUBACK, so no
//! publish shares it.
//!
//! When a connection breaks, what the broker sent before it closed is still read (briefly, see
//! [`DRAIN_LIMIT`]): a PUBACK read just before a drop is final, so a refused publish is not sent
//! again on the next connection. The reconnect backoff starts over only after a connection that
//! got at least one acknowledgement, so a broker that closes the connection at once is not
//! hammered, while one refused publish costs one quick reconnect.

use std::sync::Arc;
use std::time::Duration;

use connector_core::backoff::{Backoff, BackoffConfig};
use connector_core::{crash_point, Error, ErrorKind, SinkTaskState};
use connector_mqtt_common::{
    pause_before_reconnect, Inbound, Link, Message, MqttUrl, Outbound, Refusal, Session, Status,
};
use parking_lot::Mutex;
use rumqttc::QoS;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::sparkplug::{Births, Learned};
use crate::tracker::Tracker;

/// How long a broken connection is still read for what the broker sent before closing it.
const DRAIN_LIMIT: Duration = Duration::from_millis(100);

/// How long publishes wait for the SUBACK of the BIRTH subscription before they go out anyway.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in a row the broker closes while the BIRTH SUBSCRIBE is unanswered before the
/// task stops subscribing (some brokers close the connection on a filter they do not allow).
const SUBSCRIBE_DROPS: u8 = 2;

/// Most packets read in one batch before the loop flushes, sends and pings again.
const INBOUND_BATCH: usize = 256;

/// Exactly once: a state change no write waits for (PUBCOMPs: records done, ids free) is saved
/// with the next save a write needs, or after this long at the latest. It only holds back the
/// Kafka commit of those records (a crash meanwhile re-sends their PUBRELs, which the broker
/// answers with PUBCOMP): one save less per command at low rates.
const DEFERRED_SAVE: Duration = Duration::from_millis(500);

/// State shared by the sink task and its event loop.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) tracker: Mutex<Tracker>,
    /// Woken (all waiters) when publishes complete or the connection changes.
    pub(crate) changed: Notify,
    /// Wakes the event loop: the backlog has something new.
    pub(crate) work: Notify,
    /// `format = "sparkplug_b"` with `learn_births`: what the BIRTHs told.
    pub(crate) births: Option<Births>,
}

pub(crate) struct LoopSettings {
    pub(crate) url: MqttUrl,
    pub(crate) client_id: String,
    pub(crate) backoff: BackoffConfig,
    /// Longest a write may wait for the broker to take our bytes.
    pub(crate) write_timeout: Duration,
    /// Most publishes in flight.
    pub(crate) window: usize,
    /// Largest PUBLISH packet to send (`max_packet_size`); the broker's may be smaller.
    pub(crate) max_packet: usize,
    /// Asks the runtime to commit once acknowledgements arrived.
    pub(crate) commit: connector_core::runtime::CommitRequester,
    /// Where reconnects and refused publishes are counted.
    pub(crate) counters: connector_core::runtime::TaskCounterHandle,
    /// Filters to subscribe to on every connection (the BIRTH topics), feeding `Shared::births`.
    pub(crate) subscribe: Vec<String>,
    /// `exactly_once = true`: where the tracker's packet-id state is saved before each write
    /// that needs it.
    pub(crate) state: Option<SinkTaskState>,
}

/// Runs until the connection is refused for good or `stop` is cancelled.
pub(crate) async fn run(
    mut session: Session,
    shared: Arc<Shared>,
    status: watch::Sender<Status>,
    settings: LoopSettings,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.backoff);
    // Learning BIRTHs is an optimisation: a broker that will not take the SUBSCRIBE loses it.
    let mut subscribe = !settings.subscribe.is_empty();
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            r = session.connect() => r,
        };
        let answers_before = shared.tracker.lock().answers;
        let ended = match connected {
            Ok(c) => {
                let mut resend = Vec::new();
                let broker_max = c.max_packet_size.map_or(usize::MAX, |m| m as usize);
                let republished = {
                    let mut t = shared.tracker.lock();
                    let before = t.republished;
                    t.max_packet = settings.max_packet.min(broker_max);
                    t.connected(c.session_present, &mut resend);
                    t.republished - before
                };
                info!(
                    client_id = %settings.client_id,
                    url = %settings.url,
                    session_present = c.session_present,
                    receive_maximum = c.receive_maximum,
                    max_packet_size = c.max_packet_size,
                    resent = resend.len(),
                    republished,
                    "connected to MQTT broker"
                );
                status.send_replace(Status { connected: true, last_error: None, fatal: None });
                shared.changed.notify_waiters();
                let statuses = session.settings().status_messages();
                // An MQTT 5 broker that announces a receive maximum may disconnect a client that
                // sends more QoS 1/2 publishes than that before they are acknowledged.
                let window = match c.receive_maximum {
                    Some(max) => settings.window.min(usize::from(max.max(1))),
                    None => settings.window,
                };
                let mut link = session.link(settings.write_timeout);
                let timing = (c.keep_alive, window);
                let ended = drive(
                    &mut link, &shared, &settings, &stop, resend, timing, statuses, subscribe,
                )
                .await;
                if ended.is_err() {
                    drain(&mut link, &shared, &settings).await;
                }
                ended
            }
            Err(e) => Err(e),
        };
        // Ok: stopped (DISCONNECT sent).
        let Err(error) = ended else { return };
        if error.kind() == ErrorKind::Fatal {
            status.send_replace(Status {
                connected: false,
                last_error: None,
                fatal: Some(error.to_string()),
            });
            shared.tracker.lock().failed = Some(error);
            shared.changed.notify_waiters();
            return;
        }
        if let Some(births) = &shared.births {
            // BIRTHs are QoS 0 and not retained: one published while we are away is lost to us,
            // so what we learned may turn stale. Names until the next BIRTH we receive.
            births.forget_all();
        }
        {
            let mut t = shared.tracker.lock();
            if t.answers > answers_before {
                // The connection made progress: the next one is tried soon.
                backoff.reset();
            }
            t.disconnected();
            if subscribe && t.subscribe_drops >= SUBSCRIBE_DROPS {
                subscribe = false;
                warn!(client_id = %settings.client_id, drops = t.subscribe_drops, "BIRTH subscription refused by the broker (it closed the connection before answering it); not subscribing again: commands carry metric names");
            }
        }
        status.send_replace(Status {
            connected: false,
            last_error: Some(error.to_string()),
            fatal: None,
        });
        shared.changed.notify_waiters();
        connector_mqtt_common::count_reconnect(&settings.counters, &error);
        let delay = backoff.next_delay();
        let stopped = stop.cancelled();
        if !pause_before_reconnect(&mut session, &error, delay, stopped).await {
            return;
        }
    }
}

/// Drives one established connection until it ends.
#[allow(clippy::too_many_arguments)]
async fn drive(
    link: &mut Link<'_>,
    shared: &Shared,
    settings: &LoopSettings,
    stop: &CancellationToken,
    resend: Vec<Outbound>,
    (keep_alive, window): (Duration, usize),
    (online, offline): (Option<Message>, Option<Message>),
    subscribe: bool,
) -> Result<(), Error> {
    if let Some(online) = online {
        link.write(Outbound::Publish(online)).await?;
    }
    // Exactly once: what goes out again (PUBLISH with DUP, PUBREL) is what the saved state says.
    persist(shared, settings, stop, false).await?;
    halt_if_stopped(settings, stop)?;
    for packet in resend {
        link.write(packet).await?;
    }
    if subscribe {
        let reserved = shared.tracker.lock().reserve_pkid();
        match reserved {
            Some(pkid) => {
                let filters =
                    settings.subscribe.iter().map(|f| (f.clone(), QoS::AtLeastOnce)).collect();
                link.write(Outbound::Subscribe { pkid, filters }).await?;
            }
            None => {
                warn!(client_id = %settings.client_id, "every packet id is in flight: not subscribing to BIRTHs on this connection");
            }
        }
    }
    link.flush().await?;
    let mut keepalive = tokio::time::interval(keep_alive.max(Duration::from_secs(1)));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    // Backlog publishes wait for the SUBACK (see `Tracker::awaiting_suback`), this long at most.
    let suback_deadline = tokio::time::Instant::now() + SUBACK_TIMEOUT;
    let mut out: Vec<Outbound> = Vec::new();
    // Exactly once: when the state changed with nothing to write (see `DEFERRED_SAVE`).
    let mut deferred_save: Option<tokio::time::Instant> = None;
    loop {
        // Send what the window allows, in one write.
        let oversize = {
            let mut t = shared.tracker.lock();
            t.take_sendable(window, &mut out);
            t.has_refused()
        };
        if oversize {
            // Over the maximum packet size: the sink task hands it to the error policy.
            shared.changed.notify_waiters();
        }
        if !out.is_empty() {
            // Exactly once: "offset O is being sent as packet id P" is saved before the PUBLISH.
            if persist(shared, settings, stop, false).await? {
                crash_point("sink.sent_saved");
            }
            halt_if_stopped(settings, stop)?;
            for packet in out.drain(..) {
                link.write(packet).await?;
            }
            link.flush().await?;
            if settings.state.is_some() {
                crash_point("sink.published");
            }
            // QoS 0 publishes are done once written.
            shared.tracker.lock().written();
            shared.changed.notify_waiters();
        }
        let awaiting_suback = shared.tracker.lock().awaiting_suback();
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                link.disconnect(offline).await?;
                debug!(client_id = %settings.client_id, "DISCONNECT sent");
                return Ok(());
            }
            () = tokio::time::sleep_until(suback_deadline), if awaiting_suback => {
                shared.tracker.lock().stop_waiting_for_suback();
                warn!(client_id = %settings.client_id, timeout_ms = SUBACK_TIMEOUT.as_millis(), "no SUBACK for the BIRTH subscription yet: publishing without waiting for it");
            }
            // Before reading: a flood of BIRTHs must not starve the keep-alive.
            // Fails when the previous ping got no answer: the connection is dead.
            _ = keepalive.tick() => link.ping().await?,
            () = tokio::time::sleep_until(deferred_save.unwrap_or_else(tokio::time::Instant::now)), if deferred_save.is_some() => {
                deferred_save = None;
                persist(shared, settings, stop, true).await?;
            }
            () = shared.work.notified() => {}
            packet = link.read() => {
                let mut next = Some(packet);
                let mut batch = 0usize;
                let mut rels = Vec::new();
                while let Some(packet) = next.take() {
                    batch += 1;
                    match packet? {
                        Inbound::PubAck(pkid) | Inbound::PubComp(pkid) => {
                            shared.tracker.lock().acknowledged(pkid);
                            if settings.state.is_some() {
                                crash_point("sink.completed");
                            }
                        }
                        Inbound::PubRec(pkid) => {
                            let rel = shared.tracker.lock().received(pkid);
                            if settings.state.is_some() {
                                // Exactly once: sent once the state says the broker has it.
                                rels.push(rel);
                            } else {
                                link.write(rel).await?;
                            }
                        }
                        Inbound::Refused(refusal) => refused(shared, settings, &refusal),
                        // Unsolicited (BIRTHs the broker may have sent before it read our last
                        // publish): not "heard", or a drop on a probe would never be pinned.
                        Inbound::Publish(m) => {
                            learn(shared, settings, &m.topic, &m.payload);
                            if let Some(ack) = ack_received(m.qos, m.pkid) {
                                link.write(ack).await?;
                            }
                        }
                        Inbound::Oversize { message, size } => {
                            warn!(client_id = %settings.client_id, topic = %message.topic, size, "a message over max_packet_size from the subscription; not learned from");
                            if let Some(ack) = ack_received(message.qos, message.pkid) {
                                link.write(ack).await?;
                            }
                        }
                        Inbound::PubRel(pkid) => {
                            link.write(Outbound::PubComp(pkid)).await?;
                        }
                        // Answers our SUBSCRIBE, which went out before any backlog publish of
                        // this connection was written (they wait for it), or after the probe
                        // of a kept session: the broker read past the probe.
                        Inbound::SubAck { pkid, refused } => {
                            let mut t = shared.tracker.lock();
                            t.heard();
                            t.released(pkid);
                            drop(t);
                            for (i, reason) in refused {
                                let filter = settings.subscribe.get(i).map_or("?", String::as_str);
                                warn!(client_id = %settings.client_id, filter, reason = %reason, "the MQTT broker refused the BIRTH subscription: commands to these nodes carry metric names, not aliases");
                            }
                        }
                        // An answer: the connection works (for the reconnect backoff), and
                        // a drop after it is not pinned on a probe.
                        Inbound::PingResp => {
                            let mut t = shared.tracker.lock();
                            t.answers += 1;
                            t.heard();
                        }
                        Inbound::Disconnect(reason) => {
                            // A reason about the connection (shutting down, session taken
                            // over, ...) explains the drop: no strike for a probe in flight.
                            // One that can be about a publish (packet too large, topic name
                            // invalid, ...) may be the probe's fault: it counts as unexplained.
                            if !may_blame_a_publish(&reason) {
                                shared.tracker.lock().heard();
                            }
                            return Err(Error::retriable(format!(
                                "MQTT broker {} closed the connection: {reason}",
                                settings.url
                            )));
                        }
                        other => {
                            shared.tracker.lock().heard();
                            debug!(packet = ?other, "ignoring an unexpected packet");
                        }
                    }
                    // Bounded: under a flood of BIRTHs the loop still flushes our answers,
                    // sends publishes (acknowledgements made room), requests commits and pings.
                    if batch >= INBOUND_BATCH {
                        break;
                    }
                    next = link.read_buffered();
                }
                // Exactly once: "the broker has O under P" is saved before the PUBRELs (one save
                // for the batch); PUBCOMPs ride along with it or the next save, at the latest
                // after DEFERRED_SAVE.
                if persist(shared, settings, stop, false).await? && !rels.is_empty() {
                    crash_point("sink.received_saved");
                }
                if deferred_save.is_none() && shared.tracker.lock().state_dirty() {
                    deferred_save = Some(tokio::time::Instant::now() + DEFERRED_SAVE);
                }
                if !rels.is_empty() {
                    halt_if_stopped(settings, stop)?;
                }
                let released = !rels.is_empty();
                for rel in rels {
                    link.write(rel).await?;
                }
                link.flush().await?;
                if released {
                    crash_point("sink.released");
                }
                shared.changed.notify_waiters();
                settings.commit.request();
                if batch >= INBOUND_BATCH {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Exactly once: once the task is stopping, nothing more is saved or written (a newer instance
/// of the task may have loaded the state already: a save or a PUBLISH/PUBREL of ours would mix
/// with its own). The connection ends without a DISCONNECT, like a crash, which the protocol
/// covers: what was saved is finished by the next instance.
fn halt_if_stopped(settings: &LoopSettings, stop: &CancellationToken) -> Result<(), Error> {
    if settings.state.is_some() && stop.is_cancelled() {
        return Err(Error::retriable(
            "the MQTT sink task is stopping: nothing more is saved or written",
        ));
    }
    Ok(())
}

/// Attempts at saving the exactly-once state before the connection is given up on.
const SAVE_ATTEMPTS: u32 = 5;

/// Exactly once: saves the tracker's state when something about to be written needs it (or,
/// when `idle`, when it changed at all). `Ok(true)` when a state was saved. A failed save is
/// retried with backoff a few times; then the connection ends (and the state is saved before
/// anything is written on the next one).
async fn persist(
    shared: &Shared,
    settings: &LoopSettings,
    stop: &CancellationToken,
    idle: bool,
) -> Result<bool, Error> {
    let Some(state) = &settings.state else { return Ok(false) };
    let Some((stored, throughs)) = shared.tracker.lock().state_to_save(idle) else {
        return Ok(false);
    };
    let map = stored.to_map(&settings.client_id)?;
    let mut backoff = Backoff::new(settings.backoff);
    loop {
        if let Err(e) = halt_if_stopped(settings, stop) {
            shared.tracker.lock().state_not_saved();
            return Err(e);
        }
        match state.save(&map).await {
            Ok(()) => {
                shared.tracker.lock().state_saved(throughs);
                // The offsets the state now covers may be committed.
                settings.commit.request();
                return Ok(true);
            }
            Err(e) if e.is_retriable() && backoff.attempts() + 1 < SAVE_ATTEMPTS => {
                warn!(client_id = %settings.client_id, error = %e.report(), "saving the exactly-once state failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) if e.is_retriable() => {
                shared.tracker.lock().state_not_saved();
                return Err(e);
            }
            Err(e) => {
                // Refused for good (a state too large for the store, say): reconnecting would
                // only be refused again. The task fails.
                shared.tracker.lock().state_not_saved();
                return Err(Error::fatal(format!(
                    "the offset store refused the exactly-once state of MQTT session {}: {}",
                    settings.client_id,
                    e.report()
                )));
            }
        }
    }
}

/// Our answer to a message the broker delivered: PUBACK (QoS 1), PUBREC (QoS 2; PUBCOMP follows
/// its PUBREL), none for QoS 0.
fn ack_received(qos: QoS, pkid: u16) -> Option<Outbound> {
    match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Outbound::PubAck(pkid)),
        QoS::ExactlyOnce => Some(Outbound::PubRec(pkid)),
    }
}

/// Feeds a delivered message into the BIRTH state, counting what it was.
fn learn(shared: &Shared, settings: &LoopSettings, topic: &str, payload: &[u8]) {
    let Some(births) = &shared.births else { return };
    let now_ms = u64::try_from(connector_core::Timestamp::now().as_millis()).unwrap_or(0);
    match births.learn(topic, payload, now_ms) {
        Learned::Birth => {
            debug!(client_id = %settings.client_id, topic, "learned a Sparkplug BIRTH");
            settings
                .counters
                .counter(
                    "sparkplug_births_learned",
                    "Sparkplug NBIRTH/DBIRTH messages the sink learned aliases and datatypes from",
                    None,
                )
                .inc();
        }
        Learned::Ignored => {}
        // Debug, not warn: one per BIRTH, and commands still go out (by name).
        Learned::Invalid(reason) => {
            debug!(client_id = %settings.client_id, topic, reason = %reason, "a Sparkplug BIRTH the sink cannot learn from; commands to it carry metric names");
            settings
                .counters
                .counter(
                    "sparkplug_births_unusable",
                    "Sparkplug BIRTHs the sink could not learn from (undecodable, over max_nodes, a table Sparkplug forbids)",
                    None,
                )
                .inc();
        }
    }
}

/// Whether an MQTT 5 DISCONNECT reason (as [`Inbound::Disconnect`] words it) can be caused by
/// one publish, so that a probe in flight may be to blame.
fn may_blame_a_publish(reason: &str) -> bool {
    const PUBLISH_REASONS: [&str; 9] = [
        "UnspecifiedError",
        "MalformedPacket",
        "ProtocolError",
        "ImplementationSpecificError",
        "NotAuthorized",
        "TopicNameInvalid",
        "PacketTooLarge",
        "QuotaExceeded",
        "PayloadFormatInvalid",
    ];
    PUBLISH_REASONS.iter().any(|r| reason.starts_with(r))
}

/// The broker refused a publish: no PUBREL follows a refused PUBREC; the sink task hands the
/// record to the error policy.
fn refused(shared: &Shared, settings: &LoopSettings, refusal: &Refusal) {
    warn!(client_id = %settings.client_id, pkid = refusal.pkid, refusal = %refusal, "the MQTT broker refused a publish");
    settings
        .counters
        .counter(
            "mqtt_publish_refused",
            "Publishes the MQTT broker refused (PUBACK/PUBREC reason code >= 0x80), by reason",
            Some(("reason", refusal.reason_label())),
        )
        .inc();
    shared.tracker.lock().refused(refusal);
}

/// Reads what the broker sent before the connection broke (a broker may answer with a refusal
/// and close at once), for at most [`DRAIN_LIMIT`]. Nothing is written: a QoS 2 publish whose
/// PUBREC arrives here gets its PUBREL on the next connection if the session is kept, and is
/// published again otherwise.
async fn drain(link: &mut Link<'_>, shared: &Shared, settings: &LoopSettings) {
    let read_all = async {
        while let Ok(packet) = link.read().await {
            match packet {
                Inbound::PubAck(pkid) | Inbound::PubComp(pkid) => {
                    shared.tracker.lock().acknowledged(pkid);
                }
                Inbound::PubRec(pkid) => {
                    shared.tracker.lock().received(pkid);
                }
                Inbound::Refused(refusal) => refused(shared, settings, &refusal),
                Inbound::Disconnect(reason) if may_blame_a_publish(&reason) => {}
                // Unsolicited: proves nothing about the probe.
                Inbound::Publish(_) | Inbound::Oversize { .. } | Inbound::PubRel(_) => {}
                // Read after the probe was written: the drop is not pinned on it.
                _ => shared.tracker.lock().heard(),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_LIMIT, read_all).await;
    shared.changed.notify_waiters();
}
