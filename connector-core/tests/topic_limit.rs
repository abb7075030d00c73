//! Bounded per-topic state against a real broker (Tansu): a producer with a [`TopicBudget`]
//! rejects records for more distinct topics than the limit, keeps no more state than the limit,
//! and evicts idle topics (their partitions and cached metadata), which makes room for new ones.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use connector_core::kafka::{Producer, ProducerRecord, TopicBudget};
use connector_core::ErrorKind;
use connector_testkit::{init_tracing, Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_for_topics_over_the_limit_are_rejected_and_idle_topics_are_evicted() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let limit = 5;
    let budget = TopicBudget::new(limit, Duration::from_millis(500));
    let (producer, mut deliveries) =
        Producer::<usize>::with_topic_budget(client, 100, budget.clone());

    // Three times the limit of distinct topics, one record each.
    let n = 3 * limit;
    for i in 0..n {
        producer.send(ProducerRecord::new(format!("burst-{i}"), "v"), i).await.unwrap();
        assert!(producer.state().topics <= limit, "{:?}", producer.state());
    }
    producer.flush().await.unwrap();
    let (mut written, mut rejected) = (Vec::new(), Vec::new());
    while written.len() + rejected.len() < n {
        for d in deliveries.recv().await.unwrap() {
            match d.result {
                Ok(_) => written.push(d.tag),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::RecordRejected, "{e}");
                    assert!(e.to_string().contains("max_kafka_topics = 5"), "{e}");
                    rejected.push(d.tag);
                }
            }
        }
        let state = producer.state();
        assert!(state.topics <= limit && state.partitions <= limit, "{state:?}");
    }
    written.sort_unstable();
    assert_eq!(written, (0..limit).collect::<Vec<_>>(), "the first five topics are written");
    assert_eq!(rejected.len(), n - limit);
    assert_eq!(budget.len(), limit);

    // Idle for longer than the idle time: the producer drops every topic's state.
    let deadline = Instant::now() + Duration::from_secs(10);
    while producer.state().topics > 0 || producer.state().partitions > 0 {
        assert!(Instant::now() < deadline, "idle topics not evicted: {:?}", producer.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ...and the budget has room again for as many new topics.
    for i in 0..limit {
        producer.send(ProducerRecord::new(format!("later-{i}"), "v"), 100 + i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let mut seen = 0;
    while seen < limit {
        for d in deliveries.recv().await.unwrap() {
            d.result.unwrap();
            seen += 1;
        }
    }
    assert!(producer.state().topics <= limit);
}
