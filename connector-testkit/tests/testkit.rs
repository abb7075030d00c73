//! The test kit itself: brokers start on free ports and restart in place; the fault proxy cuts,
//! heals, delays and blackholes.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use connector_testkit::{
    init_tracing, FaultProxy, Mosquitto, MosquittoOptions, Tansu, TansuStorage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn the_fault_proxy_forwards_cuts_and_heals() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"hello").await.unwrap(), b"hello");

    proxy.cut();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "an open connection is dropped by a cut");
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), fresh.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "new connections are closed while cut");

    proxy.heal();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"again").await.unwrap(), b"again");
    assert!(proxy.connections() >= 3);
}

#[tokio::test]
async fn the_fault_proxy_delays_and_blackholes_without_losing_bytes() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.delay(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(round_trip(&mut s, b"slow").await.unwrap(), b"slow");
    assert!(t.elapsed() >= Duration::from_millis(300), "delayed each way");

    proxy.heal();
    proxy.blackhole();
    s.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await.is_err(),
        "nothing passes a blackhole"
    );
    proxy.heal();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"held", "held bytes are delivered after healing, as TCP would");
}

#[tokio::test]
async fn mosquitto_starts_on_a_free_port_and_restarts_on_the_same_port() {
    init_tracing();
    let mut broker = Mosquitto::start_with(MosquittoOptions::default()).await.unwrap();
    assert!(broker.url().starts_with("mqtt://127.0.0.1:"));
    TcpStream::connect(broker.addr()).await.unwrap();
    let before = broker.pid();
    broker.restart().await.unwrap();
    assert_ne!(broker.pid(), before);
    TcpStream::connect(broker.addr()).await.unwrap();
    broker.stop();
    assert!(TcpStream::connect(broker.addr()).await.is_err(), "stopped means not listening");
    broker.start_again().await.unwrap();
    TcpStream::connect(broker.addr()).await.unwrap();
}

#[tokio::test]
async fn tansu_on_sqlite_keeps_records_across_a_restart() {
    init_tracing();
    let mut tansu = Tansu::start_with(TansuStorage::Sqlite).await.unwrap();
    let client = tansu.client().await.unwrap();
    let records = (0..20)
        .map(|i| connector_core::kafka::ProducerRecord::new("kept", format!("{i}")))
        .collect();
    client.produce(records).await.unwrap();
    tansu.restart().await.unwrap();
    let client = tansu.client().await.unwrap();
    let got = connector_testkit::kafka::consume_all(&client, "kept").await.unwrap();
    assert_eq!(got.len(), 20);
}
