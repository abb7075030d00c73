//! The group protocol client on a real broker (Tansu 0.6): members join and get the leader's
//! assignment, a new member and a leaving one make the others rebalance, a member that stops
//! heartbeating is dropped (the time it takes is printed), offsets commit and read back (also
//! through librdkafka), and DescribeGroups. Tansu's deviations from Kafka are asserted as what
//! they are, with a comment; docs/kafka-io.md lists them.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connector_core::kafka::group::{
    committed_offsets, consumer_protocol, describe_group, Generation, GroupMember,
    GroupOffsetStore, GroupTimeouts, HeartbeatOutcome, JoinedGroup,
};
use connector_core::kafka::KafkaClient;
use connector_core::OffsetStore;
use connector_core::TopicPartition;
use connector_testkit::{init_tracing, Tansu};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

const TIMEOUTS: GroupTimeouts = GroupTimeouts {
    session: Duration::from_secs(5),
    heartbeat: Duration::from_millis(500),
    rebalance: Duration::from_secs(10),
};

/// The leader's assignment: `<member id>|<every member's metadata, sorted, comma-separated>`.
fn assign(joined: &JoinedGroup) -> Vec<(String, Bytes)> {
    let mut all: Vec<String> =
        joined.members.iter().map(|m| String::from_utf8_lossy(&m.metadata).into_owned()).collect();
    all.sort();
    let all = all.join(",");
    joined
        .members
        .iter()
        .map(|m| (m.member_id.clone(), Bytes::from(format!("{}|{all}", m.member_id))))
        .collect()
}

/// What a running member last saw.
#[derive(Default)]
struct Seen {
    generation: Option<Generation>,
    last_heartbeat: Option<Instant>,
    /// When a heartbeat first said RebalanceNeeded or Lost.
    first_rebalance: Option<Instant>,
}

/// A member joining, heartbeating every 500 ms and rejoining whenever told to, in a task.
struct Running {
    name: String,
    seen: Arc<Mutex<Seen>>,
    rebalances: Arc<AtomicUsize>,
    task: JoinHandle<GroupMember>,
    stop: tokio::sync::watch::Sender<bool>,
}

fn run(client: &KafkaClient, group: &str, name: &str) -> Running {
    let mut member = GroupMember::new(client.clone(), group, "test", name, TIMEOUTS);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rebalances = Arc::new(AtomicUsize::new(0));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let protocols = vec![("p".to_owned(), Bytes::from(name.to_owned()))];
    let (s, r) = (seen.clone(), rebalances.clone());
    let task = tokio::spawn(async move {
        'join: loop {
            let generation = member.join(&protocols, &mut assign).await.unwrap();
            s.lock().generation = Some(generation);
            loop {
                tokio::select! {
                    _ = stopped.changed() => return member,
                    () = tokio::time::sleep(TIMEOUTS.heartbeat) => {}
                }
                match member.heartbeat().await {
                    Ok(HeartbeatOutcome::Stable) => s.lock().last_heartbeat = Some(Instant::now()),
                    Ok(_) => {
                        let mut seen = s.lock();
                        seen.last_heartbeat = Some(Instant::now());
                        seen.first_rebalance.get_or_insert_with(Instant::now);
                        drop(seen);
                        r.fetch_add(1, Ordering::SeqCst);
                        continue 'join;
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        }
    });
    Running { name: name.to_owned(), seen, rebalances, task, stop }
}

impl Running {
    fn generation(&self) -> Option<Generation> {
        self.seen.lock().generation.clone()
    }

    /// Stops heartbeating and hands the member back (still in the group).
    async fn stop(self) -> GroupMember {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

/// The member names the leader saw, from an assignment.
fn members_of(g: &Generation) -> BTreeSet<String> {
    let s = String::from_utf8_lossy(&g.assignment).into_owned();
    let all = s.split_once('|').map(|(_, all)| all.to_owned()).unwrap_or_default();
    all.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Waits until every member in `ms` is in the same generation, whose assignments name exactly
/// `names`, each its own member id; returns that generation id.
async fn settled(ms: &[&Running], names: &[&str], within: Duration) -> i32 {
    let want: BTreeSet<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let deadline = Instant::now() + within;
    loop {
        let gens: Vec<Option<Generation>> = ms.iter().map(|m| m.generation()).collect();
        let ok = gens.iter().all(|g| {
            g.as_ref().is_some_and(|g| {
                members_of(g) == want
                    && String::from_utf8_lossy(&g.assignment)
                        .starts_with(&format!("{}|", g.member_id))
            })
        });
        let ids: BTreeSet<i32> = gens.iter().flatten().map(|g| g.id).collect();
        if ok && ids.len() == 1 {
            return *ids.iter().next().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "members {:?} did not settle on {want:?} within {within:?}: {gens:?}",
            ms.iter().map(|m| &m.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_rebalance_on_a_new_member_and_on_leave() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let started = Instant::now();

    // (a) Three members: the leader sees all three metadata blobs, each gets its own assignment.
    let a = run(&client, "g-join", "a");
    let b = run(&client, "g-join", "b");
    let c = run(&client, "g-join", "c");
    let first = settled(&[&a, &b, &c], &["a", "b", "c"], Duration::from_secs(30)).await;
    println!("three members settled in generation {first} after {:?}", started.elapsed());

    // (b) A fourth joins: the others are told to rebalance and get a new generation.
    let before: Vec<usize> =
        [&a, &b, &c].iter().map(|m| m.rebalances.load(Ordering::SeqCst)).collect();
    let t = Instant::now();
    let d = run(&client, "g-join", "d");
    let second = settled(&[&a, &b, &c, &d], &["a", "b", "c", "d"], Duration::from_secs(30)).await;
    println!("four members settled in generation {second} after {:?}", t.elapsed());
    assert!(second > first);
    for (m, was) in [&a, &b, &c].iter().zip(before) {
        assert!(m.rebalances.load(Ordering::SeqCst) > was, "{} heard RebalanceNeeded", m.name);
    }

    // (d) LeaveGroup: the others rebalance at once.
    let t = Instant::now();
    let mut gone = d.stop().await;
    gone.leave().await.unwrap();
    assert!(gone.generation().is_none());
    let third = settled(&[&a, &b, &c], &["a", "b", "c"], Duration::from_secs(20)).await;
    let took = t.elapsed();
    println!("after LeaveGroup the others settled in generation {third} after {took:?}");
    assert!(third > second);
    // Expiry could not be this fast: it takes the session plus at least one 3 s Tansu pause.
    assert!(took < TIMEOUTS.session + Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_heartbeating_is_dropped_from_the_next_generation() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let a = run(&client, "g-expire", "a");
    let b = run(&client, "g-expire", "b");
    let c = run(&client, "g-expire", "c");
    let gone_seen = c.seen.clone();
    let first = settled(&[&a, &b, &c], &["a", "b", "c"], Duration::from_secs(30)).await;

    // (c) c stops heartbeating and goes away without LeaveGroup (as after a SIGKILL).
    tokio::time::sleep(TIMEOUTS.heartbeat * 2).await;
    let gone = c.stop().await;
    let last = c_last_heartbeat(&gone_seen);
    drop(gone);
    a.seen.lock().first_rebalance = None;
    b.seen.lock().first_rebalance = None;
    let second = settled(&[&a, &b], &["a", "b"], Duration::from_secs(40)).await;
    let took = last.elapsed();
    let told = [&a, &b].iter().filter_map(|m| m.seen.lock().first_rebalance).min().unwrap();
    println!(
        "session {:?}: generation {second} without the silent member {took:?} after its last heartbeat (was {first}); the first survivor was told to rebalance {:?} after it",
        TIMEOUTS.session,
        told - last
    );
    assert!(told - last >= TIMEOUTS.session - Duration::from_millis(200), "not before the session");
}

fn c_last_heartbeat(seen: &Mutex<Seen>) -> Instant {
    seen.lock().last_heartbeat.expect("the member heartbeated")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_commit_and_read_back_and_the_group_describes_itself() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    client.create_topic("orders", 2, 1).await.unwrap();
    let subscription = consumer_protocol::encode_subscription(&["orders".to_owned()]);
    let protocols = vec![("range".to_owned(), subscription)];
    let mut m1 =
        GroupMember::new(client.clone(), "g-offsets", "consumer", "worker-1/sink-0", TIMEOUTS);
    let g1 = m1.join(&protocols, &mut assign_all).await.unwrap();
    assert_eq!(
        consumer_protocol::decode_assignment(&g1.assignment).unwrap(),
        [TopicPartition::new("orders", 0), TopicPartition::new("orders", 1)]
    );

    // (e) Commit, read back ourselves and through librdkafka.
    let committer = m1.committer().unwrap();
    assert_eq!(committer.generation_id(), g1.id);
    committer
        .commit(&[(TopicPartition::new("orders", 0), 42), (TopicPartition::new("orders", 1), 7)])
        .await
        .unwrap();
    let read = committed_offsets(&client, "g-offsets").await.unwrap();
    assert_eq!(read.get(&TopicPartition::new("orders", 0)), Some(&42), "{read:?}");
    assert_eq!(read.get(&TopicPartition::new("orders", 1)), Some(&7), "{read:?}");
    assert_eq!(read.len(), 2);
    let store = GroupOffsetStore::new(client.clone(), committer.clone());
    assert_eq!(
        store.load("sink").await.unwrap().kafka_offset(&TopicPartition::new("orders", 1)),
        Some(7)
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/group-offsets.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &tansu.bootstrap(), "g-offsets"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "group-offsets.py: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["offsets"],
        serde_json::json!([
            {"topic": "orders", "partition": 0, "offset": 42},
            {"topic": "orders", "partition": 1, "offset": 7}
        ]),
        "librdkafka reads what we committed"
    );

    // (g) DescribeGroups while a second member is in.
    let mut m2 =
        GroupMember::new(client.clone(), "g-offsets", "consumer", "worker-2/sink-1", TIMEOUTS);
    let (mut f1, mut f2) = (assign_all, assign_all);
    let (g2, rebalance) = tokio::join!(m2.join(&protocols, &mut f2), async {
        // m1 is told to rebalance and joins the new generation.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if m1.heartbeat().await.unwrap() != HeartbeatOutcome::Stable {
                return m1.join(&protocols, &mut f1).await.unwrap();
            }
            assert!(Instant::now() < deadline, "m1 never heard of the rebalance");
        }
    });
    let (g2, g1b) = (g2.unwrap(), rebalance);
    let description = describe_group(&client, "g-offsets").await.unwrap();
    println!("DescribeGroups on Tansu: {description:?}");
    let ids: BTreeSet<&str> = description.members.iter().map(|m| m.member_id.as_str()).collect();
    assert!(
        ids.contains(g2.member_id.as_str()) && ids.contains(g1b.member_id.as_str()),
        "{description:?}"
    );
    assert_eq!(description.protocol_type, "consumer");
    // Tansu 0.6 lists member ids only: client id, host, metadata and assignment are empty and
    // protocol_data is "" (Kafka fills them all). The member ids start with the client id.
    for m in &description.members {
        assert_eq!((m.client_id.as_str(), m.client_host.as_str()), ("", ""), "{m:?}");
        assert!(m.metadata.is_empty() && m.assignment.is_empty(), "{m:?}");
        assert!(m.member_id.starts_with("worker-"), "{m:?}");
    }

    // (f) A commit with the generation before the rebalance: Kafka answers IllegalGeneration,
    // which commit() returns as an error (see the unit test of commit_errors). Tansu 0.6 does
    // not check generation or member and stores the offset.
    assert!(g1b.id > g1.id);
    let stale = committer.commit(&[(TopicPartition::new("orders", 0), 43)]).await;
    assert!(stale.is_ok(), "Tansu 0.6 accepts a stale generation's commit: {stale:?}");
    let read = committed_offsets(&client, "g-offsets").await.unwrap();
    assert_eq!(read.get(&TopicPartition::new("orders", 0)), Some(&43));
    m2.leave().await.unwrap();
    m1.leave().await.unwrap();
}

/// Both partitions of `orders` to the first member, nothing to the others.
fn assign_all(j: &JoinedGroup) -> Vec<(String, Bytes)> {
    let all = [TopicPartition::new("orders", 0), TopicPartition::new("orders", 1)];
    let mut out: Vec<(String, Bytes)> =
        j.members.iter().map(|m| (m.member_id.clone(), Bytes::new())).collect();
    out[0].1 = consumer_protocol::encode_assignment(&all);
    out
}
