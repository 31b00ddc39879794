//! Commits: the highest contiguous finished offset per partition, with its attempt counts
//! (or, in a transactional worker, with the finished jobs' outputs in one transaction), and the
//! drain at shutdown.

use super::*;

impl Scheduler {
    /// Offsets that may be committed now, per owned partition.
    /// Each with its attempt counts (the partitions whose commit point or counts changed).
    pub(super) fn commit_points(&self) -> Vec<CommitOffset> {
        self.commit_points_of(|_| true)
    }

    /// [`Scheduler::commit_points`] of the partitions `which` takes.
    fn commit_points_of(&self, which: impl Fn(&Track) -> bool) -> Vec<CommitOffset> {
        self.partitions
            .tracks
            .iter()
            .filter(|(_, t)| which(t))
            .filter_map(|(tp, t)| {
                let point = t.offsets.commit_point().or_else(|| {
                    (t.attempts.changed() || t.done_changed)
                        .then(|| t.offsets.position())
                        .flatten()
                })?;
                let (metadata, _) = t.attempts.encode(
                    point,
                    &t.done_ranges(),
                    self.shared.options.transactional,
                    MAX_COMMIT_METADATA,
                );
                Some(CommitOffset::new(tp.clone(), point).with_metadata(metadata))
            })
            .collect()
    }

    /// Hands finished progress to the subscription (committed by the backend on revocation).
    pub(super) fn store(&mut self) {
        self.commits.unstored = false;
        if self.shared.options.transactional {
            // stored offsets are committed by the backend without the outputs that go with
            // them (Kafka: at revocation; embedded: at once); a transactional worker commits
            // only through its transactions
            return;
        }
        // only the partitions that changed since they were last stored: a store is a write
        // on the embedded backend, and the loop stores as often as it starts attempts
        let offsets = self.commit_points_of(|t| t.stored != Some(t.signature()));
        if offsets.is_empty() {
            return;
        }
        match self.sub.store(&offsets) {
            Ok(()) => {
                for c in &offsets {
                    if let Some(t) = self.partitions.tracks.get_mut(&c.tp) {
                        t.stored = Some(t.signature());
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot store offsets; the next commit covers them")
            }
        }
    }

    /// Commits what changed; returns whether it was committed.
    pub(super) async fn commit(&mut self) -> bool {
        // the states of the jobs this commit finishes go to their writer, in order (it
        // writes them while the loop goes on)
        if self.shared.states.is_some() {
            let since = std::mem::replace(
                &mut self.commits.states_flushed_at,
                crate::observation::job_states::now_ms(),
            );
            self.note_running(since);
            if let Some(states) = &self.shared.states {
                states.flush(&self.shared.backend);
            }
        }
        let offsets = self.commit_points();
        self.commits.last_commit = Instant::now();
        if offsets.is_empty() {
            self.commits.dirty = false;
            return true;
        }
        let began = std::time::Instant::now();
        let committed = match self.shared.options.transactional {
            true => self.commit_transaction(&offsets).await,
            false => self.sub.commit(&offsets).await.map(|()| offsets),
        };
        let g = &self.shared.group_metrics;
        g.commit_seconds.observe_duration(began.elapsed());
        match (&committed, self.shared.options.transactional) {
            (Ok(_), false) => g.commits_ok.inc(),
            (Ok(_), true) => {
                g.commits_ok.inc();
                g.tx_committed.inc();
            }
            (Err(_), false) => g.commits_failed.inc(),
            (Err(_), true) => {
                g.commits_failed.inc();
                g.tx_aborted.inc();
            }
        }
        match committed {
            Ok(offsets) => {
                for c in offsets {
                    if let Some(t) = self.partitions.tracks.get_mut(&c.tp) {
                        t.offsets.committed(c.next_offset);
                        t.attempts.persisted();
                        t.done_changed = false;
                        // only a transactional worker keeps outputs: no metadata to read back
                        // on every commit of the others
                        if !t.outputs.is_empty() {
                            t.committed_outputs(outputs_to(&c));
                        }
                    }
                }
                self.commits.dirty = false;
                true
            }
            // the other partitions' offsets were committed (the contract); the revoked one's
            // rebalance event comes with the next poll
            Err(e @ Error::NotAssigned { .. }) if !self.shared.options.transactional => {
                tracing::debug!(error = %e, "commit of a partition no longer owned refused");
                true
            }
            // a transaction is all or nothing: nothing was committed; the revocation comes
            // with the next poll and the commit after it leaves that partition out
            Err(e @ Error::NotAssigned { .. }) => {
                tracing::info!(error = %e, "transactional commit refused for a partition no longer owned; committing the others next time");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; will retry");
                false
            }
        }
    }

    /// Commits `offsets` with the outputs of the jobs below them, in one transaction. A
    /// partition the backend says is no longer owned is left out and the rest committed (its
    /// next owner redoes its jobs), so a revocation does not fail the partitions still owned.
    /// Returns the offsets it committed.
    pub(super) async fn commit_transaction(
        &mut self,
        offsets: &[CommitOffset],
    ) -> Result<Vec<CommitOffset>> {
        let mut offsets = offsets.to_vec();
        loop {
            if offsets.is_empty() {
                return Ok(offsets);
            }
            // the outputs of every job the commit says is finished: below its offset, and in the
            // finished ranges its metadata names (only finished jobs have outputs)
            let records: Vec<(String, Record)> = offsets
                .iter()
                .filter_map(|c| self.partitions.tracks.get(&c.tp).map(|t| (c, t)))
                .flat_map(|(c, t)| {
                    t.outputs
                        .range(..outputs_to(c))
                        .filter(|(o, _)| !t.offsets.is_pending(**o))
                        .flat_map(|(_, v)| v.clone())
                })
                .collect();
            let emitted = records.len();
            let tx = self
                .sub
                .transactional()
                .expect("checked when the worker started");
            match tx.publish_and_commit(records, &offsets).await {
                Ok(()) => {
                    self.shared
                        .stats
                        .emitted
                        .fetch_add(emitted as u64, Ordering::Relaxed);
                    return Ok(offsets);
                }
                Err(Error::NotAssigned { topic, partition })
                    if offsets
                        .iter()
                        .any(|c| c.tp.topic == topic && c.tp.partition == partition) =>
                {
                    tracing::debug!(
                        topic,
                        partition,
                        "left out of the transaction: no longer owned"
                    );
                    offsets.retain(|c| !(c.tp.topic == topic && c.tp.partition == partition));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn drain(&mut self, timeout: Duration) {
        let waiting = self.ready.len()
            + self.keys.lanes.waiting()
            + self.timers.backoff.len()
            + self.timers.due.len();
        tracing::info!(
            running = self.attempts.running.len(),
            handed_back = waiting,
            "worker stopping"
        );
        self.timers.backoff.abort_all();
        self.ready.clear();
        self.pauses.held.clear();
        self.suspects.marking.clear();
        let deadline = Instant::now() + timeout;
        while !self.attempts.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.attempts.running.join_next()).await {
                // a retry moved to its tier is finished here too: its copy is durable
                Ok(Some(Ok((task, TaskResult::Finished | TaskResult::Parked(_))))) => {
                    self.mark_finished(&task)
                }
                Ok(Some(Ok((task, TaskResult::Emitted(records))))) => {
                    self.stash_outputs(&task, records);
                    self.mark_finished(&task)
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        abandoned = self.attempts.running.len(),
                        "shutdown timeout: abandoning running jobs; they will be redelivered"
                    );
                    self.attempts.running.abort_all();
                    // reap the aborted attempts (their running counts drop with them), so the
                    // revocation when the subscription closes does not wait for them again
                    let reap = async { while self.attempts.running.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_secs(1), reap).await;
                    break;
                }
            }
        }
        // a clean stop: every job that may have run is finished or named by its count
        for track in self.partitions.tracks.values_mut() {
            track.attempts.release();
        }
        // stored too: should this commit fail, the revocation as the subscription leaves
        // commits the stored offsets, which then include the jobs finished during the drain
        self.store();
        self.commit().await;
        // a clean stop writes every job state
        if let Some(states) = &self.shared.states {
            states
                .drain(&self.shared.backend, Duration::from_secs(5))
                .await;
        }
        self.attempts.running_by_partition.close();
        // nothing runs any more: the revocation this starts has nothing to wait for
        self.sub.leave(crate::LEAVE_TIMEOUT).await;
    }
}

/// The end of what a commit says is finished: its offset, or the end of the last finished
/// range its metadata names.
fn outputs_to(c: &CommitOffset) -> i64 {
    crate::worker::attempts::done_ranges(&c.metadata, c.next_offset)
        .last()
        .map_or(c.next_offset, |r| r.1.max(c.next_offset))
}

impl Drop for Scheduler {
    /// The subscription closes as the scheduler is dropped (on Kafka its revocation runs the
    /// barrier): nothing is left to wait for, also when `run` was cancelled or panicked.
    fn drop(&mut self) {
        self.attempts.running_by_partition.close();
    }
}
