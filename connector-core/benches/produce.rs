//! Produce round trip and throughput at 1, 100 and 1000 records per request, against a real Tansu
//! broker, for our Kafka layer and — in the same run — rskafka's own high-level client.
//!
//! rskafka's client writes a request's 4-byte length and its body as separate writes without
//! `TCP_NODELAY`; any request larger than its 8 KiB buffer then waits for the broker's delayed ACK
//! (~40 ms on Linux). Our transport sets `TCP_NODELAY` and sends each request in one write. This
//! bench shows both, side by side. It asserts nothing about speed (benchmarks are not tests); it
//! only checks that every record was acknowledged.
//!
//! Run: `cargo bench -p connector-core --bench produce` (env `BENCH_REQUESTS`, default 200, sets
//! the requests per batch size).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, Producer, ProducerRecord};
use connector_testkit::Tansu;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;

const PAYLOAD: usize = 100;

struct Row {
    rtt: Vec<Duration>,
    records: usize,
    elapsed: Duration,
}

impl Row {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.rtt.clone();
        v.sort();
        let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(idx).copied().unwrap_or_default()
    }
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

async fn ours(client: &KafkaClient, topic: &str, batch: usize, requests: usize) -> Row {
    // A long-lived producer, as the source runtime uses: each request is `batch` records handed
    // over at once, flushed, and awaited until every record is acknowledged.
    let (producer, mut deliveries) = Producer::<usize>::new(client.clone(), batch);
    let mut rtt = Vec::with_capacity(requests);
    let started = Instant::now();
    for i in 0..requests {
        let records: Vec<ProducerRecord> = (0..batch)
            .map(|j| {
                ProducerRecord::new(topic, vec![b'x'; PAYLOAD])
                    .with_key(format!("k{}", (i * batch + j) % 16))
                    .with_partition(0)
            })
            .collect();
        let t = Instant::now();
        producer
            .send_all(records.into_iter().enumerate().map(|(k, r)| (r, k)).collect())
            .await
            .expect("send");
        producer.flush().await.expect("flush");
        let mut acked = 0;
        while acked < batch {
            for d in deliveries.recv().await.expect("deliveries") {
                d.result.expect("delivered");
                acked += 1;
            }
        }
        rtt.push(t.elapsed());
    }
    Row { rtt, records: batch * requests, elapsed: started.elapsed() }
}

async fn baseline(bootstrap: &str, topic: &str, batch: usize, requests: usize) -> Row {
    let client =
        ClientBuilder::new(vec![bootstrap.to_owned()]).build().await.expect("rskafka client");
    let partition = client
        .partition_client(topic.to_owned(), 0, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let mut rtt = Vec::with_capacity(requests);
    let started = Instant::now();
    for i in 0..requests {
        let records: Vec<Record> = (0..batch)
            .map(|j| Record {
                key: Some(format!("k{}", (i * batch + j) % 16).into_bytes()),
                value: Some(vec![b'x'; PAYLOAD]),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(
                    connector_core::Timestamp::now().as_millis(),
                )
                .expect("valid timestamp"),
            })
            .collect();
        let t = Instant::now();
        let offsets =
            partition.produce(records, Compression::NoCompression).await.expect("produce");
        rtt.push(t.elapsed());
        assert_eq!(offsets.len(), batch);
    }
    Row { rtt, records: batch * requests, elapsed: started.elapsed() }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let requests: usize =
        std::env::var("BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tansu = Tansu::start().await.expect("tansu (run scripts/install-brokers)");
        let client = tansu.client().await.expect("client");
        println!("produce round trip, {PAYLOAD}-byte values, {requests} sequential requests per row, acks=all, Tansu 0.6.0 memory storage");
        println!();
        println!("| records/request | request bytes (approx) | ours p50 ms | ours p99 ms | ours rec/s | rskafka client p50 ms | rskafka client p99 ms | rskafka client rec/s |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for batch in [1usize, 100, 1000] {
            let topic_ours = format!("bench-ours-{batch}");
            let topic_base = format!("bench-rskafka-{batch}");
            client.ensure_topic(&topic_ours).await.expect("topic");
            client.ensure_topic(&topic_base).await.expect("topic");
            // Warm up connections and metadata.
            ours(&client, &topic_ours, batch, 3).await;
            baseline(&tansu.bootstrap(), &topic_base, batch, 3).await;
            let a = ours(&client, &topic_ours, batch, requests).await;
            let b = baseline(&tansu.bootstrap(), &topic_base, batch, requests).await;
            println!(
                "| {batch} | {} | {} | {} | {:.0} | {} | {} | {:.0} |",
                batch * (PAYLOAD + 20),
                ms(a.pct(0.5)),
                ms(a.pct(0.99)),
                a.rate(),
                ms(b.pct(0.5)),
                ms(b.pct(0.99)),
                b.rate(),
            );
        }
    });
}
