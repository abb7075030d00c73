//! [`StandaloneControl`]: the REST API's operations over one [`Worker`], with every change made
//! through the API kept in a config directory (`[rest] config_dir`, one `<name>.json` per
//! connector, written atomically) and read back at start over the file's `[[connector]]`s.
//!
//! Why a directory and not the configuration file: the file is the operator's (comments,
//! `${VAR}`s, its own layout), and a process that rewrites it would fight configuration
//! management; a directory of small JSON documents is written atomically one connector at a
//! time and read back in any order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::probe::{worker_health, KafkaProbe};
use super::{
    ConnectControl, ConnectorInfo, ConnectorReport, ConnectorStateReport, ControlError, Health,
    OffsetEntry, PluginInfo, PutOutcome, RestartRequest, StateName, TargetState, TaskReport,
};
use crate::config::ConfigErrors;
use crate::offset::{OffsetMap, OffsetStore};
use crate::record::{SourceOffset, SourcePartition};
use crate::runner::file::{connector_from_json, ConnectorEntry};
use crate::runner::registry::{ConnectorKind, Registry};
use crate::runtime::{
    ConnectorSpec, ConnectorState, TaskState, Worker, WorkerError, MAX_CONNECTORS,
};
use crate::{Error, Result};

/// A connector this control knows: its config as written, what it was asked to be, and how it
/// is built.
struct Managed {
    raw: Map<String, Value>,
    kind: ConnectorKind,
    /// `None` when its config no longer builds (a persisted config a newer version refuses).
    spec: Option<ConnectorSpec>,
    target: TargetState,
    /// Why it could not be built or started (status FAILED, no tasks).
    failure: Option<String>,
    /// Whether its config is kept in the config directory (given through the API); `false`:
    /// it is the file's, and only its target state is kept there, so later edits of the file
    /// take effect.
    kept: bool,
}

/// A `<name>.json` document of the config directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_state: Option<TargetState>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// The REST API's operations for a standalone worker: one [`Worker`] running every connector,
/// changes kept in a config directory.
///
/// Semantics, as Kafka Connect's standalone mode: a failed task stays FAILED (the process goes
/// on; `/health` reports it) until it or its connector is restarted. A config change drains the
/// old tasks ([`Worker::stop`]: acknowledgements in, offsets committed) before the new ones start
/// from the committed offsets, so it loses nothing and repeats no more than a clean restart.
///
/// Each operation that changes connectors runs in a task of its own, to its end, even when the
/// caller gives up (an HTTP client hanging up drops the request's future): a config written
/// to the directory is always applied, never left half done.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::runner::control::{standalone::StandaloneControl, ConnectControl};
/// use connector_core::runner::Registry;
///
/// # async fn example(worker: connector_core::runtime::Worker, offsets: Arc<dyn connector_core::OffsetStore>) -> connector_core::Result<()> {
/// let control = StandaloneControl::new(worker, offsets, Arc::new(Registry::new()), "connect-rest.d".into(), "host:8083".into());
/// control.start(Vec::new(), &tokio_util::sync::CancellationToken::new()).await?;
/// assert!(control.connectors().await.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StandaloneControl {
    core: Arc<Core>,
}

impl StandaloneControl {
    /// A control over `worker` (whose offsets are kept in `offsets`), building API-created
    /// connectors with `registry` and keeping changes in `dir`. Nothing runs until
    /// [`start`](Self::start).
    pub fn new(
        worker: Worker,
        offsets: Arc<dyn OffsetStore>,
        registry: Arc<Registry>,
        dir: PathBuf,
        worker_id: String,
    ) -> Self {
        Self { core: Arc::new(Core::new(worker, offsets, registry, dir, worker_id)) }
    }

    /// Makes `health()` follow `probe` (Kafka's reachability, then the tasks' states: see
    /// [`worker_health`]) and `kafka_cluster_id()` report the id it learnt.
    pub fn set_probe(&self, probe: KafkaProbe) {
        self.core.set_probe(probe);
    }

    /// Starts `file_connectors` (the file's `[[connector]]`s) with the config directory's
    /// documents laid over them: a document replaces the file's connector of its name or adds
    /// one, `{"deleted": true}` removes it. Each then starts in its target state. A connector
    /// that cannot start is reported FAILED; the others run. Cut short by `shutdown`.
    ///
    /// # Errors
    /// The config directory cannot be read, or holds a document that is not one of ours.
    pub async fn start(
        &self,
        file_connectors: Vec<ConnectorEntry>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        self.core.start(file_connectors, shutdown).await
    }

    /// Runs `op` in a task of its own and waits for it: dropping this future (a client that
    /// hung up) leaves the operation running to its end, under the ops lock it takes.
    async fn detached<T, F, Fut>(&self, op: F) -> Result<T, ControlError>
    where
        F: FnOnce(Arc<Core>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ControlError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(op(Arc::clone(&self.core)))
            .await
            .unwrap_or_else(|e| Err(ControlError::Internal(format!("the operation panicked: {e}"))))
    }
}

#[async_trait::async_trait]
impl ConnectControl for StandaloneControl {
    fn worker_id(&self) -> String {
        self.core.worker_id()
    }

    fn worker(&self) -> Worker {
        self.core.worker()
    }

    async fn connectors(&self) -> Vec<String> {
        self.core.connectors().await
    }

    async fn info(&self, name: &str) -> Result<ConnectorInfo, ControlError> {
        self.core.info(name).await
    }

    async fn status(&self, name: &str) -> Result<ConnectorReport, ControlError> {
        self.core.report(name)
    }

    async fn task_configs(&self, name: &str) -> Result<Vec<Map<String, Value>>, ControlError> {
        self.core.task_configs(name).await
    }

    async fn put_config(
        &self,
        name: &str,
        config: Map<String, Value>,
    ) -> Result<PutOutcome, ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.put_config(&name, config, false).await }).await
    }

    async fn create(&self, name: &str, config: Map<String, Value>) -> Result<(), ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.put_config(&name, config, true).await.map(|_| ()) })
            .await
    }

    async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.delete(&name).await }).await
    }

    async fn set_target(&self, name: &str, target: TargetState) -> Result<(), ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.set_target(&name, target).await }).await
    }

    async fn restart(
        &self,
        name: &str,
        req: RestartRequest,
    ) -> Result<ConnectorReport, ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.restart(&name, req).await }).await
    }

    async fn restart_task(&self, name: &str, task: usize) -> Result<(), ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.restart_task(&name, task).await }).await
    }

    async fn offsets(&self, name: &str) -> Result<Vec<OffsetEntry>, ControlError> {
        self.core.offsets(name).await
    }

    async fn alter_offsets(
        &self,
        name: &str,
        offsets: Vec<OffsetEntry>,
    ) -> Result<(), ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.alter_offsets(&name, offsets).await }).await
    }

    async fn reset_offsets(&self, name: &str) -> Result<(), ControlError> {
        let name = name.to_owned();
        self.detached(move |c| async move { c.reset_offsets(&name).await }).await
    }

    fn validate(
        &self,
        type_name: &str,
        config: Map<String, Value>,
    ) -> Result<ConfigErrors, ControlError> {
        self.core.validate(type_name, config)
    }

    fn plugins(&self) -> Vec<PluginInfo> {
        plugins(&self.core.registry)
    }

    fn kafka_cluster_id(&self) -> Option<String> {
        self.core.kafka_cluster_id()
    }

    async fn health(&self) -> Health {
        self.core.health().await
    }
}

/// [`StandaloneControl`]'s state, shared with the tasks that run its operations.
struct Core {
    worker: Worker,
    offsets: Arc<dyn OffsetStore>,
    registry: Arc<Registry>,
    dir: PathBuf,
    worker_id: String,
    /// Serializes the operations that change connectors (a drain may take a while; reads do not
    /// wait for it).
    ops: tokio::sync::Mutex<()>,
    connectors: parking_lot::Mutex<BTreeMap<String, Managed>>,
    probe: parking_lot::Mutex<Option<KafkaProbe>>,
    /// Set once [`start`](Self::start) has started the connectors (health: "starting" before).
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandaloneControl")
            .field("dir", &self.dir)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A control over `worker` (whose offsets are kept in `offsets`), building API-created
    /// connectors with `registry` and keeping changes in `dir`. Nothing runs until
    /// [`start`](Self::start).
    pub fn new(
        worker: Worker,
        offsets: Arc<dyn OffsetStore>,
        registry: Arc<Registry>,
        dir: PathBuf,
        worker_id: String,
    ) -> Self {
        Self {
            worker,
            offsets,
            registry,
            dir,
            worker_id,
            ops: tokio::sync::Mutex::new(()),
            connectors: parking_lot::Mutex::new(BTreeMap::new()),
            probe: parking_lot::Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes `health()` follow `probe` (Kafka's reachability, then the tasks' states: see
    /// [`worker_health`]) and `kafka_cluster_id()` report the id it learnt.
    pub fn set_probe(&self, probe: KafkaProbe) {
        *self.probe.lock() = Some(probe);
    }

    /// Starts `file_connectors` (the file's `[[connector]]`s) with the config directory's
    /// documents laid over them: a document replaces the file's connector of its name or adds
    /// one, `{"deleted": true}` removes it. Each then starts in its target state. A connector
    /// that cannot start is reported FAILED; the others run. Cut short by `shutdown`.
    ///
    /// # Errors
    /// The config directory cannot be read, or holds a document that is not one of ours.
    pub async fn start(
        &self,
        file_connectors: Vec<ConnectorEntry>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let _ops = self.ops.lock().await;
        let mut all: BTreeMap<String, Managed> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for entry in file_connectors {
            let name = entry.name.clone();
            order.push(name.clone());
            all.insert(name, Managed { kept: false, ..managed(entry, TargetState::Running) });
        }
        for (name, doc) in read_dir(&self.dir).await? {
            if doc.deleted {
                info!(connector = %name, dir = %self.dir.display(), "connector deleted through the API: not started");
                all.remove(&name);
                continue;
            }
            let Some(mut config) = doc.config else {
                // Only a target state, for a connector of the file (paused, resumed or stopped
                // through the API): the file's config, in that state.
                let path = self.dir.join(file_name(&name));
                match (doc.target_state, all.get_mut(&name)) {
                    (Some(target), Some(m)) => {
                        info!(connector = %name, file = %path.display(), target = ?target, "the file's connector starts in the target state kept through the API");
                        m.target = target;
                    }
                    (Some(_), None) => {
                        warn!(connector = %name, file = %path.display(), "a target state is kept for a connector the file no longer has: ignored (delete the file to silence this)");
                    }
                    (None, _) => {
                        return Err(Error::fatal(format!(
                            "{}: neither a config, a target state nor deleted",
                            path.display()
                        )))
                    }
                }
                continue;
            };
            config.insert("name".into(), Value::String(name.clone()));
            let target = doc.target_state.unwrap_or_default();
            let m = match connector_from_json(config.clone(), &self.registry) {
                Ok(entry) => managed(entry, target),
                Err(errors) => {
                    error!(connector = %name, errors = %errors.to_string().replace('\n', "; "), "the config kept for this connector no longer validates: reported FAILED");
                    Managed {
                        kind: kind_of(&config, &self.registry),
                        raw: config,
                        spec: None,
                        target,
                        kept: true,
                        failure: Some(format!(
                            "invalid config: {}",
                            errors.to_string().replace('\n', "; ")
                        )),
                    }
                }
            };
            if order.contains(&name) {
                let file = self.dir.join(file_name(&name));
                let differs = all.get(&name).is_some_and(|f| f.raw != m.raw);
                if differs {
                    warn!(connector = %name, file = %file.display(), target = ?target, "the config kept through the API differs from the file's [[connector]] of this name and replaces it: edits of the file's entry do not take effect (delete the kept file, or PUT the config, to change it)");
                } else {
                    info!(connector = %name, file = %file.display(), target = ?target, "the config kept through the API replaces the file's [[connector]] of this name (the same config)");
                }
            } else {
                order.push(name.clone());
            }
            all.insert(name, m);
        }
        *self.connectors.lock() = all;
        for name in order {
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                () = self.launch(&name) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.started.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Starts connector `name` in its target state (nothing when STOPPED), recording a failure.
    async fn launch(&self, name: &str) {
        let (spec, target) = {
            let mut map = self.connectors.lock();
            let Some(m) = map.get_mut(name) else { return };
            if m.target == TargetState::Stopped || m.spec.is_none() {
                return;
            }
            m.failure = None;
            (m.spec.clone(), m.target)
        };
        let Some(spec) = spec else { return };
        info!(connector = %name, target = ?target, "starting connector");
        // PAUSED starts paused: its tasks must not poll or put even for a moment.
        let result = if target == TargetState::Paused {
            self.worker.start_paused(name, spec).await
        } else {
            self.worker.start(name, spec).await
        };
        if let Err(e) = result {
            let why = match &e {
                WorkerError::Start(e) => e.report(),
                other => other.to_string(),
            };
            error!(connector = %name, error = %why, "connector failed to start; it stays FAILED until restarted");
            if let Some(m) = self.connectors.lock().get_mut(name) {
                m.failure = Some(why);
            }
        }
    }

    /// Drains and stops connector `name`'s tasks if they run.
    async fn halt(&self, name: &str) -> Result<(), ControlError> {
        match self.worker.stop(name).await {
            Ok(()) | Err(WorkerError::UnknownConnector(_)) => Ok(()),
            Err(e) => Err(ControlError::Internal(e.to_string())),
        }
    }

    /// Writes connector `name`'s document.
    async fn persist(&self, name: &str, doc: &Persisted) -> Result<(), ControlError> {
        let bytes = serde_json::to_vec_pretty(doc)
            .map_err(|e| ControlError::Internal(format!("cannot encode {name}'s config: {e}")))?;
        let (dir, file) = (self.dir.clone(), file_name(name));
        tokio::task::spawn_blocking(move || write_atomic(&dir, &file, &bytes))
            .await
            .map_err(|e| ControlError::Internal(format!("the config write panicked: {e}")))?
            .map_err(|e| {
                ControlError::Internal(format!(
                    "cannot keep the change in {}: {e}",
                    self.dir.display()
                ))
            })
    }

    fn not_found(name: &str) -> ControlError {
        ControlError::NotFound(format!("Connector {name} not found"))
    }

    fn exists(&self, name: &str) -> Result<(), ControlError> {
        if self.connectors.lock().contains_key(name) {
            Ok(())
        } else {
            Err(Self::not_found(name))
        }
    }

    fn target(&self, name: &str) -> Result<TargetState, ControlError> {
        self.connectors.lock().get(name).map(|m| m.target).ok_or_else(|| Self::not_found(name))
    }

    /// KIP-875: offsets change only while STOPPED, else 400 (409 is for a rebalance).
    fn stopped_or_refused(&self, name: &str) -> Result<ConnectorKind, ControlError> {
        let map = self.connectors.lock();
        let m = map.get(name).ok_or_else(|| Self::not_found(name))?;
        if m.target == TargetState::Stopped {
            Ok(m.kind)
        } else {
            Err(ControlError::BadRequest(format!(
                "Connectors must be in the STOPPED state before their offsets can be modified. This can be done for the specified connector by issuing a 'PUT' request to the '/connectors/{name}/stop' endpoint"
            )))
        }
    }

    fn report(&self, name: &str) -> Result<ConnectorReport, ControlError> {
        let map = self.connectors.lock();
        let m = map.get(name).ok_or_else(|| Self::not_found(name))?;
        let kind = kind_str(m.kind);
        let state =
            |state, trace| ConnectorStateReport { state, worker_id: self.worker_id.clone(), trace };
        if m.target == TargetState::Stopped {
            return Ok(ConnectorReport {
                name: name.to_owned(),
                connector: state(StateName::Stopped, None),
                tasks: Vec::new(),
                kind,
            });
        }
        match self.worker.status(name) {
            Ok(status) => {
                let connector = match status.state {
                    ConnectorState::Paused => StateName::Paused,
                    _ => StateName::Running,
                };
                let tasks = status
                    .tasks
                    .iter()
                    .map(|t| {
                        let (state, trace) = match &t.state {
                            TaskState::Running => (StateName::Running, None),
                            TaskState::Paused => (StateName::Paused, None),
                            TaskState::Failed(e) => (StateName::Failed, Some(e.report())),
                            _ => (StateName::Unassigned, None),
                        };
                        TaskReport { id: t.id, state, worker_id: self.worker_id.clone(), trace }
                    })
                    .collect();
                Ok(ConnectorReport {
                    name: name.to_owned(),
                    connector: state(connector, None),
                    tasks,
                    kind,
                })
            }
            Err(_) => {
                let (s, trace) = match &m.failure {
                    Some(why) => (StateName::Failed, Some(why.clone())),
                    None => (StateName::Unassigned, None),
                };
                Ok(ConnectorReport {
                    name: name.to_owned(),
                    connector: state(s, trace),
                    tasks: Vec::new(),
                    kind,
                })
            }
        }
    }

    fn task_count(&self, name: &str) -> usize {
        self.worker.status(name).map(|s| s.tasks.len()).unwrap_or(0)
    }
}

/// The operations, run by [`StandaloneControl`] (the mutating ones in a task of their own).
impl Core {
    fn worker_id(&self) -> String {
        self.worker_id.clone()
    }

    fn worker(&self) -> Worker {
        self.worker.clone()
    }

    async fn connectors(&self) -> Vec<String> {
        self.connectors.lock().keys().cloned().collect()
    }

    async fn info(&self, name: &str) -> Result<ConnectorInfo, ControlError> {
        let (config, kind) = {
            let map = self.connectors.lock();
            let m = map.get(name).ok_or_else(|| Self::not_found(name))?;
            (m.raw.clone(), m.kind)
        };
        Ok(ConnectorInfo { name: name.to_owned(), kind, config, tasks: self.task_count(name) })
    }

    async fn task_configs(&self, name: &str) -> Result<Vec<Map<String, Value>>, ControlError> {
        let info = self.info(name).await?;
        Ok((0..info.tasks)
            .map(|i| {
                let mut c = info.config.clone();
                c.insert("task.id".into(), Value::from(i));
                c
            })
            .collect())
    }

    /// PUT config (`create_only`: POST, refused when `name` exists, checked under the ops lock).
    async fn put_config(
        &self,
        name: &str,
        mut config: Map<String, Value>,
        create_only: bool,
    ) -> Result<PutOutcome, ControlError> {
        match config.get("name") {
            Some(Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(ControlError::BadRequest(format!(
                    "the config's name {other} does not match the connector's, {name:?}"
                )))
            }
            None => {
                config.insert("name".into(), Value::String(name.to_owned()));
            }
        }
        if name.trim().is_empty() {
            return Err(ControlError::BadRequest("a connector name must not be empty".into()));
        }
        check_name_length(name)?;
        let entry =
            connector_from_json(config.clone(), &self.registry).map_err(ControlError::Invalid)?;
        let _ops = self.ops.lock().await;
        let existing = self.connectors.lock().get(name).map(|m| m.target);
        if create_only && existing.is_some() {
            return Err(ControlError::Conflict(format!("Connector {name} already exists")));
        }
        // Every connector kept (STOPPED or failing ones too) counts, so the directory and the
        // map stay bounded.
        if existing.is_none() && self.connectors.lock().len() >= MAX_CONNECTORS {
            return Err(ControlError::BadRequest(format!(
                "name: no more connectors: this worker keeps at most {MAX_CONNECTORS} (delete one first)"
            )));
        }
        let target = existing.unwrap_or_default();
        self.persist(
            name,
            &Persisted { config: Some(config), target_state: Some(target), deleted: false },
        )
        .await?;
        if existing.is_some() {
            info!(connector = %name, "config replaced: draining the old tasks before the new ones start");
            self.halt(name).await?;
        }
        self.connectors.lock().insert(name.to_owned(), managed(entry, target));
        self.launch(name).await;
        Ok(if existing.is_some() { PutOutcome::Updated } else { PutOutcome::Created })
    }

    async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let _ops = self.ops.lock().await;
        self.exists(name)?;
        self.persist(name, &Persisted { config: None, target_state: None, deleted: true }).await?;
        self.halt(name).await?;
        self.connectors.lock().remove(name);
        info!(connector = %name, "connector deleted");
        Ok(())
    }

    async fn set_target(&self, name: &str, target: TargetState) -> Result<(), ControlError> {
        let _ops = self.ops.lock().await;
        let (raw, before) = {
            let map = self.connectors.lock();
            let m = map.get(name).ok_or_else(|| Self::not_found(name))?;
            // A file connector's config stays the file's: only its target state is kept.
            (m.kept.then(|| m.raw.clone()), m.target)
        };
        self.persist(name, &Persisted { config: raw, target_state: Some(target), deleted: false })
            .await?;
        if let Some(m) = self.connectors.lock().get_mut(name) {
            m.target = target;
        }
        let running = self.worker.connectors().iter().any(|n| n == name);
        match (target, running) {
            (TargetState::Stopped, _) => self.halt(name).await?,
            (TargetState::Running, true) => {
                self.worker.resume(name).await.map_err(|e| ControlError::Internal(e.to_string()))?
            }
            (TargetState::Paused, true) => {
                self.worker.pause(name).await.map_err(|e| ControlError::Internal(e.to_string()))?
            }
            (_, false) => self.launch(name).await,
        }
        info!(connector = %name, from = ?before, to = ?target, "connector target state changed");
        Ok(())
    }

    async fn restart(
        &self,
        name: &str,
        req: RestartRequest,
    ) -> Result<ConnectorReport, ControlError> {
        let _ops = self.ops.lock().await;
        let target = self.target(name)?;
        if target == TargetState::Stopped {
            return self.report(name);
        }
        // "The connector" is what makes the task configs; it runs nothing of its own here, so
        // restarting it alone means: if it failed to start, start it again.
        let running = self.worker.connectors().iter().any(|n| n == name);
        if !running {
            self.launch(name).await;
            return self.report(name);
        }
        if req.include_tasks {
            if req.only_failed {
                let failed: Vec<usize> = self
                    .worker
                    .status(name)
                    .map(|s| {
                        s.tasks
                            .iter()
                            .filter(|t| matches!(t.state, TaskState::Failed(_)))
                            .map(|t| t.id)
                            .collect()
                    })
                    .unwrap_or_default();
                for task in failed {
                    if let Err(e) = self.worker.restart_task(name, task).await {
                        warn!(connector = %name, task, error = %e, "task restart failed");
                    }
                }
            } else if let Err(e) = self.worker.restart(name).await {
                let why = match &e {
                    WorkerError::Start(e) => e.report(),
                    other => other.to_string(),
                };
                if let Some(m) = self.connectors.lock().get_mut(name) {
                    m.failure = Some(why);
                }
            }
        }
        self.report(name)
    }

    async fn restart_task(&self, name: &str, task: usize) -> Result<(), ControlError> {
        let _ops = self.ops.lock().await;
        self.exists(name)?;
        match self.worker.restart_task(name, task).await {
            Ok(()) => Ok(()),
            Err(WorkerError::UnknownConnector(_) | WorkerError::UnknownTask { .. }) => {
                Err(ControlError::NotFound(format!("Task {task} of connector {name} not found")))
            }
            // The task is then reported FAILED with this error.
            Err(WorkerError::Start(_)) => Ok(()),
            Err(e) => Err(ControlError::Internal(e.to_string())),
        }
    }

    async fn offsets(&self, name: &str) -> Result<Vec<OffsetEntry>, ControlError> {
        self.exists(name)?;
        let stored = self.offsets.load(name).await.map_err(|e| {
            ControlError::Unavailable(format!("cannot read {name}'s offsets: {}", e.report()))
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

    async fn alter_offsets(
        &self,
        name: &str,
        offsets: Vec<OffsetEntry>,
    ) -> Result<(), ControlError> {
        let _ops = self.ops.lock().await;
        let kind = self.stopped_or_refused(name)?;
        let mut map = OffsetMap::new();
        for (i, entry) in offsets.into_iter().enumerate() {
            if kind == ConnectorKind::Sink {
                check_sink_offset(i, &entry)?;
            }
            map.insert(
                SourcePartition::from(entry.partition),
                entry.offset.map(SourceOffset::from).unwrap_or_default(),
            );
        }
        self.offsets.save(name, &map).await.map_err(|e| {
            ControlError::Unavailable(format!("cannot save {name}'s offsets: {}", e.report()))
        })?;
        info!(connector = %name, partitions = map.len(), "offsets altered through the API");
        Ok(())
    }

    async fn reset_offsets(&self, name: &str) -> Result<(), ControlError> {
        let _ops = self.ops.lock().await;
        self.stopped_or_refused(name)?;
        let stored = self.offsets.load(name).await.map_err(|e| {
            ControlError::Unavailable(format!("cannot read {name}'s offsets: {}", e.report()))
        })?;
        let mut cleared = OffsetMap::new();
        for (p, _) in stored.iter() {
            cleared.insert(p.clone(), SourceOffset::default());
        }
        self.offsets.save(name, &cleared).await.map_err(|e| {
            ControlError::Unavailable(format!("cannot save {name}'s offsets: {}", e.report()))
        })?;
        info!(connector = %name, partitions = cleared.len(), "offsets reset through the API");
        Ok(())
    }

    fn validate(
        &self,
        type_name: &str,
        mut config: Map<String, Value>,
    ) -> Result<ConfigErrors, ControlError> {
        if self.registry.kind(type_name).is_none() {
            return Err(ControlError::NotFound(format!("unknown connector type {type_name:?}")));
        }
        config.insert("type".into(), Value::String(type_name.to_owned()));
        config.entry("name").or_insert_with(|| Value::String(type_name.to_owned()));
        Ok(connector_from_json(config, &self.registry).err().unwrap_or_default())
    }

    fn kafka_cluster_id(&self) -> Option<String> {
        self.probe.lock().as_ref().and_then(KafkaProbe::cluster_id)
    }

    async fn health(&self) -> Health {
        if !self.started.load(std::sync::atomic::Ordering::Acquire) {
            return Health::Starting("the worker is starting its connectors".into());
        }
        let probe = self.probe.lock().clone();
        if let Some(probe) = probe {
            let h = worker_health(&self.worker, &probe);
            if h != Health::Healthy {
                return h;
            }
        }
        let failures: Vec<String> = self
            .connectors
            .lock()
            .iter()
            .filter_map(|(n, m)| m.failure.as_ref().map(|why| format!("connector {n}: {why}")))
            .collect();
        if let Some(first) = failures.first() {
            return Health::Unhealthy(first.clone());
        }
        for name in self.worker.connectors() {
            if let Ok(status) = self.worker.status(&name) {
                for t in &status.tasks {
                    if let TaskState::Failed(e) = &t.state {
                        return Health::Unhealthy(format!(
                            "task {} of connector {name} FAILED: {}",
                            t.id,
                            e.report()
                        ));
                    }
                }
            }
        }
        Health::Healthy
    }
}

/// Every type of `registry` as the plugin list shows it: connectors, then transformations and
/// predicates.
pub fn plugins(registry: &Registry) -> Vec<PluginInfo> {
    let version = env!("CARGO_PKG_VERSION").to_owned();
    let mut out: Vec<PluginInfo> = registry
        .type_names()
        .filter_map(|t| {
            registry.kind(t).map(|k| PluginInfo {
                class: t.to_owned(),
                kind: kind_str(k),
                version: version.clone(),
            })
        })
        .collect();
    out.extend(registry.transform_types().map(|t| PluginInfo {
        class: t.to_owned(),
        kind: "transformation",
        version: version.clone(),
    }));
    out.extend(registry.predicate_types().map(|t| PluginInfo {
        class: t.to_owned(),
        kind: "predicate",
        version: version.clone(),
    }));
    out
}

fn kind_str(kind: ConnectorKind) -> &'static str {
    match kind {
        ConnectorKind::Source => "source",
        ConnectorKind::Sink => "sink",
    }
}

fn kind_of(config: &Map<String, Value>, registry: &Registry) -> ConnectorKind {
    config
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| registry.kind(t))
        .unwrap_or(ConnectorKind::Source)
}

fn managed(entry: ConnectorEntry, target: TargetState) -> Managed {
    let spec = ConnectorSpec::new(entry.connector, entry.source_runtime, entry.sink_runtime);
    let kind = match spec {
        ConnectorSpec::Source { .. } => ConnectorKind::Source,
        ConnectorSpec::Sink { .. } => ConnectorKind::Sink,
    };
    Managed { raw: entry.raw, kind, spec: Some(spec), target, failure: None, kept: true }
}

/// A sink's offset entry must name a topic-partition and a next offset to read.
fn check_sink_offset(i: usize, entry: &OffsetEntry) -> Result<(), ControlError> {
    let topic_ok = entry.partition.get("kafka_topic").is_some_and(Value::is_string);
    let partition_ok = entry.partition.get("kafka_partition").and_then(Value::as_i64).is_some();
    if !topic_ok || !partition_ok || entry.partition.len() != 2 {
        return Err(ControlError::BadRequest(format!(
            "offsets[{i}].partition: a sink's partition is {{\"kafka_topic\": <string>, \"kafka_partition\": <int>}}"
        )));
    }
    if let Some(o) = &entry.offset {
        if o.len() != 1 || o.get("kafka_offset").and_then(Value::as_i64).is_none_or(|v| v < 0) {
            return Err(ControlError::BadRequest(format!(
                "offsets[{i}].offset: a sink's offset is {{\"kafka_offset\": <int >= 0>}} or null"
            )));
        }
    }
    Ok(())
}

/// The longest connector name, in bytes.
const MAX_NAME_BYTES: usize = 200;
/// The longest document file name (most file systems' limit is 255 bytes).
const MAX_FILE_NAME_BYTES: usize = 255;

/// A name too long to keep (or to be a file name once escaped) is refused, naming `name`.
fn check_name_length(name: &str) -> Result<(), ControlError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(ControlError::BadRequest(format!(
            "name: too long ({} bytes; at most {MAX_NAME_BYTES})",
            name.len()
        )));
    }
    if file_name(name).len() > MAX_FILE_NAME_BYTES {
        return Err(ControlError::BadRequest(format!(
            "name: too long to be kept as a file name (every byte but A-Z a-z 0-9 _ - counts 3; at most {MAX_FILE_NAME_BYTES} with \".json\")"
        )));
    }
    Ok(())
}

/// The document file of connector `name`: its name with every byte but `[A-Za-z0-9_-]`
/// written `%XX`, so any name is a safe file name.
fn file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 5);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(".json");
    out
}

/// The connector name of a document file, if it is one.
fn name_of(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".json")?;
    let mut bytes = Vec::with_capacity(stem.len());
    let mut it = stem.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    // Only the one file name a connector's document has (`a%2Eb.json`, not `a.b.json`).
    String::from_utf8(bytes).ok().filter(|n| !n.is_empty() && file_name(n) == file)
}

/// Every document of the config directory (none when it does not exist yet), by name.
async fn read_dir(dir: &Path) -> Result<Vec<(String, Persisted)>> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(Error::fatal(format!(
                    "cannot read [rest] config_dir {}",
                    dir.display()
                ))
                .with_source(e))
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::fatal(format!("cannot read [rest] config_dir {}", dir.display()))
                    .with_source(e)
            })?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = name_of(&file) else { continue };
            let path = entry.path();
            let text = std::fs::read(&path).map_err(|e| {
                Error::fatal(format!("cannot read {}", path.display())).with_source(e)
            })?;
            let doc: Persisted = serde_json::from_slice(&text).map_err(|e| {
                Error::fatal(format!("{} is not a connector document: {e}", path.display()))
            })?;
            out.push((name, doc));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    })
    .await
    .map_err(|e| Error::fatal("reading the config directory panicked").with_source(e))?
}

/// Replaces `dir/file` with `bytes` atomically: a temporary file written and fsynced, renamed
/// over it, then the directory fsynced (so the rename survives a crash).
///
/// The file is readable by its owner only (`0600`: a config may hold literal secrets); a
/// directory created here is fsynced into its parent too.
fn write_atomic(dir: &Path, file: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    let tmp = dir.join(format!(".{file}.tmp"));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(file))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_any_connector_name() {
        for name in ["plain", "with space", "a/b", "..", "ü-1", "x%y.json"] {
            let f = file_name(name);
            assert!(!f.contains('/') && !f.starts_with('.'), "{f}");
            assert_eq!(name_of(&f).as_deref(), Some(name), "{f}");
        }
        assert_eq!(name_of(".plain.json.tmp"), None);
        assert_eq!(file_name("a.b"), "a%2Eb.json");
        for not_canonical in ["a.b.json", "a%2eb.json", "%61.json", "a b.json"] {
            assert_eq!(name_of(not_canonical), None, "{not_canonical}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn kept_documents_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("rest.d");
        write_atomic(&dir, "a.json", b"{}").unwrap();
        write_atomic(&dir, "a.json", b"{\"deleted\": true}").unwrap();
        let mode = std::fs::metadata(dir.join("a.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(dir.join("a.json")).unwrap(), b"{\"deleted\": true}");
    }
}
