//! The worker group's config topic on a real broker (Tansu): created compacted with one
//! partition, read to its end, followed (a write is seen by another follower), deletes by
//! tombstone and by marker, restart requests kept, a non-compacted topic refused.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use connector_core::runner::control::config_topic::{ConfigTopic, RestartRecord, StoredConnector};
use connector_core::runner::control::TargetState;
use connector_core::ErrorKind;
use connector_testkit::{init_tracing, Tansu};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

fn config(name: &str, interval: u64) -> Map<String, Value> {
    let Value::Object(m) =
        json!({"name": name, "type": "heartbeat", "topic": "beats", "interval_ms": interval})
    else {
        unreachable!()
    };
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_topic_is_compacted_read_to_its_end_and_followed() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let stop = CancellationToken::new();

    let a = ConfigTopic::new(client.clone(), "connect-configs");
    let first = a.read_to_end().await.unwrap();
    assert!(first.connectors.is_empty());
    let configs = client.topic_configs("connect-configs").await.unwrap().expect("Tansu describes");
    assert_eq!(configs.get("cleanup.policy").cloned().flatten().as_deref(), Some("compact"));
    assert_eq!(
        client.topic_metadata("connect-configs").await.unwrap().unwrap().partition_count(),
        1
    );

    let one = StoredConnector { config: config("one", 100), target_state: TargetState::Running };
    a.put("one", &one).await.unwrap();
    a.put("two", &StoredConnector { config: config("two", 5), target_state: TargetState::Paused })
        .await
        .unwrap();
    a.put(
        "gone",
        &StoredConnector { config: config("gone", 5), target_state: TargetState::Stopped },
    )
    .await
    .unwrap();
    a.delete("gone", false).await.unwrap();

    // A second worker reads it all at start.
    let b = ConfigTopic::new(client.clone(), "connect-configs");
    let follower = b.follow(stop.clone()).await.unwrap();
    let view = follower.latest();
    assert_eq!(view.connectors.keys().collect::<Vec<_>>(), ["one", "two"], "{view:?}");
    assert_eq!(view.connectors["one"], one);
    assert_eq!(view.connectors["two"].target_state, TargetState::Paused);
    assert_eq!(follower.start_offset(), view.offset);

    // ... and follows: a change, a marker delete, a restart request.
    let changed =
        StoredConnector { config: config("one", 250), target_state: TargetState::Running };
    a.put("one", &changed).await.unwrap();
    a.delete("two", true).await.unwrap();
    let restart = RestartRecord {
        connector: "one".into(),
        task: Some(0),
        include_tasks: false,
        only_failed: false,
    };
    let at = a.restart(&restart).await.unwrap();
    assert!(follower.wait_past(at, Duration::from_secs(10)).await, "the follower saw offset {at}");
    let view = follower.latest();
    assert_eq!(view.connectors.keys().collect::<Vec<_>>(), ["one"], "{view:?}");
    assert_eq!(view.connectors["one"], changed);
    assert!(view.deleted.contains("two"));
    assert_eq!(view.restarts.back(), Some(&(at, restart)));

    // A fresh read sees the same (the marker survives; the restart is history).
    let again = ConfigTopic::new(client.clone(), "connect-configs").read_to_end().await.unwrap();
    assert_eq!(again.connectors, view.connectors);
    assert_eq!(again.deleted, view.deleted);
    assert_eq!(again.offset, view.offset);

    // A topic with delete retention is refused, naming it and the setting.
    client
        .create_topic_with_configs("deleting-configs", 1, 1, &[("cleanup.policy", "delete")])
        .await
        .unwrap();
    let err = ConfigTopic::new(client.clone(), "deleting-configs").read_to_end().await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{msg}");
    assert!(msg.contains("deleting-configs") && msg.contains("cleanup.policy=delete"), "{msg}");
    stop.cancel();
}
