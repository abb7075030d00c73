//! Room for edge nodes: at most `max_nodes` entries. When full, a node never born whose rebirth
//! rate limit is over is forgotten first (it holds nothing else); for an NBIRTH also any node
//! never born, then the offline node seen least recently. Online nodes are never forgotten.
//! Refusals are counted and logged (at 1, 2, 4, 8, ... refusals), never silent.

use super::state::NodeState;
use super::HostState;
use crate::NodeKey;

impl HostState {
    /// The node's entry, created if there is room (see the module documentation); `for_birth`
    /// lets an NBIRTH displace offline nodes too. Marks the node seen at `now_ms`.
    pub(super) fn entry(
        &mut self,
        node: &NodeKey,
        now_ms: u64,
        for_birth: bool,
    ) -> Option<&mut NodeState> {
        if !self.nodes.contains_key(node)
            && self.nodes.len() >= self.config.max_nodes
            && !self.evict(now_ms, for_birth)
        {
            self.refused = self.refused.saturating_add(1);
            if self.refused.is_power_of_two() {
                tracing::warn!(
                    node = %node,
                    refused = self.refused,
                    max_nodes = self.config.max_nodes,
                    "sparkplug: no room for another edge node (max_nodes); its messages are invalid"
                );
            }
            return None;
        }
        let state = self.nodes.entry(node.clone()).or_default();
        state.last_seen = now_ms;
        Some(state)
    }

    /// Forgets one node to make room; false when none may go.
    fn evict(&mut self, now_ms: u64, for_birth: bool) -> bool {
        let interval = self.config.rebirth_interval_ms;
        let expired = |n: &NodeState| {
            !n.born && n.last_rebirth.is_none_or(|t| now_ms >= t.saturating_add(interval))
        };
        let mut victim = self.nodes.iter().find(|(_, n)| expired(n)).map(|(k, _)| k.clone());
        if victim.is_none() && for_birth {
            victim = self.nodes.iter().find(|(_, n)| !n.born).map(|(k, _)| k.clone());
            if victim.is_none() {
                victim = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| !n.online)
                    .min_by_key(|(_, n)| n.last_seen)
                    .map(|(k, _)| k.clone());
            }
        }
        let Some(victim) = victim else { return false };
        if let Some(d) = self.nodes.remove(&victim).and_then(|n| n.seq.deadline) {
            self.deadlines.remove(&(d, victim.clone()));
        }
        tracing::debug!(node = %victim, "sparkplug: edge node state forgotten to make room");
        true
    }

    /// How many messages were refused for want of room for their edge node.
    pub fn refused_nodes(&self) -> u64 {
        self.refused
    }
}
