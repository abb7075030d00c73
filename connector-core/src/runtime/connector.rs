//! Running every task of one connector: [`SourceRuntime`] and [`SinkRuntime`] create the tasks,
//! give sink tasks their partitions (round-robin), run them concurrently, and stop them all when
//! one fails. (A [`Worker`](crate::runtime::Worker) runs connectors whose tasks are managed one
//! by one instead.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::kafka::KafkaClient;
use crate::offset::OffsetStore;
use crate::record::TopicPartition;
use crate::runtime::sink::{SinkRuntimeConfig, SinkTaskRuntime};
use crate::runtime::source::{SourceRuntimeConfig, SourceTaskRuntime};
use crate::runtime::stats::TaskStats;
use crate::sink::DynSinkConnector;
use crate::source::DynSourceConnector;
use crate::{Error, Result};

/// The most tasks a connector may ask for unless told otherwise; connectors decide within it.
pub const DEFAULT_MAX_TASKS: usize = 256;

/// All the tasks of one source connector, run until shutdown or the first fatal error (which
/// stops the other tasks gracefully). Built with [`SourceRuntime::builder`]: the name, the
/// connector, the Kafka client and the offset store are required; the settings
/// ([`SourceRuntimeConfig::default`]), the counters (fresh ones) and the task limit
/// ([`DEFAULT_MAX_TASKS`]) have defaults.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::runtime::{SourceRuntime, SourceRuntimeConfig, TaskStats};
/// use connector_core::{DynSourceConnector, MemoryOffsetStore};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(connector: &dyn DynSourceConnector) -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let stats = Arc::new(TaskStats::new());
/// SourceRuntime::builder("heartbeat", connector, client, Arc::new(MemoryOffsetStore::new()))
///     .config(SourceRuntimeConfig::default())
///     .stats(Arc::clone(&stats))
///     .max_tasks(4)
///     .run(CancellationToken::new())
///     .await
/// # }
/// ```
pub struct SourceRuntime<'a> {
    name: Arc<str>,
    connector: &'a dyn DynSourceConnector,
    client: KafkaClient,
    offsets: Arc<dyn OffsetStore>,
    config: SourceRuntimeConfig,
    stats: Arc<TaskStats>,
    max_tasks: usize,
}

/// Builds a [`SourceRuntime`]; from [`SourceRuntime::builder`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # use connector_core::runtime::SourceRuntime;
/// # use connector_core::{DynSourceConnector, MemoryOffsetStore};
/// # fn example(connector: &dyn DynSourceConnector, client: connector_core::kafka::KafkaClient) {
/// let runtime = SourceRuntime::builder("s", connector, client, Arc::new(MemoryOffsetStore::new()))
///     .max_tasks(1)
///     .build();
/// let stats = runtime.stats();
/// # }
/// ```
#[must_use = "a builder does nothing until `run` or `build`"]
pub struct SourceRuntimeBuilder<'a>(SourceRuntime<'a>);

impl<'a> SourceRuntime<'a> {
    /// Starts building the runtime of connector `name` (its tasks are tagged with it and its
    /// offsets stored under it).
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use connector_core::runtime::SourceRuntime;
    /// # use connector_core::{DynSourceConnector, MemoryOffsetStore};
    /// # async fn example(c: &dyn DynSourceConnector, client: connector_core::kafka::KafkaClient) {
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// let result = SourceRuntime::builder("s", c, client, Arc::new(MemoryOffsetStore::new()))
    ///     .run(shutdown)
    ///     .await;
    /// # }
    /// ```
    pub fn builder(
        name: impl Into<Arc<str>>,
        connector: &'a dyn DynSourceConnector,
        client: KafkaClient,
        offsets: Arc<dyn OffsetStore>,
    ) -> SourceRuntimeBuilder<'a> {
        SourceRuntimeBuilder(Self {
            name: name.into(),
            connector,
            client,
            offsets,
            config: SourceRuntimeConfig::default(),
            stats: Arc::new(TaskStats::new()),
            max_tasks: DEFAULT_MAX_TASKS,
        })
    }

    /// The counters all the connector's tasks count into.
    ///
    /// ```no_run
    /// # fn example(runtime: &connector_core::runtime::SourceRuntime<'_>) {
    /// println!("committed {}", runtime.stats().snapshot().committed);
    /// # }
    /// ```
    pub fn stats(&self) -> Arc<TaskStats> {
        Arc::clone(&self.stats)
    }

    /// Runs up to `max_tasks` tasks until `shutdown` is cancelled (each drains and commits) or the
    /// first fatal error (the other tasks are stopped gracefully).
    ///
    /// ```no_run
    /// # async fn example(runtime: connector_core::runtime::SourceRuntime<'_>) {
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// if let Err(e) = runtime.run(shutdown).await {
    ///     eprintln!("{}", e.report());
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// The first task error, or the connector failing to create its tasks.
    ///
    /// # Cancellation
    /// Cancel `shutdown` for a graceful stop; dropping the future is a crash (see
    /// [`SourceTaskRuntime::run`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self { name, connector, client, offsets, config, stats, max_tasks } = self;
        let tasks = connector.create_tasks(max_tasks).map_err(|e| e.with_connector(&*name))?;
        let config = source_task_config(connector, config);
        let stop = shutdown.child_token();
        let mut set = JoinSet::new();
        for (id, task) in tasks.into_iter().enumerate() {
            let runtime = SourceTaskRuntime::new(
                Arc::clone(&name),
                id,
                task,
                client.clone(),
                Arc::clone(&offsets),
            )
            .with_config(config.clone())
            .with_stats(Arc::clone(&stats));
            set.spawn(runtime.run(stop.clone()));
        }
        join_all(&name, set, stop).await
    }
}

impl<'a> SourceRuntimeBuilder<'a> {
    /// Replaces the settings (default: [`SourceRuntimeConfig::default`]).
    pub fn config(mut self, config: SourceRuntimeConfig) -> Self {
        self.0.config = config;
        self
    }

    /// Counts into `stats` (default: fresh counters, see [`SourceRuntime::stats`]).
    pub fn stats(mut self, stats: Arc<TaskStats>) -> Self {
        self.0.stats = stats;
        self
    }

    /// The most tasks the connector may create (default: [`DEFAULT_MAX_TASKS`]; at least 1).
    pub fn max_tasks(mut self, max_tasks: usize) -> Self {
        self.0.max_tasks = max_tasks.max(1);
        self
    }

    /// The runtime, to read its [`stats`](SourceRuntime::stats) before running it.
    pub fn build(self) -> SourceRuntime<'a> {
        self.0
    }

    /// Builds and runs: see [`SourceRuntime::run`].
    ///
    /// # Errors
    /// See [`SourceRuntime::run`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.0.run(shutdown).await
    }
}

/// The settings every task of a source connector runs with: the window clipped to the
/// connector's, and one topic budget for all its tasks.
pub(crate) fn source_task_config(
    connector: &dyn DynSourceConnector,
    mut config: SourceRuntimeConfig,
) -> SourceRuntimeConfig {
    if let Some(window) = connector.max_in_flight_records() {
        config.max_in_flight_records = config.max_in_flight_records.min(window.max(1));
    }
    config.topic_budget = Some(config.topic_budget());
    config
}

/// All the tasks of one sink connector, run until shutdown or the first fatal error. The
/// connector's topics are created if missing (when `auto_create_topics` is on); their partitions
/// are dealt to the tasks round-robin, and tasks left without partitions are not run. Partitions
/// added to the topics later are found by a metadata refresh every `metadata_max_age_ms` and
/// dealt to the running tasks, which read them from their earliest offset (a partition found
/// while running is new, whatever `start` says). Built with [`SinkRuntime::builder`], with the
/// same required parts and defaults as [`SourceRuntime`].
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::runtime::{SinkRuntime, SinkRuntimeConfig};
/// use connector_core::{DynSinkConnector, MemoryOffsetStore};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(connector: &dyn DynSinkConnector) -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// SinkRuntime::builder("commands", connector, client, Arc::new(MemoryOffsetStore::new()))
///     .config(SinkRuntimeConfig::default())
///     .run(CancellationToken::new())
///     .await
/// # }
/// ```
pub struct SinkRuntime<'a> {
    name: Arc<str>,
    connector: &'a dyn DynSinkConnector,
    client: KafkaClient,
    offsets: Arc<dyn OffsetStore>,
    config: SinkRuntimeConfig,
    stats: Arc<TaskStats>,
    max_tasks: usize,
}

/// Builds a [`SinkRuntime`]; from [`SinkRuntime::builder`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # use connector_core::runtime::SinkRuntime;
/// # use connector_core::{DynSinkConnector, MemoryOffsetStore};
/// # fn example(connector: &dyn DynSinkConnector, client: connector_core::kafka::KafkaClient) {
/// let runtime = SinkRuntime::builder("k", connector, client, Arc::new(MemoryOffsetStore::new()))
///     .max_tasks(2)
///     .build();
/// let stats = runtime.stats();
/// # }
/// ```
#[must_use = "a builder does nothing until `run` or `build`"]
pub struct SinkRuntimeBuilder<'a>(SinkRuntime<'a>);

impl<'a> SinkRuntime<'a> {
    /// Starts building the runtime of connector `name`.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use connector_core::runtime::SinkRuntime;
    /// # use connector_core::{DynSinkConnector, MemoryOffsetStore};
    /// # async fn example(c: &dyn DynSinkConnector, client: connector_core::kafka::KafkaClient) {
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// let result = SinkRuntime::builder("k", c, client, Arc::new(MemoryOffsetStore::new()))
    ///     .run(shutdown)
    ///     .await;
    /// # }
    /// ```
    pub fn builder(
        name: impl Into<Arc<str>>,
        connector: &'a dyn DynSinkConnector,
        client: KafkaClient,
        offsets: Arc<dyn OffsetStore>,
    ) -> SinkRuntimeBuilder<'a> {
        SinkRuntimeBuilder(Self {
            name: name.into(),
            connector,
            client,
            offsets,
            config: SinkRuntimeConfig::default(),
            stats: Arc::new(TaskStats::new()),
            max_tasks: DEFAULT_MAX_TASKS,
        })
    }

    /// The counters all the connector's tasks count into.
    ///
    /// ```no_run
    /// # fn example(runtime: &connector_core::runtime::SinkRuntime<'_>) {
    /// println!("committed {}", runtime.stats().snapshot().committed);
    /// # }
    /// ```
    pub fn stats(&self) -> Arc<TaskStats> {
        Arc::clone(&self.stats)
    }

    /// Runs the tasks until `shutdown` is cancelled or the first fatal error.
    ///
    /// ```no_run
    /// # async fn example(runtime: connector_core::runtime::SinkRuntime<'_>) {
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// if let Err(e) = runtime.run(shutdown).await {
    ///     eprintln!("{}", e.report());
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// The first task error, or a topic that cannot be read.
    ///
    /// # Cancellation
    /// Cancel `shutdown` for a graceful stop; dropping the future is a crash (see
    /// [`SinkTaskRuntime::run`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self { name, connector, client, offsets, config, stats, max_tasks } = self;
        let partitions = sink_partitions(&name, connector, &client).await?;
        let tasks = connector.create_tasks(max_tasks).map_err(|e| e.with_connector(&*name))?;
        let known: HashSet<TopicPartition> = partitions.iter().cloned().collect();
        let assignment = Assignment::new(assign_round_robin(partitions, tasks.len()));
        let config = SinkRuntimeConfig { start: connector.start_from(), ..config };
        let stop = shutdown.child_token();
        let mut set = JoinSet::new();
        for (id, task) in tasks.into_iter().enumerate() {
            let Some((parts, added)) = assignment.open(id) else { continue };
            let runtime = SinkTaskRuntime::new(
                Arc::clone(&name),
                id,
                task,
                client.clone(),
                Arc::clone(&offsets),
                parts,
            )
            .with_config(config.clone())
            .with_stats(Arc::clone(&stats))
            .with_added_partitions(added);
            set.spawn(runtime.run(stop.clone()));
        }
        let watcher = tokio::spawn(watch_partitions(
            Arc::clone(&name),
            client.clone(),
            connector.topics(),
            known,
            assignment,
            stop.clone(),
        ));
        let result = join_all(&name, set, stop).await;
        watcher.abort();
        result
    }
}

impl<'a> SinkRuntimeBuilder<'a> {
    /// Replaces the settings (default: [`SinkRuntimeConfig::default`]; `start` is always the
    /// connector's [`start_from`](DynSinkConnector::start_from)).
    pub fn config(mut self, config: SinkRuntimeConfig) -> Self {
        self.0.config = config;
        self
    }

    /// Counts into `stats` (default: fresh counters, see [`SinkRuntime::stats`]).
    pub fn stats(mut self, stats: Arc<TaskStats>) -> Self {
        self.0.stats = stats;
        self
    }

    /// The most tasks the connector may create (default: [`DEFAULT_MAX_TASKS`]; at least 1).
    pub fn max_tasks(mut self, max_tasks: usize) -> Self {
        self.0.max_tasks = max_tasks.max(1);
        self
    }

    /// The runtime, to read its [`stats`](SinkRuntime::stats) before running it.
    pub fn build(self) -> SinkRuntime<'a> {
        self.0
    }

    /// Builds and runs: see [`SinkRuntime::run`].
    ///
    /// # Errors
    /// See [`SinkRuntime::run`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.0.run(shutdown).await
    }
}

/// Every partition of the sink's topics, creating missing topics (when allowed).
pub(crate) async fn sink_partitions(
    name: &str,
    connector: &dyn DynSinkConnector,
    client: &KafkaClient,
) -> Result<Vec<TopicPartition>> {
    let mut partitions = Vec::new();
    for topic in &connector.topics() {
        let meta = client.ensure_topic(topic).await.map_err(|e| e.with_connector(name))?;
        partitions
            .extend((0..meta.partition_count()).map(|p| TopicPartition::new(topic.as_str(), p)));
    }
    Ok(partitions)
}

/// Batches of added partitions queued per task.
const ADDED_QUEUE: usize = 4;

/// Which partitions each task of a sink reads, shared by the tasks' owner and the partition
/// watcher. A task that was dealt partitions at start keeps its slot; partitions added later are
/// recorded in the slot (so a restarted task reads them too) and sent to the running task.
#[derive(Clone, Default)]
pub(crate) struct Assignment(Arc<Mutex<Vec<Slot>>>);

#[derive(Default)]
struct Slot {
    partitions: Vec<TopicPartition>,
    /// To the running task; `None` while it does not run.
    added: Option<mpsc::Sender<Vec<TopicPartition>>>,
}

impl Assignment {
    pub(crate) fn new(buckets: Vec<Vec<TopicPartition>>) -> Self {
        let slots = buckets.into_iter().map(|partitions| Slot { partitions, added: None });
        Self(Arc::new(Mutex::new(slots.collect())))
    }

    /// Task `id`'s partitions and the channel partitions added later come on; `None` when it has
    /// no partitions (it does not run).
    pub(crate) fn open(
        &self,
        id: usize,
    ) -> Option<(Vec<TopicPartition>, mpsc::Receiver<Vec<TopicPartition>>)> {
        let mut slots = self.0.lock();
        let slot = slots.get_mut(id).filter(|s| !s.partitions.is_empty())?;
        let (tx, rx) = mpsc::channel(ADDED_QUEUE);
        slot.added = Some(tx);
        Some((slot.partitions.clone(), rx))
    }

    /// Whether any task has partitions (else nothing is ever dealt).
    fn any_assigned(&self) -> bool {
        self.0.lock().iter().any(|s| !s.partitions.is_empty())
    }

    /// Deals `found` to the assigned tasks round-robin from `next`: records them, and returns
    /// what to send to which running task.
    fn deal(
        &self,
        found: Vec<TopicPartition>,
        next: &mut usize,
    ) -> Vec<(mpsc::Sender<Vec<TopicPartition>>, Vec<TopicPartition>)> {
        let mut slots = self.0.lock();
        let assigned: Vec<usize> =
            (0..slots.len()).filter(|&i| !slots[i].partitions.is_empty()).collect();
        if assigned.is_empty() {
            return Vec::new();
        }
        let mut batches = vec![Vec::new(); slots.len()];
        for tp in found {
            let i = assigned[*next % assigned.len()];
            *next += 1;
            slots[i].partitions.push(tp.clone());
            batches[i].push(tp);
        }
        slots
            .iter()
            .zip(batches)
            .filter(|(_, b)| !b.is_empty())
            .filter_map(|(s, b)| Some((s.added.clone()?, b)))
            .collect()
    }
}

/// Refreshes the metadata of a sink's topics every `metadata_max_age_ms` and deals partitions
/// that appeared since start to the tasks, round-robin.
pub(crate) async fn watch_partitions(
    name: Arc<str>,
    client: KafkaClient,
    topics: Vec<String>,
    mut known: HashSet<TopicPartition>,
    assignment: Assignment,
    stop: CancellationToken,
) {
    if !assignment.any_assigned() {
        return;
    }
    let interval = Duration::from_millis(client.config().metadata_max_age_ms.max(1));
    let mut next_task = known.len();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let mut found = Vec::new();
        for topic in &topics {
            match client.refresh_topic(topic).await {
                Ok(Some(meta)) => found.extend(
                    (0..meta.partition_count())
                        .map(|p| TopicPartition::new(topic.as_str(), p))
                        .filter(|tp| !known.contains(tp)),
                ),
                Ok(None) => debug!(connector = %name, topic, "sink topic not found in metadata"),
                Err(e) => {
                    debug!(connector = %name, topic, error = %e.report(), "metadata refresh failed")
                }
            }
        }
        if found.is_empty() {
            continue;
        }
        found.sort();
        info!(connector = %name, added = ?found, "partitions were added to the sink's topics");
        known.extend(found.iter().cloned());
        for (tx, batch) in assignment.deal(found, &mut next_task) {
            tokio::select! {
                () = stop.cancelled() => return,
                // A task that ended drops its receiver; its slot keeps the partitions.
                _ = tx.send(batch) => {}
            }
        }
    }
}

/// Deals `partitions` (sorted) to `tasks` buckets round-robin.
///
/// ```
/// use connector_core::runtime::assign_round_robin;
/// use connector_core::TopicPartition;
///
/// let parts: Vec<_> = (0..5).map(|p| TopicPartition::new("t", p)).collect();
/// let buckets = assign_round_robin(parts, 2);
/// assert_eq!(buckets[0].iter().map(|tp| tp.partition).collect::<Vec<_>>(), [0, 2, 4]);
/// assert_eq!(buckets[1].iter().map(|tp| tp.partition).collect::<Vec<_>>(), [1, 3]);
/// ```
pub fn assign_round_robin(
    mut partitions: Vec<TopicPartition>,
    tasks: usize,
) -> Vec<Vec<TopicPartition>> {
    partitions.sort();
    let mut buckets = vec![Vec::new(); tasks.max(1)];
    let n = buckets.len();
    for (i, tp) in partitions.into_iter().enumerate() {
        buckets[i % n].push(tp);
    }
    buckets
}

async fn join_all(name: &str, mut set: JoinSet<Result<()>>, stop: CancellationToken) -> Result<()> {
    let mut first_error: Option<Error> = None;
    while let Some(joined) = set.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(Error::fatal(format!("a task of connector {name} panicked or was aborted"))
                .with_source(e))
        });
        if let Err(e) = result {
            if first_error.is_none() {
                warn!(connector = name, error = %e.report(), "task failed; stopping the connector's other tasks");
                stop.cancel();
                first_error = Some(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
