//! The worker group's assignor: deals every connector's tasks to the members, balanced per
//! connector and overall, sticky, and cooperative (a task that moves is first only revoked from
//! its owner, and given to its new owner in the next generation, so it never runs twice).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// One task of one connector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    /// The connector's name.
    pub connector: String,
    /// The task's index within its connector.
    pub task: usize,
}

impl TaskId {
    /// Task `task` of `connector`.
    ///
    /// ```
    /// let t = connector_core::runtime::cluster::TaskId::new("telemetry", 2);
    /// assert_eq!(t.to_string(), "telemetry-2");
    /// ```
    pub fn new(connector: impl Into<String>, task: usize) -> Self {
        Self { connector: connector.into(), task }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.connector, self.task)
    }
}

/// A member as the assignor sees it: its id and the tasks it runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTasks {
    /// The member's (worker's) id.
    pub id: String,
    /// The tasks it owns (runs) now.
    pub owned: Vec<TaskId>,
}

/// What one member is told: the tasks to run this generation, and those to stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberAssignment {
    /// The tasks it runs in this generation, sorted.
    pub tasks: Vec<TaskId>,
    /// Tasks it owned and must stop (they go to another member next generation), sorted.
    pub revoked: Vec<TaskId>,
}

/// Deals `tasks` to `members` (keyed by member id in the result; every member has an entry).
///
/// * **Balanced**: once nothing is being revoked, every member holds `floor(n/w)` or
///   `ceil(n/w)` of every connector's `n` tasks, and the totals differ by at most one.
/// * **Sticky**: a task stays with its owner unless balance needs it elsewhere (a connector's
///   `n % w` extra tasks go round the members in id order, continuing across connectors).
/// * **Cooperative**: a task owned by one member and due to another is only revoked from its
///   owner in this round (assigned to nobody); the next round gives it to the new member. A task
///   owned by several members (should not happen) goes to none of them this round. Owned tasks
///   that no longer exist are revoked.
///
/// ```
/// use connector_core::runtime::cluster::{assign, MemberTasks, TaskId};
/// let tasks: Vec<TaskId> = (0..4).map(|t| TaskId::new("c", t)).collect();
/// let members = [
///     MemberTasks { id: "a".into(), owned: tasks.clone() },
///     MemberTasks { id: "b".into(), owned: vec![] },
/// ];
/// let round = assign(&members, &tasks);
/// assert_eq!(round["a"].tasks.len(), 2);
/// assert_eq!(round["a"].revoked.len(), 2);
/// assert!(round["b"].tasks.is_empty(), "b gets them next round, once a stopped them");
/// ```
pub fn assign(members: &[MemberTasks], tasks: &[TaskId]) -> BTreeMap<String, MemberAssignment> {
    let mut out: BTreeMap<String, MemberAssignment> =
        members.iter().map(|m| (m.id.clone(), MemberAssignment::default())).collect();
    if out.is_empty() {
        return out;
    }
    let ids: Vec<String> = out.keys().cloned().collect();
    let all: BTreeSet<&TaskId> = tasks.iter().collect();
    // Who claims each task.
    let mut claims: BTreeMap<&TaskId, BTreeSet<&str>> = BTreeMap::new();
    for m in members {
        for t in &m.owned {
            claims.entry(t).or_default().insert(m.id.as_str());
        }
    }
    // Owned and valid: the task exists and exactly one member claims it.
    let mut owner: BTreeMap<&TaskId, &str> = BTreeMap::new();
    for (t, who) in &claims {
        let exists = all.contains(t);
        if exists && who.len() == 1 {
            if let Some(w) = who.iter().next() {
                owner.insert(t, w);
            }
        } else {
            for w in who {
                if let Some(a) = out.get_mut(*w) {
                    a.revoked.push((*t).clone());
                }
            }
        }
    }
    let conflicted: BTreeSet<&TaskId> =
        claims.iter().filter(|(_, w)| w.len() > 1).map(|(t, _)| *t).collect();

    let mut by_connector: BTreeMap<&str, Vec<&TaskId>> = BTreeMap::new();
    for t in &all {
        by_connector.entry(t.connector.as_str()).or_default().push(t);
    }
    let w = ids.len();
    // Each connector's `rem` extra (ceil) slots go round the members in id order, continuing
    // where the previous connector's stopped: balanced overall, and the same quotas every round
    // while the members stay the same, so the group settles in two rounds.
    let mut next = 0usize;
    for ctasks in by_connector.values() {
        let n = ctasks.len();
        let (base, rem) = (n / w, n % w);
        let mut quota: BTreeMap<&str, usize> = ids.iter().map(|i| (i.as_str(), base)).collect();
        for j in 0..rem {
            quota.insert(ids[(next + j) % w].as_str(), base + 1);
        }
        next = (next + rem) % w;
        // Keep what each owner may keep (lowest task ids first); the rest of its tasks is revoked.
        let mut free: Vec<&TaskId> = Vec::new();
        let mut held: BTreeMap<&str, usize> = ids.iter().map(|i| (i.as_str(), 0)).collect();
        for t in ctasks {
            match owner.get(*t) {
                Some(o) if held[o] < quota[o] => {
                    *held.entry(o).or_default() += 1;
                    if let Some(a) = out.get_mut(*o) {
                        a.tasks.push((*t).clone());
                    }
                }
                Some(o) => {
                    if let Some(a) = out.get_mut(*o) {
                        a.revoked.push((*t).clone());
                    }
                }
                None if conflicted.contains(*t) => {}
                None => free.push(t),
            }
        }
        // Free tasks (nobody runs them) fill the members below their quota.
        let mut free = free.into_iter();
        for id in &ids {
            while held[id.as_str()] < quota[id.as_str()] {
                let Some(t) = free.next() else { break };
                *held.entry(id.as_str()).or_default() += 1;
                if let Some(a) = out.get_mut(id) {
                    a.tasks.push(t.clone());
                }
            }
        }
    }
    for a in out.values_mut() {
        a.tasks.sort();
        a.revoked.sort();
        a.revoked.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tasks(spec: &[(&str, usize)]) -> Vec<TaskId> {
        spec.iter().flat_map(|(c, n)| (0..*n).map(|t| TaskId::new(*c, t))).collect()
    }

    fn member(id: &str, owned: Vec<TaskId>) -> MemberTasks {
        MemberTasks { id: id.into(), owned }
    }

    /// Runs rounds (each member then owns what it was given) until nothing is revoked.
    fn settle(mut members: Vec<MemberTasks>, all: &[TaskId]) -> (Vec<MemberTasks>, usize) {
        for round in 1..=4 {
            let out = assign(&members, all);
            let revoked = out.values().any(|a| !a.revoked.is_empty());
            for m in &mut members {
                m.owned = out[&m.id].tasks.clone();
            }
            if !revoked {
                return (members, round);
            }
        }
        panic!("did not settle in 4 rounds");
    }

    fn count(m: &MemberTasks, connector: &str) -> usize {
        m.owned.iter().filter(|t| t.connector == connector).count()
    }

    #[test]
    fn six_tasks_of_two_connectors_on_three_workers_are_two_two_two_each() {
        let all = tasks(&[("source", 6), ("sink", 6)]);
        let members = vec![member("a", vec![]), member("b", vec![]), member("c", vec![])];
        let (settled, rounds) = settle(members, &all);
        assert_eq!(rounds, 1);
        for m in &settled {
            assert_eq!((count(m, "source"), count(m, "sink")), (2, 2), "{m:?}");
        }
    }

    #[test]
    fn a_joining_worker_gets_its_share_only_after_the_owner_stopped_it() {
        let all = tasks(&[("s", 4)]);
        let first = assign(&[member("a", all.clone()), member("b", vec![])], &all);
        assert_eq!(first["a"].tasks, tasks(&[("s", 2)]));
        assert_eq!(first["a"].revoked, vec![TaskId::new("s", 2), TaskId::new("s", 3)]);
        assert!(first["b"].tasks.is_empty());
        let second = assign(&[member("a", first["a"].tasks.clone()), member("b", vec![])], &all);
        assert_eq!(second["b"].tasks, vec![TaskId::new("s", 2), TaskId::new("s", 3)]);
        assert!(second["a"].revoked.is_empty());
    }

    #[test]
    fn a_departed_workers_tasks_go_at_once_and_the_others_keep_theirs() {
        let all = tasks(&[("s", 4)]);
        let a = vec![TaskId::new("s", 0), TaskId::new("s", 1)];
        let out = assign(&[member("a", a.clone())], &all);
        assert_eq!(out["a"].tasks, all);
        assert!(out["a"].revoked.is_empty());
    }

    #[test]
    fn a_task_claimed_twice_goes_to_neither_and_nonexistent_ones_are_revoked() {
        let all = tasks(&[("s", 2)]);
        let out = assign(
            &[
                member("a", vec![TaskId::new("s", 0), TaskId::new("gone", 0)]),
                member("b", vec![TaskId::new("s", 0)]),
            ],
            &all,
        );
        assert!(!out["a"].tasks.contains(&TaskId::new("s", 0)));
        assert!(!out["b"].tasks.contains(&TaskId::new("s", 0)));
        assert!(out["a"].revoked.contains(&TaskId::new("s", 0)));
        assert!(out["a"].revoked.contains(&TaskId::new("gone", 0)));
        assert!(out["b"].revoked.contains(&TaskId::new("s", 0)));
    }

    /// Connector sizes, the number of workers, and each worker's claimed (connector, task)s.
    type Scenario = (Vec<usize>, usize, Vec<Vec<(usize, usize)>>);

    fn scenario() -> impl Strategy<Value = Scenario> {
        (prop::collection::vec(0usize..9, 1..4), 1usize..5).prop_flat_map(|(sizes, w)| {
            let claims =
                prop::collection::vec(prop::collection::vec((0usize..4, 0usize..10), 0..12), w..=w);
            (Just(sizes), Just(w), claims)
        })
    }

    proptest! {
        #[test]
        fn every_round_is_safe_and_the_group_settles_balanced_and_sticky(
            (sizes, w, claims) in scenario()
        ) {
            let names = ["c0", "c1", "c2", "c3"];
            let spec: Vec<(&str, usize)> =
                sizes.iter().enumerate().map(|(i, n)| (names[i], *n)).collect();
            let all = tasks(&spec);
            let members: Vec<MemberTasks> = claims.iter().enumerate().map(|(i, owned)| {
                let owned: BTreeSet<TaskId> =
                    owned.iter().map(|(c, t)| TaskId::new(names[*c], *t)).collect();
                member(&format!("w{i}"), owned.into_iter().collect())
            }).collect();
            let out = assign(&members, &all);
            prop_assert_eq!(out.len(), w);
            // No task given to two members, nor to one while another owns it.
            let mut given: BTreeMap<&TaskId, &str> = BTreeMap::new();
            for (id, a) in &out {
                for t in &a.tasks {
                    prop_assert!(all.contains(t));
                    prop_assert!(given.insert(t, id).is_none(), "{} given twice", t);
                    for m in &members {
                        if &m.id != id {
                            prop_assert!(!m.owned.contains(t), "{} owned by {} given to {}", t, m.id, id);
                        }
                    }
                }
                let me = members.iter().find(|m| &m.id == id).unwrap();
                for t in &a.revoked {
                    prop_assert!(me.owned.contains(t));
                    prop_assert!(!a.tasks.contains(t));
                }
                // What it owned is either kept or revoked.
                for t in &me.owned {
                    prop_assert!(a.tasks.contains(t) ^ a.revoked.contains(t));
                }
            }
            // Settled: balanced per connector and overall, and a second settle moves nothing.
            let (settled, rounds) = settle(members, &all);
            prop_assert!(rounds <= 2, "settled in {} rounds", rounds);
            for (c, n) in &spec {
                for m in &settled {
                    let k = count(m, c);
                    prop_assert!(k == n / w || k == n.div_ceil(w), "{} holds {} of {}'s {}", m.id, k, c, n);
                }
            }
            let totals: Vec<usize> = settled.iter().map(|m| m.owned.len()).collect();
            let (lo, hi) = (totals.iter().min().unwrap(), totals.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "totals {:?}", totals);
            let given: usize = totals.iter().sum();
            prop_assert_eq!(given, all.len());
            let again = assign(&settled, &all);
            for m in &settled {
                prop_assert_eq!(&again[&m.id].tasks, &m.owned);
                prop_assert!(again[&m.id].revoked.is_empty());
            }
        }
    }
}
