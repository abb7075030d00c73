//! Which partitions each task of a sink reads: dealt round-robin at start ([`assign_round_robin`]),
//! and partitions added to the topics later found by a metadata watcher and dealt to the tasks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::kafka::KafkaClient;
use crate::record::TopicPartition;
use crate::sink::DynSinkConnector;
use crate::Result;

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
