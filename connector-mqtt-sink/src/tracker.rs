//! [`Tracker`]: what became of every publish, from `put` to the broker's acknowledgement, and so
//! which Kafka offsets are safe to commit.
//!
//! Publishes wait in the backlog until the event loop sends them, at most `window` in flight. It
//! gives each a packet id and keeps it in flight until PUBACK (QoS 1) or PUBCOMP (QoS 2, after
//! the broker's PUBREC and our PUBREL). QoS 0 publishes are done once written to the socket.
//!
//! A publish the broker **refuses** (an MQTT 5 acknowledgement with a failure reason code), or
//! one too large for the broker's or our maximum packet size, is not done: it moves to the
//! refused list, and its offset stays uncommitted until the sink task has handed it to the error
//! policy (dead-letter topic, or the connector fails). A refused PUBREC gets no PUBREL.
//!
//! After a reconnect there are two cases:
//! * The broker **kept the session**: the in-flight publishes are sent again under their packet
//!   ids with the DUP flag, as MQTT requires (QoS 2 ones the broker already received get their
//!   PUBREL again), then the backlog. After an unexplained drop only the oldest suspect (see
//!   below) is sent again at first, alone; the others stay in flight under their ids and are
//!   sent again once it is acknowledged.
//! * The broker **kept no session**: every unacknowledged publish goes back to the front of the
//!   backlog, in original order, and is sent again under a new packet id. When the connection
//!   dropped with publishes in flight and no refusal to explain it, those publishes are
//!   *suspects*: each is sent alone (nothing else in flight) until acknowledged, so that a drop
//!   is attributed to exactly one publish. One that alone caused [`MAX_STRIKES`] drops (a
//!   broker that closes the connection on it, as MQTT 3.1.1 brokers do for a packet over their
//!   limit) is refused instead of being sent forever.
//!
//! A drop counts as a strike only if nothing at all was read from the broker after the suspect
//! was written (no acknowledgement, no PINGRESP, no DISCONNECT): a broker that answered
//! something first, or closed the connection with a DISCONNECT and its reason, was still
//! talking to us after reading it, so the drop is not pinned on the publish.
//!
//! Either way nothing is lost, and a publish whose acknowledgement was lost may arrive twice.
//! A record handed over twice (a `put` retried with the same records) is counted twice: its
//! offset is done only when both copies are.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// The maps looked up for every message (by packet id, by partition): foldhash, randomly
/// seeded, instead of SipHash (~5 lookups per message; issue 18).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use crate::exactly_once::{At, Done, Eos, Released, Sent, Stored};

use bytes::Bytes;
use connector_core::{Error, SinkRecord, TopicPartition};
use connector_mqtt_common::{Message, Outbound, PublishProperties, Refusal};
use rumqttc::QoS;

/// Connection drops one publish, sent alone, may cause before it is refused.
pub(crate) const MAX_STRIKES: u8 = 3;

/// One record to publish.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    pub(crate) seq: u64,
    pub(crate) tp: TopicPartition,
    pub(crate) offset: i64,
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// MQTT 5 properties (`None` on 3.1.1).
    pub(crate) properties: Option<Box<PublishProperties>>,
    /// Size of its PUBLISH packet in bytes.
    pub(crate) size: usize,
    /// The record it came from (for the error policy: key, value and headers as read).
    pub(crate) record: SinkRecord,
    /// In flight when a connection dropped unexplained: sent alone until acknowledged.
    pub(crate) suspect: bool,
    /// Connection drops while it was in flight alone.
    pub(crate) strikes: u8,
}

impl Publication {
    fn packet(&self, pkid: u16, dup: bool) -> Outbound {
        Outbound::Publish(Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            dup,
            pkid,
            properties: self.properties.clone(),
        })
    }
}

/// A publish that cannot be delivered, waiting for the error policy.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) publication: Publication,
    /// Why (a record error naming the MQTT topic and the broker's reason).
    pub(crate) error: Error,
    /// `__connect.errors.*` headers for its dead letter.
    pub(crate) context: Vec<(&'static str, String)>,
}

/// A publish sent and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    publication: Publication,
    /// QoS 2: the broker sent PUBREC and we sent PUBREL; waiting for PUBCOMP.
    released: bool,
}

/// The state of every publish not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Tracker {
    next_seq: u64,
    last_pkid: u16,
    /// Waiting to be sent.
    backlog: VecDeque<Publication>,
    /// Sent, waiting for PUBACK/PUBCOMP, by packet id.
    inflight: FastMap<u16, InFlight>,
    /// QoS 0 publishes handed to the event loop, done once written out.
    unwritten: Vec<Publication>,
    /// Refused or undeliverable, waiting for the sink task to hand them to the error policy.
    refused: VecDeque<Refused>,
    /// Copies not yet done, per offset, per partition.
    unacked: FastMap<TopicPartition, BTreeMap<i64, u32>>,
    /// The suspect in flight alone, if any (nothing else is sent meanwhile).
    probing: Option<u16>,
    /// Some packet from the broker was read since the probe was written: a drop now is not
    /// pinned on the probe (no strike).
    heard: bool,
    /// Kept session: in-flight publishes (by packet id, oldest first) to send again with DUP
    /// once the probe is acknowledged. Still in `inflight` meanwhile.
    held: Vec<u16>,
    /// A refusal arrived on the current connection: a drop right after it is explained.
    explained: bool,
    /// The packet id of our SUBSCRIBE waiting for its SUBACK (`format = "sparkplug_b"` learning
    /// BIRTHs): no publish may use it meanwhile.
    reserved: Option<u16>,
    /// No backlog publish is sent until the SUBSCRIBE's SUBACK arrived (or the event loop gave up
    /// waiting for it): a SUBACK read after a probe was written then proves the broker read
    /// past the probe, and a drop before it is not pinned on a publish.
    awaiting_suback: bool,
    /// Connections in a row that dropped while our SUBSCRIBE was unanswered.
    pub(crate) subscribe_drops: u8,
    /// Largest PUBLISH packet that may be sent now (ours, or the broker's if smaller).
    pub(crate) max_packet: usize,
    pub(crate) connected: bool,
    pub(crate) failed: Option<Error>,
    /// Publishes sent again under a new packet id after a session was lost.
    pub(crate) republished: u64,
    /// Acknowledgements, refusals and ping answers received so far (a connection that got one
    /// worked, so the reconnect backoff starts over).
    pub(crate) answers: u64,
    /// `exactly_once = true`: the packet-id state the event loop saves (see
    /// [`exactly_once`](crate::exactly_once)).
    eos: Option<Eos>,
    /// Exactly once: records sent before a crash, to send again under their packet id (DUP).
    resend: Vec<(u16, Publication)>,
    /// Exactly once: records of the loaded state's pending PUBRELs, come again, waiting for
    /// their PUBCOMP (published again if the session is lost), by packet id.
    rel_held: FastMap<u16, Publication>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Tracker {
    /// A tracker sending packets of at most `max_packet` bytes.
    pub(crate) fn new(max_packet: usize) -> Self {
        Self {
            next_seq: 0,
            last_pkid: 0,
            backlog: VecDeque::new(),
            inflight: FastMap::default(),
            unwritten: Vec::new(),
            refused: VecDeque::new(),
            unacked: FastMap::default(),
            probing: None,
            heard: false,
            held: Vec::new(),
            explained: false,
            reserved: None,
            awaiting_suback: false,
            subscribe_drops: 0,
            max_packet,
            connected: false,
            failed: None,
            republished: 0,
            answers: 0,
            eos: None,
            resend: Vec::new(),
            rel_held: FastMap::default(),
        }
    }

    /// Exactly once, resuming from the saved state `stored` (empty on the first run).
    pub(crate) fn exactly_once(&mut self, stored: Stored) {
        self.eos = Some(Eos::restore(stored));
    }

    /// Exactly once: whether the record at `offset` of `tp` is done or already handed over, so
    /// it must not be published (again).
    pub(crate) fn handled(&self, tp: &TopicPartition, offset: i64) -> bool {
        self.eos.as_ref().is_some_and(|e| e.handled(tp, offset))
    }

    /// Exactly once: the record at `offset` of `tp` is not published (a tombstone skipped, an
    /// expired command). If it was sent before a crash, its packet id is released with a PUBREL
    /// (the broker completes it, or answers PUBCOMP for an id it does not hold) and it is done.
    pub(crate) fn skipped(&mut self, tp: &TopicPartition, offset: i64) {
        let Some(e) = &mut self.eos else { return };
        if e.release(tp, offset) {
            e.finished.entry(tp.clone()).or_default().insert(offset);
        }
    }

    /// Exactly once: the record at `offset` of `tp` is about to be offered to `put` (or, from
    /// `pre_commit`, the next offset to offer). A record sent before a crash at a lower offset
    /// that did not come again will not come in this run: its packet id is released.
    pub(crate) fn offering(&mut self, tp: &TopicPartition, offset: i64) {
        if let Some(e) = &mut self.eos {
            e.release_below(tp, offset);
        }
    }

    /// Exactly once: `put` refused the record at `offset` of `tp` (the error policy gets it).
    /// If it was sent before a crash, its packet id is released, so that it never pins the
    /// state; whether its offset is done is the error policy's matter, as for any record.
    pub(crate) fn not_published(&mut self, tp: &TopicPartition, offset: i64) {
        if let Some(e) = &mut self.eos {
            e.release(tp, offset);
        }
    }

    /// Exactly once: packet ids the state may still hold for other publishes.
    fn state_holds(&self, pkid: u16) -> bool {
        self.resend.iter().any(|(p, _)| *p == pkid)
            || self.eos.as_ref().is_some_and(|e| {
                e.pending_rels.contains(&pkid) || e.restored.values().any(|p| *p == pkid)
            })
    }

    fn changed(&mut self, must_save: bool) {
        if let Some(e) = &mut self.eos {
            e.dirty = true;
            e.must_save |= must_save;
        }
    }

    /// Exactly once: the state to save before writing what was taken (`Some` when anything must
    /// be saved first, or anything changed and `idle`).
    pub(crate) fn state_to_save(
        &mut self,
        idle: bool,
    ) -> Option<(Stored, HashMap<TopicPartition, i64>)> {
        let e = self.eos.as_ref()?;
        if !(e.must_save || (idle && e.dirty)) {
            return None;
        }
        let mut sent = Vec::new();
        let mut released = Vec::new();
        let at = |p: &Publication| At {
            topic: p.tp.topic.to_string(),
            partition: p.tp.partition,
            offset: p.offset,
        };
        for (pkid, f) in &self.inflight {
            if f.released {
                released.push(Released { pkid: *pkid, record: Some(at(&f.publication)) });
            } else {
                let p = &f.publication;
                sent.push(Sent {
                    pkid: *pkid,
                    topic: p.tp.topic.to_string(),
                    partition: p.tp.partition,
                    offset: p.offset,
                });
            }
        }
        for (pkid, p) in &self.resend {
            sent.push(Sent {
                pkid: *pkid,
                topic: p.tp.topic.to_string(),
                partition: p.tp.partition,
                offset: p.offset,
            });
        }
        let e = self.eos.as_mut()?;
        for ((tp, offset), pkid) in &e.restored {
            sent.push(Sent {
                pkid: *pkid,
                topic: tp.topic.to_string(),
                partition: tp.partition,
                offset: *offset,
            });
        }
        let mut rel_at: HashMap<u16, At> = e
            .rel_records
            .iter()
            .map(|((tp, o), p)| {
                (*p, At { topic: tp.topic.to_string(), partition: tp.partition, offset: *o })
            })
            .collect();
        for (pkid, p) in &self.rel_held {
            rel_at.insert(*pkid, at(p));
        }
        released
            .extend(e.pending_rels.iter().map(|p| Released { pkid: *p, record: rel_at.remove(p) }));
        sent.sort_by_key(|s| s.pkid);
        released.sort_unstable_by_key(|r| r.pkid);
        let mut tps: Vec<TopicPartition> = self
            .unacked
            .keys()
            .chain(e.last_added.keys())
            .chain(e.loaded_through.keys())
            .chain(e.finished.keys())
            .chain(e.restored.keys().map(|(tp, _)| tp))
            .chain(e.rel_records.keys().map(|(tp, _)| tp))
            .cloned()
            .collect();
        tps.sort();
        tps.dedup();
        let mut done = Vec::new();
        let mut throughs = HashMap::new();
        for tp in tps {
            let first = self.unacked.get(&tp).and_then(|s| s.first_key_value()).map(|(o, _)| *o);
            let through = e.through(&tp, first);
            let finished = e.finished.entry(tp.clone()).or_default();
            finished.retain(|o| *o >= through);
            done.push(Done {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                through,
                above: finished.iter().copied().collect(),
            });
            throughs.insert(tp, through);
        }
        e.dirty = false;
        e.must_save = false;
        Some((Stored { sent, released, done }, throughs))
    }

    /// Exactly once: the state taken by [`state_to_save`](Self::state_to_save) is saved.
    pub(crate) fn state_saved(&mut self, throughs: HashMap<TopicPartition, i64>) {
        if let Some(e) = &mut self.eos {
            e.persisted = throughs;
            e.saves += 1;
        }
    }

    /// Exactly once: saving the state failed; it is saved again before anything more is written.
    pub(crate) fn state_not_saved(&mut self) {
        self.changed(true);
    }

    /// Exactly once: whether the state changed since it was last saved.
    pub(crate) fn state_dirty(&self) -> bool {
        self.eos.as_ref().is_some_and(|e| e.dirty)
    }

    /// Exactly once: state saves so far.
    pub(crate) fn saves(&self) -> u64 {
        self.eos.as_ref().map_or(0, |e| e.saves)
    }

    /// Publishes not yet done: waiting, in flight, being written, or refused and not yet handled.
    pub(crate) fn pending(&self) -> usize {
        self.backlog.len()
            + self.inflight.len()
            + self.unwritten.len()
            + self.refused.len()
            + self.resend.len()
            + self.rel_held.len()
    }

    /// Registers a record to publish (its `seq` is assigned here).
    pub(crate) fn add(&mut self, mut p: Publication) {
        p.seq = self.next_seq;
        self.next_seq += 1;
        *self.unacked.entry(p.tp.clone()).or_default().entry(p.offset).or_default() += 1;
        if let Some(e) = &mut self.eos {
            e.added(&p.tp, p.offset);
            if let Some(pkid) = e.restored.remove(&(p.tp.clone(), p.offset)) {
                // Sent before a crash: again under its packet id, with DUP.
                self.resend.push((pkid, p));
                return;
            }
            if let Some(pkid) = e.rel_records.remove(&(p.tp.clone(), p.offset)) {
                // The broker has it and our PUBREL is pending: done at its PUBCOMP.
                self.rel_held.insert(pkid, p);
                return;
            }
        }
        self.backlog.push_back(p);
    }

    /// The next packet id not in flight (at most `window` <= 65535 are).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = if self.last_pkid == u16::MAX { 1 } else { self.last_pkid + 1 };
            if !self.inflight.contains_key(&self.last_pkid)
                && self.reserved != Some(self.last_pkid)
                && !self.state_holds(self.last_pkid)
            {
                return self.last_pkid;
            }
        }
    }

    /// A packet id for a SUBSCRIBE, not used by any publish until [`released`](Self::released)
    /// (or the next connection); `None` while every id is in flight (a kept session with 65,535
    /// publishes in flight; `validate` keeps `inflight` below that when the sink subscribes).
    pub(crate) fn reserve_pkid(&mut self) -> Option<u16> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        let pkid = self.next_pkid();
        self.reserved = Some(pkid);
        self.awaiting_suback = true;
        Some(pkid)
    }

    /// The SUBACK for `pkid` arrived: publishes may use the id again.
    pub(crate) fn released(&mut self, pkid: u16) {
        if self.reserved == Some(pkid) {
            self.reserved = None;
            self.awaiting_suback = false;
            self.subscribe_drops = 0;
        }
    }

    /// Whether backlog publishes wait for the SUBACK of our SUBSCRIBE.
    pub(crate) fn awaiting_suback(&self) -> bool {
        self.awaiting_suback
    }

    /// The SUBACK is late: publishes go out without waiting for it (its packet id stays
    /// reserved until it arrives or the connection ends).
    pub(crate) fn stop_waiting_for_suback(&mut self) {
        self.awaiting_suback = false;
    }

    /// Moves publishes from the backlog into flight while fewer than `window` are, appending their
    /// packets to `out`. QoS 0 publishes are done once [`written`](Self::written). A publish over
    /// the maximum packet size is refused here, never sent. A suspect goes out only alone.
    pub(crate) fn take_sendable(&mut self, window: usize, out: &mut Vec<Outbound>) {
        if !self.connected || self.awaiting_suback {
            return;
        }
        // Exactly once: records sent before a crash, under their packet ids (the broker counts
        // them already: outside the window).
        if let Some(e) = &mut self.eos {
            out.extend(e.release_now.drain(..).map(Outbound::PubRel));
        }
        for (pkid, p) in std::mem::take(&mut self.resend) {
            out.push(p.packet(pkid, true));
            self.inflight.insert(pkid, InFlight { publication: p, released: false });
            self.changed(true);
        }
        if self.probing.is_none() {
            // Kept session: the probe was acknowledged; the held publishes go out again now.
            for pkid in std::mem::take(&mut self.held) {
                if let Some(f) = self.inflight.get(&pkid) {
                    out.push(f.publication.packet(pkid, true));
                }
            }
        }
        // A packet id reserved for a SUBSCRIBE is one fewer for publishes.
        let ids = usize::from(u16::MAX) - usize::from(self.reserved.is_some());
        while self.inflight.len() < window.min(ids)
            && self.probing.is_none()
            && self.state_room(window)
        {
            let Some(front) = self.backlog.front() else { break };
            let probe = front.suspect && front.qos != QoS::AtMostOnce;
            if probe && !self.inflight.is_empty() {
                // Alone, or a drop could not be pinned on it.
                break;
            }
            let Some(p) = self.backlog.pop_front() else { break };
            if p.size > self.max_packet {
                let why = format!(
                    "its PUBLISH of {} bytes to MQTT topic {} exceeds the maximum packet size of {} bytes (the broker's or max_packet_size)",
                    p.size, p.topic, self.max_packet
                );
                let context = vec![
                    ("mqtt.topic", p.topic.clone()),
                    ("mqtt.packet.size", p.size.to_string()),
                    ("mqtt.max.packet.size", self.max_packet.to_string()),
                ];
                self.refuse(p, why, context);
                continue;
            }
            if p.qos == QoS::AtMostOnce {
                out.push(p.packet(0, false));
                self.unwritten.push(p);
                continue;
            }
            let pkid = self.next_pkid();
            if probe {
                self.probing = Some(pkid);
                self.heard = false;
            }
            out.push(p.packet(pkid, false));
            self.inflight.insert(pkid, InFlight { publication: p, released: false });
            self.changed(true);
        }
    }

    /// Exactly once: the state stays within the window (publishes in flight, PUBRELs and
    /// packet ids of the loaded state, done offsets above the done-through). With nothing in
    /// flight one more may go, so a state that fills the window cannot stall.
    fn state_room(&self, window: usize) -> bool {
        let Some(e) = &self.eos else { return true };
        let used =
            self.inflight.len() + e.pending_rels.len() + e.restored.len() + e.finished_count();
        used < window || (self.inflight.is_empty() && self.refused.is_empty())
    }

    /// Everything taken by [`take_sendable`](Self::take_sendable) was written out: the QoS 0
    /// publishes among it are done.
    pub(crate) fn written(&mut self) {
        for p in std::mem::take(&mut self.unwritten) {
            self.done(&p);
        }
    }

    /// The broker acknowledged `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2).
    pub(crate) fn acknowledged(&mut self, pkid: u16) {
        self.heard = true;
        if self
            .inflight
            .get(&pkid)
            .is_some_and(|f| f.publication.qos == QoS::ExactlyOnce && !f.released)
        {
            // A PUBCOMP (or PUBACK) for a QoS 2 publish we sent no PUBREL for is not its
            // completion (a stray answer to an earlier use of the id): ignored.
            return;
        }
        if let Some(f) = self.inflight.remove(&pkid) {
            self.answers += 1;
            self.settle_probe(pkid);
            self.changed(false);
            self.done(&f.publication);
            if let Some(e) = &mut self.eos {
                // Exactly once: done at PUBCOMP (not at PUBREC: a broker that loses the session
                // before it has delivered nothing, and the record is published again).
                e.finished
                    .entry(f.publication.tp.clone())
                    .or_default()
                    .insert(f.publication.offset);
            }
        } else if let Some(e) = &mut self.eos {
            // A PUBREL of the loaded state completed.
            if e.pending_rels.remove(&pkid) {
                e.dirty = true;
                self.answers += 1;
                if let Some(p) = self.rel_held.remove(&pkid) {
                    e.finished.entry(p.tp.clone()).or_default().insert(p.offset);
                    self.done(&p);
                } else if let Some(k) =
                    e.rel_records.iter().find(|(_, p)| **p == pkid).map(|(k, _)| k.clone())
                {
                    e.rel_records.remove(&k);
                    e.finished.entry(k.0).or_default().insert(k.1);
                }
            }
        }
    }

    /// The broker refused publish `pkid` (MQTT 5 failure reason code): it waits for the error
    /// policy. Its offset is not done.
    pub(crate) fn refused(&mut self, refusal: &Refusal) {
        self.explained = true;
        self.heard = true;
        let Some(f) = self.inflight.remove(&refusal.pkid) else { return };
        self.answers += 1;
        self.changed(false);
        self.settle_probe(refusal.pkid);
        let p = f.publication;
        let why =
            format!("the MQTT broker refused the publish to MQTT topic {}: {refusal}", p.topic);
        let mut context = vec![
            ("mqtt.topic", p.topic.clone()),
            ("mqtt.reason.code", format!("{:#04x}", refusal.code)),
            ("mqtt.reason.name", refusal.name.clone()),
        ];
        if let Some(r) = &refusal.reason {
            context.push(("mqtt.reason.string", r.clone()));
        }
        self.refuse(p, why, context);
    }

    /// A packet other than an acknowledgement came from the broker (PINGRESP, DISCONNECT, ...):
    /// the connection was alive after the probe was written, so a drop now earns no strike.
    pub(crate) fn heard(&mut self) {
        self.heard = true;
    }

    fn settle_probe(&mut self, pkid: u16) {
        if self.probing == Some(pkid) {
            self.probing = None;
        }
    }

    fn refuse(&mut self, p: Publication, why: String, context: Vec<(&'static str, String)>) {
        let error = Error::rejected(why)
            .with_topic(&*p.record.original_topic)
            .with_partition(p.record.partition)
            .with_offset(p.record.offset);
        self.refused.push_back(Refused { publication: p, error, context });
    }

    /// The oldest refused publish, for the error policy. Its offset stays not done until
    /// [`settled`](Self::settled).
    pub(crate) fn take_refused(&mut self) -> Option<Refused> {
        self.refused.pop_front()
    }

    /// Refused publishes waiting for the error policy.
    pub(crate) fn has_refused(&self) -> bool {
        !self.refused.is_empty()
    }

    /// The error policy took care of a refused publish (dead letter written, or logged).
    pub(crate) fn settled(&mut self, p: &Publication) {
        self.done(p);
        if let Some(e) = &mut self.eos {
            e.finished.entry(p.tp.clone()).or_default().insert(p.offset);
            e.dirty = true;
        }
    }

    /// The broker received QoS 2 publish `pkid` (PUBREC); returns our PUBREL. (Sent for an
    /// unknown id too, so the broker can drop its state.)
    pub(crate) fn received(&mut self, pkid: u16) -> Outbound {
        self.heard = true;
        let newly = self.inflight.get_mut(&pkid).and_then(|f| {
            let first = !std::mem::replace(&mut f.released, true);
            first.then(|| (f.publication.tp.clone(), f.publication.offset))
        });
        if let (Some(e), Some(_)) = (&mut self.eos, newly) {
            // Exactly once: the broker has it now; the state must say so before the PUBREL (a
            // DUP PUBLISH under its id after the PUBREL would be a new message). Done at PUBCOMP.
            e.dirty = true;
            e.must_save = true;
        }
        Outbound::PubRel(pkid)
    }

    fn done(&mut self, p: &Publication) {
        self.done_offset(&p.tp, p.offset);
    }

    fn done_offset(&mut self, tp: &TopicPartition, offset: i64) {
        let Some(copies) = self.unacked.get_mut(tp) else { return };
        if let Some(n) = copies.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                copies.remove(&offset);
            }
        }
        if copies.is_empty() {
            self.unacked.remove(tp);
        }
    }

    /// The connection is up. With a kept session, appends to `out` what must be sent again first;
    /// without, everything unacknowledged goes back to the front of the backlog in original order.
    pub(crate) fn connected(&mut self, session_present: bool, out: &mut Vec<Outbound>) {
        self.connected = true;
        self.explained = false;
        self.reserved = None;
        self.awaiting_suback = false;
        self.probing = None;
        self.held.clear();
        if let Some(e) = &mut self.eos {
            if session_present {
                // The loaded state's PUBRELs go out again first (those released while
                // disconnected among them: once, not again from `release_now`).
                out.extend(e.pending_rels.iter().map(|p| Outbound::PubRel(*p)));
                e.release_now.clear();
            } else {
                // A new session: the broker knows none of our packet ids. What was sent before
                // the crash is published again under new ids (the broker may deliver it twice:
                // a broker that lost the session loses the guarantee, not the messages).
                // A record whose PUBREC was saved is not done before its PUBCOMP, so it is
                // published again too: a broker delivers a QoS 2 message at PUBREL, so one that
                // lost the session before it delivered nothing.
                e.pending_rels.clear();
                e.restored.clear();
                e.rel_records.clear();
                e.release_now.clear();
                for (_, p) in std::mem::take(&mut self.resend) {
                    self.unwritten.push(p);
                }
                self.republished += self.rel_held.len() as u64;
                self.unwritten.extend(self.rel_held.drain().map(|(_, p)| p));
            }
            e.dirty = true;
            e.must_save = true;
        }
        let mut flying: Vec<(u16, InFlight)> = self.inflight.drain().collect();
        flying.sort_by_key(|(_, f)| f.publication.seq);
        // QoS 0 publishes whose write did not complete go out again (in order).
        let mut unwritten = std::mem::take(&mut self.unwritten);
        if session_present {
            // After an unexplained drop, the oldest suspect is sent again alone (the probe); the
            // other publishes wait in `held` until it is acknowledged, so that a publish the
            // broker drops the connection on earns its strikes here too instead of being sent
            // again with the others forever. PUBRELs cannot cause a drop: they go out at once.
            let probe = flying
                .iter()
                .find(|(_, f)| !f.released && f.publication.suspect)
                .map(|(pkid, _)| *pkid);
            for (pkid, f) in flying {
                if f.released {
                    out.push(Outbound::PubRel(pkid));
                } else if probe.is_none() || probe == Some(pkid) {
                    out.push(f.publication.packet(pkid, true));
                } else {
                    self.held.push(pkid);
                }
                self.inflight.insert(pkid, f);
            }
            if probe.is_some() {
                self.probing = probe;
                self.heard = false;
            }
        } else {
            self.republished += flying.len() as u64;
            unwritten.extend(flying.into_iter().map(|(_, f)| f.publication));
        }
        unwritten.sort_by_key(|p| p.seq);
        for p in unwritten.into_iter().rev() {
            self.backlog.push_front(p);
        }
    }

    /// The connection was lost. A suspect in flight alone gets a strike (and is refused at
    /// [`MAX_STRIKES`]) if nothing was read from the broker since it was written; without a
    /// refusal to explain the drop, everything in flight becomes a suspect.
    pub(crate) fn disconnected(&mut self) {
        if !std::mem::replace(&mut self.connected, false) {
            return;
        }
        // A drop after the broker answered something (even a PINGRESP, or a DISCONNECT with its
        // reason) is not pinned on the probe.
        let pinned = !std::mem::replace(&mut self.heard, false);
        self.awaiting_suback = false;
        if self.reserved.take().is_some() {
            // Our SUBSCRIBE was unanswered: the broker may have closed the connection on it (some
            // do on a filter they do not allow), so the drop is pinned on no publish and makes no
            // suspects. The event loop stops subscribing after a few such drops.
            self.subscribe_drops = self.subscribe_drops.saturating_add(1);
            self.probing = None;
            return;
        }
        if let Some(pkid) = self.probing.take().filter(|_| pinned) {
            if let Some(f) = self.inflight.get_mut(&pkid) {
                f.publication.strikes += 1;
                if f.publication.strikes >= MAX_STRIKES && !self.explained {
                    if let Some(f) = self.inflight.remove(&pkid) {
                        let p = f.publication;
                        let why = format!(
                            "the MQTT broker closed the connection {} times right after this publish to MQTT topic {} ({} bytes), sent alone: it will not take it (too large, or not allowed?)",
                            p.strikes, p.topic, p.size
                        );
                        let context = vec![
                            ("mqtt.topic", p.topic.clone()),
                            ("mqtt.packet.size", p.size.to_string()),
                            ("mqtt.connection.drops", p.strikes.to_string()),
                        ];
                        self.refuse(p, why, context);
                    }
                }
            }
        }
        if !self.explained {
            for f in self.inflight.values_mut() {
                f.publication.suspect = true;
            }
        }
    }

    /// Of `offered` (next offset after the last record handed to `put`, per partition), the
    /// offsets that are safe: up to the first publish not yet done.
    pub(crate) fn safe_offsets(
        &self,
        offered: &HashMap<TopicPartition, i64>,
    ) -> HashMap<TopicPartition, i64> {
        offered
            .iter()
            .map(|(tp, o)| {
                let first_unacked =
                    self.unacked.get(tp).and_then(|s| s.first_key_value()).map(|(o, _)| *o);
                let safe = first_unacked.map_or(*o, |u| u.min(*o));
                // Exactly once: never past what the saved state says is done.
                let bound = self.eos.as_ref().and_then(|e| e.commit_bound(tp));
                (tp.clone(), bound.map_or(safe, |b| b.min(safe)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("commands", 0)
    }

    fn publication(offset: i64, qos: QoS) -> Publication {
        let payload = Bytes::from(format!("m{offset}"));
        Publication {
            seq: 0,
            tp: tp(),
            offset,
            topic: "cars/x/cmd".into(),
            payload: payload.clone(),
            qos,
            retain: false,
            properties: None,
            size: 20,
            record: SinkRecord {
                topic: "commands".into(),
                original_topic: "commands".into(),
                partition: 0,
                offset,
                key: None,
                value: Some(payload),
                headers: connector_core::Headers::new(),
                timestamp: connector_core::Timestamp::now(),
            },
            suspect: false,
            strikes: 0,
        }
    }

    fn add(t: &mut Tracker, offset: i64) {
        t.add(publication(offset, QoS::AtLeastOnce));
    }

    fn safe(t: &Tracker, offered: i64) -> i64 {
        t.safe_offsets(&HashMap::from([(tp(), offered)]))[&tp()]
    }

    /// (packet id, payload, dup) of each publish in `packets`; PUBRELs as (id, "rel", false).
    fn sent(packets: &[Outbound]) -> Vec<(u16, String, bool)> {
        packets
            .iter()
            .map(|p| match p {
                Outbound::Publish(p) => (p.pkid, String::from_utf8_lossy(&p.payload).into(), p.dup),
                Outbound::PubRel(pkid) => (*pkid, "rel".into(), false),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_packet_id_reserved_for_a_subscribe_is_not_given_to_a_publish_until_its_suback() {
        let mut t = Tracker::new(1000);
        let mut out = Vec::new();
        t.connected(false, &mut out);
        let reserved = t.reserve_pkid().unwrap();
        for o in 0..3 {
            add(&mut t, o);
        }
        t.take_sendable(10, &mut out);
        assert!(out.is_empty(), "nothing goes out before the SUBACK");
        // The SUBACK is late: the event loop stops waiting; the id stays reserved.
        t.stop_waiting_for_suback();
        t.take_sendable(10, &mut out);
        let ids: Vec<u16> = sent(&out).iter().map(|s| s.0).collect();
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains(&reserved), "{reserved} in {ids:?}");
        t.released(reserved);
        t.last_pkid = reserved - 1;
        add(&mut t, 3);
        out.clear();
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out)[0].0, reserved, "free again after the SUBACK");
    }

    #[test]
    fn a_drop_while_the_subscribe_is_unanswered_strikes_no_publish() {
        let mut t = Tracker::new(1000);
        let mut out = Vec::new();
        // A probe from an unexplained drop.
        t.connected(false, &mut out);
        add(&mut t, 0);
        t.take_sendable(10, &mut out);
        t.disconnected();
        for drop in 1..=3u8 {
            out.clear();
            t.connected(false, &mut out);
            let pkid = t.reserve_pkid().unwrap();
            t.take_sendable(10, &mut out);
            assert!(out.is_empty(), "no probe before the SUBACK");
            if drop == 3 {
                // SUBACK, then the probe; the broker closes on the probe: a strike each time.
                t.heard();
                t.released(pkid);
                assert_eq!(t.subscribe_drops, 0);
                t.take_sendable(10, &mut out);
                assert_eq!(out.len(), 1);
            } else {
                // The broker closes before answering the SUBSCRIBE: no strike.
                t.disconnected();
                assert_eq!(t.subscribe_drops, drop);
            }
        }
        t.disconnected();
        for _ in 0..2 {
            out.clear();
            t.connected(false, &mut out);
            t.take_sendable(10, &mut out);
            assert_eq!(out.len(), 1, "the probe alone");
            t.disconnected();
        }
        let refused = t.take_refused().expect("refused after 3 strikes, not 5 drops");
        assert_eq!(refused.publication.strikes, MAX_STRIKES);
    }

    #[test]
    fn offsets_are_safe_only_up_to_the_first_unacknowledged_publish() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for o in 10..15 {
            add(&mut t, o);
        }
        let mut out = Vec::new();
        t.take_sendable(100, &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(safe(&t, 15), 10);
        t.acknowledged(2); // offset 11, out of order
        assert_eq!(safe(&t, 15), 10, "11 is done but 10 is not");
        t.acknowledged(1);
        assert_eq!(safe(&t, 15), 12);
        for pkid in 3..=5 {
            t.acknowledged(pkid);
        }
        assert_eq!(safe(&t, 15), 15);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn no_more_than_the_window_is_in_flight_and_ids_are_not_reused_while_in_flight() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for o in 0..5 {
            add(&mut t, o);
        }
        let mut out = Vec::new();
        t.take_sendable(2, &mut out);
        assert_eq!(sent(&out), [(1, "m0".into(), false), (2, "m1".into(), false)]);
        t.acknowledged(2);
        out.clear();
        t.take_sendable(2, &mut out);
        assert_eq!(sent(&out), [(3, "m2".into(), false)], "id 1 is still in flight");
        t.last_pkid = u16::MAX - 1;
        t.acknowledged(3);
        out.clear();
        t.take_sendable(2, &mut out);
        assert_eq!(sent(&out), [(u16::MAX, "m3".into(), false)]);
        t.acknowledged(u16::MAX);
        out.clear();
        t.take_sendable(2, &mut out);
        assert_eq!(sent(&out), [(2, "m4".into(), false)], "wraps past 0, skipping 1");
    }

    #[test]
    fn a_kept_session_gets_the_in_flight_publishes_again_under_their_ids() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        add(&mut t, 0);
        let mut q2 = publication(1, QoS::ExactlyOnce);
        q2.payload = Bytes::from("q2");
        t.add(q2);
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        assert_eq!(t.received(2), Outbound::PubRel(2));
        t.disconnected();
        add(&mut t, 2); // while down: backlog
        out.clear();
        t.take_sendable(10, &mut out);
        assert!(out.is_empty(), "nothing is sent while disconnected");
        t.connected(true, &mut out);
        assert_eq!(sent(&out), [(1, "m0".into(), true), (2, "rel".into(), false)]);
        out.clear();
        t.take_sendable(10, &mut out);
        assert!(out.is_empty(), "the drop was unexplained: m0 is a probe, alone");
        t.acknowledged(1);
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(3, "m2".into(), false)]);
        for pkid in 2..=3 {
            t.acknowledged(pkid);
        }
        assert_eq!(t.pending(), 0);
        assert_eq!(safe(&t, 3), 3);
        assert_eq!(t.republished, 0);
    }

    #[test]
    fn without_a_kept_session_everything_unacknowledged_is_sent_again_in_order() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for o in 0..4 {
            add(&mut t, o);
        }
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        t.acknowledged(1); // offset 0 done
        t.disconnected();
        add(&mut t, 4);
        out.clear();
        t.connected(false, &mut out);
        assert!(out.is_empty());
        assert_eq!(t.republished, 3);
        // The three in flight at the drop are suspects (sent alone), then the window opens.
        let mut rounds = Vec::new();
        while t.pending() > 0 {
            out.clear();
            t.take_sendable(10, &mut out);
            let round: Vec<String> = sent(&out).into_iter().map(|(_, p, _)| p).collect();
            rounds.push(round.join(","));
            for (pkid, _, _) in sent(&out) {
                t.acknowledged(pkid);
            }
        }
        assert_eq!(rounds, ["m1", "m2", "m3", "m4"]);
        assert_eq!(safe(&t, 5), 5);
    }

    #[test]
    fn qos0_publishes_are_done_only_once_written() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        t.add(publication(0, QoS::AtMostOnce));
        assert_eq!(safe(&t, 1), 0);
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(0, "m0".into(), false)]);
        assert_eq!(safe(&t, 1), 0, "taken for sending is not written");
        // The write fails: sent again on the next connection.
        t.disconnected();
        t.connected(false, &mut Vec::new());
        out.clear();
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(0, "m0".into(), false)]);
        t.written();
        assert_eq!(safe(&t, 1), 1);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_record_handed_over_twice_is_done_only_when_both_copies_are() {
        // A put retried with the same records after a retriable error.
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for _ in 0..2 {
            add(&mut t, 0);
            add(&mut t, 1);
        }
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        assert_eq!(out.len(), 4);
        t.acknowledged(1); // the first copy of offset 0
        assert_eq!(safe(&t, 2), 0, "the second copy of 0 is still in flight");
        t.acknowledged(2);
        t.acknowledged(3);
        assert_eq!(safe(&t, 2), 1, "the second copy of 1 is still in flight");
        t.acknowledged(4);
        assert_eq!(safe(&t, 2), 2);
    }

    fn refusal(pkid: u16) -> Refusal {
        Refusal {
            pkid,
            packet: connector_mqtt_common::AckPacket::PubAck,
            code: 0x87,
            name: "NotAuthorized".into(),
            reason: None,
        }
    }

    #[test]
    fn a_refused_publish_holds_its_offset_until_the_error_policy_took_it() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for o in 0..3 {
            add(&mut t, o);
        }
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        t.acknowledged(1);
        t.refused(&refusal(2));
        t.acknowledged(3);
        assert_eq!(safe(&t, 3), 1, "never committed past a refusal");
        assert_eq!(t.pending(), 1);
        // The broker closes the connection right after the refusal: the refused publish is not
        // sent again, and nothing becomes a suspect.
        t.disconnected();
        t.connected(false, &mut Vec::new());
        out.clear();
        t.take_sendable(10, &mut out);
        assert!(out.is_empty());
        let r = t.take_refused().unwrap();
        assert_eq!(r.publication.offset, 1);
        let msg = r.error.to_string();
        assert!(
            msg.contains("cars/x/cmd") && msg.contains("0x87") && msg.contains("offset=1"),
            "{msg}"
        );
        assert!(r.context.contains(&("mqtt.reason.code", "0x87".into())));
        assert_eq!(safe(&t, 3), 1, "taken for the policy is not settled");
        t.settled(&r.publication);
        assert_eq!(safe(&t, 3), 3);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_publish_over_the_maximum_packet_size_is_refused_not_sent() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        add(&mut t, 0);
        let mut big = publication(1, QoS::AtLeastOnce);
        big.size = 1001;
        t.add(big);
        add(&mut t, 2);
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        let payloads: Vec<String> = sent(&out).into_iter().map(|(_, p, _)| p).collect();
        assert_eq!(payloads, ["m0", "m2"]);
        let r = t.take_refused().unwrap();
        assert!(r.error.to_string().contains("1001 bytes"), "{}", r.error);
    }

    #[test]
    fn after_an_unexplained_drop_suspects_go_alone_and_one_that_keeps_dropping_is_refused() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for o in 0..4 {
            add(&mut t, o);
        }
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        t.acknowledged(1); // offset 0 done; 1 (the poison), 2 and 3 in flight at the drop
        t.disconnected();
        add(&mut t, 4);
        let mut drops = 1;
        loop {
            t.connected(false, &mut Vec::new());
            out.clear();
            t.take_sendable(10, &mut out);
            let payloads: Vec<String> = sent(&out).into_iter().map(|(_, p, _)| p).collect();
            if t.has_refused() {
                break;
            }
            assert_eq!(payloads, ["m1"], "the first suspect, alone");
            t.disconnected(); // it makes the broker drop the connection again
            drops += 1;
            assert!(drops <= 1 + MAX_STRIKES as usize, "refused after {MAX_STRIKES} drops alone");
        }
        assert_eq!(drops, 1 + MAX_STRIKES as usize);
        let r = t.take_refused().unwrap();
        assert_eq!(r.publication.offset, 1);
        // The other suspects follow one at a time, then the normal window.
        let payloads: Vec<String> = sent(&out).into_iter().map(|(_, p, _)| p).collect();
        assert_eq!(payloads, ["m2"]);
        t.acknowledged(sent(&out)[0].0);
        out.clear();
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out).len(), 1, "m3 alone");
        t.acknowledged(sent(&out)[0].0);
        out.clear();
        t.take_sendable(10, &mut out);
        let payloads: Vec<String> = sent(&out).into_iter().map(|(_, p, _)| p).collect();
        assert_eq!(payloads, ["m4"]);
        t.acknowledged(sent(&out)[0].0);
        t.settled(&r.publication);
        assert_eq!(safe(&t, 5), 5);
    }

    #[test]
    fn a_plain_network_flap_only_slows_suspects_down() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for o in 0..3 {
            add(&mut t, o);
        }
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        t.disconnected();
        t.connected(false, &mut Vec::new());
        for _ in 0..3 {
            out.clear();
            t.take_sendable(10, &mut out);
            assert_eq!(out.len(), 1);
            t.acknowledged(sent(&out)[0].0);
        }
        assert!(!t.has_refused());
        assert_eq!(safe(&t, 3), 3);
    }
    #[test]
    fn on_a_kept_session_a_publish_that_keeps_dropping_the_connection_is_refused() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        for o in 0..4 {
            add(&mut t, o);
        }
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        t.acknowledged(1); // offset 0 done; 1 (the poison), 2 and 3 in flight at the drop
        t.disconnected();
        add(&mut t, 4);
        for _ in 0..MAX_STRIKES {
            out.clear();
            t.connected(true, &mut out);
            t.take_sendable(10, &mut out);
            assert_eq!(sent(&out), [(2, "m1".into(), true)], "the oldest suspect, alone");
            t.disconnected(); // it makes the broker drop the connection again
        }
        let r = t.take_refused().expect("refused after MAX_STRIKES drops alone");
        assert_eq!(r.publication.offset, 1);
        // The next suspect goes alone under its id; then the held one and the backlog.
        out.clear();
        t.connected(true, &mut out);
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(3, "m2".into(), true)]);
        t.acknowledged(3);
        out.clear();
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(4, "m3".into(), true), (5, "m4".into(), false)]);
        t.acknowledged(4);
        t.acknowledged(5);
        t.settled(&r.publication);
        assert_eq!(safe(&t, 5), 5);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_kept_session_sends_pubrels_at_once_and_holds_publishes_behind_the_probe() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        t.add(publication(0, QoS::ExactlyOnce));
        add(&mut t, 1);
        add(&mut t, 2);
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        t.received(1);
        t.disconnected();
        out.clear();
        t.connected(true, &mut out);
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(1, "rel".into(), false), (2, "m1".into(), true)]);
        t.acknowledged(2);
        out.clear();
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(3, "m2".into(), true)]);
        t.acknowledged(1);
        t.acknowledged(3);
        assert_eq!(safe(&t, 3), 3);
    }

    #[test]
    fn a_drop_after_the_broker_answered_the_probe_with_anything_is_no_strike() {
        let mut t = Tracker::new(1000);
        t.connected(false, &mut Vec::new());
        add(&mut t, 0);
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        t.disconnected(); // unexplained: m0 is a suspect
        for _ in 0..2 * MAX_STRIKES {
            t.connected(false, &mut Vec::new());
            out.clear();
            t.take_sendable(10, &mut out);
            assert_eq!(sent(&out).len(), 1, "the probe");
            t.heard(); // a PINGRESP (or a DISCONNECT) after it: the connection was alive
            t.disconnected();
        }
        assert!(!t.has_refused(), "unrelated drops are no strikes");
        assert_eq!(t.inflight.values().map(|f| f.publication.strikes).collect::<Vec<_>>(), [0]);
    }

    fn rel_ids(state: &Stored) -> Vec<u16> {
        state.released.iter().map(|r| r.pkid).collect()
    }

    fn eos_add(t: &mut Tracker, offset: i64) -> bool {
        if t.handled(&tp(), offset) {
            return false;
        }
        t.add(publication(offset, QoS::ExactlyOnce));
        true
    }

    #[test]
    fn exactly_once_saves_the_packet_id_before_the_publish_and_the_pubrec_before_the_pubrel() {
        let mut t = Tracker::new(1000);
        t.exactly_once(Stored::default());
        let mut out = Vec::new();
        t.connected(false, &mut out);
        assert!(
            t.state_to_save(false).is_some(),
            "a new connection: saved before anything goes out"
        );
        for o in 0..3 {
            assert!(eos_add(&mut t, o));
        }
        assert!(!eos_add(&mut t, 1), "handed over already: not published twice");
        t.take_sendable(10, &mut out);
        assert_eq!(
            sent(&out),
            [(1, "m0".into(), false), (2, "m1".into(), false), (3, "m2".into(), false)]
        );
        let (state, throughs) = t.state_to_save(false).expect("sent entries before the PUBLISH");
        assert_eq!(
            state.sent.iter().map(|s| (s.pkid, s.offset)).collect::<Vec<_>>(),
            [(1, 0), (2, 1), (3, 2)]
        );
        assert_eq!(state.done[0].through, 0);
        t.state_saved(throughs);
        assert!(t.state_to_save(false).is_none(), "nothing new to say");
        // PUBREC for offset 1 (out of order): saved before its PUBREL; not yet committable.
        assert_eq!(t.received(2), Outbound::PubRel(2));
        assert_eq!(safe(&t, 3), 0);
        let (state, throughs) = t.state_to_save(false).expect("the PUBREC before the PUBREL");
        assert_eq!(rel_ids(&state), [2]);
        assert_eq!(state.released[0].record.as_ref().map(|a| a.offset), Some(1), "with its record");
        assert_eq!((state.done[0].through, state.done[0].above.clone()), (0, vec![]));
        t.state_saved(throughs);
        t.received(1);
        let (state, throughs) = t.state_to_save(false).unwrap();
        assert_eq!(
            (state.done[0].through, state.done[0].above.clone()),
            (0, vec![]),
            "done at PUBCOMP, not at PUBREC"
        );
        t.state_saved(throughs);
        // PUBCOMP: done, and frees the ids; saved when idle, never needed before a write.
        t.acknowledged(2);
        t.acknowledged(1);
        assert!(t.state_to_save(false).is_none());
        assert_eq!(safe(&t, 3), 0, "the done-through of the saved state bounds the commit");
        let (state, throughs) = t.state_to_save(true).unwrap();
        assert_eq!((state.done[0].through, state.done[0].above.clone()), (2, vec![]));
        t.state_saved(throughs);
        assert_eq!(safe(&t, 3), 2);
        assert!(state.released.is_empty());
        assert_eq!(state.sent.iter().map(|s| s.pkid).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn exactly_once_resumes_a_kept_session_with_the_same_packet_ids() {
        let stored = Stored {
            sent: vec![Sent { pkid: 5, topic: "commands".into(), partition: 0, offset: 3 }],
            released: vec![Released { pkid: 1, record: None }],
            done: vec![Done { topic: "commands".into(), partition: 0, through: 3, above: vec![4] }],
        };
        let mut t = Tracker::new(1000);
        t.exactly_once(stored.clone());
        let mut out = Vec::new();
        t.connected(true, &mut out);
        assert_eq!(sent(&out), [(1, "rel".into(), false)], "the pending PUBREL again");
        let (state, _) = t.state_to_save(false).unwrap();
        assert_eq!(state, stored, "nothing new yet");
        out.clear();
        let added: Vec<i64> = (2..7).filter(|o| eos_add(&mut t, *o)).collect();
        assert_eq!(added, [3, 5, 6], "2 is below the done-through, 4 is done");
        t.take_sendable(10, &mut out);
        let ids: Vec<(u16, String, bool)> = sent(&out);
        assert_eq!(ids[0], (5, "m3".into(), true), "the same packet id, with DUP");
        assert!(ids[1..].iter().all(|(p, _, dup)| *p != 5 && *p != 1 && !dup), "{ids:?}");
        t.acknowledged(1);
        let (state, _) = t.state_to_save(true).unwrap();
        assert!(state.released.is_empty());
    }

    #[test]
    fn exactly_once_without_a_kept_session_publishes_again_under_new_ids() {
        let stored = Stored {
            sent: vec![Sent { pkid: 5, topic: "commands".into(), partition: 0, offset: 3 }],
            released: vec![Released { pkid: 1, record: None }],
            done: vec![Done { topic: "commands".into(), partition: 0, through: 3, above: vec![] }],
        };
        let mut t = Tracker::new(1000);
        t.exactly_once(stored);
        let mut out = Vec::new();
        t.connected(false, &mut out);
        assert!(out.is_empty());
        assert!(eos_add(&mut t, 3));
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(1, "m3".into(), false)]);
    }

    #[test]
    fn exactly_once_a_restored_record_no_longer_published_releases_its_packet_id() {
        let stored = Stored {
            sent: vec![Sent { pkid: 5, topic: "commands".into(), partition: 0, offset: 3 }],
            released: Vec::new(),
            done: vec![Done { topic: "commands".into(), partition: 0, through: 3, above: vec![] }],
        };
        let mut t = Tracker::new(1000);
        t.exactly_once(stored);
        let mut out = Vec::new();
        t.connected(true, &mut out);
        assert!(out.is_empty());
        t.skipped(&tp(), 3); // now a skipped tombstone, say
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(5, "rel".into(), false)]);
        let (state, _) = t.state_to_save(false).unwrap();
        assert!(state.sent.is_empty());
        assert_eq!(rel_ids(&state), [5]);
        assert!(t.handled(&tp(), 3));
        t.acknowledged(5);
        let (state, _) = t.state_to_save(true).unwrap();
        assert!(state.released.is_empty());
    }

    #[test]
    fn exactly_once_a_restored_record_that_never_comes_again_or_is_refused_releases_its_id() {
        let stored = Stored {
            sent: vec![
                Sent { pkid: 5, topic: "commands".into(), partition: 0, offset: 3 },
                Sent { pkid: 6, topic: "commands".into(), partition: 0, offset: 4 },
                Sent { pkid: 7, topic: "commands".into(), partition: 0, offset: 8 },
            ],
            released: Vec::new(),
            done: vec![Done { topic: "commands".into(), partition: 0, through: 3, above: vec![] }],
        };
        let mut t = Tracker::new(1000);
        t.exactly_once(stored);
        let mut out = Vec::new();
        t.connected(true, &mut out);
        // Offset 3 was deleted by retention: the fetch resumes at 4, which put refuses now.
        t.offering(&tp(), 4);
        t.not_published(&tp(), 4);
        t.offering(&tp(), 5);
        assert!(eos_add(&mut t, 5));
        // pre_commit: the runtime offered up to 7 (6 filtered by a transform).
        t.offering(&tp(), 7);
        out.clear();
        t.take_sendable(10, &mut out);
        let rels: Vec<u16> = out
            .iter()
            .filter_map(|p| match p {
                Outbound::PubRel(p) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(rels, [5, 6], "released, not pinned");
        let (state, throughs) = t.state_to_save(false).unwrap();
        assert_eq!(state.sent.iter().map(|s| s.pkid).collect::<Vec<_>>(), [1, 7]);
        assert_eq!(rel_ids(&state), [5, 6]);
        assert_eq!(throughs[&tp()], 5, "no longer held at 3");
        let sent5 = sent(&out).into_iter().find(|(_, p, _)| p == "m5").unwrap().0;
        t.received(sent5);
        t.acknowledged(sent5);
        t.acknowledged(5);
        t.acknowledged(6);
        let (state, throughs) = t.state_to_save(true).unwrap();
        assert!(!rel_ids(&state).contains(&5) && !rel_ids(&state).contains(&6));
        assert_eq!(throughs[&tp()], 6);
    }

    fn pubrec_saved_state() -> Stored {
        // Offset 3 went as packet id 5 and its PUBREC was saved; the task died before the PUBREL.
        Stored {
            sent: Vec::new(),
            released: vec![Released {
                pkid: 5,
                record: Some(At { topic: "commands".into(), partition: 0, offset: 3 }),
            }],
            done: vec![Done { topic: "commands".into(), partition: 0, through: 3, above: vec![] }],
        }
    }

    #[test]
    fn exactly_once_a_pubrec_saved_before_a_lost_session_is_published_again() {
        // The broker restarted without persistence: it never delivered the message (a QoS 2
        // message reaches subscribers at PUBREL), so the record must go again.
        let mut t = Tracker::new(1000);
        t.exactly_once(pubrec_saved_state());
        let mut out = Vec::new();
        t.connected(false, &mut out);
        assert!(out.is_empty(), "no PUBREL on a new session");
        assert!(eos_add(&mut t, 3), "not done: it comes again and is published");
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(1, "m3".into(), false)]);
        assert_eq!(safe(&t, 4), 3);
    }

    #[test]
    fn exactly_once_a_pubrec_saved_on_a_kept_session_is_done_at_its_pubcomp_not_sent_again() {
        let mut t = Tracker::new(1000);
        t.exactly_once(pubrec_saved_state());
        let mut out = Vec::new();
        t.connected(true, &mut out);
        assert_eq!(sent(&out), [(5, "rel".into(), false)]);
        out.clear();
        assert!(eos_add(&mut t, 3));
        t.take_sendable(10, &mut out);
        assert!(out.is_empty(), "the broker has it: not published again");
        let (state, _) = t.state_to_save(false).unwrap();
        assert_eq!(state.released, pubrec_saved_state().released, "still carries its record");
        assert_eq!(t.pending(), 1);
        // The connection drops before the PUBCOMP and the broker lost the session meanwhile.
        t.disconnected();
        t.connected(false, &mut out);
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(1, "m3".into(), false)], "published again, new id");
        t.received(1);
        t.acknowledged(1);
        let (state, throughs) = t.state_to_save(true).unwrap();
        assert!(state.released.is_empty());
        assert_eq!(throughs[&tp()], 4);
    }

    #[test]
    fn exactly_once_a_pubrel_goes_once_and_a_pubcomp_before_the_pubrec_is_ignored() {
        let stored = Stored {
            sent: vec![Sent { pkid: 5, topic: "commands".into(), partition: 0, offset: 3 }],
            released: Vec::new(),
            done: vec![Done { topic: "commands".into(), partition: 0, through: 3, above: vec![] }],
        };
        let mut t = Tracker::new(1000);
        t.exactly_once(stored);
        // Skipped while not connected yet: its PUBREL goes out once on the kept session.
        t.skipped(&tp(), 3);
        let mut out = Vec::new();
        t.connected(true, &mut out);
        assert!(eos_add(&mut t, 4));
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(5, "rel".into(), false), (1, "m4".into(), false)]);
        // A PUBCOMP for 1, which got no PUBREC (no PUBREL of ours): not its completion.
        t.acknowledged(1);
        assert_eq!(t.pending(), 1);
        assert_eq!(safe(&t, 5), 3);
        assert_eq!(t.received(1), Outbound::PubRel(1));
        t.acknowledged(1);
        assert_eq!(t.pending(), 0);
    }
}
