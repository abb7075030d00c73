//! What the sink runtime commits and how: offsets handed to `put` against offsets committed
//! ([`Progress`]), `pre_commit` clipped to what was offered, one offset save in flight beside
//! `put`, and the bounded final flush and commit at shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::config::SinkRuntimeConfig;
use crate::backoff::Backoff;
use crate::kafka::KafkaClient;
use crate::offset::{OffsetMap, OffsetStore};
use crate::record::TopicPartition;
use crate::runtime::stats::{PartitionLag, TaskCounters};
use crate::sink::{SinkTask, StartFrom};
use crate::{Error, Result};

/// Offsets handed to `put` and offsets committed, per partition.
pub(super) struct Progress {
    pub(super) consumed: HashMap<TopicPartition, i64>,
    pub(super) committed: HashMap<TopicPartition, i64>,
    /// Each read partition's lag cell (at most MAX_LAG_PARTITIONS of them) with its fetched,
    /// uncommitted batches.
    pub(super) lag: HashMap<TopicPartition, Lag>,
}

/// Most fetched batches remembered per partition for the time lag; past it, a new batch is
/// merged into the newest remembered one (its end offset extended, its older timestamp kept), so
/// the oldest uncommitted timestamp stays known (as old as, or older than, the true one).
const LAG_BATCHES: usize = 64;

/// What a partition's time lag is computed from: its lag cell, and (last offset, timestamp of
/// the first record with a usable timestamp) of each fetched batch not yet committed, oldest
/// first. Timestamps <= 0 (none set, or set to the epoch) are not used.
pub(super) struct Lag {
    pub(super) cell: Arc<PartitionLag>,
    batches: VecDeque<(i64, Option<i64>)>,
}

impl Lag {
    pub(super) fn new(cell: Arc<PartitionLag>) -> Self {
        Self { cell, batches: VecDeque::new() }
    }

    /// A fetched batch: its last offset and its first record's timestamp.
    pub(super) fn fetched(&mut self, last_offset: i64, first_ts_ms: i64) {
        let ts = (first_ts_ms > 0).then_some(first_ts_ms);
        let full = self.batches.len() >= LAG_BATCHES;
        match self.batches.back_mut() {
            Some(newest) if full => {
                newest.0 = newest.0.max(last_offset);
                newest.1 = newest.1.or(ts);
            }
            _ => self.batches.push_back((last_offset, ts)),
        }
        self.publish();
    }

    /// Offsets before `offset` are committed.
    pub(super) fn committed(&mut self, offset: i64) {
        self.cell.set_committed(offset);
        while self.batches.front().is_some_and(|(last, _)| *last < offset) {
            self.batches.pop_front();
        }
        self.publish();
    }

    fn publish(&self) {
        self.cell.set_oldest_uncommitted(self.batches.iter().find_map(|(_, ts)| *ts));
    }
}

impl Progress {
    /// Empty.
    pub(super) fn new() -> Self {
        Self { consumed: HashMap::new(), committed: HashMap::new(), lag: HashMap::new() }
    }

    /// Records handed to `put` and not yet covered by a committed offset.
    pub(super) fn uncommitted(&self) -> u64 {
        self.consumed
            .iter()
            .map(|(tp, c)| {
                let done = self.committed.get(tp).copied().unwrap_or(*c);
                u64::try_from(c - done).unwrap_or(0)
            })
            .sum()
    }
}

/// Saves the start offsets resolved for partitions without a committed offset, before any of
/// their records reaches the task. `latest` is a moving target: unsaved, a crash before the first
/// commit would resolve it again later and skip whatever was written in between. `earliest`
/// resolves to the same records after a crash, so nothing needs saving.
pub(super) async fn persist_resolved_starts(
    name: &str,
    store: &dyn OffsetStore,
    start: StartFrom,
    client: &KafkaClient,
    resolved: &OffsetMap,
) -> Result<()> {
    if start != StartFrom::Latest || resolved.is_empty() {
        return Ok(());
    }
    let mut backoff = Backoff::new(client.config().retry_backoff);
    loop {
        match store.save(name, resolved).await {
            Ok(()) => {
                debug!(
                    connector = name,
                    partitions = resolved.len(),
                    "saved the resolved start offsets"
                );
                return Ok(());
            }
            Err(e) if e.is_retriable() && backoff.attempts() < 10 => {
                warn!(connector = name, error = %e.report(), "could not save the start offsets yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Flush and the final commit (bounded by the drain's deadline), then `outcome`.
pub(super) async fn finish(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    store: &Arc<dyn OffsetStore>,
    stats: &TaskCounters,
    progress: &mut Progress,
    (deadline, timeout): (tokio::time::Instant, Duration),
    outcome: Result<()>,
) -> Result<()> {
    // Give a pipelining task the chance to complete what is in flight, then commit what it reports.
    let offered = progress.consumed.clone();
    match tokio::time::timeout_at(deadline, task.flush(&offered)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(connector = %name, error = %e.report(), "flush at shutdown failed"),
        Err(_) => {
            warn!(connector = %name, ?timeout, "flush at shutdown timed out; committing what was acknowledged")
        }
    }
    match tokio::time::timeout_at(deadline, commit(name, task, store, stats, progress)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(connector = %name, error = %e.report(), "final commit failed"),
        Err(_) => {
            warn!(connector = %name, ?timeout, "final commit timed out (shutdown_timeout_ms); what it would have saved is delivered again after the restart")
        }
    }
    outcome
}

/// Asks the task which consumed offsets are safe and saves exactly those.
pub(super) async fn commit(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    store: &Arc<dyn OffsetStore>,
    stats: &TaskCounters,
    progress: &mut Progress,
) -> Result<()> {
    let Some((to_save, newly)) = offsets_to_commit(name, task, progress).await? else {
        return Ok(());
    };
    match store.save(name, &to_save).await {
        Ok(()) => InFlightSave { handle: None, to_save, newly, failed: false }
            .apply(name, stats, progress),
        Err(e) if e.is_retriable() => {
            stats.add_offset_commit_failures(1);
            warn!(connector = %name, error = %e.report(), "could not save sink offsets; will retry");
            Ok(())
        }
        Err(e) => {
            stats.add_offset_commit_failures(1);
            Err(e)
        }
    }
}

/// Offsets being saved in the background, and what they commit once saved.
pub(super) struct InFlightSave {
    pub(super) handle: Option<tokio::task::JoinHandle<Result<()>>>,
    pub(super) to_save: OffsetMap,
    pub(super) newly: u64,
    /// The save failed (retriable): nothing is committed.
    pub(super) failed: bool,
}

impl InFlightSave {
    /// Records a completed save in `progress` and the counters.
    pub(super) fn apply(
        self,
        name: &str,
        stats: &TaskCounters,
        progress: &mut Progress,
    ) -> Result<()> {
        if self.failed {
            stats.add_offset_commit_failures(1);
            return Ok(());
        }
        for (tp, _) in progress.consumed.clone() {
            if let Some(o) = self.to_save.kafka_offset(&tp) {
                if let Some(lag) = progress.lag.get_mut(&tp) {
                    lag.committed(o);
                }
                progress.committed.insert(tp, o);
            }
        }
        stats.add_offset_commits(1);
        stats.add_committed(self.newly);
        stats.set_in_flight(progress.uncommitted());
        debug!(connector = name, partitions = self.to_save.len(), "sink offsets committed");
        Ok(())
    }
}

/// Waits for the in-flight save; a retriable failure is logged and committed nothing (the next
/// commit saves newer offsets anyway).
pub(super) async fn wait_save(saving: &mut Option<InFlightSave>) -> Result<InFlightSave> {
    let Some(s) = saving.as_mut() else { return std::future::pending().await };
    let Some(handle) = s.handle.as_mut() else {
        return Err(Error::fatal("offset save polled twice"));
    };
    let joined = handle.await;
    s.handle = None;
    let done = InFlightSave {
        handle: None,
        to_save: std::mem::take(&mut s.to_save),
        newly: s.newly,
        failed: false,
    };
    match joined {
        Ok(Ok(())) => Ok(done),
        Ok(Err(e)) if e.is_retriable() => {
            warn!(error = %e.report(), "could not save sink offsets; will retry");
            Ok(InFlightSave { handle: None, to_save: OffsetMap::new(), newly: 0, failed: true })
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::fatal("the offset save task panicked").with_source(e)),
    }
}

/// Calls `pre_commit` and starts saving what it allows in a task of its own; `None` when there
/// is nothing new to save.
pub(super) async fn start_commit(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    store: &Arc<dyn OffsetStore>,
    progress: &Progress,
) -> Result<Option<InFlightSave>> {
    let Some((to_save, newly)) = offsets_to_commit(name, task, progress).await? else {
        return Ok(None);
    };
    let (store, name, offsets) = (Arc::clone(store), Arc::clone(name), to_save.clone());
    let handle = tokio::spawn(async move { store.save(&name, &offsets).await });
    Ok(Some(InFlightSave { handle: Some(handle), to_save, newly, failed: false }))
}

/// What `pre_commit` says is safe, clipped to what was offered, keeping only partitions that
/// moved forward; with the number of records it newly commits.
pub(super) async fn offsets_to_commit(
    name: &str,
    task: &mut dyn SinkTask,
    progress: &Progress,
) -> Result<Option<(OffsetMap, u64)>> {
    let offered = progress.consumed.clone();
    let safe = match task.pre_commit(&offered).await {
        Ok(s) => s,
        Err(e) if e.is_retriable() => {
            warn!(connector = name, error = %e.report(), "pre_commit failed; nothing committed this time");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut to_save = OffsetMap::new();
    let mut newly = 0u64;
    for (tp, offset) in safe {
        let Some(&max) = offered.get(&tp) else {
            continue;
        };
        let offset = offset.min(max);
        let previous = progress.committed.get(&tp).copied();
        if previous.is_none_or(|p| offset > p) {
            newly += u64::try_from(offset - previous.unwrap_or(offset)).unwrap_or(0);
            to_save.insert_kafka(&tp, offset);
        }
    }
    Ok((!to_save.is_empty()).then_some((to_save, newly)))
}

/// Shutdown: the save still in flight completes first (bounded by the shutdown timeout), so the
/// final commit starts from what it saved; then [`finish`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish_with_save(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    store: &Arc<dyn OffsetStore>,
    stats: &TaskCounters,
    progress: &mut Progress,
    config: &SinkRuntimeConfig,
    mut saving: Option<InFlightSave>,
    outcome: Result<()>,
) -> Result<()> {
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    // One deadline for the whole drain: the save in flight, flush and the final commit.
    let deadline = tokio::time::Instant::now() + timeout;
    if saving.is_some() {
        match tokio::time::timeout_at(deadline, wait_save(&mut saving)).await {
            Ok(Ok(saved)) => {
                let _ = saved.apply(name, stats, progress);
            }
            Ok(Err(e)) => warn!(connector = %name, error = %e.report(), "offset save failed"),
            Err(_) => {
                warn!(connector = %name, ?timeout, "offset save in flight timed out");
                // Never let it land later: by then a newer owner of the partitions (or this
                // task's next epoch) may have committed further, and it would move them back.
                if let Some(handle) = saving.as_mut().and_then(|s| s.handle.take()) {
                    handle.abort();
                }
            }
        }
    }
    finish(name, task, store, stats, progress, (deadline, timeout), outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::TaskStats;

    fn lag() -> (Lag, Arc<PartitionLag>) {
        let cell = TaskStats::new()
            .task(0)
            .open_partition(&TopicPartition::new("t", 0), 0)
            .unwrap_or_else(|| unreachable!("the first partition is registered"));
        (Lag::new(Arc::clone(&cell)), cell)
    }

    #[test]
    fn past_the_remembered_batches_the_time_lag_stays_known_until_all_is_committed() {
        let (mut lag, cell) = lag();
        // 100 batches of 10 records, timestamps 1000, 1001, ...
        for b in 0..100i64 {
            lag.fetched(b * 10 + 9, 1_000 + b);
        }
        assert_eq!(cell.lag_time(2_000), Duration::from_millis(1_000));
        // Every batch but the last committed: the merged tail still knows a timestamp.
        lag.committed(990);
        assert!(cell.lag_time(2_000) > Duration::ZERO, "records 990..999 are uncommitted");
        lag.committed(1_000);
        assert_eq!(cell.lag_time(2_000), Duration::ZERO);
    }

    #[test]
    fn timestamps_at_or_before_the_epoch_are_not_used() {
        let (mut lag, cell) = lag();
        lag.fetched(9, 0);
        assert_eq!(cell.lag_time(5_000), Duration::ZERO, "no usable timestamp");
        lag.fetched(19, 4_000);
        assert_eq!(cell.lag_time(5_000), Duration::from_secs(1), "the oldest usable one");
        lag.fetched(29, -1);
        lag.committed(20);
        assert_eq!(cell.lag_time(5_000), Duration::ZERO);
    }
}
