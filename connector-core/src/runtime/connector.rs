//! Running every task of a connector: [`run_source_connector`] and [`run_sink_connector`] create
//! the tasks, give sink tasks their partitions (round-robin), run them concurrently, and stop them
//! all when one fails.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

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
/// Partitions added to the topics later are found by a metadata refresh every
/// `metadata_max_age_ms` and dealt to the running tasks, which read them from their earliest
/// offset (a partition found while running is new, whatever `start` says).
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
    let topics = connector.topics();
    let mut partitions = Vec::new();
    for topic in &topics {
        let meta = client.ensure_topic(topic).await.map_err(|e| e.with_connector(name))?;
        partitions
            .extend((0..meta.partition_count()).map(|p| TopicPartition::new(topic.as_str(), p)));
    }
    let tasks = connector.create_tasks(max_tasks).map_err(|e| e.with_connector(name))?;
    let known: HashSet<TopicPartition> = partitions.iter().cloned().collect();
    let assignment = assign_round_robin(partitions, tasks.len());
    let config = SinkRuntimeConfig { start: connector.start_from(), ..config };
    let stop = shutdown.child_token();
    let mut set = JoinSet::new();
    let mut added_senders = Vec::new();
    for (id, (task, parts)) in tasks.into_iter().zip(assignment).enumerate() {
        if parts.is_empty() {
            continue;
        }
        let (added_tx, added_rx) = mpsc::channel(ADDED_QUEUE);
        added_senders.push(added_tx);
        let runtime =
            SinkTaskRuntime::new(name, id, task, client.clone(), Arc::clone(&offsets), parts)
                .with_config(config.clone())
                .with_stats(Arc::clone(&stats))
                .with_added_partitions(added_rx);
        set.spawn(runtime.run(stop.clone()));
    }
    let watcher = tokio::spawn(watch_partitions(
        Arc::from(name),
        client.clone(),
        topics,
        known,
        added_senders,
        stop.clone(),
    ));
    let result = join_all(name, set, stop).await;
    watcher.abort();
    result
}

/// Batches of added partitions queued per task.
const ADDED_QUEUE: usize = 4;

/// Refreshes the metadata of a sink's topics every `metadata_max_age_ms` and deals partitions
/// that appeared since start to the running tasks, round-robin.
async fn watch_partitions(
    name: Arc<str>,
    client: KafkaClient,
    topics: Vec<String>,
    mut known: HashSet<TopicPartition>,
    tasks: Vec<mpsc::Sender<Vec<TopicPartition>>>,
    stop: CancellationToken,
) {
    if tasks.is_empty() {
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
        let mut batches = vec![Vec::new(); tasks.len()];
        for tp in found {
            known.insert(tp.clone());
            batches[next_task % tasks.len()].push(tp);
            next_task += 1;
        }
        for (tx, batch) in tasks.iter().zip(batches) {
            if batch.is_empty() {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                // A task that ended drops its receiver; the connector is stopping then.
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
