//! Per-edge-node seq checking: 0 to 255, wrapping. NBIRTH sets the expected seq to its own + 1;
//! a seq equal to one of the last 128 seen is a redelivery (a persistent session redelivers
//! unacknowledged messages after a reconnect); any other seq is out of order: the seqs from the
//! expected one up to it are missing, and may fill the gap until a deadline. Messages are never held back.

use std::collections::{BTreeSet, VecDeque};

/// How many of the last seqs seen count as redeliveries (half the seq space: anything further
/// back would be ambiguous with a seq ahead).
const WINDOW: usize = 128;

/// What one seq meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqOutcome {
    /// The expected seq (or the first after a restore or a birth without seq).
    InOrder,
    /// A seq among the last 128 seen: a redelivery.
    Redelivery,
    /// A missing seq arrived; `closed` when it was the last one missing.
    Filled { closed: bool },
    /// A seq ahead of the expected one: the seqs between are missing.
    Gap { missing: u8 },
}

/// The seq state of one edge node.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqState {
    /// The next seq expected; `None` before the first one (after a restore, or a death).
    expected: Option<u8>,
    /// The last seqs seen, newest last, at most [`WINDOW`].
    recent: VecDeque<u8>,
    /// Seqs skipped over and not seen since.
    missing: BTreeSet<u8>,
    /// Some missing seq fell out of the window unseen: the gap can no longer be filled.
    lost: bool,
    /// When the open gap (if any) must be filled, in ms.
    pub(crate) deadline: Option<u64>,
    /// When the open gap was first seen, in ms.
    pub(crate) opened: Option<u64>,
}

impl SeqState {
    /// Restarts at a birth with `seq` (or with no expectation when the birth had none).
    pub(crate) fn reset(&mut self, seq: Option<u8>) {
        *self = SeqState::default();
        if let Some(s) = seq {
            self.expected = Some(s.wrapping_add(1));
            self.recent.push_back(s);
        }
    }

    /// True while a gap is open (some seq missing or lost, deadline set).
    #[cfg(test)]
    pub(crate) fn gap_open(&self) -> bool {
        self.deadline.is_some()
    }

    /// Closes the gap (a rebirth was requested, or a birth came).
    pub(crate) fn close_gap(&mut self) {
        self.missing.clear();
        self.lost = false;
        self.deadline = None;
        self.opened = None;
    }

    fn push(&mut self, s: u8) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(s);
    }

    /// Moves the expected seq past `s`, and gives up on missing seqs now out of the window.
    fn advance(&mut self, s: u8) {
        let expected = s.wrapping_add(1);
        self.expected = Some(expected);
        self.push(s);
        if !self.missing.is_empty() {
            let before = self.missing.len();
            self.missing.retain(|m| usize::from(expected.wrapping_sub(*m)) <= WINDOW);
            if self.missing.len() != before {
                self.lost = true;
            }
        }
    }

    /// Records `seq` received at `now_ms`; a new gap gets the deadline `now_ms + timeout_ms`.
    pub(crate) fn observe(&mut self, s: u8, now_ms: u64, timeout_ms: u64) -> SeqOutcome {
        let Some(expected) = self.expected else {
            self.advance(s);
            return SeqOutcome::InOrder;
        };
        if s == expected {
            self.missing.remove(&s);
            self.advance(s);
            return SeqOutcome::InOrder;
        }
        if self.missing.remove(&s) {
            self.push(s);
            let closed = self.missing.is_empty() && !self.lost;
            if closed {
                self.close_gap();
            }
            return SeqOutcome::Filled { closed };
        }
        if self.recent.contains(&s) {
            return SeqOutcome::Redelivery;
        }
        // Not expected, not missing, not seen lately: out of order, so the seqs between are
        // missing (a seq "behind" that was never seen counts as far ahead: only a seq seen
        // lately is a redelivery).
        let ahead = s.wrapping_sub(expected);
        for k in 0..ahead {
            self.missing.insert(expected.wrapping_add(k));
        }
        self.advance(s);
        if self.deadline.is_none() {
            self.deadline = Some(now_ms.saturating_add(timeout_ms));
            self.opened = Some(now_ms);
        }
        SeqOutcome::Gap { missing: ahead }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_wraps_and_redeliveries_are_recognised() {
        let mut s = SeqState::default();
        s.reset(Some(250));
        for seq in (251..=255).chain(0..10) {
            assert_eq!(s.observe(seq, 0, 100), SeqOutcome::InOrder, "{seq}");
        }
        assert_eq!(s.observe(3, 0, 100), SeqOutcome::Redelivery);
        assert_eq!(s.observe(252, 0, 100), SeqOutcome::Redelivery);
        assert!(!s.gap_open());
    }

    #[test]
    fn a_gap_opens_and_its_missing_seqs_fill_it() {
        let mut s = SeqState::default();
        s.reset(Some(0));
        assert_eq!(s.observe(3, 10, 100), SeqOutcome::Gap { missing: 2 });
        assert_eq!(s.deadline, Some(110));
        assert_eq!(s.observe(1, 20, 100), SeqOutcome::Filled { closed: false });
        assert_eq!(s.observe(4, 20, 100), SeqOutcome::InOrder);
        assert_eq!(s.observe(2, 30, 100), SeqOutcome::Filled { closed: true });
        assert!(!s.gap_open());
    }

    #[test]
    fn a_seq_behind_that_was_never_seen_opens_a_gap() {
        let mut s = SeqState::default();
        s.reset(Some(0));
        assert_eq!(s.observe(200, 0, 100), SeqOutcome::Gap { missing: 199 });
        assert!(s.gap_open());
        let mut s = SeqState::default();
        s.reset(Some(0));
        for seq in 1..=10 {
            s.observe(seq, 0, 100);
        }
        assert_eq!(s.observe(5, 0, 100), SeqOutcome::Redelivery);
        assert_eq!(s.observe(250, 0, 100), SeqOutcome::Gap { missing: 239 });
    }

    #[test]
    fn a_missing_seq_that_falls_out_of_the_window_cannot_fill_the_gap() {
        let mut s = SeqState::default();
        s.reset(Some(0));
        assert_eq!(s.observe(2, 0, 100), SeqOutcome::Gap { missing: 1 });
        for seq in 3..=200u8 {
            assert_eq!(s.observe(seq, 0, 100), SeqOutcome::InOrder);
        }
        // Seq 1 is out of the window: the gap stays open (for its rebirth at the deadline)
        // although nothing is missing any more.
        assert!(s.lost && s.missing.is_empty());
        assert!(s.gap_open());
    }
}
