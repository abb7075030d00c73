//! [`Tracker`]: what became of every publish, from `put` to the broker's acknowledgement, and so
//! which Kafka offsets are safe to commit.
//!
//! rumqttc has no per-publish completion token, but it handles publish requests strictly in
//! order and reports `Outgoing::Publish(pkid)` for each one it sends. So publishes handed to it
//! wait in a FIFO (`queued`) until their packet id is known, then in `inflight` until PUBACK
//! (QoS 1) or PUBCOMP (QoS 2). QoS 0 publishes are done once sent.
//!
//! After a reconnect there are two cases:
//! * The broker **kept the session**: rumqttc resends the unacknowledged publishes under their
//!   packet ids (those `Outgoing::Publish` events are recognised and ignored), then what was queued.
//! * The broker **kept no session**: rumqttc drops everything pending, so every unacknowledged
//!   publish is handed to it again, in original order.
//!
//! Either way nothing is lost, and a publish whose acknowledgement was lost may arrive twice.

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use connector_core::{Error, TopicPartition};
use rumqttc::QoS;
use tracing::warn;

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
}

/// Something that takes publishes (rumqttc's client; a recorder in tests).
pub(crate) trait Outlet {
    fn publish(&self, p: &Publication) -> Result<(), Error>;
}

impl Outlet for rumqttc::AsyncClient {
    fn publish(&self, p: &Publication) -> Result<(), Error> {
        self.try_publish(p.topic.clone(), p.qos, p.retain, p.payload.to_vec()).map_err(|e| {
            Error::retriable(format!("cannot queue a publish to {}", p.topic)).with_source(e)
        })
    }
}

/// The state of every publish not yet acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    next_seq: u64,
    /// Waiting for a connection.
    backlog: VecDeque<Publication>,
    /// Handed to rumqttc, packet id not yet known.
    queued: VecDeque<Publication>,
    /// Sent, waiting for PUBACK/PUBCOMP.
    inflight: HashMap<u16, Publication>,
    /// Offsets not yet acknowledged, per partition.
    unacked: HashMap<TopicPartition, BTreeSet<i64>>,
    pub(crate) connected: bool,
    pub(crate) failed: Option<Error>,
    /// Publishes handed to rumqttc again after a session was lost.
    pub(crate) republished: u64,
}

impl Tracker {
    /// Publishes not yet acknowledged.
    pub(crate) fn pending(&self) -> usize {
        self.backlog.len() + self.queued.len() + self.inflight.len()
    }

    /// Registers a record to publish (its `seq` is assigned here), and hands it on when connected.
    pub(crate) fn add(&mut self, outlet: &impl Outlet, mut p: Publication) -> Result<(), Error> {
        p.seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.entry(p.tp.clone()).or_default().insert(p.offset);
        self.hand_on(outlet, p)
    }

    fn hand_on(&mut self, outlet: &impl Outlet, p: Publication) -> Result<(), Error> {
        if self.connected {
            outlet.publish(&p)?;
            self.queued.push_back(p);
        } else {
            self.backlog.push_back(p);
        }
        Ok(())
    }

    /// rumqttc sent a publish with `pkid` (0 for QoS 0).
    pub(crate) fn sent(&mut self, pkid: u16) {
        if pkid != 0 && self.inflight.contains_key(&pkid) {
            // A resend on a resumed session: already tracked.
            return;
        }
        let Some(p) = self.queued.pop_front() else {
            warn!(pkid, "a publish was sent that the sink did not queue");
            return;
        };
        if pkid == 0 {
            self.done(&p);
        } else {
            self.inflight.insert(pkid, p);
        }
    }

    /// The broker acknowledged `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2).
    pub(crate) fn acknowledged(&mut self, pkid: u16) {
        if let Some(p) = self.inflight.remove(&pkid) {
            self.done(&p);
        }
    }

    fn done(&mut self, p: &Publication) {
        if let Some(set) = self.unacked.get_mut(&p.tp) {
            set.remove(&p.offset);
            if set.is_empty() {
                self.unacked.remove(&p.tp);
            }
        }
    }

    /// The connection is up. Without a kept session, everything unacknowledged is handed on again
    /// in original order; then the backlog follows.
    pub(crate) fn connected(
        &mut self,
        outlet: &impl Outlet,
        session_present: bool,
    ) -> Result<(), Error> {
        self.connected = true;
        let mut again: Vec<Publication> = Vec::new();
        if !session_present {
            again.extend(self.inflight.drain().map(|(_, p)| p));
            again.extend(self.queued.drain(..));
            again.sort_by_key(|p| p.seq);
            self.republished += again.len() as u64;
        }
        again.extend(self.backlog.drain(..));
        for p in again {
            self.hand_on(outlet, p)?;
        }
        Ok(())
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
    use std::cell::RefCell;

    #[derive(Default)]
    struct Recorder(RefCell<Vec<String>>);

    impl Outlet for Recorder {
        fn publish(&self, p: &Publication) -> Result<(), Error> {
            self.0.borrow_mut().push(String::from_utf8_lossy(&p.payload).into_owned());
            Ok(())
        }
    }

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
        }
    }

    fn add(t: &mut Tracker, out: &Recorder, offset: i64) {
        t.add(out, publication(offset, QoS::AtLeastOnce)).unwrap();
    }

    fn safe(t: &Tracker, offered: i64) -> i64 {
        t.safe_offsets(&HashMap::from([(tp(), offered)]))[&tp()]
    }

    #[test]
    fn offsets_are_safe_only_up_to_the_first_unacknowledged_publish() {
        let out = Recorder::default();
        let mut t = Tracker::default();
        t.connected(&out, false).unwrap();
        for o in 10..15 {
            add(&mut t, &out, o);
        }
        for pkid in 1..=5 {
            t.sent(pkid);
        }
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
    fn resends_on_a_kept_session_are_recognised() {
        let out = Recorder::default();
        let mut t = Tracker::default();
        t.connected(&out, false).unwrap();
        add(&mut t, &out, 0);
        add(&mut t, &out, 1);
        t.sent(1);
        t.disconnected();
        add(&mut t, &out, 2); // while down: backlog
        t.connected(&out, true).unwrap();
        // rumqttc resends pkid 1, then sends what was queued (offset 1), then the backlog.
        t.sent(1);
        t.sent(2);
        t.sent(3);
        t.acknowledged(1);
        t.acknowledged(2);
        t.acknowledged(3);
        assert_eq!(t.pending(), 0);
        assert_eq!(safe(&t, 3), 3);
        assert_eq!(*out.0.borrow(), ["m0", "m1", "m2"], "nothing handed on twice");
    }

    #[test]
    fn without_a_kept_session_everything_unacknowledged_is_handed_on_again_in_order() {
        let out = Recorder::default();
        let mut t = Tracker::default();
        t.connected(&out, false).unwrap();
        for o in 0..4 {
            add(&mut t, &out, o);
        }
        t.sent(7);
        t.sent(8);
        t.acknowledged(7); // offset 0 done
        t.disconnected();
        add(&mut t, &out, 4);
        t.connected(&out, false).unwrap();
        assert_eq!(*out.0.borrow(), ["m0", "m1", "m2", "m3", "m1", "m2", "m3", "m4"]);
        assert_eq!(t.republished, 3);
        for pkid in 1..=4 {
            t.sent(pkid);
            t.acknowledged(pkid);
        }
        assert_eq!(safe(&t, 5), 5);
    }

    #[test]
    fn qos0_publishes_are_done_once_sent() {
        let out = Recorder::default();
        let mut t = Tracker::default();
        t.connected(&out, false).unwrap();
        t.add(&out, publication(0, QoS::AtMostOnce)).unwrap();
        assert_eq!(safe(&t, 1), 0);
        t.sent(0);
        assert_eq!(safe(&t, 1), 1);
    }
}
