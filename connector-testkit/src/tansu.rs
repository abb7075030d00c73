//! [`Tansu`]: a real Kafka-compatible broker (Tansu 0.6.0) on a free port, with memory or sqlite
//! storage in its own directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, KafkaConfig};
use tempfile::TempDir;
use tracing::debug;

use crate::error::{Result, TestkitError};
use crate::process::{broker_cache_dir, find_binary, free_port, tail, wait_for_port, ChildGuard};
use crate::proxy::FaultProxy;

const INSTALL_TANSU: &str =
    "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root ~/.cache/connector-brokers/tansu-0.6.0";

/// Where Tansu keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TansuStorage {
    /// In memory: fast, gone on restart, grows without bound (use a fresh broker per test).
    Memory,
    /// A sqlite file in the broker's directory: survives restarts; each fetch scans, so keep
    /// restart tests to a few thousand records.
    Sqlite,
}

/// A Tansu broker for one test. Killed when dropped; its directory is removed.
///
/// ```no_run
/// # async fn example() -> connector_testkit::Result<()> {
/// let kafka = connector_testkit::Tansu::start().await?;
/// let client = connector_core::kafka::KafkaClient::connect(kafka.kafka_config()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Tansu {
    binary: PathBuf,
    dir: TempDir,
    port: u16,
    advertised_port: u16,
    storage: TansuStorage,
    child: ChildGuard,
}

impl Tansu {
    /// The installed `tansu` binary: `$TANSU_BIN`, the broker cache, or `$PATH`.
    ///
    /// # Errors
    /// [`TestkitError::MissingBinary`], saying how to install it.
    pub fn binary() -> Result<PathBuf> {
        find_binary(
            "tansu",
            "TANSU_BIN",
            &[broker_cache_dir().join("tansu-0.6.0").join("bin").join("tansu")],
            INSTALL_TANSU,
        )
    }

    /// Starts a broker on memory storage.
    ///
    /// # Errors
    /// When the binary is missing or the broker does not come up.
    pub async fn start() -> Result<Self> {
        Self::start_with(TansuStorage::Memory).await
    }

    /// Starts a broker on `storage`.
    ///
    /// # Errors
    /// When the binary is missing or the broker does not come up.
    pub async fn start_with(storage: TansuStorage) -> Result<Self> {
        Ok(Self::launch_new(storage, false).await?.0)
    }

    /// Starts a broker that advertises a [`FaultProxy`] in front of it as its address, so every
    /// client connection (bootstrap and data) goes through the proxy and can be cut. Bootstrap
    /// through [`Tansu::bootstrap`], which is the proxy.
    ///
    /// # Errors
    /// When the binary is missing or the broker does not come up.
    pub async fn start_behind_proxy(storage: TansuStorage) -> Result<(Self, FaultProxy)> {
        let (tansu, proxy) = Self::launch_new(storage, true).await?;
        let proxy = proxy.ok_or_else(|| TestkitError::Timeout("fault proxy start".into()))?;
        Ok((tansu, proxy))
    }

    /// A new broker in a new directory, on a free port (retried on a port clash), optionally
    /// advertising a fault proxy in front of it.
    async fn launch_new(
        storage: TansuStorage,
        behind_proxy: bool,
    ) -> Result<(Self, Option<FaultProxy>)> {
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .map_err(|e| TestkitError::io("create tansu dir", e))?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let proxy = match behind_proxy {
                true => Some(FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await?),
                false => None,
            };
            let advertised_port = proxy.as_ref().map_or(port, |p| p.addr().port());
            match launch(&binary, dir.path(), port, advertised_port, storage).await {
                Ok(child) => {
                    let tansu = Self { binary, dir, port, advertised_port, storage, child };
                    return Ok((tansu, proxy));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::Timeout("tansu start".into())))
    }

    /// `127.0.0.1:PORT` of the advertised address (the proxy, for a broker behind one), for
    /// `bootstrap_servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// The port the broker itself listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client config pointing at this broker (short timeouts suited to tests).
    pub fn kafka_config(&self) -> KafkaConfig {
        let mut c = KafkaConfig::new([self.bootstrap()]);
        c.request_timeout_ms = 10_000;
        c.connect_timeout_ms = 2_000;
        c.retry_backoff.max_ms = 1_000;
        c
    }

    /// A client connected to this broker.
    ///
    /// # Errors
    /// When it does not answer.
    pub async fn client(&self) -> Result<KafkaClient> {
        Ok(KafkaClient::connect(self.kafka_config()).await?)
    }

    /// The storage it runs on.
    pub fn storage(&self) -> TansuStorage {
        self.storage
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// The broker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Kills the broker (SIGKILL) without restarting it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts a killed broker again on the same port and storage.
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn start_again(&mut self) -> Result<()> {
        self.child =
            launch(&self.binary, self.dir.path(), self.port, self.advertised_port, self.storage)
                .await?;
        Ok(())
    }

    /// Kills and restarts the broker on the same port and storage (data survives on sqlite).
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start_again().await
    }
}

async fn launch(
    binary: &Path,
    dir: &Path,
    port: u16,
    advertised_port: u16,
    storage: TansuStorage,
) -> Result<ChildGuard> {
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised_port}");
    let engine = match storage {
        TansuStorage::Memory => "memory://tansu/".to_owned(),
        // Relative to the working directory, which is the broker's own directory.
        TansuStorage::Sqlite => "sqlite://tansu.db".to_owned(),
    };
    let mut cmd = Command::new(binary);
    cmd.arg("broker")
        .arg("--listener-url")
        .arg(&url)
        .arg("--advertised-listener-url")
        .arg(&advertised)
        .arg("--storage-engine")
        .arg(&engine)
        .current_dir(dir)
        .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()));
    let log = dir.join("tansu.log");
    let mut child = ChildGuard::spawn(cmd, &log, "tansu")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(20);
    let started = Instant::now();
    if wait_for_port(addr, &mut child, timeout).await {
        // Listening is not serving: wait until it answers a metadata request.
        let mut config = KafkaConfig::new([format!("127.0.0.1:{port}")]);
        config.request_timeout_ms = 2_000;
        config.connect_timeout_ms = 1_000;
        while started.elapsed() < timeout && child.is_running() {
            if KafkaClient::connect(config.clone()).await.is_ok() {
                debug!(port, ?storage, "tansu ready");
                return Ok(child);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    child.kill();
    Err(TestkitError::NotReady { name: "tansu", seconds: timeout.as_secs(), log: tail(&log, 30) })
}
