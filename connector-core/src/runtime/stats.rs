//! The counters tasks update and progress lines and `/metrics` read: [`TaskStats`] (one
//! connector's, a [`TaskCounters`] per task, summed by [`TaskStats::snapshot`]), the source's
//! end-to-end [`LatencyHistogram`], the sink's per-partition [`PartitionLag`], and
//! [`ConnectorCounters`], the bounded set of counters a connector's own code reports (MQTT
//! reconnects by reason, refused publishes by reason code).
//!
//! Hot path: every update is a relaxed atomic on the task's own counters (no lock, no
//! allocation); locks are taken only when a task, a partition or a custom counter is registered
//! and when a scrape reads them.
//!
//! The conservation identity every task keeps (exactly once its records are final; see
//! [`StatsSnapshot::conservation_gap`]):
//!
//! ```text
//! received = written + dead_lettered + dropped + skipped + unsettled + abandoned
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::record::TopicPartition;

/// One connector's live counters: a [`TaskCounters`] per task id (created on first use and kept
/// across task restarts, so counters never go back), read summed with [`snapshot`](Self::snapshot)
/// or per task with [`tasks`](Self::tasks).
///
/// ```
/// use connector_core::runtime::TaskStats;
///
/// let stats = TaskStats::new();
/// let t0 = stats.task(0);
/// let t1 = stats.task(1);
/// assert!(std::sync::Arc::ptr_eq(&t0, &stats.task(0)), "one set of counters per task id");
/// assert_eq!(stats.snapshot().records_in, 0);
/// assert_eq!(stats.tasks().len(), 2);
/// # drop(t1);
/// ```
#[derive(Debug, Default)]
pub struct TaskStats {
    tasks: Mutex<Vec<Arc<TaskCounters>>>,
    custom: ConnectorCounters,
}

/// Most distinct task ids one connector keeps counters for; later ids share the last one's
/// counters (a connector has at most `max_tasks` tasks, far fewer than this).
pub const MAX_COUNTED_TASKS: usize = 4096;

impl TaskStats {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Task `id`'s counters, created on first use.
    pub fn task(&self, id: usize) -> Arc<TaskCounters> {
        let mut tasks = self.tasks.lock();
        if let Some(t) = tasks.iter().find(|t| t.id == id) {
            return Arc::clone(t);
        }
        if tasks.len() >= MAX_COUNTED_TASKS {
            if let Some(last) = tasks.last() {
                return Arc::clone(last);
            }
        }
        let t = Arc::new(TaskCounters::new(id));
        let at = tasks.partition_point(|x| x.id < id);
        tasks.insert(at, Arc::clone(&t));
        t
    }

    /// Every task's counters, by task id.
    pub fn tasks(&self) -> Vec<Arc<TaskCounters>> {
        self.tasks.lock().clone()
    }

    /// The counters the connector's own code registered (all its tasks').
    pub fn custom(&self) -> &ConnectorCounters {
        &self.custom
    }

    /// The sum over the connector's tasks.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.tasks.lock().iter().fold(StatsSnapshot::default(), |sum, t| sum.add(&t.snapshot()))
    }
}

/// A point-in-time copy of a task's counters (or their sum over a connector's tasks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Records taken in: polled from the source (Kafka Connect's `source-record-poll-total`), or
    /// fetched from Kafka and taken by the sink runtime (`sink-record-read-total`).
    pub records_in: u64,
    /// Records delivered: acknowledged by Kafka (source, `source-record-write-total`), or handed
    /// to `put` and accepted (sink, `sink-record-send-total`).
    pub records_out: u64,
    /// Records committed: acknowledged upstream via `commit_record` (source), or covered by a
    /// committed offset (sink).
    pub committed: u64,
    /// Records taken in and not yet committed (source: the in-flight window; sink: read and not
    /// yet covered by a committed offset).
    pub in_flight: u64,
    /// Failures seen (failed records, failed deliveries, failed calls, retried or not): Kafka
    /// Connect's `total-record-failures`.
    pub errors: u64,
    /// Retries of retriable failures (`total-retries`).
    pub retries: u64,
    /// Records written to the dead-letter topic.
    pub dead_letters: u64,
    /// Records handed to the error policy (`total-record-errors`).
    pub record_errors: u64,
    /// Records the error policy tolerated, dead-lettered or logged (`total-records-skipped`).
    pub records_skipped: u64,
    /// Dead-letter writes attempted (`deadletterqueue-produce-requests`).
    pub dlq_requests: u64,
    /// Dead-letter writes that failed (`deadletterqueue-produce-failures`).
    pub dlq_failures: u64,
    /// Offset commits that succeeded (`offset-commit-completion-total`).
    pub offset_commits: u64,
    /// Offset commits that failed (`offset-commit-failure-total`).
    pub offset_commit_failures: u64,
    /// Conservation: records final as delivered (source: acknowledged by Kafka and released
    /// upstream in order; sink: accepted by `put`).
    pub written: u64,
    /// Conservation: records whose outcome was the dead-letter topic instead of delivery (for a
    /// sink, records the destination refused after `put` accepted them count in `written`, and in
    /// `dead_letters`, not here).
    pub dead_lettered: u64,
    /// Conservation: records a transform or predicate dropped.
    pub dropped: u64,
    /// Conservation: records skipped under `errors.tolerance = "all"` without a dead-letter
    /// topic (logged only).
    pub skipped: u64,
    /// Conservation: records given up without an outcome when the task stopped (a failure, a
    /// drain that timed out): never acknowledged upstream (source) or committed (sink), so they
    /// come again after the restart.
    pub abandoned: u64,
    /// Conservation: records taken in that have no outcome yet: the task's window's occupancy,
    /// counted up where records enter it and down where they leave it (source: the ordered
    /// finalizer; sink: the fetched records queued for, or inside, `put`).
    pub unsettled: u64,
    /// Source: records handed to the producer and not yet answered by Kafka.
    pub unacked: u64,
    /// Source: bytes of records polled and not yet final.
    pub held_bytes: u64,
}

impl StatsSnapshot {
    fn add(mut self, o: &StatsSnapshot) -> Self {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            records_in,
            records_out,
            committed,
            in_flight,
            errors,
            retries,
            dead_letters,
            record_errors,
            records_skipped,
            dlq_requests,
            dlq_failures,
            offset_commits,
            offset_commit_failures,
            written,
            dead_lettered,
            dropped,
            skipped,
            abandoned,
            unsettled,
            unacked,
            held_bytes
        );
        self
    }

    /// `records_in - (written + dead_lettered + dropped + skipped + unsettled + abandoned)`: zero
    /// whenever the task is quiet (counters are read one by one, so a busy task may show a
    /// transient difference). Anything else means records were lost or counted twice.
    ///
    /// ```
    /// let s = connector_core::runtime::StatsSnapshot::default();
    /// assert_eq!(s.conservation_gap(), 0);
    /// ```
    pub fn conservation_gap(&self) -> i64 {
        let accounted = self.written
            + self.dead_lettered
            + self.dropped
            + self.skipped
            + self.unsettled
            + self.abandoned;
        i64::try_from(self.records_in).unwrap_or(i64::MAX)
            - i64::try_from(accounted).unwrap_or(i64::MAX)
    }
}

/// Which runtime a task's counters belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Not started yet.
    Unknown,
    /// A source task.
    Source,
    /// A sink task.
    Sink,
}

/// One task's counters. Every update is one relaxed atomic operation.
#[derive(Debug)]
pub struct TaskCounters {
    id: usize,
    kind: AtomicUsize,
    records_in: AtomicU64,
    records_out: AtomicU64,
    committed: AtomicU64,
    in_flight: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    dead_letters: AtomicU64,
    record_errors: AtomicU64,
    records_skipped: AtomicU64,
    dlq_requests: AtomicU64,
    dlq_failures: AtomicU64,
    offset_commits: AtomicU64,
    offset_commit_failures: AtomicU64,
    written: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    abandoned: AtomicU64,
    unsettled: AtomicU64,
    unacked: AtomicU64,
    held_bytes: AtomicU64,
    window_capacity: AtomicU64,
    window_capacity_bytes: AtomicU64,
    latency: LatencyHistogram,
    partitions: Mutex<BTreeMap<TopicPartition, Arc<PartitionLag>>>,
}

/// Most partitions a task reports lag for (partitions past it are read but not reported).
pub const MAX_LAG_PARTITIONS: usize = 1024;

macro_rules! adders {
    ($($(#[$m:meta])* $name:ident => $field:ident;)*) => {
        $( $(#[$m])* #[doc(hidden)] pub fn $name(&self, n: u64) { self.$field.fetch_add(n, Ordering::Relaxed); } )*
    };
}

impl TaskCounters {
    fn new(id: usize) -> Self {
        Self {
            id,
            kind: AtomicUsize::new(0),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            record_errors: AtomicU64::new(0),
            records_skipped: AtomicU64::new(0),
            dlq_requests: AtomicU64::new(0),
            dlq_failures: AtomicU64::new(0),
            offset_commits: AtomicU64::new(0),
            offset_commit_failures: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            unsettled: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            window_capacity: AtomicU64::new(0),
            window_capacity_bytes: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
            partitions: Mutex::new(BTreeMap::new()),
        }
    }

    /// The task id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Source or sink (`Unknown` until the task first ran).
    pub fn kind(&self) -> TaskKind {
        match self.kind.load(Ordering::Relaxed) {
            1 => TaskKind::Source,
            2 => TaskKind::Sink,
            _ => TaskKind::Unknown,
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            records_in: l(&self.records_in),
            records_out: l(&self.records_out),
            committed: l(&self.committed),
            in_flight: l(&self.in_flight),
            errors: l(&self.errors),
            retries: l(&self.retries),
            dead_letters: l(&self.dead_letters),
            record_errors: l(&self.record_errors),
            records_skipped: l(&self.records_skipped),
            dlq_requests: l(&self.dlq_requests),
            dlq_failures: l(&self.dlq_failures),
            offset_commits: l(&self.offset_commits),
            offset_commit_failures: l(&self.offset_commit_failures),
            written: l(&self.written),
            dead_lettered: l(&self.dead_lettered),
            dropped: l(&self.dropped),
            skipped: l(&self.skipped),
            abandoned: l(&self.abandoned),
            unsettled: l(&self.unsettled),
            unacked: l(&self.unacked),
            held_bytes: l(&self.held_bytes),
        }
    }

    /// Source: the window's capacity, (records, bytes): `max_in_flight_records`,
    /// `max_in_flight_bytes`. `(0, 0)` for sinks.
    pub fn window_capacity(&self) -> (u64, u64) {
        (
            self.window_capacity.load(Ordering::Relaxed),
            self.window_capacity_bytes.load(Ordering::Relaxed),
        )
    }

    /// Source: end-to-end latency from `poll` to Kafka's acknowledgement.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Sink: lag of every partition the task reads (at most [`MAX_LAG_PARTITIONS`]).
    pub fn partitions(&self) -> Vec<(TopicPartition, Arc<PartitionLag>)> {
        self.partitions.lock().iter().map(|(tp, l)| (tp.clone(), Arc::clone(l))).collect()
    }

    #[doc(hidden)]
    pub fn set_kind(&self, kind: TaskKind) {
        let k = match kind {
            TaskKind::Unknown => 0,
            TaskKind::Source => 1,
            TaskKind::Sink => 2,
        };
        self.kind.store(k, Ordering::Relaxed);
    }

    #[doc(hidden)]
    pub fn set_window_capacity(&self, records: u64, bytes: u64) {
        self.window_capacity.store(records, Ordering::Relaxed);
        self.window_capacity_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The lag cell of `tp`, registered (and reset to "nothing read yet") for a task that opens
    /// it; `None` past [`MAX_LAG_PARTITIONS`].
    #[doc(hidden)]
    pub fn open_partition(&self, tp: &TopicPartition, committed: i64) -> Option<Arc<PartitionLag>> {
        let mut map = self.partitions.lock();
        if let Some(l) = map.get(tp) {
            l.committed.store(committed, Ordering::Relaxed);
            l.oldest_uncommitted_ms.store(NO_TIMESTAMP, Ordering::Relaxed);
            return Some(Arc::clone(l));
        }
        if map.len() >= MAX_LAG_PARTITIONS {
            return None;
        }
        let l = Arc::new(PartitionLag::new(committed));
        map.insert(tp.clone(), Arc::clone(&l));
        Some(l)
    }

    /// Forgets the lag of partitions the task no longer reads.
    #[doc(hidden)]
    pub fn close_partitions(&self, tps: &[TopicPartition]) {
        let mut map = self.partitions.lock();
        for tp in tps {
            map.remove(tp);
        }
    }

    adders! {
        add_in => records_in;
        add_out => records_out;
        add_committed => committed;
        add_errors => errors;
        add_written => written;
        add_dead_lettered => dead_lettered;
        add_dropped => dropped;
        add_skipped => skipped;
        add_abandoned => abandoned;
        add_offset_commits => offset_commits;
        add_offset_commit_failures => offset_commit_failures;
    }

    #[doc(hidden)]
    pub fn add_error(&self) {
        self.add_errors(1);
    }
    #[doc(hidden)]
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn add_record_error(&self) {
        self.record_errors.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn add_record_skipped(&self) {
        self.records_skipped.fetch_add(1, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn add_dlq_request(&self) {
        self.dlq_requests.fetch_add(1, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn add_dlq_failure(&self) {
        self.dlq_failures.fetch_add(1, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn add_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }
    /// Records entered the window (counted where they enter it, next to `add_in`).
    #[doc(hidden)]
    pub fn add_unsettled(&self, n: u64) {
        self.unsettled.fetch_add(n, Ordering::Relaxed);
    }
    /// Records left the window (counted where they leave it; their outcome is counted apart, so a
    /// record that leaves without one shows in the conservation gap).
    #[doc(hidden)]
    pub fn sub_unsettled(&self, n: u64) {
        self.unsettled.fetch_sub(n, Ordering::Relaxed);
    }
    /// Source: the window's occupancy, stored once per loop turn.
    #[doc(hidden)]
    pub fn set_window(&self, records: u64, unacked: u64, held_bytes: u64) {
        self.in_flight.store(records, Ordering::Relaxed);
        self.unacked.store(unacked, Ordering::Relaxed);
        self.held_bytes.store(held_bytes, Ordering::Relaxed);
    }
}

/// Upper bounds of the latency buckets, in milliseconds (a last bucket, +Inf, follows).
pub const LATENCY_BUCKETS_MS: [u64; 15] =
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000];

/// A histogram of durations with fixed buckets ([`LATENCY_BUCKETS_MS`]): one relaxed atomic add
/// per bucket hit, plus the count and the sum.
///
/// ```
/// use std::time::Duration;
/// use connector_core::runtime::LatencyHistogram;
///
/// let h = LatencyHistogram::default();
/// h.observe(Duration::from_millis(3), 2);
/// let (buckets, count, sum) = h.snapshot();
/// assert_eq!((buckets[2], count), (2, 2)); // the 5 ms bucket (cumulative counts)
/// assert!((sum - 0.006).abs() < 1e-9);
/// ```
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// Observations gathered locally (one batch of acknowledgements) and added to a
/// [`LatencyHistogram`] at once: a few atomic adds per batch instead of three per record.
#[derive(Debug, Default)]
pub(crate) struct LatencyBatch {
    buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    count: u64,
    sum_us: u64,
}

impl LatencyBatch {
    pub(crate) fn observe(&mut self, d: Duration) {
        self.buckets[bucket(d)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
}

fn bucket(d: Duration) -> usize {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    // A bucket's bound is inclusive ("le"): 1.4 ms lands in the 2 ms bucket.
    let exact = d.as_nanos() % 1_000_000 == 0;
    let ms = if exact { ms } else { ms.saturating_add(1) };
    LATENCY_BUCKETS_MS.partition_point(|b| *b < ms)
}

impl LatencyHistogram {
    /// Counts `n` observations of `d`.
    pub fn observe(&self, d: Duration, n: u64) {
        self.buckets[bucket(d)].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us.saturating_mul(n), Ordering::Relaxed);
    }

    /// Adds a batch gathered locally.
    pub(crate) fn add(&self, b: &LatencyBatch) {
        if b.count == 0 {
            return;
        }
        for (cell, n) in self.buckets.iter().zip(b.buckets) {
            if n > 0 {
                cell.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(b.count, Ordering::Relaxed);
        self.sum_us.fetch_add(b.sum_us, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (one per [`LATENCY_BUCKETS_MS`] bound, then +Inf), the count and
    /// the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut acc = 0;
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, self.count.load(Ordering::Relaxed), sum)
    }
}

const NO_TIMESTAMP: i64 = i64::MIN;

/// One sink partition's lag: the high watermark Kafka last reported, the committed offset, and
/// the timestamp of the oldest fetched record not yet committed.
#[derive(Debug)]
pub struct PartitionLag {
    high_watermark: AtomicI64,
    committed: AtomicI64,
    oldest_uncommitted_ms: AtomicI64,
}

impl PartitionLag {
    fn new(committed: i64) -> Self {
        Self {
            high_watermark: AtomicI64::new(-1),
            committed: AtomicI64::new(committed),
            oldest_uncommitted_ms: AtomicI64::new(NO_TIMESTAMP),
        }
    }

    /// The high watermark of the last fetch (`None` before the first).
    pub fn high_watermark(&self) -> Option<i64> {
        Some(self.high_watermark.load(Ordering::Relaxed)).filter(|h| *h >= 0)
    }

    /// The committed offset (the next record to read after a restart).
    pub fn committed(&self) -> i64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Records behind: high watermark minus committed offset (0 before the first fetch).
    pub fn lag_records(&self) -> u64 {
        self.high_watermark().map_or(0, |h| u64::try_from(h - self.committed()).unwrap_or(0))
    }

    /// Time behind at `now_ms` (Unix milliseconds): now minus the timestamp of the oldest
    /// fetched record not yet committed; zero when every fetched record is committed (records not
    /// fetched yet count in [`lag_records`](Self::lag_records) only).
    pub fn lag_time(&self, now_ms: i64) -> Duration {
        match self.oldest_uncommitted_ms.load(Ordering::Relaxed) {
            NO_TIMESTAMP => Duration::ZERO,
            ts => Duration::from_millis(u64::try_from(now_ms - ts).unwrap_or(0)),
        }
    }

    #[doc(hidden)]
    pub fn set_high_watermark(&self, h: i64) {
        self.high_watermark.store(h, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn set_committed(&self, o: i64) {
        self.committed.store(o, Ordering::Relaxed);
    }
    #[doc(hidden)]
    pub fn set_oldest_uncommitted(&self, ts_ms: Option<i64>) {
        self.oldest_uncommitted_ms.store(ts_ms.unwrap_or(NO_TIMESTAMP), Ordering::Relaxed);
    }
}

/// Most counters one task of a connector may register ([`ConnectorCounters::counter`]); later
/// registrations get a counter that counts nothing.
pub const MAX_CUSTOM_COUNTERS: usize = 64;

/// Most counters all the tasks of one connector may register together.
pub const MAX_CUSTOM_COUNTERS_PER_CONNECTOR: usize = 4096;

/// Counters a connector's tasks report about themselves (what only the connector knows: MQTT
/// reconnects and why, publishes the broker refused and its reason code), exported with the
/// runtime's metrics, labelled by connector and task. Bounded: names and label values are
/// `&'static str` (so their set is fixed by the code, not by the data) and at most
/// [`MAX_CUSTOM_COUNTERS`] are registered per task (and [`MAX_CUSTOM_COUNTERS_PER_CONNECTOR`] per
/// connector). Registering is a lock; counting is one relaxed atomic add.
///
/// ```
/// use connector_core::runtime::ConnectorCounters;
///
/// let counters = ConnectorCounters::default();
/// let lost = counters.counter(0, "mqtt_reconnects", "MQTT reconnects, by reason", Some(("reason", "keepalive_timeout")));
/// lost.inc();
/// let again = counters.counter(0, "mqtt_reconnects", "MQTT reconnects, by reason", Some(("reason", "keepalive_timeout")));
/// again.inc();
/// assert_eq!(lost.get(), 2, "the same name, task and label are one counter");
/// assert_eq!(counters.samples().len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConnectorCounters {
    inner: Arc<CountersInner>,
}

#[derive(Debug, Default)]
struct CountersInner {
    samples: Mutex<Vec<CustomSample>>,
    /// A refusal was logged (once per connector: a refused counter is asked for again on every
    /// reconnect).
    warned: std::sync::atomic::AtomicBool,
}

/// One counter registered through [`ConnectorCounters`].
#[derive(Debug, Clone)]
pub struct CustomSample {
    /// The task that counts it.
    pub task: usize,
    /// Metric name (exported with `_total` appended).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// One extra label, `(key, value)`.
    pub label: Option<(&'static str, &'static str)>,
    value: Arc<AtomicU64>,
}

impl CustomSample {
    /// The count now.
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A handle to one counter of [`ConnectorCounters`]: cheap to clone, one relaxed atomic add per
/// count. A handle refused by the bound counts nothing.
#[derive(Debug, Clone, Default)]
pub struct Counter(Option<Arc<AtomicU64>>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        if let Some(v) = &self.0 {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }
    /// The count now (0 for a refused handle).
    pub fn get(&self) -> u64 {
        self.0.as_ref().map_or(0, |v| v.load(Ordering::Relaxed))
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl ConnectorCounters {
    /// Task `task`'s counter `name` (with `label`, if any): the existing one when it was
    /// registered before, else a new one at zero. A name or label key that is not
    /// `[a-z_][a-z0-9_]*`, or one past [`MAX_CUSTOM_COUNTERS`] for the task (or
    /// [`MAX_CUSTOM_COUNTERS_PER_CONNECTOR`]), gives a handle that counts nothing (the first such
    /// refusal of the connector is logged at warn).
    pub fn counter(
        &self,
        task: usize,
        name: &'static str,
        help: &'static str,
        label: Option<(&'static str, &'static str)>,
    ) -> Counter {
        let mut all = self.inner.samples.lock();
        if let Some(s) = all.iter().find(|s| s.task == task && s.name == name && s.label == label) {
            return Counter(Some(Arc::clone(&s.value)));
        }
        let ok = valid_name(name) && label.is_none_or(|(k, _)| valid_name(k));
        let full = all.len() >= MAX_CUSTOM_COUNTERS_PER_CONNECTOR
            || all.iter().filter(|s| s.task == task).count() >= MAX_CUSTOM_COUNTERS;
        if !ok || full {
            if !self.inner.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    name,
                    task,
                    "connector counter refused (bad name or too many counters); it counts nothing (logged once per connector)"
                );
            }
            return Counter(None);
        }
        let value = Arc::new(AtomicU64::new(0));
        all.push(CustomSample { task, name, help, label, value: Arc::clone(&value) });
        Counter(Some(value))
    }

    /// Every registered counter.
    pub fn samples(&self) -> Vec<CustomSample> {
        self.inner.samples.lock().clone()
    }
}

/// A task's handle on its connector's [`ConnectorCounters`]: what [`SourceTaskContext`] and
/// [`SinkTaskContext`] give a task.
///
/// [`SourceTaskContext`]: crate::SourceTaskContext
/// [`SinkTaskContext`]: crate::SinkTaskContext
///
/// ```
/// use connector_core::SourceTaskContext;
///
/// let ctx = SourceTaskContext::new("telemetry", 0, Default::default());
/// let refused = ctx.counters().counter("mqtt_publish_refused", "Publishes the broker refused", Some(("reason", "quota_exceeded")));
/// refused.inc();
/// assert_eq!(refused.get(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct TaskCounterHandle {
    task: usize,
    counters: ConnectorCounters,
}

impl TaskCounterHandle {
    pub(crate) fn new(task: usize, counters: ConnectorCounters) -> Self {
        Self { task, counters }
    }

    /// This task's counter `name`; see [`ConnectorCounters::counter`].
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        label: Option<(&'static str, &'static str)>,
    ) -> Counter {
        self.counters.counter(self.task, name, help, label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_snapshot_sums_its_tasks() {
        let s = TaskStats::new();
        s.task(0).add_in(3);
        s.task(2).add_in(4);
        s.task(2).add_written(4);
        assert_eq!(s.snapshot().records_in, 7);
        assert_eq!(s.tasks().iter().map(|t| t.id()).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(s.snapshot().conservation_gap(), 3);
        s.task(0).add_unsettled(3);
        assert_eq!(s.snapshot().conservation_gap(), 0);
    }

    #[test]
    fn latency_lands_in_its_bucket_and_the_rest_is_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500), 1);
        h.observe(Duration::from_millis(1), 1);
        h.observe(Duration::from_millis(70), 1);
        h.observe(Duration::from_secs(3600), 1);
        let (b, count, _) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(b[0], 2, "<= 1 ms");
        assert_eq!(b[6], 3, "<= 100 ms");
        assert_eq!(b[LATENCY_BUCKETS_MS.len() - 1], 3, "<= 60 s");
        assert_eq!(b[LATENCY_BUCKETS_MS.len()], 4, "+Inf");
    }

    #[test]
    fn custom_counters_are_bounded_and_checked() {
        let c = ConnectorCounters::default();
        assert_eq!(c.counter(0, "Bad-Name", "", None).get(), 0);
        c.counter(0, "Bad-Name", "", None).inc();
        assert!(c.samples().is_empty());
        let reasons: Vec<&'static str> = (0..=MAX_CUSTOM_COUNTERS)
            .map(|i| &*Box::leak(format!("r{i}").into_boxed_str()))
            .collect();
        for r in &reasons[..MAX_CUSTOM_COUNTERS] {
            c.counter(0, "x", "", Some(("reason", r))).inc();
        }
        let over = c.counter(0, "x", "", Some(("reason", reasons[MAX_CUSTOM_COUNTERS])));
        over.inc();
        assert_eq!((over.get(), c.samples().len()), (0, MAX_CUSTOM_COUNTERS));
        let other_task = c.counter(1, "x", "", Some(("reason", reasons[0])));
        other_task.inc();
        assert_eq!(other_task.get(), 1, "the bound is per task");
    }

    #[test]
    fn partition_lag_is_watermark_minus_committed_and_time_since_the_oldest_uncommitted() {
        let t = TaskStats::new().task(0);
        let tp = TopicPartition::new("t", 0);
        let l = t.open_partition(&tp, 10).unwrap_or_else(|| unreachable!());
        assert_eq!(l.lag_records(), 0, "no fetch yet");
        l.set_high_watermark(25);
        assert_eq!(l.lag_records(), 15);
        l.set_oldest_uncommitted(Some(1_000));
        assert_eq!(l.lag_time(4_000), Duration::from_secs(3));
        l.set_oldest_uncommitted(None);
        assert_eq!(l.lag_time(4_000), Duration::ZERO);
        t.close_partitions(&[tp]);
        assert!(t.partitions().is_empty());
    }
}
