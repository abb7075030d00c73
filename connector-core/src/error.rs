//! The framework's one error type.
//!
//! Every error says what a retry can do about it ([`ErrorKind`]): a *retriable* error (a broker that
//! is down, a timeout) may succeed when tried again; a *rejected* record is bad input that no retry
//! will fix and goes to the error policy; a *fatal* error stops the task. Errors carry the context a
//! user needs to find the problem: connector, task, topic, partition and offset.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a retry can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Transient: the same operation may succeed when retried after a backoff.
    Retriable,
    /// The record itself is bad; retrying will not help. The error policy decides its fate.
    RecordRejected,
    /// The task cannot go on (bad configuration, a broken invariant, an unrecoverable peer error).
    Fatal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Retriable => "retriable",
            ErrorKind::RecordRejected => "record-rejected",
            ErrorKind::Fatal => "fatal",
        })
    }
}

/// Where an error happened. Rendered after the message as `[connector=… topic=… …]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorContext {
    /// Connector name.
    pub connector: Option<String>,
    /// Task index within the connector.
    pub task: Option<usize>,
    /// Kafka (or MQTT) topic.
    pub topic: Option<String>,
    /// Kafka partition.
    pub partition: Option<i32>,
    /// Kafka offset.
    pub offset: Option<i64>,
}

impl ErrorContext {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.connector.is_none()
            && self.task.is_none()
            && self.topic.is_none()
            && self.partition.is_none()
            && self.offset.is_none()
    }
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        f.write_str(" [")?;
        let mut sep = "";
        if let Some(c) = &self.connector {
            write!(f, "{sep}connector={c}")?;
            sep = " ";
        }
        if let Some(t) = self.task {
            write!(f, "{sep}task={t}")?;
            sep = " ";
        }
        if let Some(t) = &self.topic {
            write!(f, "{sep}topic={t}")?;
            sep = " ";
        }
        if let Some(p) = self.partition {
            write!(f, "{sep}partition={p}")?;
            sep = " ";
        }
        if let Some(o) = self.offset {
            write!(f, "{sep}offset={o}")?;
        }
        f.write_str("]")
    }
}

/// The framework's error: what went wrong, whether a retry helps, and where.
///
/// ```
/// use connector_core::{Error, ErrorKind};
///
/// let e = Error::retriable("broker 1 did not answer within 30s")
///     .with_connector("telemetry")
///     .with_topic("plant.line1")
///     .with_partition(3);
/// assert_eq!(e.kind(), ErrorKind::Retriable);
/// assert_eq!(
///     e.to_string(),
///     "broker 1 did not answer within 30s [connector=telemetry topic=plant.line1 partition=3]"
/// );
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// Transient failure; retrying after a backoff may succeed.
    Retriable {
        /// What failed.
        message: Cow<'static, str>,
        /// Where it failed.
        context: Box<ErrorContext>,
        /// The underlying cause, if any.
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The record is bad; no retry will help. Handled by the error policy.
    RecordRejected {
        /// Why the record was rejected.
        message: Cow<'static, str>,
        /// Where the record came from or was going.
        context: Box<ErrorContext>,
        /// The underlying cause, if any.
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The task cannot continue.
    Fatal {
        /// What failed.
        message: Cow<'static, str>,
        /// Where it failed.
        context: Box<ErrorContext>,
        /// The underlying cause, if any.
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// A configuration value is invalid. `path` names the key, e.g. `connector[0].qos`.
    Config {
        /// Key path of the offending value.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Retriable { message, context, .. } | Error::Fatal { message, context, .. } => {
                write!(f, "{message}{context}")
            }
            Error::RecordRejected { message, context, .. } => {
                write!(f, "record rejected: {message}{context}")
            }
            Error::Config { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

// Written out rather than derived: the cause is the shared error itself, not the `Arc` around
// it, so that `source()` can be downcast to the original type (an `std::io::Error`, say).
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Retriable { source, .. }
            | Error::RecordRejected { source, .. }
            | Error::Fatal { source, .. } => {
                source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
            }
            Error::Config { .. } => None,
        }
    }
}

impl Error {
    /// A transient failure.
    pub fn retriable(message: impl Into<Cow<'static, str>>) -> Self {
        Error::Retriable { message: message.into(), context: Box::default(), source: None }
    }

    /// A bad record.
    pub fn rejected(message: impl Into<Cow<'static, str>>) -> Self {
        Error::RecordRejected { message: message.into(), context: Box::default(), source: None }
    }

    /// A failure the task cannot recover from.
    pub fn fatal(message: impl Into<Cow<'static, str>>) -> Self {
        Error::Fatal { message: message.into(), context: Box::default(), source: None }
    }

    /// An invalid configuration value at `path`.
    pub fn config(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), message: message.into() }
    }

    /// What a retry can do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Retriable { .. } => ErrorKind::Retriable,
            Error::RecordRejected { .. } => ErrorKind::RecordRejected,
            Error::Fatal { .. } | Error::Config { .. } => ErrorKind::Fatal,
        }
    }

    /// True when retrying after a backoff may succeed.
    pub fn is_retriable(&self) -> bool {
        self.kind() == ErrorKind::Retriable
    }

    /// The message without context.
    pub fn message(&self) -> &str {
        match self {
            Error::Retriable { message, .. }
            | Error::RecordRejected { message, .. }
            | Error::Fatal { message, .. } => message,
            Error::Config { message, .. } => message,
        }
    }

    /// Where the error happened (`None` for configuration errors).
    pub fn context(&self) -> Option<&ErrorContext> {
        match self {
            Error::Retriable { context, .. }
            | Error::RecordRejected { context, .. }
            | Error::Fatal { context, .. } => Some(context),
            Error::Config { .. } => None,
        }
    }

    /// The same error, now fatal (e.g. a retriable error whose retry budget ran out).
    pub fn into_fatal(self) -> Self {
        match self {
            Error::Retriable { message, context, source }
            | Error::RecordRejected { message, context, source } => {
                Error::Fatal { message, context, source }
            }
            other => other,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        if let Error::Retriable { source, .. }
        | Error::RecordRejected { source, .. }
        | Error::Fatal { source, .. } = &mut self
        {
            *source = Some(Arc::new(cause));
        }
        self
    }

    fn context_mut(&mut self) -> Option<&mut ErrorContext> {
        match self {
            Error::Retriable { context, .. }
            | Error::RecordRejected { context, .. }
            | Error::Fatal { context, .. } => Some(context),
            Error::Config { .. } => None,
        }
    }

    /// Sets the connector name unless already set.
    pub fn with_connector(mut self, name: impl Into<String>) -> Self {
        if let Some(c) = self.context_mut() {
            c.connector.get_or_insert_with(|| name.into());
        }
        self
    }

    /// Sets the task index unless already set.
    pub fn with_task(mut self, task: usize) -> Self {
        if let Some(c) = self.context_mut() {
            c.task.get_or_insert(task);
        }
        self
    }

    /// Sets the topic unless already set.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        if let Some(c) = self.context_mut() {
            c.topic.get_or_insert_with(|| topic.into());
        }
        self
    }

    /// Sets the partition unless already set.
    pub fn with_partition(mut self, partition: i32) -> Self {
        if let Some(c) = self.context_mut() {
            c.partition.get_or_insert(partition);
        }
        self
    }

    /// Sets the offset unless already set.
    pub fn with_offset(mut self, offset: i64) -> Self {
        if let Some(c) = self.context_mut() {
            c.offset.get_or_insert(offset);
        }
        self
    }

    /// The message followed by every cause in the chain, joined by `: ` (a cause whose text the
    /// message already ends with is not repeated).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut tail = self.message().to_owned();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            let text = e.to_string();
            if !tail.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            tail = text;
            cur = e.source();
        }
        out
    }
}

/// An I/O error, the first error a connector author usually meets (`?` on a file or socket call).
///
/// Its message is the I/O error's text and its source the I/O error itself. Its kind follows
/// what a retry can do: *retriable* for the failures of a connection or a peer that may come
/// back (refused, reset, aborted, not connected, broken pipe, timed out, interrupted, would
/// block, unexpected end of file, host or network unreachable, address in use or not
/// available); *fatal* for everything else (not found, permission denied, invalid input or
/// data, out of memory, ...), which no retry fixes. Wrap it yourself (`Error::retriable(..)
/// .with_source(e)`) where your connector knows better, e.g. a file that appears later.
///
/// ```
/// use connector_core::{Error, ErrorKind};
/// use std::io;
///
/// let refused: Error = io::Error::new(io::ErrorKind::ConnectionRefused, "refused").into();
/// assert_eq!(refused.kind(), ErrorKind::Retriable);
/// assert_eq!(refused.to_string(), "refused");
/// let missing: Error = io::Error::new(io::ErrorKind::NotFound, "no such file").into();
/// assert_eq!(missing.kind(), ErrorKind::Fatal);
///
/// fn read(path: &str) -> connector_core::Result<String> {
///     Ok(std::fs::read_to_string(path)?)
/// }
/// assert!(read("/no/such/file").is_err());
/// ```
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let retriable = matches!(
            e.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::TimedOut
                | K::Interrupted
                | K::WouldBlock
                | K::UnexpectedEof
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::NetworkDown
                | K::AddrInUse
                | K::AddrNotAvailable
        );
        let message = e.to_string();
        let error = if retriable { Error::retriable(message) } else { Error::fatal(message) };
        error.with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_rendered_after_the_message_and_kept_once_set() {
        let e = Error::rejected("bad json").with_topic("t").with_offset(7).with_topic("other");
        assert_eq!(e.to_string(), "record rejected: bad json [topic=t offset=7]");
        assert_eq!(e.kind(), ErrorKind::RecordRejected);
    }

    #[test]
    fn report_includes_the_cause_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::retriable("connect to 127.0.0.1:9092").with_source(io);
        assert_eq!(e.report(), "connect to 127.0.0.1:9092: refused");
        assert!(e.is_retriable());
        assert_eq!(e.clone().into_fatal().kind(), ErrorKind::Fatal);
    }

    #[test]
    fn io_errors_are_retriable_when_a_peer_may_come_back_and_keep_their_source() {
        use std::io::{Error as Io, ErrorKind as K};
        for kind in [K::ConnectionReset, K::TimedOut, K::BrokenPipe, K::UnexpectedEof] {
            assert!(Error::from(Io::new(kind, "x")).is_retriable(), "{kind:?}");
        }
        for kind in [K::NotFound, K::PermissionDenied, K::InvalidData, K::Other] {
            assert_eq!(Error::from(Io::new(kind, "x")).kind(), ErrorKind::Fatal, "{kind:?}");
        }
        let e = Error::from(Io::new(K::ConnectionRefused, "refused"));
        assert_eq!(e.report(), "refused", "the cause is not repeated");
        let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Io>());
        assert_eq!(source.map(Io::kind), Some(K::ConnectionRefused));
    }

    #[test]
    fn config_errors_name_their_key_path() {
        let e = Error::config("connector[0].qos", "expected 0, 1 or 2");
        assert_eq!(e.to_string(), "connector[0].qos: expected 0, 1 or 2");
        assert_eq!(e.kind(), ErrorKind::Fatal);
    }
}
