//! [`TopicBudget`]: the limit on distinct topics one connector's producers write to at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a topic may go without a record before its state is evicted, by default.
pub const DEFAULT_TOPIC_IDLE: Duration = Duration::from_secs(300);

/// A limit on the distinct Kafka topics written to at once, shared by the producers of one
/// connector (clones share the count). A topic counts from its first record until it has been
/// idle (no record sent to it) for the budget's idle time; then it is forgotten, and a new topic
/// may take its place.
///
/// ```
/// use std::time::Duration;
/// use connector_core::kafka::TopicBudget;
///
/// let budget = TopicBudget::new(2, Duration::from_secs(60));
/// assert!(budget.admit("a") && budget.admit("b") && budget.admit("a"));
/// assert!(!budget.admit("c"), "a third topic is over the limit");
/// assert_eq!(budget.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct TopicBudget {
    max_topics: usize,
    idle: Duration,
    state: Arc<Mutex<BudgetState>>,
}

/// Budgets are equal when they share one count.
impl PartialEq for TopicBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

impl Eq for TopicBudget {}

#[derive(Debug)]
struct BudgetState {
    last_used: super::FastMap<Arc<str>, Instant>,
    last_sweep: Instant,
}

impl TopicBudget {
    /// At most `max_topics` topics at once; a topic is forgotten after `idle` without a record.
    pub fn new(max_topics: usize, idle: Duration) -> Self {
        Self {
            max_topics,
            idle,
            state: Arc::new(Mutex::new(BudgetState {
                last_used: super::FastMap::default(),
                last_sweep: Instant::now(),
            })),
        }
    }

    /// No limit on the number of topics (idle topics are still evicted after
    /// [`DEFAULT_TOPIC_IDLE`]).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX, DEFAULT_TOPIC_IDLE)
    }

    /// The limit.
    pub fn max_topics(&self) -> usize {
        self.max_topics
    }

    /// How long a topic may be idle before it is forgotten.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Topics counted now.
    pub fn len(&self) -> usize {
        self.state.lock().last_used.len()
    }

    /// True when no topic is counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes a record for `topic`: true when it may be written (the topic is counted already, or
    /// there is room for it), false when it would be one topic over the limit.
    pub fn admit(&self, topic: &str) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        if let Some(at) = state.last_used.get_mut(topic) {
            *at = now;
            return true;
        }
        // Full: forget idle topics, at most once a second so that a flood of rejected records
        // does not scan the whole map for each one.
        if state.last_used.len() >= self.max_topics
            && now.duration_since(state.last_sweep) >= Duration::from_secs(1).min(self.idle)
        {
            let idle = self.idle;
            state.last_used.retain(|_, at| now.duration_since(*at) < idle);
            state.last_sweep = now;
        }
        if state.last_used.len() >= self.max_topics {
            return false;
        }
        state.last_used.insert(Arc::from(topic), now);
        true
    }
}
