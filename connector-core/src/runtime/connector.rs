//! Running every task of one connector: [`SourceRuntime`] and [`SinkRuntime`] create the tasks,
//! give sink tasks their partitions (round-robin), run them concurrently, and stop them all when
//! one fails. (A [`Worker`](crate::runtime::Worker) runs connectors whose tasks are managed one
//! by one instead.)

use std::collections::HashSet;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::kafka::KafkaClient;
use crate::offset::OffsetStore;
use crate::record::TopicPartition;
use crate::runtime::sink::{SinkRuntimeConfig, SinkTaskRuntime};
use crate::runtime::source::{SourceRuntimeConfig, SourceTaskRuntime};
use crate::runtime::stats::TaskStats;
use crate::sink::DynSinkConnector;
use crate::source::DynSourceConnector;
use crate::{Error, Result};

pub use super::assignment::assign_round_robin;
pub(crate) use super::assignment::{sink_partitions, watch_partitions, Assignment};

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
    config.exactly_once = connector.exactly_once();
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
        let config = SinkRuntimeConfig {
            start: connector.start_from(),
            read_committed: connector.read_committed(),
            ..config
        };
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
