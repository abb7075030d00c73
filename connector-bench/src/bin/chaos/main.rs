//! `chaos`: the chaos driver. On real brokers (Mosquitto and Tansu, started by the testkit) and
//! through the `connect` runner process, it streams numbered messages while it breaks things,
//! and reports per scenario the messages sent, lost (must be 0), duplicated, and the time the
//! flow took to recover:
//!
//! * `source-kill`: SIGKILL the runner `--kills` times at random moments (seeded) during a QoS 1
//!   stream from 100 devices (MQTT publishes -> runner -> Kafka; distinct values in Kafka).
//! * `sink-kill`: the same during a command stream (records in Kafka -> runner -> an MQTT
//!   subscriber with a persistent session; distinct values received).
//! * `tansu-restart`: SIGKILL Tansu (sqlite storage) mid-stream, start it again on the same file
//!   and port; a source and a sink in one runner.
//! * `mosquitto-restart`: the same with Mosquitto (persistence on).
//! * `mqtt-cut`, `kafka-cut`: cut the runner's network to Mosquitto (or to Tansu) for
//!   `--cut-secs` with the testkit's fault proxy, a source and a sink in one runner.
//!
//! One line per scenario, then `N passed, N failed`; a scenario fails when it lost a message or
//! could not run. `scripts/chaos` builds the binaries and runs this; `--ci` is the small run of
//! `scripts/test`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod harness;
mod load;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::scenarios::{Broker, Outcome, Plan, Side};

/// Every scenario, in the order they run.
const SCENARIOS: [&str; 6] =
    ["source-kill", "sink-kill", "tansu-restart", "mosquitto-restart", "mqtt-cut", "kafka-cut"];

/// Breaks brokers, networks and the runner while messages flow, and counts what arrived.
#[derive(Parser, Debug)]
#[command(name = "chaos")]
struct Cli {
    /// Run only this scenario (repeatable): source-kill, sink-kill, tansu-restart,
    /// mosquitto-restart, mqtt-cut, kafka-cut.
    #[arg(long)]
    scenario: Vec<String>,
    /// SIGKILLs of the runner in each kill scenario [default: 20; --ci: 4].
    #[arg(long)]
    kills: Option<u32>,
    /// Messages of the source-kill stream; sink-kill sends 2/3 of it, the cuts and the Mosquitto
    /// restart 1/4 each way, the Tansu restart 1/20 each way (at most 3,000)
    /// [default: 60000; --ci: 6000].
    #[arg(long)]
    messages: Option<u64>,
    /// Seconds each network cut lasts [default: 30; --ci: 5].
    #[arg(long)]
    cut_secs: Option<u64>,
    /// Seed of the kill moments [default: from the clock; printed].
    #[arg(long)]
    seed: Option<u64>,
    /// CI-sized run: 4 kills, 6,000 messages, 5 s cuts.
    #[arg(long)]
    ci: bool,
    /// The `connect` binary under test [default: next to this one].
    #[arg(long)]
    connect: Option<PathBuf>,
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// "max 1.20 s, median 0.80 s over 20 kills", or the one figure.
fn recovery(r: &[Duration], what: &str) -> String {
    let mut v = r.to_vec();
    v.sort();
    match v.len() {
        0 => "—".to_owned(),
        1 => seconds(v[0]),
        n => format!("max {}, median {} over {n} {what}", seconds(v[n - 1]), seconds(v[n / 2])),
    }
}

fn line(name: &str, o: &Outcome) -> String {
    let what = if name.ends_with("-kill") { "kills" } else { "restarts" };
    format!(
        "{name:<18} {} sent: {} lost, {} duplicates, recovery {} | {}",
        o.sent,
        o.lost,
        o.duplicates,
        recovery(&o.recoveries, what),
        o.detail
    )
}

async fn run_one(plan: &Plan, name: &str) -> Result<Outcome, String> {
    match name {
        "source-kill" => scenarios::source_kill(plan).await,
        "sink-kill" => scenarios::sink_kill(plan).await,
        "tansu-restart" => scenarios::broker_restart(plan, Broker::Tansu).await,
        "mosquitto-restart" => scenarios::broker_restart(plan, Broker::Mosquitto).await,
        "mqtt-cut" => scenarios::cut(plan, Side::Mqtt).await,
        "kafka-cut" => scenarios::cut(plan, Side::Kafka).await,
        other => Err(format!("unknown scenario {other:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    for s in &cli.scenario {
        if !SCENARIOS.contains(&s.as_str()) {
            eprintln!("chaos: unknown scenario {s:?}; known: {}", SCENARIOS.join(", "));
            return ExitCode::from(2);
        }
    }
    let connect = cli.connect.clone().or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("connect")))
    });
    let Some(connect) = connect.filter(|p| p.is_file()) else {
        eprintln!(
            "chaos: no `connect` binary found; build it (scripts/chaos does) or pass --connect"
        );
        return ExitCode::FAILURE;
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let plan = Plan {
        connect,
        kills: cli.kills.unwrap_or(if cli.ci { 4 } else { 20 }),
        messages: cli.messages.unwrap_or(if cli.ci { 6_000 } else { 60_000 }),
        cut_secs: cli.cut_secs.unwrap_or(if cli.ci { 5 } else { 30 }),
        seed,
    };
    let names: Vec<&str> = if cli.scenario.is_empty() {
        SCENARIOS.to_vec()
    } else {
        SCENARIOS.iter().copied().filter(|s| cli.scenario.iter().any(|c| c == s)).collect()
    };
    println!(
        "chaos: seed {seed}, {} kills, {} messages, {} s cuts, connect {}",
        plan.kills,
        plan.messages,
        plan.cut_secs,
        plan.connect.display()
    );
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("chaos: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    let (mut passed, mut failed) = (0u32, 0u32);
    let started = Instant::now();
    for name in names {
        let t = Instant::now();
        match runtime.block_on(run_one(&plan, name)) {
            Ok(o) => {
                let ok = o.lost == 0;
                println!(
                    "{} {} ({})",
                    if ok { "PASS" } else { "FAIL" },
                    line(name, &o),
                    seconds(t.elapsed())
                );
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("FAIL {name:<18} could not run: {e} ({})", seconds(t.elapsed()));
                failed += 1;
            }
        }
    }
    println!("chaos: seed {seed}, {} in all", seconds(started.elapsed()));
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        eprintln!("chaos: set CHAOS_KEEP=1 to keep each scenario's directory (runner config and log), CHAOS_CONNECT_LOG=info for more of the runner's log");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
