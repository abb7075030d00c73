//! The transactional producer and read_committed fetching on a real broker (Tansu 0.6.0 with our
//! EndTxn route): committed records are visible and aborted ones are not, to our fetch and to a
//! librdkafka read_committed consumer; an open transaction holds the last stable offset; a second
//! instance of a transactional id fences the first and aborts its open transaction.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use connector_core::kafka::{
    FetchResult, Isolation, KafkaClient, OffsetSpec, ProducerRecord, TransactionalProducer,
};
use connector_testkit::{init_tracing, Tansu};

const TXN_TIMEOUT: Duration = Duration::from_secs(60);

fn records(topic: &str, prefix: &str, n: usize) -> Vec<ProducerRecord> {
    (0..n).map(|i| ProducerRecord::new(topic, format!("{prefix}{i}")).with_partition(0)).collect()
}

/// Every value of partition 0 visible at `isolation`, up to the end at that isolation.
async fn read_all(client: &KafkaClient, topic: &str, isolation: Isolation) -> Vec<String> {
    let end = client.end_offset_isolated(topic, 0, isolation).await.unwrap();
    let mut offset = client.list_offset(topic, 0, OffsetSpec::Earliest).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while offset < end {
        assert!(Instant::now() < deadline, "read stuck at {offset} of {end}");
        match client
            .fetch_isolated(topic, 0, offset, Duration::from_millis(50), isolation)
            .await
            .unwrap()
        {
            FetchResult::Records(f) => {
                for r in f.records {
                    out.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
                }
                offset = f.next_offset.max(offset);
            }
            FetchResult::OffsetOutOfRange => panic!("offset {offset} out of range"),
        }
    }
    out
}

/// The values a librdkafka consumer at read_committed sees in partition 0 of `topic`: polled
/// until `expect` arrived and then nothing more for a second (or 15 s passed).
fn librdkafka_read_committed(bootstrap: &str, topic: &str, expect: usize) -> Vec<String> {
    const SCRIPT: &str = r#"
import sys, time
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, expect = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rc-check", "enable.auto.commit": False,
              "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
c.assign([TopicPartition(topic, 0, 0)])
got, deadline, quiet_since = [], time.time() + 15, None
while time.time() < deadline:
    m = c.poll(0.2)
    if m is None or m.error():
        if len(got) >= expect:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since > 1.0:
                break
        continue
    quiet_since = None
    got.append(m.value().decode())
c.close()
for v in got:
    print(v)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, bootstrap, topic, &expect.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_are_visible_and_aborted_ones_are_not() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("tx", 1, 1).await.unwrap();

    let mut p = TransactionalProducer::init(client.clone(), "tx-1", TXN_TIMEOUT).await.unwrap();
    assert!(p.producer_id() >= 0 && p.epoch() >= 0);
    for r in p.send(records("tx", "c", 5)).await.unwrap() {
        r.unwrap();
    }
    p.commit().await.unwrap();
    let sent = p.send(records("tx", "a", 5)).await.unwrap();
    assert!(sent.iter().all(Result::is_ok));
    p.abort().await.unwrap();
    let sent = p.send(records("tx", "d", 3)).await.unwrap();
    let offsets: Vec<i64> = sent.into_iter().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets.windows(2).filter(|w| w[1] != w[0] + 1).count(), 0, "{offsets:?}");
    p.commit().await.unwrap();

    let mut want = values("c", 5);
    want.extend(values("d", 3));
    assert_eq!(read_all(&client, "tx", Isolation::ReadCommitted).await, want);
    let uncommitted = read_all(&client, "tx", Isolation::ReadUncommitted).await;
    assert_eq!(uncommitted.len(), 13, "aborted records are in the log: {uncommitted:?}");
    // 13 records and 3 markers; nothing open, so the last stable offset is the high watermark.
    assert_eq!(client.end_offset("tx", 0).await.unwrap(), 16);
    assert_eq!(client.stable_end_offset("tx", 0).await.unwrap(), 16);

    let seen = tokio::task::spawn_blocking({
        let bootstrap = tansu.bootstrap();
        move || librdkafka_read_committed(&bootstrap, "tx", 8)
    })
    .await
    .unwrap();
    if seen != want {
        // Tansu 0.6.0 answers every read_committed fetch with an empty list of aborted
        // transactions, and librdkafka drops only the aborted transactions that list names.
        // scripts/tansu/aborted-transactions.patch fixes the broker; until a broker built with it
        // runs here, librdkafka sees the aborted records too (in their place), and only those.
        let mut with_aborted = values("c", 5);
        with_aborted.extend(values("a", 5));
        with_aborted.extend(values("d", 3));
        assert_eq!(seen, with_aborted, "librdkafka at read_committed");
        eprintln!(
            "KNOWN TANSU 0.6.0 BUG: librdkafka at read_committed delivered the aborted records \
             (broker without scripts/tansu/aborted-transactions.patch)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_is_invisible_and_holds_the_last_stable_offset() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("open", 1, 1).await.unwrap();
    client.produce(records("open", "before", 2)).await.unwrap();

    let mut p = TransactionalProducer::init(client.clone(), "open-1", TXN_TIMEOUT).await.unwrap();
    assert!(p.send(records("open", "t", 3)).await.unwrap().iter().all(Result::is_ok));
    assert!(p.in_transaction());
    // Written outside the transaction, after it began.
    client.produce(records("open", "after", 2)).await.unwrap();

    assert_eq!(client.end_offset("open", 0).await.unwrap(), 7);
    assert_eq!(client.stable_end_offset("open", 0).await.unwrap(), 2, "held at the txn's start");
    assert_eq!(read_all(&client, "open", Isolation::ReadCommitted).await, values("before", 2));
    // A fetch at the last stable offset returns nothing and stays there.
    let FetchResult::Records(f) = client
        .fetch_isolated("open", 0, 2, Duration::from_millis(50), Isolation::ReadCommitted)
        .await
        .unwrap()
    else {
        panic!("out of range")
    };
    assert!(f.records.is_empty(), "{:?}", f.records);
    assert_eq!((f.next_offset, f.high_watermark), (2, 2));

    p.commit().await.unwrap();
    assert!(!p.in_transaction());
    assert_eq!(client.stable_end_offset("open", 0).await.unwrap(), 8);
    let mut want = values("before", 2);
    want.extend(values("t", 3));
    want.extend(values("after", 2));
    assert_eq!(read_all(&client, "open", Isolation::ReadCommitted).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_init_fences_the_first_instance_which_writes_nothing() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("fence", 1, 1).await.unwrap();

    let mut zombie =
        TransactionalProducer::init(client.clone(), "task-0", TXN_TIMEOUT).await.unwrap();
    assert!(zombie.send(records("fence", "z", 2)).await.unwrap().iter().all(Result::is_ok));
    let mut p = TransactionalProducer::init(client.clone(), "task-0", TXN_TIMEOUT).await.unwrap();
    assert_eq!(p.producer_id(), zombie.producer_id());
    assert!(p.epoch() > zombie.epoch(), "{} > {}", p.epoch(), zombie.epoch());

    let err = zombie.send(records("fence", "z", 1)).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("fenced") && msg.contains("task-0"), "{msg}");
    assert!(msg.contains("a newer instance of this task started"), "{msg}");
    assert!(zombie.commit().await.unwrap_err().is_fenced());

    assert!(p.send(records("fence", "p", 2)).await.unwrap().iter().all(Result::is_ok));
    p.commit().await.unwrap();
    assert_eq!(read_all(&client, "fence", Isolation::ReadCommitted).await, values("p", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_producers_open_transaction_is_aborted_by_the_next_init() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("crash", 1, 1).await.unwrap();

    let mut crashed =
        TransactionalProducer::init(client.clone(), "task-1", TXN_TIMEOUT).await.unwrap();
    assert!(crashed.send(records("crash", "lost", 3)).await.unwrap().iter().all(Result::is_ok));
    drop(crashed);
    assert_eq!(client.stable_end_offset("crash", 0).await.unwrap(), 0, "open: LSO held");

    let mut p = TransactionalProducer::init(client.clone(), "task-1", TXN_TIMEOUT).await.unwrap();
    // The abort marker is written and nothing is open any more.
    assert_eq!(client.stable_end_offset("crash", 0).await.unwrap(), 4);
    assert!(p.send(records("crash", "kept", 2)).await.unwrap().iter().all(Result::is_ok));
    p.commit().await.unwrap();
    assert_eq!(read_all(&client, "crash", Isolation::ReadCommitted).await, values("kept", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_written_in_a_transaction_count_only_once_it_commits() {
    use connector_core::{KafkaOffsetStore, OffsetMap, OffsetStore, TopicPartition};
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let offsets = |o: i64| {
        let mut m = OffsetMap::new();
        m.insert_kafka(&TopicPartition::new("commands", 0), o);
        m
    };
    let at = |m: &OffsetMap| m.kafka_offset(&TopicPartition::new("commands", 0));

    let store = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    assert!(store.as_kafka().is_some());
    store.prepare().await.unwrap();
    assert_eq!(store.topic(), "connect-offsets");
    let mut p = TransactionalProducer::init(client.clone(), "src-0", TXN_TIMEOUT).await.unwrap();

    // Committed: counts.
    assert!(p
        .send(store.offset_records("src", &offsets(1)))
        .await
        .unwrap()
        .iter()
        .all(Result::is_ok));
    p.commit().await.unwrap();
    store.committed("src", &offsets(1)).await;
    let reader = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    assert_eq!(at(&reader.load("src").await.unwrap()), Some(1));

    // Aborted: never counts.
    assert!(p
        .send(store.offset_records("src", &offsets(2)))
        .await
        .unwrap()
        .iter()
        .all(Result::is_ok));
    p.abort().await.unwrap();
    assert_eq!(at(&reader.load("src").await.unwrap()), Some(1));
    assert_eq!(
        at(&KafkaOffsetStore::new(client.clone(), "connect-offsets").load("src").await.unwrap()),
        Some(1)
    );

    // Open: not yet, and it does not hold back a later plain save, nor does a load wait for it.
    assert!(p
        .send(store.offset_records("src", &offsets(3)))
        .await
        .unwrap()
        .iter()
        .all(Result::is_ok));
    store.save("other", &offsets(9)).await.unwrap();
    let started = Instant::now();
    assert_eq!(at(&reader.load("src").await.unwrap()), Some(1));
    assert_eq!(at(&reader.load("other").await.unwrap()), Some(9), "not held back by the open txn");
    let fresh = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    assert_eq!(at(&fresh.load("src").await.unwrap()), Some(1));
    assert_eq!(at(&fresh.load("other").await.unwrap()), Some(9));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(at(&store.load("other").await.unwrap()), Some(9));
    assert_eq!(at(&store.load("src").await.unwrap()), Some(1));

    p.commit().await.unwrap();
    store.committed("src", &offsets(3)).await;
    assert_eq!(at(&store.load("src").await.unwrap()), Some(3));
    assert_eq!(at(&reader.load("src").await.unwrap()), Some(3));
    assert_eq!(at(&reader.load("other").await.unwrap()), Some(9));
    assert_eq!(at(&fresh.load("src").await.unwrap()), Some(3), "re-read from the open txn");
}

/// Tansu holds a committed transaction "prepared" while any other transaction whose records
/// interleave with it on a partition is open (Kafka commits it at once). Two producers whose
/// transactions keep overlapping on one partition therefore hold the last stable offset at the
/// start of the first one until, at some commit, no overlapping transaction is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_transactions_hold_the_last_stable_offset_until_none_is_open() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("overlap", 1, 1).await.unwrap();
    let mut a = TransactionalProducer::init(client.clone(), "a", TXN_TIMEOUT).await.unwrap();
    let mut b = TransactionalProducer::init(client.clone(), "b", TXN_TIMEOUT).await.unwrap();

    let mut lso = Vec::new();
    assert!(a.send(records("overlap", "a0-", 1)).await.unwrap().iter().all(Result::is_ok));
    for round in 0..3 {
        assert!(b.send(records("overlap", &format!("b{round}-"), 1)).await.unwrap()[0].is_ok());
        a.commit().await.unwrap();
        assert!(
            a.send(records("overlap", &format!("a{}-", round + 1), 1)).await.unwrap()[0].is_ok()
        );
        b.commit().await.unwrap();
        lso.push(client.stable_end_offset("overlap", 0).await.unwrap());
    }
    let held = client.stable_end_offset("overlap", 0).await.unwrap();
    a.commit().await.unwrap();
    let released = client.stable_end_offset("overlap", 0).await.unwrap();
    let end = client.end_offset("overlap", 0).await.unwrap();
    eprintln!(
        "LSO after each round {lso:?}, before the last commit {held}, after {released}, end {end}"
    );
    // Kafka would have moved it past every committed transaction; Tansu 0.6.0 keeps it at 0.
    assert_eq!((lso, held), (vec![0, 0, 0], 0), "Tansu holds the LSO while transactions overlap");
    assert_eq!(released, end, "nothing open: everything stable");
    assert_eq!(read_all(&client, "overlap", Isolation::ReadCommitted).await.len(), 7);
}

/// Offsets committed while another producer's transaction overlaps them on the offsets topic
/// (Tansu then holds the last stable offset before them) are read by a new store all the same:
/// a restarted task must find the packet ids its last transaction recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_are_read_while_an_overlapping_transaction_holds_the_lso() {
    use connector_core::{KafkaOffsetStore, OffsetMap, OffsetStore, TopicPartition};
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let offsets = |o: i64| {
        let mut m = OffsetMap::new();
        m.insert_kafka(&TopicPartition::new("commands", 0), o);
        m
    };
    let store = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    store.prepare().await.unwrap();
    let mut other =
        TransactionalProducer::init(client.clone(), "other", TXN_TIMEOUT).await.unwrap();
    let mut task = TransactionalProducer::init(client.clone(), "task", TXN_TIMEOUT).await.unwrap();
    assert!(other.send(store.offset_records("o", &offsets(1))).await.unwrap()[0].is_ok());
    assert!(task.send(store.offset_records("t", &offsets(5))).await.unwrap()[0].is_ok());
    task.commit().await.unwrap();
    assert_eq!(client.stable_end_offset("connect-offsets", 0).await.unwrap(), 0, "held by `other`");

    let restarted = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    let loaded = restarted.load("t").await.unwrap();
    assert_eq!(loaded.kafka_offset(&TopicPartition::new("commands", 0)), Some(5));
    assert!(restarted.load("o").await.unwrap().is_empty(), "still open");
    other.commit().await.unwrap();
    let loaded = restarted.load("o").await.unwrap();
    assert_eq!(loaded.kafka_offset(&TopicPartition::new("commands", 0)), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_gets_its_own_error_and_the_transaction_can_only_be_aborted() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("rej", 1, 1).await.unwrap();
    let mut p = TransactionalProducer::init(client.clone(), "rej-1", TXN_TIMEOUT).await.unwrap();

    let mut batch = records("rej", "ok", 2);
    batch.insert(1, ProducerRecord::new("rej", "bad").with_partition(7));
    let results = p.send(batch).await.unwrap();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), connector_core::ErrorKind::RecordRejected, "{err}");
    let refused = p.commit().await.unwrap_err();
    assert!(refused.to_string().contains("abort"), "{refused}");
    p.abort().await.unwrap();
    assert!(read_all(&client, "rej", Isolation::ReadCommitted).await.is_empty());

    // The next transaction is a fresh one.
    assert!(p.send(records("rej", "next", 2)).await.unwrap().iter().all(Result::is_ok));
    p.commit().await.unwrap();
    assert_eq!(read_all(&client, "rej", Isolation::ReadCommitted).await, values("next", 2));
}

/// Figures for choosing transaction sizes (printed; asserts only that it completes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_round_trip_figures() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("figures", 1, 1).await.unwrap();
    let mut p = TransactionalProducer::init(client.clone(), "fig-1", TXN_TIMEOUT).await.unwrap();
    for size in [1, 100, 1000] {
        let txns = 10;
        let started = Instant::now();
        let mut send_time = Duration::ZERO;
        for t in 0..txns {
            let s = Instant::now();
            let sent = p.send(records("figures", &format!("{size}-{t}-"), size)).await.unwrap();
            send_time += s.elapsed();
            assert!(sent.iter().all(Result::is_ok));
            p.commit().await.unwrap();
        }
        let total = started.elapsed();
        eprintln!(
            "FIGURES txn of {size} records: {:.1} ms per transaction ({:.1} ms of it the send), {:.0} records/s",
            total.as_secs_f64() * 1000.0 / f64::from(txns),
            send_time.as_secs_f64() * 1000.0 / f64::from(txns),
            f64::from(txns) * size as f64 / total.as_secs_f64()
        );
    }
}
