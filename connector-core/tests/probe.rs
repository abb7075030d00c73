//! The health probe on a real broker behind a fault proxy: healthy while Kafka answers,
//! unhealthy (naming the broker) within a bound once the network is cut, healthy again after it
//! heals; and `worker_health` following it.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::KafkaClient;
use connector_core::runner::control::probe::{worker_health, KafkaProbe};
use connector_core::runner::control::Health;
use connector_core::runtime::Worker;
use connector_core::MemoryOffsetStore;
use connector_testkit::{init_tracing, wait_until, Tansu, TansuStorage};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_millis(300);
/// A cut must show within two periods (one try in flight, one more); a second of slack.
const CUT_BOUND: Duration = Duration::from_millis(2 * 300 + 1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_turns_unhealthy_when_kafka_is_cut_and_healthy_when_it_heals() {
    init_tracing();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let mut config = tansu.kafka_config();
    config.request_timeout_ms = 2_000;
    let client = KafkaClient::connect(config).await.unwrap();
    let worker = Worker::new(client.clone(), Arc::new(MemoryOffsetStore::new()));
    let stop = CancellationToken::new();
    let probe = KafkaProbe::spawn(client, EVERY, stop.clone());

    wait_until("the probe's first answer", Duration::from_secs(10), || probe.state().is_ok())
        .await
        .unwrap();
    assert!(probe.is_started());
    assert_eq!(worker_health(&worker, &probe), Health::Healthy);

    proxy.cut();
    let cut_at = Instant::now();
    wait_until("unhealthy after the cut", CUT_BOUND, || probe.state().is_err()).await.unwrap();
    let reason = probe.state().unwrap_err();
    assert!(reason.contains("Kafka"), "{reason}");
    assert!(reason.contains(&proxy.host_port()), "the reason names the broker: {reason}");
    match worker_health(&worker, &probe) {
        Health::Unhealthy(why) => assert!(why.contains("Kafka"), "{why}"),
        other => panic!("expected Unhealthy, got {other:?}"),
    }
    tracing::info!(after_ms = cut_at.elapsed().as_millis(), %reason, "probe saw the cut");

    // A silent partition (no FIN, no RST) must time out within the same bound.
    proxy.heal();
    wait_until("healthy after the heal", Duration::from_secs(10), || probe.state().is_ok())
        .await
        .unwrap();
    proxy.blackhole();
    wait_until("unhealthy in a blackhole", CUT_BOUND, || probe.state().is_err()).await.unwrap();

    proxy.heal();
    wait_until("healthy again", Duration::from_secs(10), || probe.state().is_ok()).await.unwrap();
    assert_eq!(worker_health(&worker, &probe), Health::Healthy);

    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_health_is_starting_before_the_first_try_finishes() {
    init_tracing();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let client = KafkaClient::connect(tansu.kafka_config()).await.unwrap();
    let worker = Worker::new(client.clone(), Arc::new(MemoryOffsetStore::new()));
    // In a blackhole the first try hangs for a whole period: "starting" until it times out.
    proxy.blackhole();
    let stop = CancellationToken::new();
    let probe = KafkaProbe::spawn(client, Duration::from_secs(2), stop.clone());
    assert!(!probe.is_started());
    assert!(matches!(worker_health(&worker, &probe), Health::Starting(_)));
    wait_until("the first try timed out", Duration::from_secs(5), || probe.is_started())
        .await
        .unwrap();
    assert!(matches!(worker_health(&worker, &probe), Health::Unhealthy(_)));
    stop.cancel();
}
