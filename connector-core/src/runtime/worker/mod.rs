//! The [`Worker`] (Kafka Connect's "herder"): runs connectors and manages their tasks one by one
//! while the process runs. It starts, stops, pauses, resumes and restarts connectors and single
//! tasks, reports every task's [`TaskState`], and drains a task (acknowledgements in, offsets
//! committed, then `stop`) before it goes away. A failing task does not stop the other tasks or
//! connectors: it stays [`TaskState::Failed`] with its error until restarted, and
//! [`Worker::wait_failed`] lets an owner react (the `connect` runner stops everything on the
//! first failure).

mod status;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::kafka::KafkaClient;
use crate::offset::OffsetStore;
use crate::runtime::connector::{
    assign_round_robin, sink_partitions, source_task_config, watch_partitions, Assignment,
    DEFAULT_MAX_TASKS,
};
use crate::runtime::sink::{run_in_group, SinkGroupSettings, SinkRuntimeConfig, SinkTaskRuntime};
use crate::runtime::source::{SourceRuntimeConfig, SourceTaskRuntime};
use crate::runtime::stats::TaskStats;
use crate::sink::{DynSinkConnector, SinkTask};
use crate::source::{DynSourceConnector, SourceTask};
use crate::Error;

pub use status::{
    ConnectorSpec, ConnectorState, ConnectorStatus, TaskFailure, TaskState, TaskStatus,
    WorkerError, MAX_CONNECTORS,
};

/// Runs connectors and manages their tasks: a cheap [`Clone`] handle to shared state.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::runtime::{ConnectorSpec, SourceRuntimeConfig, TaskState, Worker};
/// use connector_core::{DynSourceConnector, MemoryOffsetStore};
///
/// # async fn example(connector: Arc<dyn DynSourceConnector>) -> Result<(), Box<dyn std::error::Error>> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let worker = Worker::new(client, Arc::new(MemoryOffsetStore::new()));
/// let config = SourceRuntimeConfig::default();
/// worker.start("telemetry", ConnectorSpec::Source { connector, config }).await?;
/// worker.pause("telemetry").await?;
/// worker.resume("telemetry").await?;
/// for task in worker.status("telemetry")?.tasks {
///     if let TaskState::Failed(e) = task.state {
///         eprintln!("task {} failed: {}", task.id, e.report());
///         worker.restart_task("telemetry", task.id).await?;
///     }
/// }
/// worker.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("connectors", &self.connectors()).finish_non_exhaustive()
    }
}

struct Inner {
    client: KafkaClient,
    offsets: Arc<dyn OffsetStore>,
    max_tasks: usize,
    connectors: Mutex<HashMap<String, Connector>>,
    /// Serialises the calls that change what runs (no two drains of one task).
    ops: tokio::sync::Mutex<bool>,
    /// Woken when a task ends.
    ended: Arc<Notify>,
    /// Orders failures.
    failures: Arc<AtomicU64>,
    /// Set by [`Worker::with_sink_groups`]: sink tasks are consumer group members.
    sink_groups: Mutex<Option<SinkGroupSettings>>,
}

/// A running connector.
struct Connector {
    spec: ConnectorSpec,
    /// The settings its tasks run with (the source's window and topic budget applied).
    kind: Kind,
    stats: Arc<TaskStats>,
    paused: bool,
    /// Parent of the tasks' tokens and the partition watcher's.
    stop: CancellationToken,
    tasks: Vec<TaskHandle>,
    /// The tasks meant to run here (`None`: all of them).
    here: Option<BTreeSet<usize>>,
    watcher: Option<JoinHandle<()>>,
}

#[derive(Clone)]
enum Kind {
    Source(Arc<dyn DynSourceConnector>, SourceRuntimeConfig),
    Sink(Arc<dyn DynSinkConnector>, SinkRuntimeConfig, Assignment),
}

/// One task: how to stop and pause it, and what became of it.
struct TaskHandle {
    id: usize,
    cancel: CancellationToken,
    pause: watch::Sender<bool>,
    join: Option<JoinHandle<()>>,
    cell: Arc<Mutex<TaskCell>>,
}

#[derive(Default)]
struct TaskCell {
    started: bool,
    /// `Some` once the task ended: `Ok` stopped, `Err` failed (with the failure's order).
    outcome: Option<Result<(), (u64, Arc<Error>)>>,
}

enum Created {
    Source(Box<dyn SourceTask>),
    Sink(Box<dyn SinkTask>),
}

impl Worker {
    /// A worker writing to and reading from Kafka through `client`, keeping every connector's
    /// offsets in `offsets`. Connectors may create up to [`DEFAULT_MAX_TASKS`] tasks.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # fn example(client: connector_core::kafka::KafkaClient) {
    /// let worker = connector_core::runtime::Worker::new(
    ///     client,
    ///     Arc::new(connector_core::MemoryOffsetStore::new()),
    /// );
    /// # }
    /// ```
    pub fn new(client: KafkaClient, offsets: Arc<dyn OffsetStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                offsets,
                max_tasks: DEFAULT_MAX_TASKS,
                connectors: Mutex::new(HashMap::new()),
                ops: tokio::sync::Mutex::new(false),
                ended: Arc::new(Notify::new()),
                failures: Arc::new(AtomicU64::new(0)),
                sink_groups: Mutex::new(None),
            }),
        }
    }

    /// Makes every sink task of this worker (started from now on) a member of the Kafka consumer
    /// group `connect-<connector>`, the standard way (protocol `consumer`/`range`, member client
    /// id `<worker id>/<connector>-<task>`): the group, not this worker, spreads the partitions
    /// over the tasks of every worker running the connector; offsets are loaded from and
    /// committed to the group (`OffsetCommit` with the generation), not to this worker's offset
    /// store; on a rebalance a task drains and commits, `close`s its partitions and `open`s its
    /// new ones. Without it, a sink's partitions are dealt round-robin to its tasks.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// use connector_core::kafka::group::GroupTimeouts;
    /// use connector_core::runtime::{SinkGroupSettings, Worker};
    ///
    /// # fn example(client: connector_core::kafka::KafkaClient) {
    /// let settings = SinkGroupSettings { timeouts: GroupTimeouts::default(), worker_id: "w1".into() };
    /// let worker = Worker::new(client, Arc::new(connector_core::MemoryOffsetStore::new()))
    ///     .with_sink_groups(settings);
    /// # }
    /// ```
    pub fn with_sink_groups(self, settings: SinkGroupSettings) -> Self {
        *self.inner.sink_groups.lock() = Some(settings);
        self
    }

    /// Starts connector `name`: creates its tasks and runs them (a sink's topics are created if
    /// missing and their partitions dealt to the tasks round-robin; tasks left without
    /// partitions stay [`TaskState::Unassigned`]).
    ///
    /// # Errors
    /// A name that runs already, too many connectors, a worker shut down, or the connector
    /// failing to create its tasks or reach its topics ([`WorkerError::Start`]).
    pub async fn start(&self, name: &str, spec: ConnectorSpec) -> Result<(), WorkerError> {
        self.start_subset(name, spec, None, false).await
    }

    /// Starts connector `name` as [`start`](Self::start) does, paused from the first moment: its
    /// tasks neither poll nor take records until [`resume`](Self::resume) (a connector whose
    /// target state is PAUSED, started or restarted).
    ///
    /// ```no_run
    /// # async fn example(worker: connector_core::runtime::Worker, spec: connector_core::runtime::ConnectorSpec) -> Result<(), connector_core::runtime::WorkerError> {
    /// worker.start_paused("telemetry", spec).await?;
    /// worker.resume("telemetry").await?; // now it polls
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_paused(&self, name: &str, spec: ConnectorSpec) -> Result<(), WorkerError> {
        self.start_subset(name, spec, None, true).await
    }

    /// Starts connector `name` running only its tasks `tasks` here (a worker of a group runs its
    /// share; the others show [`TaskState::Unassigned`]). Ids the connector does not have are
    /// ignored. [`start`](Self::start) is this with every task.
    ///
    /// ```no_run
    /// # async fn example(worker: connector_core::runtime::Worker, spec: connector_core::runtime::ConnectorSpec) -> Result<(), connector_core::runtime::WorkerError> {
    /// worker.start_tasks("telemetry", spec, &[0, 2]).await?;
    /// worker.set_tasks("telemetry", &[1]).await?; // 0 and 2 drain and stop, 1 starts
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_tasks(
        &self,
        name: &str,
        spec: ConnectorSpec,
        tasks: &[usize],
    ) -> Result<(), WorkerError> {
        self.start_subset(name, spec, Some(tasks), false).await
    }

    async fn start_subset(
        &self,
        name: &str,
        spec: ConnectorSpec,
        tasks: Option<&[usize]>,
        paused: bool,
    ) -> Result<(), WorkerError> {
        let ops = self.inner.ops.lock().await;
        if *ops {
            return Err(WorkerError::ShutDown);
        }
        {
            let map = self.inner.connectors.lock();
            if map.contains_key(name) {
                return Err(WorkerError::AlreadyRunning(name.to_owned()));
            }
            if map.len() >= MAX_CONNECTORS {
                return Err(WorkerError::TooManyConnectors(MAX_CONNECTORS));
            }
        }
        let connector = self.launch(name, spec, Arc::new(TaskStats::new()), paused, tasks).await?;
        self.inner.connectors.lock().insert(name.to_owned(), connector);
        Ok(())
    }

    /// How many tasks connector `spec` has (its `task_configs(max_tasks)`), without running
    /// any: what a group leader deals out.
    ///
    /// # Errors
    /// The connector failing to create its tasks ([`WorkerError::Start`]).
    pub fn task_count(&self, spec: &ConnectorSpec) -> Result<usize, WorkerError> {
        let n = match spec {
            ConnectorSpec::Source { connector, .. } => {
                connector.create_tasks(self.inner.max_tasks)?.len()
            }
            ConnectorSpec::Sink { connector, .. } => {
                connector.create_tasks(self.inner.max_tasks)?.len()
            }
        };
        Ok(n)
    }

    /// Makes `tasks` the tasks of connector `name` that run here: those running and not listed
    /// drain (acknowledgements in, offsets committed, then `stop`; bounded as in
    /// [`stop`](Self::stop)) and become [`TaskState::Unassigned`], then the listed ones not
    /// running are created and started (from the committed offsets). A listed task that failed
    /// stays [`TaskState::Failed`]. Ids the connector does not have are ignored.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConnector`], or the connector failing to create a task
    /// ([`WorkerError::Start`]; that task is then reported failed, the others are started).
    ///
    /// # Cancellation
    /// Runs in a task of its own: dropping the future does not cut a drain short.
    pub async fn set_tasks(&self, name: &str, tasks: &[usize]) -> Result<(), WorkerError> {
        let (worker, name, tasks) = (self.clone(), name.to_owned(), tasks.to_vec());
        tokio::spawn(async move { worker.set_tasks_now(&name, &tasks).await }).await.unwrap_or_else(
            |e| Err(WorkerError::Start(Error::fatal("a worker operation panicked").with_source(e))),
        )
    }

    async fn set_tasks_now(&self, name: &str, tasks: &[usize]) -> Result<(), WorkerError> {
        let _ops = self.inner.ops.lock().await;
        let wanted: BTreeSet<usize> = tasks.iter().copied().collect();
        // Those to stop: handed over (joins taken under the lock, awaited outside it).
        let (mut stopping, to_start, kind, stats, stop, paused, bound) = {
            let mut map = self.inner.connectors.lock();
            let c = map.get_mut(name).ok_or_else(|| WorkerError::UnknownConnector(name.into()))?;
            let mut stopping = Vec::new();
            let mut to_start = Vec::new();
            for t in &mut c.tasks {
                let here = c.here.as_ref().is_none_or(|h| h.contains(&t.id));
                match (wanted.contains(&t.id), here) {
                    (false, true) => {
                        t.cancel.cancel();
                        stopping.push((t.id, t.join.take()));
                    }
                    (true, false) => to_start.push(t.id),
                    _ => {}
                }
            }
            c.here = Some(wanted.iter().copied().filter(|id| *id < c.tasks.len()).collect());
            let bound = c.spec.drain_bound();
            (
                stopping,
                to_start,
                c.kind.clone(),
                Arc::clone(&c.stats),
                c.stop.clone(),
                c.paused,
                bound,
            )
        };
        futures::future::join_all(stopping.iter_mut().filter_map(|(id, join)| {
            let join = join.take()?;
            Some(join_bounded(name, *id, join, bound))
        }))
        .await;
        for (id, _) in &stopping {
            self.replace(name, idle_handle(*id));
        }
        let mut first_error = None;
        if !to_start.is_empty() {
            let mut created = match &kind {
                Kind::Source(c, _) => c
                    .create_tasks(self.inner.max_tasks)
                    .map(|v| v.into_iter().map(Created::Source).map(Some).collect::<Vec<_>>()),
                Kind::Sink(c, _, _) => c
                    .create_tasks(self.inner.max_tasks)
                    .map(|v| v.into_iter().map(Created::Sink).map(Some).collect::<Vec<_>>()),
            };
            for id in &to_start {
                let task = match &mut created {
                    Ok(all) => all.get_mut(*id).and_then(Option::take).ok_or_else(|| {
                        Error::fatal(format!(
                            "connector {name} created fewer than {} tasks",
                            id + 1
                        ))
                    }),
                    Err(e) => Err(e.clone()),
                };
                let handle = match task {
                    Ok(t) => self.spawn(name, &kind, &stats, &stop, paused, *id, t),
                    Err(e) => {
                        let e = e.with_connector(name).with_task(*id);
                        first_error.get_or_insert_with(|| e.clone());
                        self.failed_handle(*id, e)
                    }
                };
                self.replace(name, handle);
            }
        }
        let stopped: Vec<usize> = stopping.iter().map(|(id, _)| *id).collect();
        info!(connector = name, ?stopped, started = ?to_start, "tasks reassigned");
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Stops connector `name`: each task drains (polling or fetching stops, what is in flight is
    /// acknowledged, offsets are committed, then `stop`), bounded by the connector's
    /// `shutdown_timeout_ms`; a task still running after that is aborted.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConnector`].
    pub async fn stop(&self, name: &str) -> Result<(), WorkerError> {
        // In a task of its own: a caller that gives up (a timeout around this call) must not
        // leave a half-stopped connector or a task whose handle was taken but never joined.
        let (worker, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move { worker.stop_now(&name).await }).await.unwrap_or_else(|e| {
            Err(WorkerError::Start(Error::fatal("a worker operation panicked").with_source(e)))
        })
    }

    async fn stop_now(&self, name: &str) -> Result<(), WorkerError> {
        let _ops = self.inner.ops.lock().await;
        let connector = self.take(name)?;
        drain(name, connector).await;
        Ok(())
    }

    /// Pauses connector `name`'s tasks (and those restarted later): source tasks stop polling,
    /// sink tasks stop taking records; both go on receiving acknowledgements and committing.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConnector`].
    pub async fn pause(&self, name: &str) -> Result<(), WorkerError> {
        self.set_paused(name, true).await
    }

    /// Resumes connector `name`'s tasks after [`pause`](Self::pause).
    ///
    /// # Errors
    /// [`WorkerError::UnknownConnector`].
    pub async fn resume(&self, name: &str) -> Result<(), WorkerError> {
        self.set_paused(name, false).await
    }

    /// Restarts connector `name` and all its tasks: drains them as [`stop`](Self::stop) does,
    /// then starts it again from its spec (keeping its counters and its paused state). Tasks
    /// resume from the committed offsets.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConnector`], or the connector failing to start again
    /// ([`WorkerError::Start`]; it is then no longer run).
    pub async fn restart(&self, name: &str) -> Result<(), WorkerError> {
        // In a task of its own: a caller that gives up (a timeout around this call) must not
        // leave a half-stopped connector or a task whose handle was taken but never joined.
        let (worker, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move { worker.restart_now(&name).await }).await.unwrap_or_else(|e| {
            Err(WorkerError::Start(Error::fatal("a worker operation panicked").with_source(e)))
        })
    }

    async fn restart_now(&self, name: &str) -> Result<(), WorkerError> {
        let _ops = self.inner.ops.lock().await;
        let connector = self.take(name)?;
        let (spec, stats, paused) =
            (connector.spec.clone(), Arc::clone(&connector.stats), connector.paused);
        // Only the tasks that ran here run again (a worker of a group runs its share).
        let here: Option<Vec<usize>> = connector.here.as_ref().map(|h| h.iter().copied().collect());
        drain(name, connector).await;
        let connector = self.launch(name, spec, stats, paused, here.as_deref()).await?;
        self.inner.connectors.lock().insert(name.to_owned(), connector);
        Ok(())
    }

    /// Restarts task `task` of connector `name`: drains it if it still runs, then creates it
    /// again and runs it (from the committed offsets; a sink task reads its partitions, those
    /// added while it ran included).
    ///
    /// # Errors
    /// [`WorkerError::UnknownConnector`], [`WorkerError::UnknownTask`], or the connector failing
    /// to create the task ([`WorkerError::Start`]; the task is then reported failed).
    pub async fn restart_task(&self, name: &str, task: usize) -> Result<(), WorkerError> {
        // In a task of its own: a caller that gives up (a timeout around this call) must not
        // leave a half-stopped connector or a task whose handle was taken but never joined.
        let (worker, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move { worker.restart_task_now(&name, task).await })
            .await
            .unwrap_or_else(|e| {
                Err(WorkerError::Start(Error::fatal("a worker operation panicked").with_source(e)))
            })
    }

    async fn restart_task_now(&self, name: &str, task: usize) -> Result<(), WorkerError> {
        let _ops = self.inner.ops.lock().await;
        let unknown = || WorkerError::UnknownTask { connector: name.to_owned(), task };
        let (old, kind, stats, stop, paused, bound) = {
            let mut map = self.inner.connectors.lock();
            let c = map.get_mut(name).ok_or_else(|| WorkerError::UnknownConnector(name.into()))?;
            let handle = c.tasks.get_mut(task).ok_or_else(unknown)?;
            let old = (handle.cancel.clone(), handle.join.take());
            let bound = c.spec.drain_bound();
            (old, c.kind.clone(), Arc::clone(&c.stats), c.stop.clone(), c.paused, bound)
        };
        old.0.cancel();
        if let Some(join) = old.1 {
            join_bounded(name, task, join, bound).await;
        }
        let created = create_one(&kind, self.inner.max_tasks, task).and_then(|t| {
            t.ok_or_else(|| {
                Error::fatal(format!("connector {name} created fewer than {} tasks", task + 1))
            })
        });
        let handle = match created {
            Ok(t) => self.spawn(name, &kind, &stats, &stop, paused, task, t),
            Err(e) => {
                let e = e.with_connector(name).with_task(task);
                let h = self.failed_handle(task, e.clone());
                self.replace(name, h);
                return Err(e.into());
            }
        };
        info!(connector = name, task, "task restarted");
        self.replace(name, handle);
        Ok(())
    }

    /// Connector `name`'s state and its tasks'.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConnector`].
    pub fn status(&self, name: &str) -> Result<ConnectorStatus, WorkerError> {
        let map = self.inner.connectors.lock();
        let c = map.get(name).ok_or_else(|| WorkerError::UnknownConnector(name.to_owned()))?;
        let tasks = c.tasks.iter().map(|t| TaskStatus { id: t.id, state: t.state() }).collect();
        let state = if c.paused { ConnectorState::Paused } else { ConnectorState::Running };
        Ok(ConnectorStatus { name: name.to_owned(), state, tasks })
    }

    /// The names of the running connectors, sorted.
    pub fn connectors(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.connectors.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Connector `name`'s counters: one [`TaskCounters`](crate::runtime::TaskCounters) per task
    /// (kept across restarts), summed by [`TaskStats::snapshot`].
    pub fn stats(&self, name: &str) -> Option<Arc<TaskStats>> {
        self.inner.connectors.lock().get(name).map(|c| Arc::clone(&c.stats))
    }

    /// Resolves with the earliest failure among the tasks now reported
    /// [`TaskState::Failed`] (at once if there is one).
    ///
    /// # Cancellation
    /// Cancel-safe: it only watches.
    pub async fn wait_failed(&self) -> TaskFailure {
        loop {
            let ended = Arc::clone(&self.inner.ended);
            let notified = ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = self.first_failure() {
                return f;
            }
            notified.await;
        }
    }

    /// Stops every connector (their tasks drain concurrently, each bounded as in
    /// [`stop`](Self::stop)); later [`start`](Self::start)s are refused. Returns the earliest
    /// task failure among them (one before or during the drain), if any.
    ///
    /// # Cancellation
    /// The drain runs in a task of its own: dropping this future does not cut it short.
    pub async fn shutdown(&self) -> Option<TaskFailure> {
        let worker = self.clone();
        let drained = tokio::spawn(async move {
            let mut ops = worker.inner.ops.lock().await;
            *ops = true;
            let all: Vec<(String, Connector)> = worker.inner.connectors.lock().drain().collect();
            futures::future::join_all(
                all.into_iter().map(|(name, c)| async move { drain(&name, c).await }),
            )
            .await
        });
        let failures = drained.await.ok()?;
        failures.into_iter().flatten().min_by_key(|(seq, _)| *seq).map(|(_, f)| f)
    }

    fn first_failure(&self) -> Option<TaskFailure> {
        let map = self.inner.connectors.lock();
        let mut first: Option<(u64, TaskFailure)> = None;
        for (name, c) in map.iter() {
            for t in &c.tasks {
                if let Some(Err((seq, e))) = &t.cell.lock().outcome {
                    if first.as_ref().is_none_or(|(s, _)| seq < s) {
                        let error = Arc::clone(e);
                        first = Some((
                            *seq,
                            TaskFailure { connector: name.clone(), task: t.id, error },
                        ));
                    }
                }
            }
        }
        first.map(|(_, f)| f)
    }

    fn take(&self, name: &str) -> Result<Connector, WorkerError> {
        self.inner
            .connectors
            .lock()
            .remove(name)
            .ok_or_else(|| WorkerError::UnknownConnector(name.into()))
    }

    fn replace(&self, name: &str, handle: TaskHandle) {
        let mut map = self.inner.connectors.lock();
        match map.get_mut(name).and_then(|c| c.tasks.get_mut(handle.id)) {
            Some(slot) => *slot = handle,
            None => handle.cancel.cancel(),
        }
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<(), WorkerError> {
        let _ops = self.inner.ops.lock().await;
        let mut map = self.inner.connectors.lock();
        let c = map.get_mut(name).ok_or_else(|| WorkerError::UnknownConnector(name.to_owned()))?;
        c.paused = paused;
        for t in &c.tasks {
            t.pause.send_replace(paused);
        }
        info!(connector = name, paused, "connector pause switched");
        Ok(())
    }

    /// Creates the connector's tasks and runs them.
    async fn launch(
        &self,
        name: &str,
        spec: ConnectorSpec,
        stats: Arc<TaskStats>,
        paused: bool,
        only: Option<&[usize]>,
    ) -> Result<Connector, WorkerError> {
        let inner = &self.inner;
        let stop = CancellationToken::new();
        let (kind, created, watcher) = match &spec {
            ConnectorSpec::Source { connector, config } => {
                let tasks =
                    connector.create_tasks(inner.max_tasks).map_err(|e| e.with_connector(name))?;
                let config = source_task_config(connector.as_ref(), config.clone());
                let created: Vec<Created> = tasks.into_iter().map(Created::Source).collect();
                (Kind::Source(Arc::clone(connector), config), created, None)
            }
            ConnectorSpec::Sink { connector, config } => {
                let partitions = sink_partitions(name, connector.as_ref(), &inner.client).await?;
                let tasks =
                    connector.create_tasks(inner.max_tasks).map_err(|e| e.with_connector(name))?;
                let known = partitions.iter().cloned().collect();
                // In a consumer group the group assigns; nothing is dealt (nor watched) here.
                let grouped = inner.sink_groups.lock().is_some();
                let buckets =
                    if grouped { Vec::new() } else { assign_round_robin(partitions, tasks.len()) };
                let assignment = Assignment::new(buckets);
                let config = SinkRuntimeConfig {
                    start: connector.start_from(),
                    read_committed: connector.read_committed(),
                    ..config.clone()
                };
                let watcher = tokio::spawn(watch_partitions(
                    Arc::from(name),
                    inner.client.clone(),
                    connector.topics(),
                    known,
                    assignment.clone(),
                    stop.clone(),
                ));
                let created: Vec<Created> = tasks.into_iter().map(Created::Sink).collect();
                (Kind::Sink(Arc::clone(connector), config, assignment), created, Some(watcher))
            }
        };
        let tasks = created
            .into_iter()
            .enumerate()
            .map(|(id, t)| match only {
                Some(ids) if !ids.contains(&id) => idle_handle(id),
                _ => self.spawn(name, &kind, &stats, &stop, paused, id, t),
            })
            .collect::<Vec<_>>();
        let here: Option<BTreeSet<usize>> =
            only.map(|ids| ids.iter().copied().filter(|id| *id < tasks.len()).collect());
        let running_here = here.as_ref().map_or(tasks.len(), BTreeSet::len);
        info!(connector = name, tasks = tasks.len(), here = running_here, "connector started");
        Ok(Connector { spec, kind, stats, paused, stop, tasks, here, watcher })
    }

    /// Runs one task under a child token of `stop`, recording how it ends.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        name: &str,
        kind: &Kind,
        stats: &Arc<TaskStats>,
        stop: &CancellationToken,
        paused: bool,
        id: usize,
        task: Created,
    ) -> TaskHandle {
        let (pause, pause_rx) = watch::channel(paused);
        let cancel = stop.child_token();
        let cell = Arc::new(Mutex::new(TaskCell::default()));
        let on_started = {
            let cell = Arc::clone(&cell);
            Box::new(move || cell.lock().started = true)
        };
        let (client, offsets) = (self.inner.client.clone(), Arc::clone(&self.inner.offsets));
        let g = self.inner.sink_groups.lock().clone();
        let run: Pin<Box<dyn Future<Output = crate::Result<()>> + Send>> = match (task, kind, g) {
            (Created::Source(task), Kind::Source(_, config), _) => Box::pin(
                SourceTaskRuntime::new(name, id, task, client, offsets)
                    .with_config(config.clone())
                    .with_stats(Arc::clone(stats))
                    .with_pause(pause_rx)
                    .on_started(on_started)
                    .run(cancel.clone()),
            ),
            (Created::Sink(task), Kind::Sink(connector, config, _), Some(settings)) => {
                // A member of the consumer group connect-<name>; the group assigns.
                let runtime = SinkTaskRuntime::new(name, id, task, client, offsets, Vec::new())
                    .with_config(config.clone())
                    .with_stats(Arc::clone(stats))
                    .with_pause(pause_rx)
                    .on_started(on_started);
                Box::pin(run_in_group(runtime, connector.topics(), settings, cancel.clone()))
            }
            (Created::Sink(task), Kind::Sink(_, config, assignment), None) => {
                let Some((parts, added)) = assignment.open(id) else {
                    // No partitions: the task does not run (Unassigned).
                    return TaskHandle { id, cancel, pause, join: None, cell };
                };
                Box::pin(
                    SinkTaskRuntime::new(name, id, task, client, offsets, parts)
                        .with_config(config.clone())
                        .with_stats(Arc::clone(stats))
                        .with_added_partitions(added)
                        .with_pause(pause_rx)
                        .on_started(on_started)
                        .run(cancel.clone()),
                )
            }
            _ => Box::pin(std::future::ready(Err(Error::fatal("task of the wrong kind")))),
        };
        let (ended, failures, record) =
            (Arc::clone(&self.inner.ended), Arc::clone(&self.inner.failures), Arc::clone(&cell));
        let join = tokio::spawn(async move {
            let result = AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(Error::fatal("the task panicked")));
            record.lock().outcome =
                Some(result.map_err(|e| (failures.fetch_add(1, Ordering::Relaxed), Arc::new(e))));
            ended.notify_waiters();
        });
        TaskHandle { id, cancel, pause, join: Some(join), cell }
    }

    /// A task that could not be created, reported failed.
    fn failed_handle(&self, id: usize, e: Error) -> TaskHandle {
        let seq = self.inner.failures.fetch_add(1, Ordering::Relaxed);
        let cell = TaskCell { started: false, outcome: Some(Err((seq, Arc::new(e)))) };
        let (pause, _) = watch::channel(false);
        let handle = TaskHandle {
            id,
            cancel: CancellationToken::new(),
            pause,
            join: None,
            cell: Arc::new(Mutex::new(cell)),
        };
        self.inner.ended.notify_waiters();
        handle
    }
}

/// A task that does not run here (not assigned to this worker, or stopped by
/// [`Worker::set_tasks`]): [`TaskState::Unassigned`].
fn idle_handle(id: usize) -> TaskHandle {
    let (pause, _) = watch::channel(false);
    TaskHandle {
        id,
        cancel: CancellationToken::new(),
        pause,
        join: None,
        cell: Arc::new(Mutex::new(TaskCell::default())),
    }
}

impl TaskHandle {
    fn state(&self) -> TaskState {
        let cell = self.cell.lock();
        match &cell.outcome {
            Some(Err((_, e))) => TaskState::Failed(Arc::clone(e)),
            Some(Ok(())) => TaskState::Unassigned,
            None if !cell.started => TaskState::Unassigned,
            None if *self.pause.borrow() => TaskState::Paused,
            None => TaskState::Running,
        }
    }
}

/// Task `id` of the connector, created again (`None`: it creates fewer tasks now).
fn create_one(kind: &Kind, max_tasks: usize, id: usize) -> crate::Result<Option<Created>> {
    Ok(match kind {
        Kind::Source(c, _) => c.create_tasks(max_tasks)?.into_iter().nth(id).map(Created::Source),
        Kind::Sink(c, _, _) => c.create_tasks(max_tasks)?.into_iter().nth(id).map(Created::Sink),
    })
}

/// Stops every task of `connector` and waits for each to drain (bounded); returns the earliest
/// failure among its tasks (one that ended the task before or during the drain), if any.
async fn drain(name: &str, connector: Connector) -> Option<(u64, TaskFailure)> {
    let bound = connector.spec.drain_bound();
    connector.stop.cancel();
    if let Some(w) = connector.watcher {
        w.abort();
    }
    let cells: Vec<(usize, Arc<Mutex<TaskCell>>)> =
        connector.tasks.iter().map(|t| (t.id, Arc::clone(&t.cell))).collect();
    futures::future::join_all(connector.tasks.into_iter().filter_map(|t| {
        let join = t.join?;
        Some(join_bounded(name, t.id, join, bound))
    }))
    .await;
    info!(connector = name, "connector stopped");
    let mut first: Option<(u64, TaskFailure)> = None;
    for (id, cell) in cells {
        if let Some(Err((seq, e))) = &cell.lock().outcome {
            if first.as_ref().is_none_or(|(s, _)| seq < s) {
                let failure =
                    TaskFailure { connector: name.to_owned(), task: id, error: Arc::clone(e) };
                first = Some((*seq, failure));
            }
        }
    }
    first
}

async fn join_bounded(name: &str, task: usize, mut join: JoinHandle<()>, bound: Duration) {
    if tokio::time::timeout(bound, &mut join).await.is_err() {
        warn!(
            connector = name,
            task,
            ?bound,
            "task did not stop within its drain bound; aborting it"
        );
        join.abort();
        // Wait for the abort to land, so a replacement never overlaps the old task.
        let _ = join.await;
    }
}
