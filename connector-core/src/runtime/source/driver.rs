//! The source task's poll/produce/finalize loop: [`SourceDriver`] and its named state (the
//! in-flight [`Window`], the [`Phase`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::error_policy::{ErrorHandler, FailedRecord, Handled, Stage};
use crate::kafka::{Delivery, Producer, ProducerRecord};
use crate::record::{RecordMetadata, SourceRecord};
use crate::runtime::finalizer::OrderedFinalizer;
use crate::runtime::pipeline::{Pipeline, TopicCache};
use crate::runtime::stats::{LatencyBatch, TaskCounters};
use crate::runtime::task::PauseSwitch;
use crate::source::SourceTask;
use crate::{Error, ErrorKind, Result};

use super::config::SourceRuntimeConfig;
use super::Committer;

/// A polled record in the window, with when it was polled (for the latency histogram).
pub(super) struct Polled {
    pub(super) record: SourceRecord,
    pub(super) at: Instant,
}

/// Pause before polling again after `poll` returned nothing.
const IDLE_POLL_PAUSE: Duration = Duration::from_millis(10);

enum Event {
    Acks(Option<Vec<Delivery<u64>>>),
    Shutdown,
    Tick,
    DrainTimeout,
    PollRetry,
    /// The task was paused or resumed.
    PauseChanged,
    Polled(Result<Vec<SourceRecord>>),
}

/// What became of a polled record.
pub(super) enum Outcome {
    /// Kafka has it.
    Delivered(RecordMetadata),
    /// A transform dropped it.
    Dropped,
    /// An offset-only record ([`SourceRecord::offset_only`]): never written, its offset counts.
    OffsetOnly,
    /// It failed at `Stage`; the error policy decides.
    Failed(Stage, Error),
}

/// The record as it goes to Kafka, or why it does not (`topics`: see [`TopicCache`]).
pub(super) fn prepare(
    pipeline: &Pipeline,
    record: &mut SourceRecord,
    topics: &mut TopicCache,
) -> Result<Option<ProducerRecord>, (Stage, String)> {
    if let Some(why) = record.rejected.take() {
        return Err((Stage::TaskPoll, why));
    }
    pipeline.source(record, topics)
}

/// How many records and bytes are out, and whether the producer was told to send them now.
pub(super) struct Window {
    pub(super) max_records: usize,
    pub(super) max_bytes: usize,
    /// Records handed to the producer and not yet answered.
    pub(super) unacked: usize,
    /// Bytes of records polled and not yet final.
    pub(super) held_bytes: usize,
    /// A flush was requested since the last acknowledgement.
    pub(super) flush_sent: bool,
}

impl Window {
    fn is_full(&self) -> bool {
        self.unacked >= self.max_records || self.held_bytes >= self.max_bytes
    }
}

/// Where the task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Polling (unless paused or the window is full).
    Running,
    /// Shutdown: no more polls; what is in flight is awaited until `deadline`.
    Draining { deadline: Instant },
    /// A record failed with tolerance "none": no more polls; the task fails once the records
    /// before it are final.
    Halting,
}

/// The poll/produce/finalize loop's state: returns on shutdown (after draining) or on a fatal
/// error.
pub(super) struct SourceDriver<'a> {
    pub(super) name: &'a Arc<str>,
    pub(super) config: &'a SourceRuntimeConfig,
    pub(super) stats: &'a TaskCounters,
    pub(super) handler: &'a ErrorHandler,
    pub(super) producer: Producer<u64>,
    pub(super) finalizer: OrderedFinalizer<Polled, Outcome>,
    /// Polled records waiting for room in the window.
    pub(super) pending: VecDeque<(ProducerRecord, u64)>,
    /// The Kafka topic of the last record, checked.
    pub(super) topics: TopicCache,
    pub(super) window: Window,
    pub(super) phase: Phase,
    /// No poll before this (after an empty poll or a retriable failure).
    pub(super) poll_retry: Option<Instant>,
    pub(super) poll_backoff: Backoff,
    /// Since when `poll` has kept failing.
    pub(super) failing_since: Option<Instant>,
    pub(super) tolerant: bool,
}

impl<'a> SourceDriver<'a> {
    /// Runs the loop. Records still in the window when it ends (a failure, a drain that timed
    /// out) are counted abandoned: they are not acknowledged upstream and come again.
    pub(super) async fn run(
        mut self,
        task: &mut dyn SourceTask,
        committer: &mut Committer,
        acks: mpsc::Receiver<Vec<Delivery<u64>>>,
        pause: &mut PauseSwitch,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let result = self.run_loop(task, committer, acks, pause, shutdown).await;
        let left = self.finalizer.len() as u64;
        self.stats.sub_unsettled(left);
        self.stats.add_abandoned(left);
        self.stats.set_window(0, 0, 0);
        result
    }

    async fn run_loop(
        &mut self,
        task: &mut dyn SourceTask,
        committer: &mut Committer,
        mut acks: mpsc::Receiver<Vec<Delivery<u64>>>,
        pause: &mut PauseSwitch,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.config.offset_flush_interval_ms.max(1),
        ));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.reset();
        let requests = committer.requests.clone();
        loop {
            self.send_pending().await?;
            let paused = pause.is_paused();
            self.flush_if_needed(paused).await?;
            self.stats.set_window(
                self.finalizer.len() as u64,
                self.window.unacked as u64,
                self.window.held_bytes as u64,
            );
            if self.phase != Phase::Running && self.finalizer.is_empty() {
                return Ok(());
            }
            let can_poll = self.can_poll(paused);
            let draining = matches!(self.phase, Phase::Draining { .. });
            let deadline = match self.phase {
                Phase::Draining { deadline } => Some(deadline),
                _ => None,
            };
            let event = tokio::select! {
                biased;
                batch = acks.recv() => Event::Acks(batch),
                () = shutdown.cancelled(), if !draining => Event::Shutdown,
                _ = tick.tick() => Event::Tick,
                () = requests.requested() => Event::Tick,
                () = sleep_until(deadline), if deadline.is_some() => Event::DrainTimeout,
                () = sleep_until(self.poll_retry), if self.poll_retry.is_some() => Event::PollRetry,
                () = pause.changed() => Event::PauseChanged,
                polled = task.poll(), if can_poll => Event::Polled(polled),
            };
            match event {
                Event::Acks(None) => {
                    return Err(Error::fatal("Kafka producer stopped unexpectedly"))
                }
                Event::Acks(Some(batch)) => self.on_acks(batch),
                Event::Shutdown => {
                    info!(connector = %self.name, in_flight = self.finalizer.len(), "draining source task");
                    let timeout = Duration::from_millis(self.config.shutdown_timeout_ms);
                    self.phase = Phase::Draining { deadline: Instant::now() + timeout };
                }
                Event::Tick => committer.commit_unless(task, &shutdown).await,
                Event::DrainTimeout => {
                    warn!(
                        connector = %self.name,
                        in_flight = self.finalizer.len(),
                        "shutdown timeout: records still unacknowledged by Kafka are not committed and will be redelivered"
                    );
                    return Ok(());
                }
                Event::PollRetry => self.poll_retry = None,
                Event::PauseChanged => {
                    info!(connector = %self.name, paused = pause.is_paused(), "source task pause switched");
                }
                Event::Polled(Ok(records)) => {
                    if !self.on_polled(records) {
                        continue;
                    }
                }
                Event::Polled(Err(e)) => self.on_poll_error(e)?,
            }
            self.finalize_ready(task, committer).await?;
        }
    }

    /// Hands polled records to the producer while the window allows. This goes on while
    /// halting: what is still pending was polled before the failed record, and must reach Kafka
    /// for the task to commit up to it.
    async fn send_pending(&mut self) -> Result<()> {
        let w = &mut self.window;
        if !self.pending.is_empty() && w.unacked < w.max_records {
            let n = (w.max_records - w.unacked).min(self.pending.len());
            let batch: Vec<(ProducerRecord, u64)> = self.pending.drain(..n).collect();
            w.unacked += batch.len();
            self.producer.send_all(batch).await?;
        }
        Ok(())
    }

    /// With a full window, at shutdown or paused, nothing more comes soon: what is in flight goes
    /// out now rather than linger.
    async fn flush_if_needed(&mut self, paused: bool) -> Result<()> {
        let draining = matches!(self.phase, Phase::Draining { .. });
        let w = &mut self.window;
        if (w.is_full() || draining || paused) && w.unacked > 0 && !w.flush_sent {
            self.producer.flush().await?;
            w.flush_sent = true;
        }
        Ok(())
    }

    fn can_poll(&self, paused: bool) -> bool {
        self.phase == Phase::Running
            && !paused
            && self.pending.is_empty()
            && self.finalizer.len() < self.window.max_records
            && self.window.held_bytes < self.window.max_bytes
            && self.poll_retry.is_none()
    }

    /// A record Kafka refused, or one that failed before Kafka with tolerance "none".
    fn halt(&mut self) {
        if self.phase == Phase::Running {
            self.phase = Phase::Halting;
        }
    }

    fn on_acks(&mut self, batch: Vec<Delivery<u64>>) {
        self.window.flush_sent = false;
        let now = Instant::now();
        let mut latency = LatencyBatch::default();
        let mut delivered = 0;
        for d in batch {
            self.window.unacked = self.window.unacked.saturating_sub(1);
            let outcome = match d.result {
                Ok(m) => {
                    delivered += 1;
                    if let Some(p) = self.finalizer.get(d.tag) {
                        latency.observe(now.saturating_duration_since(p.at));
                    }
                    Outcome::Delivered(m)
                }
                Err(e) => {
                    if !self.tolerant || e.kind() != ErrorKind::RecordRejected {
                        self.halt();
                    }
                    Outcome::Failed(Stage::KafkaProduce, e)
                }
            };
            self.finalizer.complete(d.tag, outcome);
        }
        self.stats.add_out(delivered);
        self.stats.latency().add(&latency);
    }

    /// Queues polled records; `false` when the poll was empty (nothing to finalize).
    fn on_polled(&mut self, records: Vec<SourceRecord>) -> bool {
        self.poll_backoff.reset();
        self.failing_since = None;
        if records.is_empty() {
            self.poll_retry = Some(Instant::now() + IDLE_POLL_PAUSE);
            return false;
        }
        let (total, at) = (records.len(), Instant::now());
        let mut pushed = 0;
        for mut record in records {
            self.window.held_bytes += record.size();
            if record.is_offset_only() {
                let seq = self.finalizer.push(Polled { record, at });
                pushed += 1;
                self.finalizer.complete(seq, Outcome::OffsetOnly);
                continue;
            }
            let prepared = prepare(&self.config.pipeline, &mut record, &mut self.topics);
            let seq = self.finalizer.push(Polled { record, at });
            pushed += 1;
            match prepared {
                Ok(Some(out)) => self.pending.push_back((out, seq)),
                Ok(None) => {
                    self.finalizer.complete(seq, Outcome::Dropped);
                }
                Err((stage, why)) => {
                    self.finalizer.complete(seq, Outcome::Failed(stage, Error::rejected(why)));
                    if !self.tolerant {
                        // The rest of this poll is dropped unacknowledged: the source delivers
                        // it again after the restart.
                        self.halt();
                        break;
                    }
                }
            }
        }
        // Side by side, so that a scrape in between sees as small a gap as possible.
        self.stats.add_unsettled(pushed as u64);
        self.stats.add_abandoned((total - pushed) as u64);
        self.stats.add_in(total as u64);
        true
    }

    /// A failed poll: retried after a backoff (bounded by `errors.retry_timeout_ms`) when
    /// retriable, else the task's end.
    fn on_poll_error(&mut self, e: Error) -> Result<()> {
        let (stats, backoff) = (self.stats, &mut self.poll_backoff);
        let at = poll_retry_at(self.name, self.config, stats, &mut self.failing_since, backoff, e)?;
        self.poll_retry = Some(at);
        Ok(())
    }

    /// Commits the acknowledged prefix, in poll order.
    async fn finalize_ready(
        &mut self,
        task: &mut dyn SourceTask,
        committer: &mut Committer,
    ) -> Result<()> {
        // Room for a typical run up front (records are ~250 bytes; 256 stay under the
        // allocator's mmap threshold) rather than growing from one.
        let mut ready = Vec::with_capacity(self.finalizer.len().min(256));
        while let Some((Polled { record, .. }, outcome)) = self.finalizer.pop_ready() {
            self.stats.sub_unsettled(1);
            self.window.held_bytes = self.window.held_bytes.saturating_sub(record.size());
            match finalize(committer, self.stats, self.handler, record, outcome).await {
                Ok(done) => ready.push(done),
                Err(e) => {
                    // The records before the failed one are final: commit them, then stop.
                    commit_records(task, self.name, ready).await?;
                    return Err(e);
                }
            }
        }
        commit_records(task, self.name, ready).await
    }
}

/// Passes a run of final records to the task.
async fn commit_records(
    task: &mut dyn SourceTask,
    name: &str,
    ready: Vec<(SourceRecord, Option<RecordMetadata>)>,
) -> Result<()> {
    if ready.is_empty() {
        return Ok(());
    }
    match task.commit_records(ready).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Fatal => Err(e),
        Err(e) => {
            warn!(connector = %name, error = %e.report(), "commit_record failed; continuing");
            Ok(())
        }
    }
}

/// Handles the next record of the finished prefix: delivered and dropped records are final,
/// failed ones go to the error policy (which stops the task unless it tolerates them). Returns the
/// record with its metadata for `commit_records`.
async fn finalize(
    committer: &mut Committer,
    stats: &TaskCounters,
    handler: &ErrorHandler,
    record: SourceRecord,
    outcome: Outcome,
) -> Result<(SourceRecord, Option<RecordMetadata>)> {
    let metadata = match outcome {
        Outcome::Delivered(m) => {
            stats.add_written(1);
            Some(m)
        }
        Outcome::Dropped => {
            stats.add_dropped(1);
            None
        }
        Outcome::OffsetOnly => None,
        // Only errors about the record itself are the policy's to tolerate; a broker refusing us
        // (authorization, say) stops the task whatever the policy.
        Outcome::Failed(_, e) if e.kind() != ErrorKind::RecordRejected => {
            stats.add_error();
            stats.add_abandoned(1);
            return Err(e.with_topic(record.topic.clone()));
        }
        Outcome::Failed(stage, e) => {
            let handled = handler
                .handle(FailedRecord {
                    stage,
                    error: &e,
                    topic: &record.topic,
                    partition: record.partition,
                    offset: None,
                    key: record.key.as_ref(),
                    value: record.value.as_ref(),
                    headers: &record.headers,
                })
                .await
                .inspect_err(|_| stats.add_abandoned(1))?;
            match handled {
                Handled::DeadLettered => stats.add_dead_lettered(1),
                Handled::Skipped => stats.add_skipped(1),
            }
            None
        }
    };
    if let Some(offset) = &record.source_offset {
        committer.pending.insert(record.source_partition.clone(), offset.clone());
    }
    committer.finalized_since_commit += 1;
    stats.add_committed(1);
    Ok((record, metadata))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A failed poll, for both source loops: when to poll again (after a backoff, while the failures
/// last less than `errors.retry_timeout_ms`) if it is retriable, else the task's end.
pub(super) fn poll_retry_at(
    name: &str,
    config: &SourceRuntimeConfig,
    stats: &TaskCounters,
    failing_since: &mut Option<Instant>,
    backoff: &mut Backoff,
    e: Error,
) -> Result<Instant> {
    if !e.is_retriable() {
        stats.add_error();
        return Err(e);
    }
    stats.add_retry();
    let since = *failing_since.get_or_insert_with(Instant::now);
    if config.pipeline.retry_limit().is_some_and(|limit| since.elapsed() >= limit) {
        stats.add_error();
        return Err(Error::fatal(format!(
            "poll kept failing for {:?} (errors.retry_timeout_ms): {}",
            since.elapsed(),
            e.report()
        )));
    }
    let delay = backoff.next_delay();
    warn!(connector = %name, error = %e.report(), retry_in_ms = delay.as_millis() as u64, "poll failed; retrying");
    Ok(Instant::now() + delay)
}
