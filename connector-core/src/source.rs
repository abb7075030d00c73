//! Source-side contracts: [`SourceConnector`] (a typed connector that splits its work into task
//! configs), [`SourceTask`] (pulls records from an external system), and the object-safe
//! [`DynSourceConnector`] the runtime drives, joined to the typed trait by a blanket impl.
//!
//! ```text
//!   SourceTask::poll ──► runtime ──► Kafka (acks=all) ──► ordered finalizer
//!                                                            │ (poll order)
//!   SourceTask::commit_record ◄──────────────────────────────┘
//!   offsets of the acknowledged prefix ──► OffsetStore ──► SourceTask::commit
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::ConnectorConfig;
use crate::offset::OffsetMap;
use crate::record::{RecordMetadata, SourceOffset, SourcePartition, SourceRecord};
use crate::runtime::{CommitRequester, TaskCounterHandle};
use crate::Result;

/// What a source task is given at start.
#[derive(Debug, Clone)]
pub struct SourceTaskContext {
    connector: Arc<str>,
    task_id: usize,
    offsets: OffsetMap,
    counters: TaskCounterHandle,
    commit: CommitRequester,
}

impl SourceTaskContext {
    /// A context for task `task_id` of `connector`, resuming from `offsets`. Public so tasks can be
    /// tested without a runtime.
    pub fn new(connector: impl Into<Arc<str>>, task_id: usize, offsets: OffsetMap) -> Self {
        Self {
            connector: connector.into(),
            task_id,
            offsets,
            counters: TaskCounterHandle::default(),
            commit: CommitRequester::new(),
        }
    }

    /// Makes `commit` the requester the runtime listens to.
    pub(crate) fn with_commit_requester(mut self, commit: CommitRequester) -> Self {
        self.commit = commit;
        self
    }

    /// A handle that asks the runtime to save the offsets of what Kafka acknowledged and call
    /// [`SourceTask::commit`] soon, instead of at the next `offset_flush_interval_ms`: for a task
    /// that holds something back until its offsets are stored (an acknowledgement to its own
    /// source, say). Never blocks; requests coalesce (many before the runtime looks, or during a
    /// save, count as one more save).
    ///
    /// ```
    /// use connector_core::SourceTaskContext;
    ///
    /// let ctx = SourceTaskContext::new("plant", 0, Default::default());
    /// let flush = ctx.commit_requester();
    /// std::thread::spawn(move || flush.request()).join().unwrap();
    /// ```
    pub fn commit_requester(&self) -> CommitRequester {
        self.commit.clone()
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

    /// The connector's name.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// This task's index (0-based).
    pub fn task_id(&self) -> usize {
        self.task_id
    }

    /// The last committed offset of `partition`, if any.
    pub fn offset(&self, partition: &SourcePartition) -> Option<&SourceOffset> {
        self.offsets.get(partition)
    }

    /// Every committed offset of this connector.
    pub fn offsets(&self) -> &OffsetMap {
        &self.offsets
    }
}

/// Pulls records from an external system. Driven by one runtime task; methods are never called
/// concurrently.
///
/// A minimal task that emits a record every 100 ms. It keeps a [`tokio::time::Interval`] in the
/// task rather than sleeping in `poll`: the runtime drops a waiting `poll` whenever Kafka
/// acknowledgements arrive, and a `sleep` would start over on every call (with a steady stream of
/// acks, it might never finish), while the interval's next tick stays where it was.
/// ```
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use connector_core::{Result, SourceRecord, SourceTask, SourceTaskContext};
///
/// struct Counter { next: u64, every: tokio::time::Interval }
///
/// impl Counter {
///     fn new() -> Self {
///         Counter { next: 0, every: tokio::time::interval(Duration::from_millis(100)) }
///     }
/// }
///
/// #[async_trait]
/// impl SourceTask for Counter {
///     async fn start(&mut self, _ctx: SourceTaskContext) -> Result<()> { Ok(()) }
///     async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
///         // Cancel-safe, and the deadline survives a dropped poll.
///         self.every.tick().await;
///         self.next += 1;
///         Ok(vec![SourceRecord::new("counter", self.next.to_string())])
///     }
/// }
/// ```
#[async_trait]
pub trait SourceTask: Send + 'static {
    /// Called once before the first `poll`. `ctx` holds the offsets committed by earlier runs:
    /// resume after them.
    ///
    /// Must be bounded: connect with a timeout and return (or fail retriably) rather than wait
    /// for a peer indefinitely; the runtime cannot poll, commit or shut the task down cleanly
    /// while `start` is running.
    ///
    /// # Errors
    /// An error stops the task before it polls; retriable errors are logged as such.
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()>;

    /// Returns the next records, in the order they should be written. An empty `Vec` means
    /// "nothing now"; a task should wait a little (cancel-safely) for data before returning one.
    ///
    /// # Cancellation
    /// **Must be cancel-safe.** The runtime selects between `poll` and Kafka acknowledgements
    /// (acknowledgements first), and drops this future when an acknowledgement or shutdown wins.
    /// A dropped `poll` must not lose data: records it had taken from the source but not returned
    /// must be returned by the next call.
    ///
    /// # Errors
    /// Retriable: the runtime backs off and polls again. Fatal: the task stops (offsets committed
    /// up to the last acknowledged record).
    async fn poll(&mut self) -> Result<Vec<SourceRecord>>;

    /// Called once per record, **in poll order**, after Kafka acknowledged it (acks=all) — or after
    /// the error policy dropped or dead-lettered it (`metadata` is then `None`). This is where a
    /// source acknowledges upstream (the MQTT source sends PUBACK here and nowhere else).
    ///
    /// The default does nothing.
    ///
    /// # Errors
    /// Retriable and rejected errors are logged and the stream goes on (the record is in Kafka;
    /// an unacknowledged upstream message is redelivered later, at worst a duplicate). Fatal errors
    /// stop the task.
    async fn commit_record(
        &mut self,
        record: SourceRecord,
        metadata: Option<RecordMetadata>,
    ) -> Result<()> {
        let _ = (record, metadata);
        Ok(())
    }

    /// Called with each run of records that became final together, in poll order, instead of
    /// [`commit_record`](Self::commit_record) one by one. The default calls `commit_record` for
    /// each record: it returns a fatal error at once, and the first other error once every record
    /// was passed on. Override it to acknowledge upstream in bulk (the MQTT source writes a run's
    /// PUBACKs with one system call).
    ///
    /// # Errors
    /// As for `commit_record`.
    async fn commit_records(
        &mut self,
        records: Vec<(SourceRecord, Option<RecordMetadata>)>,
    ) -> Result<()> {
        let mut first_error = None;
        for (record, metadata) in records {
            match self.commit_record(record, metadata).await {
                Ok(()) => {}
                Err(e) if e.kind() == crate::ErrorKind::Fatal => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Called after the offsets of every record passed to `commit_record` so far are durably
    /// stored. The default does nothing.
    ///
    /// # Errors
    /// Logged; the task goes on.
    async fn commit(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called once when the task ends (after the final offset commit, or after a fatal error).
    /// Release connections here. The default does nothing.
    ///
    /// # Errors
    /// Logged.
    async fn stop(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A source connector: built from its config, it splits the work into task configs and creates
/// the tasks. Implement this typed trait; the runtime uses it through [`DynSourceConnector`].
///
/// ```
/// use async_trait::async_trait;
/// use connector_core::{
///     ConnectorConfig, Result, SourceConnector, SourceRecord, SourceTask, SourceTaskContext,
/// };
/// use schemars::JsonSchema;
/// use serde::Deserialize;
///
/// /// Emits a greeting.
/// #[derive(Debug, Deserialize, JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct HelloConfig {
///     /// Kafka topic to write to.
///     topic: String,
/// }
/// impl ConnectorConfig for HelloConfig {}
///
/// struct Hello { topic: String }
/// struct HelloTask { topic: String, done: bool }
///
/// #[async_trait]
/// impl SourceTask for HelloTask {
///     async fn start(&mut self, _: SourceTaskContext) -> Result<()> { Ok(()) }
///     async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
///         if std::mem::replace(&mut self.done, true) {
///             tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///             return Ok(vec![]);
///         }
///         Ok(vec![SourceRecord::new(self.topic.clone(), "hello")])
///     }
/// }
///
/// impl SourceConnector for Hello {
///     type Config = HelloConfig;
///     type TaskConfig = String;
///     type Task = HelloTask;
///     fn create(_name: &str, config: HelloConfig) -> Result<Self> {
///         Ok(Hello { topic: config.topic })
///     }
///     fn task_configs(&self, _max_tasks: usize) -> Result<Vec<String>> {
///         Ok(vec![self.topic.clone()])
///     }
///     fn create_task(&self, topic: String) -> Result<HelloTask> {
///         Ok(HelloTask { topic, done: false })
///     }
/// }
/// ```
pub trait SourceConnector: Send + Sync + Sized + 'static {
    /// The connector's configuration.
    type Config: ConnectorConfig;
    /// What one task needs to know (e.g. which files, which MQTT client id).
    type TaskConfig: Clone + fmt::Debug + Send + Sync + 'static;
    /// The task type.
    type Task: SourceTask;

    /// Builds the connector from a config that passed [`ConnectorConfig::validate`]. Must not do
    /// I/O that can block for long; connections belong in [`SourceTask::start`].
    ///
    /// # Errors
    /// Fatal when the config cannot be used.
    fn create(name: &str, config: Self::Config) -> Result<Self>;

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

    /// The most records each task should have in flight (polled, not yet committed), when the
    /// connector has a window of its own (the MQTT source's receive window). The runtime uses the
    /// smaller of this and its configured limit. The default has no preference.
    fn max_in_flight_records(&self) -> Option<usize> {
        None
    }

    /// Whether this connector's tasks are to run exactly once (issue 17): the runtime then writes
    /// each batch of records together with their source offsets in one Kafka transaction
    /// (`transactional.id = "{connector}-{task}"`) and calls `commit_records` only after the
    /// commit. It needs the Kafka offset store. The default is `false` (at-least-once).
    fn exactly_once(&self) -> bool {
        false
    }
}

/// The object-safe side of [`SourceConnector`], used by the runtime and the runner's registry.
pub trait DynSourceConnector: Send + Sync {
    /// See [`SourceConnector::max_in_flight_records`].
    fn max_in_flight_records(&self) -> Option<usize>;

    /// See [`SourceConnector::exactly_once`] (provided, `false`, for connectors that implement
    /// this trait directly).
    fn exactly_once(&self) -> bool {
        false
    }

    /// Creates the connector's tasks (at most `max_tasks`).
    ///
    /// # Errors
    /// Fatal when the work cannot be split or a task cannot be created.
    fn create_tasks(&self, max_tasks: usize) -> Result<Vec<Box<dyn SourceTask>>>;
}

impl<C: SourceConnector> DynSourceConnector for C {
    fn max_in_flight_records(&self) -> Option<usize> {
        SourceConnector::max_in_flight_records(self)
    }

    fn exactly_once(&self) -> bool {
        SourceConnector::exactly_once(self)
    }

    fn create_tasks(&self, max_tasks: usize) -> Result<Vec<Box<dyn SourceTask>>> {
        self.task_configs(max_tasks.max(1))?
            .into_iter()
            .map(|c| Ok(Box::new(self.create_task(c)?) as Box<dyn SourceTask>))
            .collect()
    }
}
