//! `bench`: the benchmark driver. In one run it starts Mosquitto and Tansu and measures
//!
//! 1. bare MQTT publisher -> Mosquitto -> subscriber, QoS 0 and 1, 100 B and 1 KiB (the ceiling);
//! 2. MQTT -> Kafka through our `connect` runner's `mqtt-source` at QoS 1 and 0: msg/s, ratio to
//!    (1), CPU-µs per message and peak RSS of the `connect` process, every message counted in
//!    Kafka; the same for the Python reference bridge (`scripts/mqtt-kafka-bridge.py`);
//! 3. Kafka -> MQTT through our `mqtt-sink` at QoS 1, counted by an independent subscriber;
//! 4. end-to-end latency MQTT publish -> Kafka fetch at a fixed rate;
//! 5. RSS of our source over a long run at a fixed rate;
//! 6. distributed mode: aggregate MQTT -> Kafka throughput of 1, 2 and 3 `connect` workers of one
//!    group (ratio to 1 worker, CPU per message summed over the workers), and the time from the
//!    SIGKILL of one of three workers to its moved tasks' first delivered message;
//! 7. Sparkplug B: NDATA messages/s and CPU per metric through our `mqtt-source` with
//!    `format = "sparkplug_b"` (10 edge nodes, `--sparkplug-metrics` metrics per message by
//!    alias, QoS 1), one record per metric and one per message, next to the raw QoS 1 rows.
//!
//! 8. CPU per message against the broker's: each row's CPU-µs per message divided by what
//!    Mosquitto spent per relayed message in the bare row of the same round (QoS and size of the
//!    row; the sink and the paced and fleet rows against bare QoS 1 100 B);
//! 9. a paced row (`--paced-rate` msg/s through the source), fleet rows (100, 10,000 and 100,000
//!    device topics through the source; 10,000 keys and MQTT topics through the sink), and a
//!    Node.js reference bridge (`scripts/node-bridge/bridge.js`);
//! 10. `--only instructions`: instructions per message of the source and the sink under
//!     callgrind (see `instructions.rs`), a figure machine noise does not move.
//!
//! Each round (`--runs`) starts fresh brokers and measures the ceiling and the bridges in turn,
//! so every ratio compares figures from the same round; the summary gives medians over rounds.
//! `scripts/bench` builds everything in release mode and runs this. `--smoke` runs tiny counts
//! and fails when a message is missing: a check that the driver works, never a speed test.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod distributed;
mod instructions;
mod load;
mod procstat;
mod scenarios;
mod sparkplug;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::scenarios::{Bridge, Brokers, Latency, Settings, Soak, SourceLoad, Throughput, DEVICES};

/// Measures our MQTT <-> Kafka connectors against the bare brokers and a Python bridge.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Cli {
    /// Rounds of measurements (fresh brokers each); the summary reports medians.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Messages per throughput measurement with 100-byte payloads.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Messages per throughput measurement with 1 KiB payloads.
    #[arg(long, default_value_t = 100_000)]
    big_messages: u64,
    /// Messages through the Python reference bridge (it is much slower).
    #[arg(long, default_value_t = 30_000)]
    python_messages: u64,
    /// The `connect` binary to measure (default: next to this one).
    #[arg(long)]
    connect: Option<PathBuf>,
    /// The Python reference bridge.
    #[arg(long, default_value = "scripts/mqtt-kafka-bridge.py")]
    python_bridge: PathBuf,
    /// The Node.js reference bridge (`npm ci --prefix scripts/node-bridge` installs its packages).
    #[arg(long, default_value = "scripts/node-bridge/bridge.js")]
    node_bridge: PathBuf,
    /// Messages through the Node.js reference bridge.
    #[arg(long, default_value_t = 30_000)]
    node_messages: u64,
    /// Messages per second of the paced source row (`--only paced`).
    #[arg(long, default_value_t = 10_000)]
    paced_rate: u64,
    /// Seconds of the paced source row.
    #[arg(long, default_value_t = 10)]
    paced_secs: u64,
    /// Messages per fleet row (`--only fleet`).
    #[arg(long, default_value_t = 200_000)]
    fleet_messages: u64,
    /// Messages of each counted workload of `--only instructions`.
    #[arg(long, default_value_t = 20_000)]
    instructions_messages: u64,
    /// Messages per second for the latency measurement.
    #[arg(long, default_value_t = 1_000)]
    latency_rate: u64,
    /// Seconds of the latency measurement (the first is warm-up).
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Messages per second for the memory run.
    #[arg(long, default_value_t = 10_000)]
    soak_rate: u64,
    /// Seconds of the memory run.
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// `linger_ms` of our producer.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Mosquitto `max_inflight_messages`.
    #[arg(long, default_value_t = 1000)]
    mosquitto_inflight: u32,
    /// Our source's `inflight` (default: the connector's default).
    #[arg(long)]
    source_inflight: Option<usize>,
    /// MQTT protocol version of our source and sink: "3.1.1" or "5".
    #[arg(long, default_value = "3.1.1")]
    mqtt_version: String,
    /// Measurements to run, comma-separated: bare, source, scrape (the source QoS 1 100 B row
    /// without and with GET /metrics every second), source-eos (not by default: the source at
    /// QoS 2, at least once and exactly once at transactions of 100 and 1000 records), sink,
    /// sink-eos (not by default: the sink at QoS 2, at least once and exactly once at windows
    /// 100 and 1000), python, latency,
    /// distributed, sparkplug (Sparkplug B NDATA through the source), soak, paced (the source
    /// QoS 1 100 B at `--paced-rate`), fleet (100, 10,000 and 100,000 device topics through
    /// the source; 10,000 keys through the sink), node (the Node.js bridge; its packages come
    /// from `scripts/install-brokers`), instructions (not by default: instructions per message
    /// under callgrind).
    #[arg(
        long,
        default_value = "bare,source,scrape,sink,python,node,paced,fleet,latency,distributed,sparkplug,soak",
        value_delimiter = ','
    )]
    only: Vec<String>,
    /// Sparkplug NDATA messages per Sparkplug row.
    #[arg(long, default_value_t = 50_000)]
    sparkplug_messages: u64,
    /// Metrics per Sparkplug NDATA message.
    #[arg(long, default_value_t = 10)]
    sparkplug_metrics: usize,
    /// QoS levels of the throughput rows to run (sink and Python rows are QoS 1).
    #[arg(long, default_value = "0,1", value_delimiter = ',')]
    qos: Vec<u8>,
    /// Payload sizes of the throughput rows to run: 100 and/or 1024.
    #[arg(long, default_value = "100,1024", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Worker process counts of the distributed rows (QoS 1, 100 B, `--messages` each).
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Messages per second during the failover measurement (three workers, one SIGKILLed).
    #[arg(long, default_value_t = 3_000)]
    failover_rate: u64,
    /// Seconds of the failover measurement; the SIGKILL comes after a third of them.
    #[arg(long, default_value_t = 15)]
    failover_secs: u64,
    /// Tiny counts, one round, a 5-second memory run; fails if any message is missing.
    #[arg(long)]
    smoke: bool,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One row of the summary: a measurement and its figures per round.
#[derive(Default)]
struct Row {
    runs: Vec<(Throughput, Option<f64>)>,
}

/// The Sparkplug rows (`--only sparkplug`): msg/s counts NDATA messages.
const SPARKPLUG_METRIC: &str = "sparkplug QoS1 per metric";
const SPARKPLUG_MESSAGE: &str = "sparkplug QoS1 per message";

/// The scrape-cost rows (`--only scrape`).
const SCRAPE_OFF: &str = "source QoS1 100 B, no scrape";
const SCRAPE_ON: &str = "source QoS1 100 B, /metrics 1/s";

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.digits$}"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn with_commas(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn describe(t: &Throughput, ratio: Option<f64>) -> String {
    let mut s = format!(
        "{}/{} delivered ({} dup) in {:.2} s = {} msg/s",
        t.delivered,
        t.sent,
        t.duplicates,
        t.secs,
        with_commas(t.rate)
    );
    if let Some(r) = ratio {
        let _ = write!(s, ", {r:.2}× ceiling");
    }
    if let Some(c) = t.cpu_us_per_msg {
        let _ = write!(s, ", {c:.2} CPU-µs/msg");
    }
    if let Some(r) = t.peak_rss {
        let _ = write!(s, ", peak RSS {:.1} MiB", mib(r));
    }
    let _ = write!(
        s,
        " | cores: mosquitto {:.2}, tansu {:.2}, bridge {:.2}",
        t.mosquitto_cores, t.tansu_cores, t.bridge_cores
    );
    s
}

struct Driver {
    cli: Cli,
    settings: Settings,
    rows: BTreeMap<&'static str, Row>,
    /// Per round: MQTT publish -> Kafka fetch through our source with Mosquitto as shipped and
    /// with `set_tcp_nodelay true`, and Kafka alone.
    latencies: Vec<[Latency; 3]>,
    /// Distributed rows per worker count: per round, the throughput and its ratio to 1 worker.
    dist: BTreeMap<usize, Vec<(Throughput, Option<f64>)>>,
    failovers: Vec<distributed::Failover>,
    soak: Option<Soak>,
    /// Per round: instructions per message of the source and of the sink.
    instructions: Vec<(instructions::Count, instructions::Count)>,
    /// Mosquitto's CPU-µs per relayed message in this round's bare rows, by (QoS, size).
    broker_cpu: BTreeMap<(u8, usize), f64>,
    problems: Vec<String>,
}

/// The fleet rows: device topics through the source.
const FLEET: [(usize, &str); 3] = [
    (100, "source QoS1 100 B, 100 devices"),
    (10_000, "source QoS1 100 B, 10k devices"),
    (100_000, "source QoS1 100 B, 100k devices"),
];
const SINK_FLEET: &str = "sink QoS1 100 B, 10k keys";
const PACED: &str = "source QoS1 100 B paced";
const PYTHON: &str = "python bridge QoS1 100 B";
const NODE: &str = "node bridge QoS1 100 B";

impl Driver {
    fn wants(&self, what: &str) -> bool {
        self.cli.only.iter().any(|o| o == what)
    }

    fn row_wanted(&self, qos: u8, size: usize) -> bool {
        self.cli.qos.contains(&qos) && self.cli.sizes.contains(&size)
    }

    /// Records a row. Its CPU per message is set against the broker's in the bare row of this
    /// round for `reference` (QoS, size).
    fn record_against(
        &mut self,
        label: &'static str,
        mut t: Throughput,
        ceiling: Option<f64>,
        lossless: bool,
        reference: (u8, usize),
    ) {
        let broker = self.broker_cpu.get(&reference).copied().filter(|c| *c > 0.0);
        t.cpu_vs_broker = t.cpu_us_per_msg.zip(broker).map(|(ours, b)| ours / b);
        self.record(label, t, ceiling, lossless);
    }

    fn record(&mut self, label: &'static str, t: Throughput, ceiling: Option<f64>, lossless: bool) {
        let ratio = ceiling.filter(|c| *c > 0.0).map(|c| t.rate / c);
        println!("  {label:<28} {}", describe(&t, ratio));
        if lossless && t.delivered < t.sent {
            self.problems
                .push(format!("{label}: {} of {} messages delivered", t.delivered, t.sent));
        }
        self.rows.entry(label).or_default().runs.push((t, ratio));
    }

    async fn round(&mut self, round: u32) -> Result<(), String> {
        println!("round {round}/{}: starting brokers", self.cli.runs);
        let mut b = Brokers::start(&self.settings).await?;
        let (n, big, py) = (self.cli.messages, self.cli.big_messages, self.cli.python_messages);
        let mut ceiling = BTreeMap::new();
        self.broker_cpu.clear();
        if self.wants("bare") {
            for (qos, size, count, label) in [
                (0, 100, n, "bare pub->sub QoS0 100 B"),
                (1, 100, n, "bare pub->sub QoS1 100 B"),
                (0, 1024, big, "bare pub->sub QoS0 1 KiB"),
                (1, 1024, big, "bare pub->sub QoS1 1 KiB"),
            ] {
                if !self.row_wanted(qos, size) {
                    continue;
                }
                let t = scenarios::bare(&b, qos, size, count).await?;
                ceiling.insert((qos, size), t.rate);
                self.broker_cpu.insert((qos, size), t.mosquitto_us_per_msg);
                self.record(label, t, None, qos == 1);
            }
        }
        if self.wants("source") {
            for (qos, size, count, label) in [
                (1, 100, n, "source QoS1 100 B"),
                (0, 100, n, "source QoS0 100 B"),
                (1, 1024, big, "source QoS1 1 KiB"),
                (0, 1024, big, "source QoS0 1 KiB"),
            ] {
                if !self.row_wanted(qos, size) {
                    continue;
                }
                let load = SourceLoad::default();
                let t = scenarios::source(&b, &self.settings, Bridge::Ours, qos, size, count, load)
                    .await?;
                self.record_against(
                    label,
                    t,
                    ceiling.get(&(qos, size)).copied(),
                    qos == 1,
                    (qos, size),
                );
            }
        }
        if self.wants("scrape") {
            // Both rows in every round, one after the other, so that they share its conditions;
            // which goes first alternates, so that a drift within rounds cancels out.
            let mut order = [(false, SCRAPE_OFF), (true, SCRAPE_ON)];
            if round % 2 == 0 {
                order.reverse();
            }
            for (scrape, label) in order {
                let load = SourceLoad { scrape, ..SourceLoad::default() };
                let t =
                    scenarios::source(&b, &self.settings, Bridge::Ours, 1, 100, n, load).await?;
                if let Some((scrapes, bytes, cpu)) = t.scrapes {
                    let cpu = cpu.map_or_else(|| "—".to_owned(), |c| format!("{c:.0}"));
                    println!(
                        "  {:<28} {scrapes} scrapes, last {bytes} bytes, {cpu} CPU-µs per scrape",
                        ""
                    );
                    if scrapes == 0 {
                        self.problems.push(format!("{label}: no scrape happened"));
                    }
                }
                self.record_against(label, t, ceiling.get(&(1, 100)).copied(), true, (1, 100));
            }
        }
        if self.wants("paced") {
            let (rate, secs) = (self.cli.paced_rate, self.cli.paced_secs);
            let load = SourceLoad { rate: Some(rate), ..SourceLoad::default() };
            let t = scenarios::source(&b, &self.settings, Bridge::Ours, 1, 100, rate * secs, load)
                .await?;
            self.record_against(PACED, t, Some(rate as f64), true, (1, 100));
        }
        if self.wants("fleet") {
            for (devices, label) in FLEET {
                let load = SourceLoad { devices, ..SourceLoad::default() };
                let m = self.cli.fleet_messages;
                let t =
                    scenarios::source(&b, &self.settings, Bridge::Ours, 1, 100, m, load).await?;
                self.record_against(label, t, ceiling.get(&(1, 100)).copied(), true, (1, 100));
            }
            let t = scenarios::sink(&b, &self.settings, 1, 100, n, None, 10_000).await?;
            self.record_against(SINK_FLEET, t, ceiling.get(&(1, 100)).copied(), true, (1, 100));
        }
        if self.wants("source-eos") {
            // QoS 2 at least once, then exactly once at two transaction sizes, one after the
            // other in each round so that they share its conditions.
            // Against the bare QoS 2 rate when the round measured one (`--qos 1,2`).
            let bare = ceiling.get(&(2, 100)).or_else(|| ceiling.get(&(1, 100))).copied();
            let load = SourceLoad::default();
            let t = scenarios::source(&b, &self.settings, Bridge::Ours, 2, 100, n, load).await?;
            self.record("source QoS2 100 B", t, bare, true);
            for (txn, label) in [
                (100, "source QoS2 exactly-once t100 100 B"),
                (1000, "source QoS2 exactly-once t1000 100 B"),
            ] {
                let t = scenarios::source_exactly_once(&b, &self.settings, txn, 100, n).await?;
                if t.duplicates > 0 {
                    self.problems.push(format!("{label}: {} duplicates", t.duplicates));
                }
                self.record(label, t, bare, true);
            }
        }
        if self.wants("sink") {
            for (size, count, label) in
                [(100, n, "sink QoS1 100 B"), (1024, big, "sink QoS1 1 KiB")]
            {
                if !self.row_wanted(1, size) {
                    continue;
                }
                let t = scenarios::sink(&b, &self.settings, 1, size, count, None, DEVICES).await?;
                self.record_against(label, t, ceiling.get(&(1, size)).copied(), true, (1, size));
            }
        }
        if self.wants("sink-eos") {
            // QoS 2 at least once, then exactly once at two windows (one state save covers
            // every publish of one write and every acknowledgement of one read).
            for (eos, label) in [
                (None, "sink QoS2 100 B"),
                (Some(100), "sink QoS2 exactly-once w100 100 B"),
                (Some(1000), "sink QoS2 exactly-once w1000 100 B"),
            ] {
                let t = scenarios::sink(&b, &self.settings, 2, 100, n, eos, DEVICES).await?;
                self.record(label, t, ceiling.get(&(1, 100)).copied(), true);
            }
        }
        if self.wants("python") {
            let load = SourceLoad::default();
            let t = scenarios::source(&b, &self.settings, Bridge::Python, 1, 100, py, load).await?;
            self.record_against(PYTHON, t, ceiling.get(&(1, 100)).copied(), true, (1, 100));
        }
        if self.wants("node") {
            let (load, m) = (SourceLoad::default(), self.cli.node_messages);
            let t = scenarios::source(&b, &self.settings, Bridge::Node, 1, 100, m, load).await?;
            self.record_against(NODE, t, ceiling.get(&(1, 100)).copied(), true, (1, 100));
        }
        if self.wants("instructions") {
            if !instructions::available() {
                return Err("--only instructions needs valgrind and callgrind_control".into());
            }
            let m = self.cli.instructions_messages;
            let src = instructions::source(&b, &self.settings, m).await?;
            println!(
                "  {:<28} {} instructions for {} messages = {:.0} per message",
                "instructions source QoS1",
                src.instructions,
                src.messages,
                src.per_message()
            );
            let sink = instructions::sink(&b, &self.settings, m).await?;
            println!(
                "  {:<28} {} instructions for {} messages = {:.0} per message",
                "instructions sink QoS1",
                sink.instructions,
                sink.messages,
                sink.per_message()
            );
            self.instructions.push((src, sink));
        }
        if self.wants("latency") {
            let (rate, secs) = (self.cli.latency_rate, self.cli.latency_secs);
            let l = scenarios::latency(&b, &self.settings, rate, secs, 100).await?;
            self.latency_line(&format!("latency {rate} msg/s"), &l);
            b.restart_mosquitto_without_nagle(&self.settings).await?;
            let n = scenarios::latency(&b, &self.settings, rate, secs, 100).await?;
            self.latency_line("  Mosquitto without Nagle", &n);
            let k = scenarios::kafka_latency(&b, &self.settings, rate, secs, 100).await?;
            self.latency_line("  Kafka alone", &k);
            self.latencies.push([l, n, k]);
        }
        if self.wants("distributed") {
            self.distributed(&b).await?;
        }
        if self.wants("sparkplug") {
            let (n, metrics) = (self.cli.sparkplug_messages, self.cli.sparkplug_metrics);
            for (output, label) in [
                (sparkplug::Output::Metric, SPARKPLUG_METRIC),
                (sparkplug::Output::Message, SPARKPLUG_MESSAGE),
            ] {
                let t = sparkplug::source(&b, &self.settings, output, metrics, n).await?;
                let per_metric = (t.rate * metrics as f64, t.cpu_us_per_msg);
                self.record(label, t, None, true);
                println!(
                    "  {:<28} {metrics} metrics per NDATA: {} metrics/s, {} CPU-µs per metric",
                    "",
                    with_commas(per_metric.0),
                    fmt_opt(per_metric.1.map(|c| c / metrics as f64), 2)
                );
            }
        }
        Ok(())
    }

    /// The distributed rows of one round: throughput per worker count, then the failover.
    async fn distributed(&mut self, b: &Brokers) -> Result<(), String> {
        let mut workers = self.cli.workers.clone();
        workers.sort_unstable();
        workers.dedup();
        let mut one = None;
        for k in workers {
            let t = distributed::throughput(b, &self.settings, k, 100, self.cli.messages).await?;
            if k == 1 {
                one = Some(t.rate);
            }
            let ratio = one.filter(|r| *r > 0.0).map(|r| t.rate / r);
            let label = format!("distributed {k} worker(s) QoS1 100 B");
            let mut line = describe(&t, None);
            if let Some(r) = ratio {
                let _ = write!(line, ", {r:.2}× 1 worker");
            }
            println!("  {label:<28} {line}");
            if t.delivered < t.sent {
                self.problems
                    .push(format!("{label}: {} of {} messages delivered", t.delivered, t.sent));
            }
            self.dist.entry(k).or_default().push((t, ratio));
        }
        let (rate, secs) = (self.cli.failover_rate, self.cli.failover_secs);
        let f = distributed::failover(b, &self.settings, rate, secs).await?;
        println!(
            "  {:<28} {} msg/s, 1 of 3 workers SIGKILLed: first message of its moved tasks in Kafka after {}; {}/{} delivered ({} dup)",
            "failover",
            rate,
            f.first_moved.map_or_else(|| "—".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            f.delivered,
            f.sent,
            f.duplicates
        );
        if f.delivered < f.sent {
            self.problems.push(format!(
                "failover: {} of {} messages delivered; missing (first 10) {:?}",
                f.delivered, f.sent, f.missing
            ));
        }
        if f.first_moved.is_none() {
            self.problems.push("failover: no message of the moved tasks arrived".to_owned());
        }
        self.failovers.push(f);
        Ok(())
    }

    /// Prints one latency measurement and notes messages that never arrived.
    fn latency_line(&mut self, label: &str, l: &Latency) {
        println!(
            "  {label:<28} {} samples: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} missing",
            l.samples, l.p50, l.p90, l.p99, l.p999, l.max, l.missing
        );
        if l.missing > 0 {
            self.problems.push(format!("{label}: {} messages never reached Kafka", l.missing));
        }
    }

    async fn soak(&mut self) -> Result<(), String> {
        let (rate, secs) = (self.cli.soak_rate, self.cli.soak_secs);
        println!("memory run: {rate} msg/s for {secs} s (fresh brokers)");
        let b = Brokers::start(&self.settings).await?;
        let s = scenarios::soak(&b, &self.settings, rate, secs, 100).await?;
        let first = s.rss.first().map_or(0, |r| r.1);
        let last = s.rss.last().map_or(0, |r| r.1);
        let max = s.rss.iter().map(|r| r.1).max().unwrap_or(0);
        println!(
            "  RSS first {:.1} MiB, last {:.1} MiB, max {:.1} MiB, peak (VmHWM) {:.1} MiB; {:.2} CPU-µs/msg; {}/{} in Kafka",
            mib(first),
            mib(last),
            mib(max),
            mib(s.peak_rss),
            s.cpu_us_per_msg,
            s.in_kafka,
            s.sent
        );
        if s.in_kafka < s.sent {
            self.problems.push(format!("memory run: {} of {} in Kafka", s.in_kafka, s.sent));
        }
        self.soak = Some(s);
        Ok(())
    }

    /// Per round, `f` of the rows `a` and `b` (rows that ran in every round line up by round).
    fn per_round(
        &self,
        a: &str,
        b: &str,
        f: fn(&Throughput, &Throughput) -> Option<f64>,
    ) -> Vec<f64> {
        match (self.rows.get(a), self.rows.get(b)) {
            (Some(x), Some(y)) => {
                x.runs.iter().zip(&y.runs).filter_map(|((p, _), (q, _))| f(p, q)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The goals of issue 18, each a ratio within one round (medians over rounds).
    fn goals(&self, r: &mut String) {
        let mut lines = Vec::new();
        let row = |label: &str, f: fn(&(Throughput, Option<f64>)) -> Option<f64>| {
            self.rows.get(label).and_then(|row| median(row.runs.iter().filter_map(f).collect()))
        };
        let mut goal = |what: String, value: Option<f64>, ok: fn(f64) -> bool| {
            if let Some(v) = value {
                let mark = if ok(v) { "met" } else { "not met" };
                lines.push(format!("- {what}: **{v:.2}** ({mark})"));
            }
        };
        for (label, bound) in [
            ("source QoS1 100 B", "≤ 0.2"),
            ("source QoS0 100 B", "≤ 0.4"),
            ("sink QoS1 100 B", "≤ 0.3"),
            (PACED, "≤ 0.4"),
        ] {
            let v = row(label, |(t, _)| t.cpu_vs_broker);
            let ok: fn(f64) -> bool = match bound {
                "≤ 0.2" => |v| v <= 0.2,
                "≤ 0.3" => |v| v <= 0.3,
                _ => |v| v <= 0.4,
            };
            goal(
                format!(
                    "{label}: CPU per message × Mosquitto's per relayed message (goal {bound})"
                ),
                v,
                ok,
            );
        }
        goal(
            "source QoS0 100 B: msg/s × bare QoS 0 (goal ≥ 0.85)".into(),
            row("source QoS0 100 B", |(_, ratio)| *ratio),
            |v| v >= 0.85,
        );
        goal(
            "sink QoS1 100 B: peak RSS, MiB (goal ≤ 20)".into(),
            row("sink QoS1 100 B", |(t, _)| t.peak_rss.map(mib)),
            |v| v <= 20.0,
        );
        for (peer, label) in [("Python", PYTHON), ("Node.js", NODE)] {
            let cpu = self.per_round(label, "source QoS1 100 B", |p, o| {
                Some(p.cpu_us_per_msg? / o.cpu_us_per_msg.filter(|c| *c > 0.0)?)
            });
            let goal_text = if peer == "Python" { " (goal ≥ 15)" } else { "" };
            goal(
                format!("{peer} bridge CPU per message ÷ ours, source QoS1 100 B{goal_text}"),
                median(cpu),
                if peer == "Python" { |v| v >= 15.0 } else { |_| true },
            );
            let rate = self.per_round(label, "source QoS1 100 B", |p, o| {
                (p.rate > 0.0).then(|| o.rate / p.rate)
            });
            goal(format!("our msg/s ÷ the {peer} bridge's"), median(rate), |_| true);
        }
        let flat = self.per_round(FLEET[2].1, FLEET[0].1, |big, small| {
            (small.rate > 0.0).then(|| big.rate / small.rate)
        });
        goal("fleet: msg/s at 100k devices ÷ at 100 (flat: ≈ 1)".into(), median(flat), |v| {
            v >= 0.9
        });
        let p99: Vec<f64> =
            self.latencies.iter().filter(|l| l[2].p99 > 0.0).map(|l| l[0].p99 / l[2].p99).collect();
        goal(
            "latency p99 through our source ÷ Kafka alone (goal ≤ 1.5)".into(),
            median(p99),
            |v| v <= 1.5,
        );
        let ins = |f: fn(&(instructions::Count, instructions::Count)) -> f64| {
            median(self.instructions.iter().map(f).collect())
        };
        goal(
            "instructions per message, source QoS1 100 B".into(),
            ins(|c| c.0.per_message()),
            |_| true,
        );
        goal(
            "instructions per message, sink QoS1 100 B".into(),
            ins(|c| c.1.per_message()),
            |_| true,
        );
        if !lines.is_empty() {
            let _ =
                writeln!(r, "\nGoals (issue 18), medians over rounds of ratios within a round:\n");
            for l in lines {
                let _ = writeln!(r, "{l}");
            }
        }
    }

    fn report(&self) -> String {
        /// Picks one figure out of a run (its throughput and its ratio to the ceiling).
        type Pick = dyn Fn(&(Throughput, Option<f64>)) -> Option<f64>;
        let mut r = String::new();
        let _ = writeln!(r, "Our connectors speak MQTT {}.\n", self.settings.mqtt_version);
        let _ = writeln!(r, "| measurement | msg/s | × ceiling | CPU-µs/msg | × broker CPU | peak RSS | Mosquitto CPU-µs/msg | Mosquitto cores | Tansu cores | bridge cores | delivered |");
        let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (label, row) in &self.rows {
            let col = |f: &Pick| median(row.runs.iter().filter_map(f).collect());
            let delivered: Vec<String> =
                row.runs.iter().map(|(t, _)| format!("{}/{}", t.delivered, t.sent)).collect();
            let _ = writeln!(
                r,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                col(&|(t, _)| Some(t.rate)).map_or_else(|| "—".into(), with_commas),
                fmt_opt(col(&|(_, ratio)| *ratio), 2),
                fmt_opt(col(&|(t, _)| t.cpu_us_per_msg), 2),
                fmt_opt(col(&|(t, _)| t.cpu_vs_broker), 2),
                col(&|(t, _)| t.peak_rss.map(mib))
                    .map_or_else(|| "—".into(), |m| format!("{m:.1} MiB")),
                fmt_opt(col(&|(t, _)| Some(t.mosquitto_us_per_msg)), 2),
                fmt_opt(col(&|(t, _)| Some(t.mosquitto_cores)), 2),
                fmt_opt(col(&|(t, _)| Some(t.tansu_cores)), 2),
                fmt_opt(col(&|(t, _)| Some(t.bridge_cores)).filter(|c| *c > 0.0), 2),
                delivered.join(", "),
            );
        }
        self.goals(&mut r);
        for label in [SPARKPLUG_METRIC, SPARKPLUG_MESSAGE] {
            let Some(row) = self.rows.get(label) else { continue };
            let metrics = self.cli.sparkplug_metrics as f64;
            let rates: Vec<f64> = row.runs.iter().map(|(t, _)| t.rate * metrics).collect();
            let cpu: Vec<f64> = row
                .runs
                .iter()
                .filter_map(|(t, _)| t.cpu_us_per_msg.map(|c| c / metrics))
                .collect();
            let _ = writeln!(
                r,
                "
{label}: msg/s counts NDATA messages of {} metrics (by alias, 10 edge nodes): {} metrics/s, {} CPU-µs per metric (medians).",
                self.cli.sparkplug_metrics,
                median(rates).map_or_else(|| "—".into(), with_commas),
                fmt_opt(median(cpu), 2),
            );
        }
        if let Some(on) = self.rows.get(SCRAPE_ON) {
            // CPU: one scrape per second against the CPU the source spends per second.
            let costs: Vec<f64> = on
                .runs
                .iter()
                .filter_map(|(t, _)| {
                    let per_scrape = t.scrapes?.2?;
                    let per_second = t.rate * t.cpu_us_per_msg?;
                    (per_second > 0.0).then(|| per_scrape / per_second)
                })
                .collect();
            let per_scrape: Vec<f64> = on.runs.iter().filter_map(|(t, _)| t.scrapes?.2).collect();
            let _ = writeln!(
                r,
                "\nScrape CPU: one GET /metrics costs the process {} CPU-µs (median of {} rounds, {} back-to-back scrapes each); scraped every second that is {} of the CPU the source spends per second at the row's rate.",
                fmt_opt(median(per_scrape), 0),
                costs.len(),
                scenarios::SCRAPE_PROBES,
                median(costs).map_or_else(|| "—".to_owned(), |c| format!("{:.3}%", c * 100.0)),
            );
        }
        if let (Some(off), Some(on)) = (self.rows.get(SCRAPE_OFF), self.rows.get(SCRAPE_ON)) {
            // Per round: throughput with scraping / without (both rows ran in that round).
            let ratios: Vec<f64> = off
                .runs
                .iter()
                .zip(&on.runs)
                .filter(|((a, _), _)| a.rate > 0.0)
                .map(|((a, _), (b, _))| b.rate / a.rate)
                .collect();
            let all: Vec<String> =
                ratios.iter().map(|x| format!("{:+.1}%", (x - 1.0) * 100.0)).collect();
            let _ = writeln!(
                r,
                "\nScrape cost: with GET /metrics every second the source QoS 1 100 B row runs at {} of its throughput without (median of {} rounds; per round {}).",
                median(ratios.clone()).map_or_else(|| "—".to_owned(), |m| format!("{:.1}%", m * 100.0)),
                ratios.len(),
                all.join(", ")
            );
        }
        if !self.latencies.is_empty() {
            for (what, pick) in [
                ("MQTT publish -> Kafka fetch through our source, Mosquitto as shipped", 0),
                ("the same with Mosquitto `set_tcp_nodelay true`", 1),
                ("Kafka alone (our producer -> Tansu -> fetch)", 2),
            ] {
                let all: Vec<&Latency> = self.latencies.iter().map(|l| &l[pick]).collect();
                let m =
                    |f: fn(&Latency) -> f64| fmt_opt(median(all.iter().map(|l| f(l)).collect()), 2);
                let _ = writeln!(
                    r,
                    "\nLatency, {what}, at {} msg/s, linger_ms {} (median of {} rounds): p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
                    self.cli.latency_rate,
                    self.settings.linger_ms,
                    all.len(),
                    m(|l| l.p50),
                    m(|l| l.p90),
                    m(|l| l.p99),
                    m(|l| l.p999),
                    m(|l| l.max),
                );
            }
        }
        if !self.dist.is_empty() {
            let _ = writeln!(
                r,
                "\nDistributed mode: one group, an MQTT source with {} tasks, QoS 1 100 B, session timeout {} ms (medians of {} rounds)\n",
                distributed::TASKS,
                distributed::SESSION_MS,
                self.cli.runs
            );
            let _ = writeln!(r, "| workers | msg/s | × 1 worker | CPU-µs/msg (all workers) | workers' cores | Mosquitto cores | Tansu cores | delivered (dup) |");
            let _ = writeln!(r, "|---:|---:|---:|---:|---:|---:|---:|---:|");
            for (k, runs) in &self.dist {
                let col = |f: &Pick| median(runs.iter().filter_map(f).collect());
                let delivered: Vec<String> = runs
                    .iter()
                    .map(|(t, _)| format!("{}/{} ({})", t.delivered, t.sent, t.duplicates))
                    .collect();
                let _ = writeln!(
                    r,
                    "| {k} | {} | {} | {} | {} | {} | {} | {} |",
                    col(&|(t, _)| Some(t.rate)).map_or_else(|| "—".into(), with_commas),
                    fmt_opt(col(&|(_, ratio)| *ratio), 2),
                    fmt_opt(col(&|(t, _)| t.cpu_us_per_msg), 2),
                    fmt_opt(col(&|(t, _)| Some(t.bridge_cores)), 2),
                    fmt_opt(col(&|(t, _)| Some(t.mosquitto_cores)), 2),
                    fmt_opt(col(&|(t, _)| Some(t.tansu_cores)), 2),
                    delivered.join(", "),
                );
            }
        }
        if !self.failovers.is_empty() {
            let firsts: Vec<f64> = self
                .failovers
                .iter()
                .filter_map(|f| f.first_moved.map(|d| d.as_secs_f64()))
                .collect();
            let each: Vec<String> = self
                .failovers
                .iter()
                .map(|f| {
                    format!(
                        "{} ({}/{}, {} dup)",
                        f.first_moved.map_or_else(
                            || "—".to_owned(),
                            |d| format!("{:.2} s", d.as_secs_f64())
                        ),
                        f.delivered,
                        f.sent,
                        f.duplicates
                    )
                })
                .collect();
            let _ = writeln!(
                r,
                "\nFailover at {} msg/s, 1 of 3 workers SIGKILLed, session timeout {} ms: SIGKILL -> first message of the moved tasks in Kafka {} s (median); per round: {}",
                self.cli.failover_rate,
                distributed::SESSION_MS,
                fmt_opt(median(firsts), 2),
                each.join(", ")
            );
        }
        if let Some(s) = &self.soak {
            let _ = writeln!(
                r,
                "\nMemory run: {} msg/s for {} s; RSS every 5 s (MiB): {}",
                self.cli.soak_rate,
                self.cli.soak_secs,
                s.rss.iter().map(|(_, b)| format!("{:.1}", mib(*b))).collect::<Vec<_>>().join(" ")
            );
            let _ = writeln!(
                r,
                "Peak RSS {:.1} MiB; {:.2} CPU-µs/msg; {}/{} in Kafka",
                mib(s.peak_rss),
                s.cpu_us_per_msg,
                s.in_kafka,
                s.sent
            );
        }
        r
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.smoke {
        cli.runs = 1;
        cli.messages = cli.messages.min(2_000);
        cli.big_messages = cli.big_messages.min(1_000);
        cli.python_messages = cli.python_messages.min(1_000);
        cli.latency_rate = cli.latency_rate.min(200);
        cli.latency_secs = cli.latency_secs.min(3);
        cli.soak_rate = cli.soak_rate.min(500);
        cli.soak_secs = cli.soak_secs.min(5);
        cli.failover_rate = cli.failover_rate.min(500);
        cli.failover_secs = cli.failover_secs.min(9);
        cli.sparkplug_messages = cli.sparkplug_messages.min(1_000);
        cli.node_messages = cli.node_messages.min(1_000);
        cli.paced_rate = cli.paced_rate.min(500);
        cli.paced_secs = cli.paced_secs.min(2);
        cli.fleet_messages = cli.fleet_messages.min(2_000);
        cli.instructions_messages = cli.instructions_messages.min(500);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let connect = cli.connect.clone().or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("connect")))
    });
    let Some(connect) = connect.filter(|p| p.is_file()) else {
        eprintln!(
            "bench: no `connect` binary found; build it (scripts/bench does) or pass --connect"
        );
        return ExitCode::FAILURE;
    };
    let settings = Settings {
        connect,
        python_bridge: cli.python_bridge.clone(),
        node_bridge: cli.node_bridge.clone(),
        linger_ms: cli.linger_ms,
        mosquitto_inflight: cli.mosquitto_inflight,
        source_inflight: cli.source_inflight,
        mqtt_version: cli.mqtt_version.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut driver = Driver {
        cli,
        settings,
        rows: BTreeMap::new(),
        latencies: Vec::new(),
        dist: BTreeMap::new(),
        failovers: Vec::new(),
        soak: None,
        instructions: Vec::new(),
        broker_cpu: BTreeMap::new(),
        problems: Vec::new(),
    };
    let result = runtime.block_on(async {
        for round in 1..=driver.cli.runs {
            driver.round(round).await?;
        }
        if driver.wants("soak") {
            driver.soak().await?;
        }
        Ok::<(), String>(())
    });
    let report = driver.report();
    println!("\n{report}");
    if let Some(path) = &driver.cli.report {
        if let Err(e) = std::fs::write(path, &report) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = result {
        eprintln!("bench: {e}");
        return ExitCode::FAILURE;
    }
    if !driver.problems.is_empty() {
        for p in &driver.problems {
            eprintln!("bench: {p}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
