//! [`Session`]: one MQTT client connection of a connector, in either protocol version, opened
//! (TCP or TLS, CONNECT, CONNACK) again after every loss, and driven through a [`Link`].
//!
//! The connection is our own in both versions: a socket (TLS through tokio-rustls), rumqttc's
//! MQTT 3.1.1 or MQTT 5 packet codec, and a read and a write buffer. rumqttc's event loops write
//! one packet per system call, and on a PUBLISH over `max_packet_size` fail the read, so the
//! connection drops, the broker redelivers the message on the next one and the client never gets
//! past it. Here such a PUBLISH is read past instead, without buffering its payload, and handed
//! on as [`Inbound::Oversize`] (topic, QoS, packet id, size) for the error policy.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use connector_core::{Error, Result};
use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connection::ConnectionSettings;
use crate::link::Link;
use crate::wire::{qos_to_v5, Inbound, Message, MqttVersion, Outbound};

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
/// let mut session = Session::new(settings)?;
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
    tls: Option<Arc<rustls::ClientConfig>>,
    connection: Option<Connection>,
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
    /// A client for `settings` (not connected yet). It never acknowledges a received message on
    /// its own: the connector writes every acknowledgement through the [`Link`].
    ///
    /// # Errors
    /// Fatal when the password cannot be read or TLS cannot be set up (unreadable files).
    pub fn new(settings: ConnectionSettings) -> Result<Self> {
        // Fails now, not at the first connect, on a missing password variable.
        settings.credentials()?;
        let tls = if settings.url.tls {
            Some(Arc::new(settings.tls.clone().unwrap_or_default().rustls_config()?))
        } else {
            None
        };
        Ok(Self { settings, tls, connection: None })
    }

    /// The settings this session connects with.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// Sets the last will sent with the next CONNECT (`None`: the status topic's, if any). A
    /// Sparkplug primary host gives every connection a new STATE death certificate this way.
    pub fn set_will(&mut self, will: Option<crate::connection::Will>) {
        self.settings.will = will;
    }

    /// Opens the connection: TCP or TLS, CONNECT, CONNACK.
    ///
    /// # Errors
    /// Fatal when the broker refused our credentials or client id; retriable otherwise.
    pub async fn connect(&mut self) -> Result<Connected> {
        self.connection = None;
        let url = &self.settings.url;
        let limit = self.settings.connect_timeout.max(Duration::from_secs(1));
        let (c, connected) =
            tokio::time::timeout(limit, connect(&self.settings, self.tls.clone())).await.map_err(
                |_| Error::retriable(format!("MQTT connection to {url} timed out after {limit:?}")),
            )??;
        self.connection = Some(c);
        Ok(connected)
    }

    /// The established connection; a flush may wait `write_timeout` for the broker.
    pub fn link(&mut self, write_timeout: Duration) -> Link<'_> {
        Link::new(self.connection.as_mut(), write_timeout)
    }

    /// Forgets the connection (after it was lost or closed): the connector's own state decides
    /// what is sent again.
    pub fn disconnected(&mut self) {
        self.connection = None;
    }
}

/// A socket, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket underneath, if there is one.
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl Io for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Io for rumqttc::tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.get_ref().0)
    }
}

/// The in-memory pipe of the fuzz targets and tests.
impl Io for tokio::io::DuplexStream {}

/// How long after a read its TCP acknowledgement may wait (see [`ack_now`]).
const ACK_DELAY: Duration = Duration::from_millis(2);

/// Sends the TCP acknowledgement of what was read from `io` now, instead of when the kernel's
/// delayed-ACK timer (40 ms or more) or our next write would carry it.
///
/// A broker with Nagle's algorithm on (Mosquitto's default, `set_tcp_nodelay false`) holds a
/// small PUBLISH back while an earlier one is unacknowledged at the TCP level. At QoS 1 the
/// PUBACK that would carry the acknowledgement waits for Kafka, so each message behind the first
/// waited for Kafka's round trip as well: p99 publish -> Kafka at 1,000 msg/s was 1.6× Kafka's
/// own. The connection calls this at most [`ACK_DELAY`] after a read, not after every read: an
/// acknowledgement per segment would have the broker send each message in a segment of its own,
/// one wake-up each (the paced bench row: 6.5 CPU-µs per message against 4.6; 5.2 this way).
///
/// `TCP_QUICKACK` on sends the pending acknowledgement; off again keeps the kernel's delayed
/// acknowledgements for what follows. Where the option does not exist this does nothing.
fn ack_now(io: &dyn Io) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(tcp) = io.tcp() {
        let socket = socket2::SockRef::from(tcp);
        let _ = socket.set_tcp_quickack(true);
        let _ = socket.set_tcp_quickack(false);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = io;
}

/// Spare read-buffer room asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// An open MQTT connection (either version): packets parsed from a read buffer, written to a
/// write buffer.
pub(crate) struct Connection {
    version: MqttVersion,
    io: Box<dyn Io>,
    read: BytesMut,
    write: BytesMut,
    /// Largest remaining length of a packet we read whole (`max_packet_size`).
    max_incoming: usize,
    /// Largest packet we may send (ours in 3.1.1, the broker's Maximum Packet Size in MQTT 5).
    max_outgoing: Option<usize>,
    /// An oversize PUBLISH being read past.
    skipping: Option<Skipping>,
    /// When the TCP acknowledgement of the last read is due (see [`ack_now`]).
    ack_due: Option<tokio::time::Instant>,
}

/// An oversize PUBLISH whose head was read: the rest of it is discarded as it arrives.
struct Skipping {
    message: Message,
    size: usize,
    left: usize,
}

/// The fixed header at the start of `buf`: first byte, header length and remaining length, or
/// `None` while incomplete.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let Some((&byte1, rest)) = buf.split_first() else { return Ok(None) };
    let mut len = 0usize;
    for (i, b) in rest.iter().take(4).enumerate() {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((byte1, 2 + i, len)));
        }
    }
    if rest.len() >= 4 {
        return Err(lost("malformed packet from the broker: bad remaining length"));
    }
    Ok(None)
}

/// A packet as decoded, before the connectors' version-neutral view of it. Short-lived (turned
/// into an [`Inbound`] at once), so its size matters less than a heap allocation per packet.
#[allow(clippy::large_enum_variant)]
enum Packet {
    V4(rumqttc::Packet),
    V5(p5::Packet),
    /// A PUBLISH over `max_packet_size`, read past (payload dropped).
    Oversize {
        message: Message,
        size: usize,
    },
}

/// MQTT's PUBLISH packet type.
const PUBLISH: u8 = 3;

fn lost(what: impl std::fmt::Display) -> Error {
    Error::retriable(format!("MQTT connection lost: {what}"))
}

/// A decoded packet as the connectors see it.
fn inbound(p: Packet) -> Result<Inbound> {
    Ok(match p {
        Packet::V4(p) => Inbound::from(p),
        Packet::V5(p) => Inbound::from_v5(p).map_err(lost)?,
        Packet::Oversize { message, size } => Inbound::Oversize { message, size },
    })
}

impl Connection {
    /// A connection with no broker behind it, for the fuzz targets and property tests: it only
    /// decodes what [`feed`](Self::feed) puts in its read buffer.
    pub(crate) fn detached(version: MqttVersion, max_incoming: usize) -> Self {
        Self {
            version,
            io: Box::new(tokio::io::duplex(1).0),
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_incoming,
            max_outgoing: None,
            skipping: None,
            ack_due: None,
        }
    }

    /// Appends `bytes` to the read buffer, as a socket read would, and appends every packet now
    /// complete to `out`: the same decoding `read` runs on a live connection.
    ///
    /// # Errors
    /// What would end a live connection (a malformed packet).
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<Inbound>) -> Result<()> {
        self.read.extend_from_slice(bytes);
        while let Some(p) = self.parse()? {
            out.push(inbound(p)?);
        }
        Ok(())
    }

    /// Bytes held in the read buffer.
    pub(crate) fn buffered(&self) -> usize {
        self.read.len()
    }

    fn parse(&mut self) -> Result<Option<Packet>> {
        if let Some(skip) = &mut self.skipping {
            let n = skip.left.min(self.read.len());
            self.read.advance(n);
            skip.left -= n;
            if skip.left > 0 {
                return Ok(None);
            }
            return Ok(self
                .skipping
                .take()
                .map(|s| Packet::Oversize { message: s.message, size: s.size }));
        }
        let Some((byte1, header, remaining)) = fixed_header(&self.read)? else { return Ok(None) };
        if remaining > self.max_incoming {
            return self.oversize(byte1, header, remaining);
        }
        match self.version {
            MqttVersion::V311 => match rumqttc::Packet::read(&mut self.read, usize::MAX) {
                Ok(p) => Ok(Some(Packet::V4(p))),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(lost(format!("malformed packet from the broker: {e}"))),
            },
            MqttVersion::V5 => match p5::Packet::read(&mut self.read, None) {
                Ok(p) => Ok(Some(Packet::V5(p))),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(lost(format!("malformed packet from the broker: {e}"))),
            },
        }
    }

    /// A packet over `max_packet_size`: a PUBLISH is read past once its topic and packet id are
    /// in (at most 64 KiB); anything else ends the connection.
    fn oversize(&mut self, byte1: u8, header: usize, remaining: usize) -> Result<Option<Packet>> {
        let size = header + remaining;
        if byte1 >> 4 != PUBLISH {
            return Err(lost(format!(
                "the broker sent a packet of {size} bytes, over max_packet_size ({} bytes)",
                self.max_incoming
            )));
        }
        let qos = match (byte1 >> 1) & 0b11 {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            2 => rumqttc::QoS::ExactlyOnce,
            _ => return Err(lost("malformed PUBLISH from the broker: QoS 3")),
        };
        let body = &self.read[header..];
        let Some(topic_len) = body.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return Ok(None);
        };
        let head = 2 + topic_len + if qos == rumqttc::QoS::AtMostOnce { 0 } else { 2 };
        if head > remaining {
            return Err(lost(
                "malformed PUBLISH from the broker: its topic is longer than the packet",
            ));
        }
        if body.len() < head {
            return Ok(None);
        }
        let topic = String::from_utf8(body[2..2 + topic_len].to_vec())
            .map_err(|_| lost("the broker sent a topic that is not UTF-8"))?;
        let pkid = body
            .get(2 + topic_len..head)
            .filter(|b| b.len() == 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let message = Message {
            topic,
            payload: bytes::Bytes::new(),
            qos,
            retain: byte1 & 1 == 1,
            dup: byte1 & 0b1000 != 0,
            pkid,
            properties: None,
        };
        self.read.advance(header + head);
        // `head <= remaining` (checked above), so this cannot underflow.
        self.skipping = Some(Skipping { message, size, left: remaining - head });
        self.parse()
    }

    /// The next packet. Cancel-safe: bytes read stay in the buffer until a whole packet is there
    /// (an oversize PUBLISH's payload is dropped as it arrives, the progress kept).
    async fn read_packet(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.parse()? {
                return Ok(p);
            }
            if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
                self.read.reserve(READ_CHUNK);
            }
            let read = match self.ack_due {
                None => self.io.read_buf(&mut self.read).await,
                Some(due) => {
                    let read = tokio::select! {
                        biased;
                        r = self.io.read_buf(&mut self.read) => Some(r),
                        () = tokio::time::sleep_until(due) => None,
                    };
                    match read {
                        Some(r) => r,
                        None => {
                            self.ack_due = None;
                            ack_now(self.io.as_ref());
                            continue;
                        }
                    }
                }
            };
            match read {
                Ok(0) => return Err(lost("the broker closed the connection")),
                Ok(_) => self.schedule_ack(),
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

    /// After a read: its TCP acknowledgement goes out within [`ACK_DELAY`] ([`ack_now`]).
    fn schedule_ack(&mut self) {
        let now = tokio::time::Instant::now();
        match self.ack_due {
            Some(due) if due <= now => {
                self.ack_due = None;
                ack_now(self.io.as_ref());
            }
            Some(_) => {}
            None => self.ack_due = Some(now + ACK_DELAY),
        }
    }

    /// The next packet, as the connectors see it.
    pub(crate) async fn read(&mut self) -> Result<Inbound> {
        inbound(self.read_packet().await?)
    }

    fn write_v5(&mut self, p: p5::Packet) -> Result<()> {
        let max = self.max_outgoing.map(|m| u32::try_from(m).unwrap_or(u32::MAX));
        p.write(&mut self.write, max)
            .map(|_| ())
            .map_err(|e| Error::retriable(format!("cannot encode an MQTT packet: {e}")))
    }

    fn write_v4(&mut self, p: rumqttc::Packet) -> Result<()> {
        p.write(&mut self.write, self.max_outgoing.unwrap_or(usize::MAX))
            .map(|_| ())
            .map_err(|e| Error::retriable(format!("cannot encode an MQTT packet: {e}")))
    }

    pub(crate) fn write(&mut self, o: Outbound) -> Result<()> {
        match self.version {
            MqttVersion::V311 => self.write_v4(rumqttc::Packet::from(o)),
            MqttVersion::V5 => self.write_v5(p5::Packet::from(o)),
        }
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

/// Opens the socket (TCP, then TLS for `mqtts://`), sends CONNECT and reads CONNACK.
async fn connect(
    s: &ConnectionSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Connection, Connected)> {
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
    let mut c = Connection {
        version: s.version,
        io,
        read: BytesMut::with_capacity(READ_CHUNK),
        write: BytesMut::with_capacity(16 * 1024),
        max_incoming: s.max_packet_size,
        max_outgoing: None,
        skipping: None,
        ack_due: None,
    };
    let keep_alive = u16::try_from(s.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX);
    let login = s.credentials()?;
    match s.version {
        MqttVersion::V311 => {
            c.max_outgoing = Some(s.max_packet_size);
            let mut connect = rumqttc::Connect::new(s.client_id.clone());
            connect.keep_alive = keep_alive;
            // An empty client id is only allowed with a clean session.
            connect.clean_session = s.clean_session || s.client_id.is_empty();
            connect.last_will =
                s.will().map(|w| rumqttc::LastWill::new(w.topic, w.payload, w.qos, w.retain));
            connect.login = login.map(|(u, p)| rumqttc::Login::new(u, p));
            c.write_v4(rumqttc::Packet::Connect(connect))?;
            c.flush().await.map_err(|e| Error::retriable(format!("MQTT CONNECT to {url}: {e}")))?;
            let ack = match c.read_packet().await {
                Ok(Packet::V4(rumqttc::Packet::ConnAck(ack))) => ack,
                Ok(_) => {
                    return Err(Error::retriable(format!(
                        "MQTT broker {url} did not answer CONNECT with CONNACK"
                    )))
                }
                Err(e) => return Err(connect_failed(url, &e)),
            };
            let refused = |fatal, code: &dyn std::fmt::Debug| {
                let message = format!("MQTT broker {url} refused the connection: {code:?}");
                Err(if fatal { Error::fatal(message) } else { Error::retriable(message) })
            };
            use rumqttc::ConnectReturnCode as C;
            match ack.code {
                C::Success => Ok((
                    c,
                    Connected {
                        session_present: ack.session_present,
                        keep_alive: s.keep_alive,
                        receive_maximum: None,
                        max_packet_size: None,
                    },
                )),
                code @ (C::BadUserNamePassword
                | C::NotAuthorized
                | C::BadClientId
                | C::RefusedProtocolVersion) => refused(true, &code),
                code @ C::ServiceUnavailable => refused(false, &code),
            }
        }
        MqttVersion::V5 => connect_v5(c, s, keep_alive, login).await,
    }
}

/// A failed CONNECT: fatal stays fatal (TLS refusals), anything else is retried.
fn connect_failed(url: &crate::MqttUrl, e: &Error) -> Error {
    if e.kind() == connector_core::ErrorKind::Fatal {
        Error::fatal(format!("MQTT CONNECT to {url}: {e}"))
    } else {
        Error::retriable(format!("MQTT CONNECT to {url}: {e}"))
    }
}

async fn connect_v5(
    mut c: Connection,
    s: &ConnectionSettings,
    keep_alive: u16,
    login: Option<(String, String)>,
) -> Result<(Connection, Connected)> {
    let url = &s.url;
    let mut properties = p5::ConnectProperties::new();
    // A kept session must outlive the connection (0, the MQTT 5 default, ends it at disconnect).
    properties.session_expiry_interval = (!s.clean_session).then_some(u32::MAX);
    // The broker sends no more unacknowledged messages than the connector's window, so the
    // connector can keep reading (and answering pings) while Kafka holds up its messages.
    properties.receive_maximum = Some(s.receive_maximum.unwrap_or(u16::MAX).max(1));
    // No Maximum Packet Size: a broker drops a message over it without telling anyone (lost);
    // announced none, it sends it, and `Connection` reads past it for the error policy.
    let will =
        s.will().map(|w| p5::LastWill::new(w.topic, w.payload, qos_to_v5(w.qos), w.retain, None));
    let connect = p5::Connect {
        keep_alive,
        client_id: s.client_id.clone(),
        clean_start: s.clean_session,
        properties: Some(properties),
    };
    let login = login.map(|(u, p)| p5::Login::new(u, p));
    c.write_v5(p5::Packet::Connect(connect, will, login))?;
    c.flush().await.map_err(|e| Error::retriable(format!("MQTT CONNECT to {url}: {e}")))?;
    let ack = match c.read_packet().await {
        Ok(Packet::V5(p5::Packet::ConnAck(ack))) => ack,
        Ok(_) => {
            return Err(Error::retriable(format!(
                "MQTT broker {url} did not answer CONNECT with CONNACK"
            )))
        }
        Err(e) => return Err(connect_failed(url, &e)),
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
        c.max_outgoing = props.max_packet_size.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        if let Some(k) = props.server_keep_alive {
            keep_alive = Duration::from_secs(u64::from(k.max(1)));
        }
    }
    let connected = Connected {
        session_present: ack.session_present,
        keep_alive,
        receive_maximum,
        max_packet_size: c.max_outgoing.map(|m| u32::try_from(m).unwrap_or(u32::MAX)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::QoS;

    fn connection(version: MqttVersion, io: tokio::io::DuplexStream, max: usize) -> Connection {
        Connection {
            version,
            io: Box::new(io),
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_incoming: max,
            max_outgoing: None,
            skipping: None,
            ack_due: None,
        }
    }

    fn publish(topic: &str, pkid: u16, payload: Vec<u8>) -> Outbound {
        Outbound::Publish(Message {
            topic: topic.into(),
            payload: Bytes::from(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: true,
            pkid,
            properties: None,
        })
    }

    /// An oversize PUBLISH, arriving in small pieces, is read past (topic, packet id and size
    /// kept, payload dropped); the packets around it are read as usual.
    #[tokio::test]
    async fn an_oversize_publish_is_read_past_in_both_versions() {
        for version in [MqttVersion::V311, MqttVersion::V5] {
            let (ours, mut broker) = tokio::io::duplex(1024);
            let mut c = connection(version, ours, 2048);
            let mut encoder = connection(version, tokio::io::duplex(1).0, usize::MAX);
            encoder.write(publish("a/small", 1, b"one".to_vec())).unwrap();
            encoder.write(publish("a/big", 2, vec![7; 100_000])).unwrap();
            encoder.write(publish("a/small", 3, b"three".to_vec())).unwrap();
            let bytes = encoder.write.split().freeze();
            let sent = bytes.len();
            let writer = tokio::spawn(async move {
                for chunk in bytes.chunks(700) {
                    broker.write_all(chunk).await.unwrap();
                }
                broker
            });
            let Inbound::Publish(m) = c.read().await.unwrap() else { panic!("publish") };
            assert_eq!((m.pkid, &m.payload[..]), (1, &b"one"[..]));
            let Inbound::Oversize { message, size } = c.read().await.unwrap() else {
                panic!("oversize")
            };
            assert_eq!((message.topic.as_str(), message.pkid, message.dup), ("a/big", 2, true));
            assert!(message.payload.is_empty());
            assert!(size > 100_000 && size < 100_020, "{size}");
            let Inbound::Publish(m) = c.read().await.unwrap() else { panic!("publish") };
            assert_eq!((m.pkid, &m.payload[..]), (3, &b"three"[..]));
            assert!(c.read.capacity() < sent, "{version:?}: the big payload was never buffered");
            drop(writer.await.unwrap());
        }
    }

    #[tokio::test]
    async fn an_oversize_publish_whose_topic_claims_more_than_the_packet_is_an_error_not_a_panic() {
        for version in [MqttVersion::V311, MqttVersion::V5] {
            let (ours, mut broker) = tokio::io::duplex(1 << 20);
            let mut c = connection(version, ours, 1024);
            // PUBLISH QoS 1, remaining length 2000 (over the 1024 limit), topic length 60000.
            let mut bytes = vec![0x32, 0xd0, 0x0f, 0xea, 0x60];
            bytes.resize(5 + 65_000, b'a');
            broker.write_all(&bytes).await.unwrap();
            let e = c.read().await.expect_err("a malformed PUBLISH must end the connection");
            assert!(e.to_string().contains("malformed PUBLISH"), "{version:?}: {e}");
        }
    }
}
