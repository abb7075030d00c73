//! Running a configuration: every connector concurrently, a periodic progress line per connector,
//! and one failure stopping the rest gracefully.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::kafka::KafkaClient;
use crate::offset::{FileOffsetStore, KafkaOffsetStore, MemoryOffsetStore, OffsetStore};
use crate::runner::file::{ConnectFile, OffsetStoreKind};
use crate::runner::registry::BuiltConnector;
use crate::runtime::{SinkRuntime, SourceRuntime, StatsSnapshot, TaskStats};
use crate::{Error, Result};

/// The most tasks a connector may ask for; connectors decide within it.
const MAX_TASKS: usize = 256;

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
    let client = KafkaClient::connect(file.kafka.clone()).await?;
    let offsets: Arc<dyn OffsetStore> = match file.offsets.store {
        OffsetStoreKind::File => Arc::new(FileOffsetStore::open(&file.offsets.path).await?),
        OffsetStoreKind::Kafka => {
            Arc::new(KafkaOffsetStore::new(client.clone(), file.offsets.topic.clone()))
        }
        OffsetStoreKind::Memory => Arc::new(MemoryOffsetStore::new()),
    };
    let stop = shutdown.child_token();
    let mut set = JoinSet::new();
    let mut tracked = Vec::new();
    for entry in file.connectors {
        let stats = Arc::new(TaskStats::new());
        tracked.push(Tracked {
            name: entry.name.clone(),
            type_name: entry.type_name.clone(),
            stats: Arc::clone(&stats),
            last: StatsSnapshot::default(),
        });
        let (client, offsets, token) = (client.clone(), Arc::clone(&offsets), stop.clone());
        info!(connector = %entry.name, r#type = %entry.type_name, "starting connector");
        set.spawn(async move {
            let name = entry.name;
            let result = match entry.connector {
                BuiltConnector::Source(c) => {
                    SourceRuntime::builder(name.as_str(), c.as_ref(), client, offsets)
                        .config(entry.source_runtime)
                        .stats(stats)
                        .max_tasks(MAX_TASKS)
                        .run(token)
                        .await
                }
                BuiltConnector::Sink(c) => {
                    SinkRuntime::builder(name.as_str(), c.as_ref(), client, offsets)
                        .config(entry.sink_runtime)
                        .stats(stats)
                        .max_tasks(MAX_TASKS)
                        .run(token)
                        .await
                }
            };
            (name, result)
        });
    }
    let interval = Duration::from_secs(file.progress.interval_secs);
    let reporter = (!interval.is_zero())
        .then(|| tokio::spawn(report_progress(tracked, interval, stop.clone())));

    let mut first_error: Option<Error> = None;
    while let Some(joined) = set.join_next().await {
        let (name, result) = match joined {
            Ok(done) => done,
            Err(e) => ("?".to_owned(), Err(Error::fatal("a connector panicked").with_source(e))),
        };
        match result {
            Ok(()) => info!(connector = %name, "connector stopped"),
            Err(e) => {
                error!(connector = %name, error = %e.report(), "connector failed; stopping the others");
                stop.cancel();
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(r) = reporter {
        r.abort();
    }
    first_error.map_or(Ok(()), Err)
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
