//! The runtime that drives tasks: [`SourceTaskRuntime`] (poll → Kafka → ordered finalizer →
//! `commit_record` → offsets), [`SinkTaskRuntime`] (fetch → `put` → `pre_commit` → offsets),
//! the connector-level runtimes ([`SourceRuntime`], [`SinkRuntime`]), the [`Worker`] that
//! manages connectors and their tasks at run time, the worker group ([`cluster`]), the [`OrderedFinalizer`], and [`TaskStats`]
//! (per-task counters, read by progress lines and `/metrics`).

mod assignment;
pub mod cluster;
mod commit_request;
mod connector;
mod finalizer;
mod pipeline;
mod sink;
mod source;
mod stats;
mod task;
mod worker;

pub use commit_request::CommitRequester;
pub use connector::{
    assign_round_robin, SinkRuntime, SinkRuntimeBuilder, SourceRuntime, SourceRuntimeBuilder,
    DEFAULT_MAX_TASKS,
};
pub use finalizer::OrderedFinalizer;
pub use pipeline::Pipeline;
pub use sink::{SinkEpoch, SinkGroupSettings, SinkRuntimeConfig, SinkTaskRuntime};
pub use source::{SourceRuntimeConfig, SourceTaskRuntime};
pub use stats::{
    ConnectorCounters, Counter, CustomSample, LatencyHistogram, PartitionLag, StatsSnapshot,
    TaskCounterHandle, TaskCounters, TaskKind, TaskStats, LATENCY_BUCKETS_MS, MAX_COUNTED_TASKS,
    MAX_CUSTOM_COUNTERS, MAX_CUSTOM_COUNTERS_PER_CONNECTOR, MAX_LAG_PARTITIONS,
};
pub use worker::{
    ConnectorSpec, ConnectorState, ConnectorStatus, TaskFailure, TaskState, TaskStatus, Worker,
    WorkerError, MAX_CONNECTORS,
};
