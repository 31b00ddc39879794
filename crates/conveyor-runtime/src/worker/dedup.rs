//! Recent `dedup_key`s: how a worker recognises the second copy of a job that a crash wrote twice.
//!
//! A job moved through the delay tiers carries a `dedup_key` naming that move; a worker or
//! forwarder crash between publishing and committing can write the move again, and both copies
//! land in the same partition. The worker remembers the partition and offset of the first copy
//! of each key it saw (the most recent [`RecentKeys::capacity`] keys, in memory) and drops a
//! later copy at another offset. The same offset seen again is a redelivery, not a copy.

use std::collections::{HashMap, VecDeque};

use conveyor_core::TopicPartition;

/// The keys of the most recent copies seen, bounded.
#[derive(Debug)]
pub struct RecentKeys {
    seen: HashMap<String, (TopicPartition, i64)>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentKeys {
    /// Remembers at most `capacity` keys (the oldest are forgotten first).
    pub fn new(capacity: usize) -> Self {
        RecentKeys {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// How many keys are remembered at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Notes the copy of `key` at `tp`/`offset`; returns true when it is a second copy (the key
    /// was seen at another offset).
    pub fn is_copy(&mut self, key: &str, tp: &TopicPartition, offset: i64) -> bool {
        if let Some((first_tp, first)) = self.seen.get(key) {
            return !(first_tp == tp && *first == offset);
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.to_owned(), (tp.clone(), offset));
        self.order.push_back(key.to_owned());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_is_recognised_and_a_redelivery_is_not() {
        let tp = TopicPartition::new("jobs", 0);
        let mut k = RecentKeys::new(2);
        assert!(!k.is_copy("a", &tp, 10));
        assert!(
            !k.is_copy("a", &tp, 10),
            "the same offset again is a redelivery"
        );
        assert!(k.is_copy("a", &tp, 11));
        assert!(!k.is_copy("b", &tp, 12));
        assert!(!k.is_copy("c", &tp, 13));
        // "a" was forgotten: bounded memory
        assert!(!k.is_copy("a", &tp, 14));
    }
}
