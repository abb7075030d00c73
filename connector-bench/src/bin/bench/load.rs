//! Load for the benchmarks: a publisher that sends numbered messages as fast as the broker takes
//! them or at a fixed rate, and a subscriber that counts distinct and duplicate messages.
//!
//! Every message's payload starts with `SEQUENCE(10 digits) SEND_TIME_NS(19 digits) ` in ASCII,
//! padded with `x` to the payload size, so any client (ours, Python, `mosquitto_sub`) can read
//! it, and a Kafka record's value identifies the message it came from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// Bytes of the sequence number and send time at the front of each payload.
pub const HEADER_LEN: usize = 31;

/// Nanoseconds since the UNIX epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The payload of message `seq`, `size` bytes long (at least [`HEADER_LEN`]).
pub fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{seq:010} {:019} ", now_ns()).into_bytes();
    p.resize(size.max(HEADER_LEN), b'x');
    p
}

/// The sequence number and send time of a payload made by [`payload`].
pub fn parse(payload: &[u8]) -> Option<(u64, u64)> {
    let head = payload.get(..HEADER_LEN)?;
    let seq = std::str::from_utf8(&head[..10]).ok()?.parse().ok()?;
    let sent = std::str::from_utf8(&head[11..30]).ok()?.parse().ok()?;
    Some((seq, sent))
}

/// The device topics messages are spread over: `PREFIX/d0` ... `PREFIX/d{devices-1}`.
pub fn device_topics(prefix: &str, devices: usize) -> Vec<String> {
    (0..devices.max(1)).map(|d| format!("{prefix}/d{d}")).collect()
}

fn options(port: u16, client_id: &str, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o.set_inflight(inflight);
    o
}

/// Socket options of the load clients: Nagle's algorithm off, like our connectors.
fn nodelay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// Publishes numbered messages and counts the broker's acknowledgements.
pub struct LoadPublisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for LoadPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LoadPublisher {
    /// Connects with up to `inflight` unacknowledged QoS 1 publishes.
    pub fn connect(port: u16, client_id: &str, inflight: u16) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options(port, client_id, inflight), 10_000);
        eventloop.set_network_options(nodelay());
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(0))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "load publisher: connection error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Self { client, acked, task }
    }

    /// Publishes messages `first..first + n` round-robin over `topics`, as fast as the client
    /// takes them (`rate` = None) or `rate` per second.
    pub async fn publish(
        &self,
        topics: &[String],
        qos: QoS,
        first: u64,
        n: u64,
        size: usize,
        rate: Option<u64>,
    ) -> Result<(), String> {
        let started = Instant::now();
        for i in 0..n {
            if let Some(rate) = rate.filter(|r| *r > 0) {
                let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            let seq = first + i;
            let topic = &topics[(seq % topics.len() as u64) as usize];
            self.client
                .publish(topic.as_str(), qos, false, payload(seq, size))
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
        Ok(())
    }

    /// Publishes acknowledged so far (QoS 0: sent).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` publishes were acknowledged; false on timeout.
    pub async fn wait_acked(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.acked() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// What a [`CountingSubscriber`] saw.
#[derive(Debug, Default)]
struct Seen {
    /// One bit per sequence number below the capacity.
    bits: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    /// Payloads that were not benchmark messages (probes).
    other: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Subscribes and counts distinct and repeated benchmark messages, with the arrival time of the
/// first and the last.
pub struct CountingSubscriber {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Drop for CountingSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingSubscriber {
    /// Connects and subscribes to `filter`; returns once the broker acknowledged the subscription.
    pub async fn connect(
        port: u16,
        client_id: &str,
        filter: &str,
        qos: QoS,
        capacity: u64,
    ) -> Result<Self, String> {
        let (client, mut eventloop) = AsyncClient::new(options(port, client_id, 100), 100);
        eventloop.set_network_options(nodelay());
        let seen = Arc::new(Mutex::new(Seen {
            bits: vec![0; (capacity as usize).div_ceil(64)],
            ..Seen::default()
        }));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let state = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = Instant::now();
                        let mut s = state.lock();
                        s.first.get_or_insert(now);
                        s.last = Some(now);
                        match parse(&p.payload) {
                            Some((seq, _)) if (seq as usize) / 64 < s.bits.len() => {
                                let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                                if s.bits[word] & bit == 0 {
                                    s.bits[word] |= bit;
                                    s.distinct += 1;
                                } else {
                                    s.duplicates += 1;
                                }
                            }
                            _ => s.other += 1,
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "counting subscriber: connection error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        client.subscribe(filter, qos).await.map_err(|e| format!("subscribe: {e}"))?;
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .map_err(|_| format!("no SUBACK for {filter} within 10 s"))?
            .map_err(|_| "subscriber stopped".to_owned())?;
        Ok(Self { seen, task })
    }

    /// Distinct benchmark messages received.
    pub fn distinct(&self) -> u64 {
        self.seen.lock().distinct
    }

    /// Benchmark messages received more than once.
    pub fn duplicates(&self) -> u64 {
        self.seen.lock().duplicates
    }

    /// Arrival times of the first and the last message.
    pub fn first_last(&self) -> (Option<Instant>, Option<Instant>) {
        let s = self.seen.lock();
        (s.first, s.last)
    }

    /// Waits until `n` distinct messages arrived, or nothing new arrived for `idle` (after at
    /// least one arrived), or `timeout` passed. Returns the distinct count.
    pub async fn wait_for(&self, n: u64, idle: Duration, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let (distinct, last) = {
                let s = self.seen.lock();
                (s.distinct, s.last)
            };
            if distinct >= n
                || Instant::now() > deadline
                || last.is_some_and(|l| l.elapsed() > idle)
            {
                return distinct;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_sequence_and_send_time() {
        let p = payload(42, 100);
        assert_eq!(p.len(), 100);
        let (seq, sent) = parse(&p).unwrap();
        assert_eq!(seq, 42);
        assert!(sent > 0 && sent <= now_ns());
        assert_eq!(payload(7, 10).len(), HEADER_LEN, "never shorter than the header");
        assert!(parse(b"probe").is_none());
    }
}
