//! In-process brokers for the quickstart: an MQTT broker ([rumqttd]) and a Kafka-compatible broker
//! ([tansu-broker], memory storage), each on a free loopback port. Nothing to install; everything
//! is gone when the process ends.
//!
//! [rumqttd]: https://crates.io/crates/rumqttd
//! [tansu-broker]: https://crates.io/crates/tansu-broker

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use connector_core::{Error, Result};
use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use tracing::field::{Field, Visit};
use tracing::{debug, Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::fatal("no free port").with_source(e))?;
    l.local_addr().map(|a| a.port()).map_err(|e| Error::fatal("no free port").with_source(e))
}

fn wait_listening(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::fatal(format!("the embedded {what} did not start listening on {addr}")))
}

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 10 s, client id "ready-probe".
const CONNECT_V4: &[u8] = b"\x10\x17\x00\x04MQTT\x04\x02\x00\x0a\x00\x0bready-probe";
/// CONNECT, MQTT 5, clean start, keep-alive 10 s, no properties, client id "ready-probe".
const CONNECT_V5: &[u8] = b"\x10\x18\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x0bready-probe";

/// Waits until the MQTT broker completes `connect` (a CONNECT packet) on `addr`, then disconnects
/// cleanly. A bare TCP probe (connect, close) would make rumqttd log an ERROR about a connect
/// packet that never came.
fn wait_mqtt_ready(addr: SocketAddr, connect: &[u8]) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut connack = [0u8; 4];
            // The whole CONNACK (an MQTT 5 one carries properties after these 4 bytes): unread
            // bytes at close would make the socket reset, and rumqttd log an ERROR.
            let read_connack = |stream: &mut TcpStream, connack: &mut [u8; 4]| {
                stream.read_exact(connack)?;
                let rest = usize::from(connack[1]).saturating_sub(2);
                stream.read_exact(&mut vec![0u8; rest])
            };
            if stream.write_all(connect).is_ok() && read_connack(&mut stream, &mut connack).is_ok()
            {
                // DISCONNECT, then wait for the broker to close: closing first makes it log an
                // ERROR too.
                let _ = stream.write_all(b"\xe0\x00");
                let _ = stream.read(&mut [0u8; 1]);
                if connack[0] == 0x20 && connack[3] == 0 {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::fatal(format!("the embedded MQTT broker did not accept a connection on {addr}")))
}

/// A tracing layer that drops the ERRORs the embedded MQTT broker logs when a client disconnects
/// cleanly.
///
/// rumqttd 0.20 handles a client's DISCONNECT packet and then the closed socket behind it as two
/// disconnections, and logs the second as `ERROR no-connection id N is already gone` (its own
/// comment in `router/routing.rs` says so); and it logs the router closing the link of a client
/// that sent DISCONNECT as `ERROR router-drop error=Recv(Disconnected)`. Nothing is wrong, but to
/// a newcomer an ERROR line at the end of a successful quickstart reads as a failure. Only those
/// two messages from rumqttd are dropped; every other event passes.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::util::SubscriberInitExt;
///
/// tracing_subscriber::registry()
///     .with(tracing_subscriber::fmt::layer())
///     .with(connector_examples::embedded::QuietMqttBrokerShutdown)
///     .init();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietMqttBrokerShutdown;

impl<S: Subscriber> Layer<S> for QuietMqttBrokerShutdown {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || !meta.target().starts_with("rumqttd") {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let (message, error) = (fields.message.as_str(), fields.error.as_str());
        let already_gone = message.starts_with("no-connection id ") && message.ends_with(" gone");
        let router_drop = message == "router-drop" && error == "Recv(Disconnected)";
        !(already_gone || router_drop)
    }
}

/// The `message` and `error` fields of an event, formatted.
#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

/// An MQTT broker (rumqttd) running on threads of this process.
#[derive(Debug)]
pub struct EmbeddedMqtt {
    addr: SocketAddr,
    addr_v5: Option<SocketAddr>,
}

impl EmbeddedMqtt {
    /// Starts the broker on a free port and waits until it listens (MQTT 3.1.1).
    ///
    /// # Errors
    /// When no port is free or the broker does not come up.
    pub fn start() -> Result<Self> {
        Self::launch(false)
    }

    /// Starts the broker with a second listener, on its own free port, that speaks MQTT 5
    /// ([`url_v5`](Self::url_v5)); both share one router, so a message published on one reaches
    /// subscribers on the other. rumqttd drops a message whose MQTT 5 message expiry interval
    /// passed while it waited (for a disconnected persistent session, say) instead of delivering it.
    ///
    /// ```no_run
    /// let broker = connector_examples::embedded::EmbeddedMqtt::start_with_mqtt5()?;
    /// assert!(broker.url_v5().is_some());
    /// # Ok::<(), connector_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// When no port is free or the broker does not come up.
    pub fn start_with_mqtt5() -> Result<Self> {
        Self::launch(true)
    }

    fn launch(with_v5: bool) -> Result<Self> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let addr_v5 = match with_v5 {
            true => Some(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
            false => None,
        };
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = |listen| rumqttd::ServerSettings {
            name: "quickstart".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: connections.clone(),
        };
        let config = rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 1000,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
            v4: Some(HashMap::from([("quickstart".to_owned(), server(addr))])),
            v5: addr_v5.map(|a| HashMap::from([("quickstart-v5".to_owned(), server(a))])),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded MQTT broker stopped");
                }
            })
            .map_err(|e| Error::fatal("cannot start the embedded MQTT broker").with_source(e))?;
        wait_mqtt_ready(addr, CONNECT_V4)?;
        if let Some(a) = addr_v5 {
            wait_mqtt_ready(a, CONNECT_V5)?;
        }
        debug!(%addr, ?addr_v5, "embedded MQTT broker ready");
        Ok(Self { addr, addr_v5 })
    }

    /// `mqtt://127.0.0.1:PORT` (MQTT 3.1.1).
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// `mqtt://127.0.0.1:PORT` of the MQTT 5 listener, when started with
    /// [`start_with_mqtt5`](Self::start_with_mqtt5).
    pub fn url_v5(&self) -> Option<String> {
        self.addr_v5.map(|a| format!("mqtt://{a}"))
    }
}

/// A Kafka-compatible broker (Tansu, memory storage) running in this process, on its own Tokio
/// runtime and threads, so that nothing it does can stall the connectors' runtime.
#[derive(Debug)]
pub struct EmbeddedKafka {
    addr: SocketAddr,
}

impl EmbeddedKafka {
    /// Starts the broker on a free port and waits until it listens.
    ///
    /// # Errors
    /// When no port is free or the broker does not come up.
    pub fn start() -> Result<Self> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (built_tx, built_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        std::thread::Builder::new()
            .name("tansu".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = built_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let broker = match build_tansu(addr).await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = built_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = built_tx.send(Ok(()));
                    let mut broker = broker;
                    if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                        tracing::error!(error = %e, "embedded Kafka broker stopped");
                    }
                });
            })
            .map_err(|e| Error::fatal("cannot start the embedded Kafka broker").with_source(e))?;
        match built_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::fatal(format!("cannot build the embedded Kafka broker: {e}")))
            }
            Err(_) => return Err(Error::fatal("the embedded Kafka broker thread ended")),
        }
        wait_listening(addr, "Kafka broker")?;
        debug!(%addr, "embedded Kafka broker ready");
        Ok(Self { addr })
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

async fn build_tansu(
    addr: SocketAddr,
) -> std::result::Result<Broker<Controller<StorageContainer>, StorageContainer>, String> {
    let listener = url::Url::parse(&format!("tcp://{addr}")).map_err(|e| e.to_string())?;
    let storage = url::Url::parse("memory://tansu/").map_err(|e| e.to_string())?;
    Broker::<Controller<StorageContainer>, StorageContainer>::builder()
        .node_id(111)
        .cluster_id("quickstart")
        .incarnation_id(uuid::Uuid::new_v4())
        .advertised_listener(listener.clone())
        .storage(storage)
        .listener(listener)
        .silent(true)
        .build()
        .await
        .map_err(|e| e.to_string())
}
