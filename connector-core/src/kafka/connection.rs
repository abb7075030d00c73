//! One connection to one broker: our own TCP transport under rskafka's request multiplexer.
//!
//! rskafka's own client opens its sockets without `TCP_NODELAY` and writes a request's 4-byte
//! length and its body as two writes; for any request larger than its 8 KiB buffer the body's tail
//! then waits for the broker's delayed ACK of the length (~40 ms). We open the socket ourselves,
//! set `TCP_NODELAY`, and buffer each request until rskafka flushes it, so a request of any size
//! leaves in one `write` and nothing waits for an ACK. See `docs/kafka-io.md`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rskafka::messenger::Messenger;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;

use crate::kafka::config::KafkaConfig;
use crate::{Error, Result};

/// Buffered reads (responses are read as a 4-byte length then a body) over coalesced writes.
pub(crate) type BrokerStream = BufReader<CoalescingWriter<TcpStream>>;

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

/// Connects to `addr`, agrees API versions, and returns the connection.
///
/// # Errors
/// Retriable when the broker cannot be reached or does not answer within the connect timeout.
pub(crate) async fn connect(addr: &str, config: &KafkaConfig) -> Result<Arc<Connection>> {
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
    let stream = BufReader::with_capacity(READ_BUFFER, CoalescingWriter::new(tcp));
    let mut messenger =
        Messenger::new(stream, config.max_message_size, Arc::from(config.client_id.as_str()));
    match tokio::time::timeout(timeout, messenger.sync_versions()).await {
        Ok(Ok(())) => Ok(Arc::new(messenger)),
        Ok(Err(e)) => {
            Err(Error::retriable(format!("Kafka broker {addr} did not agree on API versions"))
                .with_source(e))
        }
        Err(_) => Err(Error::retriable(format!(
            "Kafka broker {addr} did not answer the API versions request within {timeout:?}"
        ))),
    }
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
