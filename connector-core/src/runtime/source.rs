//! The source runtime: drives one [`SourceTask`] into Kafka with at-least-once delivery.
//!
//! ```text
//!  poll ─► finalizer.push ─► producer (batches, acks=all) ─► delivery ─► finalizer.complete
//!                                                                         │ contiguous prefix
//!  commit_record (poll order) ◄────────────────────────────────────────────┘
//!  every offset_flush_interval_ms and at shutdown: OffsetStore::save(prefix offsets) ─► commit
//! ```
//!
//! * Acknowledgements are handled before new polls (biased select), and `poll` is dropped when an
//!   acknowledgement arrives — which is why `poll` must be cancel-safe.
//! * At most `max_in_flight_records` records are handed to the producer without an answer, and
//!   polling stops while `max_in_flight_bytes` are held. When the window is full the producer is
//!   told to send its batches now rather than wait for linger: ack-after-Kafka throughput is
//!   window / round trip, and lingering with a full window only adds to the round trip.
//! * Offsets are saved only for the unbroken prefix of acknowledged records, never past a record
//!   Kafka has not acknowledged. A record Kafka refused stops the task (error policies come on top).
//! * Shutdown (the token is cancelled): polling stops, open batches are sent, acknowledgements are
//!   awaited up to `shutdown_timeout_ms`, offsets are committed (again within
//!   `shutdown_timeout_ms`), the task is stopped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::ConfigErrors;
use crate::error_policy::{ErrorHandler, FailedRecord, Stage};
use crate::kafka::{
    validate_topic_name, Delivery, KafkaClient, Producer, ProducerRecord, TopicBudget,
};
use crate::offset::{OffsetMap, OffsetStore};
use crate::record::{RecordMetadata, SourceRecord};
use crate::runtime::finalizer::OrderedFinalizer;
use crate::runtime::pipeline::Pipeline;
use crate::runtime::stats::TaskStats;
use crate::runtime::task::{OnStarted, PauseSwitch, TaskBase};
use crate::source::{SourceTask, SourceTaskContext};
use crate::{Error, ErrorKind, Result};

/// How the source runtime bounds and paces a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRuntimeConfig {
    /// Most records handed to Kafka and not yet acknowledged. For the MQTT source this is also the
    /// most MQTT messages held unacknowledged, so size it with the broker's in-flight limit.
    #[serde(default = "default_max_in_flight_records")]
    pub max_in_flight_records: usize,
    /// Most bytes (keys, values, headers) of records polled and not yet committed.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// How often offsets of acknowledged records are saved.
    #[serde(default = "default_offset_flush_interval_ms")]
    pub offset_flush_interval_ms: u64,
    /// How long shutdown waits for in-flight records to be acknowledged; the final offset save
    /// then gets as long again.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Most distinct Kafka topics the connector (all its tasks together) writes to at once. A
    /// record for one topic more is rejected to the error policy (`errors.tolerance = "all"`:
    /// dead-lettered, naming this limit). A topic counts from its first record until it has gone
    /// `kafka_topic_idle_ms` without one. Bounds the per-topic state a `kafka_topic` template fed
    /// by publishers can create.
    #[serde(default = "default_max_kafka_topics")]
    pub max_kafka_topics: usize,
    /// Milliseconds without a record after which a Kafka topic is forgotten: its producer and
    /// partition state and its cached metadata are dropped, and it no longer counts toward
    /// `max_kafka_topics`.
    #[serde(default = "default_kafka_topic_idle_ms")]
    pub kafka_topic_idle_ms: u64,
    /// The count behind `max_kafka_topics`, shared by the connector's tasks (set by the runner;
    /// `None`: each task counts alone).
    #[serde(skip)]
    #[schemars(skip)]
    pub topic_budget: Option<TopicBudget>,
    /// Transforms, converters and the error policy (the connector's `errors`, `transforms`,
    /// `key_converter`, `value_converter` keys).
    #[serde(skip)]
    #[schemars(skip)]
    pub pipeline: Pipeline,
}

fn default_max_in_flight_records() -> usize {
    10_000
}
fn default_max_in_flight_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_offset_flush_interval_ms() -> u64 {
    5_000
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_max_kafka_topics() -> usize {
    10_000
}
fn default_kafka_topic_idle_ms() -> u64 {
    300_000
}

impl Default for SourceRuntimeConfig {
    fn default() -> Self {
        Self {
            max_in_flight_records: default_max_in_flight_records(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            offset_flush_interval_ms: default_offset_flush_interval_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            max_kafka_topics: default_max_kafka_topics(),
            kafka_topic_idle_ms: default_kafka_topic_idle_ms(),
            topic_budget: None,
            pipeline: Pipeline::default(),
        }
    }
}

impl SourceRuntimeConfig {
    /// Checks the values; paths are relative to this table.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.max_in_flight_records == 0 {
            e.push("max_in_flight_records", "must be at least 1");
        }
        if self.max_in_flight_bytes < 1024 {
            e.push("max_in_flight_bytes", "must be at least 1024");
        }
        if self.offset_flush_interval_ms == 0 {
            e.push("offset_flush_interval_ms", "must be at least 1");
        }
        if self.max_kafka_topics == 0 {
            e.push("max_kafka_topics", "must be at least 1");
        }
        if self.kafka_topic_idle_ms < 1000 {
            e.push("kafka_topic_idle_ms", "must be at least 1000");
        }
        e
    }

    /// The connector's topic budget: the shared one, or a new one from the limits.
    pub fn topic_budget(&self) -> TopicBudget {
        self.topic_budget.clone().unwrap_or_else(|| {
            TopicBudget::new(
                self.max_kafka_topics.max(1),
                Duration::from_millis(self.kafka_topic_idle_ms.max(1)),
            )
        })
    }
}

/// Pause before polling again after `poll` returned nothing.
const IDLE_POLL_PAUSE: Duration = Duration::from_millis(10);

/// Runs one source task until shutdown or a fatal error.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::runtime::SourceTaskRuntime;
/// use connector_core::{FileOffsetStore, SourceTask};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(task: Box<dyn SourceTask>) -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let offsets = Arc::new(FileOffsetStore::open("offsets.json").await?);
/// let shutdown = CancellationToken::new();
/// SourceTaskRuntime::new("my-source", 0, task, client, offsets).run(shutdown).await
/// # }
/// ```
pub struct SourceTaskRuntime {
    base: TaskBase,
    task: Box<dyn SourceTask>,
    config: SourceRuntimeConfig,
}

impl std::fmt::Debug for SourceTaskRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceTaskRuntime")
            .field("name", &self.base.name)
            .field("task_id", &self.base.task_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where a finalized record's offsets go, and how many records await an offset commit.
struct Committer {
    name: Arc<str>,
    store: Arc<dyn OffsetStore>,
    pending: OffsetMap,
    finalized_since_commit: u64,
}

impl Committer {
    /// Saves the offsets of the acknowledged prefix, then tells the task.
    async fn commit(&mut self, task: &mut dyn SourceTask) {
        self.commit_unless(task, &CancellationToken::new()).await;
    }

    /// As [`commit`](Self::commit), but gives up on the save when `stop` is cancelled (the offsets
    /// stay pending for the final commit), so a save stuck on an unreachable Kafka does not hold
    /// up shutdown.
    async fn commit_unless(&mut self, task: &mut dyn SourceTask, stop: &CancellationToken) {
        if !self.pending.is_empty() {
            let saved = tokio::select! {
                r = self.store.save(&self.name, &self.pending) => r,
                () = stop.cancelled() => return,
            };
            match saved {
                Ok(()) => {
                    debug!(connector = %self.name, partitions = self.pending.len(), "source offsets committed");
                    self.pending = OffsetMap::new();
                }
                Err(e) => {
                    warn!(connector = %self.name, error = %e.report(), "could not save source offsets; will retry");
                    return;
                }
            }
        }
        if self.finalized_since_commit > 0 {
            self.finalized_since_commit = 0;
            if let Err(e) = task.commit().await {
                warn!(connector = %self.name, error = %e.report(), "source task commit failed");
            }
        }
    }
}

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

impl SourceTaskRuntime {
    /// A runtime for task `task_id` of connector `name`, with default limits.
    pub fn new(
        name: impl Into<Arc<str>>,
        task_id: usize,
        task: Box<dyn SourceTask>,
        client: KafkaClient,
        offsets: Arc<dyn OffsetStore>,
    ) -> Self {
        let base = TaskBase::new(name, task_id, client, offsets);
        Self { base, task, config: SourceRuntimeConfig::default() }
    }

    /// Replaces the limits.
    pub fn with_config(mut self, config: SourceRuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Uses `stats` for the counters (e.g. to share one reporter across tasks).
    pub fn with_stats(mut self, stats: Arc<TaskStats>) -> Self {
        self.base.stats = stats;
        self
    }

    /// Pauses the task while `paused` holds `true`: it stops calling `poll`, but goes on
    /// receiving Kafka's acknowledgements, calling `commit_record` and saving offsets. (How a
    /// [`Worker`](crate::runtime::Worker) pauses a connector.)
    ///
    /// ```no_run
    /// # fn example(runtime: connector_core::runtime::SourceTaskRuntime) {
    /// let (pause, paused) = tokio::sync::watch::channel(false);
    /// let runtime = runtime.with_pause(paused);
    /// pause.send_replace(true); // no more polls until `false`
    /// # }
    /// ```
    pub fn with_pause(mut self, paused: watch::Receiver<bool>) -> Self {
        self.base.pause = PauseSwitch::new(paused);
        self
    }

    /// Calls `f` once the task's `start` succeeded.
    pub(crate) fn on_started(mut self, f: OnStarted) -> Self {
        self.base.on_started = Some(f);
        self
    }

    /// The task's live counters.
    pub fn stats(&self) -> Arc<TaskStats> {
        Arc::clone(&self.base.stats)
    }

    /// Starts the task and runs it until `shutdown` is cancelled (then drains and commits) or a
    /// fatal error happens (then commits what was acknowledged and returns the error).
    ///
    /// # Errors
    /// The fatal error that stopped the task, with connector and task in its context.
    ///
    /// # Cancellation
    /// Cancel `shutdown` for a graceful stop. Dropping the future instead is a crash: nothing more
    /// is committed, and uncommitted records are redelivered on restart.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self { mut base, mut task, config } = self;
        let (name, task_id) = (Arc::clone(&base.name), base.task_id);
        let (client, offsets, stats) =
            (base.client.clone(), Arc::clone(&base.offsets), Arc::clone(&base.stats));
        let tag = |e: Error| e.with_connector(&*name).with_task(task_id);
        let initial = offsets.load(&name).await.map_err(tag)?;
        info!(connector = %name, task = task_id, offsets = initial.len(), "starting source task");
        task.start(SourceTaskContext::new(Arc::clone(&name), task_id, initial))
            .await
            .map_err(tag)?;
        base.started();
        let mut committer = Committer {
            name: Arc::clone(&name),
            store: offsets,
            pending: OffsetMap::new(),
            finalized_since_commit: 0,
        };
        let handler = ErrorHandler::new(
            config.pipeline.errors.clone(),
            Arc::clone(&name),
            task_id,
            client.clone(),
            Arc::clone(&stats),
        );
        let max_records = config.max_in_flight_records.max(1);
        let (producer, acks) =
            Producer::<u64>::with_topic_budget(client, max_records, config.topic_budget());
        let driver = SourceDriver {
            name: &name,
            config: &config,
            stats: &stats,
            handler: &handler,
            producer,
            finalizer: OrderedFinalizer::new(),
            pending: VecDeque::new(),
            window: Window {
                max_records,
                max_bytes: config.max_in_flight_bytes.max(1),
                unacked: 0,
                held_bytes: 0,
                flush_sent: false,
            },
            phase: Phase::Running,
            poll_retry: None,
            poll_backoff: Backoff::new(config.pipeline.task_backoff()),
            failing_since: None,
            tolerant: config.pipeline.errors.tolerance == crate::Tolerance::All,
        };
        let result = driver
            .run(&mut *task, &mut committer, acks, &mut base.pause, shutdown)
            .await
            .map_err(tag);
        // The final commit is a step of the drain: bounded by the shutdown timeout too.
        let timeout = Duration::from_millis(config.shutdown_timeout_ms);
        if tokio::time::timeout(timeout, committer.commit(&mut *task)).await.is_err() {
            warn!(connector = %name, task = task_id, ?timeout, "final offset commit timed out (shutdown_timeout_ms); records after the last commit are delivered again after the restart");
        }
        if let Err(e) = task.stop().await {
            warn!(connector = %name, task = task_id, error = %e.report(), "source task stop failed");
        }
        stats.set_in_flight(0);
        match &result {
            Ok(()) => info!(connector = %name, task = task_id, "source task stopped"),
            Err(e) => {
                warn!(connector = %name, task = task_id, error = %e.report(), "source task failed")
            }
        }
        result
    }
}

/// What became of a polled record.
enum Outcome {
    /// Kafka has it.
    Delivered(RecordMetadata),
    /// A transform dropped it.
    Dropped,
    /// It failed at `Stage`; the error policy decides.
    Failed(Stage, Error),
}

/// The record as it goes to Kafka, or why it does not.
fn prepare(
    pipeline: &Pipeline,
    record: &mut SourceRecord,
) -> Result<Option<ProducerRecord>, (Stage, String)> {
    if let Some(why) = record.rejected.take() {
        return Err((Stage::TaskPoll, why));
    }
    let Some(out) = pipeline.source(record)? else { return Ok(None) };
    validate_topic_name(&out.topic).map_err(|why| {
        (Stage::KafkaProduce, format!("cannot write to Kafka topic {:?}: {why}", out.topic))
    })?;
    Ok(Some(out))
}

/// How many records and bytes are out, and whether the producer was told to send them now.
struct Window {
    max_records: usize,
    max_bytes: usize,
    /// Records handed to the producer and not yet answered.
    unacked: usize,
    /// Bytes of records polled and not yet final.
    held_bytes: usize,
    /// A flush was requested since the last acknowledgement.
    flush_sent: bool,
}

impl Window {
    fn is_full(&self) -> bool {
        self.unacked >= self.max_records || self.held_bytes >= self.max_bytes
    }
}

/// Where the task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
struct SourceDriver<'a> {
    name: &'a Arc<str>,
    config: &'a SourceRuntimeConfig,
    stats: &'a TaskStats,
    handler: &'a ErrorHandler,
    producer: Producer<u64>,
    finalizer: OrderedFinalizer<SourceRecord, Outcome>,
    /// Polled records waiting for room in the window.
    pending: VecDeque<(ProducerRecord, u64)>,
    window: Window,
    phase: Phase,
    /// No poll before this (after an empty poll or a retriable failure).
    poll_retry: Option<Instant>,
    poll_backoff: Backoff,
    /// Since when `poll` has kept failing.
    failing_since: Option<Instant>,
    tolerant: bool,
}

impl<'a> SourceDriver<'a> {
    /// Runs the loop.
    async fn run(
        mut self,
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
        loop {
            self.send_pending().await?;
            let paused = pause.is_paused();
            self.flush_if_needed(paused).await?;
            self.stats.set_in_flight(self.finalizer.len() as u64);
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
        for d in batch {
            self.window.unacked = self.window.unacked.saturating_sub(1);
            let outcome = match d.result {
                Ok(m) => {
                    self.stats.add_out(1);
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
    }

    /// Queues polled records; `false` when the poll was empty (nothing to finalize).
    fn on_polled(&mut self, records: Vec<SourceRecord>) -> bool {
        self.poll_backoff.reset();
        self.failing_since = None;
        if records.is_empty() {
            self.poll_retry = Some(Instant::now() + IDLE_POLL_PAUSE);
            return false;
        }
        self.stats.add_in(records.len() as u64);
        for mut record in records {
            self.window.held_bytes += record.size();
            let prepared = prepare(&self.config.pipeline, &mut record);
            let seq = self.finalizer.push(record);
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
        true
    }

    /// A failed poll: retried after a backoff (bounded by `errors.retry_timeout_ms`) when
    /// retriable, else the task's end.
    fn on_poll_error(&mut self, e: Error) -> Result<()> {
        if !e.is_retriable() {
            self.stats.add_error();
            return Err(e);
        }
        self.stats.add_retry();
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if self.config.pipeline.retry_limit().is_some_and(|limit| since.elapsed() >= limit) {
            self.stats.add_error();
            return Err(Error::fatal(format!(
                "poll kept failing for {:?} (errors.retry_timeout_ms): {}",
                since.elapsed(),
                e.report()
            )));
        }
        let delay = self.poll_backoff.next_delay();
        warn!(connector = %self.name, error = %e.report(), retry_in_ms = delay.as_millis() as u64, "poll failed; retrying");
        self.poll_retry = Some(Instant::now() + delay);
        Ok(())
    }

    /// Commits the acknowledged prefix, in poll order.
    async fn finalize_ready(
        &mut self,
        task: &mut dyn SourceTask,
        committer: &mut Committer,
    ) -> Result<()> {
        let mut ready = Vec::new();
        while let Some((record, outcome)) = self.finalizer.pop_ready() {
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
    stats: &TaskStats,
    handler: &ErrorHandler,
    record: SourceRecord,
    outcome: Outcome,
) -> Result<(SourceRecord, Option<RecordMetadata>)> {
    let metadata = match outcome {
        Outcome::Delivered(m) => Some(m),
        Outcome::Dropped => None,
        // Only errors about the record itself are the policy's to tolerate; a broker refusing us
        // (authorization, say) stops the task whatever the policy.
        Outcome::Failed(_, e) if e.kind() != ErrorKind::RecordRejected => {
            stats.add_error();
            return Err(e.with_topic(record.topic.clone()));
        }
        Outcome::Failed(stage, e) => {
            handler
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
                .await?;
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
