//! Helpers shared by the runner tests: run `connect` once, or keep it running as a [`Runner`].

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

pub const CONNECT: &str = env!("CARGO_BIN_EXE_connect");

pub fn connect(args: &[&str]) -> Output {
    Command::new(CONNECT).args(args).output().unwrap()
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A `connect run` child process.
pub struct Runner {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Runner {
    /// `connect run --config CONFIG EXTRA...`, stderr appended to `log`.
    pub fn start(config: &str, log: &Path, extra: &[&str]) -> Self {
        Self::spawn(config, log, extra, &[])
    }

    /// Like [`Runner::start`], with extra environment variables.
    pub fn start_with_env(config: &str, log: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn(config, log, &[], env)
    }

    fn spawn(config: &str, log: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(CONNECT)
            .args(["run", "--config", config])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, log: log.to_path_buf() }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        self.child.wait().unwrap().code()
    }

    /// SIGKILL: a crash, as the brokers see it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `connect validate` on `config` and checks that it exits 2 with a line starting with each
/// of `expected` (a key path and the start of its message).
pub fn assert_validate_reports(config: &str, expected: &[&str]) {
    let out = connect(&["validate", "--config", config]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for e in expected {
        assert!(stderr.lines().any(|l| l.starts_with(e)), "missing {e:?} in:\n{stderr}");
    }
}

/// `connect run --config CONFIG` with `env`, to its end, which must be exit code 1 (a fatal
/// error): returns its stderr.
pub fn run_expecting_failure(config: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(CONNECT)
        .args(["run", "--config", config])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}
