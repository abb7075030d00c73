//! The connected-cars example, small, on real brokers: telemetry from every car in Kafka, every due
//! command delivered, and no expired command delivered (neither one stale in Kafka nor one waiting
//! in the session of a car that came back after the expiry): on the embedded rumqttd (MQTT 5
//! listener) and on Mosquitto.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(broker: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_connected-cars"))
        .args([
            "--mqtt-broker",
            broker,
            "--cars",
            "200",
            "--offline",
            "20",
            "--stale",
            "10",
            "--connections",
            "2",
            "--seconds",
            "3",
            "--rate",
            "2",
            "--expiry-secs",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // 180 online cars x 6 messages, all in Kafka; 180 + 10 online commands; 10 + 10 parked.
    let row = |name: &str| {
        let line =
            stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{stdout}"));
        line[name.len()..].split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(row("online"), ["180", "1080", "1080", "180", "180", "-"], "{stdout}");
    assert_eq!(row("  stale in Kafka (sink drops)"), ["10", "-", "-", "10", "0", "10"], "{stdout}");
    assert_eq!(row("offline, back before expiry"), ["10", "-", "-", "10", "10", "-"], "{stdout}");
    assert_eq!(row("offline, back after expiry"), ["10", "-", "-", "10", "0", "10"], "{stdout}");
    assert!(stdout.contains("sessions kept by the broker for the parked cars: 20/20"), "{stdout}");
    stdout
}

#[test]
fn connected_cars_on_the_embedded_broker_delivers_due_commands_and_no_expired_one() {
    let stdout = run("embedded");
    assert!(stdout.contains("MQTT broker: rumqttd"), "{stdout}");
}

#[test]
fn connected_cars_on_mosquitto_delivers_due_commands_and_no_expired_one() {
    let stdout = run("mosquitto");
    assert!(stdout.contains("MQTT broker: Mosquitto"), "{stdout}");
}
