//! Running every task of a connector: [`run_source_connector`] and [`run_sink_connector`] create
//! the tasks, give sink tasks their partitions (round-robin), run them concurrently, and stop them
//! all when one fails.

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

/// Runs up to `max_tasks` tasks of a source connector until `shutdown` or the first fatal error
/// (which stops the other tasks gracefully). All tasks count into `stats`.
///
/// # Errors
/// The first task error.
#[allow(clippy::too_many_arguments)]
pub async fn run_source_connector(
    name: &str,
    connector: &dyn DynSourceConnector,
    max_tasks: usize,
    client: KafkaClient,
    offsets: Arc<dyn OffsetStore>,
    config: SourceRuntimeConfig,
    stats: Arc<TaskStats>,
    shutdown: CancellationToken,
) -> Result<()> {
    let tasks = connector.create_tasks(max_tasks).map_err(|e| e.with_connector(name))?;
    let mut config = config;
    if let Some(window) = connector.max_in_flight_records() {
        config.max_in_flight_records = config.max_in_flight_records.min(window.max(1));
    }
    // One count of distinct Kafka topics for all the connector's tasks.
    config.topic_budget = Some(config.topic_budget());
    let stop = shutdown.child_token();
    let mut set = JoinSet::new();
    for (id, task) in tasks.into_iter().enumerate() {
        let runtime = SourceTaskRuntime::new(name, id, task, client.clone(), Arc::clone(&offsets))
            .with_config(config.clone())
            .with_stats(Arc::clone(&stats));
        set.spawn(runtime.run(stop.clone()));
    }
    join_all(name, set, stop).await
}

/// Runs up to `max_tasks` tasks of a sink connector until `shutdown` or the first fatal error.
/// The connector's topics are created if missing (when `auto_create_topics` is on); their
/// partitions are dealt to the tasks round-robin, and tasks left without partitions are not run.
///
/// # Errors
/// The first task error, or a topic that cannot be read.
#[allow(clippy::too_many_arguments)]
pub async fn run_sink_connector(
    name: &str,
    connector: &dyn DynSinkConnector,
    max_tasks: usize,
    client: KafkaClient,
    offsets: Arc<dyn OffsetStore>,
    config: SinkRuntimeConfig,
    stats: Arc<TaskStats>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut partitions = Vec::new();
    for topic in connector.topics() {
        let meta = client.ensure_topic(&topic).await.map_err(|e| e.with_connector(name))?;
        partitions
            .extend((0..meta.partition_count()).map(|p| TopicPartition::new(topic.as_str(), p)));
    }
    let tasks = connector.create_tasks(max_tasks).map_err(|e| e.with_connector(name))?;
    let assignment = assign_round_robin(partitions, tasks.len());
    let config = SinkRuntimeConfig { start: connector.start_from(), ..config };
    let stop = shutdown.child_token();
    let mut set = JoinSet::new();
    for (id, (task, parts)) in tasks.into_iter().zip(assignment).enumerate() {
        if parts.is_empty() {
            continue;
        }
        let runtime =
            SinkTaskRuntime::new(name, id, task, client.clone(), Arc::clone(&offsets), parts)
                .with_config(config.clone())
                .with_stats(Arc::clone(&stats));
        set.spawn(runtime.run(stop.clone()));
    }
    join_all(name, set, stop).await
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
