//! [`RunningCounts`]: how many attempts run per partition, shared between the worker's
//! scheduler (which counts them in) and the backend's rebalance path (which waits, through the
//! worker's [`conveyor_core::RevokeBarrier`], until revoked partitions have none).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use conveyor_core::{ConsumedRecord, TopicPartition};

/// Running attempts per partition, with a condition variable to wait for zero.
///
/// An attempt enters and leaves through its partition's atomic counter, which the worker keeps
/// ([`RunningCounts::counter`]): no lock is taken per job unless a revocation waits (one lock
/// and one notification per job, taken on two threads, cost a futex call or more per job).
#[derive(Debug, Default)]
pub(crate) struct RunningCounts {
    state: Mutex<State>,
    idle: Condvar,
    /// How many partitions are being revoked (`State::revoking`), read without the lock.
    revoking: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// Per partition ever counted (a few: the partitions of the worker's topics).
    counts: HashMap<TopicPartition, Arc<AtomicUsize>>,
    /// Partitions being revoked: no new attempt of theirs may start.
    revoking: HashSet<TopicPartition>,
    /// The worker stopped: a revocation (the subscription closing) has nothing to wait for.
    closed: bool,
}

/// One running attempt: counted while it lives (dropped when the attempt ends, however it ends).
#[derive(Debug)]
pub(crate) struct Running {
    counts: Arc<RunningCounts>,
    count: Arc<AtomicUsize>,
}

impl RunningCounts {
    /// The counter of `tp`'s running attempts, for [`RunningCounts::enter_with`].
    pub(crate) fn counter(&self, tp: &TopicPartition) -> Arc<AtomicUsize> {
        let mut state = self.state.lock().expect("running counts");
        Arc::clone(state.counts.entry(tp.clone()).or_default())
    }

    /// Counts an attempt of `record` in until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, record: &ConsumedRecord) -> Running {
        let count = self.counter(&record.tp());
        self.enter_with(&count)
    }

    /// Counts an attempt in through its partition's counter, until the guard is dropped.
    pub(crate) fn enter_with(self: &Arc<Self>, count: &Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::SeqCst);
        Running {
            counts: Arc::clone(self),
            count: Arc::clone(count),
        }
    }

    /// The worker stopped (its attempts were waited for, or abandoned): revocations from now on
    /// return at once.
    pub(crate) fn close(&self) {
        self.state.lock().expect("running counts").closed = true;
        self.idle.notify_all();
    }

    /// Whether `tp` is being revoked (its jobs must not start).
    pub(crate) fn is_revoking(&self, tp: &TopicPartition) -> bool {
        if self.revoking.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.state
            .lock()
            .expect("running counts")
            .revoking
            .contains(tp)
    }

    /// The worker learnt of the rebalance: these partitions are no longer being revoked (gone,
    /// or assigned again).
    pub(crate) fn settled(&self, tps: &[TopicPartition]) {
        let mut state = self.state.lock().expect("running counts");
        for tp in tps {
            state.revoking.remove(tp);
        }
        self.revoking.store(state.revoking.len(), Ordering::SeqCst);
    }

    /// Stops new attempts of `partitions` and blocks until none runs, or `limit` passed (then
    /// warns: the next owner may start on a key still running here).
    pub(crate) fn wait_idle(&self, partitions: &[TopicPartition], limit: Duration, group: &str) {
        let deadline = Instant::now() + limit;
        let started = Instant::now();
        let mut counts = self.state.lock().expect("running counts");
        counts.revoking.extend(partitions.iter().cloned());
        // before the counts are read: an attempt ending after this notifies (see `Drop`)
        self.revoking.store(counts.revoking.len(), Ordering::SeqCst);
        loop {
            let busy: usize = partitions
                .iter()
                .filter_map(|tp| counts.counts.get(tp))
                .map(|c| c.load(Ordering::SeqCst))
                .sum();
            if counts.closed {
                // the worker already waited for its attempts (its shutdown timeout) or
                // abandoned them: waiting again would only stretch the shutdown
                if busy > 0 {
                    tracing::warn!(group, busy, "revoking partitions of a stopped worker while abandoned jobs may still run on them: the next owner may run their keys at the same time");
                }
                return;
            }
            if busy == 0 {
                if started.elapsed() > Duration::from_millis(1) {
                    tracing::info!(group, waited = ?started.elapsed(), "revoked partitions' running jobs finished");
                }
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(group, busy, ?limit, "revoking partitions while jobs still run on them (shutdown_timeout passed): the next owner may run their keys at the same time");
                return;
            }
            counts = self
                .idle
                .wait_timeout(counts, left)
                .expect("running counts")
                .0;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        // a revocation marks its partitions (in `revoking`) before it reads the counts and
        // waits, under the lock: taking the lock here to notify cannot come between the two
        if self.counts.revoking.load(Ordering::SeqCst) > 0 {
            let _state = self.counts.state.lock().expect("running counts");
            self.counts.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32) -> ConsumedRecord {
        ConsumedRecord {
            topic: "t".into(),
            partition,
            offset: 0,
            timestamp: 0,
            key: None,
            value: bytes::Bytes::new(),
            headers: Default::default(),
        }
    }

    #[test]
    fn a_revocation_waits_for_running_jobs_until_the_worker_stopped() {
        let counts = Arc::new(RunningCounts::default());
        let tp = TopicPartition::new("t", 0);
        let _running = counts.enter(&record(0));
        let started = Instant::now();
        counts.wait_idle(std::slice::from_ref(&tp), Duration::from_millis(200), "g");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "a running job is waited for up to the limit"
        );
        // a stopped worker already waited for (or abandoned) its jobs: a revocation then, as
        // when its subscription leaves the group, returns at once
        counts.close();
        let started = Instant::now();
        counts.wait_idle(&[tp], Duration::from_secs(30), "g");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited {:?} after the worker stopped",
            started.elapsed()
        );
    }
}
