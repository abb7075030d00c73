//! The test kit's error type.

use std::path::PathBuf;

/// What can go wrong starting or driving test infrastructure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A broker binary is not installed. The message says how to install it.
    #[error("{name} not found (looked in: {searched}). Install it with `scripts/install-brokers` ({how})")]
    MissingBinary {
        /// The program that is missing.
        name: &'static str,
        /// Where we looked.
        searched: String,
        /// The command that installs it.
        how: &'static str,
    },
    /// A broker did not become ready in time; its log is quoted.
    #[error("{name} did not become ready within {seconds}s; last log lines:\n{log}")]
    NotReady {
        /// Which broker.
        name: &'static str,
        /// How long we waited.
        seconds: u64,
        /// The end of its log.
        log: String,
    },
    /// An I/O error while starting or talking to a process.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka operation failed.
    #[error(transparent)]
    Kafka(#[from] connector_core::Error),
    /// A wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Generating or loading test certificates failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A combination of options the brokers cannot provide.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A file the test kit wrote or read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl TestkitError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}

/// `Result` with [`TestkitError`].
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
