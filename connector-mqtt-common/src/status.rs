//! [`Status`]: what an MQTT connector's event loop tells its task about the connection, and
//! [`wait_connected`], the bounded wait for the first connection every task starts with.

use std::time::Duration;

use connector_core::{Error, Result};
use tokio::sync::watch;

use crate::url::MqttUrl;

/// The state of a connector's MQTT connection.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Connected (CONNACK received) now.
    pub connected: bool,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// The connection cannot be used any more (refused login or subscription).
    pub fatal: Option<String>,
}

/// Waits up to `limit` for the first connection, so that a wrong URL or credentials fail a task's
/// start instead of being retried silently forever.
///
/// # Errors
/// Fatal when the broker refused us; retriable (naming the last error) when it did not answer.
pub async fn wait_connected(
    status: &mut watch::Receiver<Status>,
    limit: Duration,
    url: &MqttUrl,
) -> Result<()> {
    let ready = |s: &Status| s.connected || s.fatal.is_some();
    let _ = tokio::time::timeout(limit, status.wait_for(ready)).await;
    let s = status.borrow().clone();
    if s.connected {
        return Ok(());
    }
    if let Some(fatal) = s.fatal {
        return Err(Error::fatal(fatal));
    }
    Err(Error::retriable(format!(
        "cannot connect to MQTT broker {url} within {limit:?}: {}",
        s.last_error.unwrap_or_else(|| "no answer".to_owned())
    )))
}
