//! Handing fetched records to the task: converters and transforms, `put` with retries (bounded
//! by `errors.retry_timeout_ms`), and records `put` refused going to the error policy.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::commit::Progress;
use crate::backoff::Backoff;
use crate::error_policy::{ErrorHandler, FailedRecord, Handled, Stage};
use crate::record::{SinkRecord, TopicPartition};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::stats::TaskCounters;
use crate::sink::SinkTask;
use crate::{Error, ErrorKind, Result};

/// A fetched record that failed, for the error policy.
pub(super) fn failed<'a>(stage: Stage, error: &'a Error, r: &'a SinkRecord) -> FailedRecord<'a> {
    FailedRecord {
        stage,
        error,
        topic: &r.original_topic,
        partition: Some(r.partition),
        offset: Some(r.offset),
        key: r.key.as_ref(),
        value: r.value.as_ref(),
        headers: &r.headers,
    }
}

/// Counts what became of the records of one fetched batch (the conservation terms); whatever
/// has no outcome when `deliver` returns early is abandoned (read again after a restart).
struct Settled<'a> {
    stats: &'a TaskCounters,
    total: u64,
    settled: u64,
}

impl Settled<'_> {
    fn handled(&mut self, h: Handled) {
        match h {
            Handled::DeadLettered => self.stats.add_dead_lettered(1),
            Handled::Skipped => self.stats.add_skipped(1),
        }
        self.settled += 1;
    }
    fn dropped(&mut self) {
        self.stats.add_dropped(1);
        self.settled += 1;
    }
    fn written(&mut self, n: usize) {
        self.stats.add_written(n as u64);
        self.stats.add_out(n as u64);
        self.settled += n as u64;
    }
}

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        self.stats.add_abandoned(self.total.saturating_sub(self.settled));
    }
}

/// Puts one fetched batch: converters and transforms first, then `put`, retrying retriable failures
/// (bounded by `errors.retry_timeout_ms`) and handing records `put` rejects to the error policy.
/// Returns `false` when shutdown interrupted it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn deliver(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    pipeline: &Pipeline,
    handler: &ErrorHandler,
    stats: &TaskCounters,
    progress: &mut Progress,
    tp: TopicPartition,
    records: Vec<SinkRecord>,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let Some(last) = records.last().map(|r| r.offset) else { return Ok(true) };
    // Dropped (a cancelled delivery too), it counts what got no outcome as abandoned.
    let mut settled = Settled { stats, total: records.len() as u64, settled: 0 };
    let to_put = if pipeline.is_passthrough() {
        records
    } else {
        let mut out = Vec::with_capacity(records.len());
        for r in &records {
            match pipeline.sink(r) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => settled.dropped(),
                Err((stage, why)) => {
                    // Nothing of this batch is put yet, so a stop here commits nothing past it.
                    let e = Error::rejected(why);
                    settled.handled(handler.handle(failed(stage, &e, r)).await?);
                }
            }
        }
        out
    };

    let mut start = 0;
    let mut backoff = Backoff::new(pipeline.task_backoff());
    let mut failing_since: Option<std::time::Instant> = None;
    while start < to_put.len() {
        let batch = &to_put[start..];
        // A put waiting on a slow destination must not hold up shutdown; what it did not finish
        // is simply not reported by pre_commit (see SinkTask::put).
        let put = tokio::select! {
            r = task.put(batch) => r,
            () = shutdown.cancelled() => return Ok(false),
        };
        match put {
            Ok(()) => {
                settled.written(batch.len());
                break;
            }
            Err(e) if e.is_retriable() => {
                stats.add_retry();
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if pipeline.retry_limit().is_some_and(|limit| since.elapsed() >= limit) {
                    stats.add_error();
                    return Err(Error::fatal(format!(
                        "put kept failing for {:?} (errors.retry_timeout_ms): {}",
                        since.elapsed(),
                        e.report()
                    ))
                    .with_topic(&*tp.topic)
                    .with_partition(tp.partition));
                }
                let delay = backoff.next_delay();
                warn!(connector = %name, %tp, error = %e.report(), retry_in_ms = delay.as_millis() as u64, "put failed; redelivering the same records");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(false),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) if e.kind() == ErrorKind::RecordRejected => {
                // The task refused one record of this batch; those before it were accepted. The
                // record is found by partition and offset (and topic when named): an error about
                // another partition's record must never be taken for one of this batch.
                let position = e.context().and_then(|c| {
                    let o = c.offset?;
                    if c.partition.is_some_and(|p| p != tp.partition) {
                        return None;
                    }
                    batch.iter().position(|r| {
                        r.offset == o
                            && c.topic
                                .as_deref()
                                .is_none_or(|t| t == &*r.topic || t == &*r.original_topic)
                    })
                });
                let Some(i) = position else {
                    stats.add_error();
                    return Err(e.with_topic(&*tp.topic).with_partition(tp.partition));
                };
                settled.written(i);
                match handler.handle(failed(Stage::TaskPut, &e, &batch[i])).await {
                    Ok(h) => settled.handled(h),
                    Err(stop) => {
                        progress.consumed.insert(tp.clone(), batch[i].offset);
                        return Err(stop);
                    }
                }
                start += i + 1;
            }
            Err(e) => {
                stats.add_error();
                return Err(e.with_topic(&*tp.topic).with_partition(tp.partition));
            }
        }
    }
    progress.consumed.insert(tp, last + 1);
    Ok(true)
}

/// Splits a fetched batch into pieces of at most `max` records for `put`.
pub(super) fn queue_for_put(
    queued: &mut VecDeque<(TopicPartition, Vec<SinkRecord>)>,
    tp: TopicPartition,
    records: Vec<SinkRecord>,
    max: usize,
) {
    let max = max.max(1);
    if records.len() <= max {
        queued.push_back((tp, records));
        return;
    }
    // Each record moves once (`split_off` from the front moved the rest again for every piece:
    // ~5x the batch in copies for a full fetch).
    let mut rest = records.into_iter();
    loop {
        let piece: Vec<SinkRecord> = rest.by_ref().take(max).collect();
        if piece.is_empty() {
            break;
        }
        queued.push_back((tp.clone(), piece));
    }
}
