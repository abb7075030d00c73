//! Finding broker binaries, free ports, and a child process that is killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// Where `scripts/install-brokers` puts slow-to-build brokers: `$CONNECTOR_BROKER_CACHE`, else
/// `$HOME/.cache/connector-brokers`.
pub fn broker_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONNECTOR_BROKER_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("connector-brokers")
}

/// Finds `name`: the `env` variable if set, then each of `extra`, then `$PATH`.
pub(crate) fn find_binary(
    name: &'static str,
    env: &str,
    extra: &[PathBuf],
    how: &'static str,
) -> Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        searched.push(format!("${env}={}", p.display()));
    }
    for p in extra {
        if is_executable(p) {
            return Ok(p.clone());
        }
        searched.push(p.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
        searched.push("$PATH".to_owned());
    }
    Err(TestkitError::MissingBinary { name, searched: searched.join(", "), how })
}

fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// A free TCP port on 127.0.0.1 (free when returned; bind it soon).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| TestkitError::io("bind a free port", e))?;
    l.local_addr().map(|a| a.port()).map_err(|e| TestkitError::io("read a bound port", e))
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub(crate) fn spawn(mut command: Command, log: &Path, what: &str) -> Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| TestkitError::io(format!("open log {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| TestkitError::io("clone log handle", e))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().map_err(|e| TestkitError::io(format!("start {what}"), e))?;
        Ok(Self { child: Some(child) })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub(crate) fn terminate(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `addr` accepts TCP connections or `child` exits or `timeout` passes.
pub(crate) async fn wait_for_port(
    addr: SocketAddr,
    child: &mut ChildGuard,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !child.is_running() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// The last `n` lines of a log file.
pub(crate) fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_an_error_that_says_how_to_install_it() {
        let err =
            find_binary("no-such-broker-xyz", "NO_SUCH_BROKER_BIN", &[], "apt-get install xyz")
                .unwrap_err()
                .to_string();
        assert!(err.contains("no-such-broker-xyz not found"), "{err}");
        assert!(err.contains("scripts/install-brokers"), "{err}");
        assert!(err.contains("apt-get install xyz"), "{err}");
    }
}
