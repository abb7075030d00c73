//! [`Tansu`]: a real Kafka-compatible broker (Tansu 0.6.0) on a free port, with memory or sqlite
//! storage in its own directory; optionally behind TLS and requiring a SASL login
//! ([`TansuOptions`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, KafkaConfig, SaslMechanism, SecurityProtocol};
use connector_core::Secret;
use tempfile::TempDir;
use tracing::debug;

use crate::error::{Result, TestkitError};
use crate::process::{broker_cache_dir, find_binary, free_port, tail, wait_for_port, ChildGuard};
use crate::proxy::FaultProxy;
use crate::tls::{TestPki, TlsProxy};

/// Tansu 0.6.0 with the transaction fixes of `scripts/tansu/*.patch` (an EndTxn route; aborted
/// transactions in fetch answers), which `scripts/install-brokers` builds.
const INSTALL_TANSU: &str =
    "scripts/install-brokers (builds Tansu 0.6.0 with scripts/tansu/*.patch into ~/.cache/connector-brokers/tansu-0.6.0-txn)";

/// Where Tansu keeps its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TansuStorage {
    /// In memory: fast, gone on restart, grows without bound (use a fresh broker per test).
    #[default]
    Memory,
    /// A sqlite file in the broker's directory: survives restarts; each fetch scans, so keep
    /// restart tests to a few thousand records.
    Sqlite,
}

/// How to start a [`Tansu`] broker: storage, TLS and SASL.
///
/// ```no_run
/// use connector_testkit::{SaslUser, Tansu, TansuOptions, TansuStorage, TansuTls};
///
/// # async fn example() -> connector_testkit::Result<()> {
/// let kafka = Tansu::start_with_options(TansuOptions {
///     storage: TansuStorage::Sqlite,
///     tls: Some(TansuTls::default()),
///     sasl_users: vec![SaslUser::new("alice", "alice-secret")],
/// })
/// .await?;
/// // sasl_ssl, SCRAM-SHA-256 as alice, trusting the test CA:
/// let client = kafka.client().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TansuOptions {
    /// Where the broker keeps its data.
    pub storage: TansuStorage,
    /// Serve clients over TLS. Tansu 0.6.0 cannot serve TLS itself (see [`TlsProxy`]), so a
    /// TLS-terminating proxy with a certificate from a fresh [`TestPki`] is put in front of it,
    /// and the broker advertises the proxy's address.
    pub tls: Option<TansuTls>,
    /// Require a SASL login (`tansu broker --authentication`), with these users. Each gets
    /// SCRAM-SHA-256 and SCRAM-SHA-512 credentials, created with `tansu user create` before
    /// authentication is switched on (over a restart), so this needs [`TansuStorage::Sqlite`].
    /// Tansu 0.6.0 offers only SCRAM: it is built without rsasl's `plain` feature, so a `PLAIN`
    /// handshake fails and the broker closes the connection.
    pub sasl_users: Vec<SaslUser>,
}

/// TLS in front of a [`Tansu`] broker.
#[derive(Debug, Clone, Copy, Default)]
pub struct TansuTls {
    /// Refuse clients without a certificate signed by the test CA (mutual TLS).
    pub require_client_certificate: bool,
}

/// A SASL user provisioned on a [`Tansu`] broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslUser {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
}

impl SaslUser {
    /// A user with `name` and `password`.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self { name: name.into(), password: password.into() }
    }
}

/// The TLS front of a broker: the proxy and the certificates it presents.
#[derive(Debug)]
struct TlsFront {
    pki: TestPki,
    require_client_certificate: bool,
    // Dropped (stopped) with the broker.
    _proxy: TlsProxy,
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
    tls: Option<TlsFront>,
    sasl_users: Vec<SaslUser>,
    /// True once the broker runs with `--authentication`.
    authentication: bool,
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
            &[broker_cache_dir().join("tansu-0.6.0-txn").join("bin").join("tansu")],
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
        Self::start_with_options(TansuOptions { storage, ..TansuOptions::default() }).await
    }

    /// Starts a broker as `options` say: storage, TLS in front, SASL users.
    ///
    /// # Errors
    /// When the binary is missing, the broker does not come up, users could not be created, or
    /// SASL users are asked for on memory storage.
    pub async fn start_with_options(options: TansuOptions) -> Result<Self> {
        Ok(Self::launch_new(&options, false).await?.0)
    }

    /// Starts a broker that advertises a [`FaultProxy`] in front of it as its address, so every
    /// client connection (bootstrap and data) goes through the proxy and can be cut. Bootstrap
    /// through [`Tansu::bootstrap`], which is the proxy.
    ///
    /// # Errors
    /// When the binary is missing or the broker does not come up.
    pub async fn start_behind_proxy(storage: TansuStorage) -> Result<(Self, FaultProxy)> {
        let options = TansuOptions { storage, ..TansuOptions::default() };
        let (tansu, proxy) = Self::launch_new(&options, true).await?;
        let proxy = proxy.ok_or_else(|| TestkitError::Timeout("fault proxy start".into()))?;
        Ok((tansu, proxy))
    }

    /// A new broker in a new directory, on a free port (retried on a port clash), optionally
    /// advertising a fault proxy or a TLS proxy in front of it, with SASL users provisioned.
    async fn launch_new(
        options: &TansuOptions,
        behind_proxy: bool,
    ) -> Result<(Self, Option<FaultProxy>)> {
        if !options.sasl_users.is_empty() && options.storage != TansuStorage::Sqlite {
            return Err(TestkitError::Unsupported(
                "SASL users need sqlite storage: they are created before authentication is \
                 switched on, over a restart"
                    .into(),
            ));
        }
        if behind_proxy && options.tls.is_some() {
            return Err(TestkitError::Unsupported("a fault proxy and TLS together".into()));
        }
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .map_err(|e| TestkitError::io("create tansu dir", e))?;
        let pki = options.tls.map(|_| TestPki::generate()).transpose()?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let broker = SocketAddr::from(([127, 0, 0, 1], port));
            let proxy = match behind_proxy {
                true => Some(FaultProxy::start(broker).await?),
                false => None,
            };
            let tls_proxy = match (&pki, options.tls) {
                (Some(pki), Some(tls)) => Some(
                    TlsProxy::start(broker, pki.server_config(tls.require_client_certificate)?)
                        .await?,
                ),
                _ => None,
            };
            let advertised_port = tls_proxy
                .as_ref()
                .map(|p| p.addr().port())
                .or(proxy.as_ref().map(|p| p.addr().port()))
                .unwrap_or(port);
            let storage = options.storage;
            match launch(&binary, dir.path(), port, advertised_port, storage, None).await {
                Ok(child) => {
                    let tls = match (pki, tls_proxy, options.tls) {
                        (Some(pki), Some(proxy), Some(t)) => Some(TlsFront {
                            pki,
                            require_client_certificate: t.require_client_certificate,
                            _proxy: proxy,
                        }),
                        _ => None,
                    };
                    let mut tansu = Self {
                        binary,
                        dir,
                        port,
                        advertised_port,
                        storage,
                        tls,
                        sasl_users: options.sasl_users.clone(),
                        authentication: false,
                        child,
                    };
                    if !tansu.sasl_users.is_empty() {
                        tansu.provision_users().await?;
                    }
                    return Ok((tansu, proxy));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::Timeout("tansu start".into())))
    }

    /// Creates the SASL users (SCRAM-SHA-256 and -512 credentials) with `tansu user create`,
    /// then restarts the broker with `--authentication`.
    async fn provision_users(&mut self) -> Result<()> {
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        for user in &self.sasl_users {
            for mechanism in ["scram256", "scram512"] {
                let out = tokio::process::Command::new(&self.binary)
                    .args(["user", "create", "--broker", &broker, "--mechanism", mechanism])
                    .arg(&user.name)
                    .arg(&user.password)
                    .current_dir(self.dir.path())
                    .output()
                    .await
                    .map_err(|e| TestkitError::io("run tansu user create", e))?;
                if !out.status.success() {
                    return Err(TestkitError::NotReady {
                        name: "tansu user create",
                        seconds: 0,
                        log: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                }
            }
        }
        self.authentication = true;
        // The restart's readiness check logs in as the first user: it proves the users exist.
        self.restart().await
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

    /// A client config pointing at this broker (short timeouts suited to tests). Behind TLS it
    /// trusts the test CA (and presents the client certificate when the broker requires one);
    /// with SASL users it logs in as the first with SCRAM-SHA-256.
    pub fn kafka_config(&self) -> KafkaConfig {
        let mut c = KafkaConfig::new([self.bootstrap()]);
        c.request_timeout_ms = 10_000;
        c.connect_timeout_ms = 2_000;
        c.retry_backoff.max_ms = 1_000;
        if let Some(tls) = &self.tls {
            c.security_protocol = SecurityProtocol::Ssl;
            c.ssl_ca_file = Some(tls.pki.ca_file());
            if tls.require_client_certificate {
                c.ssl_certificate_file = Some(tls.pki.client_cert_file());
                c.ssl_key_file = Some(tls.pki.client_key_file());
            }
        }
        if let Some(user) = self.sasl_users.first().filter(|_| self.authentication) {
            c.security_protocol = match self.tls {
                Some(_) => SecurityProtocol::SaslSsl,
                None => SecurityProtocol::SaslPlaintext,
            };
            login_as(&mut c, user);
        }
        c
    }

    /// The certificates behind this broker's TLS proxy, if it has one.
    pub fn pki(&self) -> Option<&TestPki> {
        self.tls.as_ref().map(|t| &t.pki)
    }

    /// The SASL users this broker was started with.
    pub fn sasl_users(&self) -> &[SaslUser] {
        &self.sasl_users
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
        let login = self.sasl_users.first().filter(|_| self.authentication);
        self.child = launch(
            &self.binary,
            self.dir.path(),
            self.port,
            self.advertised_port,
            self.storage,
            login,
        )
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

/// SCRAM-SHA-256 login as `user`.
fn login_as(config: &mut KafkaConfig, user: &SaslUser) {
    config.sasl_mechanism = Some(SaslMechanism::ScramSha256);
    config.sasl_username = Some(user.name.clone());
    config.sasl_password = Some(Secret::new(user.password.clone()));
}

/// Starts the broker and waits until it answers metadata requests on its own port (plain TCP,
/// logged in as `login` when authentication is on).
async fn launch(
    binary: &Path,
    dir: &Path,
    port: u16,
    advertised_port: u16,
    storage: TansuStorage,
    login: Option<&SaslUser>,
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
        .args(login.map(|_| "--authentication"))
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
        if let Some(user) = login {
            config.security_protocol = SecurityProtocol::SaslPlaintext;
            login_as(&mut config, user);
        }
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
