//! `exactly_once = true`: the sender's half of the QoS 2 packet-id state, kept durably in the
//! task's state store ([`SinkTaskState`](connector_core::SinkTaskState)) so that a restarted task
//! finishes on the broker's kept session exactly what the crashed one started.
//!
//! The protocol (the [`Tracker`](crate::tracker::Tracker) keeps the state, the event loop saves
//! it): before a PUBLISH goes out, the state says "offset O is being sent as packet id P"; before
//! the PUBREL for a PUBREC, it says "O is the broker's, P awaits PUBCOMP" and how far the
//! partition is done; PUBCOMP frees P (saved with the next state). One save covers every publish
//! and PUBREL of one write, not one per record. After a crash the restarted task re-sends each
//! unfinished PUBLISH under its packet id with DUP set (the broker answers PUBREC without
//! delivering again if it had it), re-sends the pending PUBRELs, and skips every record the state
//! says is done. A packet id in the state is never given to another record.
//!
//! Stored as source partition `{"mqtt_session": "<client id>"}` with the offset
//! `{"sent": [{pkid, topic, partition, offset}], "released": [pkid], "done": [{topic,
//! partition, through, above}]}`: every offset below `through` is done, and so are those in
//! `above`. The state stays within the in-flight window: a record is not sent while
//! `inflight` publishes, pending PUBRELs and done offsets above `through` already fill it.

use std::collections::{BTreeSet, HashMap};

use connector_core::{Error, OffsetMap, Result, SourceOffset, SourcePartition, TopicPartition};
use serde::{Deserialize, Serialize};

/// The state as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// PUBLISHes that may have gone out, not yet received by the broker (no PUBREC).
    #[serde(default)]
    pub(crate) sent: Vec<Sent>,
    /// Packet ids the broker received (PUBREC) whose PUBCOMP has not arrived, with the record
    /// each carries (published again if the broker loses the session before the PUBCOMP).
    #[serde(default)]
    pub(crate) released: Vec<Released>,
    /// How far each partition is done.
    #[serde(default)]
    pub(crate) done: Vec<Done>,
}

/// "Offset `offset` of `topic`/`partition` is being sent as packet id `pkid`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sent {
    pub(crate) pkid: u16,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// "Packet id `pkid` awaits its PUBCOMP": the broker has the PUBLISH (PUBREC) and our PUBREL
/// is, or will be, on its way. `record` is the record it carries, if it is still to be
/// delivered (none for an id released because its record is no longer published): it is not
/// done until the PUBCOMP, and is published again if the broker lost the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Released {
    pub(crate) pkid: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) record: Option<At>,
}

/// A record: `offset` of `topic`/`partition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct At {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// Every offset below `through` is done (the broker's, or handled by the error policy, or not
/// to be published), and so is each offset in `above`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) through: i64,
    #[serde(default)]
    pub(crate) above: Vec<i64>,
}

/// The state partition of the session of `client_id`.
pub(crate) fn partition(client_id: &str) -> SourcePartition {
    SourcePartition::from([("mqtt_session", client_id)])
}

impl Stored {
    /// The state of session `client_id` in `map` (empty when none was saved).
    ///
    /// # Errors
    /// Fatal when a state is stored but cannot be read: starting without it could send a
    /// command twice. A config error naming `client_id` when `map` holds the state of another
    /// session (the client id changed): the new session cannot finish the old one's packet ids,
    /// and starting empty would publish again every record not committed to Kafka yet.
    pub(crate) fn from_map(map: &OffsetMap, client_id: &str) -> Result<Self> {
        if let Some(other) =
            map.iter().filter_map(|(p, _)| p.get_str("mqtt_session")).find(|s| *s != client_id)
        {
            return Err(Error::config(
                "client_id",
                format!(
                    "the exactly-once state of this connector belongs to MQTT session {other:?}, not {client_id:?}: a changed client id starts a new MQTT session, which cannot finish the old one's QoS 2 packet ids; set client_id back to {other:?} (or give the connector a new name, accepting that records not yet committed to Kafka are published again)"
                ),
            ));
        }
        match map.get(&partition(client_id)) {
            None => Ok(Self::default()),
            Some(o) => o.deserialize_into().map_err(|e| {
                Error::fatal(format!(
                    "the exactly-once state of MQTT session {client_id} cannot be read: {}",
                    e.report()
                ))
            }),
        }
    }

    /// `self` as the state of session `client_id`, to save.
    pub(crate) fn to_map(&self, client_id: &str) -> Result<OffsetMap> {
        let mut map = OffsetMap::new();
        map.insert(partition(client_id), SourceOffset::from_serialize(self)?);
        Ok(map)
    }
}

/// What the tracker keeps for exactly once, beside its in-flight publishes.
#[derive(Debug, Default)]
pub(crate) struct Eos {
    /// From the loaded state: packet ids sent before a crash, by the record they carried,
    /// waiting for the record to come again so its PUBLISH can be sent again under the same id.
    pub(crate) restored: HashMap<(TopicPartition, i64), u16>,
    /// From the loaded state: PUBRELs to send again, and whose PUBCOMP frees the id.
    pub(crate) pending_rels: BTreeSet<u16>,
    /// From the loaded state: the record each pending PUBREL carries, until it comes again
    /// (then it waits in the tracker for the PUBCOMP) or is done.
    pub(crate) rel_records: HashMap<(TopicPartition, i64), u16>,
    /// Done-through per partition as loaded: records below are skipped.
    pub(crate) loaded_through: HashMap<TopicPartition, i64>,
    /// Done offsets above the done-through, per partition (loaded, or PUBREC'd / settled since).
    pub(crate) finished: HashMap<TopicPartition, BTreeSet<i64>>,
    /// First and last offset handed over per partition in this run.
    pub(crate) first_added: HashMap<TopicPartition, i64>,
    pub(crate) last_added: HashMap<TopicPartition, i64>,
    /// Done-through per partition in the last saved state: offsets reported from `pre_commit`
    /// never go past it.
    pub(crate) persisted: HashMap<TopicPartition, i64>,
    /// The state changed since it was last saved.
    pub(crate) dirty: bool,
    /// Something waits to be written that the state must first say (a PUBLISH or a PUBREL).
    pub(crate) must_save: bool,
    /// Saves made (for the log and the bench).
    pub(crate) saves: u64,
    /// Packet ids of the loaded state whose record is no longer published (skipped now): their
    /// PUBREL goes out next, which frees the id whether or not the broker had the PUBLISH.
    pub(crate) release_now: Vec<u16>,
}

impl Eos {
    /// The tracker state of a loaded `stored` state.
    pub(crate) fn restore(stored: Stored) -> Self {
        let mut eos = Self::default();
        for s in stored.sent {
            eos.restored.insert((TopicPartition::new(s.topic, s.partition), s.offset), s.pkid);
        }
        for r in stored.released {
            eos.pending_rels.insert(r.pkid);
            if let Some(at) = r.record {
                eos.rel_records
                    .insert((TopicPartition::new(at.topic, at.partition), at.offset), r.pkid);
            }
        }
        for d in stored.done {
            let tp = TopicPartition::new(d.topic, d.partition);
            eos.loaded_through.insert(tp.clone(), d.through);
            eos.persisted.insert(tp.clone(), d.through);
            eos.finished.insert(tp, d.above.into_iter().filter(|o| *o >= d.through).collect());
        }
        eos
    }

    /// Whether the record at `offset` of `tp` was already handed over (this run), or is done
    /// by the loaded state: it is not published again.
    pub(crate) fn handled(&self, tp: &TopicPartition, offset: i64) -> bool {
        self.loaded_through.get(tp).is_some_and(|t| offset < *t)
            || self.last_added.get(tp).is_some_and(|l| offset <= *l)
            || self.finished.get(tp).is_some_and(|f| f.contains(&offset))
    }

    /// Releases the packet id of the restored entry of `offset` of `tp`, whose record is not
    /// published again: a PUBREL goes out next (saved first), which frees the id whether or not
    /// the broker had the PUBLISH. Returns whether there was such an entry.
    pub(crate) fn release(&mut self, tp: &TopicPartition, offset: i64) -> bool {
        if self.rel_records.remove(&(tp.clone(), offset)).is_some() {
            self.dirty = true;
            return true;
        }
        let Some(pkid) = self.restored.remove(&(tp.clone(), offset)) else { return false };
        self.pending_rels.insert(pkid);
        self.release_now.push(pkid);
        self.dirty = true;
        self.must_save = true;
        true
    }

    /// Releases every restored entry of `tp` below `offset`: the records from `offset` on are
    /// being handed over, so those will not come in this run (deleted by retention, filtered
    /// by a transform). Kept, they would hold the done-through and fill the window forever.
    pub(crate) fn release_below(&mut self, tp: &TopicPartition, offset: i64) {
        let below: Vec<i64> =
            self.restored.keys().filter(|(t, o)| t == tp && *o < offset).map(|(_, o)| *o).collect();
        for o in below {
            self.release(tp, o);
        }
        // A pending PUBREL whose record will not come: the PUBREL still goes, the record is the
        // runtime's matter.
        self.rel_records.retain(|(t, o), _| !(t == tp && *o < offset));
    }

    /// A record was handed over.
    pub(crate) fn added(&mut self, tp: &TopicPartition, offset: i64) {
        self.first_added.entry(tp.clone()).or_insert(offset);
        let last = self.last_added.entry(tp.clone()).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// Done offsets above the done-through, all partitions (they count against the window).
    pub(crate) fn finished_count(&self) -> usize {
        self.finished.values().map(BTreeSet::len).sum()
    }

    /// The done-through of `tp`, given the first offset not done in the tracker.
    pub(crate) fn through(&self, tp: &TopicPartition, first_not_done: Option<i64>) -> i64 {
        let base = self.last_added.get(tp).map(|l| l + 1);
        let base = match (base, self.loaded_through.get(tp)) {
            (Some(b), Some(l)) => b.max(*l),
            (Some(b), None) => b,
            (None, Some(l)) => *l,
            (None, None) => 0,
        };
        let restored = self
            .restored
            .keys()
            .chain(self.rel_records.keys())
            .filter(|(t, _)| t == tp)
            .map(|(_, o)| *o)
            .min();
        [Some(base), first_not_done, restored].into_iter().flatten().min().unwrap_or(base)
    }

    /// The bound `pre_commit` reports at most for `tp` (`None`: no bound).
    pub(crate) fn commit_bound(&self, tp: &TopicPartition) -> Option<i64> {
        self.persisted.get(tp).or_else(|| self.first_added.get(tp)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_as_saved() {
        let stored = Stored {
            sent: vec![Sent { pkid: 7, topic: "commands".into(), partition: 0, offset: 12 }],
            released: vec![
                Released { pkid: 3, record: None },
                Released {
                    pkid: 4,
                    record: Some(At { topic: "commands".into(), partition: 0, offset: 13 }),
                },
            ],
            done: vec![Done {
                topic: "commands".into(),
                partition: 0,
                through: 10,
                above: vec![11],
            }],
        };
        let map = stored.to_map("sink-1").unwrap();
        assert_eq!(Stored::from_map(&map, "sink-1").unwrap(), stored);
        assert_eq!(Stored::from_map(&OffsetMap::new(), "sink-1").unwrap(), Stored::default());
        let e = Stored::from_map(&map, "other").unwrap_err().to_string();
        assert!(e.contains("client_id") && e.contains("\"sink-1\""), "{e}");
        let eos = Eos::restore(stored);
        let tp = TopicPartition::new("commands", 0);
        assert!(eos.handled(&tp, 9) && eos.handled(&tp, 11));
        assert!(!eos.handled(&tp, 10) && !eos.handled(&tp, 12));
        assert_eq!(eos.through(&tp, None), 10);
    }
}
