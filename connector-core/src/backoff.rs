//! Bounded exponential backoff with jitter, used for every retry loop (broker calls, reconnects,
//! retriable sink errors) so that no retry spins and no delay grows without bound.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Backoff settings: delays start at `min_ms`, double on every failure up to `max_ms`, and each is
/// spread by ±`jitter` (a fraction, 0.0..=1.0) so that many clients do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay, in milliseconds.
    #[serde(default = "default_min_ms")]
    pub min_ms: u64,
    /// Largest delay, in milliseconds.
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
    /// Random spread of each delay, as a fraction of it (0.0 to 1.0).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_min_ms() -> u64 {
    100
}
fn default_max_ms() -> u64 {
    10_000
}
fn default_jitter() -> f64 {
    0.2
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { min_ms: default_min_ms(), max_ms: default_max_ms(), jitter: default_jitter() }
    }
}

impl BackoffConfig {
    /// A backoff from `min` to `max` with 20 % jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min_ms: u64::try_from(min.as_millis()).unwrap_or(u64::MAX),
            max_ms: u64::try_from(max.as_millis()).unwrap_or(u64::MAX),
            jitter: default_jitter(),
        }
    }

    /// Checks the settings; paths are relative to this table.
    pub fn validate(&self) -> crate::ConfigErrors {
        let mut e = crate::ConfigErrors::new();
        if self.min_ms == 0 {
            e.push("min_ms", "must be at least 1");
        }
        if self.max_ms < self.min_ms {
            e.push("max_ms", format!("must be at least min_ms ({})", self.min_ms));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            e.push("jitter", "expected a fraction between 0.0 and 1.0");
        }
        e
    }
}

/// The state of one retry loop.
///
/// ```
/// use std::time::Duration;
/// use connector_core::backoff::{Backoff, BackoffConfig};
///
/// let mut b = Backoff::new(BackoffConfig { min_ms: 100, max_ms: 400, jitter: 0.0 });
/// assert_eq!(b.next_delay(), Duration::from_millis(100));
/// assert_eq!(b.next_delay(), Duration::from_millis(200));
/// assert_eq!(b.next_delay(), Duration::from_millis(400));
/// assert_eq!(b.next_delay(), Duration::from_millis(400));
/// b.reset();
/// assert_eq!(b.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    next_ms: u64,
    attempts: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(config: BackoffConfig) -> Self {
        Self { next_ms: config.min_ms.max(1), config, attempts: 0 }
    }

    /// The delay before the next attempt; grows until `max_ms`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next_ms.min(self.config.max_ms.max(1));
        self.next_ms = base.saturating_mul(2).min(self.config.max_ms.max(1));
        self.attempts = self.attempts.saturating_add(1);
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return Duration::from_millis(base);
        }
        // Spread uniformly over [base * (1 - jitter), base * (1 + jitter)].
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64((base as f64 * factor) / 1000.0)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the first delay (call after a success).
    pub fn reset(&mut self) {
        self.next_ms = self.config.min_ms.max(1);
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_delays_stay_within_the_spread() {
        let mut b = Backoff::new(BackoffConfig { min_ms: 1000, max_ms: 1000, jitter: 0.5 });
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1500), "{d:?}");
        }
    }

    #[test]
    fn invalid_settings_name_their_keys() {
        let c = BackoffConfig { min_ms: 0, max_ms: 0, jitter: 2.0 };
        let paths: Vec<_> = c.validate().iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["min_ms", "jitter"]);
    }
}
