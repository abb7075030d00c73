//! The [`Herder`]: one worker of a worker group. It joins the group, runs the assignor when it
//! is the leader, runs its share of the tasks on a [`Worker`], heartbeats, and follows every
//! rebalance (stopping what was revoked before anyone else starts it).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
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
    /// Its tasks that failed, `<connector>-<task>` -> the error (rewritten when that changes).
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
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
    /// The generation of the last assignment this worker applied (stopped what it revoked,
    /// started what it gave): `owned` is exact as of then. -1 before any.
    #[serde(default = "no_generation")]
    pub generation: i32,
    /// The newest whole map this worker knows of (received, or computed as leader).
    #[serde(default)]
    pub last: Option<GenerationMap>,
    /// The config topic offset of the connector set this worker has read (-1: none): the
    /// leader knows from it whether a newer configuration exists than the one it deals from.
    #[serde(default = "no_offset")]
    pub config_offset: i64,
}

fn no_generation() -> i32 {
    -1
}

fn no_offset() -> i64 {
    -1
}

/// One connector of a [`ConnectorSet`].
#[derive(Clone)]
pub struct GroupConnector {
    /// How to run it.
    pub spec: ConnectorSpec,
    /// Changes whenever its configuration changes: its tasks then drain and start again with
    /// the new one (on the worker that runs them, before anything else starts them).
    pub fingerprint: String,
    /// How many tasks it has.
    pub tasks: usize,
    /// Its tasks run paused (not part of the fingerprint: pausing moves nothing).
    pub paused: bool,
}

/// A request to restart what a worker runs of one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOrder {
    /// The connector.
    pub connector: String,
    /// One task, or `None`: every task of the connector that runs here.
    pub task: Option<usize>,
    /// With `task: None`: only the tasks that failed.
    pub only_failed: bool,
}

/// The connectors a worker group runs, as of one version of its configuration (the
/// configuration file's connectors and the config topic's): what [`Herder::run_set`] follows.
///
/// ```
/// use connector_core::runtime::cluster::ConnectorSet;
/// let set = ConnectorSet::default();
/// assert_eq!(set.offset, -1);
/// assert_eq!(set.digest(), ConnectorSet::default().digest());
/// ```
#[derive(Clone)]
pub struct ConnectorSet {
    /// The config topic offset it reflects (every record below it); -1 without a config topic.
    pub offset: i64,
    /// The connectors to run (STOPPED ones are not here), by name.
    pub connectors: BTreeMap<String, GroupConnector>,
    /// Restart requests with their config topic offsets, oldest first: each is applied once, by
    /// every worker, to what it runs then.
    pub restarts: Vec<(i64, RestartOrder)>,
}

impl Default for ConnectorSet {
    fn default() -> Self {
        Self { offset: no_offset(), connectors: BTreeMap::new(), restarts: Vec::new() }
    }
}

impl ConnectorSet {
    /// What the leader deals from, as 16 hex digits: every connector's name, fingerprint and
    /// task count. Two workers with the same digest agree on the tasks.
    pub fn digest(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (name, c) in &self.connectors {
            for b in name.bytes().chain([0]).chain(c.fingerprint.bytes()).chain([0]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            for b in c.tasks.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// Every task of every connector.
    fn tasks(&self) -> Vec<TaskId> {
        self.connectors
            .iter()
            .flat_map(|(name, c)| (0..c.tasks).map(move |t| TaskId::new(name.clone(), t)))
            .collect()
    }
}

/// One generation's whole map: what every worker was told (JSON, in [`WorkerMetadata`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMap {
    /// The group generation.
    pub generation: i32,
    /// Every worker's tasks, by worker id.
    pub all: BTreeMap<String, Vec<TaskId>>,
    /// Every worker's revoked tasks, by worker id.
    pub revoked_all: BTreeMap<String, Vec<TaskId>>,
}

impl GenerationMap {
    /// What `worker` may still run under this map: its tasks and those it must stop.
    ///
    /// ```
    /// use connector_core::runtime::cluster::{GenerationMap, TaskId};
    /// let mut map = GenerationMap { generation: 3, ..Default::default() };
    /// map.all.insert("w1".into(), vec![TaskId::new("c", 0)]);
    /// map.revoked_all.insert("w1".into(), vec![TaskId::new("c", 1)]);
    /// assert_eq!(map.held("w1").len(), 2);
    /// assert!(map.held("w2").is_empty());
    /// ```
    pub fn held(&self, worker: &str) -> BTreeSet<TaskId> {
        let a = self.all.get(worker).into_iter().flatten();
        a.chain(self.revoked_all.get(worker).into_iter().flatten()).cloned().collect()
    }
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
    /// Every worker's revoked tasks in this generation, by worker id (a worker still holds
    /// them until it reports a generation at least this one without them).
    #[serde(default)]
    pub revoked_all: BTreeMap<String, Vec<TaskId>>,
    /// The config topic offset of the connector set the leader dealt from (-1: none); a worker
    /// that has read less catches up before it applies this.
    #[serde(default = "no_offset")]
    pub config_offset: i64,
    /// The [`ConnectorSet::digest`] of that set: a worker whose set differs rejoins once it
    /// applied this, so the next generation is dealt from the newest configuration.
    #[serde(default)]
    pub config_digest: String,
    /// The highest config offset any member reported: above `config_offset` when the leader
    /// had not read the newest configuration (every worker then catches up and rejoins).
    #[serde(default = "no_offset")]
    pub config_newest: i64,
}

impl WorkerAssignment {
    /// The whole map of this generation.
    pub fn map(&self) -> GenerationMap {
        GenerationMap {
            generation: self.generation,
            all: self.all.clone(),
            revoked_all: self.revoked_all.clone(),
        }
    }
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
    membership: Membership,
}

/// When a worker last joined its group or heartbeated successfully (a cheap clone, shared
/// with its [`Herder`]): health checks read it.
///
/// ```
/// let m = connector_core::runtime::cluster::Membership::default();
/// assert!(m.last_ok().is_none(), "not joined yet");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Membership(Arc<parking_lot::Mutex<Contact>>);

/// What [`Membership`] keeps.
#[derive(Debug, Default)]
struct Contact {
    /// The last successful join or heartbeat.
    last_ok: Option<Instant>,
    /// A join in progress: since when, and the rebalance timeout bounding its rounds.
    joining: Option<(Instant, Duration)>,
}

impl Membership {
    /// The last contact with the group: the last successful join or heartbeat, or, while a
    /// join is in progress (its rounds block up to the rebalance timeout: 3 s a round on Tansu),
    /// now, up to the join's start plus the rebalance timeout. `None` before the first join.
    pub fn last_ok(&self) -> Option<Instant> {
        let c = self.0.lock();
        let last = c.last_ok?;
        Some(match c.joining {
            Some((since, bound)) => last.max(Instant::now().min(since + bound)),
            None => last,
        })
    }

    fn mark(&self) {
        self.0.lock().last_ok = Some(Instant::now());
    }

    /// A join starts (`Some(rebalance timeout)`) or ends (`None`).
    fn joining(&self, bound: Option<Duration>) {
        self.0.lock().joining = bound.map(|b| (Instant::now(), b));
    }
}

/// Where the herder stands between rounds.
struct State {
    /// What runs here.
    owned: BTreeSet<TaskId>,
    /// Last successful join or heartbeat.
    last_ok: Instant,
    /// Failures already logged (and published), with their errors.
    failed: BTreeMap<TaskId, String>,
    /// The last assignment received (republished when `failed` changes).
    assignment: Option<WorkerAssignment>,
    /// The generation of the last assignment applied here (`owned` is exact as of then).
    applied: i32,
    /// The newest whole map known here (received, or computed as leader).
    last: Option<GenerationMap>,
    /// The connectors started on the worker here, with the fingerprint they run with.
    running: BTreeMap<String, Running>,
    /// The digest of the connector set the last applied assignment was dealt from.
    dealt: String,
    /// The config offset of the last restart request applied.
    restarted: i64,
}

/// A connector started here.
struct Running {
    fingerprint: String,
    paused: bool,
}

impl Herder {
    /// A herder running its tasks on `worker`, joining through `client`.
    pub fn new(worker: Worker, client: KafkaClient, config: HerderConfig) -> Self {
        Self { worker, client, config, membership: Membership::default() }
    }

    /// When this worker last joined or heartbeated (shared: read it while the herder runs).
    pub fn membership(&self) -> Membership {
        self.membership.clone()
    }

    /// Starts `connectors` (none of their tasks yet) and takes part in the group until
    /// `shutdown` is cancelled: then every task here drains and commits, and only then the
    /// worker leaves the group (so the next owner starts from the committed offsets).
    /// [`run_set`](Self::run_set) with a set that never changes.
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
        let mut set = ConnectorSet::default();
        for (name, spec) in connectors {
            let tasks = self.worker.task_count(&spec)?;
            let c = GroupConnector { spec, fingerprint: String::new(), tasks, paused: false };
            set.connectors.insert(name, c);
        }
        let (_keep, set) = watch::channel(Arc::new(set));
        self.run_inner(set, shutdown, true).await
    }

    /// [`run`](Self::run) with a set of connectors that changes while it runs (the REST API's
    /// changes, read from the config topic). When the set changes (a connector added, deleted,
    /// stopped, or its configuration changed) every worker rejoins and the leader deals the new
    /// set's tasks; a worker applies an assignment only once it has read the set it was dealt
    /// from; a connector whose configuration changed drains its tasks here and starts them again
    /// with the new one (a task that moves drains on its old owner first, as always). Pausing and
    /// resuming, and restart requests, are applied here without a rebalance.
    ///
    /// Unlike [`run`](Self::run), a connector that cannot be started (at the start too) does
    /// not stop the worker: it is logged and tried again at each generation (a connector created
    /// through the API must not keep every worker of the group from starting).
    ///
    /// # Errors
    /// [`HerderError::Refused`].
    ///
    /// # Cancellation
    /// Cancel `shutdown` for a graceful stop.
    pub async fn run_set(
        self,
        set: watch::Receiver<Arc<ConnectorSet>>,
        shutdown: CancellationToken,
    ) -> Result<(), HerderError> {
        self.run_inner(set, shutdown, false).await
    }

    /// `fatal_start`: a connector of the first set that cannot be started stops the worker.
    async fn run_inner(
        self,
        mut set: watch::Receiver<Arc<ConnectorSet>>,
        shutdown: CancellationToken,
        fatal_start: bool,
    ) -> Result<(), HerderError> {
        let first = Arc::clone(&set.borrow_and_update());
        let mut state = State {
            owned: BTreeSet::new(),
            last_ok: Instant::now(),
            failed: BTreeMap::new(),
            assignment: None,
            applied: no_generation(),
            last: None,
            running: BTreeMap::new(),
            dealt: String::new(),
            restarted: first.restarts.last().map_or(no_offset(), |(o, _)| *o),
        };
        let started = tokio::select! {
            r = self.sync_connectors(&first, &mut state.running, &mut state.owned) => r,
            () = shutdown.cancelled() => Ok(()),
        };
        if let Err(e) = started {
            if fatal_start {
                self.worker.shutdown().await;
                return Err(e);
            }
            warn!(worker = %self.config.worker_id, error = %e, "a connector could not be started here; trying again at the next generation");
        }
        let c = &self.config;
        let mut member = GroupMember::new(
            self.client.clone(),
            c.group_id.clone(),
            PROTOCOL_TYPE,
            c.worker_id.clone(),
            c.timeouts,
        );
        let result = self.rounds(&mut member, &mut state, &mut set, &shutdown).await;
        // Stop every task (drain, commit) before leaving: the next owner starts from what we
        // committed. Heartbeating meanwhile, so a long drain does not get this worker dropped
        // (and its tasks started elsewhere) while they still run here.
        {
            let session = c.timeouts.session;
            let drain = self.worker.shutdown();
            tokio::pin!(drain);
            // Not once the group dropped us (or we never joined).
            let mut beating = true;
            loop {
                tokio::select! {
                    _ = &mut drain => break,
                    () = tokio::time::sleep(c.timeouts.heartbeat), if beating && state.last_ok.elapsed() < session => {
                        match heartbeat(&mut member, state.last_ok, session).await {
                            Some(Ok(HeartbeatOutcome::Stable)) => { state.last_ok = Instant::now(); self.membership.mark(); }
                            Some(Ok(HeartbeatOutcome::Lost)) | Some(Err(GroupError::NotJoined { .. })) => beating = false,
                            Some(Ok(outcome)) => warn!(worker = %c.worker_id, ?outcome, "heartbeat while draining: the group moves on; draining on"),
                            Some(Err(e)) => warn!(worker = %c.worker_id, error = %e, "heartbeat while draining failed"),
                            None => warn!(worker = %c.worker_id, "heartbeat while draining timed out"),
                        }
                    }
                }
            }
        }
        if let Err(e) = member.leave().await {
            warn!(worker = %c.worker_id, group = %c.group_id, error = %e, "LeaveGroup failed; the group notices after the session timeout");
        }
        info!(worker = %c.worker_id, group = %c.group_id, "left the worker group");
        result
    }

    /// Runs `step`, heartbeating every heartbeat interval meanwhile (a long drain must not cost
    /// the membership). Returns its output, whether the group asked for a rebalance, and
    /// whether the membership was lost.
    async fn beating<T>(
        &self,
        member: &mut GroupMember,
        last_ok: &mut Instant,
        step: impl Future<Output = T>,
    ) -> (T, bool, bool) {
        let c = &self.config;
        let session = c.timeouts.session;
        let (mut rebalance, mut lost) = (false, false);
        tokio::pin!(step);
        loop {
            tokio::select! {
                out = &mut step => return (out, rebalance, lost),
                () = tokio::time::sleep(c.timeouts.heartbeat) => {
                    match heartbeat(member, *last_ok, session).await {
                        Some(Ok(HeartbeatOutcome::Stable)) => { *last_ok = Instant::now(); self.membership.mark(); }
                        Some(Ok(HeartbeatOutcome::Lost)) => lost = true,
                        Some(Ok(_)) => rebalance = true,
                        Some(Err(e)) => warn!(worker = %c.worker_id, error = %e, "heartbeat failed"),
                        None => warn!(worker = %c.worker_id, "heartbeat timed out"),
                    }
                    if last_ok.elapsed() >= session {
                        lost = true;
                    }
                }
            }
        }
    }

    async fn rounds(
        &self,
        member: &mut GroupMember,
        state: &mut State,
        set: &mut watch::Receiver<Arc<ConnectorSet>>,
        shutdown: &CancellationToken,
    ) -> Result<(), HerderError> {
        let c = &self.config;
        let session = c.timeouts.session;
        let mut set_open = true;
        'join: loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let metadata = WorkerMetadata {
                version: VERSION,
                worker_id: c.worker_id.clone(),
                config_hash: c.config_hash.clone(),
                owned: state.owned.iter().cloned().collect(),
                generation: state.applied,
                last: state.last.clone(),
                config_offset: set.borrow().offset,
            };
            let metadata = Bytes::from(serde_json::to_vec(&metadata).unwrap_or_default());
            let protocols = [(PROTOCOL_NAME.to_owned(), metadata)];
            let (group_id, worker_id) = (c.group_id.clone(), c.worker_id.clone());
            let known = &mut state.last;
            let leader_set = set.clone();
            let mut leader = |joined: &JoinedGroup| {
                // The newest set read here when the members' metadata arrives.
                let current = Arc::clone(&leader_set.borrow());
                let dealt = (current.offset, current.digest());
                lead_with(joined, &group_id, &worker_id, &current.tasks(), known, dealt)
            };
            // No session watchdog around the join: the group member heartbeats between its
            // join rounds itself, and on Tansu a follower's JoinGroup alone takes 3 s (a
            // watchdog counting from our last heartbeat stopped every task at each rebalance).
            // A join that fails after the session stops the tasks (stop_if_expired below).
            // Normal rebalances keep /health healthy: the join's rounds count as contact (up to
            // the rebalance timeout).
            self.membership.joining(Some(c.timeouts.rebalance));
            let joined = tokio::select! {
                r = member.join(&protocols, &mut leader) => r,
                () = shutdown.cancelled() => return Ok(()),
            };
            self.membership.joining(None);
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
            self.membership.mark();
            let assignment = match read_assignment(&generation.assignment, generation.id) {
                Ok(a) => a,
                Err(Unusable::Unreadable(e)) => {
                    warn!(worker = %c.worker_id, generation = generation.id, error = %e, "unreadable assignment; stopping every task and rejoining");
                    self.stop_all(state).await;
                    if backoff(shutdown).await {
                        return Ok(());
                    }
                    continue 'join;
                }
                Err(Unusable::OtherGeneration(g)) => {
                    warn!(worker = %c.worker_id, generation = generation.id, assignment_generation = g, "the assignment is for another generation; rejoining");
                    if backoff(shutdown).await {
                        return Ok(());
                    }
                    continue 'join;
                }
            };
            if let Some(message) = assignment.error {
                error!(worker = %c.worker_id, group = %c.group_id, generation = generation.id, "{message}");
                return Err(HerderError::Refused(message));
            }
            // The map just received is the newest (a broker restarted without its group
            // state starts the generations again from the beginning).
            state.last = Some(assignment.map());
            info!(
                worker = %c.worker_id,
                generation = assignment.generation,
                leader = %assignment.leader,
                tasks = %list(&assignment.tasks),
                all = %assignment.all.iter().map(|(w, t)| format!("{w}=[{}]", list(t))).collect::<Vec<_>>().join(" "),
                config_offset = assignment.config_offset,
                "worker group generation"
            );
            self.publish_status(&assignment, &state.failed);
            state.assignment = Some(assignment.clone());
            // Catch up with the connector set the leader dealt from (bounded), then make the
            // connectors here that set's: deleted or stopped ones drain and go, changed ones
            // drain and start again with their new configuration, new ones start (no tasks).
            let (latest, mut rebalance, mut lost) = {
                let State { running, owned, last_ok, .. } = &mut *state;
                let wanted = assignment.config_offset;
                let mut rx = set.clone();
                let bound = c.timeouts.rebalance;
                let catch_up = async move {
                    let read = async { rx.wait_for(|s| s.offset >= wanted).await.is_ok() };
                    if !tokio::time::timeout(bound, read).await.unwrap_or(false) {
                        warn!(worker = %self.config.worker_id, config_offset = wanted, "the connector set the leader dealt from was not read in time; applying the newest read here");
                    }
                    let latest = Arc::clone(&rx.borrow());
                    if let Err(e) = self.sync_connectors(&latest, running, owned).await {
                        warn!(worker = %self.config.worker_id, error = %e, "a connector could not be started here; trying again at the next generation");
                    }
                    latest
                };
                self.beating(member, last_ok, catch_up).await
            };
            // Only tasks of connectors that run here (a set the leader had and this worker
            // no longer has: those tasks are dealt again at the next generation).
            let tasks: BTreeSet<TaskId> = assignment
                .tasks
                .iter()
                .filter(|t| state.running.contains_key(&t.connector))
                .cloned()
                .collect();
            self.publish_unstarted(state, &assignment);
            rebalance |= !assignment.revoked.is_empty();
            for t in state.owned.difference(&tasks) {
                info!(worker = %c.worker_id, generation = assignment.generation, connector = %t.connector, task = t.task, "task revoked");
            }
            for t in tasks.difference(&state.owned) {
                info!(worker = %c.worker_id, generation = assignment.generation, connector = %t.connector, task = t.task, "task assigned");
            }
            // Apply (revoked tasks drain first, then the given ones start), heartbeating
            // meanwhile so a long drain does not cost the membership. Once the membership is
            // lost, nothing new starts.
            let keep: BTreeSet<TaskId> = state.owned.intersection(&tasks).cloned().collect();
            for (from, to) in [(state.owned.clone(), keep.clone()), (keep, tasks)] {
                if lost {
                    break;
                }
                let ((), r, l) =
                    self.beating(member, &mut state.last_ok, self.set(&from, &to)).await;
                rebalance |= r;
                lost |= l;
                // Only now (everything revoked drained, everything given started) the next
                // join reports this generation with exactly these tasks.
                state.owned = to;
            }
            state.applied = assignment.generation;
            state.dealt = assignment.config_digest.clone();
            if lost {
                warn!(worker = %c.worker_id, "membership lost: stopping every task (another worker may own them now), then rejoining");
                self.stop_all(state).await;
                continue 'join;
            }
            if rebalance {
                // Revoked tasks are stopped: rejoin at once so the next owner gets them.
                continue 'join;
            }
            if assignment.config_newest > assignment.config_offset {
                // The leader had not read the newest configuration a member reported: read it
                // here too (bounded), then rejoin so the next generation is dealt from it.
                let newest = assignment.config_newest;
                let mut rx = set.clone();
                let read = async move { rx.wait_for(|s| s.offset >= newest).await.is_ok() };
                let caught = tokio::time::timeout(session, read);
                let (caught, _, _) = self.beating(member, &mut state.last_ok, caught).await;
                if caught.unwrap_or(false) {
                    info!(worker = %c.worker_id, config_offset = assignment.config_offset, newest, "the leader dealt from an older configuration; rejoining");
                    continue 'join;
                }
            }
            if latest.digest() != state.dealt {
                info!(worker = %c.worker_id, config_offset = latest.offset, "the connectors changed since the leader dealt them; rejoining");
                continue 'join;
            }
            let applied = self.apply_targets(member, state, &latest).await;
            if self.after_targets(state, applied).await {
                continue 'join;
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(c.timeouts.heartbeat) => {}
                    changed = set.changed(), if set_open => set_open = changed.is_ok(),
                    () = shutdown.cancelled() => return Ok(()),
                }
                let latest = Arc::clone(&set.borrow_and_update());
                if latest.digest() != state.dealt {
                    info!(worker = %c.worker_id, config_offset = latest.offset, "the connectors changed: rejoining, tasks keep running until the new assignment");
                    continue 'join;
                }
                let applied = self.apply_targets(member, state, &latest).await;
                if self.after_targets(state, applied).await {
                    continue 'join;
                }
                self.log_failures(state);
                match heartbeat(member, state.last_ok, session).await {
                    Some(Ok(HeartbeatOutcome::Stable)) => {
                        state.last_ok = Instant::now();
                        self.membership.mark();
                    }
                    Some(Ok(HeartbeatOutcome::RebalanceNeeded)) => {
                        info!(worker = %c.worker_id, "rebalance: rejoining, tasks keep running");
                        continue 'join;
                    }
                    Some(Ok(HeartbeatOutcome::Lost)) => {
                        warn!(worker = %c.worker_id, "membership lost: stopping every task (another worker may own them now), then rejoining");
                        self.stop_all(state).await;
                        continue 'join;
                    }
                    Some(Err(e)) => {
                        warn!(worker = %c.worker_id, error = %e, "heartbeat failed");
                        if self.stop_if_expired(state, session).await {
                            continue 'join;
                        }
                    }
                    None => {
                        // Bounded by the session: it is over.
                        warn!(worker = %c.worker_id, ?session, "heartbeat timed out at the end of the session: stopping every task (another worker may own them now)");
                        self.stop_all(state).await;
                        continue 'join;
                    }
                }
            }
        }
    }

    /// Makes the connectors started here those of `set`: the ones not in it, or with another
    /// fingerprint, drain every task here and stop (their tasks leave `owned`); the missing ones
    /// start without tasks; each gets `set`'s paused state. Returns the first start error (the
    /// others are still started).
    async fn sync_connectors(
        &self,
        set: &ConnectorSet,
        running: &mut BTreeMap<String, Running>,
        owned: &mut BTreeSet<TaskId>,
    ) -> Result<(), HerderError> {
        let w = &self.config.worker_id;
        let gone: Vec<String> = running
            .iter()
            .filter(|(n, r)| set.connectors.get(*n).is_none_or(|g| g.fingerprint != r.fingerprint))
            .map(|(n, _)| n.clone())
            .collect();
        let stops = gone.iter().map(|n| async move { (n, self.worker.stop(n).await) });
        for (name, r) in futures::future::join_all(stops).await {
            running.remove(name);
            owned.retain(|t| &t.connector != name);
            match r {
                Ok(()) => {
                    info!(worker = %w, connector = %name, "connector stopped here (deleted, stopped or changed): its tasks drained")
                }
                Err(e) => {
                    warn!(worker = %w, connector = %name, error = %e, "stopping a connector failed")
                }
            }
        }
        let mut first = None;
        for (name, g) in &set.connectors {
            if !running.contains_key(name) {
                if let Err(e) = self.worker.start_tasks(name, g.spec.clone(), &[]).await {
                    error!(worker = %w, connector = %name, error = %e, "connector could not be started here");
                    first.get_or_insert(e);
                    continue;
                }
                info!(worker = %w, connector = %name, fingerprint = %g.fingerprint, "connector started here");
                let r = Running { fingerprint: g.fingerprint.clone(), paused: false };
                running.insert(name.clone(), r);
            }
            if let Some(r) = running.get_mut(name) {
                if r.paused != g.paused {
                    let done = if g.paused {
                        self.worker.pause(name).await
                    } else {
                        self.worker.resume(name).await
                    };
                    match done {
                        Ok(()) => {
                            r.paused = g.paused;
                            info!(worker = %w, connector = %name, paused = g.paused, "connector paused state applied here");
                        }
                        Err(e) => {
                            warn!(worker = %w, connector = %name, error = %e, "pausing or resuming failed")
                        }
                    }
                }
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Applies `set`'s paused states and its restart requests not yet applied, to what runs
    /// here (heartbeating while a restarted task drains). Returns whether the group asked for a
    /// rebalance and whether the membership was lost meanwhile (then no further task restarts
    /// here, and the caller stops every task, as after a join).
    async fn apply_targets(
        &self,
        member: &mut GroupMember,
        state: &mut State,
        set: &ConnectorSet,
    ) -> (bool, bool) {
        for (name, g) in &set.connectors {
            if state.running.get(name).is_some_and(|r| r.paused != g.paused) {
                let State { running, owned, .. } = &mut *state;
                // Same fingerprints: this only pauses or resumes.
                let _ = self.sync_connectors(set, running, owned).await;
                break;
            }
        }
        let orders: Vec<RestartOrder> = set
            .restarts
            .iter()
            .filter(|(at, _)| *at > state.restarted)
            .map(|(_, o)| o.clone())
            .collect();
        let (mut rebalance, mut lost) = (false, false);
        let Some((newest, _)) = set.restarts.last() else { return (rebalance, lost) };
        state.restarted = state.restarted.max(*newest);
        for order in orders {
            let status = self.worker.status(&order.connector).ok();
            let targets: Vec<usize> = state
                .owned
                .iter()
                .filter(|t| t.connector == order.connector)
                .filter(|t| order.task.is_none_or(|x| x == t.task))
                .filter(|t| {
                    !order.only_failed
                        || status.as_ref().is_some_and(|s| {
                            s.tasks
                                .iter()
                                .any(|x| x.id == t.task && matches!(x.state, TaskState::Failed(_)))
                        })
                })
                .map(|t| t.task)
                .collect();
            for task in targets {
                if lost {
                    return (rebalance, lost);
                }
                info!(worker = %self.config.worker_id, connector = %order.connector, task, "restarting task (requested through the config topic)");
                let restart = self.worker.restart_task(&order.connector, task);
                let (r, reb, l) = self.beating(member, &mut state.last_ok, restart).await;
                rebalance |= reb;
                lost |= l;
                if let Err(e) = r {
                    warn!(worker = %self.config.worker_id, connector = %order.connector, task, error = %e, "restarting the task failed");
                }
            }
        }
        (rebalance, lost)
    }

    /// After [`apply_targets`](Self::apply_targets): `true` when the herder must rejoin (the
    /// membership was lost during a restart: every task stopped first, another worker may own
    /// them now; or the group asked for a rebalance).
    async fn after_targets(&self, state: &mut State, (rebalance, lost): (bool, bool)) -> bool {
        let w = &self.config.worker_id;
        if lost {
            warn!(worker = %w, "membership lost during a task restart: stopping every task (another worker may own them now), then rejoining");
            self.stop_all(state).await;
            return true;
        }
        if rebalance {
            info!(worker = %w, "rebalance asked for during a task restart: rejoining");
        }
        rebalance
    }
    /// Writes this generation's assignment to [`STATUS_TOPIC`] in the background (best effort,
    /// bounded by the request timeout).
    fn publish_status(&self, assignment: &WorkerAssignment, failed: &BTreeMap<TaskId, String>) {
        let c = &self.config;
        let record = StatusRecord {
            group: c.group_id.clone(),
            worker_id: c.worker_id.clone(),
            assignment: assignment.clone(),
            failed: failed.iter().map(|(t, e)| (t.to_string(), e.clone())).collect(),
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
        self.set(&state.owned, &BTreeSet::new()).await;
        state.owned.clear();
    }

    /// Makes `to` what runs here (where it runs `from`): each connector whose tasks differ
    /// gets `to`'s (stopping a task drains it). A connector that fails to create a task
    /// reports it failed.
    async fn set(&self, from: &BTreeSet<TaskId>, to: &BTreeSet<TaskId>) {
        let by_connector = |set: &BTreeSet<TaskId>| {
            let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for t in set {
                m.entry(t.connector.clone()).or_default().push(t.task);
            }
            m
        };
        let (now, next) = (by_connector(from), by_connector(to));
        let names: BTreeSet<&String> = now.keys().chain(next.keys()).collect();
        let changes = names.iter().filter(|n| now.get(**n) != next.get(**n)).map(|n| {
            let ids = next.get(*n).cloned().unwrap_or_default();
            async move { (n, self.worker.set_tasks(n, &ids).await) }
        });
        for (name, r) in futures::future::join_all(changes).await {
            if let Err(e) = r {
                error!(worker = %self.config.worker_id, connector = %name, error = %e, "changing the tasks failed; they stay failed here");
            }
        }
    }

    /// The tasks dealt here of connectors that could not be started here are published as
    /// failed (other workers showed them RUNNING on this one); entries of connectors neither
    /// running nor dealt here any more are dropped.
    fn publish_unstarted(&self, state: &mut State, assignment: &WorkerAssignment) {
        let w = &self.config.worker_id;
        let State { failed, running, .. } = &mut *state;
        let unstarted: BTreeSet<&TaskId> =
            assignment.tasks.iter().filter(|t| !running.contains_key(&t.connector)).collect();
        let before = failed.len();
        failed.retain(|t, _| running.contains_key(&t.connector) || unstarted.contains(t));
        let mut changed = failed.len() != before;
        for t in unstarted {
            if let std::collections::btree_map::Entry::Vacant(slot) = failed.entry(t.clone()) {
                let why = format!(
                    "connector {} could not be started on worker {w} (see its log); its task {} does not run there",
                    t.connector, t.task
                );
                warn!(worker = %w, connector = %t.connector, task = t.task, "task dealt here of a connector that could not be started here: published as failed");
                slot.insert(why);
                changed = true;
            }
        }
        if changed {
            self.publish_status(assignment, failed);
        }
    }

    /// Logs each task that failed here, once (it stays failed here; the worker goes on).
    /// (Republishes this worker's status with them when they changed, so every worker's API
    /// shows them.)
    fn log_failures(&self, state: &mut State) {
        let mut changed = false;
        for name in self.worker.connectors() {
            let Ok(status) = self.worker.status(&name) else { continue };
            for t in status.tasks {
                let id = TaskId::new(name.clone(), t.id);
                match t.state {
                    TaskState::Failed(e) if state.owned.contains(&id) => {
                        if let std::collections::btree_map::Entry::Vacant(slot) =
                            state.failed.entry(id)
                        {
                            let report = e.report().to_string();
                            error!(worker = %self.config.worker_id, connector = %name, task = t.id, error = %report, "task failed; it stays failed on this worker");
                            slot.insert(report);
                            changed = true;
                        }
                    }
                    _ => {
                        changed |= state.failed.remove(&id).is_some();
                    }
                }
            }
        }
        if changed {
            if let Some(a) = &state.assignment {
                self.publish_status(a, &state.failed);
            }
        }
    }
}

/// One heartbeat, bounded by what is left of the session (the group drops a member that does
/// not heartbeat for that long): `None` when it did not answer in time.
async fn heartbeat(
    member: &mut GroupMember,
    last_ok: Instant,
    session: Duration,
) -> Option<Result<HeartbeatOutcome, GroupError>> {
    let left = (last_ok + session).saturating_duration_since(Instant::now());
    tokio::time::timeout(left, member.heartbeat()).await.ok()
}

/// Waits a moment before rejoining; `true` when `shutdown` came first.
async fn backoff(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Why an assignment cannot be applied.
#[derive(Debug)]
enum Unusable {
    /// Not an assignment of this protocol.
    Unreadable(serde_json::Error),
    /// For this other generation, not the one SyncGroup answered.
    OtherGeneration(i32),
}

/// The assignment SyncGroup gave for `generation`.
fn read_assignment(bytes: &[u8], generation: i32) -> Result<WorkerAssignment, Unusable> {
    let a = WorkerAssignment::decode(bytes).map_err(Unusable::Unreadable)?;
    if a.generation != generation {
        return Err(Unusable::OtherGeneration(a.generation));
    }
    Ok(a)
}

/// `c-0,c-1`.
fn list(tasks: &[TaskId]) -> String {
    tasks.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The leader's part: reads every member's metadata, refuses those whose configuration differs
/// from the group's, and deals the tasks to the others. `last` is the newest map this leader
/// knows of; the map it computes becomes it.
///
/// A member's join metadata may predate the last assignment it got (Tansu's JoinGroup does not
/// wait for every member to rejoin), so what it may run is taken from the newest map anyone
/// knows of (the baseline): a member whose metadata reports a generation older than the
/// baseline's may still run (or start) everything the baseline gave or revoked it, and those
/// tasks count as its own (kept or revoked again, never given to another). A member that
/// applied the baseline or a newer one reports exactly what it runs.
///
/// `dealt` is the config offset and digest of the connector set `all_tasks` come from.
fn lead_with(
    joined: &JoinedGroup,
    group_id: &str,
    leader_worker: &str,
    all_tasks: &[TaskId],
    last: &mut Option<GenerationMap>,
    dealt: (i64, String),
) -> Vec<(String, Bytes)> {
    let (config_offset, config_digest) = dealt;
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
    // The baseline: the newest map known to the leader or any member (several of the same
    // generation, which should not happen, are all taken). Maps of generations after this one
    // come from before the broker lost the group's state: they are ignored.
    let maps: Vec<&GenerationMap> = last
        .iter()
        .chain(members.iter().filter_map(|(_, m)| m.as_ref()?.last.as_ref()))
        .filter(|m| m.generation <= joined.generation_id)
        .collect();
    let newest = maps.iter().map(|m| m.generation).max();
    let baseline: Vec<&GenerationMap> =
        maps.iter().filter(|m| Some(m.generation) == newest).copied().collect();
    let owned_by = |m: &WorkerMetadata| -> Vec<TaskId> {
        let mut owned: BTreeSet<TaskId> = m.owned.iter().cloned().collect();
        if let Some(g) = newest.filter(|g| m.generation < *g) {
            for map in &baseline {
                owned.extend(map.held(&m.worker_id));
            }
            if owned.len() > m.owned.len() {
                info!(
                    worker = %m.worker_id,
                    reported = m.generation,
                    baseline = g,
                    owned = %list(&m.owned),
                    held = %list(&owned.iter().cloned().collect::<Vec<_>>()),
                    "a member's join metadata predates the newest map: what it holds there stays its own"
                );
            }
        }
        owned.into_iter().collect()
    };
    let worker_of = |id: &str, meta: &Option<WorkerMetadata>| {
        meta.as_ref().map_or_else(|| id.to_owned(), |m| m.worker_id.clone())
    };
    let mut accepted = Vec::new();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    // Tasks a refused member may still run go to nobody this round (it stops them and leaves).
    let mut held_by_refused: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
    for (id, meta) in &members {
        match meta {
            Some(m) if m.version == VERSION && m.config_hash == group_hash => {
                accepted.push(MemberTasks { id: id.clone(), owned: owned_by(m) });
            }
            Some(m) => {
                held_by_refused.insert(id.clone(), owned_by(m));
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
    let config_newest = members
        .iter()
        .filter_map(|(_, m)| m.as_ref().map(|m| m.config_offset))
        .fold(config_offset, i64::max);
    if config_newest > config_offset {
        warn!(config_offset, config_newest, "a member has read a newer configuration than this leader: dealing from this one, every worker rejoins once it has read the newest");
    }
    let not_dealt: BTreeSet<&TaskId> = held_by_refused.values().flatten().collect();
    let dealt: Vec<TaskId> = all_tasks.iter().filter(|t| !not_dealt.contains(t)).cloned().collect();
    let out = assign(&accepted, &dealt);
    // Two members of one worker id (a restarted worker while its old member is still in the
    // group) share one entry: the union.
    let mut all: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
    let mut revoked_all: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
    for (id, meta) in &members {
        let worker = worker_of(id, meta);
        match out.get(id) {
            Some(a) => {
                all.entry(worker.clone()).or_default().extend(a.tasks.iter().cloned());
                revoked_all.entry(worker).or_default().extend(a.revoked.iter().cloned());
            }
            None => {
                let held = held_by_refused.get(id).into_iter().flatten().cloned();
                revoked_all.entry(worker).or_default().extend(held);
            }
        }
    }
    for v in all.values_mut().chain(revoked_all.values_mut()) {
        v.sort();
        v.dedup();
    }
    revoked_all.retain(|_, v| !v.is_empty());
    *last = Some(GenerationMap {
        generation: joined.generation_id,
        all: all.clone(),
        revoked_all: revoked_all.clone(),
    });
    let leader = leader_worker.to_owned();
    members
        .iter()
        .map(|(id, _)| {
            let (tasks, revoked) = match out.get(id) {
                Some(a) => (a.tasks.clone(), a.revoked.clone()),
                None => (Vec::new(), held_by_refused.get(id).cloned().unwrap_or_default()),
            };
            let a = WorkerAssignment {
                version: VERSION,
                generation: joined.generation_id,
                leader: leader.clone(),
                error: refused.get(id).cloned(),
                tasks,
                revoked,
                all: all.clone(),
                revoked_all: revoked_all.clone(),
                config_offset,
                config_digest: config_digest.clone(),
                config_newest,
            };
            (id.clone(), Bytes::from(serde_json::to_vec(&a).unwrap_or_default()))
        })
        .collect()
}

/// [`lead_with`] without a config topic.
#[cfg(test)]
fn lead(
    joined: &JoinedGroup,
    group_id: &str,
    leader_worker: &str,
    all_tasks: &[TaskId],
    last: &mut Option<GenerationMap>,
) -> Vec<(String, Bytes)> {
    lead_with(joined, group_id, leader_worker, all_tasks, last, (no_offset(), String::new()))
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

    #[test]
    fn a_join_in_progress_is_contact_up_to_the_rebalance_timeout() {
        let now = Instant::now();
        let Some(long_ago) = now.checked_sub(Duration::from_secs(60)) else { return };
        let m = Membership::default();
        m.0.lock().last_ok = Some(long_ago);
        let age = |m: &Membership| m.last_ok().map(|at| at.elapsed().as_secs_f64());
        assert!(age(&m).is_some_and(|a| a >= 60.0), "no join: the last heartbeat");
        m.0.lock().joining = Some((Instant::now(), Duration::from_secs(10)));
        assert!(age(&m).is_some_and(|a| a < 1.0), "a join just started is contact");
        let Some(started) = now.checked_sub(Duration::from_secs(30)) else { return };
        m.0.lock().joining = Some((started, Duration::from_secs(10)));
        assert!(
            age(&m).is_some_and(|a| (19.0..22.0).contains(&a)),
            "a join is contact only up to its rebalance timeout: {:?}",
            age(&m)
        );
        m.joining(None);
        assert_eq!(m.last_ok(), Some(long_ago));
        assert!(Membership::default().last_ok().is_none(), "never joined");
    }
    use proptest::prelude::*;

    fn meta(worker: &str, hash: &str, owned: Vec<TaskId>) -> WorkerMetadata {
        WorkerMetadata {
            version: VERSION,
            worker_id: worker.into(),
            config_hash: hash.into(),
            owned,
            generation: -1,
            last: None,
            config_offset: -1,
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
        let out =
            lead(&joined(&[("ma", &a), ("mb", &b), ("mc", &c)]), "g", "wa", &tasks, &mut None);
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

    /// A broker restarted without the group's state starts the generations again: a map of a
    /// later generation than the one being formed is from before and must not pin its tasks.
    #[test]
    fn maps_of_later_generations_than_this_one_are_ignored() {
        let tasks: Vec<TaskId> = (0..4).map(|t| TaskId::new("c", t)).collect();
        let stale = GenerationMap {
            generation: 40,
            all: [("wb".to_owned(), tasks.clone())].into_iter().collect(),
            revoked_all: BTreeMap::new(),
        };
        let a = WorkerMetadata { last: Some(stale.clone()), ..meta("wa", "h", vec![]) };
        let b = meta("wb", "h", vec![]);
        let mut known = Some(stale);
        let out = lead(&joined(&[("ma", &a), ("mb", &b)]), "g", "wa", &tasks, &mut known);
        let got: BTreeMap<String, WorkerAssignment> =
            out.into_iter().map(|(id, b)| (id, WorkerAssignment::decode(&b).unwrap())).collect();
        assert_eq!(got["ma"].tasks.len(), 2, "{got:?}");
        assert_eq!(got["mb"].tasks.len(), 2, "{got:?}");
        assert!(got["mb"].revoked.is_empty(), "{got:?}");
        assert_eq!(known.map(|m| m.generation), Some(7));
    }

    #[test]
    fn an_assignment_for_another_generation_or_unreadable_is_not_applied() {
        let a = WorkerAssignment {
            version: VERSION,
            generation: 5,
            leader: "wa".into(),
            error: None,
            tasks: vec![],
            revoked: vec![],
            all: BTreeMap::new(),
            revoked_all: BTreeMap::new(),
            config_offset: -1,
            config_digest: String::new(),
            config_newest: -1,
        };
        let bytes = serde_json::to_vec(&a).unwrap();
        assert_eq!(read_assignment(&bytes, 5).unwrap(), a);
        assert!(matches!(read_assignment(&bytes, 6), Err(Unusable::OtherGeneration(5))));
        assert!(matches!(read_assignment(b"{", 5), Err(Unusable::Unreadable(_))));
    }

    fn t(c: &str, ids: &[usize]) -> Vec<TaskId> {
        ids.iter().map(|i| TaskId::new(c, *i)).collect()
    }

    /// A member `w` (member id `m-w`) that applied `generation` and runs `owned`.
    fn at(
        w: &str,
        generation: i32,
        owned: Vec<TaskId>,
        last: Option<&GenerationMap>,
    ) -> WorkerMetadata {
        WorkerMetadata { generation, last: last.cloned(), ..meta(w, "h", owned) }
    }

    /// Generation `generation` led by `members[0]` (knowing `known`): each worker id's assignment.
    fn round(
        generation: i32,
        members: &[&WorkerMetadata],
        tasks: &[TaskId],
        known: &mut Option<GenerationMap>,
    ) -> BTreeMap<String, WorkerAssignment> {
        let ids: Vec<String> = members.iter().map(|m| format!("m-{}", m.worker_id)).collect();
        let mut j =
            joined(&members.iter().zip(&ids).map(|(m, id)| (id.as_str(), *m)).collect::<Vec<_>>());
        j.generation_id = generation;
        let leader = members[0].worker_id.clone();
        lead(&j, "g", &leader, tasks, known)
            .into_iter()
            .map(|(id, b)| {
                (id.trim_start_matches("m-").to_owned(), WorkerAssignment::decode(&b).unwrap())
            })
            .collect()
    }

    fn map(
        generation: i32,
        all: &[(&str, Vec<TaskId>)],
        revoked: &[(&str, Vec<TaskId>)],
    ) -> GenerationMap {
        let m = |v: &[(&str, Vec<TaskId>)]| {
            v.iter().map(|(w, t)| ((*w).to_owned(), t.clone())).collect()
        };
        GenerationMap { generation, all: m(all), revoked_all: m(revoked) }
    }

    /// Helper D's run on Tansu: w2 was given telemetry-3,4,5 in generation 3, but its join
    /// metadata still says generation 2 and owned [] (Tansu formed generations 4 and 5 without
    /// it rejoining). Neither generation may give those tasks to w3.
    #[test]
    fn a_member_whose_metadata_predates_the_last_map_keeps_what_that_map_gave_it() {
        let tasks = t("telemetry", &[0, 1, 2, 3, 4, 5]);
        let gen3 =
            map(3, &[("w1", t("telemetry", &[0, 1, 2])), ("w2", t("telemetry", &[3, 4, 5]))], &[]);
        let mut known = Some(gen3.clone());
        let w1 = at("w1", 3, t("telemetry", &[0, 1, 2]), Some(&gen3));
        let w2 = at("w2", 2, vec![], None);
        let w3 = at("w3", -1, vec![], None);
        let w2_held = t("telemetry", &[3, 4, 5]);
        for generation in [4, 5] {
            let out = round(generation, &[&w1, &w2, &w3], &tasks, &mut known);
            for x in &w2_held {
                assert!(
                    !out["w1"].tasks.contains(x) && !out["w3"].tasks.contains(x),
                    "gen {generation}: {x} given away: {out:?}"
                );
                assert!(
                    out["w2"].tasks.contains(x) ^ out["w2"].revoked.contains(x),
                    "gen {generation}: {x}"
                );
            }
            assert_eq!(out["w1"].all, out["w3"].all);
            assert_eq!(
                known.as_ref().unwrap().generation,
                generation,
                "the leader remembers what it computed"
            );
        }
        // Once w2 reports generation 5 applied, what it was revoked goes to w3.
        let gen5 = known.clone().unwrap();
        let w2_kept = gen5.all["w2"].clone();
        let w1 = at("w1", 5, gen5.all["w1"].clone(), Some(&gen5));
        let w2 = at("w2", 5, w2_kept.clone(), Some(&gen5));
        let w3 = at("w3", 5, vec![], Some(&gen5));
        let out = round(6, &[&w1, &w2, &w3], &tasks, &mut known);
        assert_eq!(out["w2"].tasks, w2_kept);
        assert_eq!(out["w3"].tasks.len(), 2, "{out:?}");
        for x in &out["w3"].tasks {
            assert!(gen5.revoked_all["w2"].contains(x) || gen5.revoked_all["w1"].contains(x));
        }
    }

    #[test]
    fn a_revoked_task_goes_to_nobody_until_its_owner_reports_a_newer_generation_without_it() {
        let tasks = t("s", &[0, 1, 2, 3]);
        let gen1 = map(1, &[("a", tasks.clone())], &[]);
        let mut known = Some(gen1.clone());
        let a = at("a", 1, tasks.clone(), Some(&gen1));
        let b = at("b", -1, vec![], None);
        let out = round(2, &[&a, &b], &tasks, &mut known);
        assert_eq!(out["a"].tasks, t("s", &[0, 1]));
        assert_eq!(out["a"].revoked, t("s", &[2, 3]));
        assert_eq!(out["a"].revoked_all["a"], t("s", &[2, 3]));
        assert!(out["b"].tasks.is_empty());
        // a's metadata is still the old one (generation 1): 2 and 3 stay a's (revoked again).
        let out = round(3, &[&b, &a], &tasks, &mut known);
        assert!(out["b"].tasks.is_empty(), "{out:?}");
        assert_eq!(out["a"].revoked, t("s", &[2, 3]));
        // a applied generation 2 but reports only that: generation 3 revoked 2,3 too, so they
        // still wait.
        let gen3 = known.clone().unwrap();
        let a2 = at("a", 2, t("s", &[0, 1]), None);
        let out = round(4, &[&b, &a2], &tasks, &mut known);
        assert!(out["b"].tasks.is_empty(), "{out:?}");
        let _ = gen3;
        // a applied generation 4 without them: b gets them.
        let a4 = at("a", 4, t("s", &[0, 1]), None);
        let out = round(5, &[&a4, &b], &tasks, &mut known);
        assert_eq!(out["b"].tasks, t("s", &[2, 3]));
        assert_eq!(out["a"].tasks, t("s", &[0, 1]));
        assert!(out["a"].revoked.is_empty());
    }

    #[test]
    fn the_tasks_of_a_worker_that_left_go_to_the_others_at_once() {
        let tasks = t("s", &[0, 1, 2, 3]);
        let gen5 = map(5, &[("a", t("s", &[0, 1])), ("b", t("s", &[2, 3]))], &[]);
        // Whether a's metadata is current or stale, b's tasks are free.
        for generation in [5, 4] {
            let mut known = Some(gen5.clone());
            let a = at("a", generation, t("s", &[0, 1]), None);
            let out = round(6, &[&a], &tasks, &mut known);
            assert_eq!(out["a"].tasks, tasks);
            assert!(out["a"].revoked.is_empty());
        }
        // A member that knows a newer map than the leader makes it the baseline.
        let mut known = None;
        let a = at("a", 5, t("s", &[0, 1]), Some(&gen5));
        let c = at("c", 4, vec![], None);
        let out = round(6, &[&c, &a], &tasks, &mut known);
        assert_eq!(out["a"].tasks, t("s", &[0, 1]));
        assert_eq!(out["c"].tasks, t("s", &[2, 3]));
    }

    /// One worker of the simulated group.
    #[derive(Debug, Default)]
    struct Sim {
        in_group: bool,
        /// What it runs (the last assignment it applied).
        running: BTreeSet<TaskId>,
        applied: i32,
        known: Option<GenerationMap>,
        /// Received, not applied yet.
        pending: Option<WorkerAssignment>,
        /// The metadata of its last JoinGroup (what the broker hands the leader).
        sent: Option<WorkerMetadata>,
    }

    impl Sim {
        fn apply(&mut self) {
            if let Some(a) = self.pending.take() {
                self.running = a.tasks.into_iter().collect();
                self.applied = a.generation;
            }
        }
        fn join(&mut self, id: &str) {
            if !self.in_group {
                *self = Sim { in_group: true, applied: -1, ..Sim::default() };
            }
            // The herder applies an assignment before it reports anything.
            self.apply();
            self.sent = Some(at(
                id,
                self.applied,
                self.running.iter().cloned().collect(),
                self.known.as_ref(),
            ));
        }
    }

    /// A step: (kind, worker, leader pick, delivery bits).
    type Step = (u8, usize, usize, u8);

    /// Runs `steps` on `n` workers; checks after every step that no task runs twice, and at
    /// the end that the group settles with every task running once.
    fn simulate(n: usize, tasks: &[TaskId], steps: &[Step]) -> Result<(), TestCaseError> {
        let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
        let mut sims: Vec<Sim> = (0..n).map(|_| Sim { applied: -1, ..Sim::default() }).collect();
        let mut generation = 0;
        let mut generate = |sims: &mut Vec<Sim>, pick: usize, deliver: u8| {
            let members: Vec<usize> =
                (0..n).filter(|i| sims[*i].in_group && sims[*i].sent.is_some()).collect();
            // The leader is a member whose JoinGroup just returned (so nothing pending) and
            // that knows the newest map (Tansu keeps its leader while it stays a member, and
            // the leader remembers every map it computed).
            let newest = sims
                .iter()
                .filter(|s| s.in_group)
                .filter_map(|s| s.known.as_ref().map(|m| m.generation))
                .max();
            let leaders: Vec<usize> = members
                .iter()
                .copied()
                .filter(|i| sims[*i].pending.is_none())
                .filter(|i| sims[*i].known.as_ref().map(|m| m.generation) == newest)
                .collect();
            if leaders.is_empty() {
                return;
            }
            let leader = leaders[pick % leaders.len()];
            generation += 1;
            let mut order = vec![leader];
            order.extend(members.iter().copied().filter(|i| *i != leader));
            let metas: Vec<WorkerMetadata> =
                order.iter().map(|i| sims[*i].sent.clone().unwrap()).collect();
            let refs: Vec<&WorkerMetadata> = metas.iter().collect();
            let mut known = sims[leader].known.take();
            let out = round(generation, &refs, tasks, &mut known);
            sims[leader].known = known;
            for (k, i) in order.iter().enumerate() {
                let s = &mut sims[*i];
                if (*i == leader || deliver & (1 << (k % 8)) != 0) && s.pending.is_none() {
                    let a = out[&ids[*i]].clone();
                    if s.known.as_ref().is_none_or(|l| l.generation <= a.generation) {
                        s.known = Some(a.map());
                    }
                    s.pending = Some(a);
                }
            }
        };
        let check = |sims: &Vec<Sim>, what: &str| -> Result<(), TestCaseError> {
            let mut runs: BTreeMap<&TaskId, usize> = BTreeMap::new();
            for (i, s) in sims.iter().enumerate() {
                for x in &s.running {
                    if let Some(j) = runs.insert(x, i) {
                        return Err(TestCaseError::fail(format!(
                            "{what}: {x} runs on w{j} and w{i}: {sims:#?}"
                        )));
                    }
                }
            }
            Ok(())
        };
        for (k, (kind, w, pick, deliver)) in steps.iter().enumerate() {
            let w = *w % n;
            match kind % 8 {
                0..=2 => sims[w].join(&ids[w]),
                3 | 4 => sims[w].apply(),
                5 => {
                    // Leaves: stops everything first.
                    sims[w] = Sim { applied: -1, ..Sim::default() };
                }
                _ => generate(&mut sims, *pick, *deliver),
            }
            check(&sims, &format!("step {k}"))?;
        }
        // Settle: every member applies, rejoins, and hears every generation.
        if sims.iter().all(|s| !s.in_group) {
            sims[0].join(&ids[0]);
        }
        for r in 0..4 {
            for (i, s) in sims.iter_mut().enumerate() {
                if s.in_group {
                    s.join(&ids[i]);
                }
            }
            generate(&mut sims, r, 0xff);
            for s in sims.iter_mut() {
                s.apply();
            }
            check(&sims, &format!("settle round {r}"))?;
        }
        let running: usize = sims.iter().map(|s| s.running.len()).sum();
        prop_assert_eq!(running, tasks.len(), "not settled: {:#?}", sims);
        Ok(())
    }

    proptest! {
        #[test]
        fn members_lagging_the_last_map_never_make_a_task_run_on_two_workers(
            n in 1usize..5,
            sizes in prop::collection::vec(1usize..7, 1..3),
            steps in prop::collection::vec((0u8..8, 0usize..5, 0usize..5, 0u8..=255), 0..40),
        ) {
            let tasks: Vec<TaskId> = sizes.iter().enumerate()
                .flat_map(|(c, k)| (0..*k).map(move |i| TaskId::new(format!("c{c}"), i)))
                .collect();
            simulate(n, &tasks, &steps)?;
        }
    }
}
