//! [`crash_point`]: named places in the delivery paths where a test can make the process die,
//! as abruptly as a SIGKILL, to prove what a crash between two steps does.
//!
//! The environment variable `CONNECTOR_CRASH_AT` names the point (`source.txn_committed`) and,
//! optionally, on which pass to die (`source.txn_committed:3` dies the third time the point is
//! reached; the default is the first). The process then calls [`std::process::abort`]: no
//! destructor runs, no buffer is flushed, no socket is closed cleanly, like a SIGKILL. Unset (the
//! only case outside tests), a crash point costs one relaxed atomic load after the first call.
//!
//! The points are listed with the crash-point tables of `docs/delivery-guarantees.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The point and pass `CONNECTOR_CRASH_AT` names, read once.
fn target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let spec = std::env::var("CONNECTOR_CRASH_AT").ok()?;
            let (name, pass) = match spec.rsplit_once(':') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some((name, pass.max(1)))
        })
        .as_ref()
}

/// Passes through the targeted point so far.
static PASSES: AtomicU64 = AtomicU64::new(0);

/// Dies here (see the module docs) when `CONNECTOR_CRASH_AT` names `name` and this is the pass it
/// names; otherwise returns at once.
///
/// ```
/// // Without CONNECTOR_CRASH_AT set, a crash point does nothing.
/// connector_core::crash_point("example.between_two_steps");
/// ```
pub fn crash_point(name: &str) {
    let Some((target, pass)) = target() else { return };
    if target != name {
        return;
    }
    let n = PASSES.fetch_add(1, Ordering::Relaxed) + 1;
    if n == *pass {
        tracing::error!(point = name, pass = n, "CONNECTOR_CRASH_AT: dying here");
        std::process::abort();
    }
}
