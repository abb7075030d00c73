//! An application that embeds connectors on its own Tokio runtime, without the runner: an MQTT
//! source (`app/+/telemetry` -> Kafka `app.telemetry`) through a transform of its own, a source
//! connector of its own (a counter -> Kafka `app.commands`) and an MQTT sink (`app.commands` ->
//! MQTT `app/{key}/cmd`), until SIGINT. Set `MQTT_URL`, `KAFKA` and `OFFSETS` (a file).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use connector_core::kafka::{KafkaClient, KafkaConfig};
use connector_core::runtime::{SinkRuntime, SourceRuntime, SourceRuntimeConfig};
use connector_core::transform::{Transform, TransformError, TransformRecord};
use connector_core::{ConnectorConfig, FileOffsetStore, OffsetStore, Result, SinkConnector};
use connector_core::{SourceConnector, SourceOffset, SourcePartition, SourceRecord, SourceTask};
use connector_mqtt_sink::{MqttSinkConfig, MqttSinkConnector};
use connector_mqtt_source::{MqttSourceConfig, MqttSourceConnector};
use tokio_util::sync::CancellationToken;

/// Our transform: drops empty payloads and stamps the rest with the application's name.
#[derive(Debug)]
struct Stamp;
impl Transform for Stamp {
    fn apply(&self, mut r: TransformRecord) -> Result<Option<TransformRecord>, TransformError> {
        r.headers.push("app", "embedded-app");
        Ok(r.value.as_ref().is_some_and(|v| !v.is_empty()).then_some(r))
    }
}

/// Our connector: one numbered command per `every_ms` for `pump-1`, resuming after a restart.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct CounterConfig {
    every_ms: u64,
}
impl ConnectorConfig for CounterConfig {}
struct Counter(u64);
struct CounterTask(tokio::time::Interval, u64);
impl SourceConnector for Counter {
    type Config = CounterConfig;
    type TaskConfig = u64;
    type Task = CounterTask;
    fn create(_name: &str, config: CounterConfig) -> Result<Self> {
        Ok(Self(config.every_ms))
    }
    fn task_configs(&self, _max_tasks: usize) -> Result<Vec<u64>> {
        Ok(vec![self.0])
    }
    fn create_task(&self, ms: u64) -> Result<CounterTask> {
        Ok(CounterTask(tokio::time::interval(Duration::from_millis(ms)), 0))
    }
}
#[async_trait]
impl SourceTask for CounterTask {
    async fn start(&mut self, ctx: connector_core::SourceTaskContext) -> Result<()> {
        self.1 = ctx.offset(&SourcePartition::new()).and_then(|o| o.get_u64("next")).unwrap_or(0);
        Ok(())
    }
    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        self.0.tick().await; // cancel-safe: a dropped tick takes nothing
        let (n, offset) = (self.1, SourceOffset::from([("next", self.1 + 1)]));
        self.1 += 1;
        let record = SourceRecord::new("app.commands", format!("set speed {n}")).with_key("pump-1");
        Ok(vec![record.with_source(SourcePartition::new(), offset)])
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init(); // the library logs via `tracing`
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let mqtt = var("MQTT_URL", "mqtt://127.0.0.1:1883");
    let kafka = KafkaClient::connect(KafkaConfig::new([var("KAFKA", "127.0.0.1:9092")])).await?;
    let offsets: Arc<dyn OffsetStore> =
        Arc::new(FileOffsetStore::open(var("OFFSETS", "embedded-app-offsets.json")).await?);
    let source = MqttSourceConfig::new(&mqtt, vec!["app/+/telemetry".into()], "app.telemetry");
    let sink = MqttSinkConfig::new(&mqtt, vec!["app.commands".into()], "app/{key}/cmd");
    let counter = CounterConfig { every_ms: 200 };
    source.validate().into_result()?; // what `connect validate` checks, before `create`
    sink.validate().into_result()?;
    counter.validate().into_result()?;
    let source = MqttSourceConnector::create("telemetry", source)?;
    let sink = MqttSinkConnector::create("commands", sink)?;
    let counter = Counter::create("counter", counter)?;
    let mut stamped = SourceRuntimeConfig::default();
    stamped.pipeline.transforms.push("stamp", Box::new(Stamp), None, false);

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { tokio::signal::ctrl_c().await.map(|()| stop.cancel()) });
    tokio::try_join!(
        SourceRuntime::builder("telemetry", &source, kafka.clone(), Arc::clone(&offsets))
            .config(stamped)
            .run(shutdown.clone()),
        SourceRuntime::builder("counter", &counter, kafka.clone(), Arc::clone(&offsets))
            .run(shutdown.clone()),
        SinkRuntime::builder("commands", &sink, kafka, offsets).run(shutdown),
    )?;
    Ok(())
}
