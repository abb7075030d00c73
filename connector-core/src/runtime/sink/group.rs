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
        // The subscription never changes: a member rejoining with other metadata makes the
        // coordinator start yet another generation (on Tansu 0.6 that never settles).
        let protocols =
            [("range".to_owned(), consumer_protocol::encode_subscription(&self.topics))];
        let rebalance = self.timeouts.rebalance;
        let outcome = loop {
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
            let mut assign = |joined: &JoinedGroup| assignor.assign(joined, &known, rebalance);
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
                    assignor.learn(map);
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
            let again = (generation.is_leader() && assignor.held_back).then_some(rebalance);
            if again.is_some() {
                info!(connector = %self.name, task = self.task_id, %group, generation = generation.id, "partitions held back for their last owner's drain: rebalancing again after a rebalance timeout unless the group does first");
            }
            let ended = self.heartbeat(&mut member, &end, closed, leader, again).await;
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
/// Revoke first, whatever the coordinator does. Tansu 0.6 answers the leader's JoinGroup at
/// once, before the followers rejoin: the leader computes a generation while every follower
/// still runs (or drains) its last epoch. So a partition that the newest map, or any map of the
/// last rebalance timeout (the time a member has to drain and rejoin), gave to another current
/// member may still be read by it: it goes to that member again (within its share) or to nobody
/// in this generation; if two current members may hold it, to nobody. A member gets a
/// generation's assignment only after draining its last epoch (it rejoins only then), so what
/// was revoked is free once that map aged out. A member absent from the join (it left, or
/// expired) releases its partitions at once. When a partition was held back or a member left
/// below its share, `held_back` is set: the leader rebalances again after a rebalance timeout.
/// Moving a partition between two members that stay thus takes two generations.
#[derive(Debug, Default)]
struct Assignor {
    maps: BTreeMap<i32, (GroupMap, Instant)>,
    held_back: bool,
}

impl Assignor {
    /// Remembers `map` (it replaces what a reused generation id had).
    fn learn(&mut self, map: GroupMap) {
        self.maps.insert(map.generation, (map, Instant::now()));
        while self.maps.len() > MAPS_KEPT {
            self.maps.pop_first();
        }
    }

    fn newest(&self) -> Option<&GroupMap> {
        self.maps.values().next_back().map(|(m, _)| m)
    }

    /// One assignment per member of `joined` over the `known` partitions; `window`: how long a
    /// member may take to drain and rejoin (the rebalance timeout).
    fn assign(
        &mut self,
        joined: &JoinedGroup,
        known: &[TopicPartition],
        window: Duration,
    ) -> Vec<(String, Bytes)> {
        let mut members: Vec<(&str, Vec<String>)> = joined
            .members
            .iter()
            .map(|m| {
                let topics =
                    consumer_protocol::decode_subscription(&m.metadata).unwrap_or_default();
                (m.member_id.as_str(), topics)
            })
            .collect();
        members.sort_by(|a, b| a.0.cmp(b.0));
        // Who may still hold what (None: more than one current member). Not the leader itself:
        // it drained before it joined.
        let newest = self.maps.keys().next_back().copied();
        let mut pinned: HashMap<&TopicPartition, Option<&str>> = HashMap::new();
        for (id, _) in members.iter().filter(|(id, _)| *id != joined.member_id) {
            let recent = self
                .maps
                .iter()
                .filter(|(g, (_, at))| Some(**g) == newest || at.elapsed() < window);
            for (_, (map, _)) in recent {
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
            members.iter().map(|(id, _)| (*id, Vec::new())).collect();
        let mut held_back = false;
        for (topic, parts) in by_topic {
            let subscribed: Vec<&str> = members
                .iter()
                .filter(|(_, topics)| topics.iter().any(|t| t == topic))
                .map(|(id, _)| *id)
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
        self.learn(map);
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

    const WINDOW: Duration = Duration::from_secs(10);

    /// A join of `generation` led by `ids[0]`, every member subscribed to "t".
    fn joined(generation: i32, ids: &[&str]) -> JoinedGroup {
        JoinedGroup {
            generation_id: generation,
            protocol: "range".into(),
            leader_id: ids[0].into(),
            member_id: ids[0].into(),
            members: ids
                .iter()
                .map(|id| JoinedMember {
                    member_id: (*id).into(),
                    metadata: consumer_protocol::encode_subscription(&["t".into()]),
                })
                .collect(),
        }
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
        let out = Assignor::default().assign(&joined(1, &["c", "a", "b"]), &partitions(7), WINDOW);
        assert_eq!(
            decoded(&out),
            [("a".into(), vec![0, 1, 2]), ("b".into(), vec![3, 4]), ("c".into(), vec![5, 6])]
        );
        let out = Assignor::default().assign(&joined(1, &["a", "b", "c"]), &partitions(2), WINDOW);
        assert_eq!(decoded(&out)[2], ("c".into(), vec![]), "a member without partitions");
    }

    #[test]
    fn a_leavers_partitions_move_at_once_and_a_followers_move_only_after_revocation() {
        let known = partitions(6);
        let mut a = Assignor::default();
        let first = a.assign(&joined(1, &["a", "b", "c"]), &known, WINDOW);
        assert_eq!(
            decoded(&first),
            [("a".into(), vec![0, 1]), ("b".into(), vec![2, 3]), ("c".into(), vec![4, 5])]
        );
        // "a" leaves: b (leader) and c keep theirs and share a's at once.
        let second = a.assign(&joined(2, &["b", "c"]), &known, WINDOW);
        assert_eq!(decoded(&second), [("b".into(), vec![0, 2, 3]), ("c".into(), vec![1, 4, 5])]);
        assert!(!a.held_back);
        // "d" joins while c may still read 1, 4, 5: c keeps its share, 5 goes to nobody yet.
        let third = a.assign(&joined(3, &["b", "c", "d"]), &known, WINDOW);
        assert_eq!(
            decoded(&third),
            [("b".into(), vec![0, 2]), ("c".into(), vec![1, 4]), ("d".into(), vec![3])]
        );
        assert!(a.held_back, "the leader rebalances again");
        // A rebalance timeout later c has drained generation 2: 5 is free.
        let fourth = a.assign(&joined(4, &["b", "c", "d"]), &known, Duration::ZERO);
        assert_eq!(
            decoded(&fourth),
            [("b".into(), vec![0, 2]), ("c".into(), vec![1, 4]), ("d".into(), vec![3, 5])]
        );
        assert!(!a.held_back);
    }

    /// The case seen on Tansu 0.6 (D's run, 15:38:43): after a worker's clean stop the survivors
    /// formed a new generation while a member that held a partition in the last one was still
    /// draining it, and the leader gave that partition to itself (read twice for 0.5 s).
    #[test]
    fn a_partition_a_follower_may_still_read_goes_to_nobody_else() {
        let mut a = Assignor::default();
        a.learn(map(19, &[("w1a", &[0]), ("w1b", &[1]), ("t0", &[2]), ("t1", &[3])]));
        // w1a and w1b left; t1 leads; t0 still drains generation 19; "new" never held anything.
        let out = a.assign(&joined(21, &["t1", "t0", "new"]), &partitions(4), WINDOW);
        assert_eq!(
            decoded(&out),
            [("new".into(), vec![0, 1]), ("t0".into(), vec![2]), ("t1".into(), vec![3])],
            "the leavers' partitions are released at once, t0's stays t0's"
        );
    }

    #[test]
    fn a_partition_two_followers_may_hold_goes_to_nobody_and_the_leader_rebalances_later() {
        let mut a = Assignor::default();
        a.learn(map(3, &[("x", &[0]), ("y", &[1])]));
        a.learn(map(4, &[("x", &[1]), ("y", &[0])]));
        let out = a.assign(&joined(5, &["l", "x", "y"]), &partitions(2), WINDOW);
        assert_eq!(
            decoded(&out),
            [("l".into(), vec![]), ("x".into(), vec![]), ("y".into(), vec![])]
        );
        assert!(a.held_back);
    }

    #[test]
    fn the_whole_map_rides_in_standard_consumer_protocol_user_data() {
        let out = Assignor::default().assign(&joined(10, &["m-1", "m-2"]), &partitions(3), WINDOW);
        assert_eq!(decoded(&out), [("m-1".into(), vec![0, 1]), ("m-2".into(), vec![2])]);
        for (_, b) in &out {
            let ud = consumer_protocol::assignment_user_data(b).unwrap().unwrap();
            assert_eq!(GroupMap::decode(&ud), Some(map(10, &[("m-1", &[0, 1]), ("m-2", &[2])])));
        }
        assert_eq!(GroupMap::decode(b"garbage"), None);
        assert_eq!(GroupMap::decode(&[]), None);
    }
}
