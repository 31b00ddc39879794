//! Bookkeeping of the worker's scheduler, free of I/O so it is tested on its own:
//! [`OffsetTracker`] (what may be committed) and [`KeyLanes`] (per-key ordering).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hash;

/// Per partition: which fetched offsets are unfinished, so the commit never passes one.
///
/// The commit point is the lowest unfinished offset, or one past the highest fetched offset when
/// everything fetched has finished: Kafka's "highest contiguous finished offset + 1".
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    pending: BTreeSet<i64>,
    /// Finished offsets above the lowest pending one, as ranges `from -> to` (`[from, to)`,
    /// merged when adjacent, so at most one more than the pending offsets however long the
    /// lowest one stays): the finished ranges are found from these rather than by walking every
    /// pending offset, which a store at each start of attempts did thousands of times a second.
    done: BTreeMap<i64, i64>,
    next_fetched: Option<i64>,
    committed: Option<i64>,
    /// Bumped by every change.
    generation: u64,
}

impl OffsetTracker {
    /// Records that `offset` was fetched and is now unfinished.
    pub fn fetched(&mut self, offset: i64) {
        self.generation += 1;
        self.pending.insert(offset);
        self.next_fetched = Some(self.next_fetched.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Records that `offset` finished (done or dead-lettered).
    pub fn finished(&mut self, offset: i64) {
        self.generation += 1;
        if !self.pending.remove(&offset) {
            return;
        }
        match self.pending.first() {
            Some(&low) if low < offset => self.insert_done(offset),
            Some(&low) => {
                // the commit point moved up to `low`: what finished below it is committable (a
                // range below `low` ends at it at most: `low` is unfinished)
                while self
                    .done
                    .first_key_value()
                    .is_some_and(|(&from, _)| from < low)
                {
                    self.done.pop_first();
                }
            }
            None => self.done.clear(),
        }
    }

    /// Adds `offset` to the finished ranges, merging it with the ranges it touches.
    fn insert_done(&mut self, offset: i64) {
        let (mut from, mut to) = (offset, offset + 1);
        if let Some((&f, &t)) = self.done.range(..=offset).next_back() {
            if t >= offset {
                // touches (or holds) the range before it
                from = f;
                to = to.max(t);
            }
        }
        if let Some(&t) = self.done.get(&to) {
            self.done.remove(&to);
            to = t;
        }
        self.done.insert(from, to);
    }

    /// The offset to commit now, if it moved since the last [`OffsetTracker::committed`].
    pub fn commit_point(&self) -> Option<i64> {
        let point = self.pending.first().copied().or(self.next_fetched)?;
        (self.committed != Some(point)).then_some(point)
    }

    /// Where the partition stands: the commit point, changed or not (`None` before anything was
    /// fetched or committed).
    pub fn position(&self) -> Option<i64> {
        self.pending
            .first()
            .copied()
            .or(self.next_fetched)
            .or(self.committed)
    }

    /// Records a successful commit.
    pub fn committed(&mut self, offset: i64) {
        self.generation += 1;
        self.committed = Some(offset);
    }

    /// A number every change moves on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Unfinished offsets.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether `offset` was fetched and has not finished.
    pub fn is_pending(&self, offset: i64) -> bool {
        self.pending.contains(&offset)
    }

    /// One past the highest fetched offset, if any was fetched.
    pub fn fetched_to(&self) -> Option<i64> {
        self.next_fetched
    }

    /// The finished offsets past the commit point, as `[from, to)` ranges in order: the gaps
    /// between unfinished offsets, up to the highest fetched one.
    ///
    /// Only gaps holding a finished offset are named (a gap of offsets never fetched, such as a
    /// transaction's markers, names nothing worth naming).
    pub fn finished_ranges(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        let end = self.next_fetched.unwrap_or(0);
        let mut cursor = i64::MIN;
        std::iter::from_fn(move || {
            let (&d, _) = self.done.range(cursor..).next()?;
            // the gap around `d`: from past the unfinished offset below it to the next one;
            // the other finished ranges of the gap are jumped over
            let from = self.pending.range(..d).next_back().map_or(d, |p| p + 1);
            let to = self.pending.range(d..).next().copied().unwrap_or(end);
            cursor = to;
            Some((from, to))
        })
    }
}

/// Per-key lanes: at most one job per key is running (or waiting to retry) at a time, and the
/// others of that key wait in arrival order. Jobs without a key are never held back.
#[derive(Debug)]
pub struct KeyLanes<K, T> {
    lanes: HashMap<K, VecDeque<T>>,
}

impl<K: Hash + Eq, T> Default for KeyLanes<K, T> {
    fn default() -> Self {
        KeyLanes {
            lanes: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, T> KeyLanes<K, T> {
    /// Offers a new job. Returns it back when it may run now (its key was free, and is now owned
    /// by it); otherwise queues it behind the running job of its key and returns `None`.
    pub fn admit(&mut self, key: Option<&K>, job: T) -> Option<T> {
        let Some(key) = key else { return Some(job) };
        match self.lanes.get_mut(key) {
            Some(queue) => {
                queue.push_back(job);
                None
            }
            None => {
                self.lanes.insert(key.clone(), VecDeque::new());
                Some(job)
            }
        }
    }

    /// The job owning `key` finished: returns the next job of that key, which now owns it.
    pub fn release(&mut self, key: Option<&K>) -> Option<T> {
        let key = key?;
        let queue = self.lanes.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => Some(next),
            None => {
                self.lanes.remove(key);
                None
            }
        }
    }

    /// Removes every waiting job matching `drop`; returns how many were removed. Keys stay owned
    /// by their running jobs.
    pub fn remove_waiting(&mut self, mut drop: impl FnMut(&T) -> bool) -> usize {
        let mut n = 0;
        for q in self.lanes.values_mut() {
            let before = q.len();
            q.retain(|t| !drop(t));
            n += before - q.len();
        }
        n
    }

    /// Jobs waiting behind a running job of the same key.
    pub fn waiting(&self) -> usize {
        self.lanes.values().map(VecDeque::len).sum()
    }

    /// Keys currently owned.
    pub fn busy_keys(&self) -> usize {
        self.lanes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_never_passes_an_unfinished_offset() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.commit_point(), None);
        for o in 10..15 {
            t.fetched(o);
        }
        assert_eq!(t.commit_point(), Some(10));
        t.finished(11);
        t.finished(12);
        assert_eq!(t.commit_point(), Some(10));
        t.finished(10);
        assert_eq!(t.commit_point(), Some(13));
        t.committed(13);
        assert_eq!(t.commit_point(), None, "no new commit until it moves");
        t.finished(14);
        t.finished(13);
        assert_eq!(t.commit_point(), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn finished_ranges_are_the_gaps_past_the_commit_point() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.finished_ranges().count(), 0);
        for o in 10..20 {
            t.fetched(o);
        }
        for o in [11, 12, 15, 18, 19] {
            t.finished(o);
        }
        let r: Vec<_> = t.finished_ranges().collect();
        assert_eq!(r, vec![(11, 13), (15, 16), (18, 20)]);
        for o in [10, 13, 14, 16, 17] {
            t.finished(o);
        }
        assert_eq!(
            t.finished_ranges().count(),
            0,
            "nothing past the commit point"
        );
    }

    /// The ranges, as gaps between unfinished offsets that hold a finished one: what the
    /// tracker computed by walking every pending offset before it kept the finished ones.
    fn gaps(pending: &BTreeSet<i64>, finished: &BTreeSet<i64>, end: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut it = pending.iter().copied().peekable();
        while let Some(p) = it.next() {
            let to = it.peek().copied().unwrap_or(end);
            if to > p + 1 && finished.range(p + 1..to).next().is_some() {
                out.push((p + 1, to));
            }
        }
        out
    }

    /// Finishing in any order, with offsets never fetched (markers) between, names the same
    /// ranges as the gaps between unfinished offsets (a negative control: dropping the pruning
    /// in `finished` names ranges below the commit point).
    #[test]
    fn finished_ranges_match_the_gaps_in_any_order() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut t = OffsetTracker::default();
            let (mut pending, mut finished) = (BTreeSet::new(), BTreeSet::new());
            let mut o = 100;
            for _ in 0..(next() % 60) {
                o += 1 + (next() % 4 == 0) as i64;
                t.fetched(o);
                pending.insert(o);
            }
            let mut order: Vec<i64> = pending.iter().copied().collect();
            for i in (1..order.len()).rev() {
                order.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            for f in order {
                t.finished(f);
                pending.remove(&f);
                finished.insert(f);
                let got: Vec<_> = t.finished_ranges().collect();
                assert_eq!(got, gaps(&pending, &finished, o + 1));
            }
        }
    }

    /// A lowest job that never finishes while a million behind it do: the finished offsets are
    /// kept as one range, not a million entries (a negative control, one entry per offset,
    /// held 999,999).
    #[test]
    fn finished_offsets_behind_a_stuck_one_stay_one_range() {
        let mut t = OffsetTracker::default();
        for o in 0..1_000_000 {
            t.fetched(o);
        }
        for o in 1..1_000_000 {
            t.finished(o);
        }
        assert_eq!(t.done.len(), 1);
        assert_eq!(
            t.finished_ranges().collect::<Vec<_>>(),
            vec![(1, 1_000_000)]
        );
        // out of order and across a gap of offsets never fetched, too
        let mut t = OffsetTracker::default();
        for o in [0, 1, 2, 3, 5, 6, 7] {
            t.fetched(o);
        }
        for o in [6, 2, 5, 3, 7] {
            t.finished(o);
        }
        assert_eq!(t.done.len(), 2, "{:?}", t.done);
        assert_eq!(t.finished_ranges().collect::<Vec<_>>(), vec![(2, 8)]);
    }

    #[test]
    fn lanes_hold_same_key_jobs_in_order_and_let_others_pass() {
        let mut l: KeyLanes<&str, u32> = KeyLanes::default();
        assert_eq!(l.admit(Some(&"a"), 1), Some(1));
        assert_eq!(l.admit(Some(&"a"), 2), None);
        assert_eq!(l.admit(Some(&"b"), 3), Some(3));
        assert_eq!(l.admit(None, 4), Some(4));
        assert_eq!(l.admit(Some(&"a"), 5), None);
        assert_eq!(l.waiting(), 2);
        assert_eq!(l.release(Some(&"a")), Some(2));
        assert_eq!(l.release(Some(&"a")), Some(5));
        assert_eq!(l.release(Some(&"a")), None);
        assert_eq!(l.busy_keys(), 1);
        assert_eq!(l.admit(Some(&"a"), 6), Some(6), "a free key runs at once");
        assert_eq!(l.release(None), None);
    }
}
