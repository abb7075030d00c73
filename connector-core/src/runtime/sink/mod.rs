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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::ConfigErrors;
use crate::error_policy::{ErrorHandler, FailedRecord, Stage};
use crate::kafka::{FetchResult, KafkaClient, OffsetSpec};
use crate::offset::{OffsetMap, OffsetStore};
use crate::record::{SinkRecord, TopicPartition};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::stats::TaskStats;
use crate::runtime::task::{OnStarted, PauseSwitch, TaskBase};
use crate::runtime::CommitRequester;
use crate::sink::{SinkTask, SinkTaskContext, StartFrom};
use crate::{Error, ErrorKind, Result};

/// How the sink runtime reads, retries and commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkRuntimeConfig {
    /// Where to start in a partition with no committed offset.
    #[serde(default)]
    pub start: StartFrom,
    /// Longest time between commits (`pre_commit`, then saving its offsets). A task that requests
    /// commits (the MQTT sink, when acknowledgements arrive) is committed sooner.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Fetched batches queued per partition ahead of `put`.
    #[serde(default = "default_prefetch_batches")]
    pub prefetch_batches: usize,
    /// Most records handed to one `put` (Kafka Connect's `max.poll.records`); a larger fetched
    /// batch is put in pieces, and commits can start between two pieces. With commits that follow
    /// acknowledgements, a crash repeats at most the task's in-flight window plus about this many
    /// records plus one offset save's worth.
    #[serde(default = "default_max_put_records")]
    pub max_put_records: usize,
    /// How long the drain at shutdown may take in all: the save in flight, the final flush and
    /// the final commit.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Converters, transforms and the error policy (the connector's `errors`, `transforms`,
    /// `key_converter`, `value_converter` keys).
    #[serde(skip)]
    #[schemars(skip)]
    pub pipeline: Pipeline,
}

fn default_commit_interval_ms() -> u64 {
    5_000
}
fn default_prefetch_batches() -> usize {
    2
}
fn default_max_put_records() -> usize {
    500
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}

impl Default for SinkRuntimeConfig {
    fn default() -> Self {
        Self {
            start: StartFrom::Earliest,
            commit_interval_ms: default_commit_interval_ms(),
            prefetch_batches: default_prefetch_batches(),
            max_put_records: default_max_put_records(),
            pipeline: Pipeline::default(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

impl SinkRuntimeConfig {
    /// Checks the values; paths are relative to this table.
    pub fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.commit_interval_ms == 0 {
            e.push("commit_interval_ms", "must be at least 1");
        }
        if self.prefetch_batches == 0 {
            e.push("prefetch_batches", "must be at least 1");
        }
        if self.max_put_records == 0 {
            e.push("max_put_records", "must be at least 1");
        }
        e
    }
}

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

enum FetchMsg {
    Records(TopicPartition, Vec<SinkRecord>),
    Failed(Error),
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

/// Offsets handed to `put` and offsets committed, per partition.
struct Progress {
    consumed: HashMap<TopicPartition, i64>,
    committed: HashMap<TopicPartition, i64>,
}

impl Progress {
    /// Records handed to `put` and not yet covered by a committed offset.
    fn uncommitted(&self) -> u64 {
        self.consumed
            .iter()
            .map(|(tp, c)| {
                let done = self.committed.get(tp).copied().unwrap_or(*c);
                u64::try_from(c - done).unwrap_or(0)
            })
            .sum()
    }
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

    /// Uses `stats` for the counters.
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
        let (name, task_id) = (Arc::clone(&base.name), base.task_id);
        let (client, offsets, stats) =
            (base.client.clone(), Arc::clone(&base.offsets), Arc::clone(&base.stats));
        let tag = |e: Error| e.with_connector(&*name).with_task(task_id);
        let stored = offsets.load(&name).await.map_err(tag)?;
        let mut progress = Progress { consumed: HashMap::new(), committed: HashMap::new() };
        let mut resolved = OffsetMap::new();
        for tp in &partitions {
            let start = match stored.kafka_offset(tp) {
                Some(o) => o,
                None => {
                    let o = initial_offset(&client, tp, config.start).await.map_err(tag)?;
                    resolved.insert_kafka(tp, o);
                    o
                }
            };
            progress.committed.insert(tp.clone(), start);
            progress.consumed.insert(tp.clone(), start);
        }
        persist_resolved_starts(&name, &*offsets, config.start, &client, &resolved)
            .await
            .map_err(tag)?;
        info!(connector = %name, task = task_id, partitions = ?progress.committed, "starting sink task");
        let handler = ErrorHandler::new(
            config.pipeline.errors.clone(),
            Arc::clone(&name),
            task_id,
            client.clone(),
            Arc::clone(&stats),
        );
        // Records the destination refuses after `put` go to the same error policy.
        let ctx = SinkTaskContext::new(Arc::clone(&name), task_id)
            .with_errant_record_reporter(Arc::new(handler.clone()));
        let commit_requests = ctx.commit_requester();
        task.start(ctx).await.map_err(tag)?;
        let result = match task.open(&partitions).await {
            Ok(()) => {
                base.started();
                drive(
                    &name,
                    &mut *task,
                    &client,
                    &offsets,
                    &config,
                    &stats,
                    &handler,
                    &mut progress,
                    &commit_requests,
                    &mut added,
                    &mut base.pause,
                    shutdown,
                )
                .await
            }
            Err(e) => Err(e),
        }
        .map_err(tag);
        // Every partition read, those added while running included.
        let mut reading: Vec<TopicPartition> = progress.consumed.keys().cloned().collect();
        reading.sort();
        if let Err(e) = task.close(&reading).await {
            warn!(connector = %name, error = %e.report(), "sink task close failed");
        }
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

/// Where to start a partition without a committed offset.
async fn initial_offset(
    client: &KafkaClient,
    tp: &TopicPartition,
    start: StartFrom,
) -> Result<i64> {
    let mut backoff = Backoff::new(client.config().retry_backoff);
    loop {
        let result = match start {
            StartFrom::Earliest => {
                client.list_offset(&tp.topic, tp.partition, OffsetSpec::Earliest).await
            }
            StartFrom::Latest => client.end_offset(&tp.topic, tp.partition).await,
        };
        match result {
            Ok(o) => return Ok(o),
            Err(e) if e.is_retriable() && backoff.attempts() < 10 => {
                debug!(%tp, error = %e.report(), "start offset not available yet");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Saves the start offsets resolved for partitions without a committed offset, before any of
/// their records reaches the task. `latest` is a moving target: unsaved, a crash before the first
/// commit would resolve it again later and skip whatever was written in between. `earliest`
/// resolves to the same records after a crash, so nothing needs saving.
async fn persist_resolved_starts(
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

#[allow(clippy::too_many_arguments)]
async fn drive(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    client: &KafkaClient,
    store: &Arc<dyn OffsetStore>,
    config: &SinkRuntimeConfig,
    stats: &TaskStats,
    handler: &ErrorHandler,
    progress: &mut Progress,
    commit_requests: &CommitRequester,
    added: &mut Option<mpsc::Receiver<Vec<TopicPartition>>>,
    pause: &mut PauseSwitch,
    shutdown: CancellationToken,
) -> Result<()> {
    let capacity = config.prefetch_batches.max(1) * progress.consumed.len().max(1);
    let (tx, mut rx) = mpsc::channel::<FetchMsg>(capacity);
    let stop_fetchers = shutdown.child_token();
    let mut fetchers = JoinSet::new();
    for (tp, offset) in &progress.consumed {
        fetchers.spawn(fetch_loop(
            client.clone(),
            tp.clone(),
            *offset,
            config.start,
            tx.clone(),
            stop_fetchers.clone(),
        ));
    }
    // Kept while partitions can be added: their fetchers get a clone.
    let tx = added.is_some().then_some(tx);

    let mut tick = tokio::time::interval(Duration::from_millis(config.commit_interval_ms.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.reset();

    // One offset save in flight at a time, in its own task so that `put` goes on meanwhile.
    // Commits start on the task's request (acknowledgements arrived) or at the latest every
    // commit_interval_ms; requests made during a save are coalesced into one commit after it.
    let mut saving: Option<InFlightSave> = None;
    // The fetched batch being put, in pieces of at most max_put_records: between two `put`s the
    // loop starts commits, so acknowledged records need not wait for a whole fetch to be put.
    // Only one fetched batch is held here (nothing is received while pieces are left).
    let mut queued: VecDeque<(TopicPartition, Vec<SinkRecord>)> = VecDeque::new();
    let outcome = loop {
        let paused = pause.is_paused();
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => Event::Shutdown,
            saved = wait_save(&mut saving), if saving.is_some() => Event::Saved(saved),
            _ = tick.tick(), if saving.is_none() => Event::Tick,
            () = commit_requests.requested(), if saving.is_none() => Event::Tick,
            parts = recv_added(added) => Event::Added(parts),
            () = pause.changed() => Event::PauseChanged,
            () = std::future::ready(()), if !paused && !queued.is_empty() => Event::PutNext,
            msg = rx.recv(), if !paused => Event::Fetched(msg),
        };
        match event {
            Event::Shutdown => break Ok(()),
            Event::PauseChanged => {
                info!(connector = %name, paused = pause.is_paused(), "sink task pause switched");
            }
            Event::Added(None) => *added = None,
            Event::Added(Some(parts)) => {
                let Some(tx) = &tx else { continue };
                let fetch = (&mut fetchers, tx, &stop_fetchers);
                // Raced against shutdown like `put`: loading offsets and resolving starts may
                // wait on an unreachable Kafka. Cut short, the partitions are simply not read.
                let adding =
                    add_partitions(name, task, client, store, config, progress, parts, fetch);
                let added = tokio::select! {
                    r = adding => r,
                    () = shutdown.cancelled() => break Ok(()),
                };
                if let Err(e) = added {
                    break Err(e);
                }
            }
            Event::Tick => {
                // pre_commit may write dead letters (refused records) to an unreachable Kafka:
                // it must not hold up shutdown. Cut short, nothing is committed by this tick; a
                // refused record not yet settled stays uncommitted.
                let started = tokio::select! {
                    r = start_commit(name, task, store, progress) => r,
                    () = shutdown.cancelled() => break Ok(()),
                };
                match started {
                    Ok(started) => saving = started,
                    Err(e) => break Err(e),
                }
            }
            Event::Saved(saved) => {
                saving = None;
                if let Err(e) = saved.and_then(|s| s.apply(name, stats, progress)) {
                    break Err(e);
                }
            }
            Event::Fetched(None) => break Err(Error::fatal("all Kafka fetchers stopped")),
            Event::Fetched(Some(FetchMsg::Failed(e))) => break Err(e),
            Event::Fetched(Some(FetchMsg::Records(tp, records))) => {
                if records.is_empty() {
                    continue;
                }
                stats.add_in(records.len() as u64);
                queue_for_put(&mut queued, tp, records, config.max_put_records);
            }
            Event::PutNext => {
                let Some((tp, records)) = queued.pop_front() else { continue };
                match deliver(
                    name,
                    task,
                    &config.pipeline,
                    handler,
                    stats,
                    progress,
                    tp,
                    records,
                    &shutdown,
                )
                .await
                {
                    Ok(true) => stats.set_in_flight(progress.uncommitted()),
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        }
    };
    stop_fetchers.cancel();
    fetchers.abort_all();
    finish_with_save(name, task, store, stats, progress, config, saving, outcome).await
}

/// A fetched record that failed, for the error policy.
fn failed<'a>(stage: Stage, error: &'a Error, r: &'a SinkRecord) -> FailedRecord<'a> {
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
async fn deliver(
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

/// Flush and the final commit (bounded by the drain's deadline), then `outcome`.
async fn finish(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    store: &Arc<dyn OffsetStore>,
    stats: &TaskStats,
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
async fn commit(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    store: &Arc<dyn OffsetStore>,
    stats: &TaskStats,
    progress: &mut Progress,
) -> Result<()> {
    let Some((to_save, newly)) = offsets_to_commit(name, task, progress).await? else {
        return Ok(());
    };
    match store.save(name, &to_save).await {
        Ok(()) => InFlightSave { handle: None, to_save, newly }.apply(name, stats, progress),
        Err(e) if e.is_retriable() => {
            warn!(connector = %name, error = %e.report(), "could not save sink offsets; will retry");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Splits a fetched batch into pieces of at most `max` records for `put`.
fn queue_for_put(
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
            None => initial_offset(client, tp, StartFrom::Earliest).await?,
        };
        starts.push(start);
    }
    task.open(&parts).await?;
    for (tp, start) in parts.into_iter().zip(starts) {
        info!(connector = %name, %tp, offset = start, "reading a partition added to the topic");
        progress.committed.insert(tp.clone(), start);
        progress.consumed.insert(tp.clone(), start);
        fetchers.spawn(fetch_loop(
            client.clone(),
            tp,
            start,
            config.start,
            tx.clone(),
            stop.clone(),
        ));
    }
    Ok(())
}

/// Offsets being saved in the background, and what they commit once saved.
struct InFlightSave {
    handle: Option<tokio::task::JoinHandle<Result<()>>>,
    to_save: OffsetMap,
    newly: u64,
}

impl InFlightSave {
    /// Records a completed save in `progress` and the counters.
    fn apply(self, name: &str, stats: &TaskStats, progress: &mut Progress) -> Result<()> {
        for (tp, _) in progress.consumed.clone() {
            if let Some(o) = self.to_save.kafka_offset(&tp) {
                progress.committed.insert(tp, o);
            }
        }
        stats.add_committed(self.newly);
        stats.set_in_flight(progress.uncommitted());
        debug!(connector = name, partitions = self.to_save.len(), "sink offsets committed");
        Ok(())
    }
}

/// Waits for the in-flight save; a retriable failure is logged and committed nothing (the next
/// commit saves newer offsets anyway).
async fn wait_save(saving: &mut Option<InFlightSave>) -> Result<InFlightSave> {
    let Some(s) = saving.as_mut() else { return std::future::pending().await };
    let Some(handle) = s.handle.as_mut() else {
        return Err(Error::fatal("offset save polled twice"));
    };
    let joined = handle.await;
    s.handle = None;
    let done =
        InFlightSave { handle: None, to_save: std::mem::take(&mut s.to_save), newly: s.newly };
    match joined {
        Ok(Ok(())) => Ok(done),
        Ok(Err(e)) if e.is_retriable() => {
            warn!(error = %e.report(), "could not save sink offsets; will retry");
            Ok(InFlightSave { handle: None, to_save: OffsetMap::new(), newly: 0 })
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::fatal("the offset save task panicked").with_source(e)),
    }
}

/// Calls `pre_commit` and starts saving what it allows in a task of its own; `None` when there
/// is nothing new to save.
async fn start_commit(
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
    Ok(Some(InFlightSave { handle: Some(handle), to_save, newly }))
}

/// What `pre_commit` says is safe, clipped to what was offered, keeping only partitions that
/// moved forward; with the number of records it newly commits.
async fn offsets_to_commit(
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
async fn finish_with_save(
    name: &Arc<str>,
    task: &mut dyn SinkTask,
    store: &Arc<dyn OffsetStore>,
    stats: &TaskStats,
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
            Err(_) => warn!(connector = %name, ?timeout, "offset save in flight timed out"),
        }
    }
    finish(name, task, store, stats, progress, (deadline, timeout), outcome).await
}

/// Broker wait of a fetch while the partition has records past the fetch position.
const CATCH_UP_FETCH_WAIT: Duration = Duration::from_millis(1);

#[allow(clippy::too_many_arguments)]
async fn fetch_loop(
    client: KafkaClient,
    tp: TopicPartition,
    mut offset: i64,
    start: StartFrom,
    tx: mpsc::Sender<FetchMsg>,
    stop: CancellationToken,
) {
    let long_poll = Duration::from_millis(client.config().fetch_max_wait_ms);
    let mut backoff = Backoff::new(client.config().retry_backoff);
    // Long-poll only when caught up. While behind the high watermark, records are waiting: ask the
    // broker not to wait. Kafka answers at once either way, but some brokers (Tansu 0.6) hold
    // every fetch for part of its max wait even with data ready, which would cap a catching-up
    // partition at one fetch per half max wait.
    let mut behind = true;
    while !stop.is_cancelled() {
        let max_wait = if behind { CATCH_UP_FETCH_WAIT } else { long_poll };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = client.fetch(&tp.topic, tp.partition, offset, max_wait) => r,
        };
        match result {
            Ok(FetchResult::Records(fetched)) => {
                backoff.reset();
                offset = fetched.next_offset.max(offset);
                behind = fetched.high_watermark > offset;
                if fetched.records.is_empty() {
                    continue;
                }
                if tx.send(FetchMsg::Records(tp.clone(), fetched.records)).await.is_err() {
                    return;
                }
            }
            Ok(FetchResult::OffsetOutOfRange) => {
                let reset = match initial_offset(&client, &tp, start).await {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(FetchMsg::Failed(e)).await;
                        return;
                    }
                };
                warn!(%tp, from = offset, to = reset, ?start, "offset out of range; resetting");
                offset = reset;
                behind = true;
            }
            Err(e) if e.is_retriable() => {
                let delay = backoff.next_delay();
                warn!(%tp, offset, error = %e.report(), retry_in_ms = delay.as_millis() as u64, "fetch failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                let _ = tx
                    .send(FetchMsg::Failed(e.with_topic(&*tp.topic).with_partition(tp.partition)))
                    .await;
                return;
            }
        }
    }
}
