//! Consumer groups of the embedded backend: membership and partition assignment, in memory.
//!
//! Members live in this process, so a member that goes away is one whose subscription was dropped:
//! no heartbeats are needed. Every join or leave starts a new generation and recomputes the whole
//! assignment: per topic, its partitions are dealt round-robin over the members subscribed to it,
//! in member order (Kafka's round-robin assignor). Members notice the change on their next poll.
//! Committed offsets are fenced: only the current owner of a partition may commit it.
//!
//! A partition moving from one member to another is *held* by the old owner until it releases
//! it (after its revocation barrier: its running jobs on it finished and it committed them);
//! until then the new owner does not see it in its assignment and the old owner may still
//! commit it. A member that leaves releases everything it holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use conveyor_core::TopicPartition;

#[derive(Debug, Default)]
struct GroupState {
    generation: u64,
    /// member id -> subscribed topics with their partition counts
    members: BTreeMap<u64, Vec<(String, i32)>>,
    assignment: HashMap<u64, BTreeSet<TopicPartition>>,
    /// partition -> the previous owner, still working on it (not yet released)
    held: HashMap<TopicPartition, u64>,
}

impl GroupState {
    fn rebalance(&mut self) {
        self.generation += 1;
        let before = std::mem::take(&mut self.assignment);
        let mut topics: BTreeMap<&str, (i32, Vec<u64>)> = BTreeMap::new();
        for (id, subs) in &self.members {
            self.assignment.insert(*id, BTreeSet::new());
            for (t, n) in subs {
                topics.entry(t).or_insert((*n, Vec::new())).1.push(*id);
            }
        }
        for (topic, (n, members)) in topics {
            for p in 0..n {
                let owner = members[p as usize % members.len()];
                self.assignment
                    .get_mut(&owner)
                    .expect("member present")
                    .insert(TopicPartition::new(topic, p));
            }
        }
        // a partition that changed owner is held by the old one until it releases it
        for (old, tps) in before {
            if !self.members.contains_key(&old) {
                continue;
            }
            for tp in tps {
                let kept = self.assignment.get(&old).is_some_and(|a| a.contains(&tp));
                if !kept {
                    self.held.entry(tp).or_insert(old);
                }
            }
        }
        let assignment = &self.assignment;
        self.held
            .retain(|tp, holder| !assignment.get(holder).is_some_and(|a| a.contains(tp)));
    }

    /// `member`'s partitions: its assignment without those another member still holds.
    fn usable(&self, member: u64) -> BTreeSet<TopicPartition> {
        self.assignment
            .get(&member)
            .map(|a| {
                a.iter()
                    .filter(|tp| self.held.get(*tp).is_none_or(|h| *h == member))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// All consumer groups of one backend.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    groups: Mutex<HashMap<String, GroupState>>,
    next_member: Mutex<u64>,
}

impl Groups {
    /// Adds a member; returns its id.
    pub(crate) fn join(&self, group: &str, topics: Vec<(String, i32)>) -> u64 {
        let id = {
            let mut n = self.next_member.lock().expect("member counter");
            *n += 1;
            *n
        };
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups.entry(group.to_owned()).or_default();
        g.members.insert(id, topics);
        g.rebalance();
        id
    }

    /// Removes a member.
    pub(crate) fn leave(&self, group: &str, member: u64) {
        let mut groups = self.groups.lock().expect("groups lock");
        if let Some(g) = groups.get_mut(group) {
            g.members.remove(&member);
            g.held.retain(|_, holder| *holder != member);
            if g.members.is_empty() {
                groups.remove(group);
            } else {
                g.rebalance();
            }
        }
    }

    /// A topic gained partitions: every group subscribed to it rebalances over the new count.
    pub(crate) fn resize(&self, topic: &str, partitions: i32) {
        let mut groups = self.groups.lock().expect("groups lock");
        for g in groups.values_mut() {
            let mut changed = false;
            for subs in g.members.values_mut() {
                for (t, n) in subs.iter_mut() {
                    if t == topic && *n != partitions {
                        *n = partitions;
                        changed = true;
                    }
                }
            }
            if changed {
                g.rebalance();
            }
        }
    }

    /// The current generation and this member's partitions.
    pub(crate) fn assignment(&self, group: &str, member: u64) -> (u64, BTreeSet<TopicPartition>) {
        let groups = self.groups.lock().expect("groups lock");
        groups
            .get(group)
            .map(|g| (g.generation, g.usable(member)))
            .unwrap_or_default()
    }

    /// The partitions `member` holds for a handover.
    pub(crate) fn held_by(&self, group: &str, member: u64) -> Vec<TopicPartition> {
        let groups = self.groups.lock().expect("groups lock");
        groups.get(group).map_or_else(Vec::new, |g| {
            g.held
                .iter()
                .filter(|(_, h)| **h == member)
                .map(|(tp, _)| tp.clone())
                .collect()
        })
    }

    /// `member` finished with partitions revoked from it: their next owners may start.
    pub(crate) fn release(&self, group: &str, member: u64, tps: &[TopicPartition]) {
        let mut groups = self.groups.lock().expect("groups lock");
        if let Some(g) = groups.get_mut(group) {
            let before = g.held.len();
            g.held
                .retain(|tp, holder| !(*holder == member && tps.contains(tp)));
            if g.held.len() != before {
                g.generation += 1;
            }
        }
    }

    /// The current generation, cheaply.
    pub(crate) fn generation(&self, group: &str) -> u64 {
        let groups = self.groups.lock().expect("groups lock");
        groups.get(group).map_or(0, |g| g.generation)
    }

    /// Runs `f` while holding the group lock if `member` owns `tp`, so ownership cannot change
    /// between the check and the commit.
    pub(crate) fn with_owned<T>(
        &self,
        group: &str,
        member: u64,
        tps: &[TopicPartition],
        f: impl FnOnce(&[bool]) -> T,
    ) -> T {
        let groups = self.groups.lock().expect("groups lock");
        let owned: Vec<bool> = tps
            .iter()
            .map(|tp| {
                groups.get(group).is_some_and(|g| {
                    g.usable(member).contains(tp) || g.held.get(tp) == Some(&member)
                })
            })
            .collect();
        f(&owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_shared_and_move_when_a_member_leaves() {
        let g = Groups::default();
        let a = g.join("g", vec![("t".into(), 6)]);
        assert_eq!(g.assignment("g", a).1.len(), 6);
        let b = g.join("g", vec![("t".into(), 6)]);
        let all: Vec<TopicPartition> = (0..6).map(|p| TopicPartition::new("t", p)).collect();
        g.release("g", a, &all);
        let (gen, pa) = g.assignment("g", a);
        let (_, pb) = g.assignment("g", b);
        assert_eq!((pa.len(), pb.len()), (3, 3));
        assert!(pa.is_disjoint(&pb));
        g.leave("g", a);
        assert!(g.generation("g") > gen);
        assert_eq!(g.assignment("g", b).1.len(), 6);
    }

    #[test]
    fn a_moved_partition_reaches_its_new_owner_only_once_released() {
        let g = Groups::default();
        let a = g.join("g", vec![("t".into(), 2)]);
        let b = g.join("g", vec![("t".into(), 2)]);
        let (_, pa) = g.assignment("g", a);
        assert_eq!(pa.len(), 1, "a gave one partition up");
        assert!(
            g.assignment("g", b).1.is_empty(),
            "b waits while a holds it"
        );
        let moved = TopicPartition::new("t", 1 - pa.iter().next().unwrap().partition);
        assert!(
            g.with_owned("g", a, std::slice::from_ref(&moved), |o| o[0]),
            "a may still commit it"
        );
        g.release("g", a, std::slice::from_ref(&moved));
        assert_eq!(
            g.assignment("g", b).1.into_iter().collect::<Vec<_>>(),
            vec![moved.clone()]
        );
        assert!(!g.with_owned("g", a, std::slice::from_ref(&moved), |o| o[0]));
    }
}
