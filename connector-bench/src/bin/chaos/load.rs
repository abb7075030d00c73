//! The load of a chaos run: numbered messages, a [`Tally`] of which arrived and how often, a
//! paced MQTT [`Publisher`] and a counting MQTT [`Subscriber`] (both with persistent sessions, so
//! a broker restart loses nothing on their side), and a paced Kafka producer.
//!
//! A payload is `chaos SEQUENCE(10 digits) ` padded with `x` to [`PAYLOAD_LEN`] bytes; anything
//! else (probes) is not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord};
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// Bytes of every payload.
pub const PAYLOAD_LEN: usize = 64;

/// Devices the load is spread over: MQTT topics `PREFIX/d0` .. `PREFIX/d99` on the source side,
/// record keys `d0` .. `d99` on the sink side.
pub const DEVICES: u64 = 100;

/// The payload of message `seq`.
pub fn payload(seq: u64) -> Vec<u8> {
    let mut p = format!("chaos {seq:010} ").into_bytes();
    p.resize(PAYLOAD_LEN, b'x');
    p
}

/// The sequence number of a payload made by [`payload`].
pub fn parse(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(b"chaos ")?.get(..10)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Which of `0..capacity` arrived, how many arrived more than once, and when the last did.
#[derive(Debug, Clone)]
pub struct Tally {
    capacity: u64,
    bits: Vec<u64>,
    /// Distinct sequence numbers seen.
    pub distinct: u64,
    /// Arrivals of a sequence number already seen.
    pub duplicates: u64,
    /// All arrivals (distinct and repeated).
    pub arrivals: u64,
    /// When the last arrival was counted.
    pub last: Option<Instant>,
}

impl Tally {
    /// An empty tally for sequence numbers `0..capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            bits: vec![0; (capacity as usize).div_ceil(64)],
            distinct: 0,
            duplicates: 0,
            arrivals: 0,
            last: None,
        }
    }

    /// Counts one arrival of `payload`; false when it is not a numbered message in range.
    pub fn add(&mut self, payload: &[u8]) -> bool {
        let Some(seq) = parse(payload).filter(|s| *s < self.capacity) else {
            return false;
        };
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        if *w & bit == 0 {
            *w |= bit;
            self.distinct += 1;
        } else {
            self.duplicates += 1;
        }
        self.arrivals += 1;
        self.last = Some(Instant::now());
        true
    }

    /// The first few sequence numbers below `n` that never arrived.
    pub fn missing(&self, n: u64, at_most: usize) -> Vec<u64> {
        (0..n)
            .filter(|s| self.bits.get((s / 64) as usize).is_none_or(|w| w & (1 << (s % 64)) == 0))
            .take(at_most)
            .collect()
    }
}

fn options(port: u16, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    // A persistent session: after a broker restart the broker still has our subscription and
    // what it queued for us, and rumqttc resends our unacknowledged publishes.
    o.set_clean_session(false);
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o.set_inflight(500);
    o
}

/// Polls an event loop forever (reconnecting 200 ms after an error), calling `on` per packet.
fn drive(
    mut eventloop: rumqttc::EventLoop,
    what: &'static str,
    mut on: impl FnMut(Packet) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(p)) => on(p),
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, what, "connection error; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

/// Publishes numbered QoS 1 messages at a fixed rate and counts the broker's PUBACKs.
pub struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Connects (the connection is made by the first publish).
    pub fn connect(port: u16, client_id: &str) -> Self {
        let (client, eventloop) = AsyncClient::new(options(port, client_id), 1_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        let task = drive(eventloop, "publisher", move |p| {
            if let Packet::PubAck(_) = p {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self { client, acked, task }
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Publishes messages `0..n` round-robin over `PREFIX/d0..d99`, `rate` per second.
    pub async fn publish(&self, prefix: &str, n: u64, rate: f64) -> Result<(), String> {
        let topics: Vec<String> = (0..DEVICES).map(|d| format!("{prefix}/d{d}")).collect();
        let started = Instant::now();
        for seq in 0..n {
            pace(started, seq, rate).await;
            let topic = &topics[(seq % DEVICES) as usize];
            self.client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload(seq))
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
        Ok(())
    }

    /// Waits until `n` PUBACKs arrived; false on timeout.
    pub async fn wait_acked(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.acked() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// Sleeps until message `seq` of a stream started at `started` is due at `rate` per second.
async fn pace(started: Instant, seq: u64, rate: f64) {
    if rate > 0.0 {
        let due = started + Duration::from_secs_f64(seq as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Subscribes with a persistent session and tallies the numbered messages it receives.
pub struct Subscriber {
    tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Connects, subscribes to `filter` at QoS 1 and waits for the SUBACK.
    pub async fn connect(
        port: u16,
        client_id: &str,
        filter: &str,
        capacity: u64,
    ) -> Result<Self, String> {
        let (client, eventloop) = AsyncClient::new(options(port, client_id), 100);
        let tally = Arc::new(Mutex::new(Tally::new(capacity)));
        let subacked = Arc::new(AtomicU64::new(0));
        let (t, s) = (Arc::clone(&tally), Arc::clone(&subacked));
        let task = drive(eventloop, "subscriber", move |p| match p {
            Packet::Publish(p) => {
                t.lock().add(&p.payload);
            }
            Packet::SubAck(_) => {
                s.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
        client.subscribe(filter, QoS::AtLeastOnce).await.map_err(|e| format!("subscribe: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while subacked.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                return Err(format!("no SUBACK for {filter} within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self { tally, task })
    }

    /// What arrived so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().clone()
    }

    /// All arrivals so far (distinct and repeated).
    pub fn arrivals(&self) -> u64 {
        self.tally.lock().arrivals
    }
}

/// Produces records `0..n` (values [`payload`], keys `d0..d99`) into partition 0 of `topic` at
/// `rate` per second in batches of `batch`. A batch that fails (a cut network, a broker
/// restarting) is produced again until Kafka acknowledges it; `acked` counts the records of
/// acknowledged batches.
pub async fn produce_paced(
    client: KafkaClient,
    topic: String,
    n: u64,
    rate: f64,
    batch: u64,
    acked: Arc<AtomicU64>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut seq = 0;
    let mut failures = 0u32;
    while seq < n {
        pace(started, seq, rate).await;
        let end = n.min(seq + batch.max(1));
        let records: Vec<ProducerRecord> = (seq..end)
            .map(|s| {
                ProducerRecord::new(topic.as_str(), payload(s))
                    .with_key(format!("d{}", s % DEVICES))
                    .with_partition(0)
            })
            .collect();
        match tokio::time::timeout(Duration::from_secs(15), client.produce(records)).await {
            Ok(Ok(_)) => {
                acked.fetch_add(end - seq, Ordering::Relaxed);
                seq = end;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "producer: batch failed; producing it again");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(_) => {
                tracing::debug!("producer: no answer within 15 s; producing the batch again");
                failures += 1;
            }
        }
        if failures > 2_000 {
            return Err(format!("{topic}: Kafka refused the batch at {seq} over 2,000 times"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_distinct_and_repeated_messages_and_names_the_missing() {
        let mut t = Tally::new(100);
        assert_eq!(payload(7).len(), PAYLOAD_LEN);
        assert_eq!(parse(&payload(42)), Some(42));
        assert!(t.add(&payload(1)) && t.add(&payload(3)) && t.add(&payload(1)));
        assert!(!t.add(b"probe") && !t.add(&payload(100)), "probes and out-of-range ignored");
        assert_eq!((t.distinct, t.duplicates, t.arrivals), (2, 1, 3));
        assert_eq!(t.missing(5, 10), vec![0, 2, 4]);
    }
}
