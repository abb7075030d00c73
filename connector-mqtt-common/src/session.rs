//! [`Session`]: one MQTT client connection of a connector, in either protocol version, opened
//! (TCP or TLS, CONNECT, CONNACK) again after every loss, and driven through a [`Link`].
//!
//! MQTT 3.1.1 connections are opened by rumqttc's event loop, whose packet reader and writer the
//! link then uses. MQTT 5 connections are our own: a socket (TLS through tokio-rustls), rumqttc's
//! MQTT 5 packet codec, and a read and a write buffer — rumqttc's MQTT 5 event loop does not
//! expose its connection, and its one-packet-per-write loop would cost a system call per message.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use connector_core::{Error, Result};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Event, EventLoop, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connection::{connection_error, ConnectionSettings};
use crate::link::Link;
use crate::wire::{qos_to_v5, Inbound, MqttVersion, Outbound};

/// What the broker said when it accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// The broker kept our session (subscriptions, unacknowledged messages).
    pub session_present: bool,
    /// Keep-alive interval to use (the broker may impose one in MQTT 5).
    pub keep_alive: Duration,
    /// Most QoS 1/2 publishes the broker accepts in flight from us (MQTT 5 receive maximum;
    /// `None`: no limit announced).
    pub receive_maximum: Option<u16>,
    /// Largest packet the broker accepts from us (MQTT 5 Maximum Packet Size; `None`: not
    /// announced, and always on MQTT 3.1.1, which has no way to say it).
    pub max_packet_size: Option<u32>,
}

/// A connector's MQTT client, connected or not.
///
/// ```no_run
/// # async fn example(settings: connector_mqtt_common::ConnectionSettings) -> connector_core::Result<()> {
/// use connector_mqtt_common::{Outbound, Session};
///
/// let mut session = Session::new(settings, true)?;
/// let connected = session.connect().await?;
/// let mut link = session.link(std::time::Duration::from_secs(10));
/// link.write(Outbound::PingReq).await?;
/// link.flush().await?;
/// let reply = link.read().await?;
/// # Ok(())
/// # }
/// ```
pub struct Session {
    settings: ConnectionSettings,
    inner: Inner,
}

enum Inner {
    V4(Box<EventLoop>),
    V5 { tls: Option<Arc<rustls::ClientConfig>>, connection: Option<V5Connection> },
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.settings.url)
            .field("client_id", &self.settings.client_id)
            .field("version", &self.settings.version)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A client for `settings` (not connected yet), acknowledging received messages only when
    /// told to when `manual_acks`.
    ///
    /// # Errors
    /// Fatal when the password cannot be read or TLS cannot be set up (unreadable files).
    pub fn new(settings: ConnectionSettings, manual_acks: bool) -> Result<Self> {
        let inner = match settings.version {
            MqttVersion::V311 => {
                let mut eventloop = EventLoop::new(settings.options(manual_acks)?, 16);
                eventloop.set_network_options(settings.network_options());
                Inner::V4(Box::new(eventloop))
            }
            MqttVersion::V5 => {
                // Fails now, not at the first connect, on a missing password variable.
                settings.credentials()?;
                let tls = if settings.url.tls {
                    Some(Arc::new(crate::tls::client_config(settings.tls.as_ref())?))
                } else {
                    None
                };
                Inner::V5 { tls, connection: None }
            }
        };
        Ok(Self { settings, inner })
    }

    /// The settings this session connects with.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// Opens the connection: TCP or TLS, CONNECT, CONNACK.
    ///
    /// # Errors
    /// Fatal when the broker refused our credentials or client id; retriable otherwise.
    pub async fn connect(&mut self) -> Result<Connected> {
        let url = &self.settings.url;
        match &mut self.inner {
            Inner::V4(eventloop) => match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => Ok(Connected {
                    session_present: ack.session_present,
                    keep_alive: self.settings.keep_alive,
                    receive_maximum: None,
                    max_packet_size: None,
                }),
                Ok(other) => Err(Error::retriable(format!(
                    "MQTT broker {url} did not answer CONNECT with CONNACK: {other:?}"
                ))),
                Err(e) => Err(connection_error(&e, url)),
            },
            Inner::V5 { tls, connection } => {
                *connection = None;
                let limit = self.settings.connect_timeout.max(Duration::from_secs(1));
                let (c, connected) =
                    tokio::time::timeout(limit, connect_v5(&self.settings, tls.clone()))
                        .await
                        .map_err(|_| {
                        Error::retriable(format!(
                            "MQTT connection to {url} timed out after {limit:?}"
                        ))
                    })??;
                *connection = Some(c);
                Ok(connected)
            }
        }
    }

    /// The established connection; a flush may wait `write_timeout` for the broker.
    pub fn link(&mut self, write_timeout: Duration) -> Link<'_> {
        match &mut self.inner {
            Inner::V4(eventloop) => Link::v4(eventloop, write_timeout),
            Inner::V5 { connection, .. } => Link::v5(connection.as_mut(), write_timeout),
        }
    }

    /// Forgets the connection (after it was lost or closed) and anything rumqttc still holds for
    /// it: the connector's own state decides what is sent again.
    pub fn disconnected(&mut self) {
        match &mut self.inner {
            Inner::V4(eventloop) => {
                eventloop.clean();
                eventloop.pending.clear();
            }
            Inner::V5 { connection, .. } => *connection = None,
        }
    }
}

/// A socket, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Spare read-buffer room asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// An open MQTT 5 connection: packets parsed from a read buffer, written to a write buffer.
pub(crate) struct V5Connection {
    io: Box<dyn Io>,
    read: BytesMut,
    write: BytesMut,
    max_incoming: u32,
    max_outgoing: Option<u32>,
}

fn lost(what: impl std::fmt::Display) -> Error {
    Error::retriable(format!("MQTT connection lost: {what}"))
}

impl V5Connection {
    fn parse(&mut self) -> Result<Option<p5::Packet>> {
        match p5::Packet::read(&mut self.read, Some(self.max_incoming)) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(lost(format!("malformed packet from the broker: {e}"))),
        }
    }

    /// The next packet. Cancel-safe: bytes read stay in the buffer until a whole packet is there.
    async fn read_packet(&mut self) -> Result<p5::Packet> {
        loop {
            if let Some(p) = self.parse()? {
                return Ok(p);
            }
            if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
                self.read.reserve(READ_CHUNK);
            }
            match self.io.read_buf(&mut self.read).await {
                Ok(0) => return Err(lost("the broker closed the connection")),
                Ok(_) => {}
                // A TLS 1.3 broker refuses our certificate on the first read, not in the handshake.
                Err(e) if connector_core::tls::is_certificate_problem(&e) => {
                    return Err(Error::fatal(format!(
                        "TLS: the MQTT broker refused us: {e}; {}",
                        crate::connection::TLS_HINT
                    )))
                }
                Err(e) => return Err(lost(e)),
            }
        }
    }

    pub(crate) async fn read(&mut self) -> Result<Inbound> {
        let p = self.read_packet().await?;
        Inbound::from_v5(p).map_err(lost)
    }

    fn write_packet(&mut self, p: p5::Packet) -> Result<()> {
        p.write(&mut self.write, self.max_outgoing)
            .map(|_| ())
            .map_err(|e| Error::retriable(format!("cannot encode an MQTT packet: {e}")))
    }

    pub(crate) fn write(&mut self, o: Outbound) -> Result<()> {
        self.write_packet(p5::Packet::from(o))
    }

    /// Writes the buffer out. Cancel-safe: what was written is taken off the buffer.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        while !self.write.is_empty() {
            match self.io.write(&self.write).await {
                Ok(0) => return Err(lost("the broker stopped taking data")),
                Ok(n) => self.write.advance(n),
                Err(e) => return Err(lost(e)),
            }
        }
        self.io.flush().await.map_err(lost)
    }
}

/// Refusals that retrying cannot fix.
fn refusal_is_fatal(code: p5::ConnectReturnCode) -> bool {
    use p5::ConnectReturnCode as C;
    matches!(
        code,
        C::BadUserNamePassword
            | C::NotAuthorized
            | C::Banned
            | C::BadAuthenticationMethod
            | C::ClientIdentifierNotValid
            | C::BadClientId
            | C::UnsupportedProtocolVersion
            | C::RefusedProtocolVersion
    )
}

async fn connect_v5(
    s: &ConnectionSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(V5Connection, Connected)> {
    let url = &s.url;
    let tcp = TcpStream::connect((s.url.host.as_str(), s.url.port))
        .await
        .map_err(|e| Error::retriable(format!("MQTT connection to {url} failed")).with_source(e))?;
    // Acknowledgements are small and latency matters.
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name =
                rustls::pki_types::ServerName::try_from(s.url.host.clone()).map_err(|_| {
                    Error::config(
                        "mqtt_url",
                        format!("{:?} is not a valid TLS server name", s.url.host),
                    )
                })?;
            let stream = rumqttc::tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| tls_error(url, e))?;
            Box::new(stream)
        }
    };
    let max_incoming = u32::try_from(s.max_packet_size).unwrap_or(u32::MAX);
    let mut c = V5Connection {
        io,
        read: BytesMut::with_capacity(READ_CHUNK),
        write: BytesMut::with_capacity(16 * 1024),
        max_incoming,
        max_outgoing: None,
    };
    let mut properties = p5::ConnectProperties::new();
    // A kept session must outlive the connection (0, the MQTT 5 default, ends it at disconnect).
    properties.session_expiry_interval = (!s.clean_session).then_some(u32::MAX);
    // The broker may send as many unacknowledged messages as packet ids allow: the connector's
    // own window, not the broker's default, bounds what is in flight.
    properties.receive_maximum = Some(u16::MAX);
    properties.max_packet_size = Some(max_incoming);
    let will =
        s.will().map(|w| p5::LastWill::new(w.topic, w.payload, qos_to_v5(w.qos), w.retain, None));
    let login = s.credentials()?.map(|(u, p)| p5::Login::new(u, p));
    let connect = p5::Connect {
        keep_alive: u16::try_from(s.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX),
        client_id: s.client_id.clone(),
        clean_start: s.clean_session,
        properties: Some(properties),
    };
    c.write_packet(p5::Packet::Connect(connect, will, login))?;
    c.flush().await.map_err(|e| Error::retriable(format!("MQTT CONNECT to {url}: {e}")))?;
    let ack = match c.read_packet().await {
        Ok(p5::Packet::ConnAck(ack)) => ack,
        Ok(other) => {
            return Err(Error::retriable(format!(
                "MQTT broker {url} did not answer CONNECT with CONNACK: {other:?}"
            )))
        }
        Err(e) if e.kind() == connector_core::ErrorKind::Fatal => {
            return Err(Error::fatal(format!("MQTT CONNECT to {url}: {e}")))
        }
        Err(e) => return Err(Error::retriable(format!("MQTT CONNECT to {url}: {e}"))),
    };
    if ack.code != p5::ConnectReturnCode::Success {
        let reason = ack
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.clone())
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let message = format!("MQTT broker {url} refused the connection: {:?}{reason}", ack.code);
        return Err(if refusal_is_fatal(ack.code) {
            Error::fatal(message)
        } else {
            Error::retriable(message)
        });
    }
    let mut keep_alive = s.keep_alive;
    let mut receive_maximum = None;
    if let Some(props) = &ack.properties {
        receive_maximum = props.receive_max;
        c.max_outgoing = props.max_packet_size;
        if let Some(k) = props.server_keep_alive {
            keep_alive = Duration::from_secs(u64::from(k.max(1)));
        }
    }
    let connected = Connected {
        session_present: ack.session_present,
        keep_alive,
        receive_maximum,
        max_packet_size: c.max_outgoing,
    };
    Ok((c, connected))
}

/// A TLS handshake failure: fatal when the certificates do not match (retrying cannot help).
fn tls_error(url: &crate::MqttUrl, e: std::io::Error) -> Error {
    let message = format!(
        "TLS handshake with MQTT broker {url} failed: {e}; {}",
        crate::connection::TLS_HINT
    );
    if connector_core::tls::is_certificate_problem(&e) {
        Error::fatal(message)
    } else {
        Error::retriable(message)
    }
}
