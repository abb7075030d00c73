//! [`FaultProxy`]: a TCP proxy between a client and a broker that can cut, heal and delay the
//! connection on demand, to test what happens when the network fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::{Result, TestkitError};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything, each chunk held back by `delay`.
    Open {
        /// Extra latency per forwarded chunk.
        delay: Duration,
    },
    /// Drop every open connection and refuse new ones (accepted, then closed at once).
    Cut,
    /// Keep connections open but forward nothing (a silent network partition: no FIN, no RST).
    Blackhole,
}

/// A fault-injecting TCP proxy. Point a client at [`FaultProxy::addr`] instead of the broker.
///
/// ```no_run
/// # async fn example(broker: std::net::SocketAddr) -> connector_testkit::Result<()> {
/// let proxy = connector_testkit::FaultProxy::start(broker).await?;
/// // ... client connects to proxy.addr() ...
/// proxy.cut();              // network down
/// proxy.heal();             // network back
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    accepted: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Closing the mode channel ends every relay.
        let _ = self.mode.send(ProxyMode::Cut);
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port forwarding to `target`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TestkitError::io("bind fault proxy", e))?;
        let addr = listener.local_addr().map_err(|e| TestkitError::io("fault proxy address", e))?;
        let (mode, mode_rx) = watch::channel(ProxyMode::Open { delay: Duration::ZERO });
        let accepted = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            mode_rx,
            Arc::clone(&accepted),
            Arc::clone(&forwarded),
        ));
        Ok(Self { addr, mode, accepted, forwarded, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Drops all connections and refuses new ones until [`heal`](Self::heal).
    pub fn cut(&self) {
        let _ = self.mode.send(ProxyMode::Cut);
    }

    /// Keeps connections but stops forwarding until [`heal`](Self::heal).
    pub fn blackhole(&self) {
        let _ = self.mode.send(ProxyMode::Blackhole);
    }

    /// Forwards again, without delay.
    pub fn heal(&self) {
        let _ = self.mode.send(ProxyMode::Open { delay: Duration::ZERO });
    }

    /// Forwards with `delay` added to every chunk.
    pub fn delay(&self, delay: Duration) {
        let _ = self.mode.send(ProxyMode::Open { delay });
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far (both directions).
    pub fn bytes_forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    accepted: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        if *mode.borrow() == ProxyMode::Cut {
            drop(client);
            continue;
        }
        let mode = mode.clone();
        let forwarded = Arc::clone(&forwarded);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = relay(cr, sw, mode.clone(), Arc::clone(&forwarded));
            let down = relay(sr, cw, mode, forwarded);
            // When either direction ends, both sockets are dropped.
            tokio::select! {
                () = up => {}
                () = down => {}
            }
            debug!("fault proxy connection closed");
        });
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
    forwarded: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Cut => return,
            ProxyMode::Blackhole => {
                // Hold everything; only a mode change wakes us.
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            ProxyMode::Open { delay } => {
                let n = tokio::select! {
                    r = from.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    },
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // A cut that began while this chunk was read drops the connection; a blackhole
                // holds the chunk until it ends, as a partitioned network would (TCP retransmits).
                loop {
                    let now = *mode.borrow();
                    match now {
                        ProxyMode::Cut => return,
                        ProxyMode::Open { .. } => break,
                        ProxyMode::Blackhole => {
                            if mode.changed().await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                forwarded.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}
