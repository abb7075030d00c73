//! Sink tasks as members of the Kafka consumer group `connect-<connector>` (Kafka Connect's
//! naming), the standard way: protocol type `consumer`, protocol `range`, subscription and
//! assignment in Kafka's ConsumerProtocol v0, so `kafka-consumer-groups` and librdkafka read
//! what the tasks put there.
//!
//! ```text
//!  join (leader: spreads the topics' partitions evenly, members keeping what they held)
//!    ─► epoch: open(partitions), read from the group's committed offsets (else `start`),
//!       commits = OffsetCommit with this generation  ·  beside it: Heartbeat every heartbeat
//!       interval, and (leader) a metadata check every metadata_max_age_ms
//!    ─► RebalanceNeeded / Lost / partitions changed: the epoch drains (fetching stops, flush,
//!       pre_commit, commit to the group), close(partitions) ─► join again
//!  shutdown: the epoch drains and commits, then LeaveGroup; `stop` once at the end.
//! ```
//!
//! A lost membership (the session expired) is logged: the final commit of that epoch is refused
//! by the group, so the next owner of those partitions reads again from the last accepted commit
//! (duplicates, never loss).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{SinkEpoch, SinkTaskRuntime};
use crate::backoff::Backoff;
use crate::kafka::group::{
    consumer_protocol, GroupMember, GroupOffsetStore, GroupTimeouts, HeartbeatOutcome, JoinedGroup,
};
use crate::kafka::KafkaClient;
use crate::offset::{OffsetMap, OffsetStore};
use crate::record::TopicPartition;
use crate::{Error, Result};

/// How the sink tasks of a [`Worker`](crate::runtime::Worker) join their consumer groups
/// ([`Worker::with_sink_groups`](crate::runtime::Worker::with_sink_groups)).
///
/// ```
/// use connector_core::kafka::group::GroupTimeouts;
/// use connector_core::runtime::SinkGroupSettings;
///
/// let settings = SinkGroupSettings { timeouts: GroupTimeouts::default(), worker_id: "w1".into() };
/// assert_eq!(settings.worker_id, "w1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkGroupSettings {
    /// Session, heartbeat and rebalance timeouts of every task's membership.
    pub timeouts: GroupTimeouts,
    /// This worker's id: member client ids are `<worker id>/<connector>-<task>`.
    pub worker_id: String,
}

/// The consumer group of sink connector `name`.
pub(crate) fn group_id(name: &str) -> String {
    format!("connect-{name}")
}

/// Runs `runtime`'s task as a member of `connect-<name>` until `shutdown` (then LeaveGroup) or a
/// fatal error.
pub(crate) async fn run_in_group(
    runtime: SinkTaskRuntime,
    topics: Vec<String>,
    settings: SinkGroupSettings,
    shutdown: CancellationToken,
) -> Result<()> {
    let (name, task_id, client) =
        (Arc::clone(&runtime.base.name), runtime.base.task_id, runtime.base.client.clone());
    let (epochs, rx) = mpsc::channel(1);
    let member = Membership {
        client_id: format!("{}/{}-{}", settings.worker_id, name, task_id),
        name,
        task_id,
        client,
        topics,
        timeouts: settings.timeouts,
    };
    let (task, member) =
        tokio::join!(runtime.run_epochs(rx, shutdown.clone()), member.run(epochs, shutdown));
    task.and(member)
}

/// One task's membership: joins, hands each generation's partitions to the task as an epoch,
/// heartbeats while it runs.
struct Membership {
    name: Arc<str>,
    task_id: usize,
    client: KafkaClient,
    client_id: String,
    topics: Vec<String>,
    timeouts: GroupTimeouts,
}

/// Why an epoch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Rejoin: the group rebalances.
    Rejoin,
    /// (Leader) the topics' partitions changed: leave and join afresh, which makes every
    /// coordinator start a new generation (Tansu 0.6 answers a leader's plain rejoin with the
    /// same generation and assignment).
    Repartition,
    /// The membership is gone (session expired): rejoin fresh.
    Lost,
    /// (Leader) this generation held partitions back for an owner that had not drained yet:
    /// leave and join afresh so the group rebalances with that owner's fresh report.
    HeldBack,
    /// The task stopped (shutdown, or it failed): leave.
    Stopped,
}

impl Membership {
    async fn run(self, epochs: mpsc::Sender<SinkEpoch>, shutdown: CancellationToken) -> Result<()> {
        let group = group_id(&self.name);
        let mut member = GroupMember::new(
            self.client.clone(),
            group.clone(),
            "consumer",
            self.client_id.clone(),
            self.timeouts,
        );
        let mut backoff = Backoff::new(self.client.config().retry_backoff);
        // The group's assignments this member knows (what sticks, and who may still hold what).
        let mut assignor = Assignor::default();
        // The generation of the last epoch this member drained and closed.
        let mut drained = -1;
        let outcome = loop {
            // What the leader reads besides the topics: this member holds nothing while it
            // joins (its epoch is drained and closed before), and which maps it knows.
            let report = MemberReport { drained, map: assignor.newest().cloned() };
            let protocols = [(
                "range".to_owned(),
                consumer_protocol::encode_subscription_with_user_data(
                    &self.topics,
                    Some(&report.encode()),
                ),
            )];
            // Every member knows the partitions: whoever the coordinator makes leader assigns.
            let known = match topic_partitions(&self.client, &self.topics).await {
                Ok(k) => k,
                Err(e) if e.is_retriable() => {
                    warn!(connector = %self.name, task = self.task_id, error = %e.report(), "sink topics' metadata not available; retrying");
                    if sleep_or_stop(backoff.next_delay(), &shutdown, &epochs).await {
                        break Ok(());
                    }
                    continue;
                }
                Err(e) => break Err(e),
            };
            let mut assign = |joined: &JoinedGroup| assignor.assign(joined, &known);
            let joined = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = epochs.closed() => break Ok(()),
                r = member.join(&protocols, &mut assign) => r,
            };
            let generation = match joined {
                Ok(g) => g,
                Err(e) => {
                    let e = Error::from(e);
                    if !e.is_retriable() {
                        break Err(e);
                    }
                    warn!(connector = %self.name, task = self.task_id, %group, error = %e.report(), "joining the sink's consumer group failed; retrying");
                    if sleep_or_stop(backoff.next_delay(), &shutdown, &epochs).await {
                        break Ok(());
                    }
                    continue;
                }
            };
            backoff.reset();
            // Every member learns the whole map (what a later leader must respect).
            if let Ok(Some(ud)) = consumer_protocol::assignment_user_data(&generation.assignment) {
                if let Some(map) = GroupMap::decode(&ud) {
                    assignor.learn(map, true);
                }
            }
            let mut partitions = match consumer_protocol::decode_assignment(&generation.assignment)
            {
                Ok(p) => p,
                Err(e) => break Err(Error::from(e)),
            };
            // Never read a partition of a topic this sink does not read.
            partitions.retain(|tp| self.topics.iter().any(|t| *t == *tp.topic));
            partitions.sort();
            let Some(committer) = member.committer() else {
                continue;
            };
            let listed = list(&partitions);
            info!(
                connector = %self.name,
                task = self.task_id,
                client_id = %self.client_id,
                %group,
                generation = generation.id,
                member = %generation.member_id,
                leader = generation.is_leader(),
                partitions = %listed,
                "sink partitions assigned"
            );
            let store = EpochStore {
                group: GroupOffsetStore::new(self.client.clone(), committer),
                backoff: self.client.config().retry_backoff,
            };
            let (epoch, closed) = SinkEpoch::new(partitions, Arc::new(store));
            let end = epoch.end.clone();
            if epochs.send(epoch).await.is_err() {
                break Ok(());
            }
            let leader = generation.is_leader().then_some(&known);
            // A leader that held partitions back (their last owner had not drained yet) makes
            // the group rebalance again once that owner had time to drain and rejoin.
            let again =
                (generation.is_leader() && assignor.held_back).then_some(self.timeouts.session);
            if again.is_some() {
                info!(connector = %self.name, task = self.task_id, %group, generation = generation.id, "partitions held back for their last owner's drain: rebalancing again after a session timeout unless the group does first");
            }
            let ended = self.heartbeat(&mut member, &end, closed, leader, again).await;
            drained = generation.id;
            info!(
                connector = %self.name,
                task = self.task_id,
                client_id = %self.client_id,
                %group,
                generation = generation.id,
                partitions = %listed,
                why = ?ended,
                "sink partitions revoked (drained, committed, closed)"
            );
            match ended {
                Ended::Stopped => break Ok(()),
                Ended::Repartition | Ended::HeldBack => {
                    if let Err(e) = member.leave().await {
                        debug!(connector = %self.name, task = self.task_id, error = %Error::from(e).report(), "LeaveGroup failed");
                    }
                }
                Ended::Rejoin | Ended::Lost => {}
            }
        };
        // Best effort: a member that does not leave is dropped after the session timeout.
        if let Err(e) = member.leave().await {
            debug!(connector = %self.name, task = self.task_id, error = %Error::from(e).report(), "LeaveGroup failed");
        }
        info!(connector = %self.name, task = self.task_id, %group, "sink task left its consumer group");
        outcome
    }

    /// Heartbeats until the epoch is closed; ends it (cancels `end`) when the group rebalances,
    /// the membership is lost, or (leader) the topics' partitions are no longer `known`.
    async fn heartbeat(
        &self,
        member: &mut GroupMember,
        end: &CancellationToken,
        mut closed: oneshot::Receiver<Result<()>>,
        leader: Option<&Vec<TopicPartition>>,
        again: Option<Duration>,
    ) -> Ended {
        let again_at = tokio::time::sleep(again.unwrap_or(Duration::from_secs(365 * 86_400)));
        tokio::pin!(again_at);
        let mut beat =
            tokio::time::interval(self.timeouts.heartbeat.max(Duration::from_millis(10)));
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        beat.reset();
        let refresh = Duration::from_millis(self.client.config().metadata_max_age_ms.max(1));
        let mut metadata = tokio::time::interval(refresh);
        metadata.set_missed_tick_behavior(MissedTickBehavior::Delay);
        metadata.reset();
        let mut ended: Option<Ended> = None;
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                r = &mut closed => {
                    // The epoch is drained and closed (or the task is gone).
                    return match (r, ended) {
                        (Ok(Ok(())), Some(why)) => why,
                        _ => Ended::Stopped,
                    };
                }
                _ = beat.tick(), if ended != Some(Ended::Lost) => {
                    // Heartbeats go on during the drain: the group must not drop this member
                    // before its final commit.
                    // Bounded by what is left of the session: an unreachable coordinator must
                    // not hide for long that the membership is gone.
                    let budget = self
                        .timeouts
                        .session
                        .saturating_sub(last_ok.elapsed())
                        .max(self.timeouts.heartbeat);
                    let beat = match tokio::time::timeout(budget, member.heartbeat()).await {
                        Ok(r) => r.map_err(Error::from),
                        Err(_) => Err(Error::retriable(format!(
                            "Heartbeat got no answer within {budget:?}"
                        ))),
                    };
                    let outcome = match beat {
                        Ok(o) => o,
                        Err(e) => {
                            if last_ok.elapsed() < self.timeouts.session {
                                debug!(connector = %self.name, task = self.task_id, error = %e.report(), "heartbeat failed");
                                continue;
                            }
                            warn!(connector = %self.name, task = self.task_id, error = %e.report(), "no heartbeat got through for a session timeout");
                            HeartbeatOutcome::Lost
                        }
                    };
                    match outcome {
                        HeartbeatOutcome::Stable => last_ok = Instant::now(),
                        HeartbeatOutcome::RebalanceNeeded => {
                            last_ok = Instant::now();
                            if ended.is_none() {
                                info!(connector = %self.name, task = self.task_id, "the group rebalances: draining this epoch");
                                ended = Some(Ended::Rejoin);
                                end.cancel();
                            }
                        }
                        HeartbeatOutcome::Lost => {
                            warn!(connector = %self.name, task = self.task_id, "consumer group membership lost: this epoch's last commit will be refused, its uncommitted records are read again by the next owner (duplicates, never loss)");
                            ended = Some(Ended::Lost);
                            end.cancel();
                        }
                    }
                }
                () = &mut again_at, if again.is_some() && ended.is_none() => {
                    info!(connector = %self.name, task = self.task_id, "rebalancing to hand out the partitions held back");
                    ended = Some(Ended::HeldBack);
                    end.cancel();
                }
                _ = metadata.tick(), if leader.is_some() && ended.is_none() => {
                    let Some(known) = leader else { continue };
                    // Bounded by a heartbeat interval: a slow metadata answer must not cost
                    // the leader its membership (the next tick tries again).
                    let check = tokio::time::timeout(
                        self.timeouts.heartbeat,
                        topic_partitions(&self.client, &self.topics),
                    );
                    let checked = check.await.unwrap_or_else(|_| {
                        Err(Error::retriable("the metadata check took longer than a heartbeat interval"))
                    });
                    match checked {
                        Ok(now) if now != *known => {
                            info!(connector = %self.name, task = self.task_id, before = known.len(), now = now.len(), "the sink topics' partitions changed: rejoining to reassign them");
                            ended = Some(Ended::Repartition);
                            end.cancel();
                        }
                        Ok(_) => {}
                        Err(e) => debug!(connector = %self.name, error = %e.report(), "metadata refresh failed"),
                    }
                }
            }
        }
    }
}

/// `topic-partition` items, comma-separated (for the log).
fn list(partitions: &[TopicPartition]) -> String {
    let items: Vec<String> =
        partitions.iter().map(|tp| format!("{}-{}", tp.topic, tp.partition)).collect();
    items.join(",")
}

/// Sleeps `delay`; `true` when shutdown came first or the task is gone.
async fn sleep_or_stop(
    delay: Duration,
    shutdown: &CancellationToken,
    epochs: &mpsc::Sender<SinkEpoch>,
) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = epochs.closed() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Every partition of `topics`, sorted (missing topics created, when allowed, as in
/// single-process mode).
async fn topic_partitions(client: &KafkaClient, topics: &[String]) -> Result<Vec<TopicPartition>> {
    let mut partitions = Vec::new();
    for topic in topics {
        let meta = match client.refresh_topic(topic).await? {
            Some(m) => m,
            None => client.ensure_topic(topic).await?,
        };
        partitions
            .extend((0..meta.partition_count()).map(|p| TopicPartition::new(topic.as_str(), p)));
    }
    partitions.sort();
    Ok(partitions)
}

/// How many of the group's last assignments a member remembers.
const MAPS_KEPT: usize = 8;

/// One generation's whole assignment, as its leader handed it out: every member finds it in
/// its assignment's user data, so whoever leads a later generation knows who held what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct GroupMap {
    generation: i32,
    members: BTreeMap<String, Vec<TopicPartition>>,
}

/// What a member reports in its subscription's user data when it joins: the generation of the
/// last epoch it drained and closed (it holds nothing while it joins), and the newest map it knows.
///
/// On Tansu 0.6 a member's metadata is that of its LAST JoinGroup: a member in the middle of an
/// epoch (or of its drain) is listed with the report it made before that epoch, so `drained` is
/// older than the generation that gave it its partitions: the leader reads that as "still held".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MemberReport {
    drained: i32,
    map: Option<GroupMap>,
}

/// Version of our user data layout.
const USER_DATA_VERSION: i16 = 1;

impl GroupMap {
    fn put(&self, b: &mut BytesMut) {
        b.put_i32(self.generation);
        b.put_i32(i32::try_from(self.members.len()).unwrap_or(i32::MAX));
        for (id, parts) in &self.members {
            put_str(b, id);
            b.put_i32(i32::try_from(parts.len()).unwrap_or(i32::MAX));
            for tp in parts {
                put_str(b, &tp.topic);
                b.put_i32(tp.partition);
            }
        }
    }

    fn take(r: &mut &[u8]) -> Option<Self> {
        let generation = take_i32(r)?;
        let n = usize::try_from(take_i32(r)?).ok()?;
        let mut members = BTreeMap::new();
        for _ in 0..n.min(100_000) {
            let id = take_str(r)?;
            let m = usize::try_from(take_i32(r)?).ok()?;
            let mut parts = Vec::new();
            for _ in 0..m.min(100_000) {
                let topic = take_str(r)?;
                parts.push(TopicPartition::new(topic.as_str(), take_i32(r)?));
            }
            members.insert(id, parts);
        }
        Some(Self { generation, members })
    }

    /// The assignment's user data.
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(USER_DATA_VERSION);
        self.put(&mut b);
        b.freeze()
    }

    /// `None` for anything else than our layout (another client's user data).
    fn decode(mut b: &[u8]) -> Option<Self> {
        (take_i16(&mut b)? == USER_DATA_VERSION).then_some(())?;
        Self::take(&mut b)
    }
}

impl MemberReport {
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(USER_DATA_VERSION);
        b.put_i32(self.drained);
        match &self.map {
            Some(m) => {
                b.put_i8(1);
                m.put(&mut b);
            }
            None => b.put_i8(0),
        }
        b.freeze()
    }

    /// `None` for anything else than our layout.
    fn decode(mut b: &[u8]) -> Option<Self> {
        (take_i16(&mut b)? == USER_DATA_VERSION).then_some(())?;
        let drained = take_i32(&mut b)?;
        let map = match take(&mut b, 1)?[0] {
            0 => None,
            _ => Some(GroupMap::take(&mut b)?),
        };
        Some(Self { drained, map })
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    let n = s.len().min(i16::MAX as usize);
    b.put_i16(n as i16);
    b.put_slice(&s.as_bytes()[..n]);
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    (r.len() >= n).then_some(())?;
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

fn take_i16(r: &mut &[u8]) -> Option<i16> {
    let s = take(r, 2)?;
    Some(i16::from_be_bytes([s[0], s[1]]))
}

fn take_i32(r: &mut &[u8]) -> Option<i32> {
    let s = take(r, 4)?;
    Some(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn take_str(r: &mut &[u8]) -> Option<String> {
    let n = usize::try_from(take_i16(r)?).ok()?;
    String::from_utf8(take(r, n)?.to_vec()).ok()
}

/// The leader's assignor, and what this member knows of the group's assignments.
///
/// Per topic, the members subscribed to it (sorted by member id) share its partitions evenly
/// (`partitions / members` each, the first `partitions % members` one more). Sticky: a member
/// keeps what it held in the newest map known up to its share, so a rebalance moves only what
/// it must; what is left is dealt in contiguous ranges, in member order (with no history this is
/// Kafka's range assignor).
///
/// Revoke first, whatever the coordinator does: a partition that a map newer than a current
/// member's `drained` report gave that member may still be read by it (Tansu 0.6 forms a new
/// generation without waiting for every member to rejoin, and lists a member with the metadata
/// of its last JoinGroup), so it goes to that member again (within its share) or to nobody in
/// this generation; if two current members may still hold it, to nobody. The member then gets
/// this generation's assignment only after draining its last one (it rejoins only then), so a
/// partition revoked this way is free in the next generation. A member absent from the join (it
/// left, or expired) releases its partitions at once. When a partition was held back or a member
/// left below its share, `held_back` is set: the leader rebalances again after a session timeout.
///
/// On Tansu 0.6 the leader always sees its followers' reports from before their current epoch
/// (it computes the assignment as soon as it rejoins), so moving a partition between two
/// members that stay takes two generations: revoke, then assign.
#[derive(Debug, Default)]
struct Assignor {
    maps: BTreeMap<i32, GroupMap>,
    held_back: bool,
}

impl Assignor {
    /// Remembers `map` (`own`: handed to this member by the coordinator, it replaces what a
    /// reused generation id had).
    fn learn(&mut self, map: GroupMap, own: bool) {
        if own {
            self.maps.insert(map.generation, map);
        } else {
            self.maps.entry(map.generation).or_insert(map);
        }
        while self.maps.len() > MAPS_KEPT {
            self.maps.pop_first();
        }
    }

    fn newest(&self) -> Option<&GroupMap> {
        self.maps.values().next_back()
    }

    /// One assignment per member of `joined` over the `known` partitions.
    fn assign(&mut self, joined: &JoinedGroup, known: &[TopicPartition]) -> Vec<(String, Bytes)> {
        let mut members: Vec<(&str, Vec<String>, i32)> = Vec::new();
        for m in &joined.members {
            let topics = consumer_protocol::decode_subscription(&m.metadata).unwrap_or_default();
            let report = consumer_protocol::subscription_user_data(&m.metadata)
                .ok()
                .flatten()
                .and_then(|ud| MemberReport::decode(&ud));
            let drained = match report {
                Some(r) => {
                    if let Some(map) = r.map {
                        self.learn(map, false);
                    }
                    r.drained
                }
                None => -1,
            };
            members.push((m.member_id.as_str(), topics, drained));
        }
        members.sort_by(|a, b| a.0.cmp(b.0));
        // Who may still hold what: None = more than one current member.
        let mut pinned: HashMap<&TopicPartition, Option<&str>> = HashMap::new();
        for (id, _, drained) in &members {
            for map in self.maps.values().filter(|m| m.generation > *drained) {
                for tp in map.members.get(*id).into_iter().flatten() {
                    let e = pinned.entry(tp).or_insert(Some(*id));
                    if *e != Some(*id) {
                        *e = None;
                    }
                }
            }
        }
        let previous = self.newest().map(|m| &m.members);
        let mut by_topic: BTreeMap<&str, Vec<&TopicPartition>> = BTreeMap::new();
        for tp in known {
            by_topic.entry(&tp.topic).or_default().push(tp);
        }
        let mut out: BTreeMap<&str, Vec<TopicPartition>> =
            members.iter().map(|(id, _, _)| (*id, Vec::new())).collect();
        let mut held_back = false;
        for (topic, parts) in by_topic {
            let subscribed: Vec<&str> = members
                .iter()
                .filter(|(_, topics, _)| topics.iter().any(|t| t == topic))
                .map(|(id, _, _)| *id)
                .collect();
            if subscribed.is_empty() {
                continue;
            }
            let (each, mut extra) =
                (parts.len() / subscribed.len(), parts.len() % subscribed.len());
            // Partitions that only their possible holder may get (or nobody).
            let mut taken: HashSet<&TopicPartition> =
                parts.iter().copied().filter(|tp| pinned.contains_key(tp)).collect();
            let mut mine: Vec<Vec<TopicPartition>> = vec![Vec::new(); subscribed.len()];
            let mut quota = vec![each; subscribed.len()];
            for (i, id) in subscribed.iter().enumerate() {
                let must: Vec<&TopicPartition> = parts
                    .iter()
                    .copied()
                    .filter(|tp| pinned.get(tp).copied().flatten() == Some(*id))
                    .collect();
                // What it keeps of what it held.
                let held: Vec<&TopicPartition> = previous
                    .and_then(|p| p.get(*id))
                    .into_iter()
                    .flatten()
                    .filter_map(|tp| parts.iter().copied().find(|p| *p == tp))
                    .filter(|tp| !taken.contains(tp))
                    .collect();
                if must.len() + held.len() > each && extra > 0 {
                    quota[i] += 1;
                    extra -= 1;
                }
                // What it may still hold first (beyond its share: revoked, and to nobody
                // else in this generation), then the rest of what it held.
                for tp in must.into_iter().take(quota[i]) {
                    mine[i].push(tp.clone());
                }
                for tp in held {
                    if mine[i].len() >= quota[i] {
                        break;
                    }
                    taken.insert(tp);
                    mine[i].push(tp.clone());
                }
            }
            // The remaining larger shares go to the first members in order.
            for q in quota.iter_mut() {
                if extra == 0 {
                    break;
                }
                if *q == each {
                    *q += 1;
                    extra -= 1;
                }
            }
            let mut rest = parts.iter().filter(|tp| !taken.contains(*tp));
            for (i, list) in mine.iter_mut().enumerate() {
                while list.len() < quota[i] {
                    match rest.next() {
                        Some(tp) => list.push((*tp).clone()),
                        None => break,
                    }
                }
                list.sort();
                held_back |= list.len() < each;
            }
            let dealt: usize = mine.iter().map(Vec::len).sum();
            held_back |= dealt < parts.len();
            for (id, list) in subscribed.iter().zip(mine) {
                if let Some(o) = out.get_mut(id) {
                    o.extend(list);
                }
            }
        }
        self.held_back = held_back;
        let map = GroupMap {
            generation: joined.generation_id,
            members: out.iter().map(|(id, parts)| ((*id).to_owned(), parts.clone())).collect(),
        };
        let user_data = map.encode();
        let assignments = out
            .into_iter()
            .map(|(id, parts)| {
                (
                    id.to_owned(),
                    consumer_protocol::encode_assignment_with_user_data(&parts, Some(&user_data)),
                )
            })
            .collect();
        // Conservative: a map some members may have received counts even if this leader's
        // sync fails.
        self.learn(map, true);
        assignments
    }
}

/// One epoch's offsets: the group's ([`GroupOffsetStore`] over this generation). A load that
/// fails retriably is retried until the epoch ends; a commit the group refuses (a generation that ended)
/// is reported retriable: nothing is committed, the records are read again by the partition's
/// next owner, and the heartbeat ends the epoch.
#[derive(Debug)]
struct EpochStore {
    group: GroupOffsetStore,
    backoff: crate::backoff::BackoffConfig,
}

#[async_trait]
impl OffsetStore for EpochStore {
    async fn load(&self, namespace: &str) -> Result<OffsetMap> {
        let mut backoff = Backoff::new(self.backoff);
        loop {
            match self.group.load(namespace).await {
                Ok(m) => return Ok(m),
                // Retried for as long as the epoch lives: the runtime drops this load when the
                // epoch ends (a rebalance, a lost membership, shutdown), so a Kafka outage at a
                // rebalance delays the task instead of failing it.
                Err(e) if e.is_retriable() => {
                    if backoff.attempts() == 10 {
                        warn!(connector = namespace, error = %e.report(), "the consumer group's offsets are still unavailable; retrying until the epoch ends");
                    } else {
                        debug!(connector = namespace, error = %e.report(), "group offsets not available yet");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn save(&self, namespace: &str, offsets: &OffsetMap) -> Result<()> {
        self.group.save(namespace, offsets).await.map_err(|e| {
            if e.is_retriable() {
                e
            } else {
                warn!(connector = namespace, error = %e.report(), "the consumer group refused the commit (its generation ended?): these records are read again by the partitions' next owner");
                Error::retriable(format!("consumer group commit refused: {}", e.report()))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::group::JoinedMember;

    /// A join of generation `generation`: members (id, report) subscribed to `topics`.
    fn joined_with(
        generation: i32,
        members: &[(&str, Option<MemberReport>)],
        topics: &[&str],
    ) -> JoinedGroup {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        JoinedGroup {
            generation_id: generation,
            protocol: "range".into(),
            leader_id: members[0].0.into(),
            member_id: members[0].0.into(),
            members: members
                .iter()
                .map(|(id, report)| JoinedMember {
                    member_id: (*id).into(),
                    metadata: match report {
                        Some(r) => consumer_protocol::encode_subscription_with_user_data(
                            &topics,
                            Some(&r.encode()),
                        ),
                        None => consumer_protocol::encode_subscription(&topics),
                    },
                })
                .collect(),
        }
    }

    /// Every member reports it drained `generation - 1` (it rejoined after its drain).
    fn joined(generation: i32, ids: &[&str]) -> JoinedGroup {
        let members: Vec<(&str, Option<MemberReport>)> = ids
            .iter()
            .map(|id| (*id, Some(MemberReport { drained: generation - 1, map: None })))
            .collect();
        joined_with(generation, &members, &["t"])
    }

    fn stale(drained: i32) -> Option<MemberReport> {
        Some(MemberReport { drained, map: None })
    }

    fn decoded(out: &[(String, Bytes)]) -> Vec<(String, Vec<i32>)> {
        out.iter()
            .map(|(id, b)| {
                let parts = consumer_protocol::decode_assignment(b).unwrap_or_default();
                (id.clone(), parts.iter().map(|tp| tp.partition).collect())
            })
            .collect()
    }

    fn partitions(n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| TopicPartition::new("t", p)).collect()
    }

    fn map(generation: i32, members: &[(&str, &[i32])]) -> GroupMap {
        GroupMap {
            generation,
            members: members
                .iter()
                .map(|(id, ps)| {
                    ((*id).to_owned(), ps.iter().map(|p| TopicPartition::new("t", *p)).collect())
                })
                .collect(),
        }
    }

    #[test]
    fn without_history_it_assigns_contiguous_balanced_ranges_over_members_sorted_by_id() {
        let out = Assignor::default().assign(&joined(1, &["c", "a", "b"]), &partitions(7));
        assert_eq!(
            decoded(&out),
            [("a".into(), vec![0, 1, 2]), ("b".into(), vec![3, 4]), ("c".into(), vec![5, 6])]
        );
        let out = Assignor::default().assign(&joined(1, &["a", "b", "c"]), &partitions(2));
        assert_eq!(decoded(&out)[2], ("c".into(), vec![]), "a member without partitions");
    }

    #[test]
    fn members_keep_what_they_held_and_only_a_leavers_partitions_move() {
        let known = partitions(6);
        let mut a = Assignor::default();
        let first = a.assign(&joined(1, &["a", "b", "c"]), &known);
        assert_eq!(
            decoded(&first),
            [("a".into(), vec![0, 1]), ("b".into(), vec![2, 3]), ("c".into(), vec![4, 5])]
        );
        // "a" leaves: b and c keep theirs and share a's.
        let second = a.assign(&joined(2, &["b", "c"]), &known);
        assert_eq!(decoded(&second), [("b".into(), vec![0, 2, 3]), ("c".into(), vec![1, 4, 5])]);
        assert!(!a.held_back);
        // "d" joins: it gets one from each, the others keep the rest.
        let third = a.assign(&joined(3, &["b", "c", "d"]), &known);
        assert_eq!(
            decoded(&third),
            [("b".into(), vec![0, 2]), ("c".into(), vec![1, 4]), ("d".into(), vec![3, 5])]
        );
        assert!(!a.held_back);
    }

    /// The case seen on Tansu 0.6 (D's run, 15:38:43): after a worker's clean stop the survivors
    /// form a new generation while a member that held a partition in the last one is still
    /// draining it (listed with the metadata of its previous JoinGroup).
    #[test]
    fn a_partition_whose_holder_has_not_reported_its_drain_goes_to_nobody_else() {
        let known = partitions(4);
        let mut a = Assignor::default();
        a.learn(map(19, &[("w1a", &[0]), ("w1b", &[1]), ("t0", &[2]), ("t1", &[3])]), true);
        // w1a, w1b left; t1 rejoined (drained 19); t0 is still in generation 19 (its metadata
        // says it drained 16); "new" never held anything.
        let out = a.assign(
            &joined_with(21, &[("t1", stale(19)), ("t0", stale(16)), ("new", stale(-1))], &["t"]),
            &known,
        );
        let out = decoded(&out);
        assert_eq!(out.iter().filter(|(_, ps)| ps.contains(&2)).count(), 1);
        assert_eq!(out[1], ("t0".into(), vec![2]), "{out:?}");
        assert_eq!(out[2], ("t1".into(), vec![3]), "t1 keeps what it had: {out:?}");
        let all: usize = out.iter().map(|(_, ps)| ps.len()).sum();
        assert_eq!(all, 4, "the leavers' partitions are released at once: {out:?}");
        // Once t0 reports its drain, its partition may move.
        let out = a.assign(
            &joined_with(22, &[("t1", stale(21)), ("t0", stale(21)), ("new", stale(21))], &["t"]),
            &known,
        );
        assert!(!a.held_back);
        assert_eq!(decoded(&out).iter().map(|(_, ps)| ps.len()).collect::<Vec<_>>(), [2, 1, 1]);
    }

    #[test]
    fn a_leader_without_history_learns_the_newest_map_from_a_members_report() {
        let mut a = Assignor::default();
        let report =
            Some(MemberReport { drained: 7, map: Some(map(7, &[("x", &[0]), ("y", &[1])])) });
        // y is still in generation 7; the new leader "l" never saw that map.
        let out = a.assign(
            &joined_with(8, &[("l", stale(-1)), ("x", report), ("y", stale(6))], &["t"]),
            &partitions(2),
        );
        let out = decoded(&out);
        assert_eq!(out[2], ("y".into(), vec![1]), "{out:?}");
        assert!(!out[0].1.contains(&1) && !out[1].1.contains(&1));
    }

    #[test]
    fn a_partition_two_current_members_may_hold_goes_to_nobody_and_the_leader_rebalances_later() {
        let mut a = Assignor::default();
        a.learn(map(3, &[("x", &[0]), ("y", &[1])]), true);
        a.learn(map(4, &[("x", &[1]), ("y", &[0])]), true);
        let out =
            a.assign(&joined_with(5, &[("x", stale(2)), ("y", stale(2))], &["t"]), &partitions(2));
        assert_eq!(decoded(&out), [("x".into(), vec![]), ("y".into(), vec![])]);
        assert!(a.held_back);
    }

    #[test]
    fn holders_are_revoked_beyond_their_share_and_the_next_generation_hands_that_out() {
        let known = partitions(6);
        let mut a = Assignor::default();
        a.learn(map(2, &[("a", &[0, 1, 2]), ("b", &[3, 4, 5])]), true);
        // c joins while a and b still run generation 2.
        let out = a.assign(
            &joined_with(3, &[("a", stale(1)), ("b", stale(1)), ("c", stale(-1))], &["t"]),
            &known,
        );
        assert_eq!(
            decoded(&out),
            [("a".into(), vec![0, 1]), ("b".into(), vec![3, 4]), ("c".into(), vec![])],
            "revoked beyond their share, and given to nobody else yet"
        );
        assert!(a.held_back, "c is below its share: the leader rebalances again");
        // Still stale (Tansu: the leader computes before its followers rejoin): their reports
        // predate generation 3, whose map no longer lists 2 and 5 for them; 2 and 5 may still
        // be held per map 2 though, so they stay back until a and b report generation 2 drained.
        let out = a.assign(
            &joined_with(4, &[("a", stale(2)), ("b", stale(2)), ("c", stale(3))], &["t"]),
            &known,
        );
        assert_eq!(
            decoded(&out),
            [("a".into(), vec![0, 1]), ("b".into(), vec![3, 4]), ("c".into(), vec![2, 5])]
        );
        assert!(!a.held_back);
    }

    #[test]
    fn reports_and_maps_ride_in_standard_consumer_protocol_user_data() {
        let report =
            MemberReport { drained: 9, map: Some(map(9, &[("m-1", &[0, 3]), ("m-2", &[])])) };
        let sub = consumer_protocol::encode_subscription_with_user_data(
            &["t".into()],
            Some(&report.encode()),
        );
        assert_eq!(consumer_protocol::decode_subscription(&sub).unwrap(), vec!["t"]);
        let ud = consumer_protocol::subscription_user_data(&sub).unwrap().unwrap();
        assert_eq!(MemberReport::decode(&ud), Some(report.clone()));
        let out = Assignor::default()
            .assign(&joined_with(10, &[("m-1", Some(report))], &["t"]), &partitions(2));
        assert_eq!(decoded(&out), [("m-1".into(), vec![0, 1])]);
        let ud = consumer_protocol::assignment_user_data(&out[0].1).unwrap().unwrap();
        assert_eq!(GroupMap::decode(&ud), Some(map(10, &[("m-1", &[0, 1])])));
        assert_eq!(MemberReport::decode(b"garbage"), None);
        assert_eq!(GroupMap::decode(&[]), None);
    }
}
