//! Sink-side contracts: [`SinkConnector`] (typed; names the Kafka topics to read and splits the
//! work into task configs), [`SinkTask`] (writes records to an external system), and the
//! object-safe [`DynSinkConnector`] the runtime drives.
//!
//! ```text
//!   Kafka fetch (per partition, bounded prefetch) ──► SinkTask::put
//!   on request / every commit interval: consumed offsets ──► SinkTask::pre_commit ──► safe offsets
//!                                                                           │
//!                                               OffsetStore (never past them) ◄┘
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use bytes::Bytes;

use crate::config::ConnectorConfig;
use crate::error_policy::{ErrorHandler, FailedRecord, Stage};
use crate::offset::{MemoryOffsetStore, OffsetMap, OffsetStore};
use crate::record::{SinkRecord, TopicPartition};
use crate::runtime::{CommitRequester, TaskCounterHandle};
use crate::{Error, Result};

/// Where a sink starts reading a partition that has no committed offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest record still stored (default: nothing written before the sink first ran is
    /// skipped).
    #[default]
    Earliest,
    /// Only records written after the sink first starts.
    Latest,
}

/// Where a sink task sends a record that failed after `put` had accepted it (Kafka Connect's
/// `ErrantRecordReporter`): a pipelining task learns only later that the destination refused a
/// record (an MQTT 5 PUBACK with a failure reason code, say). The runtime's implementation is its
/// error policy, the same one that handles records `put` rejects.
///
/// Called from the task's own methods (`put`, `pre_commit`, `flush`), never concurrently.
#[async_trait]
pub trait ErrantRecordReporter: Send + Sync + fmt::Debug {
    /// Hands `record`, which failed with `error`, to the error policy; `context` pairs become
    /// `__connect.errors.<name>` headers of its dead letter. Returns when the policy is done
    /// with it: `Ok` when it was tolerated (written to the dead-letter topic, or logged), and only
    /// then may the task count the record's offset as done.
    ///
    /// # Errors
    /// The record's error, with its topic, partition and offset, when the policy does not
    /// tolerate it (`errors.tolerance = "none"`), or the dead-letter write's error. The task must
    /// then fail, and never report the record's offset from `pre_commit`.
    ///
    /// # Cancellation
    /// Dropping the future may leave the dead letter written or not: the task must not count
    /// the offset as done, so the record is read again after a restart.
    async fn report(
        &self,
        record: &SinkRecord,
        error: &Error,
        context: &[(&str, String)],
    ) -> Result<()>;
}

#[async_trait]
impl ErrantRecordReporter for ErrorHandler {
    async fn report(
        &self,
        record: &SinkRecord,
        error: &Error,
        context: &[(&str, String)],
    ) -> Result<()> {
        let mut headers = record.headers.clone();
        for (name, value) in context {
            headers.push(format!("__connect.errors.{name}"), Bytes::from(value.clone()));
        }
        self.handle(FailedRecord {
            stage: Stage::TaskPut,
            error,
            topic: &record.original_topic,
            partition: Some(record.partition),
            offset: Some(record.offset),
            key: record.key.as_ref(),
            value: record.value.as_ref(),
            headers: &headers,
        })
        .await
        // `put` accepted the record: it counts as written, whatever the policy did now.
        .map(|_| ())
    }
}

/// A sink task's own durable state (beyond the Kafka offsets the runtime commits): kept in the
/// runner's offset store under a namespace of its own per connector (`<connector>.sink-state`),
/// so it is stable across restarts and workers. The exactly-once MQTT sink keeps its QoS 2
/// packet-id state here.
///
/// ```
/// use connector_core::{OffsetMap, SinkTaskContext, TopicPartition};
///
/// # tokio_test(async {
/// let ctx = SinkTaskContext::new("commands", 0); // a memory store: durable only in-process
/// let mut state = OffsetMap::new();
/// state.insert_kafka(&TopicPartition::new("commands", 0), 7);
/// ctx.state().save(&state).await?;
/// assert_eq!(ctx.state().load().await?, state);
/// # Ok::<(), connector_core::Error>(()) });
/// # fn tokio_test<F: std::future::Future<Output = connector_core::Result<()>>>(f: F) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SinkTaskState {
    store: Arc<dyn OffsetStore>,
    namespace: Arc<str>,
}

impl SinkTaskState {
    /// The state of connector `connector` in `store` (namespace `<connector>.sink-state`).
    pub fn new(store: Arc<dyn OffsetStore>, connector: &str) -> Self {
        Self { store, namespace: format!("{connector}.sink-state").into() }
    }

    /// The namespace the state is stored under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Everything saved so far (empty when nothing ever was).
    ///
    /// # Errors
    /// When stored state exists but cannot be read: the task must not start without it.
    pub async fn load(&self) -> Result<OffsetMap> {
        self.store.load(&self.namespace).await
    }

    /// Durably stores `state`, merged over what is stored (entries not in `state` keep their
    /// value). When it returns `Ok`, the state survives a crash.
    ///
    /// # Errors
    /// When it could not be made durable; what was stored before is kept.
    pub async fn save(&self, state: &OffsetMap) -> Result<()> {
        self.store.save(&self.namespace, state).await
    }
}

/// What a sink task is given at start.
#[derive(Debug, Clone)]
pub struct SinkTaskContext {
    connector: Arc<str>,
    task_id: usize,
    errant: Option<Arc<dyn ErrantRecordReporter>>,
    commit: CommitRequester,
    counters: TaskCounterHandle,
    state: SinkTaskState,
}

impl SinkTaskContext {
    /// A context for task `task_id` of `connector`, without an errant-record reporter (a record
    /// reported through [`report`](Self::report) then fails the task, as with `tolerance = "none"`).
    /// Its [`state`](Self::state) is kept in memory (lost with the process) until
    /// [`with_state`](Self::with_state) gives it a durable store.
    pub fn new(connector: impl Into<Arc<str>>, task_id: usize) -> Self {
        let connector: Arc<str> = connector.into();
        let state = SinkTaskState::new(Arc::new(MemoryOffsetStore::new()), &connector);
        Self {
            connector,
            task_id,
            errant: None,
            commit: CommitRequester::new(),
            counters: TaskCounterHandle::default(),
            state,
        }
    }

    /// Keeps the task's [`state`](Self::state) in `state` (the runtime passes the runner's offset
    /// store).
    pub fn with_state(mut self, state: SinkTaskState) -> Self {
        self.state = state;
        self
    }

    /// The task's own durable state store; see [`SinkTaskState`].
    pub fn state(&self) -> &SinkTaskState {
        &self.state
    }

    /// Counts into `counters` (the runtime passes the connector's).
    pub(crate) fn with_counters(mut self, counters: TaskCounterHandle) -> Self {
        self.counters = counters;
        self
    }

    /// Where the task reports counters of its own (exported with the runtime's metrics,
    /// labelled by connector and task); see [`ConnectorCounters`](crate::runtime::ConnectorCounters).
    pub fn counters(&self) -> &TaskCounterHandle {
        &self.counters
    }

    /// Routes [`report`](Self::report) to `reporter` (the runtime passes its error policy).
    pub fn with_errant_record_reporter(mut self, reporter: Arc<dyn ErrantRecordReporter>) -> Self {
        self.errant = Some(reporter);
        self
    }

    /// Hands a record that failed after `put` accepted it to the error policy; see
    /// [`ErrantRecordReporter::report`]. Without a reporter, the record's error (with its topic,
    /// partition and offset) is returned: the task must fail.
    ///
    /// # Errors
    /// As [`ErrantRecordReporter::report`].
    pub async fn report(
        &self,
        record: &SinkRecord,
        error: &Error,
        context: &[(&str, String)],
    ) -> Result<()> {
        match &self.errant {
            Some(r) => r.report(record, error, context).await,
            None => Err(error
                .clone()
                .with_connector(&*self.connector)
                .with_task(self.task_id)
                .with_topic(&*record.original_topic)
                .with_partition(record.partition)
                .with_offset(record.offset)),
        }
    }

    /// A handle that asks the runtime to commit soon (Kafka Connect's `requestCommit()`): call it
    /// when acknowledgements arrive, so a crash repeats as little as possible.
    pub fn commit_requester(&self) -> CommitRequester {
        self.commit.clone()
    }

    /// The connector's name.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// This task's index (0-based).
    pub fn task_id(&self) -> usize {
        self.task_id
    }
}

/// Writes records read from Kafka to an external system. Driven by one runtime task; methods are
/// never called concurrently. Offsets are "the next offset to read", Kafka's convention.
///
/// A minimal task that writes synchronously:
/// ```
/// use async_trait::async_trait;
/// use connector_core::{Result, SinkRecord, SinkTask, SinkTaskContext};
///
/// struct Stdout;
///
/// #[async_trait]
/// impl SinkTask for Stdout {
///     async fn start(&mut self, _ctx: SinkTaskContext) -> Result<()> { Ok(()) }
///     async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
///         for r in records {
///             println!("{}-{}@{}: {:?}", r.topic, r.partition, r.offset, r.value);
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait SinkTask: Send + 'static {
    /// Called once before anything else.
    ///
    /// Must be bounded: connect with a timeout and return (or fail retriably) rather than wait
    /// for a peer indefinitely, since the runtime cannot deliver, commit or shut the task down
    /// cleanly while `start` is running.
    ///
    /// # Errors
    /// An error stops the task.
    async fn start(&mut self, ctx: SinkTaskContext) -> Result<()>;

    /// Called with the partitions this task reads, before their first `put`. The default does
    /// nothing.
    ///
    /// # Errors
    /// An error stops the task.
    async fn open(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let _ = partitions;
        Ok(())
    }

    /// Hands over the next records of one partition, in offset order. The task may write them at
    /// once, buffer them, or pipeline them; what it has not yet made durable it must not report
    /// from [`pre_commit`](Self::pre_commit).
    ///
    /// A `put` may wait (for room in a pipeline, say); that is how a sink slows the fetching down.
    ///
    /// # Errors
    /// * [`Error::Retriable`](crate::Error::Retriable): the runtime waits a backoff and calls `put`
    ///   again with **the same records**, so none of them may count as accepted.
    /// * [`Error::RecordRejected`](crate::Error::RecordRejected) whose context names the offset of
    ///   one of `records` (`.with_offset(r.offset)`): that record is refused, **the records before
    ///   it are accepted**. The runtime hands it to the error policy and, if tolerated, calls `put`
    ///   with the records after it.
    /// * Anything else stops the task; offsets stay where the last commit left them.
    ///
    /// # Cancellation
    /// At shutdown a `put` still waiting is dropped. Records it had not handed on must simply not
    /// be reported by `pre_commit`; they are read again after the restart.
    async fn put(&mut self, records: &[SinkRecord]) -> Result<()>;

    /// Called soon after the task requested a commit ([`SinkTaskContext::commit_requester`]), at
    /// the latest every commit interval, and at shutdown, with the offsets after the last record
    /// handed to `put`, per partition. Returns the offsets that are safe to commit: the runtime commits
    /// exactly those (never more than it offered, never backwards). The default flushes and
    /// returns `offsets` unchanged, right for a task whose `put` is synchronous.
    ///
    /// # Errors
    /// Retriable: nothing is committed this time. Fatal: the task stops.
    ///
    /// # Cancellation
    /// At shutdown it runs under the runtime's shutdown timeout and may be dropped at any
    /// `.await`. Nothing is committed then, so the records since the last commit are read again
    /// after the restart: return only offsets that are already durable, and never rely on code
    /// after an `.await` having run.
    async fn pre_commit(
        &mut self,
        offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<HashMap<TopicPartition, i64>> {
        self.flush(offsets).await?;
        Ok(offsets.clone())
    }

    /// Makes everything handed to `put` durable. The default `pre_commit` calls it, and the runtime
    /// calls it at shutdown (bounded by the shutdown timeout) before the final `pre_commit`, so a
    /// pipelining task can wait for what is in flight. The default does nothing.
    ///
    /// # Errors
    /// As for `pre_commit`.
    ///
    /// # Cancellation
    /// At shutdown it runs under the runtime's shutdown timeout and may be dropped at any
    /// `.await` when the destination is slow; the offsets of what it had not made durable are
    /// then not committed (the records are read again after the restart). Keep no state that
    /// would be inconsistent if the future stopped half way.
    async fn flush(&mut self, offsets: &HashMap<TopicPartition, i64>) -> Result<()> {
        let _ = offsets;
        Ok(())
    }

    /// Called when the task stops reading `partitions` (at shutdown, after the last commit). The
    /// default does nothing.
    ///
    /// # Errors
    /// Logged.
    async fn close(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let _ = partitions;
        Ok(())
    }

    /// Called once when the task ends. The default does nothing.
    ///
    /// # Errors
    /// Logged.
    async fn stop(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A sink connector: built from its config, it names the Kafka topics to read and creates tasks.
/// The runtime assigns the topics' partitions to the tasks round-robin.
///
/// ```
/// use async_trait::async_trait;
/// use connector_core::{
///     ConfigErrors, ConnectorConfig, Result, SinkConnector, SinkRecord, SinkTask, SinkTaskContext,
/// };
/// use schemars::JsonSchema;
/// use serde::Deserialize;
///
/// /// Logs every record of some topics.
/// #[derive(Debug, Deserialize, JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct LogConfig {
///     /// Kafka topics to read.
///     topics: Vec<String>,
/// }
///
/// impl ConnectorConfig for LogConfig {
///     fn validate(&self) -> ConfigErrors {
///         let mut e = ConfigErrors::new();
///         if self.topics.is_empty() {
///             e.push("topics", "at least one topic is required");
///         }
///         e
///     }
/// }
///
/// struct Log { topics: Vec<String> }
/// struct LogTask;
///
/// #[async_trait]
/// impl SinkTask for LogTask {
///     async fn start(&mut self, _ctx: SinkTaskContext) -> Result<()> { Ok(()) }
///     async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
///         for r in records {
///             tracing::info!(topic = %r.topic, offset = r.offset, "record");
///         }
///         Ok(())
///     }
/// }
///
/// impl SinkConnector for Log {
///     type Config = LogConfig;
///     type TaskConfig = ();
///     type Task = LogTask;
///     fn create(_name: &str, config: LogConfig) -> Result<Self> {
///         Ok(Log { topics: config.topics })
///     }
///     fn topics(&self) -> Vec<String> { self.topics.clone() }
///     fn task_configs(&self, _max_tasks: usize) -> Result<Vec<()>> { Ok(vec![()]) }
///     fn create_task(&self, _: ()) -> Result<LogTask> { Ok(LogTask) }
/// }
///
/// let config = LogConfig { topics: vec!["commands".into()] };
/// assert!(config.validate().is_empty());
/// let connector = Log::create("log", config).unwrap();
/// assert_eq!(SinkConnector::topics(&connector), ["commands"]);
/// ```
pub trait SinkConnector: Send + Sync + Sized + 'static {
    /// The connector's configuration.
    type Config: ConnectorConfig;
    /// What one task needs to know.
    type TaskConfig: Clone + fmt::Debug + Send + Sync + 'static;
    /// The task type.
    type Task: SinkTask;

    /// Builds the connector from a config that passed [`ConnectorConfig::validate`].
    ///
    /// # Errors
    /// Fatal when the config cannot be used.
    fn create(name: &str, config: Self::Config) -> Result<Self>;

    /// Kafka topics to read.
    fn topics(&self) -> Vec<String>;

    /// Where to start in partitions without a committed offset. Defaults to the earliest record.
    fn start_from(&self) -> StartFrom {
        StartFrom::Earliest
    }

    /// Whether the runtime reads at `read_committed` (only records of committed Kafka
    /// transactions, up to the last stable offset). Default false (`read_uncommitted`).
    fn read_committed(&self) -> bool {
        false
    }

    /// Splits the work into at most `max_tasks` task configs (at least one).
    ///
    /// # Errors
    /// Fatal when the work cannot be split.
    fn task_configs(&self, max_tasks: usize) -> Result<Vec<Self::TaskConfig>>;

    /// Creates a task for one task config.
    ///
    /// # Errors
    /// Fatal when the task cannot be created.
    fn create_task(&self, config: Self::TaskConfig) -> Result<Self::Task>;
}

/// The object-safe side of [`SinkConnector`], used by the runtime and the runner's registry.
pub trait DynSinkConnector: Send + Sync {
    /// Kafka topics to read.
    fn topics(&self) -> Vec<String>;

    /// Where to start in partitions without a committed offset.
    fn start_from(&self) -> StartFrom;

    /// Whether the runtime reads at `read_committed`; see [`SinkConnector::read_committed`].
    fn read_committed(&self) -> bool {
        false
    }

    /// Creates the connector's tasks (at most `max_tasks`).
    ///
    /// # Errors
    /// Fatal when a task cannot be created.
    fn create_tasks(&self, max_tasks: usize) -> Result<Vec<Box<dyn SinkTask>>>;
}

impl<C: SinkConnector> DynSinkConnector for C {
    fn topics(&self) -> Vec<String> {
        SinkConnector::topics(self)
    }

    fn start_from(&self) -> StartFrom {
        SinkConnector::start_from(self)
    }

    fn read_committed(&self) -> bool {
        SinkConnector::read_committed(self)
    }

    fn create_tasks(&self, max_tasks: usize) -> Result<Vec<Box<dyn SinkTask>>> {
        self.task_configs(max_tasks.max(1))?
            .into_iter()
            .map(|c| Ok(Box::new(self.create_task(c)?) as Box<dyn SinkTask>))
            .collect()
    }
}
