//! The Prometheus exporter: [`encode_metrics`] renders a [`Worker`]'s counters (per connector and
//! task, read from [`TaskStats`](connector_core::runtime::TaskStats)) in the Prometheus text
//! format 0.0.4, with `prometheus-client`. What every metric means and which alert to set on it:
//! docs/operations.md.

use std::sync::Arc;

use connector_core::runtime::{CustomSample, TaskCounters, TaskKind, Worker, LATENCY_BUCKETS_MS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`encode_metrics`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric of `worker` (its connectors' tasks that ran in this process), in the Prometheus
/// text format 0.0.4, each with `# HELP` and `# TYPE`. `worker_id` is exported as the
/// `connect_worker_info{worker_id}` gauge.
///
/// ```no_run
/// # fn example(worker: connector_core::runtime::Worker) {
/// let text = connector_runner::metrics::encode_metrics(&worker, "host-1:8083");
/// assert!(text.contains("# TYPE source_record_poll_total counter"));
/// # }
/// ```
pub fn encode_metrics(worker: &Worker, worker_id: &str) -> String {
    let connectors = worker
        .connectors()
        .into_iter()
        .filter_map(|name| {
            let stats = worker.stats(&name)?;
            Some(ConnectorData { tasks: stats.tasks(), custom: stats.custom().samples(), name })
        })
        .collect();
    render(worker_id, connectors)
}

/// One connector's counters, read at the start of a scrape.
#[derive(Debug)]
struct ConnectorData {
    name: String,
    tasks: Vec<Arc<TaskCounters>>,
    custom: Vec<CustomSample>,
}

#[derive(Debug)]
struct Snapshot {
    worker_id: String,
    connectors: Vec<ConnectorData>,
    now_ms: i64,
}

fn render(worker_id: &str, connectors: Vec<ConnectorData>) -> String {
    let now_ms = connector_core::Timestamp::now().as_millis();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        worker_id: worker_id.to_owned(),
        connectors,
        now_ms,
    }));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        // Writing into a String cannot fail; keep what was written.
        tracing::warn!("encoding the metrics failed");
    }
    out
}

type Labels = Vec<(&'static str, String)>;

fn task_labels(connector: &str, task: usize) -> Labels {
    vec![("connector", connector.to_owned()), ("task", task.to_string())]
}

/// A counter or gauge value of a task, by kind.
type Read = fn(&TaskCounters) -> f64;

/// (name without `_total`, help, type, which tasks, value).
struct TaskMetric {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    only: Option<TaskKind>,
    read: Read,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    only: Option<TaskKind>,
    read: Read,
) -> TaskMetric {
    TaskMetric { name, help, kind: MetricType::Counter, only, read }
}

const fn gauge(
    name: &'static str,
    help: &'static str,
    only: Option<TaskKind>,
    read: Read,
) -> TaskMetric {
    TaskMetric { name, help, kind: MetricType::Gauge, only, read }
}

const SOURCE: Option<TaskKind> = Some(TaskKind::Source);
const SINK: Option<TaskKind> = Some(TaskKind::Sink);

fn s(t: &TaskCounters) -> connector_core::runtime::StatsSnapshot {
    t.snapshot()
}

/// Per-task metrics with one sample per task (labels connector, task).
const TASK_METRICS: &[TaskMetric] = &[
    counter("source_record_poll", "Records the source task returned from poll (Kafka Connect's source-record-poll-total)", SOURCE, |t| s(t).records_in as f64),
    counter("source_record_write", "Records Kafka acknowledged (source-record-write-total)", SOURCE, |t| s(t).records_out as f64),
    gauge("source_record_active_count", "Records polled and not yet final: MQTT messages received and not yet acknowledged upstream (source-record-active-count)", SOURCE, |t| s(t).in_flight as f64),
    gauge("source_record_unacked", "Records handed to the Kafka producer and not yet answered", SOURCE, |t| s(t).unacked as f64),
    gauge("source_window_capacity_records", "The in-flight window's capacity in records (max_in_flight_records)", SOURCE, |t| t.window_capacity().0 as f64),
    gauge("source_window_bytes", "Bytes of records polled and not yet final", SOURCE, |t| s(t).held_bytes as f64),
    gauge("source_window_capacity_bytes", "The in-flight window's capacity in bytes (max_in_flight_bytes)", SOURCE, |t| t.window_capacity().1 as f64),
    gauge("source_window_fill_ratio", "In-flight window fill: records in flight / max_in_flight_records (1 = polling stops)", SOURCE, |t| {
        let cap = t.window_capacity().0;
        if cap == 0 { 0.0 } else { s(t).in_flight as f64 / cap as f64 }
    }),
    counter("sink_record_read", "Records the sink task read from Kafka (sink-record-read-total)", SINK, |t| s(t).records_in as f64),
    counter("sink_record_send", "Records put accepted (sink-record-send-total)", SINK, |t| s(t).records_out as f64),
    gauge("sink_record_active_count", "Records read and not yet covered by a committed offset (sink-record-active-count)", SINK, |t| s(t).in_flight as f64),
    counter("records_committed", "Records committed: acknowledged upstream (source) or covered by a committed offset (sink)", None, |t| s(t).committed as f64),
    counter("offset_commit_completion", "Offset commits that succeeded (offset-commit-completion-total)", None, |t| s(t).offset_commits as f64),
    counter("offset_commit_failure", "Offset commits that failed (offset-commit-failure-total)", None, |t| s(t).offset_commit_failures as f64),
    counter("record_errors", "Records handed to the error policy (Kafka Connect's total-record-errors)", None, |t| s(t).record_errors as f64),
    counter("record_failures", "Failures: failed records, deliveries and calls (total-record-failures)", None, |t| s(t).errors as f64),
    counter("records_skipped", "Records the error policy tolerated, dead-lettered or logged (total-records-skipped)", None, |t| s(t).records_skipped as f64),
    counter("retries", "Retries of retriable failures of poll and put (total-retries)", None, |t| s(t).retries as f64),
    gauge("total_record_errors", "Kafka Connect's total-record-errors under its own name (a gauge, as jmx_exporter shows it; record_errors_total is the counter)", None, |t| s(t).record_errors as f64),
    gauge("total_record_failures", "Kafka Connect's total-record-failures under its own name (a gauge; record_failures_total is the counter)", None, |t| s(t).errors as f64),
    gauge("total_records_skipped", "Kafka Connect's total-records-skipped under its own name (a gauge; records_skipped_total is the counter)", None, |t| s(t).records_skipped as f64),
    gauge("total_retries", "Kafka Connect's total-retries under its own name (a gauge; retries_total is the counter)", None, |t| s(t).retries as f64),
    counter("deadletterqueue_produce_requests", "Dead-letter writes attempted (deadletterqueue-produce-requests)", None, |t| s(t).dlq_requests as f64),
    counter("deadletterqueue_produce_failures", "Dead-letter writes that failed (deadletterqueue-produce-failures)", None, |t| s(t).dlq_failures as f64),
    counter("connector_records_received", "Conservation: records taken in (polled, or read from Kafka)", None, |t| s(t).records_in as f64),
    counter("connector_records_written", "Conservation: records final as delivered (source: acknowledged by Kafka and released upstream; sink: accepted by put)", None, |t| s(t).written as f64),
    counter("connector_records_dead_lettered", "Conservation: records whose outcome was the dead-letter topic", None, |t| s(t).dead_lettered as f64),
    counter("connector_records_abandoned", "Conservation: records given up without an outcome when a task stopped (failure, drain timeout); they come again after the restart", None, |t| s(t).abandoned as f64),
    gauge("connector_records_in_flight", "Conservation: records taken in without an outcome yet (the window's real occupancy)", None, |t| s(t).unsettled as f64),
];

fn encode_task_metric(
    encoder: &mut DescriptorEncoder<'_>,
    m: &TaskMetric,
    connectors: &[ConnectorData],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(m.name, m.help, None, m.kind)?;
    for c in connectors {
        for t in &c.tasks {
            if m.only.is_some_and(|k| k != t.kind()) {
                continue;
            }
            let labels = task_labels(&c.name, t.id());
            let v = (m.read)(t);
            let mut e = family.encode_family(&labels)?;
            if m.kind == MetricType::Counter {
                e.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            } else {
                e.encode_gauge(&v)?;
            }
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let info = prometheus_client::metrics::gauge::ConstGauge::new(1i64);
        {
            let mut e = encoder.encode_descriptor(
                "connect_worker_info",
                "This worker (always 1), labelled with its id",
                None,
                MetricType::Gauge,
            )?;
            let labels = vec![("worker_id", self.worker_id.clone())];
            info.encode(e.encode_family(&labels)?)?;
        }
        for m in TASK_METRICS {
            encode_task_metric(&mut encoder, m, &self.connectors)?;
        }
        self.encode_dropped(&mut encoder)?;
        self.encode_gap(&mut encoder)?;
        self.encode_latency(&mut encoder)?;
        self.encode_lag(&mut encoder)?;
        self.encode_custom(&mut encoder)
    }
}

impl Snapshot {
    fn tasks(&self, only: TaskKind) -> impl Iterator<Item = (&str, &Arc<TaskCounters>)> {
        self.connectors
            .iter()
            .flat_map(|c| c.tasks.iter().map(move |t| (c.name.as_str(), t)))
            .filter(move |(_, t)| t.kind() == only)
    }

    fn encode_dropped(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "connector_records_dropped",
            "Conservation: records dropped by policy: reason=\"filtered\" (a transform or predicate dropped it), reason=\"skipped\" (errors.tolerance = \"all\" without a dead-letter topic: logged only)",
            None,
            MetricType::Counter,
        )?;
        for c in &self.connectors {
            for t in &c.tasks {
                let snap = t.snapshot();
                for (reason, v) in [("filtered", snap.dropped), ("skipped", snap.skipped)] {
                    let mut labels = task_labels(&c.name, t.id());
                    labels.push(("reason", reason.to_owned()));
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        Ok(())
    }

    fn encode_gap(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "connector_conservation_gap",
            "received - (written + dead_lettered + dropped + in_flight + abandoned), per connector: 0 when nothing is lost or counted twice (counters are read one by one, so alert only when it stays non-zero)",
            None,
            MetricType::Gauge,
        )?;
        for c in &self.connectors {
            let gap: i64 = c.tasks.iter().map(|t| t.snapshot().conservation_gap()).sum();
            let labels = vec![("connector", c.name.clone())];
            family.encode_family(&labels)?.encode_gauge(&gap)?;
        }
        Ok(())
    }

    fn encode_latency(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "source_record_latency_seconds",
            "End-to-end latency of a source record: from poll (an MQTT message handed to the runtime) to Kafka's acknowledgement",
            None,
            MetricType::Histogram,
        )?;
        for (name, t) in self.tasks(TaskKind::Source) {
            let (cumulative, _, sum) = t.latency().snapshot();
            let mut buckets = Vec::with_capacity(cumulative.len());
            let mut previous = 0;
            for (i, c) in cumulative.iter().enumerate() {
                let bound = LATENCY_BUCKETS_MS.get(i).map_or(f64::INFINITY, |ms| *ms as f64 / 1e3);
                buckets.push((bound, c.saturating_sub(previous)));
                previous = *c;
            }
            let labels = task_labels(name, t.id());
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, previous, &buckets, None)?;
        }
        Ok(())
    }

    fn encode_lag(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        type LagRead = fn(&connector_core::runtime::PartitionLag, i64) -> f64;
        let metrics: [(&str, &str, LagRead); 4] = [
            ("sink_partition_lag_records", "Records behind in a partition: high watermark minus committed offset", |l, _| l.lag_records() as f64),
            ("sink_partition_lag_seconds", "Time behind in a partition: now minus the timestamp of the oldest fetched record not yet committed (0 when all fetched records are committed)", |l, now| l.lag_time(now).as_secs_f64()),
            ("sink_partition_high_watermark", "The partition's high watermark at the last fetch", |l, _| l.high_watermark().unwrap_or(0) as f64),
            ("sink_partition_committed_offset", "The partition's committed offset (the next record read after a restart)", |l, _| l.committed() as f64),
        ];
        for (name, help, read) in metrics {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (connector, t) in self.tasks(TaskKind::Sink) {
                for (tp, lag) in t.partitions() {
                    let mut labels = task_labels(connector, t.id());
                    labels.push(("topic", tp.topic.to_string()));
                    labels.push(("partition", tp.partition.to_string()));
                    family.encode_family(&labels)?.encode_gauge(&read(&lag, self.now_ms))?;
                }
            }
        }
        Ok(())
    }

    /// The counters connectors registered themselves, one family per name.
    fn encode_custom(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut names: Vec<(&'static str, &'static str)> = Vec::new();
        for c in &self.connectors {
            for s in &c.custom {
                if !names.iter().any(|(n, _)| *n == s.name) && !reserved(s.name) {
                    names.push((s.name, s.help));
                }
            }
        }
        names.sort();
        for (name, help) in names {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &self.connectors {
                for s in c.custom.iter().filter(|s| s.name == name) {
                    let mut labels = task_labels(&c.name, s.task);
                    if let Some((k, v)) = s.label {
                        labels.push((k, v.to_owned()));
                    }
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&s.value(), None)?;
                }
            }
        }
        Ok(())
    }
}

/// A connector's counter may not take a name of the runtime's.
fn reserved(name: &str) -> bool {
    TASK_METRICS.iter().any(|m| m.name == name)
        || name.starts_with("connector_")
        || name.starts_with("sink_partition_")
        || name.starts_with("source_record_latency")
        || name == "connect_worker_info"
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_core::runtime::TaskStats;

    /// Every line is a comment or `name{labels} value`, and every sample's family has HELP and
    /// TYPE.
    fn check_format(text: &str) {
        let mut typed = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "no TYPE for {line:?}");
                assert!(helped.contains(family), "no HELP for {line:?}");
                let value = line.rsplit(' ').next().unwrap_or_default();
                assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?}");
            }
        }
    }

    fn value(text: &str, prefix: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }

    #[test]
    fn every_metric_has_help_and_type_and_samples_carry_connector_and_task() {
        let stats = TaskStats::new();
        let t = stats.task(1);
        t.set_kind(TaskKind::Source);
        t.set_window_capacity(100, 1 << 20);
        t.add_in(10);
        t.add_out(7);
        t.add_written(7);
        t.add_dead_lettered(1);
        t.add_dropped(1);
        t.set_window(1, 1, 42);
        t.add_unsettled(1);
        t.latency().observe(std::time::Duration::from_millis(3), 7);
        stats
            .custom()
            .counter(1, "mqtt_reconnects", "MQTT reconnects", Some(("reason", "broker_closed")))
            .add(2);
        let sink = TaskStats::new();
        let k = sink.task(0);
        k.set_kind(TaskKind::Sink);
        let lag = k
            .open_partition(&connector_core::TopicPartition::new("cmd", 3), 5)
            .unwrap_or_else(|| panic!("registered"));
        lag.set_high_watermark(12);
        let text = render(
            "w1",
            vec![
                ConnectorData {
                    name: "src".into(),
                    tasks: stats.tasks(),
                    custom: stats.custom().samples(),
                },
                ConnectorData { name: "snk".into(), tasks: sink.tasks(), custom: vec![] },
            ],
        );
        check_format(&text);
        assert!(text.contains("# TYPE source_record_poll_total counter\n"), "{text}");
        assert_eq!(value(&text, "source_record_poll_total{connector=\"src\",task=\"1\"}"), 10.0);
        assert_eq!(value(&text, "source_window_fill_ratio{connector=\"src\",task=\"1\"}"), 0.01);
        assert_eq!(
            value(
                &text,
                "connector_records_dropped_total{connector=\"src\",task=\"1\",reason=\"filtered\"}"
            ),
            1.0
        );
        assert_eq!(value(&text, "connector_conservation_gap{connector=\"src\"}"), 0.0);
        assert_eq!(
            value(
                &text,
                "source_record_latency_seconds_bucket{connector=\"src\",task=\"1\",le=\"0.005\"}"
            ),
            7.0
        );
        assert_eq!(
            value(
                &text,
                "source_record_latency_seconds_bucket{connector=\"src\",task=\"1\",le=\"+Inf\"}"
            ),
            7.0
        );
        assert_eq!(
            value(&text, "source_record_latency_seconds_count{connector=\"src\",task=\"1\"}"),
            7.0
        );
        assert_eq!(
            value(
                &text,
                "mqtt_reconnects_total{connector=\"src\",task=\"1\",reason=\"broker_closed\"}"
            ),
            2.0
        );
        assert_eq!(value(&text, "sink_partition_lag_records{connector=\"snk\",task=\"0\",topic=\"cmd\",partition=\"3\"}"), 7.0);
        assert_eq!(value(&text, "connect_worker_info{worker_id=\"w1\"}"), 1.0);
        assert!(
            text.contains("# TYPE total_record_errors gauge\n"),
            "Kafka Connect's own names too"
        );
        assert!(
            !text.contains("sink_record_read_total{connector=\"src\""),
            "source tasks have no sink metrics"
        );
        assert!(
            !text.contains("source_record_poll_total{connector=\"snk\""),
            "sink tasks have no source metrics"
        );
    }

    /// Every metric the Grafana dashboard queries is one `encode_metrics` exports.
    #[test]
    fn the_grafana_dashboard_uses_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/grafana-dashboard.json")).unwrap();
        let stats = TaskStats::new();
        stats.task(0).set_kind(TaskKind::Source);
        stats.task(1).set_kind(TaskKind::Sink);
        stats.task(1).open_partition(&connector_core::TopicPartition::new("t", 0), 0);
        for name in ["mqtt_reconnects", "mqtt_publish_refused"] {
            stats.custom().counter(0, name, "h", None).inc();
        }
        let text = render(
            "w",
            vec![ConnectorData {
                name: "c".into(),
                tasks: stats.tasks(),
                custom: stats.custom().samples(),
            }],
        );
        let exported: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let mut used = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices('{') {
                    let name: String = expr[..i]
                        .chars()
                        .rev()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    let family = name.strip_suffix("_bucket").unwrap_or(&name);
                    assert!(
                        exported.contains(family),
                        "the dashboard queries {name}, not exported"
                    );
                    used += 1;
                }
            }
        }
        assert!(used > 10);
    }

    #[test]
    fn a_lost_record_shows_in_the_gap() {
        let stats = TaskStats::new();
        let t = stats.task(0);
        t.set_kind(TaskKind::Source);
        t.add_in(3);
        t.add_written(2);
        let text = render(
            "w",
            vec![ConnectorData { name: "c".into(), tasks: stats.tasks(), custom: vec![] }],
        );
        assert_eq!(value(&text, "connector_conservation_gap{connector=\"c\"}"), 1.0);
    }

    #[test]
    fn a_connector_cannot_shadow_a_runtime_metric() {
        let stats = TaskStats::new();
        stats.task(0).set_kind(TaskKind::Source);
        stats.custom().counter(0, "source_record_poll", "fake", None).inc();
        let text = render(
            "w",
            vec![ConnectorData {
                name: "c".into(),
                tasks: stats.tasks(),
                custom: stats.custom().samples(),
            }],
        );
        check_format(&text);
        assert_eq!(text.matches("# TYPE source_record_poll_total").count(), 1);
    }
}
