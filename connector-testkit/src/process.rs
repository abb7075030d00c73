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

/// A free TCP port on 127.0.0.1 (free when returned; bind it soon). A port this process
/// handed out recently is not handed out again, so that brokers started at the same moment by
/// tests running side by side do not get one port (the kernel may give a released port out
/// again at once); the brokers' start also checks that the port is really theirs.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16> {
    static RECENT: std::sync::Mutex<std::collections::VecDeque<u16>> =
        std::sync::Mutex::new(std::collections::VecDeque::new());
    let mut recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut port = 0;
    for _ in 0..64 {
        let l = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| TestkitError::io("bind a free port", e))?;
        port = l
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| TestkitError::io("read a bound port", e))?;
        if !recent.contains(&port) {
            break;
        }
    }
    if recent.len() >= 4096 {
        recent.pop_front();
    }
    recent.push_back(port);
    Ok(port)
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

/// Waits until `child` itself listens on `addr` (and accepts connections), or `child` exits, or
/// `timeout` passes. False also when another process answers on the port: `free_port` releases
/// the port it found, so a broker started at the same moment by another test (or a client's
/// outgoing connection) can take it first, and a broker whose bind failed would otherwise be
/// taken for ready while the tests talk to someone else's broker. The callers retry on a new
/// port.
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
            return match child.pid().map(|pid| listens_on(pid, addr.port())) {
                Some(Some(false)) => {
                    tracing::warn!(
                        port = addr.port(),
                        "another process listens on the port: retrying on another"
                    );
                    false
                }
                // Ours, or no way to tell (no /proc).
                _ => true,
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Whether process `pid` holds a listening TCP socket on `port` (Linux: the LISTEN sockets of
/// /proc/net/tcp{,6} against the process's file descriptors); `None` where /proc cannot tell.
pub(crate) fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    if inodes.is_empty() {
        // Something answered but no LISTEN socket is listed: the tables cannot tell.
        return None;
    }
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    }))
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    /// Our own listener is ours; a port another process listens on is not.
    #[test]
    fn a_listener_is_told_from_another_processes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listens_on(std::process::id(), port), Some(true));
        // PID 1 (init or the container's entry point) does not listen on our port.
        assert!(!listens_on(1, port).unwrap_or(false));
    }
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
