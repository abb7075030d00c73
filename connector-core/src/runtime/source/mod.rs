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
//! * Paused (see [`SourceTaskRuntime::with_pause`]): no more polls; what was polled still goes to
//!   Kafka, acknowledgements are still handled and offsets still saved.
//! * Exactly once ([`SourceConnector::exactly_once`](crate::SourceConnector::exactly_once), with
//!   the Kafka offset store): a different loop (`transactional.rs`). A transactional producer
//!   (`transactional.id = "{connector}-{task}"`) is started before the offsets are read; each
//!   batch of up to `transaction_max_records` records (or what `transaction_interval_ms` brought)
//!   is written with its source offsets in one transaction, and `commit_records` follows the
//!   commit. Offset-only records ([`SourceRecord::offset_only`](crate::SourceRecord::offset_only))
//!   are never written; their offsets count, in both loops.

mod config;
mod driver;
mod transactional;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::error_policy::ErrorHandler;
use crate::kafka::{KafkaClient, Producer};
use crate::offset::{OffsetMap, OffsetStore};
use crate::runtime::finalizer::OrderedFinalizer;
use crate::runtime::stats::{TaskCounterHandle, TaskCounters, TaskKind, TaskStats};
use crate::runtime::task::{OnStarted, PauseSwitch, TaskBase};
use crate::runtime::CommitRequester;
use crate::source::{SourceTask, SourceTaskContext};
use crate::{Error, Result};

pub use config::SourceRuntimeConfig;
use driver::{Phase, SourceDriver, Window};

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
    stats: Arc<TaskCounters>,
    store: Arc<dyn OffsetStore>,
    pending: OffsetMap,
    finalized_since_commit: u64,
    /// The task's requests for an early commit (`SourceTaskContext::commit_requester`).
    requests: CommitRequester,
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
                    self.stats.add_offset_commits(1);
                    self.pending = OffsetMap::new();
                }
                Err(e) => {
                    self.stats.add_offset_commit_failures(1);
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

    /// Counts into `stats` (the connector's: this task counts into `stats.task(task_id)`).
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
        let (client, offsets) = (base.client.clone(), Arc::clone(&base.offsets));
        let stats = base.stats.task(task_id);
        stats.set_kind(TaskKind::Source);
        let counters = TaskCounterHandle::new(task_id, base.stats.custom().clone());
        let tag = |e: Error| e.with_connector(&*name).with_task(task_id);
        // Exactly once: the producer's init fences an older instance of this task and aborts
        // its open transaction BEFORE the offsets are read, so they are final.
        let txn = if config.exactly_once {
            let p =
                transactional::init_producer(client.clone(), &*offsets, &name, task_id, &config);
            Some(p.await.map_err(tag)?)
        } else {
            None
        };
        let initial = offsets.load(&name).await.map_err(tag)?;
        let requests = CommitRequester::new();
        info!(connector = %name, task = task_id, offsets = initial.len(), "starting source task");
        task.start(
            SourceTaskContext::new(Arc::clone(&name), task_id, initial)
                .with_counters(counters)
                .with_commit_requester(requests.clone()),
        )
        .await
        .map_err(tag)?;
        base.started();
        let mut committer = Committer {
            name: Arc::clone(&name),
            stats: Arc::clone(&stats),
            store: Arc::clone(&offsets),
            pending: OffsetMap::new(),
            finalized_since_commit: 0,
            requests,
        };
        let handler = ErrorHandler::new(
            config.pipeline.errors.clone(),
            Arc::clone(&name),
            task_id,
            client.clone(),
            Arc::clone(&stats),
        );
        if let Some(producer) = txn {
            let Some(store) = offsets.as_kafka() else {
                return Err(tag(Error::fatal("exactly_once needs the Kafka offset store")));
            };
            let driver = transactional::TransactionalDriver {
                name: &name,
                config: &config,
                stats: &stats,
                handler: &handler,
                store,
                producer,
            };
            let result = driver.run(&mut *task, &mut base.pause, shutdown).await.map_err(tag);
            if let Err(e) = task.stop().await {
                warn!(connector = %name, task = task_id, error = %e.report(), "source task stop failed");
            }
            match &result {
                Ok(()) => info!(connector = %name, task = task_id, "source task stopped"),
                Err(e) => {
                    warn!(connector = %name, task = task_id, error = %e.report(), "source task failed")
                }
            }
            return result;
        }
        let max_records = config.max_in_flight_records.max(1);
        stats.set_window_capacity(max_records as u64, config.max_in_flight_bytes.max(1) as u64);
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
            topics: Default::default(),
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
        match &result {
            Ok(()) => info!(connector = %name, task = task_id, "source task stopped"),
            Err(e) => {
                warn!(connector = %name, task = task_id, error = %e.report(), "source task failed")
            }
        }
        result
    }
}
