//! Jobs waiting in the worker's memory for their due time ([`DueQueue`]): a delayed job with
//! less than the shortest delay tier left (or one that may not move to a tier) waits here, not
//! on a timer of its own.
//!
//! Order: the queue lets jobs go in the order of their due times (milliseconds), and jobs due
//! in the same millisecond in the order they started waiting. A key's jobs start waiting in
//! their offset order (the key's lane lets them through one at a time), so a key's delayed jobs
//! go to their lane in due order, ties in enqueue order. One timer per job did not: timers that
//! fire together complete in any order, and a key's jobs due together started out of order.
//!
//! Cost: each waiting job counts its record's bytes plus [`JOB_OVERHEAD`]; the worker bounds
//! that total with [`WorkerOptions::max_delayed_bytes`](super::WorkerOptions), apart from
//! `max_buffered` (see the [worker docs](super)).

use std::collections::{BTreeMap, HashMap};

use conveyor_core::ConsumedRecord;

use crate::worker::ready::Topical;

/// What a waiting job costs beyond its record's bytes: the task, its lane key, the queue entry.
pub(super) const JOB_OVERHEAD: usize = 512;

/// The bytes a waiting job is counted for.
pub(super) fn cost_of(r: &ConsumedRecord) -> usize {
    let key = r.key.as_ref().map_or(0, |k| k.len());
    r.topic.len() + key + r.value.len() + r.headers.byte_len() + JOB_OVERHEAD
}

/// See the [module docs](self).
pub(super) struct DueQueue<T> {
    /// By (due time in ms since the epoch, arrival number).
    waiting: BTreeMap<(i64, u64), (T, usize)>,
    next: u64,
    bytes: usize,
    /// Waiting jobs per topic.
    by_topic: HashMap<String, usize>,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        DueQueue {
            waiting: BTreeMap::new(),
            next: 0,
            bytes: 0,
            by_topic: HashMap::new(),
        }
    }
}

impl<T: Topical> DueQueue<T> {
    /// `job`, due at `due` (ms since the epoch) and counted for `cost` bytes, waits behind every
    /// job due earlier or at the same millisecond.
    pub(super) fn push(&mut self, due: i64, cost: usize, job: T) {
        *self.by_topic.entry(job.topic().to_owned()).or_default() += 1;
        self.bytes += cost;
        self.waiting.insert((due, self.next), (job, cost));
        self.next += 1;
    }

    /// The earliest due time waiting.
    pub(super) fn next_due(&self) -> Option<i64> {
        self.waiting.keys().next().map(|(due, _)| *due)
    }

    /// Takes the jobs due at `now` or before, in due order (ties: in arrival order).
    pub(super) fn pop_due(&mut self, now: i64) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (job, cost) = entry.remove();
            self.forget(&job, cost);
            out.push(job);
        }
        out
    }

    /// Takes every job `remove` picks (e.g. those of revoked partitions), in due order.
    pub(super) fn remove_where(&mut self, mut remove: impl FnMut(&T) -> bool) -> Vec<T> {
        let keys: Vec<(i64, u64)> = self
            .waiting
            .iter()
            .filter(|(_, (job, _))| remove(job))
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((job, cost)) = self.waiting.remove(&k) {
                self.forget(&job, cost);
                out.push(job);
            }
        }
        out
    }

    fn forget(&mut self, job: &T, cost: usize) {
        self.bytes -= cost;
        if let Some(n) = self.by_topic.get_mut(job.topic()) {
            *n -= 1;
            if *n == 0 {
                self.by_topic.remove(job.topic());
            }
        }
    }

    /// Jobs waiting.
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// The bytes the waiting jobs are counted for.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Jobs of `topic` waiting.
    pub(super) fn of_topic(&self, topic: &str) -> usize {
        self.by_topic.get(topic).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct J(&'static str, u32);
    impl Topical for J {
        fn topic(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn jobs_go_in_due_order_and_ties_in_arrival_order() {
        let mut q = DueQueue::default();
        // one key's jobs as they start waiting: offsets 0..5 with these due times
        for (i, due) in [(0, 1_000), (1, 1_000), (2, 999), (3, 1_001), (4, 1_000)] {
            q.push(due, 10, J("t", i));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.bytes(), 50);
        assert_eq!(q.next_due(), Some(999));
        assert!(q.pop_due(998).is_empty(), "nothing before its due time");
        let got: Vec<u32> = q.pop_due(1_000).into_iter().map(|j| j.1).collect();
        assert_eq!(got, [2, 0, 1, 4]);
        assert_eq!(q.next_due(), Some(1_001));
        assert_eq!(q.bytes(), 10);
        assert_eq!(q.pop_due(i64::MAX), [J("t", 3)]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn removed_jobs_leave_the_counts() {
        let mut q = DueQueue::default();
        q.push(5, 100, J("a", 1));
        q.push(3, 200, J("b", 2));
        q.push(4, 300, J("a", 3));
        assert_eq!((q.of_topic("a"), q.of_topic("b")), (2, 1));
        let gone = q.remove_where(|j| j.0 == "a");
        assert_eq!(gone, [J("a", 3), J("a", 1)]);
        assert_eq!((q.of_topic("a"), q.of_topic("b")), (0, 1));
        assert_eq!(q.bytes(), 200);
        assert_eq!(q.pop_due(10), [J("b", 2)]);
        assert_eq!(q.bytes(), 0);
    }
}
