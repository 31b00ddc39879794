//! The worker's scheduler loop: one task owns all state, polls, admits records through the key
//! lanes, runs attempts, parks retries on timers and reacts to assignments and revocations
//! (see the [worker docs](super)).

use super::*;
use crate::observation::job_states::{Detail, StateKind};

/// The scheduler's state, owned by its one task. Grouped by the concern that changes each part,
/// so a change shows which part it touches.
pub(super) struct Scheduler {
    // fields drop in declaration order; this order keeps the one from before the grouping for
    // every field whose drop does something: the subscription, then the queued tasks, then
    // the running attempts' and the timers' tasks (their `JoinSet`s abort them), then the
    // control log's handle, then the held tasks
    pub(super) shared: Arc<Shared>,
    pub(super) sub: Box<dyn Subscription>,
    pub(super) partitions: Partitions,
    pub(super) keys: Keys,
    pub(super) ready: ReadyQueue<Task>,
    pub(super) suspects: Suspects,
    pub(super) attempts: Attempts,
    pub(super) timers: Timers,
    pub(super) commits: Commits,
    /// Cancellations and pauses (set before the first poll).
    pub(super) control: Option<Control>,
    pub(super) pauses: Pauses,
}

/// The partitions this member owns and the records polled from them.
pub(super) struct Partitions {
    pub(super) tracks: HashMap<TopicPartition, Track>,
    pub(super) epoch: u64,
    pub(super) buffered: usize,
    /// Recent `dedup_key`s.
    pub(super) seen: RecentKeys,
}

/// Per-key order: the key lanes, the jobs waiting behind a key, and the keys held by retries.
pub(super) struct Keys {
    pub(super) lanes: KeyLanes<LaneKey, Task>,
    /// Per partition, jobs waiting behind a running or retrying job of their key.
    pub(super) waiting: HashMap<TopicPartition, usize>,
    /// Keys held by jobs waiting in a delay tier for their retry.
    pub(super) parked: HashMap<LaneKey, ParkedKey>,
}

/// The attempts running now.
pub(super) struct Attempts {
    pub(super) running: JoinSet<(Task, TaskResult)>,
    /// The task of each running attempt, so one whose task ends abnormally (a panic outside
    /// the handler's `catch_unwind`, e.g. in a future's `Drop`) still releases its key and is
    /// retried or dead-lettered.
    pub(super) in_flight: HashMap<tokio::task::Id, Task>,
    /// Running attempts per partition, shared with the revocation barrier.
    pub(super) running_by_partition: Arc<RunningCounts>,
}

/// Suspects (jobs that may have crashed their process before) waiting for their attempt count
/// to be committed.
pub(super) struct Suspects {
    /// Suspects whose attempt count is committed before they run. Not counted as running (a
    /// Kafka revocation waits inside the poll, where nothing could release them): checked
    /// against revocations again once their count is committed.
    pub(super) marking: Vec<Task>,
    /// After a failed commit of suspects' counts: when to try again.
    pub(super) marking_retry: Option<Instant>,
}

/// Jobs waiting in memory for a time: a retry's backoff, a delayed job's due time.
pub(super) struct Timers {
    /// Retries parked on timers for their backoff.
    pub(super) backoff: JoinSet<Task>,
    /// Delayed jobs waiting in memory for their due time, in due order.
    pub(super) due: due::DueQueue<Task>,
}

/// Pauses: partitions paused for backpressure or because their topic is paused for the group.
pub(super) struct Pauses {
    /// Partitions paused for backpressure.
    pub(super) paused: HashSet<TopicPartition>,
    /// Since when `max_buffered` records have been unfinished.
    pub(super) full_since: Option<Instant>,
    /// Jobs of topics paused for the group.
    pub(super) held: Vec<Task>,
    /// Partitions paused because their topic is paused for the group.
    pub(super) admin_paused: HashSet<TopicPartition>,
    pub(super) last_pause_sync: Instant,
}

/// Commit bookkeeping: whether there is progress to store and commit, and when.
pub(super) struct Commits {
    pub(super) dirty: bool,
    /// Progress not yet passed to [`Subscription::store`].
    pub(super) unstored: bool,
    /// Commit without waiting for the commit interval (a counted suspect finished).
    pub(super) commit_now: bool,
    pub(super) last_commit: Instant,
    /// When the job states were last handed to their writer (Unix ms).
    pub(super) states_flushed_at: i64,
}

/// Runs a forwarder until `stopped` turns true, starting it again after a failure.
pub(super) async fn run_forwarder(
    template: Forwarder,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let topic = template.topic().to_owned();
    loop {
        let f = template.again();
        let mut stop = stopped.clone();
        let result = f
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if *stopped.borrow() {
            return;
        }
        if let Err(e) = result {
            tracing::error!(error = %e, topic, "the delay forwarder stopped; starting it again in 1 s");
        }
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl Scheduler {
    pub(super) async fn run(&mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let opts = self.shared.options.clone();
        let commit_interval = opts
            .commit_interval
            .unwrap_or_else(|| self.shared.backend.commit_interval_hint());
        tokio::pin!(shutdown);
        loop {
            if self.pauses.last_pause_sync.elapsed() >= Duration::from_millis(100) {
                self.pauses.last_pause_sync = Instant::now();
                self.sync_pauses();
                self.expire_parked();
                self.shared.warnings.flush(&opts.group, false);
            }
            self.release_due();
            self.dispatch();
            if !self.suspects.marking.is_empty()
                && self
                    .suspects
                    .marking_retry
                    .is_none_or(|t| t <= Instant::now())
            {
                self.run_suspects().await;
            }
            if self.commits.unstored {
                self.store();
            }
            // job states wait for a commit too (a retry or a delay in memory changes no offset)
            let states_due = self.shared.states.as_ref().is_some_and(|s| s.has_pending());
            if (self.commits.dirty || states_due)
                && (self.commits.commit_now
                    || self.commits.last_commit.elapsed() >= commit_interval)
            {
                self.commits.commit_now = false;
                self.commit().await;
            }
            let stalled = self.backpressure(opts.max_buffered);
            let room = opts.max_buffered.saturating_sub(self.load());
            // one poll never takes more than a partition's share, so a single partition cannot
            // fill the whole buffer before backpressure looks at it
            let partition_cap = partition_share(opts.max_buffered);
            let commit_in = commit_interval.saturating_sub(self.commits.last_commit.elapsed());
            let due_in =
                self.timers.due.next_due().map(|due| {
                    Duration::from_millis((due - millis(SystemTime::now())).max(0) as u64)
                });
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = self.attempts.running.join_next_with_id(), if !self.attempts.running.is_empty() => {
                    self.on_task_done(done);
                    while let Some(done) = self.attempts.running.try_join_next_with_id() {
                        self.on_task_done(done);
                    }
                }
                Some(due) = self.timers.backoff.join_next(), if !self.timers.backoff.is_empty() => {
                    if let Ok(task) = due {
                        self.back_from_timer(task);
                    }
                }
                () = tokio::time::sleep(due_in.unwrap_or_default()), if due_in.is_some() => self.release_due(),
                // a full buffer stops polling; once full for STALL, partitions are paused and
                // polling goes on (it serves rebalances and keeps the group membership)
                polled = self.sub.poll(room.min(partition_cap).clamp(1, 512), Duration::from_millis(500)), if room > 0 || stalled => {
                    match polled {
                        Ok(p) => self.on_poll(p).await?,
                        Err(e) => {
                            tracing::error!(error = %e, "poll failed; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                () = tokio::time::sleep(commit_in), if self.commits.dirty || states_due => {}
                () = tokio::time::sleep_until(self.suspects.marking_retry.unwrap_or_else(Instant::now)), if self.suspects.marking_retry.is_some() && !self.suspects.marking.is_empty() => {}
                () = tokio::time::sleep(STALL), if room == 0 && !stalled => {}
            }
        }
        self.drain(opts.shutdown_timeout).await;
        self.shared.warnings.flush(&opts.group, true);
        Ok(())
    }

    /// The book of `task`'s partition, while it is owned (by any epoch).
    pub(super) fn track_mut(&mut self, task: &Task) -> Option<&mut Track> {
        self.partitions.tracks.get_mut(&task.record.tp())
    }

    pub(super) fn is_current(&self, task: &Task) -> bool {
        let tp = task.record.tp();
        self.partitions
            .tracks
            .get(&tp)
            .is_some_and(|t| t.epoch == task.epoch)
    }

    /// What the buffer holds: unfinished records, and (transactional) finished ones whose
    /// outputs wait for their commit, so a commit that keeps failing stops fetching instead
    /// of holding ever more outputs. Outputs of [`HELD_OUTPUT_BYTES`] or more waiting fill it
    /// whatever their count (a job at a partition's commit point that runs long holds back the
    /// commit of everything after it).
    /// Delayed jobs waiting in memory for their due time do not count (`max_delayed_bytes`
    /// bounds them), unless they reach their bound: then it is full.
    pub(super) fn load(&self) -> usize {
        if self.held_output_bytes() >= HELD_OUTPUT_BYTES
            || self.timers.due.bytes() >= self.shared.options.max_delayed_bytes.max(1)
        {
            return usize::MAX / 2;
        }
        self.partitions
            .buffered
            .saturating_sub(self.timers.due.len())
            + self
                .partitions
                .tracks
                .values()
                .map(|t| t.outputs.len())
                .sum::<usize>()
    }

    /// Bytes of the outputs waiting for their commit (transactional; none otherwise).
    pub(super) fn held_output_bytes(&self) -> usize {
        self.partitions
            .tracks
            .values()
            .map(|t| t.output_bytes)
            .sum()
    }

    /// Keeps a finished job's outputs until its offset commits with them (transactional); at
    /// [`TRANSACTION_BYTES`] waiting, the next commit starts at once.
    pub(super) fn stash_outputs(&mut self, task: &Task, records: Vec<(String, Record)>) {
        if let Some(track) = self.partitions.tracks.get_mut(&task.record.tp()) {
            if track.epoch == task.epoch {
                track.stash(task.record.offset, records);
                self.commits.commit_now |= self.held_output_bytes() >= TRANSACTION_BYTES;
            }
        }
    }

    /// Marks a finished job's offset committable, unless its partition was revoked since.
    pub(super) fn mark_finished(&mut self, task: &Task) {
        let tp = task.record.tp();
        if let Some(track) = self.partitions.tracks.get_mut(&tp) {
            if track.epoch == task.epoch {
                track.finished(task.record.offset);
                track.attempts.finish(task.record.offset);
                self.commits.commit_now |= task.counted;
                self.partitions.buffered -= 1;
                self.commits.dirty = true;
                self.commits.unstored = true;
            }
        }
    }

    /// Lets the delayed jobs that are due now go, in due order.
    pub(super) fn release_due(&mut self) {
        if self.timers.due.next_due().is_none() {
            return;
        }
        for task in self.timers.due.pop_due(millis(SystemTime::now())) {
            self.back_from_timer(task);
        }
    }

    /// A job whose wait ended: ready, or queued for its key again when it waited without it.
    pub(super) fn back_from_timer(&mut self, task: Task) {
        if !task.unlaned {
            self.ready.push_back(task);
            return;
        }
        let task = Task {
            unlaned: false,
            ..task
        };
        let tp = task.record.tp();
        match self.keys.lanes.admit(task.lane.clone().as_ref(), task) {
            Some(task) => self.ready.push_back(task),
            None => *self.keys.waiting.entry(tp).or_default() += 1,
        }
    }

    /// Lets the next job of `task`'s key through.
    pub(super) fn release_lane(&mut self, task: &Task) {
        self.release_key(task.lane.as_ref());
    }

    /// Lets the next job of `lane` through.
    pub(super) fn release_key(&mut self, lane: Option<&LaneKey>) {
        if let Some(next) = self.keys.lanes.release(lane) {
            let tp = next.record.tp();
            if let Some(n) = self.keys.waiting.get_mut(&tp) {
                *n = n.saturating_sub(1);
            }
            self.ready.push_back(next);
        }
    }

    pub(super) fn dispatch(&mut self) {
        let concurrency = self.shared.options.concurrency;
        // suspects waiting for their counts' commit take at most half the slots, so a commit
        // that keeps failing does not stop the other jobs
        let marking_cap = (concurrency / 2).max(1);
        let mut starting = Vec::new();
        let mut deferred = Vec::new();
        while self.attempts.running.len() + self.suspects.marking.len() + starting.len()
            < concurrency
        {
            let Some(task) = self.ready.pop_front() else {
                break;
            };
            match self.gate(&task) {
                Gate::Run => {}
                Gate::Drop(counter, series, state) => {
                    counter(&self.shared.stats).fetch_add(1, Ordering::Relaxed);
                    if let Some(series) = series {
                        let r = &task.record;
                        series(self.shared.metrics.of(&r.topic, job_type_of(r))).inc();
                    }
                    if let Some(state) = state {
                        let attempts = task.attempt.saturating_sub(1);
                        note_state(&self.shared, &task, state, attempts, Detail::default());
                    }
                    self.mark_finished(&task);
                    self.release_lane(&task);
                    continue;
                }
                Gate::Hold(due) => {
                    // a delayed job does not hold its key while it waits: the key's jobs run
                    // in due order, ties in offset order (a retry back for its held key keeps
                    // it: the key's order is the offsets')
                    let unlaned = !task.keeps_key && task.lane.is_some();
                    if unlaned {
                        self.release_lane(&task);
                    }
                    self.note_waiting(&task, due);
                    let cost = due::cost_of(&task.record);
                    self.timers.due.push(due, cost, Task { unlaned, ..task });
                    continue;
                }
                Gate::Paused => {
                    self.pauses.held.push(task);
                    continue;
                }
                Gate::Move(due) => {
                    if let Some(running) = self.enter(&task) {
                        self.spawn_task(task, running, move |shared, task| async move {
                            let result = match move_to_tier(&shared, &task, due, None).await {
                                true => {
                                    shared.stats.delayed.fetch_add(1, Ordering::Relaxed);
                                    let attempts = task.attempt.saturating_sub(1);
                                    let until = Detail {
                                        until: Some(due),
                                        ..Default::default()
                                    };
                                    note_state(&shared, &task, StateKind::Delayed, attempts, until);
                                    TaskResult::Finished
                                }
                                false => TaskResult::Unmovable,
                            };
                            (task, result)
                        });
                    }
                    continue;
                }
                Gate::Deadline => {
                    if let Some(running) = self.enter(&task) {
                        self.spawn_task(task, running, |shared, task| async move {
                            shared.stats.deadline.fetch_add(1, Ordering::Relaxed);
                            let result = dead_letter(
                                &shared,
                                &task,
                                DeadLetterReason::Deadline,
                                "the job's deadline passed before it ran",
                            )
                            .await;
                            (task, result)
                        });
                    }
                    continue;
                }
            }
            let max_attempts = self.shared.policy(job_type_of(&task.record)).max_attempts;
            if task.suspect && task.attempt <= max_attempts {
                if !self.runnable(&task) {
                    self.release_lane(&task);
                } else if self.suspects.marking.len() < marking_cap {
                    self.suspects.marking.push(task);
                } else {
                    deferred.push(task);
                }
                continue;
            }
            if let Some(running) = self.enter(&task) {
                starting.push((task, running));
            }
        }
        // ready jobs hold distinct keys: putting these back in front keeps every key's order
        for task in deferred.into_iter().rev() {
            self.ready.push_front(task);
        }
        self.start_attempts(starting);
    }

    /// What to do with a job before it runs: see [`Gate`].
    pub(super) fn gate(&self, task: &Task) -> Gate {
        let r = &task.record;
        if !self.is_current(task) {
            // its partition went to another member: let its key go, nothing else
            return Gate::Run;
        }
        let group = &self.shared.options.group;
        if r.headers
            .get_str(headers::RETRY_GROUP)
            .is_some_and(|g| g != group)
        {
            return Gate::Drop(|s| &s.other_group, None, None);
        }
        if task.copy {
            return Gate::Drop(|s| &s.duplicates, Some(|m| &m.duplicate), None);
        }
        if let (Some(c), Some(id)) = (&self.control, r.headers.get_str(headers::MESSAGE_ID)) {
            if c.is_cancelled(id) {
                return Gate::Drop(
                    |s| &s.cancelled,
                    Some(|m| &m.cancelled),
                    Some(StateKind::Cancelled),
                );
            }
        }
        let now = millis(SystemTime::now());
        if deadline_of(r).is_some_and(|d| d <= now) {
            return Gate::Deadline;
        }
        if self
            .control
            .as_ref()
            .is_some_and(|c| c.is_paused(group, &r.topic))
        {
            return Gate::Paused;
        }
        // a retry back for its held key waits here whatever is left (clock skew), so the key
        // stays held
        let movable = !task.in_place && !task.keeps_key;
        due_gate(
            due_of(r),
            now,
            self.shared.options.tiers.shortest(),
            movable,
        )
    }

    /// Notes for lookup the jobs whose attempt has been running since before `since` (Unix
    /// ms, the previous commit) and not been noted yet: only attempts that run across a
    /// commit cost a `running` record; a quick job's only record is its end.
    pub(super) fn note_running(&mut self, since: i64) {
        let Some(states) = self.shared.states.as_ref() else {
            return;
        };
        for task in self.attempts.in_flight.values_mut() {
            if task.started_at == 0 || task.running_noted || task.started_at > since {
                continue;
            }
            task.running_noted = true;
            let detail = Detail {
                started_at: Some(task.started_at),
                ..Default::default()
            };
            states.note(&task.record, StateKind::Running, task.attempt, detail);
        }
    }

    /// Notes for lookup that `task`'s job waits in memory until `due`: delayed, or retrying
    /// when an attempt of it already ran.
    pub(super) fn note_waiting(&self, task: &Task, due: i64) {
        let attempts = task.attempt.saturating_sub(1);
        let state = match attempts {
            0 => StateKind::Delayed,
            _ => StateKind::Retrying,
        };
        let until = Detail {
            until: Some(due),
            ..Default::default()
        };
        note_state(&self.shared, task, state, attempts, until);
    }

    /// Pauses the owned partitions of topics paused for the group, resumes those of topics no
    /// longer paused, and lets their held jobs go.
    pub(super) fn sync_pauses(&mut self) {
        let Some(control) = self.control.clone() else {
            return;
        };
        let group = self.shared.options.group.clone();
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for tp in self.partitions.tracks.keys() {
            let paused = control.is_paused(&group, &tp.topic);
            match (paused, self.pauses.admin_paused.contains(tp)) {
                (true, false) => pause.push(tp.clone()),
                (false, true) => resume.push(tp.clone()),
                _ => {}
            }
        }
        if !pause.is_empty() {
            match self.sub.pause(&pause) {
                Ok(()) => {
                    tracing::info!(partitions = pause.len(), group, "paused by the control log");
                    self.pauses.admin_paused.extend(pause);
                }
                Err(e) => tracing::warn!(error = %e, "cannot pause partitions"),
            }
        }
        // partitions backpressure also holds stay paused: backpressure resumes them
        let (resume, held_back): (Vec<TopicPartition>, Vec<TopicPartition>) = resume
            .into_iter()
            .partition(|tp| !self.pauses.paused.contains(tp));
        for tp in &held_back {
            self.pauses.admin_paused.remove(tp);
        }
        if !resume.is_empty() {
            match self.sub.resume(&resume) {
                Ok(()) => {
                    tracing::info!(
                        partitions = resume.len(),
                        group,
                        "resumed by the control log"
                    );
                    for tp in &resume {
                        self.pauses.admin_paused.remove(tp);
                    }
                }
                // still counted as paused: tried again at the next sync
                Err(e) => tracing::warn!(error = %e, "cannot resume partitions; trying again"),
            }
        }
        if !self.pauses.held.is_empty() {
            let held = std::mem::take(&mut self.pauses.held);
            for task in held {
                if control.is_paused(&group, &task.record.topic) {
                    self.pauses.held.push(task);
                } else {
                    self.ready.push_back(task);
                }
            }
        }
    }

    /// Lets keys go whose retrying job did not come back in time (or was cancelled).
    pub(super) fn expire_parked(&mut self) {
        if self.keys.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let control = self.control.clone();
        let group = &self.shared.options.group;
        // a paused topic's retry cannot come back meanwhile: its grace starts again
        for p in self.keys.parked.values_mut() {
            if control
                .as_ref()
                .is_some_and(|c| c.is_paused(group, &p.tp.topic))
            {
                p.until = p.until.max(now + PARK_GRACE);
            }
        }
        let gone: Vec<LaneKey> = self
            .keys
            .parked
            .iter()
            .filter(|(_, p)| {
                p.until <= now
                    || control
                        .as_ref()
                        .is_some_and(|c| c.is_cancelled(&p.message_id))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for lane in gone {
            if let Some(p) = self.keys.parked.remove(&lane) {
                tracing::warn!(partition = %p.tp, message_id = p.message_id, "a retrying job did not come back from its delay tier in time (or was cancelled); later jobs of its key go on");
            }
            self.release_key(Some(&lane));
        }
    }

    /// Whether `task`'s partition is still owned and not being revoked.
    pub(super) fn runnable(&self, task: &Task) -> bool {
        let tp = task.record.tp();
        self.is_current(task) && !self.attempts.running_by_partition.is_revoking(&tp)
    }

    /// Counts `task` as running on its partition, unless that partition was (or is being)
    /// revoked: then the next job of its key is let through (stale too; the next owner runs
    /// them from the committed offset) and `None` returned. Counted before the check, so a
    /// revocation either waits for it or it sees the revocation.
    pub(super) fn enter(&mut self, task: &Task) -> Option<Running> {
        let tp = task.record.tp();
        let running = match self.partitions.tracks.get_mut(&tp) {
            Some(track) => {
                let counts = &self.attempts.running_by_partition;
                let count = track.running.get_or_insert_with(|| counts.counter(&tp));
                counts.enter_with(count)
            }
            None => self.attempts.running_by_partition.enter(&task.record),
        };
        if self.runnable(task) {
            return Some(running);
        }
        drop(running);
        self.release_lane(task);
        None
    }

    /// Counts the attempts in their partitions' books, stores the counts (embedded: committed,
    /// so an attempt that kills the process is counted; Kafka: kept for the next commit), and
    /// runs them.
    pub(super) fn start_attempts(&mut self, tasks: Vec<(Task, Running)>) {
        if tasks.is_empty() {
            return;
        }
        let now = crate::observation::job_states::now_ms();
        let mut tasks = tasks;
        for (task, _) in &mut tasks {
            task.started_at = now;
            task.running_noted = false;
            if let Some(track) = self.track_mut(task) {
                track.attempts.start(task.record.offset, task.attempt);
                self.commits.dirty = true;
            }
        }
        self.store();
        for (task, running) in tasks {
            self.spawn_task(task, running, |shared, task| async move {
                let result = run_attempt(&shared, &task).await;
                (task, result)
            });
        }
    }

    /// Commits the attempt counts of suspects, then runs them: if one kills the process again,
    /// the next owner counts that attempt. When the commit fails they do not run uncounted:
    /// they wait and are tried again (their partitions stay held by them meanwhile).
    pub(super) async fn run_suspects(&mut self) {
        let marking = std::mem::take(&mut self.suspects.marking);
        let mut before = Vec::with_capacity(marking.len());
        for task in &marking {
            let tp = task.record.tp();
            if let Some(track) = self.partitions.tracks.get_mut(&tp) {
                before.push((
                    tp,
                    task.record.offset,
                    track.attempts.count(task.record.offset),
                ));
                track.attempts.start(task.record.offset, task.attempt);
            }
        }
        self.commits.dirty = true;
        let committed = self.commit().await;
        if !committed {
            for (tp, offset, count) in before {
                if let Some(track) = self.partitions.tracks.get_mut(&tp) {
                    track.attempts.restore(offset, count);
                }
            }
            tracing::warn!(
                jobs = marking.len(),
                "cannot commit the attempt counts of jobs that may have been running when their partition's previous owner stopped; they wait until it can"
            );
            self.suspects.marking_retry = Some(Instant::now() + Duration::from_millis(200));
        } else {
            self.suspects.marking_retry = None;
        }
        let mut starting = Vec::new();
        for task in marking {
            if !committed {
                if self.runnable(&task) {
                    self.suspects.marking.push(task);
                } else {
                    self.release_lane(&task);
                }
                continue;
            }
            let task = Task {
                suspect: false,
                counted: true,
                ..task
            };
            if let Some(running) = self.enter(&task) {
                starting.push((task, running));
            }
        }
        self.start_attempts(starting);
    }

    /// Runs `work` for `task` as a task of its own, counted as running on its partition (for
    /// the revocation barrier) and remembered by task id (for a task that ends abnormally).
    pub(super) fn spawn_task<Fut>(
        &mut self,
        task: Task,
        running: Running,
        work: impl FnOnce(Arc<Shared>, Task) -> Fut,
    ) where
        Fut: Future<Output = (Task, TaskResult)> + Send + 'static,
    {
        let kept = task.clone();
        let work = work(Arc::clone(&self.shared), task);
        let handle = self.attempts.running.spawn(async move {
            let out = work.await;
            drop(running);
            out
        });
        self.attempts.in_flight.insert(handle.id(), kept);
    }

    /// `task`'s attempt ended without finishing the job (it waits to retry).
    pub(super) fn returned(&mut self, task: &Task) {
        if let Some(track) = self.track_mut(task) {
            track.attempts.returned(task.record.offset);
        }
    }

    /// Runs `task` again, as its next attempt, after `delay`.
    pub(super) fn retry_later(&mut self, task: Task, delay: Duration) {
        self.timers.backoff.spawn(async move {
            tokio::time::sleep(delay).await;
            Task {
                attempt: task.attempt + 1,
                ..task
            }
        });
    }

    pub(super) fn on_task_done(
        &mut self,
        done: std::result::Result<(tokio::task::Id, (Task, TaskResult)), tokio::task::JoinError>,
    ) {
        let (task, result) = match done {
            Ok((id, v)) => {
                self.attempts.in_flight.remove(&id);
                v
            }
            Err(e) => {
                let Some(task) = self.attempts.in_flight.remove(&e.id()) else {
                    return;
                };
                if e.is_cancelled() {
                    // aborted at shutdown: uncommitted, so the next owner runs it again
                    return;
                }
                self.on_escaped_panic(task, &e);
                return;
            }
        };
        match result {
            TaskResult::Retry(delay) if self.is_current(&task) => {
                self.returned(&task);
                self.retry_later(task, delay);
            }
            TaskResult::Again(delay) if self.is_current(&task) => {
                self.returned(&task);
                self.timers.backoff.spawn(async move {
                    tokio::time::sleep(delay).await;
                    task
                });
            }
            TaskResult::Unmovable if self.is_current(&task) => {
                self.ready.push_back(Task {
                    in_place: true,
                    ..task
                });
            }
            TaskResult::Parked(delay)
                if self.is_current(&task)
                    && self.shared.options.ordered_retries
                    && task.lane.is_some() =>
            {
                self.mark_finished(&task);
                let lane = task.lane.clone().expect("checked");
                let key = ParkedKey {
                    move_key: move_key(&task.record),
                    message_id: task
                        .record
                        .headers
                        .get_str(headers::MESSAGE_ID)
                        .unwrap_or_default()
                        .to_owned(),
                    tp: task.record.tp(),
                    until: Instant::now() + delay + PARK_GRACE,
                };
                match parks(&self.keys.parked, &lane, &key, PARKED_MAX_BYTES) {
                    true => {
                        self.keys.parked.insert(lane, key);
                    }
                    false => {
                        tracing::warn!(partition = %key.tp, message_id = key.message_id, max_bytes = PARKED_MAX_BYTES, "the keys held for retries in delay tiers take their bound: this one is not held, later jobs of its key go on before its retry");
                        self.release_lane(&task);
                    }
                }
            }
            TaskResult::Emitted(records) => {
                self.stash_outputs(&task, records);
                self.mark_finished(&task);
                self.release_lane(&task);
            }
            TaskResult::Retry(_)
            | TaskResult::Finished
            | TaskResult::Parked(_)
            | TaskResult::Again(_)
            | TaskResult::Unmovable => {
                self.mark_finished(&task);
                self.release_lane(&task);
            }
        }
    }

    /// An attempt whose task panicked outside the handler's `catch_unwind`: a failed attempt
    /// like any other panic, retried with backoff or, once attempts are exhausted,
    /// dead-lettered; its key is released either way.
    pub(super) fn on_escaped_panic(&mut self, task: Task, e: &tokio::task::JoinError) {
        self.shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
        let r = &task.record;
        let series = self.shared.metrics.of(&r.topic, job_type_of(r));
        series.failed.inc();
        let error = format!("the job's task panicked outside the handler: {e}");
        tracing::error!(topic = %r.topic, partition = r.partition, offset = r.offset, attempt = task.attempt, %error, "job failed");
        if !self.is_current(&task) {
            self.release_lane(&task);
            return;
        }
        if task.dead_lettering {
            // writing its dead letter panicked too: leave it uncommitted (redelivered after a
            // restart or rebalance) rather than retrying in a loop
            tracing::error!(topic = %r.topic, partition = r.partition, offset = r.offset, "writing the dead letter panicked; the job stays uncommitted");
            self.release_lane(&task);
            return;
        }
        let job_type = job_type_of(r);
        let policy = self.shared.policy(job_type).clone();
        if policy.should_retry(task.attempt) {
            self.shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            series.retried.inc();
            let delay = policy.delay(task.attempt);
            self.returned(&task);
            self.retry_later(task, delay);
            return;
        }
        let task = Task {
            dead_lettering: true,
            ..task
        };
        let running = self.attempts.running_by_partition.enter(&task.record);
        self.spawn_task(task, running, |shared, task| async move {
            let result = dead_letter(&shared, &task, DeadLetterReason::Exhausted, &error).await;
            (task, result)
        });
    }
}
