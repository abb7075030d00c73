//! Prometheus text exposition of a worker's counters (`GET /metrics`).

use std::fmt::Write as _;

use connector_core::runtime::Worker;

/// The worker's counters per connector in the Prometheus text format 0.0.4.
///
/// ```no_run
/// # fn example(worker: connector_core::runtime::Worker) {
/// let text = connector_runner::metrics::encode_metrics(&worker, "host:8083");
/// assert!(text.contains("# TYPE connector_records_in_total counter"));
/// # }
/// ```
pub fn encode_metrics(worker: &Worker, worker_id: &str) -> String {
    let snapshots: Vec<(String, connector_core::runtime::StatsSnapshot)> = worker
        .connectors()
        .into_iter()
        .filter_map(|name| worker.stats(&name).map(|s| (name, s.snapshot())))
        .collect();
    type Field = fn(&connector_core::runtime::StatsSnapshot) -> u64;
    let families: [(&str, &str, &str, Field); 7] = [
        (
            "connector_records_in_total",
            "counter",
            "Records taken in (polled from the source, or fetched from Kafka by a sink).",
            |s| s.records_in,
        ),
        (
            "connector_records_out_total",
            "counter",
            "Records delivered (acknowledged by Kafka, or handed to put).",
            |s| s.records_out,
        ),
        ("connector_records_committed_total", "counter", "Records committed.", |s| s.committed),
        ("connector_records_in_flight", "gauge", "Records taken in and not yet committed.", |s| {
            s.in_flight
        }),
        ("connector_errors_total", "counter", "Errors seen.", |s| s.errors),
        ("connector_retries_total", "counter", "Retries of retriable failures.", |s| s.retries),
        (
            "connector_dead_letters_total",
            "counter",
            "Records written to the dead-letter topic.",
            |s| s.dead_letters,
        ),
    ];
    let mut out = String::new();
    let worker_id = escape(worker_id);
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (connector, s) in &snapshots {
            let _ = writeln!(
                out,
                "{name}{{connector=\"{}\",worker_id=\"{worker_id}\"}} {}",
                escape(connector),
                field(s)
            );
        }
    }
    out
}

/// A label value escaped as the text format wants (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
