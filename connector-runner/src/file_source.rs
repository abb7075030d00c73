//! [`FileSourceConnector`]: tails a file and writes each complete line to Kafka, with the byte
//! position after the line as its source offset — a custom source connector built only on the
//! public `connector-core` API.
//!
//! Resuming: the source partition is `{"file": "<path>"}` and the offset `{"position": <bytes>}`;
//! on start the task seeks to the committed position, so lines Kafka acknowledged before a crash are
//! not read again unless their offsets had not been committed yet (at-least-once). A file shorter
//! than the committed position was truncated or replaced and is read from the start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use connector_core::{
    ConfigErrors, ConnectorConfig, Error, Result, SourceConnector, SourceOffset, SourcePartition,
    SourceRecord, SourceTask, SourceTaskContext, Timestamp,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::record_line::{LineFormat, RecordLine};

/// Configuration of the file source (`type = "file-source"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// File to tail. A line is taken once its terminating newline has been written.
    pub path: PathBuf,
    /// Kafka topic to write to.
    pub topic: String,
    /// `text`: each line is a record value; `json`: each line is a record line (key, value,
    /// headers, timestamp).
    #[serde(default)]
    pub format: LineFormat,
    /// Most lines returned by one poll.
    #[serde(default = "default_batch_lines")]
    pub batch_lines: usize,
    /// How long a poll waits for new lines at the end of the file, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_batch_lines() -> usize {
    1000
}
fn default_poll_interval_ms() -> u64 {
    50
}

impl ConnectorConfig for FileSourceConfig {
    fn validate(&self) -> ConfigErrors {
        let mut e = ConfigErrors::new();
        if self.path.as_os_str().is_empty() {
            e.push("path", "must not be empty");
        }
        if let Err(msg) = connector_core::kafka::validate_topic_name(&self.topic) {
            e.push("topic", msg);
        }
        if self.batch_lines == 0 {
            e.push("batch_lines", "must be at least 1");
        }
        if self.poll_interval_ms == 0 {
            e.push("poll_interval_ms", "must be at least 1");
        }
        e
    }
}

/// Tails one file into one Kafka topic (one task).
///
/// ```
/// use connector_core::{ConnectorConfig, DynSourceConnector, SourceConnector};
/// use connector_runner::{FileSourceConfig, FileSourceConnector};
///
/// let config: FileSourceConfig =
///     serde_json::from_str(r#"{"path": "/var/log/app.log", "topic": "app-log"}"#).unwrap();
/// assert!(config.validate().is_empty());
/// let connector = FileSourceConnector::create("app-log", config).unwrap();
/// assert_eq!(connector.create_tasks(4).unwrap().len(), 1);
/// ```
#[derive(Debug)]
pub struct FileSourceConnector {
    config: FileSourceConfig,
}

impl SourceConnector for FileSourceConnector {
    type Config = FileSourceConfig;
    type TaskConfig = FileSourceConfig;
    type Task = FileSourceTask;

    fn create(_name: &str, config: FileSourceConfig) -> Result<Self> {
        Ok(Self { config })
    }

    fn task_configs(&self, _max_tasks: usize) -> Result<Vec<FileSourceConfig>> {
        // One file is read in order by one task.
        Ok(vec![self.config.clone()])
    }

    fn create_task(&self, config: FileSourceConfig) -> Result<FileSourceTask> {
        Ok(FileSourceTask::new(config))
    }
}

/// Reads complete lines from the committed position on.
#[derive(Debug)]
pub struct FileSourceTask {
    config: FileSourceConfig,
    partition: SourcePartition,
    file: Option<File>,
    /// Bytes read from the file and not yet returned as lines.
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_start: u64,
}

impl FileSourceTask {
    fn new(config: FileSourceConfig) -> Self {
        let mut partition = SourcePartition::new();
        partition.insert("file".into(), Value::from(config.path.display().to_string()));
        Self { config, partition, file: None, buf: Vec::new(), buf_start: 0 }
    }

    fn offset(position: u64) -> SourceOffset {
        let mut o = SourceOffset::new();
        o.insert("position".into(), Value::from(position));
        o
    }

    /// Opens the file (once it exists) at `buf_start`, restarting from 0 if it became shorter.
    fn ensure_open(&mut self) -> Result<bool> {
        if self.file.is_some() {
            return Ok(true);
        }
        let mut file = match File::open(&self.config.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::retriable(format!("cannot open {}", self.config.path.display()))
                    .with_source(e))
            }
        };
        let len = file
            .metadata()
            .map_err(|e| {
                Error::retriable(format!("cannot stat {}", self.config.path.display()))
                    .with_source(e)
            })?
            .len();
        if len < self.buf_start {
            warn!(path = %self.config.path.display(), committed = self.buf_start, len, "file is shorter than the committed position; reading it from the start");
            self.buf_start = 0;
        }
        file.seek(SeekFrom::Start(self.buf_start)).map_err(|e| {
            Error::retriable(format!("cannot seek {}", self.config.path.display())).with_source(e)
        })?;
        self.file = Some(file);
        Ok(true)
    }

    /// Reads what was appended since the last read.
    fn read_more(&mut self) -> Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        let mut chunk = vec![0u8; 256 * 1024];
        let n = file.read(&mut chunk).map_err(|e| {
            Error::retriable(format!("cannot read {}", self.config.path.display())).with_source(e)
        })?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn record(&self, line: &[u8], line_start: u64, line_end: u64) -> Result<SourceRecord> {
        let base = SourceRecord::new(self.config.topic.clone(), Bytes::new())
            .with_source(self.partition.clone(), Self::offset(line_end));
        match self.config.format {
            LineFormat::Text => Ok(SourceRecord {
                value: Some(Bytes::copy_from_slice(line)),
                timestamp: Some(Timestamp::now()),
                ..base
            }
            .with_header("file.offset", line_start.to_string())),
            LineFormat::Json => {
                let parsed: RecordLine = serde_json::from_slice(line).map_err(|e| {
                    Error::fatal(format!(
                        "line at byte {line_start} of {} is not a record line: {e}",
                        self.config.path.display()
                    ))
                })?;
                let mut record = SourceRecord {
                    key: parsed.key.map(Bytes::from),
                    value: parsed.value.map(Bytes::from),
                    timestamp: Some(
                        parsed.timestamp.map_or_else(Timestamp::now, Timestamp::from_millis),
                    ),
                    ..base
                };
                for (k, v) in parsed.headers {
                    record.headers.push(k, v);
                }
                Ok(record)
            }
        }
    }
}

#[async_trait]
impl SourceTask for FileSourceTask {
    async fn start(&mut self, ctx: SourceTaskContext) -> Result<()> {
        let position = ctx
            .offset(&self.partition)
            .and_then(|o| o.get("position"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.buf_start = position;
        info!(path = %self.config.path.display(), position, "file source starting");
        self.ensure_open()?;
        Ok(())
    }

    /// Cancel-safe: everything read is kept in `self.buf` before the only `.await` (the idle
    /// sleep), so a dropped poll loses nothing.
    async fn poll(&mut self) -> Result<Vec<SourceRecord>> {
        let mut records = Vec::new();
        if self.ensure_open()? {
            let mut consumed = 0usize;
            loop {
                while records.len() < self.config.batch_lines {
                    let Some(nl) = self.buf[consumed..].iter().position(|b| *b == b'\n') else {
                        break;
                    };
                    let line_start = self.buf_start + consumed as u64;
                    let line_end = line_start + nl as u64 + 1;
                    let line = &self.buf[consumed..consumed + nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    records.push(self.record(line, line_start, line_end)?);
                    consumed += nl + 1;
                }
                if records.len() >= self.config.batch_lines || self.read_more()? == 0 {
                    break;
                }
            }
            self.buf.drain(..consumed);
            self.buf_start += consumed as u64;
        }
        if records.is_empty() {
            tokio::time::sleep(Duration::from_millis(self.config.poll_interval_ms)).await;
        }
        Ok(records)
    }
}
