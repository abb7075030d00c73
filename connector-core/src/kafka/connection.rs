//! One connection to one broker: our own TCP transport under rskafka's request multiplexer.
//!
//! rskafka's own client opens its sockets without `TCP_NODELAY` and writes a request's 4-byte
//! length and its body as two writes; for any request larger than its 8 KiB buffer the body's tail
//! then waits for the broker's delayed ACK of the length (~40 ms). We open the socket ourselves,
//! set `TCP_NODELAY`, and buffer each request until rskafka flushes it, so a request of any size
//! leaves in one `write` and nothing waits for an ACK. See `docs/kafka-io.md`.
//!
//! With `ssl` / `sasl_ssl` the socket is wrapped in TLS (rustls) under the coalescing buffer, so a
//! request still leaves in one write of TLS records; with `sasl_*` the connection logs in after
//! the API versions are agreed, before it is handed out.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use crate::kafka::wire::messenger::Messenger;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::kafka::config::KafkaConfig;
use crate::kafka::security::{
    find_tls_error, sasl_error, server_name_for, tls_handshake_error, Security,
};
use crate::{Error, Result};

/// Buffered reads (responses are read as a 4-byte length then a body) over coalesced writes.
pub(crate) type BrokerStream = BufReader<CoalescingWriter<Transport>>;

/// The socket under a connection: plain TCP or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Transport {
    /// `plaintext`, `sasl_plaintext`.
    Plain(TcpStream),
    /// `ssl`, `sasl_ssl`. Boxed: the TLS state is large.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, data),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A multiplexed, pipelined connection to one broker.
pub(crate) type Connection = Messenger<BrokerStream>;

/// Read buffer per connection.
const READ_BUFFER: usize = 64 * 1024;
/// A write buffer that grew past this is shrunk back after it was flushed, so one huge request
/// does not pin its memory for the life of the connection.
const WRITE_BUFFER_KEEP: usize = 1024 * 1024;

/// An [`AsyncWrite`] that collects every write in memory and hands the whole buffer to the socket
/// on `flush`. rskafka flushes after each request, so each request goes out as one write.
#[derive(Debug)]
pub(crate) struct CoalescingWriter<W> {
    inner: W,
    buf: Vec<u8>,
    written: usize,
}

impl<W> CoalescingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self { inner, buf: Vec::with_capacity(16 * 1024), written: 0 }
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for CoalescingWriter<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<W: AsyncWrite + Unpin> CoalescingWriter<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > WRITE_BUFFER_KEEP {
            self.buf.shrink_to(16 * 1024);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CoalescingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // A previous flush that was interrupted must finish first, so bytes never interleave.
        if self.written > 0 {
            ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects to `addr` (TCP, then TLS when configured), agrees API versions, logs in with SASL
/// when configured, and returns the connection. Each step runs under the connect timeout.
///
/// # Errors
/// Retriable when the broker cannot be reached, drops the connection or does not answer within
/// the connect timeout. Fatal when its certificate does not verify, a TLS alert ends the
/// connection, or it refuses the SASL login (a retry would present the same credentials).
pub(crate) async fn connect(
    addr: &str,
    config: &KafkaConfig,
    security: &Security,
) -> Result<Arc<Connection>> {
    connect_as(addr, config, security, &config.client_id).await
}

/// [`connect`] with `client_id` in the request headers instead of the configured one (a group
/// member's own connection: the coordinator lists members by client id).
pub(crate) async fn connect_as(
    addr: &str,
    config: &KafkaConfig,
    security: &Security,
    client_id: &str,
) -> Result<Arc<Connection>> {
    let timeout = config.connect_timeout();
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(
                Error::retriable(format!("cannot connect to Kafka broker {addr}")).with_source(e)
            )
        }
        Err(_) => {
            return Err(Error::retriable(format!(
                "connecting to Kafka broker {addr} timed out after {timeout:?}"
            )))
        }
    };
    tcp.set_nodelay(true).map_err(|e| {
        Error::retriable(format!("cannot set TCP_NODELAY on connection to {addr}")).with_source(e)
    })?;
    let transport = match &security.tls {
        None => Transport::Plain(tcp),
        Some(tls) => {
            let name = server_name_for(tls, addr)?;
            match tokio::time::timeout(timeout, tls.connector.connect(name, tcp)).await {
                Ok(Ok(stream)) => Transport::Tls(Box::new(stream)),
                Ok(Err(e)) => return Err(tls_handshake_error(e, addr, tls)),
                Err(_) => {
                    return Err(Error::retriable(format!(
                        "TLS handshake with Kafka broker {addr} timed out after {timeout:?} \
                         (does its listener speak TLS?)"
                    )))
                }
            }
        }
    };
    let stream = BufReader::with_capacity(READ_BUFFER, CoalescingWriter::new(transport));
    let mut messenger = Messenger::new(stream, config.max_message_size, Arc::from(client_id));
    match tokio::time::timeout(timeout, messenger.sync_versions()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // TLS 1.3 servers reject a missing or untrusted client certificate after the
            // handshake: the alert arrives with the first response.
            if let Some(tls_error) = find_tls_error(&e) {
                let message = format!(
                    "TLS connection to Kafka broker {addr} failed: {tls_error} (does it require \
                     a client certificate? see kafka.ssl_certificate_file and kafka.ssl_key_file)"
                );
                return Err(Error::fatal(message));
            }
            return Err(Error::retriable(format!(
                "Kafka broker {addr} did not agree on API versions"
            ))
            .with_source(e));
        }
        Err(_) => {
            return Err(Error::retriable(format!(
                "Kafka broker {addr} did not answer the API versions request within {timeout:?}"
            )))
        }
    }
    if let Some(sasl) = &security.sasl {
        match tokio::time::timeout(timeout, messenger.do_sasl(sasl.rskafka_config())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(sasl_error(e, addr, sasl)),
            Err(_) => {
                return Err(Error::retriable(format!(
                    "Kafka broker {addr} did not complete the SASL {} login within {timeout:?}",
                    sasl.mechanism
                )))
            }
        }
    }
    Ok(Arc::new(messenger))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_request_written_in_pieces_reaches_the_socket_in_one_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 4 + 20_000];
            s.read_exact(&mut got).await.unwrap();
            got
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut w = CoalescingWriter::new(tcp);
        w.write_all(&20_000u32.to_be_bytes()).await.unwrap();
        assert_eq!(w.buf.len(), 4, "nothing is sent before flush");
        w.write_all(&[7u8; 20_000]).await.unwrap();
        w.flush().await.unwrap();
        assert!(w.buf.is_empty());
        let got = server.await.unwrap();
        assert_eq!(&got[..4], &20_000u32.to_be_bytes());
        assert!(got[4..].iter().all(|b| *b == 7));
    }
}
