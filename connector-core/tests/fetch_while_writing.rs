//! Readers tailing a partition with [`KafkaClient::fetch`] while several producers write to it
//! concurrently get every record. On Tansu 0.6 a produce reserves its offsets (moves the high
//! watermark) before it stores its batch, so a fetch can return a later producer's batch while an
//! earlier one is still missing; a reader that stepped over that gap lost the records in it
//! (before the fix this test failed in 4 of 5 runs: a reader missed one 3-record batch).
//! The same holds for a compacted topic (the config, offsets and status topics of a group): a gap
//! there before a recent batch is waited for, not taken as records compaction removed.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use connector_core::kafka::{FetchResult, KafkaClient, ProducerRecord};
use connector_testkit::{init_tracing, kafka, Tansu};

const TOPIC: &str = "tailed";
const PRODUCERS: usize = 3;
const PER_PRODUCER: usize = 12_000;
/// Records per produce request: small batches, many of them.
const BATCH: usize = 3;
/// Independent tailing readers: each fetch is a chance to meet a batch not stored yet.
const READERS: usize = 4;

/// Tails `TOPIC` partition 0 from offset 0 until `total` offsets were passed; the values read.
async fn tail(reader: KafkaClient, topic: &'static str, total: i64) -> (HashSet<Vec<u8>>, u64) {
    let mut tailed = HashSet::new();
    let mut offset = 0;
    let mut fetches = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while offset < total {
        assert!(Instant::now() < deadline, "a reader stalled at offset {offset}");
        match reader.fetch(topic, 0, offset, Duration::from_millis(50)).await.unwrap() {
            FetchResult::Records(f) => {
                for r in f.records {
                    assert!(
                        r.offset >= offset,
                        "record {} before the fetch offset {offset}",
                        r.offset
                    );
                    assert!(
                        r.offset < f.next_offset,
                        "record {} at or after next_offset",
                        r.offset
                    );
                    tailed.insert(r.value.unwrap().to_vec());
                }
                assert!(f.next_offset >= offset);
                offset = f.next_offset;
            }
            FetchResult::OffsetOutOfRange => panic!("offset {offset} out of range"),
        }
        fetches += 1;
    }
    (tailed, fetches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_readers_get_every_record_written_by_concurrent_producers() {
    tail_while_writing(TOPIC, false, PER_PRODUCER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_readers_of_a_compacted_topic_get_every_record_written_by_concurrent_producers() {
    tail_while_writing("tailed-compacted", true, PER_PRODUCER / 2).await;
}

/// `PRODUCERS` producers write `per_producer` records each (distinct keys) to `topic` while
/// `READERS` readers tail it; every reader must get every record.
async fn tail_while_writing(topic: &'static str, compacted: bool, per_producer: usize) {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let mut config = tansu.kafka_config();
    config.topic_partitions = 1;
    let admin = KafkaClient::connect(config.clone()).await.unwrap();
    if compacted {
        admin
            .create_topic_with_configs(topic, 1, 1, &[("cleanup.policy", "compact")])
            .await
            .unwrap();
    }
    admin.ensure_topic(topic).await.unwrap();
    let started = Instant::now();
    let total = PRODUCERS * per_producer;

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let client = KafkaClient::connect(config.clone()).await.unwrap();
        readers.push(tokio::spawn(tail(client, topic, i64::try_from(total).unwrap())));
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let client = KafkaClient::connect(config.clone()).await.unwrap();
        producers.push(tokio::spawn(async move {
            for chunk in 0..per_producer / BATCH {
                let records = (0..BATCH)
                    .map(|i| {
                        let v = format!("{p}-{}", chunk * BATCH + i);
                        ProducerRecord::new(topic, v.clone()).with_key(v)
                    })
                    .collect();
                client.produce(records).await.unwrap();
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let mut tails = Vec::new();
    for r in readers {
        tails.push(r.await.unwrap());
    }
    let elapsed = started.elapsed();

    let all = kafka::consume_all(&admin, topic).await.unwrap();
    assert_eq!(all.len(), total, "the full read after the writes");
    let mut failures = Vec::new();
    for (i, (tailed, fetches)) in tails.iter().enumerate() {
        let missed: Vec<(i64, String)> = all
            .iter()
            .filter(|r| !tailed.contains(r.value.as_deref().unwrap()))
            .map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned()))
            .collect();
        eprintln!(
            "reader {i}: {} of {total} records in {fetches} fetches; missed {}: {missed:?}",
            tailed.len(),
            missed.len()
        );
        if !missed.is_empty() || tailed.len() != total {
            failures.push((i, missed));
        }
    }
    eprintln!("{topic}: {READERS} readers, {PRODUCERS} producers: {elapsed:?}");
    assert!(failures.is_empty(), "readers skipped records: {failures:?}");
}
