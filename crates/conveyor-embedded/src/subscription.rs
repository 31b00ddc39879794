//! A member of an embedded consumer group: tracks its assignment and fetch positions, reads from
//! the store and waits for appends when there is nothing to read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conveyor_core::{
    CommitOffset, Committed, Error, Poll, Record, Result, StartFrom, Subscription, TopicPartition,
    TransactionalCommit,
};
use tokio::sync::watch;

use crate::group::Groups;
use crate::store::Store;

/// A member's place in its group: it leaves the group when the last holder drops it, the
/// subscription or a transactional write still queued after the subscription was dropped (a
/// worker cancelled in the middle of a commit), so the next owner of its partitions reads their
/// committed offsets only after that write landed, and never repeats the jobs it covered.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) store: Arc<Store>,
    pub(crate) groups: Arc<Groups>,
    pub(crate) group: String,
    pub(crate) member: u64,
    /// Transactional writes queued and not yet landed: revoked partitions are released only
    /// when none is (a commit cancelled while the member goes on polling).
    pub(crate) writes: std::sync::atomic::AtomicUsize,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.groups.leave(&self.group, self.member);
        self.store.changes.send_modify(|v| *v += 1);
    }
}

/// Travels with a transactional write and is dropped once it landed (or failed).
struct WriteHold(Arc<Membership>);

impl WriteHold {
    fn new(membership: &Arc<Membership>) -> Self {
        membership.writes.fetch_add(1, Ordering::SeqCst);
        WriteHold(Arc::clone(membership))
    }
}

impl Drop for WriteHold {
    fn drop(&mut self) {
        self.0.writes.fetch_sub(1, Ordering::SeqCst);
        // a poll holding revoked partitions back for this write looks again
        self.0.store.changes.send_modify(|v| *v += 1);
    }
}

/// One consumer-group member on the embedded backend. Dropping it leaves the group (once its
/// queued transactional write, if any, landed: see [`Membership`]).
#[derive(Debug)]
pub(crate) struct EmbeddedSubscription {
    pub(crate) store: Arc<Store>,
    pub(crate) groups: Arc<Groups>,
    pub(crate) group: String,
    pub(crate) member: u64,
    pub(crate) membership: Arc<Membership>,
    pub(crate) start: StartFrom,
    pub(crate) generation: u64,
    pub(crate) positions: BTreeMap<TopicPartition, i64>,
    pub(crate) changes: watch::Receiver<u64>,
    pub(crate) cursor: usize,
    /// Owned partitions not read until resumed.
    pub(crate) paused: BTreeSet<TopicPartition>,
    /// Waited on before revoked partitions are released to their next owner.
    pub(crate) on_revoke: Option<conveyor_core::RevokeBarrier>,
    /// Revoked partitions this member still holds: released on the next poll, after the caller
    /// handled the revocation (committed what finished on them).
    pub(crate) releasing: Vec<TopicPartition>,
    /// An assignment change applied but not yet returned (its revocation barrier may still be
    /// waiting), so a cancelled poll loses no event.
    pub(crate) pending: Option<Pending>,
}

/// An assignment change not yet returned, with the revocation barrier's wait once started (kept
/// across cancelled polls, so the barrier runs once per revocation).
#[derive(Debug)]
pub(crate) struct Pending {
    revoked: Vec<TopicPartition>,
    assigned: Vec<TopicPartition>,
    wait: Option<tokio::task::JoinHandle<()>>,
}

impl EmbeddedSubscription {
    /// Applies a new generation's assignment; returns (revoked, assigned). Nothing is changed
    /// when it fails, so the change is found again on the next poll.
    fn refresh_assignment(&mut self) -> Result<Option<(Vec<TopicPartition>, Vec<TopicPartition>)>> {
        if self.groups.generation(&self.group) == self.generation {
            return Ok(None);
        }
        let (generation, now): (u64, BTreeSet<TopicPartition>) =
            self.groups.assignment(&self.group, self.member);
        let before: BTreeSet<TopicPartition> = self.positions.keys().cloned().collect();
        // partitions the group lets this member hold for a handover but that it never started
        // on (it was given and taken away between two polls): released at once, or their next
        // owner would wait for a release that never comes
        let never_started: Vec<TopicPartition> = self
            .groups
            .held_by(&self.group, self.member)
            .into_iter()
            .filter(|tp| !before.contains(tp))
            .collect();
        if !never_started.is_empty() {
            self.groups
                .release(&self.group, self.member, &never_started);
            self.store.changes.send_modify(|v| *v += 1);
        }
        let revoked: Vec<_> = before.difference(&now).cloned().collect();
        let assigned: Vec<_> = now.difference(&before).cloned().collect();
        let mut starts = Vec::with_capacity(assigned.len());
        for tp in &assigned {
            let log = self.store.topic_or_err(&tp.topic)?;
            let part = &log.parts[tp.partition as usize];
            let pos = match self.store.committed(&self.group, &tp.topic, tp.partition)? {
                Some(o) => o,
                None => match self.start {
                    StartFrom::Earliest => part.low.load(Ordering::Acquire),
                    StartFrom::Latest => part.high.load(Ordering::Acquire),
                },
            };
            starts.push((tp.clone(), pos));
        }
        self.generation = generation;
        for tp in &revoked {
            self.positions.remove(tp);
            self.paused.remove(tp);
        }
        self.positions.extend(starts);
        if revoked.is_empty() && assigned.is_empty() {
            return Ok(None);
        }
        Ok(Some((revoked, assigned)))
    }

    fn read_some(&mut self, max: usize) -> Result<Vec<conveyor_core::ConsumedRecord>> {
        let mut out = Vec::new();
        let n = self.positions.len();
        if n == 0 {
            return Ok(out);
        }
        self.cursor = (self.cursor + 1) % n;
        let keys: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let tp = &keys[(self.cursor + i) % n];
            if self.paused.contains(tp) {
                continue;
            }
            let pos = self.positions[tp];
            let read = self
                .store
                .topic_or_err(&tp.topic)
                .and_then(|log| self.store.read(&log, tp.partition, pos, max - out.len()));
            let records = match read {
                Ok(records) => records,
                // the records already read (their positions advanced) are returned; this
                // partition is tried again on the next poll
                Err(e) if !out.is_empty() => {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot read a partition; returning the other partitions' records");
                    break;
                }
                Err(e) => return Err(e),
            };
            if let Some(last) = records.last() {
                self.positions.insert(tp.clone(), last.offset + 1);
            }
            out.extend(records);
        }
        Ok(out)
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.changes.borrow_and_update();
            self.release_revoked();
            if self.pending.is_none() {
                self.pending = self.refresh_assignment()?.map(|(revoked, assigned)| {
                    // the next owner starts on revoked partitions only once this member's work
                    // on them stopped and the caller committed it (released on the next poll)
                    let wait = match (&self.on_revoke, revoked.is_empty()) {
                        (Some(barrier), false) => {
                            let (barrier, tps) = (barrier.clone(), revoked.clone());
                            Some(tokio::task::spawn_blocking(move || barrier.wait(&tps)))
                        }
                        _ => None,
                    };
                    Pending {
                        revoked,
                        assigned,
                        wait,
                    }
                });
            }
            if let Some(pending) = &mut self.pending {
                // a poll cancelled here awaits the same wait next time
                if let Some(wait) = &mut pending.wait {
                    let _ = wait.await;
                }
                let Pending {
                    revoked, assigned, ..
                } = self.pending.take().expect("pending event");
                // added to any still held back for a queued write
                self.releasing.extend(revoked.iter().cloned());
                return Ok(Poll::Rebalance { revoked, assigned });
            }
            let records = self.read_some(max.max(1))?;
            if !records.is_empty() {
                return Ok(Poll::Records(records));
            }
            match tokio::time::timeout_at(deadline, self.changes.changed()).await {
                Err(_) => return Ok(Poll::Idle),
                Ok(Err(_)) => return Err(Error::Closed),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        self.commit_owned(offsets)
    }

    async fn committed(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Committed>> {
        partitions
            .iter()
            .map(|tp| {
                let c = self
                    .store
                    .committed_with_metadata(&self.group, &tp.topic, tp.partition)?;
                Ok(Committed {
                    tp: tp.clone(),
                    next_offset: c.as_ref().map(|(o, _)| *o),
                    metadata: c.map(|(_, m)| m).unwrap_or_default(),
                })
            })
            .collect()
    }

    fn pause(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        self.paused.extend(
            partitions
                .iter()
                .filter(|tp| self.positions.contains_key(*tp))
                .cloned(),
        );
        Ok(())
    }

    fn resume(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        for tp in partitions {
            self.paused.remove(tp);
        }
        Ok(())
    }

    /// Local commits are cheap: stored progress is committed at once (partitions not owned are
    /// skipped).
    fn store(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        match self.commit_owned(offsets) {
            Err(Error::NotAssigned { .. }) => Ok(()),
            other => other,
        }
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    fn transactional(&mut self) -> Option<&mut dyn TransactionalCommit> {
        Some(self)
    }

    fn group(&self) -> &str {
        &self.group
    }
}

/// One atomic write of the records and the offsets. Fenced by ownership: partitions move to
/// another member only in this member's own `poll` (or when it is dropped), which cannot run
/// while this holds `&mut self`, so the check below still holds when the write lands.
#[async_trait]
impl TransactionalCommit for EmbeddedSubscription {
    async fn publish_and_commit(
        &mut self,
        records: Vec<(String, Record)>,
        offsets: &[CommitOffset],
    ) -> Result<()> {
        conveyor_core::backend::check_commit_metadata(offsets)?;
        let tps: Vec<TopicPartition> = offsets.iter().map(|c| c.tp.clone()).collect();
        let lost = self
            .groups
            .with_owned(&self.group, self.member, &tps, |owned| {
                tps.iter()
                    .zip(owned)
                    .find(|(_, o)| !**o)
                    .map(|(tp, _)| tp.clone())
            });
        if let Some(tp) = lost {
            return Err(Error::not_assigned(&tp));
        }
        // consecutive records of one topic form one part, so the order is kept
        let mut parts: Vec<(String, Vec<Record>)> = Vec::new();
        for (topic, r) in records {
            match parts.last_mut() {
                Some((t, rs)) if *t == topic => rs.push(r),
                _ => parts.push((topic, vec![r])),
            }
        }
        self.store
            .write(
                parts,
                Some((self.group.clone(), offsets.to_vec())),
                Some(Box::new(WriteHold::new(&self.membership))),
            )
            .await
            .map(drop)
    }
}

impl EmbeddedSubscription {
    /// Releases the revoked partitions the caller was told of to their next owner, unless a
    /// transactional write of this member is still queued: its offsets may be among them, and
    /// the next owner would start from the older ones (checked again when it lands).
    fn release_revoked(&mut self) {
        if !self.releasing.is_empty() && self.membership.writes.load(Ordering::SeqCst) == 0 {
            let released = std::mem::take(&mut self.releasing);
            self.groups.release(&self.group, self.member, &released);
            self.store.changes.send_modify(|v| *v += 1);
        }
    }

    /// Commits the offsets of owned partitions; `NotAssigned` names the first one not owned.
    fn commit_owned(&self, offsets: &[CommitOffset]) -> Result<()> {
        conveyor_core::backend::check_commit_metadata(offsets)?;
        let tps: Vec<TopicPartition> = offsets.iter().map(|c| c.tp.clone()).collect();
        let (store, group) = (&self.store, &self.group);
        self.groups.with_owned(group, self.member, &tps, |owned| {
            let ok: Vec<CommitOffset> = offsets
                .iter()
                .zip(owned)
                .filter(|(_, o)| **o)
                .map(|(c, _)| c.clone())
                .collect();
            store.commit(group, &ok)?;
            match offsets.iter().zip(owned).find(|(_, o)| !**o) {
                Some((c, _)) => Err(Error::not_assigned(&c.tp)),
                None => Ok(()),
            }
        })
    }
}
