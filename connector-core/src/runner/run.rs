//! Running a configuration: every connector on one [`Worker`], a periodic progress line per
//! connector, and the first failing task stopping everything gracefully; or, with a worker
//! group (`[cluster] group_id`), this process's share of the tasks through a [`Herder`].
//! With `[rest]`, the control API ([`ControlApi`], served by the runner crate's HTTP server)
//! runs next to them, over a [`StandaloneControl`], and a failing task stays FAILED instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::kafka::KafkaClient;
use crate::offset::{FileOffsetStore, KafkaOffsetStore, MemoryOffsetStore, OffsetStore};
use crate::runner::control::distributed::{DistributedControl, DistributedParts};
use crate::runner::control::probe::KafkaProbe;
use crate::runner::control::standalone::StandaloneControl;
use crate::runner::control::ConnectControl;
use crate::runner::file::{ConnectFile, OffsetStoreKind, RestConfig};
use crate::runner::registry::Registry;
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

/// Serves the control API while a configuration runs (connector_runner's REST server
/// implements it).
#[async_trait::async_trait]
pub trait ControlApi: Send + Sync {
    /// Starts serving `control` as `config` says (bound when this returns).
    ///
    /// # Errors
    /// The address cannot be bound, or the TLS files or token cannot be read.
    async fn start(
        &self,
        control: Arc<dyn ConnectControl>,
        config: &RestConfig,
    ) -> Result<Box<dyn ControlApiHandle>>;
}

/// A running control API.
#[async_trait::async_trait]
pub trait ControlApiHandle: Send {
    /// Stops accepting, lets requests in progress finish (bounded), returns.
    async fn shutdown(self: Box<Self>);
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
    run_with(file, Arc::new(Registry::new()), None, shutdown).await
}

/// Runs `file` like [`run`], building connectors created through the API with `registry` and
/// serving the API through `api` when `[rest]` is set (a `[rest]` table with `api = None` is an
/// error at start naming `rest`). [`run`] is this with a registry of no connector types (API
/// creations would then know none) and no API.
///
/// With `[rest]`, a standalone worker follows Kafka Connect: a failing task stays FAILED (the
/// API shows it, `/health` reports it, `POST .../restart` restarts it) and the process goes on
/// until `shutdown`; connectors created, changed or deleted through the API are kept in
/// `[rest] config_dir` and laid over the file's at the next start.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::runner::{run_with, ConnectFile, Registry};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(registry: Registry) -> connector_core::Result<()> {
/// let file = ConnectFile::load("connect.toml".as_ref(), &registry)
///     .map_err(connector_core::Error::from)?;
/// run_with(file, Arc::new(registry), None, CancellationToken::new()).await
/// # }
/// ```
///
/// # Errors
/// As [`run`]; with `[rest]`, also the API failing to start, or its config directory unreadable.
pub async fn run_with(
    file: ConnectFile,
    registry: Arc<Registry>,
    api: Option<Arc<dyn ControlApi>>,
    shutdown: CancellationToken,
) -> Result<()> {
    let rest = match (&file.rest, api) {
        (Some(rest), Some(api)) => Some((rest.clone(), api)),
        (Some(_), None) => {
            return Err(Error::fatal(
                "rest: this runner has no REST server (run it with connector_runner's run, or remove [rest])",
            ))
        }
        (None, _) => None,
    };
    if file.cluster.group_id.is_some() {
        return run_distributed(file, registry, rest, shutdown).await;
    }
    if let Some((rest, api)) = rest {
        return run_standalone_api(file, registry, rest, api, shutdown).await;
    }
    let client = KafkaClient::connect(file.kafka.clone()).await?;
    let offsets = open_offsets(&file, &client).await?;
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

/// The offsets store `file` asks for.
async fn open_offsets(file: &ConnectFile, client: &KafkaClient) -> Result<Arc<dyn OffsetStore>> {
    Ok(match file.offsets.store {
        OffsetStoreKind::File => Arc::new(FileOffsetStore::open(&file.offsets.path).await?),
        OffsetStoreKind::Kafka => {
            Arc::new(KafkaOffsetStore::new(client.clone(), file.offsets.topic.clone()))
        }
        OffsetStoreKind::Memory => Arc::new(MemoryOffsetStore::new()),
    })
}

/// Standalone with the control API: the file's connectors (with the config directory's changes)
/// on one worker behind a [`StandaloneControl`]; failures stay FAILED; runs until `shutdown`.
async fn run_standalone_api(
    mut file: ConnectFile,
    registry: Arc<Registry>,
    rest: RestConfig,
    api: Arc<dyn ControlApi>,
    shutdown: CancellationToken,
) -> Result<()> {
    let client = KafkaClient::connect(file.kafka.clone()).await?;
    let offsets = open_offsets(&file, &client).await?;
    let worker = Worker::new(client.clone(), Arc::clone(&offsets));
    let worker_id = standalone_worker_id(&rest);
    let control = Arc::new(StandaloneControl::new(
        worker.clone(),
        offsets,
        registry,
        rest.config_dir.clone(),
        worker_id,
    ));
    let stop = CancellationToken::new();
    control.set_probe(KafkaProbe::spawn(client.clone(), Duration::from_secs(2), stop.clone()));
    let connectors = std::mem::take(&mut file.connectors);
    let served = api.start(Arc::clone(&control) as Arc<dyn ConnectControl>, &rest).await?;
    let started = control.start(connectors, &shutdown).await;
    let interval = Duration::from_secs(file.progress.interval_secs);
    let reporter = (started.is_ok() && !interval.is_zero())
        .then(|| tokio::spawn(report_running(worker.clone(), interval, stop.clone())));
    if started.is_ok() {
        shutdown.cancelled().await;
    }
    stop.cancel();
    served.shutdown().await;
    if let Some(late) = worker.shutdown().await {
        error!(connector = %late.connector, task = late.task, error = %late.error.report(), "a task failed (it stayed FAILED until shutdown)");
    }
    if let Some(r) = reporter {
        r.abort();
    }
    started
}

/// This standalone worker's id in status bodies: the REST listener's address as configured
/// (the hostname when it binds port 0).
fn standalone_worker_id(rest: &RestConfig) -> String {
    match rest.listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() != 0 => rest.listen.clone(),
        _ => std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned()),
    }
}

/// Progress lines for whatever connectors run now (they change through the API).
async fn report_running(worker: Worker, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.reset();
    let mut last: std::collections::HashMap<String, (StatsSnapshot, Instant)> =
        std::collections::HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for name in worker.connectors() {
            let Some(stats) = worker.stats(&name) else { continue };
            let now = stats.snapshot();
            let (before, at) =
                last.get(&name).cloned().unwrap_or((StatsSnapshot::default(), Instant::now()));
            let elapsed = at.elapsed().as_secs_f64().max(0.001);
            let rate = now.records_out.saturating_sub(before.records_out) as f64 / elapsed;
            info!(
                target: "connect::progress",
                connector = %name,
                records_per_sec = rate.round() as u64,
                in_flight = now.in_flight,
                committed = now.committed,
                errors = now.errors,
                "{}: {:.0} rec/s, in flight {}, committed {}, errors {}",
                name, rate, now.in_flight, now.committed, now.errors
            );
            last.insert(name, (now, Instant::now()));
        }
    }
}

/// Distributed mode: this process is one worker of the group and runs the tasks the group's
/// leader gives it, of the file's connectors and those the config topic adds or overrides (the
/// REST API's changes, from any worker). A failing task stays failed on this worker (Kafka
/// Connect's semantics) and the worker goes on; a worker refused by the group (another
/// configuration) stops with the refusal as its error. With `[rest]`, this worker serves the
/// API over a [`DistributedControl`].
async fn run_distributed(
    mut file: ConnectFile,
    registry: Arc<Registry>,
    rest: Option<(RestConfig, Arc<dyn ControlApi>)>,
    shutdown: CancellationToken,
) -> Result<()> {
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
        group_id: group_id.clone(),
        worker_id: worker_id.clone(),
        config_hash: file.config_hash.clone(),
        timeouts: file.cluster.timeouts(),
    };
    let herder = Herder::new(worker.clone(), client.clone(), config);
    let stop = CancellationToken::new();
    let parts = DistributedParts {
        worker: worker.clone(),
        client: client.clone(),
        registry,
        file_connectors: std::mem::take(&mut file.connectors),
        group_id,
        worker_id,
        config_topic: file.cluster.config_topic.clone(),
        offsets_topic: file.offsets.topic.clone(),
        session_timeout: file.cluster.timeouts().session,
        membership: herder.membership(),
        probe: KafkaProbe::spawn(client.clone(), Duration::from_secs(2), stop.clone()),
    };
    // Every worker follows the config topic (with or without [rest]): the group's connectors
    // are the file's and the topic's.
    let (control, set) = match DistributedControl::start(parts, stop.clone()).await {
        Ok(c) => c,
        Err(e) => {
            stop.cancel();
            return Err(e);
        }
    };
    let served = match rest {
        Some((rest, api)) => {
            match api.start(Arc::new(control) as Arc<dyn ConnectControl>, &rest).await {
                Ok(s) => Some(s),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let interval = Duration::from_secs(file.progress.interval_secs);
    let reporter = (!interval.is_zero())
        .then(|| tokio::spawn(report_running(worker.clone(), interval, stop.clone())));
    let result = herder.run_set(set, shutdown).await;
    if let Some(s) = served {
        s.shutdown().await;
    }
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
