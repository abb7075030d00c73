//! The REST API in Kafka Connect's shape (paths, JSON bodies, status codes), served with axum
//! over a [`ConnectControl`]: [`RestServer`] binds `[rest] listen` (HTTPS with `[rest] tls`),
//! checks the bearer token (`[rest] token`; `GET /health` needs none), and answers
//! `/connectors/...`, `/connector-plugins/...`, `/health` and `/metrics`. [`RestApi`] plugs it
//! into [`connector_core::runner::run_with`].
//!
//! Each accepted connection is served by hyper's HTTP/1 server (after the TLS handshake when TLS
//! is on), so plain and TLS connections share one accept loop and one bounded graceful shutdown.

mod auth;
mod routes;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connector_core::runner::control::ConnectControl;
use connector_core::runner::{ControlApi, ControlApiHandle, RestConfig};
use connector_core::{Error, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long requests in progress may take to finish at shutdown.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);
/// How long a client may take for its TLS handshake, and for a request's headers.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(10);
/// At most this many connections are served at once (more wait in the listen backlog).
const MAX_CONNECTIONS: usize = 256;
/// Connections accepted past [`MAX_CONNECTIONS`] that serve only `GET /health`, so probes get
/// through while every slot is held (each held at most [`HANDSHAKE_BOUND`] for a request's
/// headers and 30 s for its body).
const HEALTH_SLOTS: usize = 8;

/// The running REST API.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::runner::control::ConnectControl;
/// use connector_core::runner::RestConfig;
/// use connector_runner::rest::RestServer;
///
/// # async fn example(control: Arc<dyn ConnectControl>) -> connector_core::Result<()> {
/// let config: RestConfig = serde_json::from_str(r#"{"listen": "127.0.0.1:0"}"#).unwrap();
/// let server = RestServer::start(control, &config).await?;
/// println!("listening on {}", server.local_addr());
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RestServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RestServer {
    /// Binds `config.listen` (TLS when `config.tls` is set) and serves the API over `control`.
    ///
    /// # Errors
    /// The token's variable or file cannot be read, the TLS files are not usable, or the address
    /// cannot be bound.
    pub async fn start(control: Arc<dyn ConnectControl>, config: &RestConfig) -> Result<Self> {
        let token = match &config.token {
            Some(secret) => Some(auth::Token::new(
                secret.resolve().map_err(|e| Error::config("rest.token", e.to_string()))?,
            )),
            None => None,
        };
        let acceptor = match &config.tls {
            Some(files) => Some(TlsAcceptor::from(Arc::new(tls::server_config(files)?))),
            None => None,
        };
        let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
            Error::config("rest.listen", format!("cannot listen on {}: {e}", config.listen))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::fatal("the REST listener has no address").with_source(e))?;
        let app = routes::router(Arc::clone(&control), token);
        let health_app = routes::health_only(control);
        let stop = CancellationToken::new();
        let tls_on = acceptor.is_some();
        let task = tokio::spawn(serve(listener, acceptor, app, health_app, stop.clone()));
        info!(addr = %addr, tls = tls_on, "REST API listening");
        Ok(Self { addr, stop, task })
    }

    /// The bound address (tests bind port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish (bounded: 5 s), returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_BOUND + Duration::from_secs(1), &mut task).await.is_err() {
            task.abort();
        }
        info!(addr = %self.addr, "REST API stopped");
    }
}

/// The REST server as [`run_with`](connector_core::runner::run_with)'s control API.
///
/// ```no_run
/// use std::sync::Arc;
/// use connector_core::runner::{run_with, ConnectFile};
/// use connector_runner::{builtin_registry, rest::RestApi};
///
/// # async fn example(file: ConnectFile) -> connector_core::Result<()> {
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// run_with(file, Arc::new(builtin_registry()), Some(Arc::new(RestApi)), shutdown).await
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RestApi;

#[async_trait::async_trait]
impl ControlApi for RestApi {
    async fn start(
        &self,
        control: Arc<dyn ConnectControl>,
        config: &RestConfig,
    ) -> Result<Box<dyn ControlApiHandle>> {
        Ok(Box::new(RestServer::start(control, config).await?))
    }
}

#[async_trait::async_trait]
impl ControlApiHandle for RestServer {
    async fn shutdown(self: Box<Self>) {
        RestServer::shutdown(*self).await;
    }
}

/// Accepts connections until `stop`, then waits (bounded) for those open to finish.
async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
    health_app: axum::Router,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS + HEALTH_SLOTS => match accepted {
                Ok((tcp, peer)) => {
                    let app = if conns.len() < MAX_CONNECTIONS { &app } else { &health_app };
                    let (app, acceptor, stop) = (app.clone(), acceptor.clone(), stop.clone());
                    conns.spawn(async move { connection(tcp, peer, acceptor, app, stop).await });
                }
                Err(e) => {
                    warn!(error = %e, "REST API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(SHUTDOWN_BOUND, async { while conns.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        warn!(open = conns.len(), "REST API: requests still in progress after 5 s; cut off");
        conns.abort_all();
    }
}

/// One connection: the TLS handshake (when on), then HTTP/1 until the client closes or `stop`.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
    stop: CancellationToken,
) {
    match acceptor {
        None => http(TokioIo::new(tcp), app, stop).await,
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_BOUND, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => http(TokioIo::new(stream), app, stop).await,
            Ok(Err(e)) => debug!(%peer, error = %e, "REST API: TLS handshake failed"),
            Err(_) => debug!(%peer, "REST API: TLS handshake timed out"),
        },
    }
}

async fn http<I>(io: I, app: axum::Router, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_BOUND)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "REST API: connection ended with an error");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
