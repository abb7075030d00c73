//! The smart-factory example as a newcomer runs it, briefly: its embedded brokers, Sparkplug B
//! edge nodes into Kafka, commands back to the devices, a line that dies and is born again, and
//! every check passing with no ERROR line.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The example's longest honest run; past it the test kills it and fails with its output.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn the_smart_factory_runs_and_every_check_passes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smart-factory"))
        .args(["--nodes", "2", "--devices", "2", "--seconds", "3", "--rate", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes meanwhile, so a full pipe cannot block the example.
    let mut pipe_out = child.stdout.take().unwrap();
    let mut pipe_err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe_out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe_err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    let Some(status) = status else {
        panic!("killed after {LIMIT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all checks passed."), "{stdout}");
    // line-2 died once, and Kafka saw it go offline.
    let line2 = stdout.lines().find(|l| l.starts_with("line-2 ")).unwrap();
    assert!(line2.split_whitespace().any(|w| w == "1/1"), "{line2}");
    assert!(stdout.contains("a command as its edge node decoded it:"), "{stdout}");
    assert!(stdout.contains("the bad command went to factory.commands.dlq:"), "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines on a clean run:\n{}", errors.join("\n"));
}
