//! What a poll brings the worker's scheduler ([`Scheduler::on_poll`]): records admitted
//! through the key lanes (second copies of a move dropped, keys parked by retries respected),
//! and assignments and revocations, a new partition starting from what its previous owners
//! committed ([`Scheduler::inherited`]).

use super::*;

impl Scheduler {
    pub(super) async fn on_poll(&mut self, poll: Poll) -> Result<()> {
        match poll {
            Poll::Idle => {}
            Poll::Records(records) => {
                let mut leased = false;
                for record in records {
                    let tp = record.tp();
                    let epoch = self.partitions.epoch;
                    let track = self
                        .partitions
                        .tracks
                        .entry(tp.clone())
                        .or_insert_with(|| Track::new(epoch, AttemptBook::default()));
                    track.offsets.fetched(record.offset);
                    let arrival = track.attempts.arrive(record.offset);
                    if arrival.done {
                        // a previous owner finished it past its commit point; a move's key is
                        // still remembered, so a second copy of the move later is dropped
                        let group = &self.shared.options.group;
                        let foreign = record
                            .headers
                            .get_str(headers::RETRY_GROUP)
                            .is_some_and(|g| g != group);
                        if let Some(k) = record.headers.get_str(headers::DEDUP_KEY) {
                            if !foreign {
                                let _ = self.partitions.seen.is_copy(k, &tp, record.offset);
                            }
                        }
                        track.finished(record.offset);
                        self.commits.dirty = true;
                        self.commits.unstored = true;
                        self.shared
                            .stats
                            .already_done
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    leased |= track.attempts.cover(record.offset);
                    self.partitions.buffered += 1;
                    let lane = record.key.clone().map(|k| (record.topic.clone(), k));
                    let group = &self.shared.options.group;
                    let ours = record
                        .headers
                        .get_str(headers::RETRY_GROUP)
                        .map(|g| g == group);
                    // a job this group moved to a delay tier comes back with its attempt number
                    let base = match ours {
                        Some(true) => conveyor_core::JobMeta::from_headers(&record.headers).attempt,
                        _ => 1,
                    };
                    let copy = ours != Some(false)
                        && record
                            .headers
                            .get_str(headers::DEDUP_KEY)
                            .is_some_and(|k| self.partitions.seen.is_copy(k, &tp, record.offset));
                    let task = Task {
                        dead_lettering: false,
                        // the book counts attempt numbers, which already include the base
                        attempt: base.max(arrival.attempts_before.saturating_add(1)),
                        record: Arc::new(record),
                        epoch: track.epoch,
                        lane,
                        suspect: arrival.suspect,
                        counted: false,
                        copy,
                        in_place: false,
                        keeps_key: false,
                        unlaned: false,
                        started_at: 0,
                        running_noted: false,
                    };
                    let tp = task.record.tp();
                    // the retrying job its key waited for is back: it goes first
                    let back = ours == Some(true)
                        && !copy
                        && task.lane.as_ref().is_some_and(|l| {
                            self.keys.parked.get(l).is_some_and(|p| {
                                task.record.headers.get_str(headers::DEDUP_KEY)
                                    == Some(p.move_key.as_str())
                            })
                        });
                    if back {
                        if let Some(l) = &task.lane {
                            self.keys.parked.remove(l);
                        }
                        self.ready.push_back(Task {
                            keeps_key: true,
                            ..task
                        });
                        continue;
                    }
                    match self.keys.lanes.admit(task.lane.clone().as_ref(), task) {
                        Some(task) => self.ready.push_back(task),
                        None => *self.keys.waiting.entry(tp).or_default() += 1,
                    }
                }
                if leased {
                    // the lease is committed before any job under it runs
                    self.commits.dirty = true;
                    self.commit().await;
                }
            }
            Poll::Rebalance { revoked, assigned } => {
                let names = |tps: &[TopicPartition]| {
                    tps.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                tracing::info!(revoked = %names(&revoked), assigned = %names(&assigned), group = %self.shared.options.group, "rebalance");
                if !assigned.is_empty() {
                    self.shared.group_metrics.rebalances.inc();
                }
                if !revoked.is_empty() {
                    self.commit().await;
                }
                self.attempts.running_by_partition.settled(&revoked);
                self.attempts.running_by_partition.settled(&assigned);
                let unparked: Vec<LaneKey> = self
                    .keys
                    .parked
                    .iter()
                    .filter(|(_, p)| revoked.contains(&p.tp))
                    .map(|(k, _)| k.clone())
                    .collect();
                for tp in &revoked {
                    self.pauses.paused.remove(tp);
                    self.pauses.admin_paused.remove(tp);
                    let (stale, kept): (Vec<Task>, Vec<Task>) =
                        std::mem::take(&mut self.pauses.held)
                            .into_iter()
                            .partition(|t| t.record.tp() == *tp);
                    self.pauses.held = kept;
                    for t in &stale {
                        self.release_lane(t);
                    }
                    self.keys.waiting.remove(tp);
                    // jobs of the partition waiting behind a busy key go too: released later
                    // they would count against the partition's waiting total once it was
                    // assigned here again
                    self.keys.lanes.remove_waiting(|t: &Task| {
                        t.record.partition == tp.partition && t.record.topic == tp.topic
                    });
                    // delayed jobs of the partition waiting in memory go too (uncounted below)
                    for t in self
                        .timers
                        .due
                        .remove_where(|t: &Task| t.record.tp() == *tp)
                    {
                        if !t.unlaned {
                            self.release_lane(&t);
                        }
                    }
                    if let Some(track) = self.partitions.tracks.remove(tp) {
                        self.partitions.buffered -= track.offsets.in_flight();
                    }
                }
                for lane in unparked {
                    self.keys.parked.remove(&lane);
                    self.release_key(Some(&lane));
                }
                let inherited = self.inherited(&assigned).await?;
                for tp in assigned {
                    self.partitions.epoch += 1;
                    let book = inherited
                        .iter()
                        .find(|c| c.tp == tp)
                        .map(|c| AttemptBook::inherit(c.next_offset, &c.metadata))
                        .unwrap_or_default();
                    self.partitions
                        .tracks
                        .insert(tp, Track::new(self.partitions.epoch, book));
                }
            }
        }
        Ok(())
    }

    /// The attempt counts and finished ranges the previous owners of `assigned` committed.
    /// Three tries, then none (their jobs count attempts from 1, and the finished ones past
    /// the commit run again); a transactional worker tries for 30 s and then fails instead: it
    /// must not run again a job whose outputs the previous owner published.
    pub(super) async fn inherited(
        &mut self,
        assigned: &[TopicPartition],
    ) -> Result<Vec<conveyor_core::Committed>> {
        if assigned.is_empty() {
            return Ok(Vec::new());
        }
        let transactional = self.shared.options.transactional;
        let tries = if transactional { 60 } else { 3 };
        let mut tried = 0;
        loop {
            tried += 1;
            match self.sub.committed(assigned).await {
                Ok(c) => return Ok(c),
                Err(e) if tried < tries => {
                    tracing::debug!(error = %e, "cannot read the committed attempt counts; trying again");
                    let pause = if transactional { 500 } else { 200 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) if transactional => {
                    tracing::error!(error = %e, "cannot read the group's commits of the assigned partitions for 30 s; stopping the transactional worker (its jobs' outputs must not be published twice)");
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the attempt counts of the assigned partitions; their jobs count attempts from 1 and the finished ones past the commit run again");
                    return Ok(Vec::new());
                }
            }
        }
    }
}
