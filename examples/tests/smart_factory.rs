//! The smart-factory example as a newcomer runs it, briefly: its embedded brokers, Sparkplug B
//! edge nodes into Kafka, commands back to the devices, a line that dies and is born again, and
//! every check passing with no ERROR line.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_smart_factory_runs_and_every_check_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_smart-factory"))
        .args(["--nodes", "2", "--devices", "2", "--seconds", "3", "--rate", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all checks passed."), "{stdout}");
    // line-2 died once, and Kafka saw it go offline.
    let line2 = stdout.lines().find(|l| l.starts_with("line-2 ")).unwrap();
    assert!(line2.split_whitespace().any(|w| w == "1/1"), "{line2}");
    assert!(stdout.contains("a command as its edge node decoded it:"), "{stdout}");
    assert!(stdout.contains("the bad command went to factory.commands.dlq:"), "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines on a clean run:\n{}", errors.join("\n"));
}
