//! The Kafka layer against a real broker (Tansu): topic creation, produce with ordered duplicate
//! headers, fetch, key partitioning, end offsets, the Kafka offset store.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use connector_core::kafka::{
    partition_for_key, FetchResult, KafkaClient, OffsetSpec, Producer, ProducerRecord,
};
use connector_core::{KafkaOffsetStore, OffsetMap, OffsetStore, Timestamp, TopicPartition};
use connector_testkit::{init_tracing, kafka, Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_with_keys_ordered_duplicate_headers_and_timestamps() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let records = vec![
        ProducerRecord::new("roundtrip", "v0")
            .with_key("k0")
            .with_header("tag", "b")
            .with_header("unit", "C")
            .with_header("tag", "a")
            .with_timestamp(Timestamp::from_millis(1_700_000_000_123)),
        ProducerRecord { value: None, ..ProducerRecord::new("roundtrip", "").with_key("k1") },
    ];
    let meta = client.produce(records).await.unwrap();
    assert_eq!(meta.len(), 2);
    assert_eq!(meta[1].offset, meta[0].offset + 1);

    let got = kafka::consume_all(&client, "roundtrip").await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(got[0].value.as_deref(), Some(&b"v0"[..]));
    let headers: Vec<(String, Vec<u8>)> =
        got[0].headers.iter().map(|h| (h.key.to_string(), h.value.to_vec())).collect();
    assert_eq!(
        headers,
        [
            ("tag".into(), b"b".to_vec()),
            ("unit".into(), b"C".to_vec()),
            ("tag".into(), b"a".to_vec())
        ]
    );
    assert_eq!(got[0].timestamp, Timestamp::from_millis(1_700_000_000_123));
    assert_eq!(got[1].value, None, "tombstone stays a tombstone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_land_on_the_java_partition_and_keep_their_order() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let mut config = tansu.kafka_config();
    config.topic_partitions = 4;
    let client = KafkaClient::connect(config).await.unwrap();
    let (producer, mut deliveries) = Producer::<usize>::new(client.clone(), 1000);
    let n = 400;
    for i in 0..n {
        let key = format!("device-{}", i % 10);
        producer.send(ProducerRecord::new("keyed", format!("{i}")).with_key(key), i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let mut seen = 0;
    while seen < n {
        for d in deliveries.recv().await.unwrap() {
            let m = d.result.unwrap();
            let key = format!("device-{}", d.tag % 10);
            assert_eq!(m.partition, partition_for_key(key.as_bytes(), 4), "{key}");
            seen += 1;
        }
    }
    let records = kafka::consume_all(&client, "keyed").await.unwrap();
    assert_eq!(records.len(), n);
    for device in 0..10 {
        let key = format!("device-{device}");
        let values: Vec<usize> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
            .map(|r| std::str::from_utf8(r.value.as_deref().unwrap()).unwrap().parse().unwrap())
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        assert_eq!(values, sorted, "per-key order of {key}");
        assert_eq!(values.len(), n / 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_offsets_and_fetches_follow_what_was_written() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.ensure_topic("ends").await.unwrap();
    assert_eq!(client.end_offset("ends", 0).await.unwrap(), 0);
    let batch: Vec<_> =
        (0..50).map(|i| ProducerRecord::new("ends", format!("{i}")).with_partition(0)).collect();
    client.produce(batch).await.unwrap();
    let earliest = client.list_offset("ends", 0, OffsetSpec::Earliest).await.unwrap();
    let end = client.end_offset("ends", 0).await.unwrap();
    assert_eq!(end - earliest, 50);
    match client.fetch("ends", 0, earliest + 45, Duration::from_millis(50)).await.unwrap() {
        FetchResult::Records(f) => {
            let offsets: Vec<i64> = f.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (earliest + 45..end).collect::<Vec<_>>());
            assert_eq!(f.next_offset, end);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_offset_store_reads_back_the_latest_offsets_after_a_restart_of_the_store() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    assert!(store.load("a").await.unwrap().is_empty());
    for i in 0..3 {
        let mut m = OffsetMap::new();
        m.insert_kafka(&TopicPartition::new("t", 0), i * 10);
        m.insert_kafka(&TopicPartition::new("t", 1), i * 10 + 1);
        store.save("a", &m).await.unwrap();
    }
    let mut b = OffsetMap::new();
    b.insert_kafka(&TopicPartition::new("t", 0), 7);
    store.save("b", &b).await.unwrap();

    let reread = KafkaOffsetStore::new(client, "connect-offsets");
    let a = reread.load("a").await.unwrap();
    assert_eq!(a.kafka_offset(&TopicPartition::new("t", 0)), Some(20));
    assert_eq!(a.kafka_offset(&TopicPartition::new("t", 1)), Some(21));
    assert_eq!(reread.load("b").await.unwrap().kafka_offset(&TopicPartition::new("t", 0)), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_inside_a_batch_returns_the_rest_of_that_batch_exactly_once() {
    // Tansu answers a fetch with the batches that *start* at or after the offset (and may repeat
    // them); a consumer resuming mid-batch must still get every record once.
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.ensure_topic("mid").await.unwrap();
    for (base, n) in [(0, 50), (50, 10), (60, 10)] {
        let batch: Vec<_> = (0..n)
            .map(|i| ProducerRecord::new("mid", format!("{}", base + i)).with_partition(0))
            .collect();
        client.produce(batch).await.unwrap();
    }
    for at in [0i64, 1, 45, 49, 50, 51, 59, 60, 65, 69, 70] {
        let FetchResult::Records(f) =
            client.fetch("mid", 0, at, Duration::from_millis(20)).await.unwrap()
        else {
            panic!("out of range at {at}");
        };
        let offsets: Vec<i64> = f.records.iter().map(|r| r.offset).collect();
        let first_batch_end = [50, 60, 70].into_iter().find(|e| *e > at).unwrap_or(70);
        assert!(
            offsets.len() as i64 >= (first_batch_end - at).min(70 - at),
            "fetch@{at}: {offsets:?}"
        );
        assert_eq!(offsets, (at..at + offsets.len() as i64).collect::<Vec<_>>(), "fetch@{at}");
        for r in &f.records {
            assert_eq!(r.value.as_deref(), Some(r.offset.to_string().as_bytes()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_does_not_hold_up_produce_requests() {
    // A broker answers one connection's requests in order: were fetches and produces to share a
    // connection, this produce would wait for the fetch's 3 s long poll.
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.ensure_topic("idle").await.unwrap();
    client.ensure_topic("busy").await.unwrap();
    let fetching = {
        let client = client.clone();
        tokio::spawn(async move { client.fetch("idle", 0, 0, Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.produce(vec![ProducerRecord::new("busy", "now")]).await.unwrap();
    assert!(!fetching.is_finished(), "the produce completed while the long poll was still waiting");
    fetching.await.unwrap().unwrap();
}
