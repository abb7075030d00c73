//! The sink runtime: reads Kafka partitions into one [`SinkTask`] with at-least-once delivery.
//!
//! ```text
//!  per partition: fetch from the committed offset (else earliest/latest) ─► bounded channel
//!        ─► put(records) ── retriable error: same records again after backoff
//!  when the task requests it (acknowledgements arrived), at the latest every commit_interval_ms,
//!  and at shutdown:
//!        offsets after the last put ─► pre_commit ─► OffsetStore::save(what it returned)
//!        (one save in flight at a time, in its own task beside put; requests coalesced)
//! ```
//!
//! * Prefetch is bounded: each partition's fetcher waits once `prefetch_batches` fetched batches
//!   are queued, so memory is at most partitions × (prefetch + 1) × `fetch_max_bytes`.
//! * The runtime commits exactly what `pre_commit` returned, clipped to what it offered and never
//!   moving backwards.
//! * A stored offset that no longer exists (retention removed it) is reset to `start` (earliest or
//!   latest) with a warning.
//! * `start = "latest"` is resolved and saved before the first record reaches the task.
//! * Partitions added while running (sent by the connector's metadata watcher) are opened and
//!   read from their committed offset, else from their earliest offset (they are new: records
//!   written before the refresh found them must not be skipped, whatever `start` says).
//! * Shutdown: fetching stops (a `put` still waiting is dropped); the save in flight, `flush` and
//!   a final `pre_commit` and commit share one `shutdown_timeout_ms` deadline; then `close` and
//!   `stop`.
//! * Paused (see [`SinkTaskRuntime::with_pause`]): no fetched record is taken and nothing more is
//!   put; commits go on.
//! * Epochs ([`SinkTaskRuntime::run_epochs`], how consumer group members run): one task
//!   instance, `start`ed once, `open`s each assignment's partitions, drains and commits them as
//!   at shutdown when the assignment ends, `close`s them, and is `stop`ped once at the end.

mod commit;
mod config;
mod deliver;
mod fetch;
mod group;

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error_policy::ErrorHandler;
use crate::kafka::KafkaClient;
use crate::offset::{OffsetMap, OffsetStore};
use crate::record::{SinkRecord, TopicPartition};
use crate::runtime::stats::{TaskCounterHandle, TaskCounters, TaskKind, TaskStats};
use crate::runtime::task::{OnStarted, PauseSwitch, TaskBase};
use crate::runtime::CommitRequester;
use crate::sink::{SinkTask, SinkTaskContext, SinkTaskState, StartFrom};
use crate::{Error, Result};

use commit::{
    finish_with_save, persist_resolved_starts, start_commit, wait_save, InFlightSave, Lag, Progress,
};
pub use config::SinkRuntimeConfig;
use deliver::{deliver, queue_for_put};
use fetch::{fetch_loop, initial_offset, isolation, FetchMsg};
pub(crate) use group::run_in_group;
pub use group::SinkGroupSettings;

/// Runs one sink task over a fixed set of partitions until shutdown or a fatal error.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::kafka::{KafkaClient, KafkaConfig};
/// use connector_core::runtime::SinkTaskRuntime;
/// use connector_core::{FileOffsetStore, SinkTask, TopicPartition};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(task: Box<dyn SinkTask>) -> connector_core::Result<()> {
/// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
/// let offsets = Arc::new(FileOffsetStore::open("offsets.json").await?);
/// let partitions = vec![TopicPartition::new("commands", 0)];
/// SinkTaskRuntime::new("my-sink", 0, task, client, offsets, partitions)
///     .run(CancellationToken::new())
///     .await
/// # }
/// ```
pub struct SinkTaskRuntime {
    base: TaskBase,
    task: Box<dyn SinkTask>,
    partitions: Vec<TopicPartition>,
    config: SinkRuntimeConfig,
    added: Option<mpsc::Receiver<Vec<TopicPartition>>>,
}

impl std::fmt::Debug for SinkTaskRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkTaskRuntime")
            .field("name", &self.base.name)
            .field("task_id", &self.base.task_id)
            .field("partitions", &self.partitions)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum Event {
    Fetched(Option<FetchMsg>),
    /// Time to commit: the interval elapsed or the task asked.
    Tick,
    /// The in-flight offset save ended.
    Saved(Result<InFlightSave>),
    /// Partitions were added to a topic (`None`: no more will be).
    Added(Option<Vec<TopicPartition>>),
    /// Put the next piece of the fetched batch.
    PutNext,
    /// The task was paused or resumed.
    PauseChanged,
    Shutdown,
}

impl SinkTaskRuntime {
    /// A runtime for task `task_id` of connector `name`, reading `partitions`.
    pub fn new(
        name: impl Into<Arc<str>>,
        task_id: usize,
        task: Box<dyn SinkTask>,
        client: KafkaClient,
        offsets: Arc<dyn OffsetStore>,
        partitions: Vec<TopicPartition>,
    ) -> Self {
        let base = TaskBase::new(name, task_id, client, offsets);
        Self { base, task, partitions, config: SinkRuntimeConfig::default(), added: None }
    }

    /// Partitions sent on `added` while the task runs are read too (from their committed offset,
    /// else by the `start` rule), after `open` is called with them: how partitions added to a
    /// topic are picked up.
    pub fn with_added_partitions(mut self, added: mpsc::Receiver<Vec<TopicPartition>>) -> Self {
        self.added = Some(added);
        self
    }

    /// Replaces the settings.
    pub fn with_config(mut self, config: SinkRuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Counts into `stats` (the connector's: this task counts into `stats.task(task_id)`).
    pub fn with_stats(mut self, stats: Arc<TaskStats>) -> Self {
        self.base.stats = stats;
        self
    }

    /// Pauses the task while `paused` holds `true`: it stops taking fetched records and calling
    /// `put` (the fetchers stop once their bounded queue is full), but goes on committing what
    /// was delivered (`pre_commit`, offset saves). (How a [`Worker`](crate::runtime::Worker)
    /// pauses a connector.)
    ///
    /// ```no_run
    /// # fn example(runtime: connector_core::runtime::SinkTaskRuntime) {
    /// let (pause, paused) = tokio::sync::watch::channel(false);
    /// let runtime = runtime.with_pause(paused);
    /// pause.send_replace(true); // no more `put` until `false`
    /// # }
    /// ```
    pub fn with_pause(mut self, paused: watch::Receiver<bool>) -> Self {
        self.base.pause = PauseSwitch::new(paused);
        self
    }

    /// Calls `f` once the task's `start` and `open` succeeded.
    pub(crate) fn on_started(mut self, f: OnStarted) -> Self {
        self.base.on_started = Some(f);
        self
    }

    /// The task's live counters.
    pub fn stats(&self) -> Arc<TaskStats> {
        Arc::clone(&self.base.stats)
    }

    /// Starts the task and runs it until `shutdown` is cancelled (then commits what `pre_commit`
    /// allows) or a fatal error happens.
    ///
    /// # Errors
    /// The fatal error that stopped the task, with connector and task in its context.
    ///
    /// # Cancellation
    /// Cancel `shutdown` for a graceful stop. Dropping the future is a crash: nothing more is
    /// committed, and records after the last commit are delivered again on restart.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self { mut base, mut task, partitions, config, mut added } = self;
        let env = Env::new(&base, config);
        let tag = |e: Error| env.tag(e);
        let offsets = Arc::clone(&base.offsets);
        let progress = env.prepare(&partitions, &offsets).await.map_err(tag)?;
        let (ctx, commit_requests) = env.context();
        task.start(ctx).await.map_err(tag)?;
        let TaskBase { pause, on_started, .. } = &mut base;
        let epoch = EpochRun {
            store: &offsets,
            added: &mut added,
            pause,
            commit_requests: &commit_requests,
            on_open: on_started.take(),
            put_grace: None,
        };
        let result = env.epoch(&mut *task, &partitions, progress, epoch, shutdown).await;
        env.stop(&mut *task, result).await
    }

    /// Runs the task through a sequence of assignments ("epochs", one per consumer-group
    /// generation): `start` once; then for every [`SinkEpoch`] received, its partitions are
    /// `open`ed and read from `offsets` of that epoch (else by the `start` rule) until its `end`
    /// token is cancelled, drained (fetching stops; a `put` in progress may finish within half
    /// `shutdown_timeout_ms`, so that what it handed on is committed rather than repeated by the
    /// partition's next owner; then `flush`, `pre_commit` and the final commit within
    /// `shutdown_timeout_ms`) and `close`d, and `closed` is told; the SAME task
    /// instance then opens the next epoch's partitions (Kafka Connect's `open`/`close`
    /// contract). `stop` is called once, when `shutdown` is cancelled or `epochs` is closed.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use connector_core::runtime::{SinkEpoch, SinkTaskRuntime};
    /// use connector_core::{MemoryOffsetStore, TopicPartition};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # async fn example(runtime: SinkTaskRuntime) -> connector_core::Result<()> {
    /// let (epochs, rx) = tokio::sync::mpsc::channel(1);
    /// let shutdown = CancellationToken::new();
    /// let running = tokio::spawn(runtime.run_epochs(rx, shutdown.clone()));
    /// let (epoch, closed) = SinkEpoch::new(
    ///     vec![TopicPartition::new("commands", 0)],
    ///     Arc::new(MemoryOffsetStore::new()),
    /// );
    /// let end = epoch.end.clone();
    /// epochs.send(epoch).await.ok();
    /// end.cancel(); // revoke: drain, commit, close
    /// let _ = closed.await;
    /// shutdown.cancel(); // then stop
    /// # let _ = running.await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The fatal error that stopped the task (its last epoch is drained and closed first).
    pub async fn run_epochs(
        self,
        mut epochs: mpsc::Receiver<SinkEpoch>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let Self { mut base, mut task, config, .. } = self;
        let env = Env::new(&base, config);
        let (ctx, commit_requests) = env.context();
        task.start(ctx).await.map_err(|e| env.tag(e))?;
        base.started();
        let result = loop {
            let epoch = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                e = epochs.recv() => match e {
                    Some(e) => e,
                    None => break Ok(()),
                },
            };
            let SinkEpoch { partitions, offsets, end, closed } = epoch;
            // The epoch ends on its own token or on shutdown.
            let stop = shutdown.child_token();
            let forward = async {
                end.cancelled().await;
                stop.cancel();
                std::future::pending::<()>().await
            };
            let run = async {
                if partitions.is_empty() {
                    // Nothing to read in this generation: wait for the next one.
                    stop.cancelled().await;
                    return Ok(());
                }
                // Loading offsets may wait on an unreachable Kafka: an epoch ended meanwhile
                // simply opens nothing.
                let progress = tokio::select! {
                    p = env.prepare(&partitions, &offsets) => p.map_err(|e| env.tag(e))?,
                    () = stop.cancelled() => return Ok(()),
                };
                let run = EpochRun {
                    store: &offsets,
                    added: &mut None,
                    pause: &mut base.pause,
                    commit_requests: &commit_requests,
                    on_open: None,
                    put_grace: Some(Duration::from_millis(env.config.shutdown_timeout_ms / 2)),
                };
                env.epoch(&mut *task, &partitions, progress, run, stop.clone()).await
            };
            let outcome = tokio::select! {
                r = run => r,
                () = forward => Ok(()),
            };
            let failed = outcome.as_ref().err().cloned();
            let _ = closed.send(outcome);
            if let Some(e) = failed {
                break Err(e);
            }
        };
        env.stop(&mut *task, result).await
    }
}

/// One assignment of partitions to a task run by [`SinkTaskRuntime::run_epochs`].
#[derive(Debug)]
pub struct SinkEpoch {
    /// The partitions the task reads in this epoch (and no other).
    pub partitions: Vec<TopicPartition>,
    /// Where this epoch's offsets are loaded from and committed to (for a consumer group, a
    /// `GroupOffsetStore` over this generation).
    pub offsets: Arc<dyn OffsetStore>,
    /// Cancel to end the epoch (revocation): the task drains, commits and closes its partitions.
    pub end: CancellationToken,
    /// Told once the epoch's partitions are closed: `Err` when the task failed (it then stops).
    pub closed: oneshot::Sender<Result<()>>,
}

impl SinkEpoch {
    /// An epoch over `partitions` with a fresh `end` token, and the receiver `closed` reports on.
    pub fn new(
        partitions: Vec<TopicPartition>,
        offsets: Arc<dyn OffsetStore>,
    ) -> (Self, oneshot::Receiver<Result<()>>) {
        let (closed, rx) = oneshot::channel();
        (Self { partitions, offsets, end: CancellationToken::new(), closed }, rx)
    }
}

/// What every epoch of one task shares: identity, client, counters, settings, error policy.
struct Env {
    name: Arc<str>,
    /// The runner's offset store, where the task's own state lives (`SinkTaskContext::state`).
    state: Arc<dyn OffsetStore>,
    task_id: usize,
    client: KafkaClient,
    stats: Arc<TaskCounters>,
    counters: TaskCounterHandle,
    config: SinkRuntimeConfig,
    handler: ErrorHandler,
}

/// What one epoch reads with besides its partitions.
struct EpochRun<'a> {
    store: &'a Arc<dyn OffsetStore>,
    added: &'a mut Option<mpsc::Receiver<Vec<TopicPartition>>>,
    pause: &'a mut PauseSwitch,
    commit_requests: &'a CommitRequester,
    /// Called once `open` succeeded.
    on_open: Option<OnStarted>,
    /// `Some`: when the epoch ends, a `put` in progress may finish within this grace (what it
    /// handed on is then committed, not repeated by the partition's next owner); `None`: it is
    /// dropped at once.
    put_grace: Option<Duration>,
}

impl Env {
    fn new(base: &TaskBase, config: SinkRuntimeConfig) -> Self {
        let stats = base.stats.task(base.task_id);
        stats.set_kind(TaskKind::Sink);
        let handler = ErrorHandler::new(
            config.pipeline.errors.clone(),
            Arc::clone(&base.name),
            base.task_id,
            base.client.clone(),
            Arc::clone(&stats),
        );
        Self {
            name: Arc::clone(&base.name),
            state: Arc::clone(&base.offsets),
            task_id: base.task_id,
            client: base.client.clone(),
            stats,
            counters: TaskCounterHandle::new(base.task_id, base.stats.custom().clone()),
            config,
            handler,
        }
    }

    fn tag(&self, e: Error) -> Error {
        e.with_connector(&*self.name).with_task(self.task_id)
    }

    /// The context `start` gets, and the commit requests it makes.
    fn context(&self) -> (SinkTaskContext, CommitRequester) {
        // Records the destination refuses after `put` go to the same error policy.
        let ctx = SinkTaskContext::new(Arc::clone(&self.name), self.task_id)
            .with_errant_record_reporter(Arc::new(self.handler.clone()))
            .with_counters(self.counters.clone())
            .with_state(SinkTaskState::new(Arc::clone(&self.state), &self.name));
        let requests = ctx.commit_requester();
        (ctx, requests)
    }

    /// Where each partition starts: its committed offset in `offsets`, else the `start` rule
    /// (a resolved `latest` saved before any record is read).
    async fn prepare(
        &self,
        partitions: &[TopicPartition],
        offsets: &Arc<dyn OffsetStore>,
    ) -> Result<Progress> {
        let (name, client, config) = (&self.name, &self.client, &self.config);
        let stored = offsets.load(name).await?;
        let mut progress = Progress::new();
        let mut resolved = OffsetMap::new();
        for tp in partitions {
            let start = match stored.kafka_offset(tp) {
                Some(o) => o,
                None => {
                    let o =
                        initial_offset(client, tp, config.start, isolation(config.read_committed))
                            .await?;
                    resolved.insert_kafka(tp, o);
                    o
                }
            };
            progress.committed.insert(tp.clone(), start);
            progress.consumed.insert(tp.clone(), start);
        }
        persist_resolved_starts(name, &**offsets, config.start, client, &resolved).await?;
        info!(connector = %name, task = self.task_id, partitions = ?progress.committed, "starting sink task");
        Ok(progress)
    }

    /// `open`, the fetch/put/commit loop until `stop`, the drain, then `close` of every
    /// partition read (those added while running included). Errors are tagged.
    async fn epoch(
        &self,
        task: &mut dyn SinkTask,
        partitions: &[TopicPartition],
        mut progress: Progress,
        run: EpochRun<'_>,
        stop: CancellationToken,
    ) -> Result<()> {
        let EpochRun { store, added, pause, commit_requests, on_open, put_grace } = run;
        // With a grace: a token of its own, cancelled `grace` after `stop`; the guard ends the
        // timer however the epoch ends (dropped included).
        let (put_stop, _end_timer) = match put_grace {
            None => (stop.clone(), None),
            Some(grace) => {
                let (put_stop, stop) = (CancellationToken::new(), stop.clone());
                let timer = put_stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = timer.cancelled() => {}
                        () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                            timer.cancel();
                        }
                    }
                });
                let guard = put_stop.clone().drop_guard();
                (put_stop, Some(guard))
            }
        };
        let result = match task.open(partitions).await {
            Ok(()) => {
                if let Some(f) = on_open {
                    f();
                }
                let driver = SinkDriver {
                    name: &self.name,
                    client: &self.client,
                    store,
                    config: &self.config,
                    stats: &self.stats,
                    handler: &self.handler,
                    progress: &mut progress,
                    fetchers: JoinSet::new(),
                    stop_fetchers: stop.child_token(),
                    put_stop: put_stop.clone(),
                    fetch_tx: None,
                    saving: None,
                    queued: VecDeque::new(),
                };
                driver.run(task, commit_requests, added, pause, stop).await
            }
            Err(e) => Err(e),
        }
        .map_err(|e| self.tag(e));
        let mut reading: Vec<TopicPartition> = progress.consumed.keys().cloned().collect();
        reading.sort();
        self.stats.close_partitions(&reading);
        if let Err(e) = task.close(&reading).await {
            warn!(connector = %self.name, error = %e.report(), "sink task close failed");
        }
        result
    }

    /// `stop`, and the log line of how the task ended.
    async fn stop(&self, task: &mut dyn SinkTask, result: Result<()>) -> Result<()> {
        let (name, task_id) = (&self.name, self.task_id);
        if let Err(e) = task.stop().await {
            warn!(connector = %name, error = %e.report(), "sink task stop failed");
        }
        match &result {
            Ok(()) => info!(connector = %name, task = task_id, "sink task stopped"),
            Err(e) => {
                warn!(connector = %name, task = task_id, error = %e.report(), "sink task failed")
            }
        }
        result
    }
}

/// The fetch/put/commit loop's state: the fetchers, the offset save in flight, and the fetched
/// batch being put.
struct SinkDriver<'a> {
    name: &'a Arc<str>,
    client: &'a KafkaClient,
    store: &'a Arc<dyn OffsetStore>,
    config: &'a SinkRuntimeConfig,
    stats: &'a TaskCounters,
    handler: &'a ErrorHandler,
    progress: &'a mut Progress,
    fetchers: JoinSet<()>,
    stop_fetchers: CancellationToken,
    /// Cancels a `put` in progress (the loop's stop, or a grace after it).
    put_stop: CancellationToken,
    /// Kept while partitions can be added: their fetchers get a clone.
    fetch_tx: Option<mpsc::Sender<FetchMsg>>,
    /// One offset save in flight at a time, in its own task so that `put` goes on meanwhile.
    /// Commits start on the task's request (acknowledgements arrived) or at the latest every
    /// commit_interval_ms; requests made during a save are coalesced into one commit after it.
    saving: Option<InFlightSave>,
    /// The fetched batch being put, in pieces of at most max_put_records: between two `put`s
    /// the loop starts commits, so acknowledged records need not wait for a whole fetch to be
    /// put. Only one fetched batch is held here (nothing is received while pieces are left).
    queued: VecDeque<(TopicPartition, Vec<SinkRecord>)>,
}

/// What the loop does after an event.
type Step = ControlFlow<Result<()>>;

impl<'a> SinkDriver<'a> {
    /// Runs the loop until shutdown or a fatal error, then the bounded final commit.
    async fn run(
        mut self,
        task: &mut dyn SinkTask,
        commit_requests: &CommitRequester,
        added: &mut Option<mpsc::Receiver<Vec<TopicPartition>>>,
        pause: &mut PauseSwitch,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let config = self.config;
        let capacity = config.prefetch_batches.max(1) * self.progress.consumed.len().max(1);
        let (tx, mut rx) = mpsc::channel::<FetchMsg>(capacity);
        let reading: Vec<(TopicPartition, i64)> =
            self.progress.consumed.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
        for (tp, offset) in reading {
            let lag = self.stats.open_partition(&tp, offset);
            if let Some(cell) = &lag {
                self.progress.lag.insert(tp.clone(), Lag::new(Arc::clone(cell)));
            }
            self.fetchers.spawn(fetch_loop(
                self.client.clone(),
                tp,
                offset,
                (config.start, isolation(config.read_committed)),
                tx.clone(),
                self.stop_fetchers.clone(),
                lag,
            ));
        }
        self.fetch_tx = added.is_some().then_some(tx);
        let mut tick =
            tokio::time::interval(Duration::from_millis(config.commit_interval_ms.max(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.reset();

        let outcome = loop {
            let paused = pause.is_paused();
            let idle = self.saving.is_none();
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => Event::Shutdown,
                saved = wait_save(&mut self.saving), if !idle => Event::Saved(saved),
                _ = tick.tick(), if idle => Event::Tick,
                () = commit_requests.requested(), if idle => Event::Tick,
                parts = recv_added(added) => Event::Added(parts),
                () = pause.changed() => Event::PauseChanged,
                () = std::future::ready(()), if !paused && !self.queued.is_empty() => Event::PutNext,
                msg = rx.recv(), if !paused => Event::Fetched(msg),
            };
            let step = match event {
                Event::Shutdown => Step::Break(Ok(())),
                Event::PauseChanged => {
                    info!(connector = %self.name, paused = pause.is_paused(), "sink task pause switched");
                    Step::Continue(())
                }
                Event::Added(None) => {
                    *added = None;
                    Step::Continue(())
                }
                Event::Added(Some(parts)) => self.on_added(task, parts, &shutdown).await,
                Event::Tick => self.on_tick(task, &shutdown).await,
                Event::Saved(saved) => {
                    self.saving = None;
                    match saved.and_then(|s| s.apply(self.name, self.stats, self.progress)) {
                        Ok(()) => Step::Continue(()),
                        Err(e) => Step::Break(Err(e)),
                    }
                }
                Event::Fetched(msg) => self.on_fetched(msg),
                Event::PutNext => {
                    let put_stop = self.put_stop.clone();
                    self.put_next(task, &put_stop).await
                }
            };
            if let Step::Break(outcome) = step {
                break outcome;
            }
        };
        self.stop_fetchers.cancel();
        self.fetchers.abort_all();
        // Read and never handed on: read again after the restart.
        let left = self.queued_records();
        self.stats.sub_unsettled(left);
        self.stats.add_abandoned(left);
        let Self { name, store, stats, progress, saving, .. } = self;
        finish_with_save(name, task, store, stats, progress, config, saving, outcome).await
    }

    /// Partitions were added to the topics: open and read them.
    async fn on_added(
        &mut self,
        task: &mut dyn SinkTask,
        parts: Vec<TopicPartition>,
        shutdown: &CancellationToken,
    ) -> Step {
        let Some(tx) = &self.fetch_tx else { return Step::Continue(()) };
        let fetch = (&mut self.fetchers, tx, &self.stop_fetchers);
        // Raced against shutdown like `put`: loading offsets and resolving starts may wait on an
        // unreachable Kafka. Cut short, the partitions are simply not read.
        let (name, client, store, config) = (self.name, self.client, self.store, self.config);
        let adding = add_partitions(
            name,
            task,
            client,
            store,
            config,
            self.progress,
            self.stats,
            parts,
            fetch,
        );
        tokio::select! {
            r = adding => match r {
                Ok(()) => Step::Continue(()),
                Err(e) => Step::Break(Err(e)),
            },
            () = shutdown.cancelled() => Step::Break(Ok(())),
        }
    }

    /// Time to commit: `pre_commit`, then the save in its own task.
    async fn on_tick(&mut self, task: &mut dyn SinkTask, shutdown: &CancellationToken) -> Step {
        // pre_commit may write dead letters (refused records) to an unreachable Kafka: it must
        // not hold up shutdown. Cut short, nothing is committed by this tick; a refused record
        // not yet settled stays uncommitted.
        let started = tokio::select! {
            r = start_commit(self.name, task, self.store, self.progress) => r,
            () = shutdown.cancelled() => return Step::Break(Ok(())),
        };
        match started {
            Ok(started) => {
                self.saving = started;
                Step::Continue(())
            }
            Err(e) => Step::Break(Err(e)),
        }
    }

    fn on_fetched(&mut self, msg: Option<FetchMsg>) -> Step {
        match msg {
            None => Step::Break(Err(Error::fatal("all Kafka fetchers stopped"))),
            Some(FetchMsg::Failed(e)) => Step::Break(Err(e)),
            Some(FetchMsg::Records(tp, records)) => {
                if let (Some(first), Some(last)) = (records.first(), records.last()) {
                    if let Some(lag) = self.progress.lag.get_mut(&tp) {
                        lag.fetched(last.offset, first.timestamp.as_millis());
                    }
                    self.stats.add_unsettled(records.len() as u64);
                    self.stats.add_in(records.len() as u64);
                    queue_for_put(&mut self.queued, tp, records, self.config.max_put_records);
                }
                Step::Continue(())
            }
        }
    }

    /// Records fetched and queued for `put`.
    fn queued_records(&self) -> u64 {
        self.queued.iter().map(|(_, r)| r.len() as u64).sum()
    }

    /// Puts the next piece of the fetched batch.
    async fn put_next(&mut self, task: &mut dyn SinkTask, shutdown: &CancellationToken) -> Step {
        let Some((tp, records)) = self.queued.pop_front() else { return Step::Continue(()) };
        let (name, pipeline, handler, stats) =
            (self.name, &self.config.pipeline, self.handler, self.stats);
        let taken = records.len() as u64;
        let delivered =
            deliver(name, task, pipeline, handler, stats, self.progress, tp, records, shutdown)
                .await;
        // Out of the queue now, each with its outcome (or abandoned) counted by `deliver`.
        stats.sub_unsettled(taken);
        match delivered {
            Ok(true) => {
                stats.set_in_flight(self.progress.uncommitted());
                Step::Continue(())
            }
            Ok(false) => Step::Break(Ok(())),
            Err(e) => Step::Break(Err(e)),
        }
    }
}

/// The next batch of added partitions; never resolves when there is no channel.
async fn recv_added(
    added: &mut Option<mpsc::Receiver<Vec<TopicPartition>>>,
) -> Option<Vec<TopicPartition>> {
    match added {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts reading partitions added while the task runs: from their committed offset, else from
/// their earliest offset, whatever `start` says. A partition found while running is new (or
/// its topic is), and records were written to it before the metadata refresh found it, up to
/// `metadata_max_age_ms` earlier: "latest" would skip them for good. (Flink's Kafka source does
/// the same for partitions it discovers.)
#[allow(clippy::too_many_arguments)]
async fn add_partitions(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    client: &KafkaClient,
    store: &Arc<dyn OffsetStore>,
    config: &SinkRuntimeConfig,
    progress: &mut Progress,
    stats: &TaskCounters,
    parts: Vec<TopicPartition>,
    (fetchers, tx, stop): (&mut JoinSet<()>, &mpsc::Sender<FetchMsg>, &CancellationToken),
) -> Result<()> {
    let parts: Vec<TopicPartition> =
        parts.into_iter().filter(|tp| !progress.consumed.contains_key(tp)).collect();
    if parts.is_empty() {
        return Ok(());
    }
    let stored = store.load(name).await?;
    let mut starts = Vec::with_capacity(parts.len());
    for tp in &parts {
        let start = match stored.kafka_offset(tp) {
            Some(o) => o,
            None => {
                let read = isolation(config.read_committed);
                initial_offset(client, tp, StartFrom::Earliest, read).await?
            }
        };
        starts.push(start);
    }
    task.open(&parts).await?;
    for (tp, start) in parts.into_iter().zip(starts) {
        info!(connector = %name, %tp, offset = start, "reading a partition added to the topic");
        progress.committed.insert(tp.clone(), start);
        progress.consumed.insert(tp.clone(), start);
        let lag = stats.open_partition(&tp, start);
        if let Some(cell) = &lag {
            progress.lag.insert(tp.clone(), Lag::new(Arc::clone(cell)));
        }
        fetchers.spawn(fetch_loop(
            client.clone(),
            tp,
            start,
            (config.start, isolation(config.read_committed)),
            tx.clone(),
            stop.clone(),
            lag,
        ));
    }
    Ok(())
}
