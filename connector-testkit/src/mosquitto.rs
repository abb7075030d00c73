//! [`Mosquitto`]: a real Mosquitto broker on a free port with its own config and data directory.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use tracing::debug;

use crate::error::{Result, TestkitError};
use crate::process::{find_binary, free_port, tail, wait_for_port, ChildGuard};

const INSTALL_MOSQUITTO: &str = "apt-get install -y mosquitto mosquitto-clients";

/// How to configure a [`Mosquitto`] broker.
#[derive(Debug, Clone)]
pub struct MosquittoOptions {
    /// Keep sessions and queued messages across restarts (`persistence true`).
    pub persistence: bool,
    /// `max_inflight_messages`: QoS 1/2 messages in flight to one client (0 = unlimited).
    pub max_inflight_messages: u32,
    /// `max_queued_messages`: messages queued for one client (0 = unlimited). Mosquitto silently
    /// drops QoS 1 messages beyond this for a slow or offline client.
    pub max_queued_messages: u32,
    /// Extra lines appended to the config file.
    pub extra_config: Vec<String>,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        Self {
            persistence: true,
            max_inflight_messages: 1000,
            max_queued_messages: 1_000_000,
            extra_config: Vec::new(),
        }
    }
}

/// A Mosquitto broker for one test. Stopped (SIGKILL) when dropped; its data directory is removed.
///
/// ```no_run
/// # async fn example() -> connector_testkit::Result<()> {
/// let broker = connector_testkit::Mosquitto::start().await?;
/// assert!(broker.url().starts_with("mqtt://127.0.0.1:"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Mosquitto {
    binary: PathBuf,
    dir: TempDir,
    port: u16,
    child: ChildGuard,
}

impl Mosquitto {
    /// The installed `mosquitto` binary.
    ///
    /// # Errors
    /// [`TestkitError::MissingBinary`], saying how to install it.
    pub fn binary() -> Result<PathBuf> {
        find_binary(
            "mosquitto",
            "MOSQUITTO_BIN",
            &[PathBuf::from("/usr/sbin/mosquitto"), PathBuf::from("/usr/local/sbin/mosquitto")],
            INSTALL_MOSQUITTO,
        )
    }

    /// Starts a broker with default options (persistence on, generous queue limits).
    ///
    /// # Errors
    /// When the binary is missing or the broker does not come up.
    pub async fn start() -> Result<Self> {
        Self::start_with(MosquittoOptions::default()).await
    }

    /// Starts a broker with `options`.
    ///
    /// # Errors
    /// When the binary is missing or the broker does not come up.
    pub async fn start_with(options: MosquittoOptions) -> Result<Self> {
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("mosquitto-")
            .tempdir()
            .map_err(|e| TestkitError::io("create mosquitto dir", e))?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            write_config(dir.path(), port, &options)?;
            match launch(&binary, dir.path(), port).await {
                Ok(child) => return Ok(Self { binary, dir, port, child }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::Timeout("mosquitto start".into())))
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker gracefully (SIGTERM: persistent state is saved) and starts it again on the
    /// same port with the same data.
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn restart(&mut self) -> Result<()> {
        self.child.terminate(Duration::from_secs(10));
        self.child = launch(&self.binary, self.dir.path(), self.port).await?;
        Ok(())
    }

    /// Stops the broker gracefully without restarting it.
    pub fn stop(&mut self) {
        self.child.terminate(Duration::from_secs(10));
    }

    /// Kills the broker (SIGKILL, as a crash: no final save, so what arrived since the last
    /// `autosave_interval` is not on disk) without restarting it. [`start_again`](Self::start_again)
    /// brings it back on the same port and persistence file.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts a stopped broker again (same port, same data).
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn start_again(&mut self) -> Result<()> {
        self.child = launch(&self.binary, self.dir.path(), self.port).await?;
        Ok(())
    }

    /// The broker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }
}

fn write_config(dir: &Path, port: u16, o: &MosquittoOptions) -> Result<()> {
    let mut c = String::new();
    let _ = writeln!(c, "listener {port} 127.0.0.1");
    // Started as root, Mosquitto drops to user `mosquitto` and can then neither write its log nor
    // its persistence database in our directory (so sessions would not survive a restart). This
    // keeps the starting user; it has no effect when not started as root.
    let _ = writeln!(c, "user root");
    let _ = writeln!(c, "allow_anonymous true");
    let _ = writeln!(c, "persistence {}", o.persistence);
    let _ = writeln!(c, "persistence_location {}/", dir.display());
    let _ = writeln!(c, "autosave_interval 1");
    let _ = writeln!(c, "max_inflight_messages {}", o.max_inflight_messages);
    let _ = writeln!(c, "max_queued_messages {}", o.max_queued_messages);
    let _ = writeln!(c, "log_dest file {}/mosquitto.log", dir.display());
    let _ = writeln!(c, "log_type error");
    let _ = writeln!(c, "log_type warning");
    let _ = writeln!(c, "log_type notice");
    let _ = writeln!(c, "log_type information");
    for line in &o.extra_config {
        let _ = writeln!(c, "{line}");
    }
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, c).map_err(|e| TestkitError::io(format!("write {}", path.display()), e))
}

async fn launch(binary: &Path, dir: &Path, port: u16) -> Result<ChildGuard> {
    let mut cmd = Command::new(binary);
    cmd.arg("-c").arg(dir.join("mosquitto.conf")).current_dir(dir);
    let log = dir.join("mosquitto.stdout");
    let mut child = ChildGuard::spawn(cmd, &log, "mosquitto")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if wait_for_port(addr, &mut child, Duration::from_secs(10)).await {
        debug!(port, "mosquitto ready");
        return Ok(child);
    }
    child.kill();
    Err(TestkitError::NotReady {
        name: "mosquitto",
        seconds: 10,
        log: format!("{}\n{}", tail(&log, 20), tail(&dir.join("mosquitto.log"), 20)),
    })
}
