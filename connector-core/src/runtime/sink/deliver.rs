//! Handing fetched records to the task: converters and transforms, `put` with retries (bounded
//! by `errors.retry_timeout_ms`), and records `put` refused going to the error policy.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::commit::Progress;
use crate::backoff::Backoff;
use crate::error_policy::{ErrorHandler, FailedRecord, Stage};
use crate::record::{SinkRecord, TopicPartition};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::stats::TaskStats;
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

/// Puts one fetched batch: converters and transforms first, then `put`, retrying retriable failures
/// (bounded by `errors.retry_timeout_ms`) and handing records `put` rejects to the error policy.
/// Returns `false` when shutdown interrupted it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn deliver(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    pipeline: &Pipeline,
    handler: &ErrorHandler,
    stats: &TaskStats,
    progress: &mut Progress,
    tp: TopicPartition,
    records: Vec<SinkRecord>,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let Some(last) = records.last().map(|r| r.offset) else { return Ok(true) };
    let to_put = if pipeline.is_passthrough() {
        records
    } else {
        let mut out = Vec::with_capacity(records.len());
        for r in &records {
            match pipeline.sink(r) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err((stage, why)) => {
                    // Nothing of this batch is put yet, so a stop here commits nothing past it.
                    let e = Error::rejected(why);
                    handler.handle(failed(stage, &e, r)).await?;
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
            Ok(()) => break,
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
                if let Err(stop) = handler.handle(failed(Stage::TaskPut, &e, &batch[i])).await {
                    progress.consumed.insert(tp.clone(), batch[i].offset);
                    return Err(stop);
                }
                start += i + 1;
            }
            Err(e) => {
                stats.add_error();
                return Err(e.with_topic(&*tp.topic).with_partition(tp.partition));
            }
        }
    }
    stats.add_out(to_put.len() as u64);
    progress.consumed.insert(tp, last + 1);
    Ok(true)
}

/// Splits a fetched batch into pieces of at most `max` records for `put`.
pub(super) fn queue_for_put(
    queued: &mut VecDeque<(TopicPartition, Vec<SinkRecord>)>,
    tp: TopicPartition,
    mut records: Vec<SinkRecord>,
    max: usize,
) {
    let max = max.max(1);
    while records.len() > max {
        let rest = records.split_off(max);
        queued.push_back((tp.clone(), records));
        records = rest;
    }
    queued.push_back((tp, records));
}
