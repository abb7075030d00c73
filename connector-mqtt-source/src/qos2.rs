//! The QoS 2 receiver state of an exactly-once MQTT source: which packet ids of the MQTT session
//! have their message in Kafka and await the broker's PUBREL, kept as source offsets so that each
//! Kafka transaction commits the state together with the records it covers.

use std::collections::BTreeMap;

use connector_core::{Result, SourceOffset, SourcePartition, SourceRecord};
use tracing::{info, warn};

/// The QoS 2 receiver state of an exactly-once source: the packet ids of the MQTT session
/// `{"mqtt_session": "<client id>"}` whose message is in Kafka (or on its way, in poll order)
/// and whose PUBREL has not been handled yet. Every record carries the whole set as its source
/// offset `{"qos2_received": [ids and [first, last] ranges]}`, so the offset committed with a
/// transaction is the set as of its last record.
///
/// Bounded by the packet ids there are (65535): a broker gives an id to a new message only once
/// we sent PUBCOMP for its previous one, and we send PUBCOMP only after the id left the set. The
/// set is kept as ranges of consecutive ids (brokers hand out ids in sequence), so a record's
/// offset costs the number of ranges, not of ids. How many ids are recorded at once depends on
/// the broker: Mosquitto 2.0.11 does not hold its in-flight window to `max_inflight_messages`
/// when PUBCOMPs come in order (docs/delivery-guarantees.md), and was measured with 16,000 ids
/// awaiting their PUBREL on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Qos2State {
    partition: SourcePartition,
    received: IdSet,
}

/// The source offset of [`Qos2State`]: single ids as numbers, runs as `[first, last]`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Qos2Offset {
    qos2_received: Vec<IdRun>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum IdRun {
    One(u16),
    Run([u16; 2]),
}

/// What an exactly-once source makes of a received QoS 2 PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Qos2Publish {
    /// Not seen in this session: write it (its record carries the returned offset).
    New(SourceOffset),
    /// A redelivery of a recorded id: Kafka has it; PUBREC without writing.
    Duplicate,
}

impl Qos2State {
    /// The state of session `client_id` as the offset store has it.
    ///
    /// # Errors
    /// The stored offset is not a QoS 2 state.
    pub(crate) fn restore(client_id: &str, offsets: &connector_core::OffsetMap) -> Result<Self> {
        let partition = SourcePartition::from_serialize(&serde_json::json!({
            "mqtt_session": client_id
        }))?;
        let mut received = IdSet::default();
        if let Some(o) = offsets.get(&partition) {
            for run in o.deserialize_into::<Qos2Offset>()?.qos2_received {
                let (first, last) = match run {
                    IdRun::One(id) => (id, id),
                    IdRun::Run([a, b]) => (a.min(b), a.max(b)),
                };
                for id in first..=last {
                    received.insert(id);
                }
            }
        }
        Ok(Self { partition, received })
    }

    /// The session's source partition.
    pub(crate) fn partition(&self) -> &SourcePartition {
        &self.partition
    }

    /// The set as a source offset.
    pub(crate) fn offset(&self) -> SourceOffset {
        let runs = self
            .received
            .runs()
            .map(|(a, b)| if a == b { IdRun::One(a) } else { IdRun::Run([a, b]) })
            .collect();
        SourceOffset::from_serialize(&Qos2Offset { qos2_received: runs }).unwrap_or_default()
    }

    /// A QoS 2 PUBLISH with `pkid` arrived; `dup` is its DUP flag.
    ///
    /// A recorded id is a redelivery only with DUP = 1: a broker must set it on every
    /// redelivery (MQTT 3.1.1 section 3.3.1.1, MQTT 5 section 3.3.1.1), so a PUBLISH with DUP = 0
    /// under a recorded id is a new message and the recorded id is stale (a broker that lost
    /// part of the session, or a crash between a new session's CONNACK and its first commit).
    /// Taking it for a redelivery would drop it; writing it keeps at-least-once.
    pub(crate) fn publish(&mut self, pkid: u16, dup: bool) -> Qos2Publish {
        if self.received.contains(pkid) {
            if dup {
                return Qos2Publish::Duplicate;
            }
            warn!(pkid, "a QoS 2 PUBLISH with DUP = 0 under a recorded packet id: a new message (the recorded id was stale)");
        } else {
            self.received.insert(pkid);
            let n = self.received.len;
            if n >= 1024 && n.is_power_of_two() {
                info!(
                    recorded = n,
                    "QoS 2 messages await their PUBREL (the broker's in-flight window)"
                );
            }
        }
        Qos2Publish::New(self.offset())
    }

    /// The broker released `pkid` (PUBREL): its offset-only record clears it; PUBCOMP follows
    /// its commit.
    pub(crate) fn release(&mut self, pkid: u16) -> SourceRecord {
        self.received.remove(pkid);
        SourceRecord::offset_only(self.partition.clone(), self.offset())
    }

    /// The broker did not keep the session: every recorded id is void.
    pub(crate) fn new_session(&mut self) -> SourceRecord {
        self.received = IdSet::default();
        SourceRecord::offset_only(self.partition.clone(), self.offset())
    }

    /// How many ids are recorded.
    pub(crate) fn len(&self) -> usize {
        self.received.len
    }
}

/// A set of packet ids as runs of consecutive ids: first -> last, inclusive, disjoint and not
/// adjacent. Insert, remove and lookup are O(log runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct IdSet {
    runs: BTreeMap<u16, u16>,
    len: usize,
}

impl IdSet {
    /// The run holding `id`, if any.
    fn run_of(&self, id: u16) -> Option<(u16, u16)> {
        let (&first, &last) = self.runs.range(..=id).next_back()?;
        (last >= id).then_some((first, last))
    }

    fn contains(&self, id: u16) -> bool {
        self.run_of(id).is_some()
    }

    fn insert(&mut self, id: u16) {
        if self.contains(id) {
            return;
        }
        let before = id.checked_sub(1).and_then(|p| self.run_of(p));
        let after = id.checked_add(1).and_then(|n| self.runs.get(&n).map(|&last| (n, last)));
        let first = before.map_or(id, |(f, _)| f);
        let last = match after {
            Some((n, l)) => {
                self.runs.remove(&n);
                l
            }
            None => id,
        };
        self.runs.insert(first, last);
        self.len += 1;
    }

    fn remove(&mut self, id: u16) {
        let Some((first, last)) = self.run_of(id) else { return };
        self.runs.remove(&first);
        if first < id {
            self.runs.insert(first, id - 1);
        }
        if id < last {
            self.runs.insert(id + 1, last);
        }
        self.len -= 1;
    }

    fn runs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.runs.iter().map(|(&a, &b)| (a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(o: &SourceOffset) -> Vec<IdRun> {
        o.deserialize_into::<Qos2Offset>().unwrap().qos2_received
    }

    /// A recorded id is a duplicate until its PUBREL (with DUP = 1 only); every record carries
    /// the whole set; a new session voids it; it is restored from the offsets.
    #[test]
    fn qos2_state_records_ids_until_pubrel() {
        let mut s = Qos2State::restore("edge-1", &connector_core::OffsetMap::new()).unwrap();
        assert_eq!(
            s.partition().get_str("mqtt_session"),
            Some("edge-1"),
            "one partition per MQTT session"
        );
        let Qos2Publish::New(o) = s.publish(7, false) else { panic!("new") };
        assert_eq!(ids(&o), [IdRun::One(7)]);
        assert_eq!(s.publish(7, true), Qos2Publish::Duplicate, "same id before PUBREL");
        assert!(
            matches!(s.publish(7, false), Qos2Publish::New(_)),
            "DUP = 0 under a recorded id: a new message, not dropped"
        );
        assert_eq!(s.len(), 1, "the id stays recorded once");
        let Qos2Publish::New(o) = s.publish(3, false) else { panic!("new") };
        assert_eq!(ids(&o), [IdRun::One(3), IdRun::One(7)], "the full set on every record");
        let cleared = s.release(7);
        assert!(cleared.is_offset_only());
        assert_eq!(ids(cleared.source_offset.as_ref().unwrap()), [IdRun::One(3)]);
        assert!(matches!(s.publish(7, false), Qos2Publish::New(_)), "a reused id is new");

        let mut offsets = connector_core::OffsetMap::new();
        offsets.insert(cleared.source_partition.clone(), cleared.source_offset.clone().unwrap());
        let mut restored = Qos2State::restore("edge-1", &offsets).unwrap();
        assert_eq!(restored.publish(3, true), Qos2Publish::Duplicate, "restored from Kafka");
        let other = Qos2State::restore("edge-2", &offsets).unwrap();
        assert_eq!(other.len(), 0, "another session's ids are not ours");
        let void = restored.new_session();
        assert_eq!(ids(void.source_offset.as_ref().unwrap()), []);
        assert!(matches!(restored.publish(3, true), Qos2Publish::New(_)));
    }

    /// Consecutive ids are stored as one run, so the offset stays small however many messages
    /// await their PUBREL; it reads back to the same set.
    #[test]
    fn consecutive_ids_are_one_run_and_read_back() {
        let mut s = Qos2State::restore("edge-1", &connector_core::OffsetMap::new()).unwrap();
        for id in 1..=16_000 {
            s.publish(id, false);
        }
        s.publish(u16::MAX, false);
        s.release(500);
        let o = s.offset();
        assert_eq!(
            ids(&o),
            [IdRun::Run([1, 499]), IdRun::Run([501, 16_000]), IdRun::One(u16::MAX)]
        );
        assert_eq!(s.len(), 16_000);
        let mut offsets = connector_core::OffsetMap::new();
        offsets.insert(s.partition().clone(), o);
        let restored = Qos2State::restore("edge-1", &offsets).unwrap();
        assert_eq!(restored, s);
    }

    proptest::proptest! {
        /// The run set behaves like a plain set of ids under any inserts and removes.
        #[test]
        fn id_set_is_a_set(ops in proptest::collection::vec((proptest::bool::ANY, 0u16..40), 0..200)) {
            let mut set = IdSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (insert, id) in ops {
                if insert {
                    set.insert(id);
                    model.insert(id);
                } else {
                    set.remove(id);
                    model.remove(&id);
                }
                proptest::prop_assert_eq!(set.len, model.len());
                let expanded: Vec<u16> = set.runs().flat_map(|(a, b)| a..=b).collect();
                let expected: Vec<u16> = model.iter().copied().collect();
                proptest::prop_assert_eq!(expanded, expected);
                // Runs are disjoint and not adjacent.
                let runs: Vec<_> = set.runs().collect();
                for w in runs.windows(2) {
                    proptest::prop_assert!(u32::from(w[0].1) + 1 < u32::from(w[1].0));
                }
            }
        }
    }
}
