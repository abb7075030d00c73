//! Running a configuration: every connector on one [`Worker`], a periodic progress line per
//! connector, and the first failing task stopping everything gracefully; or, with a worker
//! group (`[cluster] group_id`), this process's share of the tasks through a [`Herder`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::kafka::KafkaClient;
use crate::offset::{FileOffsetStore, KafkaOffsetStore, MemoryOffsetStore, OffsetStore};
use crate::runner::file::{ConnectFile, OffsetStoreKind};
use crate::runtime::cluster::{Herder, HerderConfig};
use crate::runtime::{
    ConnectorSpec, SinkGroupSettings, StatsSnapshot, TaskStats, Worker, WorkerError,
};
use crate::{Error, Result};

/// One connector's counters, for progress lines.
struct Tracked {
    name: String,
    type_name: String,
    stats: Arc<TaskStats>,
    last: StatsSnapshot,
}

/// Runs every connector of `file` until `shutdown` is cancelled (each then drains and commits, and
/// this returns `Ok`) or a connector fails (the others are stopped gracefully and its error is
/// returned).
///
/// ```no_run
/// use connector_core::runner::{run, ConnectFile, Registry};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(registry: Registry) -> connector_core::Result<()> {
/// let file = ConnectFile::load("connect.toml".as_ref(), &registry)
///     .map_err(connector_core::Error::from)?;
/// run(file, CancellationToken::new()).await
/// # }
/// ```
///
/// # Errors
/// Kafka unreachable at start (after the bounded retry of [`KafkaClient::connect`]), an offsets
/// store that cannot be opened, or the first connector's fatal error.
pub async fn run(file: ConnectFile, shutdown: CancellationToken) -> Result<()> {
    if file.cluster.group_id.is_some() {
        return run_distributed(file, shutdown).await;
    }
    let client = KafkaClient::connect(file.kafka.clone()).await?;
    let offsets: Arc<dyn OffsetStore> = match file.offsets.store {
        OffsetStoreKind::File => Arc::new(FileOffsetStore::open(&file.offsets.path).await?),
        OffsetStoreKind::Kafka => {
            Arc::new(KafkaOffsetStore::new(client.clone(), file.offsets.topic.clone()))
        }
        OffsetStoreKind::Memory => Arc::new(MemoryOffsetStore::new()),
    };
    let worker = Worker::new(client, offsets);
    let mut tracked = Vec::new();
    let mut first_error: Option<Error> = None;
    for entry in file.connectors {
        info!(connector = %entry.name, r#type = %entry.type_name, "starting connector");
        let spec = ConnectorSpec::new(entry.connector, entry.source_runtime, entry.sink_runtime);
        // Starting a sink may wait on its topics' metadata: shutdown cuts it short.
        let started = tokio::select! {
            r = worker.start(&entry.name, spec) => r,
            () = shutdown.cancelled() => break,
        };
        match started {
            Ok(()) => tracked.push(Tracked {
                stats: worker.stats(&entry.name).unwrap_or_default(),
                name: entry.name,
                type_name: entry.type_name,
                last: StatsSnapshot::default(),
            }),
            Err(e) => {
                error!(connector = %entry.name, error = %e, "connector failed; stopping the others");
                first_error = Some(match e {
                    WorkerError::Start(e) => e,
                    other => Error::fatal(other.to_string()),
                });
                break;
            }
        }
    }
    let stop = CancellationToken::new();
    let interval = Duration::from_secs(file.progress.interval_secs);
    let reporter = (!interval.is_zero() && first_error.is_none())
        .then(|| tokio::spawn(report_progress(tracked, interval, stop.clone())));
    if first_error.is_none() {
        tokio::select! {
            () = shutdown.cancelled() => {}
            failure = worker.wait_failed() => {
                error!(connector = %failure.connector, task = failure.task, error = %failure.error.report(), "connector failed; stopping the others");
                first_error = Some((*failure.error).clone());
            }
        }
    }
    stop.cancel();
    // A task that fails while draining (Kafka gone, a commit refused) still fails the run.
    if let Some(late) = worker.shutdown().await {
        if first_error.is_none() {
            error!(connector = %late.connector, task = late.task, error = %late.error.report(), "connector failed while draining");
            first_error = Some((*late.error).clone());
        }
    }
    if let Some(r) = reporter {
        r.abort();
    }
    first_error.map_or(Ok(()), Err)
}

/// Distributed mode: this process is one worker of the group and runs the tasks the group's
/// leader gives it. A failing task stays failed on this worker (Kafka Connect's semantics) and
/// the worker goes on; a worker refused by the group (another configuration) stops with the
/// refusal as its error.
async fn run_distributed(file: ConnectFile, shutdown: CancellationToken) -> Result<()> {
    let Some(group_id) = file.cluster.group_id.clone() else {
        return Err(Error::fatal("distributed mode without a group id"));
    };
    let client = KafkaClient::connect(file.kafka.clone()).await?;
    // Validated with the file: a group always keeps source offsets in Kafka.
    let offsets: Arc<dyn OffsetStore> =
        Arc::new(KafkaOffsetStore::new(client.clone(), file.offsets.topic.clone()));
    let worker_id = file.cluster.worker_id();
    // Sink tasks of a worker group are members of consumer group `connect-<connector>`, their
    // offsets committed to it (the default when a group is configured).
    let sink_groups =
        SinkGroupSettings { timeouts: file.cluster.timeouts(), worker_id: worker_id.clone() };
    let worker = Worker::new(client.clone(), offsets).with_sink_groups(sink_groups);
    let config = HerderConfig {
        group_id,
        worker_id,
        config_hash: file.config_hash.clone(),
        timeouts: file.cluster.timeouts(),
    };
    let mut connectors = Vec::new();
    let mut tracked = Vec::new();
    for entry in file.connectors {
        tracked.push((entry.name.clone(), entry.type_name.clone()));
        let spec = ConnectorSpec::new(entry.connector, entry.source_runtime, entry.sink_runtime);
        connectors.push((entry.name, spec));
    }
    let stop = CancellationToken::new();
    let interval = Duration::from_secs(file.progress.interval_secs);
    let reporter = (!interval.is_zero()).then(|| {
        let (worker, stop) = (worker.clone(), stop.clone());
        tokio::spawn(async move {
            // The connectors start inside the herder; their counters exist once they run.
            let deadline = Instant::now() + Duration::from_secs(60);
            while worker.connectors().len() < tracked.len() && Instant::now() < deadline {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            let tracked = tracked
                .into_iter()
                .map(|(name, type_name)| Tracked {
                    stats: worker.stats(&name).unwrap_or_default(),
                    name,
                    type_name,
                    last: StatsSnapshot::default(),
                })
                .collect();
            report_progress(tracked, interval, stop).await;
        })
    });
    let result = Herder::new(worker, client, config).run(connectors, shutdown).await;
    stop.cancel();
    if let Some(r) = reporter {
        r.abort();
    }
    result.map_err(Error::from)
}

async fn report_progress(mut tracked: Vec<Tracked>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.reset();
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let elapsed = last_at.elapsed().as_secs_f64().max(0.001);
        last_at = Instant::now();
        for t in &mut tracked {
            let now = t.stats.snapshot();
            let rate = (now.records_out.saturating_sub(t.last.records_out)) as f64 / elapsed;
            info!(
                target: "connect::progress",
                connector = %t.name,
                r#type = %t.type_name,
                records_per_sec = rate.round() as u64,
                in_flight = now.in_flight,
                committed = now.committed,
                errors = now.errors,
                "{}: {:.0} rec/s, in flight {}, committed {}, errors {}",
                t.name, rate, now.in_flight, now.committed, now.errors
            );
            t.last = now;
        }
    }
}
