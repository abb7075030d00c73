//! [`OrderedFinalizer`]: hands records back in the order they were added, each only once it and
//! every record before it has an outcome. Acknowledgements arrive in any order (partitions are
//! written concurrently); commits happen only for the unbroken acknowledged prefix.

use std::collections::VecDeque;

/// Items in submission order, each waiting for an outcome.
///
/// ```
/// use connector_core::runtime::OrderedFinalizer;
///
/// let mut f = OrderedFinalizer::new();
/// let a = f.push("a");
/// let b = f.push("b");
/// f.complete(b, Ok::<u32, ()>(2));
/// assert!(f.pop_ready().is_none(), "b waits for a");
/// f.complete(a, Ok(1));
/// assert_eq!(f.pop_ready(), Some(("a", Ok(1))));
/// assert_eq!(f.pop_ready(), Some(("b", Ok(2))));
/// ```
#[derive(Debug)]
pub struct OrderedFinalizer<T, O> {
    slots: VecDeque<(T, Option<O>)>,
    /// Sequence number of `slots[0]`.
    base: u64,
}

impl<T, O> Default for OrderedFinalizer<T, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, O> OrderedFinalizer<T, O> {
    /// Empty.
    pub fn new() -> Self {
        Self { slots: VecDeque::new(), base: 0 }
    }

    /// Adds an item; returns its sequence number.
    pub fn push(&mut self, item: T) -> u64 {
        let seq = self.base + self.slots.len() as u64;
        self.slots.push_back((item, None));
        seq
    }

    /// Records the outcome of item `seq`. Unknown or already-popped sequence numbers are ignored;
    /// returns whether the outcome was recorded.
    pub fn complete(&mut self, seq: u64, outcome: O) -> bool {
        let Some(index) = seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        match self.slots.get_mut(index) {
            Some((_, slot @ None)) => {
                *slot = Some(outcome);
                true
            }
            _ => false,
        }
    }

    /// Item `seq`, while it is held.
    pub fn get(&self, seq: u64) -> Option<&T> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(index).map(|(item, _)| item)
    }

    /// The oldest item, if it has an outcome.
    pub fn pop_ready(&mut self) -> Option<(T, O)> {
        if !matches!(self.slots.front(), Some((_, Some(_)))) {
            return None;
        }
        let (item, outcome) = self.slots.pop_front()?;
        self.base += 1;
        outcome.map(|o| (item, o))
    }

    /// Items still held (with or without an outcome).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_outcomes_are_released_in_order() {
        let mut f = OrderedFinalizer::new();
        let seqs: Vec<u64> = (0..100).map(|i| f.push(i)).collect();
        let mut order: Vec<u64> = seqs.clone();
        fastrand::shuffle(&mut order);
        let mut released = Vec::new();
        for s in order {
            assert!(f.complete(s, s * 10));
            while let Some((item, o)) = f.pop_ready() {
                assert_eq!(o, item * 10);
                released.push(item);
            }
        }
        assert_eq!(released, (0..100).collect::<Vec<_>>());
        assert!(f.is_empty());
    }

    #[test]
    fn stale_and_duplicate_outcomes_are_ignored() {
        let mut f = OrderedFinalizer::new();
        let a = f.push('a');
        assert!(f.complete(a, 1));
        assert!(!f.complete(a, 2), "already has an outcome");
        assert_eq!(f.pop_ready(), Some(('a', 1)));
        assert!(!f.complete(a, 3), "already popped");
        assert!(!f.complete(99, 3), "never pushed");
        let b = f.push('b');
        assert_eq!(b, 1);
    }
}
