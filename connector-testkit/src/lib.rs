//! Real brokers for tests and the quickstart: [`Mosquitto`] and [`Tansu`] started on free ports in
//! temporary directories (stopped and removed on drop), a [`FaultProxy`] that cuts, heals and
//! delays TCP connections, [`kafka`] helpers to write and read test records, and for security
//! tests a throw-away [`TestPki`] and a TLS-terminating [`TlsProxy`] (Tansu can also be started
//! behind TLS and with SASL users, see [`TansuOptions`]).
//!
//! Brokers are real processes, never mocks. A missing binary is an error whose message says how to
//! install it (`scripts/install-brokers` installs both); tests never skip silently.
//!
//! ```no_run
//! use connector_testkit::{FaultProxy, Mosquitto, Tansu};
//!
//! # async fn example() -> connector_testkit::Result<()> {
//! let mqtt = Mosquitto::start().await?;
//! let kafka = Tansu::start().await?;
//! let client = kafka.client().await?;
//! let proxy = FaultProxy::start(mqtt.addr()).await?;
//! proxy.cut();
//! proxy.heal();
//! # Ok(())
//! # }
//! ```

mod error;
pub mod kafka;
mod mosquitto;
mod mqtt;
mod process;
mod proxy;
mod tansu;
mod tls;
mod wait;

pub use error::{Result, TestkitError};
pub use mosquitto::{Mosquitto, MosquittoOptions};
pub use mqtt::{MqttPublisher, MqttSubscriber};
pub use process::{broker_cache_dir, free_port};
pub use proxy::{FaultProxy, ProxyMode};
pub use tansu::{SaslUser, Tansu, TansuOptions, TansuStorage, TansuTls};
pub use tls::{TestPki, TlsProxy};
pub use wait::{wait_source_subscribed, wait_until};

/// Installs a `tracing` subscriber for tests (honours `RUST_LOG`; default `warn`). Safe to call
/// from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
