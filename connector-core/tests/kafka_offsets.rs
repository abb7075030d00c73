//! The Kafka offset store on a real broker (Tansu): the offsets topic is created compacted, an
//! existing one that is not compacted is refused at start, naming the topic and the setting.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use connector_core::{ErrorKind, KafkaOffsetStore, OffsetMap, OffsetStore, TopicPartition};
use connector_testkit::{init_tracing, Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offsets_topic_is_created_compacted_and_a_delete_topic_is_refused() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();

    let store = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    let mut offsets = OffsetMap::new();
    offsets.insert_kafka(&TopicPartition::new("commands", 0), 7);
    store.save("sink", &offsets).await.unwrap();
    let configs = client.topic_configs("connect-offsets").await.unwrap().expect("Tansu describes");
    assert_eq!(
        configs.get("cleanup.policy").cloned().flatten().as_deref(),
        Some("compact"),
        "{configs:?}"
    );
    let reread = KafkaOffsetStore::new(client.clone(), "connect-offsets");
    assert_eq!(
        reread.load("sink").await.unwrap().kafka_offset(&TopicPartition::new("commands", 0)),
        Some(7)
    );

    // Pre-created by someone else with delete retention, and with no setting at all.
    client
        .create_topic_with_configs("deleting-offsets", 1, 1, &[("cleanup.policy", "delete")])
        .await
        .unwrap();
    client.create_topic("plain-offsets", 1, 1).await.unwrap();
    for (topic, found) in
        [("deleting-offsets", "cleanup.policy=delete"), ("plain-offsets", "no cleanup.policy set")]
    {
        let store = KafkaOffsetStore::new(client.clone(), topic);
        let err = store.load("sink").await.unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Fatal, "{msg}");
        assert!(msg.contains(topic), "{msg}");
        assert!(msg.contains("must have cleanup.policy=compact"), "{msg}");
        assert!(msg.contains(found), "{msg}");
        assert!(store.save("sink", &offsets).await.is_err(), "no save into it either");
    }
}
