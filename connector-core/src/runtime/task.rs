//! What the source and sink task runtimes share: the task's identity, its Kafka client, offset
//! store and counters ([`TaskBase`]), and the pause switch a [`Worker`](crate::runtime::Worker)
//! flips ([`PauseSwitch`]).

use std::sync::Arc;

use tokio::sync::watch;

use crate::kafka::KafkaClient;
use crate::offset::OffsetStore;
use crate::runtime::stats::TaskStats;

/// Called once the task's `start` returned `Ok` (the worker reports the task Running from then).
pub(crate) type OnStarted = Box<dyn FnOnce() + Send>;

/// The parts every task runtime holds besides the task and its settings.
pub(crate) struct TaskBase {
    pub(crate) name: Arc<str>,
    pub(crate) task_id: usize,
    pub(crate) client: KafkaClient,
    pub(crate) offsets: Arc<dyn OffsetStore>,
    pub(crate) stats: Arc<TaskStats>,
    pub(crate) pause: PauseSwitch,
    pub(crate) on_started: Option<OnStarted>,
}

impl TaskBase {
    pub(crate) fn new(
        name: impl Into<Arc<str>>,
        task_id: usize,
        client: KafkaClient,
        offsets: Arc<dyn OffsetStore>,
    ) -> Self {
        Self {
            name: name.into(),
            task_id,
            client,
            offsets,
            stats: Arc::new(TaskStats::new()),
            pause: PauseSwitch::default(),
            on_started: None,
        }
    }

    /// Tells the owner the task started.
    pub(crate) fn started(&mut self) {
        if let Some(f) = self.on_started.take() {
            f();
        }
    }
}

/// The receiving end of a pause switch: `true` while the task is paused. Without one (or once
/// its sender is gone) the task is never paused.
#[derive(Debug, Default)]
pub(crate) struct PauseSwitch(Option<watch::Receiver<bool>>);

impl PauseSwitch {
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Self {
        Self(Some(rx))
    }

    /// Whether the task is paused now.
    pub(crate) fn is_paused(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Resolves when the switch is flipped; never when there is no switch. Cancel-safe.
    pub(crate) async fn changed(&mut self) {
        let Some(rx) = self.0.as_mut() else { return std::future::pending().await };
        if rx.changed().await.is_err() {
            // The sender is gone: nobody can pause the task any more.
            self.0 = None;
        }
    }
}
