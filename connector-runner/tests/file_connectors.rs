//! The example file connectors on a real Kafka-compatible broker (Tansu):
//! (a) keys, headers and timestamps arrive intact; (b) a killed source resumes from its committed
//! offset; (c) a killed sink resumes from its committed offset; (d) a Kafka restart mid-stream on
//! sqlite storage loses nothing.

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::kafka::ProducerRecord;
use connector_core::runtime::{SinkRuntime, SinkRuntimeConfig, SourceRuntime};
use connector_core::{FileOffsetStore, SinkConnector, SourceConnector, StartFrom};
use connector_runner::{
    FileSinkConfig, FileSinkConnector, FileSourceConfig, FileSourceConnector, LineFormat,
    RecordLine,
};
use connector_testkit::{init_tracing, kafka, wait_until, Tansu, TansuStorage};
use tokio_util::sync::CancellationToken;

/// The `file-pipeline` example binary as a child process.
struct Pipeline {
    child: Option<Child>,
    log: PathBuf,
}

impl Pipeline {
    fn start(args: &[String], log: &Path) -> Self {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_file-pipeline"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child: Some(child), log: log.to_path_buf() }
    }

    /// SIGKILL: a crash, no shutdown.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "pipeline exited with {status}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill();
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Appends `lines` to `path`, `chunk` lines at a time with `pause` between chunks.
fn spawn_writer(
    path: PathBuf,
    lines: Vec<String>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        for block in lines.chunks(chunk) {
            let mut buf = String::new();
            for l in block {
                buf.push_str(l);
                buf.push('\n');
            }
            f.write_all(buf.as_bytes()).unwrap();
            f.flush().unwrap();
            std::thread::sleep(pause);
        }
    })
}

async fn wait_for_count(
    client: &connector_core::kafka::KafkaClient,
    topic: &str,
    n: u64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = kafka::count(client, topic).await.unwrap_or(0);
        if c >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} has {c} records, waited for {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A field of the first committed offset in an offsets file (`None` when none was committed).
fn committed_field(offsets: &Path, field: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(offsets).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entries = v["namespaces"].as_object()?.values().next()?.clone();
    Some(entries[0]["offset"][field].clone())
}

/// The committed source position (0 when none was committed).
fn committed_position(offsets: &Path) -> u64 {
    committed_field(offsets, "position").and_then(|v| v.as_u64()).unwrap_or(0)
}

/// The committed sink offset of partition 0 (0 when none was committed).
fn committed_kafka_offset(offsets: &Path) -> i64 {
    committed_field(offsets, "kafka_offset").and_then(|v| v.as_i64()).unwrap_or(0)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_with_keys_headers_and_timestamps_intact() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");

    let sent: Vec<RecordLine> = (0..500)
        .map(|i| RecordLine {
            topic: None,
            partition: None,
            offset: None,
            key: (i % 7 != 0).then(|| format!("device-{}", i % 5)),
            value: (i % 50 != 49).then(|| format!("{{\"reading\":{i}}}")),
            headers: vec![
                ("unit".into(), "C".into()),
                ("tag".into(), format!("first-{i}")),
                ("tag".into(), format!("second-{i}")),
            ],
            timestamp: Some(1_700_000_000_000 + i),
        })
        .collect();
    let text: String = sent.iter().map(|l| serde_json::to_string(l).unwrap() + "\n").collect();
    std::fs::write(&input, text).unwrap();

    let store = Arc::new(FileOffsetStore::open(dir.path().join("offsets.json")).await.unwrap());
    let shutdown = CancellationToken::new();
    let source = FileSourceConnector::create(
        "src",
        FileSourceConfig {
            path: input,
            topic: "intact".into(),
            format: LineFormat::Json,
            batch_lines: 64,
            poll_interval_ms: 10,
        },
    )
    .unwrap();
    let sink = FileSinkConnector::create(
        "snk",
        FileSinkConfig {
            path: output.clone(),
            topics: vec!["intact".into()],
            format: LineFormat::Json,
            start: StartFrom::Earliest,
        },
    )
    .unwrap();
    let (c1, c2, s1, s2) = (client.clone(), client.clone(), Arc::clone(&store), Arc::clone(&store));
    let (t1, t2) = (shutdown.clone(), shutdown.clone());
    let source_task = tokio::spawn(async move {
        SourceRuntime::builder("src", &source, c1, s1).max_tasks(1).run(t1).await
    });
    let sink_task = tokio::spawn(async move {
        let cfg = SinkRuntimeConfig { commit_interval_ms: 100, ..SinkRuntimeConfig::default() };
        SinkRuntime::builder("snk", &sink, c2, s2).config(cfg).max_tasks(1).run(t2).await
    });
    wait_until("500 lines in the sink file", Duration::from_secs(60), || {
        read_lines(&output).len() >= 500
    })
    .await
    .unwrap();
    shutdown.cancel();
    source_task.await.unwrap().unwrap();
    sink_task.await.unwrap().unwrap();

    // In Kafka, as written:
    let in_kafka = kafka::consume_all(&client, "intact").await.unwrap();
    assert_eq!(in_kafka.len(), 500);
    for (r, s) in in_kafka.iter().zip(&sent) {
        assert_eq!(r.key.as_deref(), s.key.as_deref().map(str::as_bytes));
        assert_eq!(r.value.as_deref(), s.value.as_deref().map(str::as_bytes));
        assert_eq!(r.timestamp.as_millis(), s.timestamp.unwrap());
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| (h.key.to_string(), String::from_utf8(h.value.to_vec()).unwrap()))
            .collect();
        assert_eq!(headers, s.headers, "headers keep order and duplicates");
    }
    // And out of the sink, as written:
    let received: Vec<RecordLine> =
        read_lines(&output).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(received.len(), 500);
    for (i, (r, s)) in received.iter().zip(&sent).enumerate() {
        assert_eq!(r.offset, Some(i as i64));
        assert_eq!(
            (&r.key, &r.value, &r.headers, r.timestamp),
            (&s.key, &s.value, &s.headers, s.timestamp)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_source_resumes_from_its_committed_offset_and_loses_nothing() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let offsets = dir.path().join("offsets.json");
    let log = dir.path().join("pipeline.log");
    let n = 20_000usize;
    let lines: Vec<String> = (0..n).map(|i| format!("line-{i:06}")).collect();
    std::fs::write(&input, "").unwrap();
    let writer = spawn_writer(input.clone(), lines, 200, Duration::from_millis(10));
    let cmd = args(&[
        "source",
        "--bootstrap",
        &tansu.bootstrap(),
        "--file",
        input.to_str().unwrap(),
        "--topic",
        "lines",
        "--offsets",
        offsets.to_str().unwrap(),
        "--offset-flush-ms",
        "200",
        "--max-in-flight",
        "2000",
    ]);

    let mut pipeline = Pipeline::start(&cmd, &log);
    wait_for_count(&client, "lines", (n / 3) as u64, Duration::from_secs(60)).await;
    pipeline.kill();
    // A request already on the wire may still land: let it, then look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = committed_position(&offsets);
    let before = kafka::consume_all(&client, "lines").await.unwrap();
    let uncommitted = before
        .iter()
        .filter(|r| {
            let at: u64 = std::str::from_utf8(r.headers.last("file.offset").unwrap())
                .unwrap()
                .parse()
                .unwrap();
            at >= committed
        })
        .count();
    assert!(before.len() < n, "the kill happened mid-stream");

    let mut pipeline = Pipeline::start(&cmd, &log);
    writer.join().unwrap();
    wait_for_count(&client, "lines", (n + uncommitted) as u64, Duration::from_secs(120)).await;
    pipeline.terminate();

    let after = kafka::consume_all(&client, "lines").await.unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &after {
        *seen
            .entry(String::from_utf8(r.value.as_deref().unwrap().to_vec()).unwrap())
            .or_default() += 1;
    }
    let missing: Vec<usize> =
        (0..n).filter(|i| !seen.contains_key(&format!("line-{i:06}"))).collect();
    assert!(missing.is_empty(), "lost lines: {:?}", &missing[..missing.len().min(10)]);
    let duplicates = after.len() - n;
    eprintln!("killed at {} records; committed position {committed}; uncommitted in Kafka {uncommitted}; duplicates {duplicates}", before.len());
    assert!(
        duplicates <= uncommitted,
        "duplicates ({duplicates}) exceed what was uncommitted at the crash ({uncommitted})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sink_resumes_from_its_committed_offset_and_loses_nothing() {
    init_tracing();
    let tansu = Tansu::start().await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let offsets = dir.path().join("offsets.json");
    let log = dir.path().join("pipeline.log");
    let n = 20_000i64;
    client.ensure_topic("commands").await.unwrap();
    // Keep producing while the sink runs and crashes.
    let producer_client = client.clone();
    let producing = tokio::spawn(async move {
        for chunk in 0..(n / 500) {
            let batch = (chunk * 500..(chunk + 1) * 500)
                .map(|i| {
                    ProducerRecord::new("commands", format!("cmd-{i:06}"))
                        .with_key(format!("car-{}", i % 10))
                        .with_partition(0)
                })
                .collect();
            producer_client.produce(batch).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let cmd = args(&[
        "sink",
        "--bootstrap",
        &tansu.bootstrap(),
        "--topic",
        "commands",
        "--file",
        output.to_str().unwrap(),
        "--offsets",
        offsets.to_str().unwrap(),
        "--format",
        "json",
        "--commit-ms",
        "200",
    ]);
    let mut pipeline = Pipeline::start(&cmd, &log);
    wait_until("a third of the records in the sink file", Duration::from_secs(60), || {
        read_lines(&output).len() as i64 >= n / 3
    })
    .await
    .unwrap();
    pipeline.kill();
    let committed = committed_kafka_offset(&offsets);
    let written: Vec<RecordLine> =
        read_lines(&output).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let uncommitted = written.iter().filter(|r| r.offset.unwrap() >= committed).count();
    assert!((written.len() as i64) < n, "the kill happened mid-stream");

    let mut pipeline = Pipeline::start(&cmd, &log);
    producing.await.unwrap();
    wait_until("every record in the sink file", Duration::from_secs(120), || {
        let offsets: std::collections::BTreeSet<i64> = read_lines(&output)
            .iter()
            .map(|l| serde_json::from_str::<RecordLine>(l).unwrap().offset.unwrap())
            .collect();
        offsets.len() as i64 == n
    })
    .await
    .unwrap();
    pipeline.terminate();

    let all: Vec<RecordLine> =
        read_lines(&output).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &all {
        assert_eq!(r.value.as_deref(), Some(format!("cmd-{:06}", r.offset.unwrap()).as_str()));
        *counts.entry(r.offset.unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len() as i64, n, "every offset written");
    let duplicates = all.len() - n as usize;
    eprintln!("killed with {} lines written; committed offset {committed}; uncommitted lines {uncommitted}; duplicates {duplicates}", written.len());
    assert!(
        duplicates <= uncommitted,
        "duplicates ({duplicates}) exceed what was uncommitted at the crash ({uncommitted})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_restart_mid_stream_on_sqlite_storage_loses_nothing() {
    init_tracing();
    let mut tansu = Tansu::start_with(TansuStorage::Sqlite).await.unwrap();
    let client = tansu.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    let log = dir.path().join("pipeline.log");
    let n = 3_000usize;
    let lines: Vec<String> = (0..n).map(|i| format!("reading-{i:05}")).collect();
    std::fs::write(&input, "").unwrap();
    let writer = spawn_writer(input.clone(), lines, 50, Duration::from_millis(50));
    let bootstrap = tansu.bootstrap();
    let source_cmd = args(&[
        "source",
        "--bootstrap",
        &bootstrap,
        "--file",
        input.to_str().unwrap(),
        "--topic",
        "readings",
        "--offsets",
        dir.path().join("src-offsets.json").to_str().unwrap(),
    ]);
    let sink_cmd = args(&[
        "sink",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "readings",
        "--file",
        output.to_str().unwrap(),
        "--offsets",
        dir.path().join("sink-offsets.json").to_str().unwrap(),
    ]);
    let mut source = Pipeline::start(&source_cmd, &log);
    let mut sink = Pipeline::start(&sink_cmd, &log);

    wait_until("a third of the lines through", Duration::from_secs(60), || {
        read_lines(&output).len() >= n / 3
    })
    .await
    .unwrap();
    tansu.restart().await.unwrap();
    writer.join().unwrap();
    wait_until("every line through", Duration::from_secs(120), || {
        let got: std::collections::BTreeSet<String> = read_lines(&output).into_iter().collect();
        got.len() == n
    })
    .await
    .unwrap();
    source.terminate();
    sink.terminate();

    let got = read_lines(&output);
    let distinct: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), n, "every line arrived");
    for i in 0..n {
        assert!(distinct.contains(&format!("reading-{i:05}")), "line {i} lost");
    }
    let in_kafka = kafka::consume_all(&client, "readings").await.unwrap();
    assert!(in_kafka.len() >= n);
    let retries = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("retry"))
        .count();
    eprintln!(
        "through a Kafka restart: {} lines in Kafka, {} lines written by the sink for {n} sent; {retries} retry warnings in the pipeline logs",
        in_kafka.len(),
        got.len()
    );
}
