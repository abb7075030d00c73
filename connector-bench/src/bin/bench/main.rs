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
//! Each round (`--runs`) starts fresh brokers and measures the ceiling and the bridges in turn,
//! so every ratio compares figures from the same round; the summary gives medians over rounds.
//! `scripts/bench` builds everything in release mode and runs this. `--smoke` runs tiny counts
//! and fails when a message is missing: a check that the driver works, never a speed test.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod distributed;
mod load;
mod procstat;
mod scenarios;
mod sparkplug;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::scenarios::{Bridge, Brokers, Latency, Settings, Soak, Throughput};

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
    /// distributed, sparkplug (Sparkplug B NDATA through the source), soak.
    #[arg(
        long,
        default_value = "bare,source,scrape,sink,python,latency,distributed,sparkplug,soak",
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
    problems: Vec<String>,
}

impl Driver {
    fn wants(&self, what: &str) -> bool {
        self.cli.only.iter().any(|o| o == what)
    }

    fn row_wanted(&self, qos: u8, size: usize) -> bool {
        self.cli.qos.contains(&qos) && self.cli.sizes.contains(&size)
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
                let t =
                    scenarios::source(&b, &self.settings, Bridge::Ours, qos, size, count, false)
                        .await?;
                self.record(label, t, ceiling.get(&(qos, size)).copied(), qos == 1);
            }
        }
        if self.wants("scrape") {
            // Both rows in every round, one after the other, so that they share its conditions;
            // which goes first alternates, so that a drift within rounds cancels out.
            let mut order = [(false, SCRAPE_OFF), (true, SCRAPE_ON)];
            if round % 2 == 0 {
                order.reverse();
            }
            for (scraped, label) in order {
                let t =
                    scenarios::source(&b, &self.settings, Bridge::Ours, 1, 100, n, scraped).await?;
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
                self.record(label, t, ceiling.get(&(1, 100)).copied(), true);
            }
        }
        if self.wants("source-eos") {
            // QoS 2 at least once, then exactly once at two transaction sizes, one after the
            // other in each round so that they share its conditions.
            // Against the bare QoS 2 rate when the round measured one (`--qos 1,2`).
            let bare = ceiling.get(&(2, 100)).or_else(|| ceiling.get(&(1, 100))).copied();
            let t = scenarios::source(&b, &self.settings, Bridge::Ours, 2, 100, n, false).await?;
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
                let t = scenarios::sink(&b, &self.settings, 1, size, count, None).await?;
                self.record(label, t, ceiling.get(&(1, size)).copied(), true);
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
                let t = scenarios::sink(&b, &self.settings, 2, 100, n, eos).await?;
                self.record(label, t, ceiling.get(&(1, 100)).copied(), true);
            }
        }
        if self.wants("python") {
            let t =
                scenarios::source(&b, &self.settings, Bridge::Python, 1, 100, py, false).await?;
            self.record("python bridge QoS1 100 B", t, ceiling.get(&(1, 100)).copied(), true);
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

    fn report(&self) -> String {
        /// Picks one figure out of a run (its throughput and its ratio to the ceiling).
        type Pick = dyn Fn(&(Throughput, Option<f64>)) -> Option<f64>;
        let mut r = String::new();
        let _ = writeln!(r, "Our connectors speak MQTT {}.\n", self.settings.mqtt_version);
        let _ = writeln!(r, "| measurement | msg/s | × ceiling | CPU-µs/msg | peak RSS | Mosquitto cores | Tansu cores | bridge cores | delivered |");
        let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (label, row) in &self.rows {
            let col = |f: &Pick| median(row.runs.iter().filter_map(f).collect());
            let delivered: Vec<String> =
                row.runs.iter().map(|(t, _)| format!("{}/{}", t.delivered, t.sent)).collect();
            let _ = writeln!(
                r,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                col(&|(t, _)| Some(t.rate)).map_or_else(|| "—".into(), with_commas),
                fmt_opt(col(&|(_, ratio)| *ratio), 2),
                fmt_opt(col(&|(t, _)| t.cpu_us_per_msg), 2),
                col(&|(t, _)| t.peak_rss.map(mib))
                    .map_or_else(|| "—".into(), |m| format!("{m:.1} MiB")),
                fmt_opt(col(&|(t, _)| Some(t.mosquitto_cores)), 2),
                fmt_opt(col(&|(t, _)| Some(t.tansu_cores)), 2),
                fmt_opt(col(&|(t, _)| Some(t.bridge_cores)).filter(|c| *c > 0.0), 2),
                delivered.join(", "),
            );
        }
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
