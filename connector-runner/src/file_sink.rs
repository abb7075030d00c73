//! [`FileSinkConnector`]: appends records read from Kafka to a file — a custom sink connector
//! built only on the public `connector-core` API.
//!
//! `put` writes to a buffer; the runtime's commit calls `flush`, which writes the buffer and
//! `fsync`s the file before the offsets are stored. So a committed offset always means "these
//! lines are on disk", and after a crash the sink re-appends at most what came after the last
//! commit (at-least-once: the file may hold a record twice, never miss one).

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use connector_core::{
    ConfigErrors, ConnectorConfig, Error, Result, SinkConnector, SinkRecord, SinkTask,
    SinkTaskContext, StartFrom, TopicPartition,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::record_line::{LineFormat, RecordLine};

/// Configuration of the file sink (`type = "file-sink"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to (created if missing).
    pub path: PathBuf,
    /// Kafka topics to read.
    pub topics: Vec<String>,
    /// `text`: write each value followed by a newline; `json`: write record lines with topic,
    /// partition and offset.
    #[serde(default)]
    pub format: LineFormat,
    /// Where to start in a partition with no committed offset.
    #[serde(default)]
    pub start: StartFrom,
}

impl ConnectorConfig for FileSinkConfig {
    fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.path.as_os_str().is_empty() {
            e.push("path", "must not be empty");
        }
        if self.topics.is_empty() {
            e.push("topics", "at least one Kafka topic is required");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(msg) = connector_core::kafka::validate_topic_name(t) {
                e.push(format!("topics[{i}]"), msg);
            }
        }
        e
    }
}

/// Appends records of its topics to one file (one task).
///
/// ```
/// use connector_core::{DynSinkConnector, SinkConnector};
/// use connector_runner::{FileSinkConfig, FileSinkConnector};
///
/// let config: FileSinkConfig =
///     serde_json::from_str(r#"{"path": "out.txt", "topics": ["commands"]}"#).unwrap();
/// let connector = FileSinkConnector::create("archive", config).unwrap();
/// assert_eq!(DynSinkConnector::topics(&connector), vec!["commands".to_string()]);
/// ```
#[derive(Debug)]
pub struct FileSinkConnector {
    config: FileSinkConfig,
}

impl SinkConnector for FileSinkConnector {
    type Config = FileSinkConfig;
    type TaskConfig = FileSinkConfig;
    type Task = FileSinkTask;

    fn create(_name: &str, config: FileSinkConfig) -> Result<Self> {
        Ok(Self { config })
    }

    fn topics(&self) -> Vec<String> {
        self.config.topics.clone()
    }

    fn start_from(&self) -> StartFrom {
        self.config.start
    }

    fn task_configs(&self, _max_tasks: usize) -> Result<Vec<FileSinkConfig>> {
        // Lines of one file are written by one task.
        Ok(vec![self.config.clone()])
    }

    fn create_task(&self, config: FileSinkConfig) -> Result<FileSinkTask> {
        Ok(FileSinkTask { config, file: None, pending: Vec::new() })
    }
}

/// Buffers lines in `put`; writes and fsyncs them in `flush`.
#[derive(Debug)]
pub struct FileSinkTask {
    config: FileSinkConfig,
    file: Option<tokio::fs::File>,
    pending: Vec<u8>,
}

/// Buffered bytes that trigger a write from `put` (still fsynced only on commit).
const WRITE_THRESHOLD: usize = 1024 * 1024;

impl FileSinkTask {
    fn encode(&mut self, r: &SinkRecord) -> Result<()> {
        match self.config.format {
            LineFormat::Text => {
                self.pending.extend_from_slice(r.value.as_deref().unwrap_or_default());
                self.pending.push(b'\n');
            }
            LineFormat::Json => {
                let text = |b: &[u8], what: &str| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        Error::rejected(format!(
                            "{what} is not UTF-8; the json format holds text only"
                        ))
                        .with_topic(&*r.topic)
                        .with_partition(r.partition)
                        .with_offset(r.offset)
                    })
                };
                let line = RecordLine {
                    topic: Some(r.topic.to_string()),
                    partition: Some(r.partition),
                    offset: Some(r.offset),
                    key: r.key.as_deref().map(|k| text(k, "key")).transpose()?,
                    value: r.value.as_deref().map(|v| text(v, "value")).transpose()?,
                    headers: r
                        .headers
                        .iter()
                        .map(|h| Ok((h.key.to_string(), text(&h.value, "header value")?)))
                        .collect::<Result<_>>()?,
                    timestamp: Some(r.timestamp.as_millis()),
                };
                serde_json::to_writer(&mut self.pending, &line)
                    .map_err(|e| Error::fatal("cannot encode a record line").with_source(e))?;
                self.pending.push(b'\n');
            }
        }
        Ok(())
    }

    async fn write_pending(&mut self) -> Result<()> {
        let path = self.config.path.display().to_string();
        let Some(file) = self.file.as_mut() else {
            return Err(Error::fatal("file sink used before start"));
        };
        file.write_all(&self.pending)
            .await
            .map_err(|e| Error::retriable(format!("cannot write {path}")).with_source(e))?;
        self.pending.clear();
        Ok(())
    }
}

#[async_trait]
impl SinkTask for FileSinkTask {
    async fn start(&mut self, _ctx: SinkTaskContext) -> Result<()> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.config.path)
            .await
            .map_err(|e| {
                Error::fatal(format!("cannot open {}", self.config.path.display())).with_source(e)
            })?;
        info!(path = %self.config.path.display(), "file sink started");
        self.file = Some(file);
        Ok(())
    }

    async fn put(&mut self, records: &[SinkRecord]) -> Result<()> {
        let batch_start = self.pending.len();
        for r in records {
            let before = self.pending.len();
            if let Err(e) = self.encode(r) {
                // A rejected record: those before it are accepted (the runtime continues after it).
                self.pending.truncate(before);
                return Err(e);
            }
        }
        if self.pending.len() >= WRITE_THRESHOLD {
            if let Err(e) = self.write_pending().await {
                // Retriable: the same records come again, so none of them may stay buffered.
                self.pending.truncate(batch_start);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn flush(&mut self, _offsets: &HashMap<TopicPartition, i64>) -> Result<()> {
        self.write_pending().await?;
        if let Some(file) = self.file.as_mut() {
            file.flush()
                .await
                .map_err(|e| Error::retriable("cannot flush the sink file").with_source(e))?;
            file.sync_data()
                .await
                .map_err(|e| Error::retriable("cannot fsync the sink file").with_source(e))?;
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.write_pending().await?;
        }
        Ok(())
    }
}
