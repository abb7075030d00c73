//! (7) Sparkplug B DATA through our `mqtt-source` with `format = "sparkplug_b"`: simulated edge
//! nodes (the `connector-sparkplug` encoder) send their NBIRTH, then NDATA messages of `metrics`
//! metrics each, by alias, at QoS 1; the source resolves the aliases from the BIRTHs and writes
//! JSON records (one per metric, or one per message). Payloads are encoded before the clock
//! starts, so the figures are the source's; every DATA message is counted in Kafka by the value
//! of its metric `m0` (the message's number).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_sparkplug::encode::EdgeNode;
use connector_sparkplug::{DataType, Value};
use connector_testkit::kafka;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::scenarios::{
    runner_config, spawn_connect, Brokers, Result, Settings, Throughput, PUBLISH_INFLIGHT,
    RUN_TIMEOUT,
};

/// Edge nodes the DATA messages are spread over.
pub const NODES: usize = 10;

/// The records a Sparkplug measurement writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One record per metric (the default of the source).
    Metric,
    /// One record per message.
    Message,
}

impl Output {
    fn key(self) -> &'static str {
        match self {
            Output::Metric => "metric",
            Output::Message => "message",
        }
    }
}

fn metric_name(k: usize) -> String {
    format!("m{k}")
}

/// A publisher connection counting its PUBACKs.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
}

impl Publisher {
    fn connect(port: u16, id: &str) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(PUBLISH_INFLIGHT);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self { client, acked }
    }

    async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| format!("sparkplug publish: {e}"))
    }
}

/// The message numbers (`m0`) of the DATA records among `records` from `base` on.
fn data_numbers(records: &[connector_core::SinkRecord], base: i64, output: Output) -> Vec<i64> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| r.offset >= base) {
        let Some(v) =
            r.value.as_deref().and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        else {
            continue;
        };
        let m0 = match output {
            Output::Metric => (v["name"] == "m0").then(|| v["value"].as_i64()).flatten(),
            Output::Message => v["metrics"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["name"] == "m0"))
                .and_then(|m| m["value"].as_i64()),
        };
        // BIRTHs carry m0 = -1.
        if let Some(i) = m0.filter(|i| *i >= 0) {
            out.push(i);
        }
    }
    out
}

/// Runs one measurement: `n` NDATA messages of `metrics` metrics over [`NODES`] edge nodes.
pub async fn source(
    b: &Brokers,
    s: &Settings,
    output: Output,
    metrics: usize,
    n: u64,
) -> Result<Throughput> {
    let id = b.id("sp");
    let topic = format!("bench-{id}");
    let group = format!("bench{id}");
    b.client.create_topic(&topic, 1, 1).await.map_err(|e| format!("create {topic}: {e}"))?;
    let mut c = runner_config(b, &format!("linger_ms = {}", s.linger_ms), &id, "mqtt-source");
    let _ = writeln!(c, "mqtt_url = \"{}\"\nmqtt_version = \"{}\"", b.mqtt.url(), s.mqtt_version);
    let _ = writeln!(c, "topics = [\"spBv1.0/{group}/#\"]\nqos = 1\nkafka_topic = \"{topic}\"");
    let _ = writeln!(c, "format = \"sparkplug_b\"\ntasks = 1");
    // Sparkplug needs tolerance "all" (DATA before BIRTH is routine); none is expected here.
    let dlq = format!("{topic}-dlq");
    b.client.create_topic(&dlq, 1, 1).await.map_err(|e| format!("create {dlq}: {e}"))?;
    let _ = writeln!(c, "errors = {{ tolerance = \"all\", dead_letter_topic = \"{dlq}\" }}");
    if let Some(n) = s.source_inflight {
        let _ = writeln!(c, "inflight = {n}");
    }
    // A BIRTH's acknowledgement (and those after it) waits for the offset store to have its
    // state: flush often, so that the births' acks are out before the clock starts.
    let _ = writeln!(c, "[connector.runtime]\noffset_flush_interval_ms = 200");
    let _ =
        writeln!(c, "[connector.sparkplug]\nmode = \"persistent\"\noutput = \"{}\"", output.key());
    let mut process = spawn_connect(b, s, &id, &c)?;

    let publisher = Publisher::connect(b.mqtt.port(), &format!("{id}-pub"));
    let names: Vec<String> = (0..metrics).map(metric_name).collect();
    let mut edges: Vec<EdgeNode> =
        (0..NODES).map(|i| EdgeNode::new(&group, format!("n{i}"))).collect();
    let birth = |edge: &mut EdgeNode| {
        let m: Vec<(&str, Option<u64>, Value, DataType)> = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let (value, datatype) = match k {
                    0 => (Value::Int(-1), DataType::Int64),
                    _ => (Value::Double(0.0), DataType::Double),
                };
                (name.as_str(), Some(k as u64 + 1), value, datatype)
            })
            .collect();
        edge.nbirth(&m, 0).map_err(|e| format!("encode NBIRTH: {e}"))
    };
    // The first node's NBIRTH, until the source has subscribed and wrote its records.
    let mut births = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.client.end_offset(&topic, 0).await.map_err(|e| e.to_string())? == 0 {
        if Instant::now() > deadline {
            return Err(format!("no Sparkplug record within 30 s:\n{}", process.log.display()));
        }
        process.check_running()?;
        let (t, p) = birth(&mut edges[0])?;
        publisher.publish(t, p).await?;
        births += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for edge in edges.iter_mut().skip(1) {
        let (t, p) = birth(edge)?;
        publisher.publish(t, p).await?;
        births += 1;
    }
    // Every node online in Kafka, and the births' acks out.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = kafka::consume_all(&b.client, &topic).await.map_err(|e| e.to_string())?;
        let online: HashSet<String> = records
            .iter()
            .filter_map(|r| r.value.as_deref())
            .filter_map(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .filter(|v| v["type"] == "status" && v["status"] == "online")
            .filter_map(|v| v["node"].as_str().map(str::to_owned))
            .collect();
        if online.len() == NODES {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {NODES} edge nodes online in Kafka", online.len()));
        }
        process.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.acked.load(Ordering::Relaxed) < births {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {births} NBIRTHs acknowledged within 10 s",
                publisher.acked.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The DATA messages, encoded before the clock starts.
    let mut data = Vec::with_capacity(n as usize);
    for i in 0..n {
        let edge = &mut edges[(i % NODES as u64) as usize];
        let values: Vec<(&str, Value)> = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let v = match k {
                    0 => Value::Int(i as i64),
                    _ => Value::Double((i as f64) * 0.5 + k as f64),
                };
                (name.as_str(), v)
            })
            .collect();
        data.push(edge.ndata(&values, i).map_err(|e| format!("encode NDATA: {e}"))?);
    }
    let per_message = match output {
        Output::Metric => metrics as i64,
        Output::Message => 1,
    };
    let expected = n as i64 * per_message;
    let base = b.client.end_offset(&topic, 0).await.map_err(|e| e.to_string())?;
    let before = (b.brokers_sample(), process.sample());
    let started = Instant::now();
    let publishing = tokio::spawn(async move {
        for (t, p) in data {
            publisher.publish(t, p).await?;
        }
        Ok::<_, String>(publisher)
    });
    let idle = Duration::from_secs(3);
    let (mut count, mut last_progress) = (0i64, Instant::now());
    let mut checks = 0u32;
    while count < expected && started.elapsed() < RUN_TIMEOUT && last_progress.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let end = b.client.end_offset(&topic, 0).await.map_err(|e| e.to_string())?;
        if end - base > count {
            count = end - base;
            last_progress = Instant::now();
        }
        checks += 1;
        if checks % 200 == 0 {
            process.check_running()?;
        }
    }
    let after = (b.brokers_sample(), process.sample());
    let _publisher = publishing.await.map_err(|e| e.to_string())??;
    process.check_running()?;
    drop(process);
    let records = kafka::consume_all(&b.client, &topic).await.map_err(|e| e.to_string())?;
    let numbers = data_numbers(&records, base, output);
    let distinct: HashSet<i64> = numbers.iter().copied().collect();
    let mut t = Throughput {
        sent: n,
        delivered: distinct.len() as u64,
        duplicates: (numbers.len() - distinct.len()) as u64,
        ..Throughput::default()
    };
    t.finish(
        last_progress.saturating_duration_since(started),
        before.0,
        after.0,
        Some((before.1, after.1)),
    );
    Ok(t)
}
