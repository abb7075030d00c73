//! The MQTT sink on real Tansu and Mosquitto: delivery in key order to an independent subscriber,
//! crashes before and after PUBACK, an MQTT cut, a broker restart, the injection guard, `start =
//! "latest"`, retain and tombstones.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::{KafkaClient, ProducerRecord};
use connector_core::runtime::{SinkRuntime, SinkRuntimeConfig};
use connector_core::{
    MemoryOffsetStore, OffsetStore, Result, SinkConnector, StartFrom, TopicPartition,
};
use connector_mqtt_sink::{MqttSinkConfig, MqttSinkConnector, Tombstones};
use connector_testkit::{
    init_tracing, wait_until, FaultProxy, Mosquitto, MqttPublisher, MqttSubscriber, Tansu,
};
use parking_lot::Mutex;
use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    handle: JoinHandle<Result<()>>,
    shutdown: CancellationToken,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }

    /// A crash: dropped without shutdown, nothing more committed.
    async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

fn start(
    name: &str,
    config: MqttSinkConfig,
    client: &KafkaClient,
    store: &Arc<MemoryOffsetStore>,
    commit_interval_ms: u64,
) -> Running {
    start_with_store(name, config, client, Arc::clone(store) as _, commit_interval_ms)
}

/// Loads from the store it wraps; every save fails (retriable), so acknowledged records stay
/// uncommitted (commits follow PUBACKs, so only a store that cannot save leaves them so).
#[derive(Debug)]
struct FrozenStore(Arc<MemoryOffsetStore>);

#[async_trait::async_trait]
impl OffsetStore for FrozenStore {
    async fn load(&self, namespace: &str) -> Result<connector_core::OffsetMap> {
        self.0.load(namespace).await
    }
    async fn save(&self, _: &str, _: &connector_core::OffsetMap) -> Result<()> {
        Err(connector_core::Error::retriable("offsets store frozen by the test"))
    }
}

fn start_with_store(
    name: &str,
    config: MqttSinkConfig,
    client: &KafkaClient,
    store: Arc<dyn OffsetStore>,
    commit_interval_ms: u64,
) -> Running {
    let connector = MqttSinkConnector::create(name, config).unwrap();
    let shutdown = CancellationToken::new();
    let runtime = SinkRuntimeConfig { commit_interval_ms, ..SinkRuntimeConfig::default() };
    let (name, client, t) = (name.to_owned(), client.clone(), shutdown.clone());
    let handle = tokio::spawn(async move {
        SinkRuntime::builder(name.as_str(), &connector, client, store)
            .config(runtime)
            .max_tasks(1)
            .run(t)
            .await
    });
    Running { handle, shutdown }
}

async fn produce(client: &KafkaClient, topic: &str, from: usize, to: usize) {
    let records = (from..to)
        .map(|i| ProducerRecord::new(topic, format!("{i}")).with_key(format!("car-{}", i % 10)))
        .collect();
    client.produce(records).await.unwrap();
}

fn payloads(sub: &MqttSubscriber) -> Vec<(String, String)> {
    sub.messages()
        .into_iter()
        .map(|p| (p.topic, String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect()
}

async fn committed(store: &MemoryOffsetStore, name: &str, topic: &str) -> i64 {
    store.load(name).await.unwrap().kafka_offset(&TopicPartition::new(topic, 0)).unwrap_or(0)
}

/// Distinct payloads received, and how many arrived more than once.
fn tally(msgs: &[(String, String)]) -> (usize, usize) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, p) in msgs {
        *counts.entry(p.as_str()).or_default() += 1;
    }
    (counts.len(), msgs.len() - counts.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_commands_reach_each_car_in_key_order_at_an_independent_subscriber() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let mut kc = tansu.kafka_config();
    kc.topic_partitions = 4;
    let client = KafkaClient::connect(kc).await.unwrap();

    // mosquitto_sub, not our code, is the receiver.
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.port().to_string(),
            "-t",
            "cars/+/cmd",
            "-q",
            "1",
            "-v",
            "-i",
            "independent",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (install mosquitto-clients)");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink_lines = Arc::clone(&lines);
    let stdout = sub.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = reader.next_line().await {
            sink_lines.lock().push(l);
        }
    });
    let probe = MqttPublisher::connect(&mqtt.url(), "probe").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.lock().iter().any(|l| l.ends_with(" probe")) {
        assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
        probe.publish("cars/probe/cmd", QoS::AtLeastOnce, false, b"probe".to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    produce(&client, "commands", 0, 10_000).await;
    let store = Arc::new(MemoryOffsetStore::new());
    let sink = start(
        "commands",
        MqttSinkConfig::new(mqtt.url(), vec!["commands".into()], "cars/{key}/cmd"),
        &client,
        &store,
        200,
    );
    wait_until("10,000 commands", Duration::from_secs(60), || {
        lines.lock().iter().filter(|l| !l.ends_with(" probe")).count() >= 10_000
    })
    .await
    .unwrap();
    sink.stop().await;

    let mut per_car: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for l in lines.lock().iter().filter(|l| !l.ends_with(" probe")) {
        let (topic, value) = l.split_once(' ').unwrap();
        per_car.entry(topic.to_owned()).or_default().push(value.parse().unwrap());
    }
    assert_eq!(per_car.len(), 10);
    for (topic, values) in &per_car {
        let car: usize =
            topic.trim_start_matches("cars/car-").trim_end_matches("/cmd").parse().unwrap();
        let expected: Vec<usize> = (0..10_000).filter(|i| i % 10 == car).collect();
        assert_eq!(values, &expected, "{topic}: every command, in order, once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_fetch_before_the_broker_got_the_publishes_loses_nothing() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let proxy = FaultProxy::start(mqtt.addr()).await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "cars/#", QoS::AtLeastOnce).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let config = MqttSinkConfig::new(
        format!("mqtt://{}", proxy.host_port()),
        vec!["row3".into()],
        "cars/{key}/cmd",
    );

    let sink = start("row3", config.clone(), &client, &store, 100);
    produce(&client, "row3", 0, 100).await;
    sub.wait_for(100, Duration::from_secs(30)).await.unwrap();
    // The first 100 must be settled (PUBACKed and committed) before the cut, or a PUBACK still
    // on its way would make their republish count as a duplicate of the held ones.
    wait_until("offset 100 committed", Duration::from_secs(10), || {
        futures::executor::block_on(committed(&store, "row3", "row3")) == 100
    })
    .await
    .unwrap();
    // Publishes now leave the sink but never reach the broker; no PUBACK comes back.
    proxy.blackhole();
    produce(&client, "row3", 100, 400).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(committed(&store, "row3", "row3").await <= 100, "offsets wait for PUBACKs");
    sink.crash().await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.heal();

    let sink = start("row3", config, &client, &store, 100);
    sub.wait_for(400, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.stop().await;
    let (distinct, duplicates) = tally(&payloads(&sub));
    assert_eq!(distinct, 400, "nothing lost");
    assert_eq!(duplicates, 0, "none of the held publishes had reached the broker");
    assert_eq!(committed(&store, "row3", "row3").await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_pubacks_before_the_offset_commit_republishes_only_the_uncommitted() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "cars/#", QoS::AtLeastOnce).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let config = MqttSinkConfig::new(mqtt.url(), vec!["row4".into()], "cars/{key}/cmd");

    // Commit often at first...
    let sink = start("row4", config.clone(), &client, &store, 100);
    produce(&client, "row4", 0, 200).await;
    sub.wait_for(200, Duration::from_secs(30)).await.unwrap();
    wait_until("offset 200 committed", Duration::from_secs(10), || {
        futures::executor::block_on(committed(&store, "row4", "row4")) == 200
    })
    .await
    .unwrap();
    sink.stop().await;
    // ...then not at all (saves fail), and crash after the broker acknowledged everything.
    let frozen = Arc::new(FrozenStore(Arc::clone(&store)));
    let sink = start_with_store("row4", config.clone(), &client, frozen, 3_600_000);
    produce(&client, "row4", 200, 500).await;
    sub.wait_for(500, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.crash().await;
    assert_eq!(committed(&store, "row4", "row4").await, 200);

    let sink = start("row4", config, &client, &store, 100);
    sub.wait_for(800, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.stop().await;
    let (distinct, duplicates) = tally(&payloads(&sub));
    assert_eq!(distinct, 500);
    assert_eq!(duplicates, 300, "exactly the records after the last commit are published again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_mqtt_broker_is_cut_offsets_do_not_pass_unacknowledged_publishes() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let proxy = FaultProxy::start(mqtt.addr()).await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "cars/#", QoS::AtLeastOnce).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let mut config = MqttSinkConfig::new(
        format!("mqtt://{}", proxy.host_port()),
        vec!["cut".into()],
        "cars/{key}/cmd",
    );
    config.connection.reconnect_backoff.max_ms = 1_000;
    let sink = start("cut", config, &client, &store, 100);

    let producing = {
        let client = client.clone();
        tokio::spawn(async move {
            for chunk in 0..40 {
                produce(&client, "cut", chunk * 100, (chunk + 1) * 100).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_cut = committed(&store, "cut", "cut").await;
    let delivered_at_cut = tally(&payloads(&sub)).0 as i64;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        committed(&store, "cut", "cut").await,
        at_cut,
        "no commit while nothing is acknowledged"
    );
    assert!(at_cut <= delivered_at_cut, "committed {at_cut} but only {delivered_at_cut} delivered");
    proxy.heal();
    producing.await.unwrap();
    wait_until("all 4000 delivered", Duration::from_secs(60), || tally(&payloads(&sub)).0 == 4_000)
        .await
        .unwrap();
    wait_until("offset 4000 committed", Duration::from_secs(10), || {
        futures::executor::block_on(committed(&store, "cut", "cut")) == 4_000
    })
    .await
    .unwrap();
    sink.stop().await;
}

/// 3000 commands, Mosquitto restarted (state saved) mid-stream: every one arrives.
async fn restart_mid_stream(name: &str, adjust: impl FnOnce(&mut MqttSinkConfig)) {
    init_tracing();
    let mut mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "cars/#", QoS::AtLeastOnce).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let mut config = MqttSinkConfig::new(mqtt.url(), vec![name.into()], "cars/{key}/cmd");
    adjust(&mut config);
    let sink = start(name, config, &client, &store, 100);
    let producing = {
        let (client, name) = (client.clone(), name.to_owned());
        tokio::spawn(async move {
            for chunk in 0..30 {
                produce(&client, &name, chunk * 100, (chunk + 1) * 100).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_until("some delivered", Duration::from_secs(30), || sub.count() >= 800).await.unwrap();
    mqtt.restart().await.unwrap();
    producing.await.unwrap();
    wait_until("all 3000 delivered", Duration::from_secs(60), || tally(&payloads(&sub)).0 == 3_000)
        .await
        .unwrap();
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mosquitto_restart_mid_stream_loses_nothing() {
    restart_mid_stream("restart", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_kept_session_a_mosquitto_restart_loses_nothing() {
    // The broker keeps our session: in-flight publishes are resent under their ids (DUP).
    restart_mid_stream("kept", |c| c.clean_session = false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publishes_survive_a_mosquitto_restart() {
    restart_mid_stream("exactly", |c| c.qos = 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_would_escape_the_topic_are_rejected_clearly_and_published_nowhere() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let everything =
        MqttSubscriber::connect(&mqtt.url(), "everything", "#", QoS::AtLeastOnce).await.unwrap();
    for (i, key) in ["x/#", "a/b", "+", ""].into_iter().enumerate() {
        let topic = format!("bad-{i}");
        client
            .produce(vec![ProducerRecord::new(topic.as_str(), "open the doors").with_key(key)])
            .await
            .unwrap();
        let store = Arc::new(MemoryOffsetStore::new());
        let config = MqttSinkConfig::new(mqtt.url(), vec![topic.clone()], "cars/{key}/cmd");
        let sink = start(&topic, config, &client, &store, 100);
        let err = tokio::time::timeout(Duration::from_secs(30), sink.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("record rejected:"), "{key:?}: {msg}");
        assert!(msg.contains("{key}"), "{key:?}: {msg}");
        assert!(msg.contains("not published anywhere"), "{key:?}: {msg}");
        assert!(
            msg.contains(&format!("topic={topic}")) && msg.contains("offset=0"),
            "{key:?}: {msg}"
        );
        assert_eq!(committed(&store, &topic, &topic).await, 0, "nothing committed past it");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The connectors' own status messages (`connect/<client>/status`) are all that arrived.
    let published: Vec<String> = everything
        .messages()
        .into_iter()
        .map(|m| m.topic)
        .filter(|t| !(t.starts_with("connect/bad-") && t.ends_with("/status")))
        .collect();
    assert!(published.is_empty(), "nothing was published anywhere: {published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latest_skips_history() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    produce(&client, "latest", 0, 100).await;
    let sub =
        MqttSubscriber::connect(&mqtt.url(), "watcher", "cars/#", QoS::AtLeastOnce).await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let mut config = MqttSinkConfig::new(mqtt.url(), vec!["latest".into()], "cars/{key}/cmd");
    config.start = StartFrom::Latest;
    let sink = start("latest", config, &client, &store, 100);
    // Probe until the sink is reading, then send the new commands.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.count() == 0 {
        client
            .produce(vec![ProducerRecord::new("latest", "probe").with_key("probe")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(Instant::now() < deadline, "the sink never started reading");
    }
    produce(&client, "latest", 1000, 1010).await;
    wait_until("the new commands", Duration::from_secs(30), || {
        payloads(&sub).iter().filter(|(_, p)| p != "probe").count() >= 10
    })
    .await
    .unwrap();
    sink.stop().await;
    let got: Vec<usize> = payloads(&sub)
        .iter()
        .filter(|(_, p)| p != "probe")
        .map(|(_, p)| p.parse().unwrap())
        .collect();
    assert!(got.iter().all(|v| *v >= 1000), "history skipped: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_and_tombstones_behave_as_configured() {
    init_tracing();
    let mqtt = Mosquitto::start().await.unwrap();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let store = Arc::new(MemoryOffsetStore::new());
    let tombstone = |key: &str| ProducerRecord {
        value: None,
        ..ProducerRecord::new("state", "").with_key(key.to_owned())
    };

    // retain from config, tombstones skipped: car-1 keeps its retained state.
    let mut config = MqttSinkConfig::new(mqtt.url(), vec!["state".into()], "state/{key}");
    config.retain = true;
    client
        .produce(vec![ProducerRecord::new("state", "on").with_key("car-1"), tombstone("car-1")])
        .await
        .unwrap();
    let sink = start("state", config.clone(), &client, &store, 100);
    wait_until("offset 2 committed", Duration::from_secs(20), || {
        futures::executor::block_on(committed(&store, "state", "state")) == 2
    })
    .await
    .unwrap();
    sink.stop().await;
    let late = MqttSubscriber::connect(&mqtt.url(), "late-1", "state/car-1", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = late.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (got[0].retain, &got[0].payload[..]),
        (true, &b"on"[..]),
        "retained; the skipped tombstone left it"
    );

    // tombstones published: an empty retained payload clears it.
    config.tombstones = Tombstones::Publish;
    client.produce(vec![tombstone("car-1")]).await.unwrap();
    let sink = start("state", config.clone(), &client, &store, 100);
    wait_until("offset 3 committed", Duration::from_secs(20), || {
        futures::executor::block_on(committed(&store, "state", "state")) == 3
    })
    .await
    .unwrap();
    sink.stop().await;
    let later = MqttSubscriber::connect(&mqtt.url(), "late-2", "state/car-1", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(later.count(), 0, "the retained message was cleared");

    // retain from a header.
    config.retain = false;
    config.retain_header = Some("retain".into());
    client
        .produce(vec![
            ProducerRecord::new("state", "kept").with_key("car-2").with_header("retain", "true"),
            ProducerRecord::new("state", "passing")
                .with_key("car-3")
                .with_header("retain", "false"),
        ])
        .await
        .unwrap();
    let sink = start("state", config, &client, &store, 100);
    wait_until("offset 5 committed", Duration::from_secs(20), || {
        futures::executor::block_on(committed(&store, "state", "state")) == 5
    })
    .await
    .unwrap();
    sink.stop().await;
    let latest =
        MqttSubscriber::connect(&mqtt.url(), "late-3", "state/#", QoS::AtLeastOnce).await.unwrap();
    wait_until("a retained message", Duration::from_secs(20), || latest.count() > 0).await.unwrap();
    // Retained messages come right after the subscription; give a wrongly retained one a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retained: Vec<_> = latest.messages().into_iter().map(|p| p.topic).collect();
    assert_eq!(retained, ["state/car-2"], "only the record whose header said so was retained");
}
