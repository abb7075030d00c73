//! [`DistributedControl`]: the REST API's operations for one worker of a worker group. Any
//! worker answers every call: reads come from the config topic's view (followed by every
//! worker), the status topic (which worker runs which task) and this worker's own task states;
//! writes go straight to the config topic (applying them through the config topic rather than
//! forwarding them to the leader), and return once Kafka acknowledged the record and this
//! worker's view has it. Every worker's herder follows the same topic, so the group applies the
//! change (the leader deals the new set, changed tasks drain before they start again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::config_topic::{
    ConfigFollower, ConfigSnapshot, ConfigTopic, RestartRecord, StoredConnector,
};
use super::probe::{worker_health, KafkaProbe};
use super::{
    ConnectControl, ConnectorInfo, ConnectorReport, ConnectorStateReport, ControlError, Health,
    OffsetEntry, PluginInfo, PutOutcome, RestartRequest, StateName, TargetState, TaskReport,
};
use crate::config::ConfigErrors;
use crate::kafka::group::{committed_offsets, describe_group, GroupCommitter};
use crate::kafka::{FetchResult, KafkaClient, OffsetSpec, ProducerRecord};
use crate::offset::{KafkaOffsetStore, OffsetMap, OffsetStore};
use crate::record::{SourceOffset, SourcePartition, TopicPartition};
use crate::runner::{connector_from_json, BuiltConnector, ConnectorEntry, ConnectorKind, Registry};
use crate::runtime::cluster::{
    ConnectorSet, GroupConnector, Membership, RestartOrder, StatusRecord, WorkerAssignment,
    STATUS_TOPIC,
};
use crate::runtime::{ConnectorSpec, TaskState, Worker, MAX_CONNECTORS};

/// How long a write waits for this worker's view to show it.
const READ_YOUR_WRITE: Duration = Duration::from_secs(10);

/// How long an offsets change on a STOPPED connector waits for its tasks to have really stopped
/// (they drain at the next generation) before answering 409.
const STOPPING_WAIT: Duration = Duration::from_secs(20);

/// One connector as the group sees it (the file's, overridden by the config topic's).
#[derive(Debug, Clone)]
struct Effective {
    raw: Map<String, Value>,
    target: TargetState,
    kind: ConnectorKind,
    tasks: usize,
    /// Why it does not run (its config does not build, or its tasks cannot be created).
    error: Option<String>,
    from_file: bool,
    /// The config topic offset of its newest record (-1: none, a file's connector).
    written_at: i64,
}

/// The group's connectors as of a config topic offset.
#[derive(Debug, Clone, Default)]
struct GroupView {
    offset: i64,
    connectors: BTreeMap<String, Effective>,
}

/// A file connector: its table and its built spec.
struct FileConnector {
    raw: Map<String, Value>,
    spec: ConnectorSpec,
    kind: ConnectorKind,
}

/// Turns config snapshots into the herder's [`ConnectorSet`] and the API's view, building each
/// changed connector once.
struct Builder {
    registry: Arc<Registry>,
    worker: Worker,
    file: BTreeMap<String, FileConnector>,
    /// Built connectors by name: (fingerprint, connector, kind).
    cache: HashMap<String, (String, GroupConnector, ConnectorKind)>,
    /// Restart requests below this offset were made before this worker started.
    restart_floor: i64,
}

impl Builder {
    fn build(&mut self, snap: &ConfigSnapshot) -> (ConnectorSet, GroupView) {
        let mut set = ConnectorSet { offset: snap.offset, ..ConnectorSet::default() };
        let mut view = GroupView { offset: snap.offset, connectors: BTreeMap::new() };
        let names: BTreeSet<&String> = self.file.keys().chain(snap.connectors.keys()).collect();
        let mut built = HashMap::new();
        for name in names {
            if snap.deleted.contains(name) && !snap.connectors.contains_key(name) {
                continue;
            }
            let from_file = self.file.contains_key(name);
            let (raw, target) = match (snap.connectors.get(name), self.file.get(name)) {
                (Some(s), _) => (s.config.clone(), s.target_state),
                (None, Some(f)) => (f.raw.clone(), TargetState::Running),
                (None, None) => continue,
            };
            let fp = fingerprint(&raw);
            let kind_of_raw = raw
                .get("type")
                .and_then(Value::as_str)
                .and_then(|t| self.registry.kind(t))
                .or_else(|| self.file.get(name).map(|f| f.kind))
                .unwrap_or(ConnectorKind::Source);
            let mut e = Effective {
                raw: raw.clone(),
                target,
                kind: kind_of_raw,
                tasks: 0,
                error: None,
                from_file,
                written_at: snap.written.get(name).copied().unwrap_or(-1),
            };
            if target != TargetState::Stopped {
                match self.connector(name, &raw, &fp) {
                    Ok((c, kind)) => {
                        e.tasks = c.tasks;
                        e.kind = kind;
                        let c = GroupConnector { paused: target == TargetState::Paused, ..c };
                        built.insert(name.clone(), (fp.clone(), c.clone(), kind));
                        set.connectors.insert(name.clone(), c);
                    }
                    Err(why) => e.error = Some(why),
                }
            }
            view.connectors.insert(name.clone(), e);
        }
        self.cache = built;
        for (at, r) in &snap.restarts {
            if *at < self.restart_floor {
                continue;
            }
            let order = match (r.task, r.include_tasks) {
                (Some(t), _) => RestartOrder {
                    connector: r.connector.clone(),
                    task: Some(t),
                    only_failed: false,
                },
                (None, true) => RestartOrder {
                    connector: r.connector.clone(),
                    task: None,
                    only_failed: r.only_failed,
                },
                // The connector alone: it keeps no running state of its own here.
                (None, false) => continue,
            };
            set.restarts.push((*at, order));
        }
        (set, view)
    }

    /// Connector `name` with `raw` built (from the cache, the file, or the registry).
    fn connector(
        &self,
        name: &str,
        raw: &Map<String, Value>,
        fp: &str,
    ) -> Result<(GroupConnector, ConnectorKind), String> {
        if let Some((cached, c, kind)) = self.cache.get(name) {
            if cached == fp {
                return Ok((c.clone(), *kind));
            }
        }
        let (spec, kind) = match self.file.get(name) {
            Some(f) if fingerprint(&f.raw) == fp => (f.spec.clone(), f.kind),
            _ => {
                let entry = connector_from_json(raw.clone(), &self.registry)
                    .map_err(|e| format!("invalid config: {e}"))?;
                let kind = built_kind(&entry.connector);
                (
                    ConnectorSpec::new(entry.connector, entry.source_runtime, entry.sink_runtime),
                    kind,
                )
            }
        };
        let tasks = self.worker.task_count(&spec).map_err(|e| e.to_string())?;
        Ok((GroupConnector { spec, fingerprint: fp.to_owned(), tasks, paused: false }, kind))
    }
}

/// A stable hash of a connector table (canonical JSON, FNV-1a 64).
fn fingerprint(raw: &Map<String, Value>) -> String {
    let mut text = String::new();
    crate::offset::write_canonical(&Value::Object(raw.clone()), &mut text);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What [`DistributedControl::start`] needs.
pub struct DistributedParts {
    /// The worker this process runs its share of the tasks on.
    pub worker: Worker,
    /// The Kafka client.
    pub client: KafkaClient,
    /// Builds connectors created through the API.
    pub registry: Arc<Registry>,
    /// The configuration file's connectors.
    pub file_connectors: Vec<ConnectorEntry>,
    /// The worker group.
    pub group_id: String,
    /// This worker's id.
    pub worker_id: String,
    /// The config topic (`[cluster] config_topic`).
    pub config_topic: String,
    /// The source offsets topic (`[offsets] topic`).
    pub offsets_topic: String,
    /// The group's session timeout: a worker out of the group longer than this is unhealthy.
    pub session_timeout: Duration,
    /// The herder's membership (when it last joined or heartbeated).
    pub membership: Membership,
    /// Kafka's reachability, for `health()`.
    pub probe: KafkaProbe,
}

/// [`ConnectControl`] for one worker of a worker group (see the module docs).
///
/// ```no_run
/// # async fn example(parts: connector_core::runner::control::distributed::DistributedParts) -> connector_core::Result<()> {
/// use connector_core::runner::control::{distributed::DistributedControl, ConnectControl};
/// let stop = tokio_util::sync::CancellationToken::new();
/// let (control, set) = DistributedControl::start(parts, stop.clone()).await?;
/// println!("{:?}", control.connectors().await);
/// // Herder::run_set(set, ..) runs what the group deals this worker.
/// # drop(set);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DistributedControl {
    inner: Arc<Inner>,
}

struct Inner {
    worker: Worker,
    client: KafkaClient,
    registry: Arc<Registry>,
    topic: ConfigTopic,
    follower: ConfigFollower,
    view: watch::Receiver<Arc<GroupView>>,
    status: Arc<Mutex<StatusView>>,
    group_id: String,
    worker_id: String,
    offsets_topic: String,
    session: Duration,
    membership: Membership,
    probe: KafkaProbe,
    started: Instant,
    /// Serializes this worker's writes (a PUT decides Created/Updated on a view it then
    /// waits to see updated).
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DistributedControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedControl")
            .field("group", &self.inner.group_id)
            .field("worker_id", &self.inner.worker_id)
            .finish_non_exhaustive()
    }
}

impl DistributedControl {
    /// Reads the config topic to its end and follows it (and the status topic) until `stop`:
    /// returns the control and the connector set the herder runs
    /// ([`Herder::run_set`](crate::runtime::cluster::Herder::run_set)).
    ///
    /// # Errors
    /// Kafka unreachable, or a config topic that is not compacted.
    pub async fn start(
        parts: DistributedParts,
        stop: CancellationToken,
    ) -> crate::Result<(Self, watch::Receiver<Arc<ConnectorSet>>)> {
        let topic = ConfigTopic::new(parts.client.clone(), parts.config_topic.clone());
        let follower = topic.follow(stop.clone()).await?;
        let mut file = BTreeMap::new();
        for entry in parts.file_connectors {
            let kind = built_kind(&entry.connector);
            let spec =
                ConnectorSpec::new(entry.connector, entry.source_runtime, entry.sink_runtime);
            file.insert(entry.name.clone(), FileConnector { raw: entry.raw, spec, kind });
        }
        let mut builder = Builder {
            registry: Arc::clone(&parts.registry),
            worker: parts.worker.clone(),
            file,
            cache: HashMap::new(),
            restart_floor: follower.start_offset(),
        };
        let (set, view) = builder.build(&follower.latest());
        let (set_tx, set_rx) = watch::channel(Arc::new(set));
        let (view_tx, view_rx) = watch::channel(Arc::new(view));
        let mut snaps = follower.subscribe();
        let stop_builder = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop_builder.cancelled() => return,
                    changed = snaps.changed() => if changed.is_err() { return },
                }
                let snap = Arc::clone(&snaps.borrow_and_update());
                let (set, view) = builder.build(&snap);
                debug!(
                    offset = snap.offset,
                    connectors = set.connectors.len(),
                    "connector set rebuilt"
                );
                set_tx.send_replace(Arc::new(set));
                view_tx.send_replace(Arc::new(view));
            }
        });
        let status = Arc::new(Mutex::new(StatusView::default()));
        tokio::spawn(follow_status(
            parts.client.clone(),
            parts.group_id.clone(),
            Arc::clone(&status),
            stop,
        ));
        let control = Self {
            inner: Arc::new(Inner {
                worker: parts.worker,
                client: parts.client,
                registry: parts.registry,
                topic,
                follower,
                view: view_rx,
                status,
                group_id: parts.group_id,
                worker_id: parts.worker_id,
                offsets_topic: parts.offsets_topic,
                session: parts.session_timeout,
                membership: parts.membership,
                probe: parts.probe,
                started: Instant::now(),
                writes: tokio::sync::Mutex::new(()),
            }),
        };
        Ok((control, set_rx))
    }

    fn view(&self) -> Arc<GroupView> {
        Arc::clone(&self.inner.view.borrow())
    }

    fn effective(&self, name: &str) -> Result<Effective, ControlError> {
        self.view()
            .connectors
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("Connector {name} not found")))
    }

    /// Waits (bounded) until this worker's view reflects the record at `offset`; false when it
    /// did not in time.
    async fn seen(&self, offset: i64) -> bool {
        if !self.inner.follower.wait_past(offset, READ_YOUR_WRITE).await {
            warn!(offset, "the config topic record written is not in this worker's view yet");
            return false;
        }
        let mut view = self.inner.view.clone();
        let seen = async move { view.wait_for(|v| v.offset > offset).await.is_ok() };
        tokio::time::timeout(READ_YOUR_WRITE, seen).await.unwrap_or(false)
    }

    /// Brings this worker's view up to the config topic's end before a write (called under the
    /// writes lock): a write keeps the half of a connector's record it does not change (config
    /// or target state) from the view, so a stale view would write another worker's newer change
    /// back over (a config PUT through B, then a pause through A before A read it). 503 when the
    /// view could not catch up in time.
    async fn newest(&self) -> Result<(), ControlError> {
        let topic = self.inner.topic.topic();
        let end = self.inner.client.end_offset(topic, 0).await.map_err(|e| {
            ControlError::Unavailable(format!("cannot read the config topic: {}", e.report()))
        })?;
        if self.view().offset >= end || self.seen(end - 1).await {
            return Ok(());
        }
        Err(ControlError::Unavailable(format!(
            "this worker has not read the config topic {topic} up to its end ({end}) yet; retry"
        )))
    }

    fn unavailable(e: crate::Error) -> ControlError {
        ControlError::Unavailable(format!("cannot write to the config topic: {}", e.report()))
    }

    fn report(&self, name: &str, e: &Effective) -> ConnectorReport {
        let (assignment, failed) = {
            let s = self.inner.status.lock();
            (s.newest.clone(), s.failed.clone())
        };
        let failed_on = |w: &str, task: usize| -> Option<String> {
            failed.get(w).and_then(|(_, f)| f.get(&format!("{name}-{task}"))).cloned()
        };
        let owner = |task: usize| -> Option<String> {
            let a = assignment.as_ref()?;
            a.all
                .iter()
                .find(|(_, ts)| ts.iter().any(|t| t.connector == name && t.task == task))
                .map(|(w, _)| w.clone())
        };
        let local = self.inner.worker.status(name).ok();
        let mut tasks = Vec::new();
        if e.target != TargetState::Stopped {
            for id in 0..e.tasks {
                let here = local
                    .as_ref()
                    .and_then(|s| s.tasks.iter().find(|t| t.id == id))
                    .map(|t| t.state.clone());
                let (state, worker_id, trace) = match (here, owner(id)) {
                    (Some(TaskState::Failed(err)), _) => (
                        StateName::Failed,
                        self.inner.worker_id.clone(),
                        Some(err.report().to_string()),
                    ),
                    (Some(TaskState::Running), _) => {
                        (StateName::Running, self.inner.worker_id.clone(), None)
                    }
                    (Some(TaskState::Paused), _) => {
                        (StateName::Paused, self.inner.worker_id.clone(), None)
                    }
                    // Another worker's, or one published as failed here (its connector
                    // could not be started here).
                    (_, Some(w)) if w != self.inner.worker_id || failed_on(&w, id).is_some() => {
                        match failed_on(&w, id) {
                            Some(trace) => (StateName::Failed, w, Some(trace)),
                            None => {
                                let s = if e.target == TargetState::Paused {
                                    StateName::Paused
                                } else {
                                    StateName::Running
                                };
                                (s, w, None)
                            }
                        }
                    }
                    // Not dealt yet (created a moment ago): named after this worker, as the
                    // document wants a worker id.
                    (_, w) => (
                        StateName::Unassigned,
                        w.unwrap_or_else(|| self.inner.worker_id.clone()),
                        None,
                    ),
                };
                tasks.push(TaskReport { id, state, worker_id, trace });
            }
        }
        let connector_worker = owner(0)
            .or_else(|| assignment.as_ref().map(|a| a.leader.clone()))
            .unwrap_or_else(|| self.inner.worker_id.clone());
        let (state, trace) = match (&e.error, e.target) {
            (Some(why), _) => (StateName::Failed, Some(why.clone())),
            (None, TargetState::Stopped) => (StateName::Stopped, None),
            (None, TargetState::Paused) => (StateName::Paused, None),
            (None, TargetState::Running) => (StateName::Running, None),
        };
        ConnectorReport {
            name: name.to_owned(),
            connector: ConnectorStateReport { state, worker_id: connector_worker, trace },
            tasks,
            kind: kind_str(e.kind),
        }
    }

    /// The connector, when its offsets may be changed: it is STOPPED (else 400, as KIP-875) and
    /// really stopped (see [`still_stopping`](Self::still_stopping)), waited for up to
    /// [`STOPPING_WAIT`] (a few seconds after the STOP, at the next generation), else 409
    /// "stopping, retry". Called before taking the writes lock (the wait holds up no write);
    /// the caller checks again under it with `wait` false.
    async fn stopped(&self, name: &str, wait: bool) -> Result<Effective, ControlError> {
        let deadline = Instant::now() + if wait { STOPPING_WAIT } else { Duration::ZERO };
        loop {
            let e = self.effective(name)?;
            if e.target != TargetState::Stopped {
                return Err(ControlError::BadRequest(format!(
                    "Connectors must be in the STOPPED state before their offsets can be modified. This can be done for the specified connector by issuing a 'PUT' request to the '/connectors/{name}/stop' endpoint"
                )));
            }
            let Some(why) = self.still_stopping(name, &e).await? else {
                return Ok(e);
            };
            if Instant::now() >= deadline {
                return Err(ControlError::Conflict(format!(
                    "Connector {name} is stopping ({why}); retry"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Why STOPPED connector `e` may still have a task that commits offsets, or `None`: one of
    /// its tasks runs here; the newest generation of the group was not dealt from a config that
    /// has the STOP record, or lists one of its tasks (run or revoked); a sink's consumer group
    /// has members. A draining task's final commit would overwrite what the API writes.
    async fn still_stopping(
        &self,
        name: &str,
        e: &Effective,
    ) -> Result<Option<String>, ControlError> {
        if self.inner.worker.status(name).is_ok() {
            return Ok(Some("its tasks are still draining on this worker".into()));
        }
        let newest = self.inner.status.lock().newest.clone();
        let dealt = newest.as_ref().is_some_and(|a| {
            a.config_offset > e.written_at
                && !a
                    .all
                    .values()
                    .chain(a.revoked_all.values())
                    .flatten()
                    .any(|t| t.connector == name)
        });
        if !dealt {
            return Ok(Some("the group has not rebalanced without its tasks yet".into()));
        }
        if e.kind == ConnectorKind::Sink {
            let group = Self::sink_group(name);
            let d = describe_group(&self.inner.client, &group).await.map_err(|e| {
                ControlError::Unavailable(format!("cannot describe group {group}: {e}"))
            })?;
            if !d.members.is_empty() {
                return Ok(Some(format!(
                    "its consumer group {group} still has {} member(s)",
                    d.members.len()
                )));
            }
        }
        Ok(None)
    }

    /// PUT config (`create` false) or POST (`create` true: 409 when it exists, checked under
    /// this worker's write lock on the newest view). A new connector beyond
    /// [`MAX_CONNECTORS`] is refused with 400 (a worker would never run it).
    async fn write_config(
        &self,
        name: &str,
        config: Map<String, Value>,
        create: bool,
    ) -> Result<PutOutcome, ControlError> {
        let config = named(name, config)?;
        connector_from_json(config.clone(), &self.inner.registry).map_err(ControlError::Invalid)?;
        let _w = self.inner.writes.lock().await;
        self.newest().await?;
        let view = self.view();
        let existing = view.connectors.get(name).cloned();
        if create && existing.is_some() {
            return Err(ControlError::Conflict(format!("Connector {name} already exists")));
        }
        if existing.is_none() && view.connectors.len() >= MAX_CONNECTORS {
            return Err(ControlError::BadRequest(format!(
                "name: no more connectors: the group keeps at most {MAX_CONNECTORS} (delete one first)"
            )));
        }
        let target = existing.as_ref().map_or(TargetState::Running, |e| e.target);
        let stored = StoredConnector { config, target_state: target };
        let at = self.inner.topic.put(name, &stored).await.map_err(Self::unavailable)?;
        info!(connector = %name, offset = at, "connector config written to the config topic");
        self.seen(at).await;
        Ok(if existing.is_some() { PutOutcome::Updated } else { PutOutcome::Created })
    }

    /// Tombstones of `partitions` of source `name` in the offsets topic: Kafka Connect's way of
    /// forgetting a partition (the store honours them).
    fn tombstones(&self, name: &str, partitions: &[SourcePartition]) -> Vec<ProducerRecord> {
        partitions
            .iter()
            .map(|p| {
                let key = Value::Array(vec![
                    Value::String(name.to_owned()),
                    Value::Object(p.clone().into_map()),
                ]);
                let mut r = ProducerRecord::new(self.inner.offsets_topic.as_str(), Bytes::new())
                    .with_key(Bytes::from(key.to_string()))
                    .with_partition(0);
                r.value = None;
                r
            })
            .collect()
    }

    fn sink_group(name: &str) -> String {
        format!("connect-{name}")
    }
}

/// What the status topic says of this group.
#[derive(Debug, Default)]
struct StatusView {
    /// The newest assignment (by generation).
    newest: Option<WorkerAssignment>,
    /// Each worker's failed tasks as of its newest record: (generation, `<connector>-<task>` -> error).
    failed: HashMap<String, (i32, BTreeMap<String, String>)>,
}

/// Follows [`STATUS_TOPIC`]: keeps the newest assignment of `group` (by generation) and each
/// worker's failed tasks.
async fn follow_status(
    client: KafkaClient,
    group: String,
    out: Arc<Mutex<StatusView>>,
    stop: CancellationToken,
) {
    let mut offset: Option<i64> = None;
    loop {
        let step = async {
            if client.topic_metadata(STATUS_TOPIC).await?.is_none() {
                return Ok::<(), crate::Error>(());
            }
            let at = match offset {
                Some(o) => o,
                None => client.list_offset(STATUS_TOPIC, 0, OffsetSpec::Earliest).await?,
            };
            let end = client.end_offset(STATUS_TOPIC, 0).await?;
            let mut at = if at > end { 0 } else { at };
            while at < end {
                let FetchResult::Records(f) =
                    client.fetch(STATUS_TOPIC, 0, at, Duration::from_millis(100)).await?
                else {
                    at = client.list_offset(STATUS_TOPIC, 0, OffsetSpec::Earliest).await?;
                    break;
                };
                for r in &f.records {
                    let Some(v) = r.value.as_deref() else { continue };
                    let Ok(s) = serde_json::from_slice::<StatusRecord>(v) else { continue };
                    if s.group != group {
                        continue;
                    }
                    let mut cur = out.lock();
                    let generation = s.assignment.generation;
                    let newer = cur.failed.get(&s.worker_id).is_none_or(|(g, _)| *g <= generation);
                    if newer {
                        cur.failed.insert(s.worker_id.clone(), (generation, s.failed));
                    }
                    if cur.newest.as_ref().is_none_or(|c| c.generation <= generation) {
                        cur.newest = Some(s.assignment);
                    }
                }
                if f.next_offset <= at {
                    break;
                }
                at = f.next_offset;
            }
            offset = Some(at);
            Ok(())
        };
        if let Err(e) = step.await {
            debug!(error = %e, "reading the status topic failed; retrying");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn built_kind(c: &BuiltConnector) -> ConnectorKind {
    match c {
        BuiltConnector::Source(_) => ConnectorKind::Source,
        BuiltConnector::Sink(_) => ConnectorKind::Sink,
    }
}

fn kind_str(kind: ConnectorKind) -> &'static str {
    match kind {
        ConnectorKind::Source => "source",
        ConnectorKind::Sink => "sink",
    }
}

/// `config` with `name` set (or checked against `name`).
fn named(name: &str, mut config: Map<String, Value>) -> Result<Map<String, Value>, ControlError> {
    match config.get("name") {
        None => {
            config.insert("name".into(), Value::String(name.to_owned()));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(ControlError::BadRequest(format!(
                "Connector name configuration ({other}) doesn't match connector name in the URL ({name})"
            )))
        }
    }
    Ok(config)
}

#[async_trait::async_trait]
impl ConnectControl for DistributedControl {
    fn worker_id(&self) -> String {
        self.inner.worker_id.clone()
    }

    fn worker(&self) -> Worker {
        self.inner.worker.clone()
    }

    async fn connectors(&self) -> Vec<String> {
        self.view().connectors.keys().cloned().collect()
    }

    async fn info(&self, name: &str) -> Result<ConnectorInfo, ControlError> {
        let e = self.effective(name)?;
        let tasks = if e.target == TargetState::Stopped { 0 } else { e.tasks };
        Ok(ConnectorInfo { name: name.to_owned(), kind: e.kind, config: e.raw, tasks })
    }

    async fn status(&self, name: &str) -> Result<ConnectorReport, ControlError> {
        let e = self.effective(name)?;
        Ok(self.report(name, &e))
    }

    async fn task_configs(&self, name: &str) -> Result<Vec<Map<String, Value>>, ControlError> {
        let e = self.effective(name)?;
        let n = if e.target == TargetState::Stopped { 0 } else { e.tasks };
        Ok((0..n)
            .map(|t| {
                let mut c = e.raw.clone();
                c.insert("task.id".into(), Value::from(t));
                c
            })
            .collect())
    }

    async fn put_config(
        &self,
        name: &str,
        config: Map<String, Value>,
    ) -> Result<PutOutcome, ControlError> {
        self.write_config(name, config, false).await
    }

    async fn create(&self, name: &str, config: Map<String, Value>) -> Result<(), ControlError> {
        self.write_config(name, config, true).await.map(|_| ())
    }

    async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let _w = self.inner.writes.lock().await;
        self.newest().await?;
        let e = self.effective(name)?;
        let at = self.inner.topic.delete(name, e.from_file).await.map_err(Self::unavailable)?;
        info!(connector = %name, offset = at, "connector deleted in the config topic");
        self.seen(at).await;
        Ok(())
    }

    async fn set_target(&self, name: &str, target: TargetState) -> Result<(), ControlError> {
        let _w = self.inner.writes.lock().await;
        self.newest().await?;
        let e = self.effective(name)?;
        if e.target == target {
            return Ok(());
        }
        let stored = StoredConnector { config: e.raw, target_state: target };
        let at = self.inner.topic.put(name, &stored).await.map_err(Self::unavailable)?;
        info!(connector = %name, ?target, offset = at, "target state written to the config topic");
        self.seen(at).await;
        Ok(())
    }

    async fn restart(
        &self,
        name: &str,
        req: RestartRequest,
    ) -> Result<ConnectorReport, ControlError> {
        let e = self.effective(name)?;
        if req.include_tasks {
            let r = RestartRecord {
                connector: name.to_owned(),
                task: None,
                include_tasks: true,
                only_failed: req.only_failed,
            };
            let at = self.inner.topic.restart(&r).await.map_err(Self::unavailable)?;
            self.seen(at).await;
        }
        Ok(self.report(name, &e))
    }

    async fn restart_task(&self, name: &str, task: usize) -> Result<(), ControlError> {
        let e = self.effective(name)?;
        if task >= e.tasks || e.target == TargetState::Stopped {
            return Err(ControlError::NotFound(format!("Task {name}-{task} not found")));
        }
        let r = RestartRecord {
            connector: name.to_owned(),
            task: Some(task),
            include_tasks: false,
            only_failed: false,
        };
        let at = self.inner.topic.restart(&r).await.map_err(Self::unavailable)?;
        self.seen(at).await;
        Ok(())
    }

    async fn offsets(&self, name: &str) -> Result<Vec<OffsetEntry>, ControlError> {
        let e = self.effective(name)?;
        match e.kind {
            ConnectorKind::Source => {
                let store = KafkaOffsetStore::new(
                    self.inner.client.clone(),
                    self.inner.offsets_topic.clone(),
                );
                let stored = store.load(name).await.map_err(|e| {
                    ControlError::Unavailable(format!(
                        "cannot read {name}'s offsets: {}",
                        e.report()
                    ))
                })?;
                Ok(stored
                    .iter()
                    .filter(|(_, o)| !o.is_empty())
                    .map(|(p, o)| OffsetEntry {
                        partition: p.clone().into_map(),
                        offset: Some(o.clone().into_map()),
                    })
                    .collect())
            }
            ConnectorKind::Sink => {
                let group = Self::sink_group(name);
                let committed =
                    committed_offsets(&self.inner.client, &group).await.map_err(|e| {
                        ControlError::Unavailable(format!(
                            "cannot read group {group}'s offsets: {e}"
                        ))
                    })?;
                let mut out: Vec<(TopicPartition, i64)> = committed.into_iter().collect();
                out.sort_by(|a, b| (&*a.0.topic, a.0.partition).cmp(&(&*b.0.topic, b.0.partition)));
                Ok(out.into_iter().map(|(tp, o)| sink_entry(&tp, Some(o))).collect())
            }
        }
    }

    async fn alter_offsets(
        &self,
        name: &str,
        offsets: Vec<OffsetEntry>,
    ) -> Result<(), ControlError> {
        self.stopped(name, true).await?;
        let _w = self.inner.writes.lock().await;
        let e = self.stopped(name, false).await?;
        match e.kind {
            ConnectorKind::Source => {
                // A null offset forgets the partition: a tombstone, as Kafka Connect writes.
                let mut map = OffsetMap::new();
                let mut cleared = Vec::new();
                for entry in offsets {
                    let p = SourcePartition::from(entry.partition);
                    match entry.offset {
                        Some(o) => {
                            map.insert(p, SourceOffset::from(o));
                        }
                        None => cleared.push(p),
                    }
                }
                if !map.is_empty() {
                    let store = KafkaOffsetStore::new(
                        self.inner.client.clone(),
                        self.inner.offsets_topic.clone(),
                    );
                    store.save(name, &map).await.map_err(|e| {
                        ControlError::Unavailable(format!(
                            "cannot save {name}'s offsets: {}",
                            e.report()
                        ))
                    })?;
                }
                if !cleared.is_empty() {
                    self.inner.client.produce(self.tombstones(name, &cleared)).await.map_err(
                        |e| {
                            ControlError::Unavailable(format!(
                                "cannot clear {name}'s offsets: {}",
                                e.report()
                            ))
                        },
                    )?;
                }
                info!(connector = %name, set = map.len(), cleared = cleared.len(), "source offsets altered through the API");
            }
            ConnectorKind::Sink => {
                let mut commits = Vec::new();
                for (i, entry) in offsets.into_iter().enumerate() {
                    let (tp, offset) = parse_sink_entry(i, &entry)?;
                    // A reset partition starts over from the earliest record.
                    let offset = match offset {
                        Some(o) => o,
                        None => self
                            .inner
                            .client
                            .list_offset(&tp.topic, tp.partition, OffsetSpec::Earliest)
                            .await
                            .map_err(|e| ControlError::Unavailable(e.report().to_string()))?,
                    };
                    commits.push((tp, offset));
                }
                self.commit_sink(name, &commits).await?;
            }
        }
        Ok(())
    }

    async fn reset_offsets(&self, name: &str) -> Result<(), ControlError> {
        self.stopped(name, true).await?;
        let _w = self.inner.writes.lock().await;
        let e = self.stopped(name, false).await?;
        match e.kind {
            ConnectorKind::Source => {
                let store = KafkaOffsetStore::new(
                    self.inner.client.clone(),
                    self.inner.offsets_topic.clone(),
                );
                let stored = store.load(name).await.map_err(|e| {
                    ControlError::Unavailable(format!(
                        "cannot read {name}'s offsets: {}",
                        e.report()
                    ))
                })?;
                let partitions: Vec<SourcePartition> =
                    stored.iter().map(|(p, _)| p.clone()).collect();
                let records = self.tombstones(name, &partitions);
                let n = records.len();
                self.inner.client.produce(records).await.map_err(|e| {
                    ControlError::Unavailable(format!(
                        "cannot reset {name}'s offsets: {}",
                        e.report()
                    ))
                })?;
                info!(connector = %name, partitions = n, "source offsets reset through the API");
            }
            ConnectorKind::Sink => {
                let group = Self::sink_group(name);
                let committed =
                    committed_offsets(&self.inner.client, &group).await.map_err(|e| {
                        ControlError::Unavailable(format!(
                            "cannot read group {group}'s offsets: {e}"
                        ))
                    })?;
                let mut commits = Vec::new();
                for (tp, _) in committed {
                    let earliest = self
                        .inner
                        .client
                        .list_offset(&tp.topic, tp.partition, OffsetSpec::Earliest)
                        .await
                        .map_err(|e| ControlError::Unavailable(e.report().to_string()))?;
                    commits.push((tp, earliest));
                }
                self.commit_sink(name, &commits).await?;
            }
        }
        Ok(())
    }

    fn validate(
        &self,
        type_name: &str,
        mut config: Map<String, Value>,
    ) -> Result<ConfigErrors, ControlError> {
        if self.inner.registry.kind(type_name).is_none() {
            return Err(ControlError::NotFound(format!("unknown connector type {type_name:?}")));
        }
        config.insert("type".into(), Value::String(type_name.to_owned()));
        config.entry("name").or_insert_with(|| Value::String(type_name.to_owned()));
        Ok(connector_from_json(config, &self.inner.registry).err().unwrap_or_default())
    }

    fn plugins(&self) -> Vec<PluginInfo> {
        super::standalone::plugins(&self.inner.registry)
    }

    async fn health(&self) -> Health {
        // Kafka and the tasks here first (H4's probe), then the group membership.
        let local = worker_health(&self.inner.worker, &self.inner.probe);
        if local != Health::Healthy {
            return local;
        }
        let session = self.inner.session;
        match self.inner.membership.last_ok() {
            None if self.inner.started.elapsed() < session * 2 => Health::Starting(format!(
                "worker {} has not joined worker group {} yet",
                self.inner.worker_id, self.inner.group_id
            )),
            None => Health::Unhealthy(format!(
                "worker {} has not joined worker group {} in {:.1} s",
                self.inner.worker_id,
                self.inner.group_id,
                self.inner.started.elapsed().as_secs_f64()
            )),
            Some(at) if at.elapsed() > session => Health::Unhealthy(format!(
                "worker {} has been out of worker group {} for {:.1} s (session timeout {:?})",
                self.inner.worker_id,
                self.inner.group_id,
                at.elapsed().as_secs_f64(),
                session
            )),
            Some(_) => Health::Healthy,
        }
    }
}

impl DistributedControl {
    /// Commits a STOPPED sink's offsets to its consumer group as a non-member (generation -1):
    /// Kafka accepts it only while the group has no members.
    async fn commit_sink(
        &self,
        name: &str,
        commits: &[(TopicPartition, i64)],
    ) -> Result<(), ControlError> {
        let group = Self::sink_group(name);
        GroupCommitter::without_membership(self.inner.client.clone(), &group)
            .commit(commits)
            .await
            .map_err(|e| {
                error!(connector = %name, group = %group, error = %e, "committing sink offsets failed");
                ControlError::Conflict(format!("cannot commit group {group}'s offsets: {e}"))
            })?;
        info!(connector = %name, partitions = commits.len(), "sink offsets committed through the API");
        Ok(())
    }
}

fn sink_entry(tp: &TopicPartition, offset: Option<i64>) -> OffsetEntry {
    let mut partition = Map::new();
    partition.insert("kafka_topic".into(), Value::String(tp.topic.to_string()));
    partition.insert("kafka_partition".into(), Value::from(tp.partition));
    let offset = offset.map(|o| {
        let mut m = Map::new();
        m.insert("kafka_offset".into(), Value::from(o));
        m
    });
    OffsetEntry { partition, offset }
}

fn parse_sink_entry(
    i: usize,
    e: &OffsetEntry,
) -> Result<(TopicPartition, Option<i64>), ControlError> {
    let bad = |what: &str| ControlError::BadRequest(format!("offsets[{i}]: {what}"));
    let topic = e
        .partition
        .get("kafka_topic")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("partition.kafka_topic: expected a string"))?;
    let partition = e
        .partition
        .get("kafka_partition")
        .and_then(Value::as_i64)
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| bad("partition.kafka_partition: expected an integer"))?;
    let offset = match &e.offset {
        None => None,
        Some(o) => Some(
            o.get("kafka_offset")
                .and_then(Value::as_i64)
                .filter(|o| *o >= 0)
                .ok_or_else(|| bad("offset.kafka_offset: expected an integer >= 0"))?,
        ),
    };
    Ok((TopicPartition::new(topic, partition), offset))
}
