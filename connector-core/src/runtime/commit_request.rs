//! [`CommitRequester`]: how a sink task asks the runtime to commit soon (Kafka Connect's
//! `SinkTaskContext.requestCommit()`), typically when acknowledgements arrive, and how a source
//! task asks it to save its offsets soon (`SourceTaskContext::commit_requester`).

use std::sync::Arc;

use tokio::sync::Notify;

/// A cheap, cloneable handle that asks the sink runtime to call `pre_commit` and save its offsets
/// soon, instead of at the next `commit_interval_ms` (the source runtime: to save the source
/// offsets and call `SourceTask::commit`, instead of at the next `offset_flush_interval_ms`). Callable from any task or thread; requests
/// made while a save is in flight are coalesced into one more commit after it.
///
/// ```
/// use connector_core::SinkTaskContext;
///
/// let ctx = SinkTaskContext::new("commands", 0);
/// let commit = ctx.commit_requester();
/// std::thread::spawn(move || commit.request()).join().unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct CommitRequester {
    wake: Arc<Notify>,
}

impl CommitRequester {
    /// A requester no runtime listens to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a commit soon. Never blocks; many requests before the runtime looks count as one.
    pub fn request(&self) {
        self.wake.notify_one();
    }

    /// Resolves once a commit was requested (consuming the request).
    pub(crate) async fn requested(&self) {
        self.wake.notified().await;
    }
}
