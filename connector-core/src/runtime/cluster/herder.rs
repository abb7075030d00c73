//! The [`Herder`]: one worker of a worker group. It joins the group, runs the assignor when it
//! is the leader, runs its share of the tasks on a [`Worker`], heartbeats, and follows every
//! rebalance (stopping what was revoked before anyone else starts it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::assign::{assign, MemberTasks, TaskId};
use crate::kafka::group::{GroupError, GroupMember, GroupTimeouts, HeartbeatOutcome, JoinedGroup};
use crate::kafka::{KafkaClient, ProducerRecord};
use crate::runtime::{ConnectorSpec, TaskState, Worker, WorkerError};

/// The group's protocol type (Kafka Connect's is "connect").
pub const PROTOCOL_TYPE: &str = "iiot-connect";
/// The one protocol our workers speak: [`assign`](super::assign) with [`WorkerMetadata`] and
/// [`WorkerAssignment`] as JSON.
pub const PROTOCOL_NAME: &str = "sticky-v1";
const VERSION: u32 = 1;
/// The compacted topic each worker writes its assignment to at every generation (Kafka
/// Connect's status topic): `connect status` reads it, since DescribeGroups does not show
/// assignments on every broker (Tansu returns member ids only).
pub const STATUS_TOPIC: &str = "connect-status";

/// One record of [`STATUS_TOPIC`] (JSON; key `<group>/<worker_id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The worker group.
    pub group: String,
    /// The worker that wrote it.
    pub worker_id: String,
    /// Its assignment of that generation (with every worker's tasks).
    pub assignment: WorkerAssignment,
}

/// What a worker sends when it joins (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMetadata {
    /// 1.
    pub version: u32,
    /// The worker's id.
    pub worker_id: String,
    /// The hash of its configuration (every worker must run the same).
    pub config_hash: String,
    /// The tasks it runs now.
    pub owned: Vec<TaskId>,
}

/// What the leader tells each worker (JSON). The generation and the whole map are in every
/// assignment, since DescribeGroups reports neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAssignment {
    /// 1.
    pub version: u32,
    /// The group generation this assignment is for.
    pub generation: i32,
    /// The leader's worker id.
    pub leader: String,
    /// Why this worker is refused (it must stop and leave), or `None`.
    pub error: Option<String>,
    /// The tasks it runs in this generation.
    pub tasks: Vec<TaskId>,
    /// The tasks it must stop (another worker gets them next generation).
    pub revoked: Vec<TaskId>,
    /// Every worker's tasks in this generation, by worker id.
    pub all: BTreeMap<String, Vec<TaskId>>,
}

impl WorkerAssignment {
    /// Reads an assignment (as `connect status` does with DescribeGroups' answer).
    ///
    /// # Errors
    /// Not an assignment of this protocol.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// How one worker joins its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HerderConfig {
    /// The worker group.
    pub group_id: String,
    /// This worker's id.
    pub worker_id: String,
    /// The configuration's hash ([`ConnectFile::config_hash`](crate::runner::ConnectFile)).
    pub config_hash: String,
    /// Session, heartbeat and rebalance timeouts.
    pub timeouts: GroupTimeouts,
}

/// Why a [`Herder`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HerderError {
    /// The leader refused this worker (its configuration differs from the group's).
    #[error("{0}")]
    Refused(String),
    /// A connector could not be started.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The group protocol failed for good.
    #[error(transparent)]
    Group(#[from] GroupError),
}

impl From<HerderError> for crate::Error {
    fn from(e: HerderError) -> Self {
        match e {
            HerderError::Worker(WorkerError::Start(e)) => e,
            HerderError::Group(e) => e.into(),
            other => crate::Error::fatal(other.to_string()),
        }
    }
}

/// One worker of a worker group: runs its share of `connectors` on `worker`.
///
/// ```no_run
/// use connector_core::runtime::cluster::{ClusterConfig, Herder, HerderConfig};
/// # async fn example(worker: connector_core::runtime::Worker, client: connector_core::kafka::KafkaClient,
/// #     connectors: Vec<(String, connector_core::runtime::ConnectorSpec)>) -> Result<(), connector_core::runtime::cluster::HerderError> {
/// let cluster = ClusterConfig { group_id: Some("connect-cluster".into()), ..Default::default() };
/// let config = HerderConfig {
///     group_id: "connect-cluster".into(),
///     worker_id: cluster.worker_id(),
///     config_hash: "…".into(),
///     timeouts: cluster.timeouts(),
/// };
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// Herder::new(worker, client, config).run(connectors, shutdown).await
/// # }
/// ```
pub struct Herder {
    worker: Worker,
    client: KafkaClient,
    config: HerderConfig,
}

/// Where the herder stands between rounds.
struct State {
    /// What runs here.
    owned: BTreeSet<TaskId>,
    /// Last successful join or heartbeat.
    last_ok: Instant,
    /// Failures already logged.
    failed: BTreeSet<TaskId>,
}

impl Herder {
    /// A herder running its tasks on `worker`, joining through `client`.
    pub fn new(worker: Worker, client: KafkaClient, config: HerderConfig) -> Self {
        Self { worker, client, config }
    }

    /// Starts `connectors` (none of their tasks yet) and takes part in the group until
    /// `shutdown` is cancelled: then every task here drains and commits, and only then the
    /// worker leaves the group (so the next owner starts from the committed offsets).
    ///
    /// # Errors
    /// A connector that cannot be started, or [`HerderError::Refused`] (its tasks stopped and
    /// the group left first).
    ///
    /// # Cancellation
    /// Cancel `shutdown` for a graceful stop.
    pub async fn run(
        self,
        connectors: Vec<(String, ConnectorSpec)>,
        shutdown: CancellationToken,
    ) -> Result<(), HerderError> {
        let mut all_tasks = Vec::new();
        for (name, spec) in &connectors {
            let n = self.worker.task_count(spec)?;
            all_tasks.extend((0..n).map(|t| TaskId::new(name.clone(), t)));
        }
        for (name, spec) in connectors {
            let started = tokio::select! {
                r = self.worker.start_tasks(&name, spec, &[]) => r,
                () = shutdown.cancelled() => break,
            };
            if let Err(e) = started {
                self.worker.shutdown().await;
                return Err(e.into());
            }
        }
        let c = &self.config;
        let mut member = GroupMember::new(
            self.client.clone(),
            c.group_id.clone(),
            PROTOCOL_TYPE,
            c.worker_id.clone(),
            c.timeouts,
        );
        let mut state =
            State { owned: BTreeSet::new(), last_ok: Instant::now(), failed: BTreeSet::new() };
        let result = self.rounds(&mut member, &mut state, &all_tasks, &shutdown).await;
        // Stop every task (drain, commit) before leaving: the next owner starts from what we
        // committed.
        self.worker.shutdown().await;
        if let Err(e) = member.leave().await {
            warn!(worker = %c.worker_id, group = %c.group_id, error = %e, "LeaveGroup failed; the group notices after the session timeout");
        }
        info!(worker = %c.worker_id, group = %c.group_id, "left the worker group");
        result
    }

    async fn rounds(
        &self,
        member: &mut GroupMember,
        state: &mut State,
        all_tasks: &[TaskId],
        shutdown: &CancellationToken,
    ) -> Result<(), HerderError> {
        let c = &self.config;
        let session = c.timeouts.session;
        'join: loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let metadata = WorkerMetadata {
                version: VERSION,
                worker_id: c.worker_id.clone(),
                config_hash: c.config_hash.clone(),
                owned: state.owned.iter().cloned().collect(),
            };
            let metadata = Bytes::from(serde_json::to_vec(&metadata).unwrap_or_default());
            let protocols = [(PROTOCOL_NAME.to_owned(), metadata)];
            let (group_id, worker_id) = (c.group_id.clone(), c.worker_id.clone());
            let mut leader = |joined: &JoinedGroup| lead(joined, &group_id, &worker_id, all_tasks);
            let joined = tokio::select! {
                r = member.join(&protocols, &mut leader) => r,
                () = shutdown.cancelled() => return Ok(()),
            };
            let generation = match joined {
                Ok(g) => g,
                Err(e) => {
                    warn!(worker = %c.worker_id, group = %c.group_id, error = %e, "joining the worker group failed; retrying");
                    self.stop_if_expired(state, session).await;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    continue 'join;
                }
            };
            state.last_ok = Instant::now();
            let assignment = match WorkerAssignment::decode(&generation.assignment) {
                Ok(a) => a,
                Err(e) => {
                    warn!(worker = %c.worker_id, generation = generation.id, error = %e, "unreadable assignment; stopping every task and rejoining");
                    self.stop_all(state).await;
                    continue 'join;
                }
            };
            if let Some(message) = assignment.error {
                error!(worker = %c.worker_id, group = %c.group_id, generation = generation.id, "{message}");
                return Err(HerderError::Refused(message));
            }
            let tasks: BTreeSet<TaskId> = assignment.tasks.iter().cloned().collect();
            let revoked: BTreeSet<TaskId> = assignment.revoked.iter().cloned().collect();
            info!(
                worker = %c.worker_id,
                generation = assignment.generation,
                leader = %assignment.leader,
                tasks = %list(&assignment.tasks),
                all = %assignment.all.iter().map(|(w, t)| format!("{w}=[{}]", list(t))).collect::<Vec<_>>().join(" "),
                "worker group generation"
            );
            self.publish_status(&assignment);
            for t in state.owned.difference(&tasks) {
                info!(worker = %c.worker_id, generation = assignment.generation, connector = %t.connector, task = t.task, "task revoked");
            }
            for t in tasks.difference(&state.owned) {
                info!(worker = %c.worker_id, generation = assignment.generation, connector = %t.connector, task = t.task, "task assigned");
            }
            // Apply (revoked tasks drain first), heartbeating meanwhile so a long drain does not
            // cost the membership.
            let mut rebalance = !revoked.is_empty();
            let mut lost = false;
            {
                let apply = self.apply(&state.owned, &tasks);
                tokio::pin!(apply);
                loop {
                    tokio::select! {
                        () = &mut apply => break,
                        () = tokio::time::sleep(c.timeouts.heartbeat) => {
                            match member.heartbeat().await {
                                Ok(HeartbeatOutcome::Stable) => state.last_ok = Instant::now(),
                                Ok(HeartbeatOutcome::Lost) => lost = true,
                                Ok(_) => rebalance = true,
                                Err(e) => warn!(worker = %c.worker_id, error = %e, "heartbeat failed"),
                            }
                        }
                    }
                }
            }
            state.owned = tasks;
            if lost {
                warn!(worker = %c.worker_id, "membership lost: stopping every task (another worker may own them now), then rejoining");
                self.stop_all(state).await;
                continue 'join;
            }
            if rebalance {
                // Revoked tasks are stopped: rejoin at once so the next owner gets them.
                continue 'join;
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(c.timeouts.heartbeat) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
                self.log_failures(state);
                match member.heartbeat().await {
                    Ok(HeartbeatOutcome::Stable) => state.last_ok = Instant::now(),
                    Ok(HeartbeatOutcome::RebalanceNeeded) => {
                        info!(worker = %c.worker_id, "rebalance: rejoining, tasks keep running");
                        continue 'join;
                    }
                    Ok(HeartbeatOutcome::Lost) => {
                        warn!(worker = %c.worker_id, "membership lost: stopping every task (another worker may own them now), then rejoining");
                        self.stop_all(state).await;
                        continue 'join;
                    }
                    Err(e) => {
                        warn!(worker = %c.worker_id, error = %e, "heartbeat failed");
                        if self.stop_if_expired(state, session).await {
                            continue 'join;
                        }
                    }
                }
            }
        }
    }

    /// Writes this generation's assignment to [`STATUS_TOPIC`] in the background (best effort,
    /// bounded by the request timeout).
    fn publish_status(&self, assignment: &WorkerAssignment) {
        let c = &self.config;
        let record = StatusRecord {
            group: c.group_id.clone(),
            worker_id: c.worker_id.clone(),
            assignment: assignment.clone(),
        };
        let Ok(value) = serde_json::to_vec(&record) else { return };
        let key = format!("{}/{}", c.group_id, c.worker_id);
        let client = self.client.clone();
        let bound = client.config().request_timeout();
        tokio::spawn(async move {
            let write = async {
                if client.topic_metadata(STATUS_TOPIC).await?.is_none() {
                    let rf = client.config().topic_replication_factor;
                    client
                        .create_topic_with_configs(
                            STATUS_TOPIC,
                            1,
                            rf,
                            &[("cleanup.policy", "compact")],
                        )
                        .await?;
                }
                let record = ProducerRecord::new(STATUS_TOPIC, Bytes::from(value))
                    .with_key(Bytes::from(key))
                    .with_partition(0);
                client.produce(vec![record]).await.map(|_| ())
            };
            match tokio::time::timeout(bound * 2, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(topic = STATUS_TOPIC, error = %e, "cannot write the worker status")
                }
                Err(_) => warn!(topic = STATUS_TOPIC, "writing the worker status timed out"),
            }
        });
    }

    /// No successful heartbeat for a session timeout: the group has given our tasks away, so
    /// they stop here. Returns whether it did.
    async fn stop_if_expired(&self, state: &mut State, session: Duration) -> bool {
        if state.last_ok.elapsed() < session {
            return false;
        }
        if !state.owned.is_empty() {
            warn!(worker = %self.config.worker_id, ?session, "no heartbeat for the session timeout: stopping every task (another worker may own them now)");
            self.stop_all(state).await;
        }
        true
    }

    async fn stop_all(&self, state: &mut State) {
        self.apply(&state.owned, &BTreeSet::new()).await;
        state.owned.clear();
    }

    /// Makes `tasks` what runs here: first the tasks no longer listed drain and stop, then the
    /// new ones start. A connector that fails to create a task reports it failed.
    async fn apply(&self, owned: &BTreeSet<TaskId>, tasks: &BTreeSet<TaskId>) {
        let by_connector = |set: &BTreeSet<TaskId>| {
            let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for t in set {
                m.entry(t.connector.clone()).or_default().push(t.task);
            }
            m
        };
        let keep: BTreeSet<TaskId> = owned.intersection(tasks).cloned().collect();
        let (now, kept, next) = (by_connector(owned), by_connector(&keep), by_connector(tasks));
        let names: BTreeSet<&String> = now.keys().chain(next.keys()).collect();
        let stops = names.iter().filter(|n| now.get(**n) != kept.get(**n)).map(|n| {
            let ids = kept.get(*n).cloned().unwrap_or_default();
            async move { (n, self.worker.set_tasks(n, &ids).await) }
        });
        for (name, r) in futures::future::join_all(stops).await {
            if let Err(e) = r {
                error!(worker = %self.config.worker_id, connector = %name, error = %e, "stopping revoked tasks failed");
            }
        }
        let starts = names.iter().filter(|n| kept.get(**n) != next.get(**n)).map(|n| {
            let ids = next.get(*n).cloned().unwrap_or_default();
            async move { (n, self.worker.set_tasks(n, &ids).await) }
        });
        for (name, r) in futures::future::join_all(starts).await {
            if let Err(e) = r {
                error!(worker = %self.config.worker_id, connector = %name, error = %e, "starting assigned tasks failed; they stay failed here");
            }
        }
    }

    /// Logs each task that failed here, once (it stays failed here; the worker goes on).
    fn log_failures(&self, state: &mut State) {
        for name in self.worker.connectors() {
            let Ok(status) = self.worker.status(&name) else { continue };
            for t in status.tasks {
                let id = TaskId::new(name.clone(), t.id);
                match t.state {
                    TaskState::Failed(e) if state.owned.contains(&id) => {
                        if state.failed.insert(id) {
                            error!(worker = %self.config.worker_id, connector = %name, task = t.id, error = %e.report(), "task failed; it stays failed on this worker");
                        }
                    }
                    _ => {
                        state.failed.remove(&id);
                    }
                }
            }
        }
    }
}

/// `c-0,c-1`.
fn list(tasks: &[TaskId]) -> String {
    tasks.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The leader's part: reads every member's metadata, refuses those whose configuration differs
/// from the group's, and deals the tasks to the others.
fn lead(
    joined: &JoinedGroup,
    group_id: &str,
    leader_worker: &str,
    all_tasks: &[TaskId],
) -> Vec<(String, Bytes)> {
    let members: Vec<(String, Option<WorkerMetadata>)> = joined
        .members
        .iter()
        .map(|m| {
            let meta = serde_json::from_slice::<WorkerMetadata>(&m.metadata).ok();
            (m.member_id.clone(), meta)
        })
        .collect();
    let leader_hash = members
        .iter()
        .find(|(id, _)| *id == joined.member_id)
        .and_then(|(_, m)| m.as_ref().map(|m| m.config_hash.clone()));
    let group_hash = group_hash(
        members.iter().filter_map(|(_, m)| m.as_ref()),
        leader_hash.as_deref().unwrap_or_default(),
    );
    let worker_of = |id: &str, meta: &Option<WorkerMetadata>| {
        meta.as_ref().map_or_else(|| id.to_owned(), |m| m.worker_id.clone())
    };
    let mut accepted = Vec::new();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    // Tasks a refused member still claims go to nobody this round (it stops them and leaves).
    let mut held_by_refused: BTreeSet<TaskId> = BTreeSet::new();
    for (id, meta) in &members {
        match meta {
            Some(m) if m.version == VERSION && m.config_hash == group_hash => {
                accepted.push(MemberTasks { id: id.clone(), owned: m.owned.clone() });
            }
            Some(m) => {
                held_by_refused.extend(m.owned.iter().cloned());
                refused.insert(
                    id.clone(),
                    format!(
                        "worker {} refused by worker group {group_id}: its config hash {} differs from the group's {group_hash}; every worker of a group must run the same config file",
                        m.worker_id, m.config_hash
                    ),
                );
            }
            None => {
                refused.insert(
                    id.clone(),
                    format!("member {id} refused by worker group {group_id}: its join metadata is not {PROTOCOL_NAME} version {VERSION}"),
                );
            }
        }
    }
    let dealt: Vec<TaskId> =
        all_tasks.iter().filter(|t| !held_by_refused.contains(*t)).cloned().collect();
    let out = assign(&accepted, &dealt);
    let all: BTreeMap<String, Vec<TaskId>> = members
        .iter()
        .filter_map(|(id, meta)| Some((worker_of(id, meta), out.get(id)?.tasks.clone())))
        .collect();
    let leader = leader_worker.to_owned();
    members
        .iter()
        .map(|(id, _)| {
            let (tasks, revoked) =
                out.get(id).map(|a| (a.tasks.clone(), a.revoked.clone())).unwrap_or_default();
            let a = WorkerAssignment {
                version: VERSION,
                generation: joined.generation_id,
                leader: leader.clone(),
                error: refused.get(id).cloned(),
                tasks,
                revoked,
                all: all.clone(),
            };
            (id.clone(), Bytes::from(serde_json::to_vec(&a).unwrap_or_default()))
        })
        .collect()
}

/// The group's configuration hash: the one most members hold; ties go to the one held by
/// members that already run tasks, then to the leader's.
fn group_hash<'a>(members: impl Iterator<Item = &'a WorkerMetadata>, leader: &str) -> String {
    let mut count: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for m in members {
        let e = count.entry(m.config_hash.as_str()).or_default();
        e.0 += 1;
        if !m.owned.is_empty() {
            e.1 += 1;
        }
    }
    count
        .into_iter()
        .max_by_key(|(h, (n, owning))| (*n, *owning, *h == leader))
        .map_or_else(|| leader.to_owned(), |(h, _)| h.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(worker: &str, hash: &str, owned: Vec<TaskId>) -> WorkerMetadata {
        WorkerMetadata {
            version: VERSION,
            worker_id: worker.into(),
            config_hash: hash.into(),
            owned,
        }
    }

    #[test]
    fn the_group_hash_is_the_majoritys_then_the_task_owners_then_the_leaders() {
        let t = vec![TaskId::new("c", 0)];
        let m = [meta("a", "h1", vec![]), meta("b", "h2", vec![]), meta("c", "h2", vec![])];
        assert_eq!(group_hash(m.iter(), "h1"), "h2");
        let m = [meta("a", "h1", vec![]), meta("b", "h2", t.clone())];
        assert_eq!(group_hash(m.iter(), "h1"), "h2");
        let m = [meta("a", "h1", vec![]), meta("b", "h2", vec![])];
        assert_eq!(group_hash(m.iter(), "h1"), "h1");
    }

    fn joined(members: &[(&str, &WorkerMetadata)]) -> JoinedGroup {
        JoinedGroup {
            generation_id: 7,
            protocol: PROTOCOL_NAME.into(),
            leader_id: members[0].0.into(),
            member_id: members[0].0.into(),
            members: members
                .iter()
                .map(|(id, m)| crate::kafka::group::JoinedMember {
                    member_id: (*id).into(),
                    metadata: Bytes::from(serde_json::to_vec(m).unwrap()),
                })
                .collect(),
        }
    }

    #[test]
    fn the_leader_refuses_a_member_with_another_config_and_deals_to_the_rest() {
        let tasks: Vec<TaskId> = (0..4).map(|t| TaskId::new("c", t)).collect();
        let (a, b, c) =
            (meta("wa", "h1", vec![]), meta("wb", "h1", vec![]), meta("wc", "h9", vec![]));
        let out = lead(&joined(&[("ma", &a), ("mb", &b), ("mc", &c)]), "g", "wa", &tasks);
        let got: BTreeMap<String, WorkerAssignment> =
            out.into_iter().map(|(id, b)| (id, WorkerAssignment::decode(&b).unwrap())).collect();
        assert_eq!(got["ma"].tasks.len(), 2);
        assert_eq!(got["mb"].tasks.len(), 2);
        assert!(got["mc"].tasks.is_empty());
        let e = got["mc"].error.as_deref().unwrap();
        assert!(e.contains("h9") && e.contains("h1") && e.contains("same config file"), "{e}");
        assert_eq!(got["ma"].generation, 7);
        assert_eq!(got["mb"].leader, "wa");
        assert_eq!(got["mb"].all["wa"].len(), 2);
    }
}
