//! Reading records: Fetch from a partition leader, decoded into [`SinkRecord`]s with their headers
//! in order, plus the partition's end offset (the high watermark).
//!
//! Kafka answers a fetch with whole record batches, the first one *containing* the requested
//! offset. Some Kafka-compatible brokers (Tansu 0.6) instead return only batches that *start* at or
//! after it, silently skipping the rest of the batch the offset is in, and may repeat batches in
//! one response. A consumer resuming inside a batch (a sink whose acknowledged prefix ended
//! mid-batch) would lose records. [`KafkaClient::fetch`] therefore checks that the first batch
//! covers the requested offset and, when it does not, steps back to find the batch that does, and
//! decodes records in strictly increasing offset order.
//!
//! Tansu 0.6 also moves a partition's high watermark when a produce *reserves* its offsets, before
//! the batch is stored: while producers write concurrently, a fetch can return a later producer's
//! batch while an earlier one is still missing (a gap below the high watermark that fills a moment
//! later). A fetch therefore sorts the batches by offset and returns only the contiguous run from
//! the requested offset; its `next_offset` is where that run ends, so the next fetch starts at the
//! gap. A fetch that starts at a gap waits (up to [`MAX_GAP_WAIT`]) for the missing batch. In a
//! compacted topic a gap can also be records compaction removed, which never come: there a gap is
//! stepped over at once only when the batch after it is older than [`RECENT_GAP`] (Kafka never
//! compacts the active segment, so a gap before a recent batch is most likely a produce still
//! being stored, and is waited for like any other).
//!
//! At [`Isolation::ReadCommitted`] a fetch returns only records of committed transactions (and
//! records written outside transactions), up to the last stable offset. Kafka tells a
//! read_committed consumer which transactions were aborted (the fetch response's aborted
//! transactions); Tansu 0.6 always sends that list empty, so the records of an aborted
//! transaction below the last stable offset would be delivered. We therefore decide each
//! transactional batch by the marker its producer wrote after it (commit or abort), looking ahead
//! past the response when the marker is not in it, and never return a record past a transactional
//! batch not decided yet (the next fetch starts there).

use std::sync::Arc;
use std::time::Duration;

use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messages::{
    FetchRequest, FetchRequestPartition, FetchRequestTopic, IsolationLevel, NORMAL_CONSUMER,
};
use crate::kafka::wire::primitives::{Int32, Int64, String_};
use crate::kafka::wire::record::ControlBatchRecord;
use tracing::{debug, warn};

use crate::kafka::client::{KafkaClient, Lane, OffsetSpec};
use crate::kafka::errors::{api_error, invalidates_metadata};
use crate::kafka::fetch_response::{Batch, BatchRecords, RawFetchRequest};
use crate::kafka::records::decode_batches;
use crate::record::SinkRecord;
use crate::{Error, Result};

/// Which records a fetch returns: Kafka's `isolation.level`.
///
/// ```
/// use connector_core::kafka::Isolation;
///
/// assert_eq!(Isolation::default(), Isolation::ReadUncommitted);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Every record up to the high watermark, of open and aborted transactions too.
    #[default]
    ReadUncommitted,
    /// Records outside transactions and of committed transactions, up to the last stable offset
    /// (the first offset of the oldest open transaction).
    ReadCommitted,
}

impl Isolation {
    fn level(self) -> IsolationLevel {
        match self {
            Self::ReadUncommitted => IsolationLevel::ReadUncommitted,
            Self::ReadCommitted => IsolationLevel::ReadCommitted,
        }
    }
}

/// What one fetch returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// Records at or after the requested offset, in strictly increasing offset order.
    pub records: Vec<SinkRecord>,
    /// The offset to fetch next (past any transaction markers or skipped records).
    pub next_offset: i64,
    /// The end of the partition at the fetch's isolation: at [`Isolation::ReadUncommitted`] the
    /// high watermark (the offset the next written record will get), at
    /// [`Isolation::ReadCommitted`] the last stable offset (no record at or past it is returned
    /// until the transactions open there end).
    pub high_watermark: i64,
}

/// The outcome of a fetch.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchResult {
    /// Records (possibly none, when nothing arrived within the wait).
    Records(Fetched),
    /// The offset is not (or no longer) in the partition; the caller resets it.
    OffsetOutOfRange,
}

/// Raw batches of one partition, its high watermark and last stable offset.
struct RawFetch {
    batches: Vec<Batch>,
    high_watermark: i64,
    /// The last stable offset (the high watermark when the broker did not send one).
    last_stable: i64,
}

impl RawFetch {
    /// Where the records visible at `isolation` end.
    fn end(&self, isolation: Isolation) -> i64 {
        match isolation {
            Isolation::ReadUncommitted => self.high_watermark,
            Isolation::ReadCommitted => self.last_stable.min(self.high_watermark),
        }
    }
}

/// The transaction markers of `batches`: producer id, offset, and whether it commits.
fn markers(batches: &[Batch]) -> impl Iterator<Item = (i64, i64, bool)> + '_ {
    batches.iter().filter_map(|b| match &b.records {
        BatchRecords::Control(c) => {
            Some((b.producer_id, b.base_offset, matches!(c, ControlBatchRecord::Commit)))
        }
        BatchRecords::Records(_) => None,
    })
}

/// Of sorted, contiguous `batches`, what a read_committed consumer sees: batches outside
/// transactions, batches of committed transactions and the markers (which decode to nothing);
/// batches of aborted transactions are dropped. A transactional batch is decided by the next
/// marker of its producer, in `batches` or else in `later` (markers found past them, in order).
/// Returns, per batch, whether it is kept (`None`: not decided).
fn decide(batches: &[Batch], later: &[(i64, i64, bool)]) -> Vec<Option<bool>> {
    use std::collections::HashMap;
    let mut decided: Vec<Option<bool>> = vec![None; batches.len()];
    let mut pending: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, b) in batches.iter().enumerate() {
        match &b.records {
            BatchRecords::Control(c) => {
                let commit = matches!(c, ControlBatchRecord::Commit);
                for j in pending.remove(&b.producer_id).unwrap_or_default() {
                    decided[j] = Some(commit);
                }
                decided[i] = Some(true);
            }
            BatchRecords::Records(_) if b.is_transactional => {
                pending.entry(b.producer_id).or_default().push(i);
            }
            BatchRecords::Records(_) => decided[i] = Some(true),
        }
    }
    for (pid, idx) in pending {
        if let Some(&(_, _, commit)) = later.iter().find(|m| m.0 == pid) {
            for j in idx {
                decided[j] = Some(commit);
            }
        }
    }
    decided
}

/// The batches [`decide`] keeps, up to the first undecided one, and that one's offset.
fn committed_only(batches: Vec<Batch>, decided: &[Option<bool>]) -> (Vec<Batch>, Option<i64>) {
    let mut out = Vec::with_capacity(batches.len());
    for (b, d) in batches.into_iter().zip(decided.iter().copied()) {
        match d {
            Some(true) => out.push(b),
            Some(false) => {}
            None => return (out, Some(b.base_offset)),
        }
    }
    (out, None)
}

/// What a fetch returns of transactional records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Everything (read_uncommitted).
    Uncommitted,
    /// Read_committed: committed records up to the last stable offset, stopping at a
    /// transaction not decided yet.
    Committed,
    /// Up to the high watermark: committed records, skipping transactions not decided yet.
    Decided,
}

/// Most look-ahead fetches spent finding the markers of transactions a fetch could not decide.
const MAX_MARKER_FETCHES: usize = 64;

fn batch_end(b: &Batch) -> i64 {
    b.base_offset + i64::from(b.last_offset_delta) + 1
}

/// Whether one of `batches` holds `offset`.
fn covers(batches: &[Batch], offset: i64) -> bool {
    batches.iter().any(|b| b.base_offset <= offset && batch_end(b) > offset)
}

/// Puts batches in offset order (a broker may hand them out of order; the sort is stable, so of
/// repeated batches the first stays first).
fn sort_batches(batches: &mut [Batch]) {
    batches.sort_by_key(|b| b.base_offset);
}

/// Sorted batches split at the first gap after `from`.
struct Run {
    /// The batches that hold offsets from `from` on without a gap.
    kept: Vec<Batch>,
    /// The batches after the first gap.
    rest: Vec<Batch>,
}

/// Splits sorted `batches` into the contiguous run from `from` (batches ending at or before
/// `from`, such as repeats, are dropped) and what follows the first gap, and returns the offset
/// where the run ends (`from` when no batch holds `from`).
fn contiguous_run(batches: Vec<Batch>, from: i64) -> (Run, i64) {
    let mut end = from;
    let mut kept = Vec::new();
    let mut rest = Vec::new();
    for b in batches {
        if !rest.is_empty() {
            rest.push(b);
        } else if batch_end(&b) <= end {
            // A repeat, or a batch wholly before the requested offset.
        } else if b.base_offset <= end {
            end = batch_end(&b);
            kept.push(b);
        } else {
            rest.push(b);
        }
    }
    (Run { kept, rest }, end)
}

impl Run {
    /// The batches to decode for a fetch at `offset` and the offset to fetch next: the run up to
    /// `end` (where it stops), or, when the gaps are records compaction removed, every batch and
    /// the end of the last one.
    fn into_batches(self, end: i64, offset: i64, gaps_are_removed: bool) -> (Vec<Batch>, i64) {
        if gaps_are_removed {
            let next = self.rest.iter().map(batch_end).fold(end, i64::max).max(offset);
            let mut all = self.kept;
            all.extend(self.rest);
            (all, next)
        } else {
            (self.kept, end.max(offset))
        }
    }
}

/// Longest a fetch waits for a gap below the high watermark to fill.
const MAX_GAP_WAIT: Duration = Duration::from_secs(5);

/// How recent (by its timestamp) the batch after a gap of a compacted topic must be for the gap
/// to be waited for rather than taken as records compaction removed.
const RECENT_GAP: Duration = Duration::from_secs(60);

/// Whether a gap of a compacted topic followed by `next` may be a produce not stored yet: `next`
/// was written less than [`RECENT_GAP`] before `now_ms` (or has a timestamp in the future).
fn gap_may_fill(next: &Batch, now_ms: i64) -> bool {
    let recent = i64::try_from(RECENT_GAP.as_millis()).unwrap_or(i64::MAX);
    next.max_timestamp.max(next.first_timestamp) > now_ms.saturating_sub(recent)
}

/// Whether the first of `batches` ending after `offset` (the batch after a gap at `offset`) is
/// recent, see [`gap_may_fill`].
fn next_is_recent(batches: &[Batch], offset: i64) -> bool {
    let now = crate::record::Timestamp::now().as_millis();
    batches.iter().find(|b| batch_end(b) > offset).is_some_and(|b| gap_may_fill(b, now))
}

/// Pause between the fetches that wait for a gap to fill.
const GAP_POLL: Duration = Duration::from_millis(5);

/// The connection lane of `topic`/`partition`'s fetches: its own, so a long poll on one partition
/// holds up nothing else.
fn fetch_lane(topic: &str, partition: i32) -> Lane {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (topic, partition).hash(&mut h);
    Lane::Fetch(h.finish())
}

/// Most step-back fetches spent finding the batch that holds a mid-batch offset.
const MAX_LOCATE_FETCHES: usize = 64;

impl KafkaClient {
    /// Fetches records of `topic`/`partition` from `offset`, waiting up to `max_wait` for some to
    /// arrive, and at most the configured `fetch_max_bytes` (a larger first batch is still returned
    /// whole).
    ///
    /// # Errors
    /// Retriable when the leader is unreachable or moved; fatal for authorization and similar.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
    ) -> Result<FetchResult> {
        self.fetch_isolated(topic, partition, offset, max_wait, Isolation::ReadUncommitted).await
    }

    /// [`fetch`](Self::fetch) at `isolation`. At [`Isolation::ReadCommitted`] only records of
    /// committed transactions (and outside transactions) are returned, up to the last stable
    /// offset, which [`Fetched::high_watermark`] then is.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use connector_core::kafka::{FetchResult, Isolation, KafkaClient, KafkaConfig};
    ///
    /// # async fn example() -> connector_core::Result<()> {
    /// let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
    /// let wait = Duration::from_millis(100);
    /// if let FetchResult::Records(f) =
    ///     client.fetch_isolated("telemetry", 0, 0, wait, Isolation::ReadCommitted).await?
    /// {
    ///     println!("{} committed records, stable up to {}", f.records.len(), f.high_watermark);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As for [`fetch`](Self::fetch).
    pub async fn fetch_isolated(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<FetchResult> {
        let mode = match isolation {
            Isolation::ReadUncommitted => Mode::Uncommitted,
            Isolation::ReadCommitted => Mode::Committed,
        };
        Ok(self.fetch_mode(topic, partition, offset, max_wait, mode).await?.0)
    }

    /// A fetch up to the high watermark that returns records outside transactions and of
    /// transactions whose commit marker is written, and skips (instead of stopping at) those of
    /// transactions not decided yet; with the offset of the first skipped one. For the offsets
    /// store: a transaction that is open (or that Tansu holds "prepared", see `docs/kafka-io.md`)
    /// does not hold back the records after it.
    ///
    /// # Errors
    /// As for [`fetch`](Self::fetch).
    pub(crate) async fn fetch_decided(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
    ) -> Result<(FetchResult, Option<i64>)> {
        self.fetch_mode(topic, partition, offset, max_wait, Mode::Decided).await
    }

    async fn fetch_mode(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
        mode: Mode,
    ) -> Result<(FetchResult, Option<i64>)> {
        let isolation = match mode {
            Mode::Committed => Isolation::ReadCommitted,
            Mode::Uncommitted | Mode::Decided => Isolation::ReadUncommitted,
        };
        let Some(mut raw) = self.raw_fetch(topic, partition, offset, max_wait, isolation).await?
        else {
            return Ok((FetchResult::OffsetOutOfRange, None));
        };
        sort_batches(&mut raw.batches);
        let mut compacted = None;
        let mut start = offset;
        let covered = covers(&raw.batches, offset);
        if !covered && (offset < raw.end(isolation) || !raw.batches.is_empty()) {
            if let Some(mut found) = self.locate(topic, partition, offset, isolation).await? {
                sort_batches(&mut found.batches);
                raw = found;
            } else {
                // No batch holds `offset`: in a compacted topic compaction removed it (unless the
                // batch after it is recent); otherwise a produce reserved it and has not stored
                // its batch yet, or (after a wait) the broker lost it.
                let removed = self.is_compacted(topic, &mut compacted).await?
                    && !next_is_recent(&raw.batches, offset);
                if !removed {
                    if let Some(mut found) =
                        self.wait_for_gap(topic, partition, offset, isolation).await?
                    {
                        sort_batches(&mut found.batches);
                        raw = found;
                    }
                }
                if !covers(&raw.batches, offset) {
                    if let Some(first) = raw.batches.iter().find(|b| batch_end(b) > offset) {
                        if !removed {
                            warn!(
                                topic,
                                partition,
                                offset,
                                next = first.base_offset,
                                waited = ?MAX_GAP_WAIT.min(self.config().request_timeout()),
                                "records missing below the high watermark did not appear; skipping them"
                            );
                        }
                        start = first.base_offset.max(offset);
                    }
                }
            }
        }
        let visible_end = raw.end(isolation);
        let raw_high_watermark = raw.high_watermark;
        let (run, end) = contiguous_run(raw.batches, start);
        // Gaps in a compacted topic are removed records, not records still being written, unless
        // the batch after the first gap is recent: then the run ends there and the next fetch,
        // starting at the gap, waits for it.
        let gaps_are_removed = !run.rest.is_empty()
            && end < visible_end
            && !next_is_recent(&run.rest, end)
            && self.is_compacted(topic, &mut compacted).await?;
        if let (false, Some(next)) = (gaps_are_removed, run.rest.first()) {
            debug!(
                topic,
                partition,
                offset,
                gap = end,
                next = next.base_offset,
                "batches missing below the high watermark: returning the records before the gap"
            );
        }
        let (mut batches, mut next_offset) = run.into_batches(end, offset, gaps_are_removed);
        let mut skipped = None;
        if mode != Mode::Uncommitted {
            let mut decided = decide(&batches, &[]);
            // A transaction whose marker is past this response, with nothing before it to
            // return (or, for `Decided`, any): look ahead for the marker.
            let look = match mode {
                Mode::Committed => decided.first().is_some_and(Option::is_none),
                _ => decided.iter().any(Option::is_none),
            };
            if look {
                let wanted: Vec<i64> = batches
                    .iter()
                    .zip(&decided)
                    .filter(|(_, d)| d.is_none())
                    .map(|(b, _)| b.producer_id)
                    .collect();
                let later = self
                    .later_markers(topic, partition, next_offset, raw_high_watermark, &wanted)
                    .await?;
                decided = decide(&batches, &later);
            }
            if mode == Mode::Decided {
                skipped = batches
                    .iter()
                    .zip(&decided)
                    .find(|(_, d)| d.is_none())
                    .map(|(b, _)| b.base_offset);
                batches = batches
                    .into_iter()
                    .zip(decided)
                    .filter_map(|(b, d)| (d == Some(true)).then_some(b))
                    .collect();
            } else {
                let (kept, undecided) = committed_only(batches, &decided);
                batches = kept;
                if let Some(at) = undecided {
                    next_offset = at.max(offset);
                }
            }
        }
        let topic_name: Arc<str> = Arc::from(topic);
        let records = decode_batches(&topic_name, partition, batches, offset)?;
        let fetched = Fetched { records, next_offset, high_watermark: visible_end };
        Ok((FetchResult::Records(fetched), skipped))
    }

    /// The transaction markers from `from` up to `until` (the high watermark: a marker of a
    /// transaction that ended can lie past the last stable offset, when a transaction that began
    /// before it ended is still open), until one of each of `wanted` producers is found; at most
    /// [`MAX_MARKER_FETCHES`] fetches, at read_uncommitted.
    async fn later_markers(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        until: i64,
        wanted: &[i64],
    ) -> Result<Vec<(i64, i64, bool)>> {
        let mut found: Vec<(i64, i64, bool)> = Vec::new();
        let mut at = from;
        for _ in 0..MAX_MARKER_FETCHES {
            if at >= until || wanted.iter().all(|p| found.iter().any(|m| m.0 == *p)) {
                break;
            }
            let Some(mut raw) = self
                .raw_fetch(
                    topic,
                    partition,
                    at,
                    Duration::from_millis(1),
                    Isolation::ReadUncommitted,
                )
                .await?
            else {
                break;
            };
            sort_batches(&mut raw.batches);
            found.extend(markers(&raw.batches).filter(|m| m.1 >= at));
            let end = raw.batches.iter().map(batch_end).max().unwrap_or(at);
            if end <= at {
                break;
            }
            at = end;
        }
        Ok(found)
    }

    /// Whether `topic` is compacted (`cleanup.policy` names `compact`), asked at most once per
    /// fetch. A broker that does not describe topic configs counts as not compacted.
    async fn is_compacted(&self, topic: &str, known: &mut Option<bool>) -> Result<bool> {
        if let Some(k) = *known {
            return Ok(k);
        }
        let compacted = self.topic_configs(topic).await?.is_some_and(|c| {
            c.get("cleanup.policy")
                .cloned()
                .flatten()
                .is_some_and(|p| p.split(',').any(|x| x.trim() == "compact"))
        });
        *known = Some(compacted);
        Ok(compacted)
    }

    /// Fetches at `offset` again until a batch holding it appears, for at most [`MAX_GAP_WAIT`]
    /// (capped by the request timeout): the batch of a produce that reserved its offsets but is
    /// not stored yet. `None` when it did not appear (or the offset went out of range).
    async fn wait_for_gap(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        isolation: Isolation,
    ) -> Result<Option<RawFetch>> {
        let started = std::time::Instant::now();
        let limit = MAX_GAP_WAIT.min(self.config().request_timeout());
        while started.elapsed() < limit {
            tokio::time::sleep(GAP_POLL).await;
            let Some(raw) = self
                .raw_fetch(topic, partition, offset, Duration::from_millis(1), isolation)
                .await?
            else {
                return Ok(None);
            };
            if covers(&raw.batches, offset) {
                debug!(topic, partition, offset, waited = ?started.elapsed(), "a gap below the high watermark filled");
                return Ok(Some(raw));
            }
        }
        Ok(None)
    }

    /// Finds the batches from the one holding `offset` when a fetch at `offset` skipped it: fetch
    /// from further back (1, 2, 4, ... records) until a batch starts at or before `offset`, then walk
    /// forward batch by batch until one ends after it. `None` when no batch holds it (the records
    /// were deleted or compacted away), in which case the skip was right.
    async fn locate(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        isolation: Isolation,
    ) -> Result<Option<RawFetch>> {
        let earliest = self.list_offset(topic, partition, OffsetSpec::Earliest).await?;
        let mut back: i64 = 1;
        let mut probe = offset.saturating_sub(back).max(earliest);
        for _ in 0..MAX_LOCATE_FETCHES {
            if probe >= offset {
                return Ok(None);
            }
            let Some(raw) = self
                .raw_fetch(topic, partition, probe, Duration::from_millis(1), isolation)
                .await?
            else {
                return Ok(None);
            };
            let starts_before = raw.batches.first().is_some_and(|b| b.base_offset <= offset);
            if raw.batches.iter().any(|b| b.base_offset <= offset && batch_end(b) > offset) {
                debug!(
                    topic,
                    partition, offset, probe, "found the batch holding a mid-batch offset"
                );
                return Ok(Some(raw));
            }
            if starts_before {
                // Every returned batch ends at or before `offset`: walk forward from the last.
                let end = raw.batches.iter().map(batch_end).max().unwrap_or(offset);
                if end <= probe {
                    return Ok(None);
                }
                probe = end;
            } else if probe <= earliest {
                return Ok(None);
            } else {
                back = back.saturating_mul(2);
                probe = offset.saturating_sub(back).max(earliest);
            }
        }
        Err(Error::retriable(format!(
            "could not find the record batch holding {topic}-{partition}@{offset}"
        )))
    }

    /// One Fetch request; `None` when the offset is out of range.
    async fn raw_fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<Option<RawFetch>> {
        let leader = self.leader_for(topic, partition).await?;
        let max_bytes = self.config().fetch_max_bytes;
        let request = FetchRequest {
            replica_id: NORMAL_CONSUMER,
            // Tansu rejects a zero wait; 1 ms is "return what you have".
            max_wait_ms: Int32(i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX).max(1)),
            min_bytes: Int32(1),
            max_bytes: Some(Int32(max_bytes)),
            isolation_level: Some(isolation.level()),
            topics: vec![FetchRequestTopic {
                topic: String_(topic.to_owned()),
                partitions: vec![FetchRequestPartition {
                    partition: Int32(partition),
                    fetch_offset: Int64(offset),
                    partition_max_bytes: Int32(max_bytes),
                }],
            }],
        };
        // Decoded by our codec: rskafka misreads transaction markers (see `fetch_response.rs`).
        let response = self
            .request_node(leader, fetch_lane(topic, partition), RawFetchRequest(request))
            .await?;
        let found = response
            .topics
            .into_iter()
            .filter(|(t, _)| t == topic)
            .flat_map(|(_, ps)| ps)
            .find(|p| p.partition_index == partition);
        let Some(p) = found else {
            return Err(Error::retriable(format!(
                "fetch: broker sent no data for {topic}-{partition}"
            )));
        };
        match p.error_code {
            None => {}
            Some(ApiError::OffsetOutOfRange) => return Ok(None),
            Some(e) => {
                if invalidates_metadata(e) {
                    self.invalidate_topic(topic);
                }
                return Err(api_error(e, format!("fetch from {topic}-{partition}@{offset}"))
                    .with_topic(topic)
                    .with_partition(partition)
                    .with_offset(offset));
            }
        }
        let high_watermark = p.high_watermark;
        // -1: the broker does not know it (Kafka before 0.11); take the high watermark.
        let last_stable =
            if p.last_stable_offset < 0 { high_watermark } else { p.last_stable_offset };
        Ok(Some(RawFetch { batches: p.batches, high_watermark, last_stable }))
    }

    /// The offset the next record written to the partition will get.
    ///
    /// Read from a fetch's high watermark rather than ListOffsets, which some Kafka-compatible
    /// brokers (Tansu 0.6 on memory storage) answer with the last batch's base offset + 1.
    ///
    /// # Errors
    /// Retriable when the leader is unreachable.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64> {
        self.end_offset_isolated(topic, partition, Isolation::ReadUncommitted).await
    }

    /// The last stable offset of the partition: where a read_committed consumer's records end
    /// (the first offset of the oldest open transaction, or the high watermark when none is open).
    ///
    /// Read from a read_committed fetch's `last_stable_offset`: Tansu 0.6 (memory storage)
    /// answers ListOffsets latest at read_committed with the offset after some stored batch, not
    /// the last stable offset.
    ///
    /// # Errors
    /// Retriable when the leader is unreachable.
    pub async fn stable_end_offset(&self, topic: &str, partition: i32) -> Result<i64> {
        self.end_offset_isolated(topic, partition, Isolation::ReadCommitted).await
    }

    /// [`end_offset`](Self::end_offset) at `isolation`: at [`Isolation::ReadCommitted`] the
    /// [`stable_end_offset`](Self::stable_end_offset).
    ///
    /// # Errors
    /// Retriable when the leader is unreachable.
    pub async fn end_offset_isolated(
        &self,
        topic: &str,
        partition: i32,
        isolation: Isolation,
    ) -> Result<i64> {
        let earliest = self.list_offset(topic, partition, OffsetSpec::Earliest).await?;
        match self
            .raw_fetch(topic, partition, earliest, Duration::from_millis(1), isolation)
            .await?
        {
            Some(raw) => Ok(raw.end(isolation)),
            None => Err(Error::retriable(format!(
                "{topic}-{partition}: earliest offset {earliest} moved while reading the end offset"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::config::Compression;
    use crate::kafka::records::{build_batch, PendingRecord};
    use crate::record::Headers;
    use bytes::Bytes;

    /// A batch of `n` records at `base` (values are the offsets, as text).
    fn batch(base: i64, n: i64) -> Batch {
        let records: Vec<PendingRecord> = (base..base + n)
            .map(|o| PendingRecord {
                key: None,
                value: Some(Bytes::from(o.to_string())),
                headers: Headers::new(),
                timestamp: 1,
            })
            .collect();
        let mut b = Batch::from(build_batch(&records, Compression::None));
        b.base_offset = base;
        b
    }

    /// A commit marker at `offset`.
    fn marker(offset: i64) -> Batch {
        let mut b = batch(offset, 1);
        b.records = BatchRecords::Control(ControlBatchRecord::Commit);
        b.is_transactional = true;
        b
    }

    /// What a fetch at `offset` makes of `batches`: record offsets and the next offset.
    fn assemble(mut batches: Vec<Batch>, offset: i64, removed: bool) -> (Vec<i64>, i64) {
        sort_batches(&mut batches);
        let (run, end) = contiguous_run(batches, offset);
        let (batches, next) = run.into_batches(end, offset, removed);
        let topic: Arc<str> = Arc::from("t");
        let records = decode_batches(&topic, 0, batches, offset).unwrap();
        for r in &records {
            assert_eq!(r.value.as_deref(), Some(r.offset.to_string().as_bytes()));
        }
        (records.iter().map(|r| r.offset).collect(), next)
    }

    #[test]
    fn a_compacted_gap_is_waited_for_only_before_a_recent_batch() {
        let now = 1_000_000_000;
        let mut b = batch(10, 2);
        b.first_timestamp = now - 1_000;
        b.max_timestamp = now - 500;
        assert!(gap_may_fill(&b, now), "written half a second ago: may be a produce in flight");
        b.first_timestamp = now - 3_600_000;
        b.max_timestamp = now - 3_600_000;
        assert!(!gap_may_fill(&b, now), "an hour old: the gap before it is compaction");
        b.max_timestamp = now + 5_000;
        assert!(gap_may_fill(&b, now), "a clock ahead of ours counts as recent");
        let old = batch(5, 1);
        assert!(!next_is_recent(&[old], 3), "timestamp 1 (1970) is old");
    }

    #[test]
    fn out_of_order_batches_are_returned_in_offset_order() {
        let (offsets, next) = assemble(vec![batch(16, 2), batch(10, 3), batch(13, 3)], 10, false);
        assert_eq!(offsets, (10..18).collect::<Vec<_>>());
        assert_eq!(next, 18);
    }

    #[test]
    fn a_gap_ends_the_fetch_at_its_start_so_the_next_fetch_starts_there() {
        // 13..16 reserved but not stored yet; 16..18 already there.
        let (offsets, next) = assemble(vec![batch(10, 3), batch(16, 2)], 10, false);
        assert_eq!(offsets, [10, 11, 12]);
        assert_eq!(next, 13, "never past a record it did not return");
        // Also when the later batch comes first.
        let (offsets, next) = assemble(vec![batch(16, 2), batch(10, 3)], 10, false);
        assert_eq!(offsets, [10, 11, 12]);
        assert_eq!(next, 13);
    }

    #[test]
    fn a_fetch_starting_at_a_gap_returns_nothing_and_stays_there() {
        let (offsets, next) = assemble(vec![batch(16, 2)], 13, false);
        assert!(offsets.is_empty());
        assert_eq!(next, 13);
    }

    #[test]
    fn gaps_of_a_compacted_topic_are_stepped_over() {
        let (offsets, next) = assemble(vec![batch(16, 2), batch(10, 3), batch(25, 1)], 10, true);
        assert_eq!(offsets, [10, 11, 12, 16, 17, 25]);
        assert_eq!(next, 26);
    }

    #[test]
    fn repeated_and_overlapping_batches_yield_each_record_once() {
        let (offsets, next) =
            assemble(vec![batch(13, 3), batch(10, 3), batch(10, 3), batch(12, 3)], 10, false);
        assert_eq!(offsets, (10..16).collect::<Vec<_>>());
        assert_eq!(next, 16);
    }

    #[test]
    fn a_fetch_inside_a_batch_starts_at_the_requested_offset() {
        let (offsets, next) = assemble(vec![batch(8, 4), batch(12, 1)], 10, false);
        assert_eq!(offsets, [10, 11, 12]);
        assert_eq!(next, 13);
    }

    #[test]
    fn transaction_markers_take_their_offset_in_the_run() {
        let (offsets, next) = assemble(vec![batch(10, 2), marker(12), batch(13, 2)], 10, false);
        assert_eq!(offsets, [10, 11, 13, 14]);
        assert_eq!(next, 15);
        // A marker last: the next fetch starts after it.
        let (offsets, next) = assemble(vec![marker(12), batch(10, 2)], 10, false);
        assert_eq!(offsets, [10, 11]);
        assert_eq!(next, 13);
    }

    /// A transactional batch of producer `pid`.
    fn txn(base: i64, n: i64, pid: i64) -> Batch {
        let mut b = batch(base, n);
        b.is_transactional = true;
        b.producer_id = pid;
        b
    }

    /// A marker of producer `pid` at `offset`.
    fn end_txn(offset: i64, pid: i64, commit: bool) -> Batch {
        let mut b = marker(offset);
        b.producer_id = pid;
        if !commit {
            b.records = BatchRecords::Control(ControlBatchRecord::Abort);
        }
        b
    }

    /// What a read_committed fetch at `offset` makes of `batches` (markers `later` past them).
    fn committed(batches: Vec<Batch>, later: &[(i64, i64, bool)]) -> (Vec<i64>, Option<i64>) {
        let decided = decide(&batches, later);
        let (kept, undecided) = committed_only(batches, &decided);
        let topic: Arc<str> = Arc::from("t");
        let records = decode_batches(&topic, 0, kept, 0).unwrap();
        (records.iter().map(|r| r.offset).collect(), undecided)
    }

    #[test]
    fn read_committed_drops_aborted_transactions_and_keeps_committed_ones() {
        // Producer 1 commits 0..2, producer 2 aborts 2..4, interleaved with a plain batch.
        let batches = vec![
            txn(0, 2, 1),
            txn(2, 2, 2),
            batch(4, 1),
            end_txn(5, 1, true),
            end_txn(6, 2, false),
        ];
        assert_eq!(committed(batches, &[]), (vec![0, 1, 4], None));
    }

    #[test]
    fn read_committed_stops_at_a_transaction_not_decided_yet() {
        let batches = || vec![batch(0, 1), txn(1, 2, 7), batch(3, 1)];
        assert_eq!(committed(batches(), &[]), (vec![0], Some(1)));
        // Its marker found by looking ahead decides it.
        assert_eq!(committed(batches(), &[(7, 9, true)]), (vec![0, 1, 2, 3], None));
        assert_eq!(committed(batches(), &[(7, 9, false)]), (vec![0, 3], None));
    }

    #[test]
    fn a_producers_next_transaction_is_decided_by_its_next_marker() {
        let batches = vec![txn(0, 1, 1), end_txn(1, 1, false), txn(2, 1, 1), end_txn(3, 1, true)];
        assert_eq!(committed(batches, &[]), (vec![2], None));
    }

    #[test]
    fn batches_wholly_before_the_requested_offset_are_left_out() {
        let (offsets, next) = assemble(vec![batch(5, 3), batch(8, 2), batch(10, 2)], 10, false);
        assert_eq!(offsets, [10, 11]);
        assert_eq!(next, 12);
    }
}
