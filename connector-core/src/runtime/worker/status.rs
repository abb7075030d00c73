//! What a [`Worker`](super::Worker) is given ([`ConnectorSpec`]) and what it reports
//! ([`ConnectorStatus`], [`TaskState`], [`TaskFailure`], [`WorkerError`]).

use std::sync::Arc;
use std::time::Duration;

use crate::runner::BuiltConnector;
use crate::runtime::sink::SinkRuntimeConfig;
use crate::runtime::source::SourceRuntimeConfig;
use crate::sink::DynSinkConnector;
use crate::source::DynSourceConnector;
use crate::Error;

/// The most connectors one worker runs.
pub const MAX_CONNECTORS: usize = 1024;

/// What to run: a built connector and its runtime settings.
///
/// ```no_run
/// # fn example(connector: Box<dyn connector_core::DynSourceConnector>) {
/// use connector_core::runtime::{ConnectorSpec, SourceRuntimeConfig};
/// let spec = ConnectorSpec::Source { connector: connector.into(), config: SourceRuntimeConfig::default() };
/// # }
/// ```
#[derive(Clone)]
pub enum ConnectorSpec {
    /// A source connector.
    Source {
        /// The connector.
        connector: Arc<dyn DynSourceConnector>,
        /// Its tasks' settings.
        config: SourceRuntimeConfig,
    },
    /// A sink connector.
    Sink {
        /// The connector.
        connector: Arc<dyn DynSinkConnector>,
        /// Its tasks' settings.
        config: SinkRuntimeConfig,
    },
}

impl ConnectorSpec {
    /// The spec of a connector built from a configuration: its kind picks the settings used.
    ///
    /// ```no_run
    /// # fn example(entry: connector_core::runner::ConnectorEntry) {
    /// use connector_core::runtime::ConnectorSpec;
    /// let spec = ConnectorSpec::new(entry.connector, entry.source_runtime, entry.sink_runtime);
    /// # }
    /// ```
    pub fn new(
        built: BuiltConnector,
        source: SourceRuntimeConfig,
        sink: SinkRuntimeConfig,
    ) -> Self {
        match built {
            BuiltConnector::Source(c) => Self::Source { connector: Arc::from(c), config: source },
            BuiltConnector::Sink(c) => Self::Sink { connector: Arc::from(c), config: sink },
        }
    }

    /// How long draining one of its tasks may take before it is aborted: the drain's timeout and
    /// the final commit's, and a margin for `stop`.
    pub(super) fn drain_bound(&self) -> Duration {
        let ms = match self {
            Self::Source { config, .. } => config.shutdown_timeout_ms,
            Self::Sink { config, .. } => config.shutdown_timeout_ms,
        };
        Duration::from_millis(ms.saturating_mul(2)) + Duration::from_secs(5)
    }
}

impl std::fmt::Debug for ConnectorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Source { config, .. } => {
                f.debug_struct("Source").field("config", config).finish()
            }
            Self::Sink { config, .. } => f.debug_struct("Sink").field("config", config).finish(),
        }
    }
}

/// A task's state, as Kafka Connect reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TaskState {
    /// Started and working.
    Running,
    /// Started and paused: a source task does not poll, a sink task does not `put`; both go on
    /// committing what was delivered.
    Paused,
    /// Stopped by this error; stays so until the task or its connector is restarted.
    Failed(Arc<Error>),
    /// Not running: not started yet (or starting), stopped, or a sink task without partitions.
    Unassigned,
}

/// One task's id and state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TaskStatus {
    /// The task's index within its connector.
    pub id: usize,
    /// Its state.
    pub state: TaskState,
}

/// What the connector was told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectorState {
    /// Its tasks run.
    Running,
    /// Its tasks are paused.
    Paused,
}

/// A connector's state and its tasks'.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectorStatus {
    /// The connector's name.
    pub name: String,
    /// Running or paused.
    pub state: ConnectorState,
    /// Every task, by id.
    pub tasks: Vec<TaskStatus>,
}

/// A task that failed, from [`Worker::wait_failed`](super::Worker::wait_failed).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TaskFailure {
    /// The connector's name.
    pub connector: String,
    /// The task's id.
    pub task: usize,
    /// Why it stopped (with connector and task in its context).
    pub error: Arc<Error>,
}

/// Why a [`Worker`](super::Worker) call was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// No connector of that name runs.
    #[error("no connector named {0:?} runs")]
    UnknownConnector(String),
    /// A connector of that name runs already.
    #[error("a connector named {0:?} runs already")]
    AlreadyRunning(String),
    /// The connector has no task of that id.
    #[error("connector {connector:?} has no task {task}")]
    UnknownTask {
        /// The connector's name.
        connector: String,
        /// The id asked for.
        task: usize,
    },
    /// The worker runs [`MAX_CONNECTORS`] already.
    #[error("the worker runs {0} connectors, its most")]
    TooManyConnectors(usize),
    /// [`Worker::shutdown`](super::Worker::shutdown) was called.
    #[error("the worker is shut down")]
    ShutDown,
    /// The connector could not create its tasks or reach its topics.
    #[error(transparent)]
    Start(#[from] Error),
}
