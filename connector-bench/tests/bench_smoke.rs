//! The benchmark driver's smoke run: tiny counts through every measurement against real brokers,
//! failing if any message is missing. It checks that `scripts/bench` works; it never judges speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

/// The `connect` binary the driver measures: connector-runner's, from the same target directory
/// as this crate's `bench` (where the driver itself looks by default). `cargo test --workspace`
/// builds it with everything else; `cargo test -p connector-bench` alone needs
/// `cargo build -p connector-runner --bin connect` first (a binary of another package is not
/// built for this one's tests).
fn connect_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let connect = bench.with_file_name(format!("connect{}", std::env::consts::EXE_SUFFIX));
    assert!(
        connect.is_file(),
        "no {}: run `cargo build -p connector-runner --bin connect` first",
        connect.display()
    );
    connect
}

#[test]
fn the_benchmark_driver_accounts_for_every_message() {
    let bridge = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/mqtt-kafka-bridge.py");
    let node = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/node-bridge/bridge.js");
    let connect = connect_binary();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--connect", connect.to_str().unwrap(), "--python-bridge", bridge])
        .args(["--node-bridge", node])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench --smoke failed\n{stdout}\n{stderr}");
    for row in [
        "bare pub->sub QoS1 100 B",
        "source QoS1 100 B",
        "sink QoS1 100 B",
        "python bridge",
        "node bridge",
        "distributed 1 worker(s)",
        "distributed 3 worker(s)",
        "failover",
        "sparkplug QoS1 per metric",
        "sparkplug QoS1 per message",
        "source QoS1 100 B paced",
        "source QoS1 100 B, 100k devices",
        "sink QoS1 100 B, 10k keys",
    ] {
        assert!(stdout.contains(row), "no {row:?} row in\n{stdout}");
    }
    for line in ["Latency, MQTT publish -> Kafka fetch", "Latency, Kafka alone"] {
        assert!(stdout.contains(line), "no {line:?} line in\n{stdout}");
    }
    assert!(stdout.contains("Memory run"), "{stdout}");
    assert!(stdout.contains("| × broker CPU |"), "CPU against the broker's: {stdout}");
    assert!(stdout.contains("Goals (issue 18)"), "{stdout}");
    assert!(stdout.contains("| workers | msg/s | × 1 worker |"), "distributed table: {stdout}");
}
