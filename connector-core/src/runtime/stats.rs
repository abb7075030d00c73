//! [`TaskStats`]: counters a running task updates and a progress reporter reads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one task. Cheap to update (relaxed atomics), read with [`TaskStats::snapshot`].
#[derive(Debug, Default)]
pub struct TaskStats {
    records_in: AtomicU64,
    records_out: AtomicU64,
    committed: AtomicU64,
    in_flight: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    dead_letters: AtomicU64,
}

/// A point-in-time copy of [`TaskStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Records taken in: polled from the source, or fetched from Kafka by a sink.
    pub records_in: u64,
    /// Records delivered: acknowledged by Kafka (source), or handed to `put` (sink).
    pub records_out: u64,
    /// Records committed: acknowledged upstream via `commit_record` (source), or covered by a
    /// committed offset (sink).
    pub committed: u64,
    /// Records taken in and not yet committed.
    pub in_flight: u64,
    /// Errors seen (failed deliveries, failed calls).
    pub errors: u64,
    /// Retries of retriable failures.
    pub retries: u64,
    /// Records written to the dead-letter topic.
    pub dead_letters: u64,
}

impl TaskStats {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_in(&self, n: u64) {
        self.records_in.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_out(&self, n: u64) {
        self.records_out.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_committed(&self, n: u64) {
        self.committed.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }
    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }
}
