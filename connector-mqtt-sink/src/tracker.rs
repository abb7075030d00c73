//! [`Tracker`]: what became of every publish, from `put` to the broker's acknowledgement, and so
//! which Kafka offsets are safe to commit.
//!
//! Publishes wait in the backlog until the event loop sends them, at most `window` in flight. It
//! gives each a packet id and keeps it in flight until PUBACK (QoS 1) or PUBCOMP (QoS 2, after
//! the broker's PUBREC and our PUBREL). QoS 0 publishes are done once written.
//!
//! After a reconnect there are two cases:
//! * The broker **kept the session**: the in-flight publishes are sent again under their packet
//!   ids with the DUP flag, as MQTT requires (QoS 2 ones the broker already received get their
//!   PUBREL again), then the backlog.
//! * The broker **kept no session**: every unacknowledged publish goes back to the front of the
//!   backlog, in original order, and is sent again under a new packet id.
//!
//! Either way nothing is lost, and a publish whose acknowledgement was lost may arrive twice.

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use connector_core::{Error, TopicPartition};
use connector_mqtt_common::{Message, Outbound, PublishProperties};
use rumqttc::QoS;

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

/// A publish sent and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    publication: Publication,
    /// QoS 2: the broker sent PUBREC and we sent PUBREL; waiting for PUBCOMP.
    released: bool,
}

/// The state of every publish not yet acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    next_seq: u64,
    last_pkid: u16,
    /// Waiting to be sent.
    backlog: VecDeque<Publication>,
    /// Sent, waiting for PUBACK/PUBCOMP, by packet id.
    inflight: HashMap<u16, InFlight>,
    /// Offsets not yet acknowledged, per partition.
    unacked: HashMap<TopicPartition, BTreeSet<i64>>,
    pub(crate) connected: bool,
    pub(crate) failed: Option<Error>,
    /// Publishes sent again under a new packet id after a session was lost.
    pub(crate) republished: u64,
}

impl Tracker {
    /// Publishes not yet acknowledged.
    pub(crate) fn pending(&self) -> usize {
        self.backlog.len() + self.inflight.len()
    }

    /// Registers a record to publish (its `seq` is assigned here).
    pub(crate) fn add(&mut self, mut p: Publication) {
        p.seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.entry(p.tp.clone()).or_default().insert(p.offset);
        self.backlog.push_back(p);
    }

    /// The next packet id not in flight (at most `window` <= 65535 are).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = if self.last_pkid == u16::MAX { 1 } else { self.last_pkid + 1 };
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    /// Moves publishes from the backlog into flight while fewer than `window` are, appending their
    /// packets to `out`. QoS 0 publishes are done at once: they are at most once.
    pub(crate) fn take_sendable(&mut self, window: usize, out: &mut Vec<Outbound>) {
        if !self.connected {
            return;
        }
        while self.inflight.len() < window.min(u16::MAX as usize) {
            let Some(p) = self.backlog.pop_front() else { break };
            if p.qos == QoS::AtMostOnce {
                out.push(p.packet(0, false));
                self.done(&p);
                continue;
            }
            let pkid = self.next_pkid();
            out.push(p.packet(pkid, false));
            self.inflight.insert(pkid, InFlight { publication: p, released: false });
        }
    }

    /// The broker acknowledged `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2).
    pub(crate) fn acknowledged(&mut self, pkid: u16) {
        if let Some(f) = self.inflight.remove(&pkid) {
            self.done(&f.publication);
        }
    }

    /// The broker received QoS 2 publish `pkid` (PUBREC); returns our PUBREL. (Sent for an
    /// unknown id too, so the broker can drop its state.)
    pub(crate) fn received(&mut self, pkid: u16) -> Outbound {
        if let Some(f) = self.inflight.get_mut(&pkid) {
            f.released = true;
        }
        Outbound::PubRel(pkid)
    }

    fn done(&mut self, p: &Publication) {
        if let Some(set) = self.unacked.get_mut(&p.tp) {
            set.remove(&p.offset);
            if set.is_empty() {
                self.unacked.remove(&p.tp);
            }
        }
    }

    /// The connection is up. With a kept session, appends to `out` what must be sent again first;
    /// without, everything unacknowledged goes back to the front of the backlog in original order.
    pub(crate) fn connected(&mut self, session_present: bool, out: &mut Vec<Outbound>) {
        self.connected = true;
        let mut flying: Vec<(u16, InFlight)> = self.inflight.drain().collect();
        flying.sort_by_key(|(_, f)| f.publication.seq);
        if session_present {
            for (pkid, f) in flying {
                out.push(match f.released {
                    true => Outbound::PubRel(pkid),
                    false => f.publication.packet(pkid, true),
                });
                self.inflight.insert(pkid, f);
            }
        } else {
            self.republished += flying.len() as u64;
            for (_, f) in flying.into_iter().rev() {
                self.backlog.push_front(f.publication);
            }
        }
    }

    /// The connection was lost.
    pub(crate) fn disconnected(&mut self) {
        self.connected = false;
    }

    /// Of `offered` (next offset after the last record handed to `put`, per partition), the
    /// offsets that are safe: up to the first publish not yet acknowledged.
    pub(crate) fn safe_offsets(
        &self,
        offered: &HashMap<TopicPartition, i64>,
    ) -> HashMap<TopicPartition, i64> {
        offered
            .iter()
            .map(|(tp, o)| {
                let first_unacked = self.unacked.get(tp).and_then(|s| s.first().copied());
                (tp.clone(), first_unacked.map_or(*o, |u| u.min(*o)))
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
        Publication {
            seq: 0,
            tp: tp(),
            offset,
            topic: "cars/x/cmd".into(),
            payload: Bytes::from(format!("m{offset}")),
            qos,
            retain: false,
            properties: None,
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
    fn offsets_are_safe_only_up_to_the_first_unacknowledged_publish() {
        let mut t = Tracker::default();
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
        let mut t = Tracker::default();
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
        let mut t = Tracker::default();
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
        assert_eq!(sent(&out), [(3, "m2".into(), false)]);
        for pkid in 1..=3 {
            t.acknowledged(pkid);
        }
        assert_eq!(t.pending(), 0);
        assert_eq!(safe(&t, 3), 3);
        assert_eq!(t.republished, 0);
    }

    #[test]
    fn without_a_kept_session_everything_unacknowledged_is_sent_again_in_order() {
        let mut t = Tracker::default();
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
        t.take_sendable(10, &mut out);
        let payloads: Vec<String> = sent(&out).into_iter().map(|(_, p, _)| p).collect();
        assert_eq!(payloads, ["m1", "m2", "m3", "m4"]);
        for (pkid, _, _) in sent(&out) {
            t.acknowledged(pkid);
        }
        assert_eq!(safe(&t, 5), 5);
    }

    #[test]
    fn qos0_publishes_are_done_once_taken_for_sending() {
        let mut t = Tracker::default();
        t.connected(false, &mut Vec::new());
        t.add(publication(0, QoS::AtMostOnce));
        assert_eq!(safe(&t, 1), 0);
        let mut out = Vec::new();
        t.take_sendable(10, &mut out);
        assert_eq!(sent(&out), [(0, "m0".into(), false)]);
        assert_eq!(safe(&t, 1), 1);
    }
}
