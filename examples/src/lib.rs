//! Example applications built on the connector crates: the quickstart and the in-process brokers
//! it runs on ([`embedded`]).
//!
//! This is the only crate that links the embedded brokers (rumqttd, Tansu); the runner itself is
//! in `connector-runner`.

pub mod embedded;
