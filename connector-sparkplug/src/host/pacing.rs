//! Rebirth pacing: the reorder deadlines ([`HostState::tick`]), the per-node rate limit, a
//! global budget of rebirths per second (so that every node's gap after the host's own
//! reconnect does not become a rebirth storm), and the caller's feedback when a request could
//! not be sent.
//!
//! Times are milliseconds of a clock the caller chooses; it should not go backwards (a
//! monotonic clock). If it does, a `now` before the last rebirth counts as the interval being
//! over rather than as a wait.

use super::{rebirth, HostState, Rebirth};

impl HostState {
    /// Whether the node's rate limit holds a rebirth back at `now_ms`.
    pub(super) fn rate_limited(&self, last: Option<u64>, now_ms: u64) -> bool {
        last.is_some_and(|last| {
            now_ms >= last && now_ms < last.saturating_add(self.config.rebirth_interval_ms)
        })
    }

    /// Takes one rebirth from the global budget; false when this second's is spent.
    pub(super) fn take_budget(&mut self, now_ms: u64) -> bool {
        let max = self.config.max_rebirths_per_sec;
        if max == 0 {
            return true;
        }
        let (start, count) = self.budget;
        if now_ms < start || now_ms >= start.saturating_add(1_000) {
            self.budget = (now_ms, 1);
            return true;
        }
        if count < max {
            self.budget = (start, count + 1);
            return true;
        }
        false
    }

    /// Reorder timeouts that expired: one rebirth per node whose gap was not filled (unless a
    /// rebirth was requested since the gap opened). One the node's rate limit holds back comes
    /// when its interval is over; one the global budget (`max_rebirths_per_sec`) holds back
    /// comes in the next second. Call when [`next_deadline`](Self::next_deadline) passes.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Rebirth> {
        let mut out = Vec::new();
        let mut postponed = Vec::new();
        while let Some((deadline, node)) = self.deadlines.first().cloned() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.remove(&(deadline, node.clone()));
            let Some(state) = self.nodes.get(&node) else { continue };
            if state.seq.deadline != Some(deadline) {
                continue;
            }
            let opened = state.seq.opened.unwrap_or(deadline);
            let last = state.last_rebirth;
            let limited = self.rate_limited(last, now_ms);
            let covered = last.is_some_and(|l| l >= opened && l <= now_ms);
            let later = if covered {
                None
            } else if limited {
                last.map(|l| l.saturating_add(self.config.rebirth_interval_ms))
            } else if !self.take_budget(now_ms) {
                Some(self.budget.0.saturating_add(1_000))
            } else {
                None
            };
            let Some(state) = self.nodes.get_mut(&node) else { continue };
            match later {
                Some(later) => {
                    state.seq.deadline = Some(later);
                    postponed.push((later, node));
                }
                None if covered => state.seq.close_gap(),
                None => {
                    state.seq.close_gap();
                    state.prev_rebirth = state.last_rebirth;
                    state.last_rebirth = Some(now_ms);
                    let reason = "seq gap not filled within the reorder timeout".to_owned();
                    tracing::debug!(node = %node, reason, "sparkplug: rebirth requested");
                    out.push(rebirth(node, now_ms, reason));
                }
            }
        }
        self.deadlines.extend(postponed);
        out
    }

    /// The caller could not send `rebirth` (its publish queue was full): the node's rate limit
    /// is given back and the request comes again from [`tick`](Self::tick) after the reorder
    /// timeout, so neither a gap nor an unknown alias goes without a rebirth.
    pub fn rebirth_not_sent(&mut self, rebirth: &Rebirth, now_ms: u64) {
        let retry = now_ms.saturating_add(self.config.reorder_timeout_ms);
        let Some(state) = self.nodes.get_mut(&rebirth.node) else { return };
        state.last_rebirth = state.prev_rebirth;
        let before = state.seq.deadline;
        if before.is_none() {
            state.seq.deadline = Some(retry);
            state.seq.opened = Some(now_ms);
            self.deadlines.insert((retry, rebirth.node.clone()));
        }
    }

    /// Forgets every node's seq expectation and open gaps, as [`restore`](Self::restore)
    /// does: call when the host's own MQTT connection came back, since the seqs it missed
    /// meanwhile are no reason to ask every node for a rebirth at once.
    pub fn reset_sequences(&mut self) {
        for state in self.nodes.values_mut() {
            state.seq.reset(None);
        }
        self.deadlines.clear();
    }
}
