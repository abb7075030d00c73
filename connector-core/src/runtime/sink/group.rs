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
use bytes::Bytes;
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
        let protocols =
            [("range".to_owned(), consumer_protocol::encode_subscription(&self.topics))];
        let mut backoff = Backoff::new(self.client.config().retry_backoff);
        // The last assignment this member made as the leader (what sticks).
        let mut previous: HashMap<String, Vec<TopicPartition>> = HashMap::new();
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
            let mut assign = |joined: &JoinedGroup| assign_sticky(joined, &known, &mut previous);
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
            let ended = self.heartbeat(&mut member, &end, closed, leader).await;
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
                Ended::Repartition => {
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
    ) -> Ended {
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

/// The leader's assignor: per topic, the members subscribed to it (sorted by member id) share its
/// partitions evenly (`partitions / members` each, the first `partitions % members` one more).
/// Sticky: a member keeps what it held in `previous` (the last assignment this leader made) up to
/// its share, so a rebalance moves only what it must; what is left is dealt in contiguous ranges,
/// in member order (with no history this is Kafka's range assignor). Every member gets an
/// assignment (maybe empty); `previous` becomes this one.
fn assign_sticky(
    joined: &JoinedGroup,
    known: &[TopicPartition],
    previous: &mut HashMap<String, Vec<TopicPartition>>,
) -> Vec<(String, Bytes)> {
    let mut members: Vec<(&str, Vec<String>)> = joined
        .members
        .iter()
        .map(|m| {
            let topics = consumer_protocol::decode_subscription(&m.metadata).unwrap_or_default();
            (m.member_id.as_str(), topics)
        })
        .collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    let mut by_topic: BTreeMap<&str, Vec<&TopicPartition>> = BTreeMap::new();
    for tp in known {
        by_topic.entry(&tp.topic).or_default().push(tp);
    }
    let mut out: BTreeMap<&str, Vec<TopicPartition>> =
        members.iter().map(|(id, _)| (*id, Vec::new())).collect();
    for (topic, parts) in by_topic {
        let subscribed: Vec<&str> = members
            .iter()
            .filter(|(_, topics)| topics.iter().any(|t| t == topic))
            .map(|(id, _)| *id)
            .collect();
        if subscribed.is_empty() {
            continue;
        }
        let (each, mut extra) = (parts.len() / subscribed.len(), parts.len() % subscribed.len());
        let mut taken: HashSet<&TopicPartition> = HashSet::new();
        let mut mine: Vec<Vec<TopicPartition>> = vec![Vec::new(); subscribed.len()];
        let mut quota = vec![each; subscribed.len()];
        // What each member keeps of what it held.
        for (i, id) in subscribed.iter().enumerate() {
            let held: Vec<&TopicPartition> = previous
                .get(*id)
                .into_iter()
                .flatten()
                .filter_map(|tp| parts.iter().copied().find(|p| *p == tp))
                .filter(|tp| !taken.contains(tp))
                .collect();
            if held.len() > each && extra > 0 {
                quota[i] += 1;
                extra -= 1;
            }
            for tp in held.into_iter().take(quota[i]) {
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
        }
        for (id, list) in subscribed.iter().zip(mine) {
            if let Some(o) = out.get_mut(id) {
                o.extend(list);
            }
        }
    }
    *previous = out.iter().map(|(id, parts)| ((*id).to_owned(), parts.clone())).collect();
    out.into_iter()
        .map(|(id, parts)| (id.to_owned(), consumer_protocol::encode_assignment(&parts)))
        .collect()
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

    fn joined(ids: &[&str], topics: &[&str]) -> JoinedGroup {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        JoinedGroup {
            generation_id: 1,
            protocol: "range".into(),
            leader_id: ids[0].into(),
            member_id: ids[0].into(),
            members: ids
                .iter()
                .map(|id| JoinedMember {
                    member_id: (*id).into(),
                    metadata: consumer_protocol::encode_subscription(&topics),
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

    #[test]
    fn without_history_it_assigns_contiguous_balanced_ranges_over_members_sorted_by_id() {
        let known: Vec<_> = (0..7).map(|p| TopicPartition::new("t", p)).collect();
        let out = assign_sticky(&joined(&["c", "a", "b"], &["t"]), &known, &mut HashMap::new());
        assert_eq!(
            decoded(&out),
            [("a".into(), vec![0, 1, 2]), ("b".into(), vec![3, 4]), ("c".into(), vec![5, 6])]
        );
        let known: Vec<_> = (0..2).map(|p| TopicPartition::new("t", p)).collect();
        let out = assign_sticky(&joined(&["a", "b", "c"], &["t"]), &known, &mut HashMap::new());
        assert_eq!(decoded(&out)[2], ("c".into(), vec![]), "a member without partitions");
    }

    #[test]
    fn members_keep_what_they_held_and_only_a_leavers_partitions_move() {
        let known: Vec<_> = (0..6).map(|p| TopicPartition::new("t", p)).collect();
        let mut previous = HashMap::new();
        let first = assign_sticky(&joined(&["a", "b", "c"], &["t"]), &known, &mut previous);
        assert_eq!(
            decoded(&first),
            [("a".into(), vec![0, 1]), ("b".into(), vec![2, 3]), ("c".into(), vec![4, 5])]
        );
        // "a" leaves: b and c keep theirs and share a's.
        let second = assign_sticky(&joined(&["b", "c"], &["t"]), &known, &mut previous);
        assert_eq!(decoded(&second), [("b".into(), vec![0, 2, 3]), ("c".into(), vec![1, 4, 5])]);
        // "d" joins: it gets one from each, the others keep the rest.
        let third = assign_sticky(&joined(&["b", "c", "d"], &["t"]), &known, &mut previous);
        assert_eq!(
            decoded(&third),
            [("b".into(), vec![0, 2]), ("c".into(), vec![1, 4]), ("d".into(), vec![3, 5])]
        );
    }
}
