//! The quickstart as a newcomer runs it: its embedded brokers, both directions, every message
//! accounted for, and no ERROR line on a clean finish.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_quickstart_runs_to_completion_with_every_message_accounted_for() {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(["--cars", "5", "--seconds", "3", "--rate", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every message was accounted for."), "{stdout}");
    assert!(stdout.contains("300 published, 300 in Kafka, 0 missing"), "{stdout}");
    // A clean run reads as one: no ERROR line from anything in the process, the embedded brokers
    // included (rumqttd's "no-connection id N is already gone" on a client's clean disconnect).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines on a clean run:\n{}", errors.join("\n"));
}
