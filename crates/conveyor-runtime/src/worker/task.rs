//! The worker's units of work: a record with its attempt ([`Task`]), an owned partition's
//! state ([`Track`]), what an attempt came to ([`TaskResult`]) and what the gate decides before
//! it runs ([`Gate`]: due times, deadlines, pauses).

use super::*;

#[derive(Clone)]
pub(super) struct Task {
    /// Set on the task writing a dead letter after an escaped panic: a second one gives up.
    pub(super) dead_lettering: bool,
    /// Shared with the attempt's [`Job`]: cloned tasks and jobs copy no payload.
    pub(super) record: Arc<ConsumedRecord>,
    pub(super) attempt: u32,
    pub(super) epoch: u64,
    pub(super) lane: Option<LaneKey>,
    /// It may have been running when its partition's previous owner stopped: its attempt count
    /// is committed before it runs.
    pub(super) suspect: bool,
    /// Its attempt count was committed as a suspect's: its finish is committed at once, or a
    /// crash soon after would leave the count of a job that finished.
    pub(super) counted: bool,
    /// A second copy of a move through the delay tiers: dropped.
    pub(super) copy: bool,
    /// Moving it to a delay tier failed for good: it waits in memory instead.
    pub(super) in_place: bool,
    /// It came back from a delay tier to the key its retry held: it keeps the key while it
    /// waits for its due time.
    pub(super) keeps_key: bool,
    /// Waiting for its due time without its key: it queues for the key again when due.
    pub(super) unlaned: bool,
    /// When its current attempt started (Unix ms; 0: not started).
    pub(super) started_at: i64,
    /// Its `running` state was noted for job lookup (it ran across a commit).
    pub(super) running_noted: bool,
}

impl Topical for Task {
    fn topic(&self) -> &str {
        &self.record.topic
    }
}

/// One owned partition: its assignment epoch, its commit point and its attempt counts.
pub(super) struct Track {
    pub(super) epoch: u64,
    pub(super) offsets: OffsetTracker,
    pub(super) attempts: AttemptBook,
    /// Transactional worker: what finished jobs emitted, by offset, until their offset commits
    /// with them.
    pub(super) outputs: BTreeMap<i64, Vec<(String, Record)>>,
    /// The bytes of `outputs`.
    pub(super) output_bytes: usize,
    /// A job finished past the commit point since the last commit: the finished ranges the
    /// commit's metadata names changed.
    pub(super) done_changed: bool,
    /// The [`Track::signature`] last stored.
    pub(super) stored: Option<(u64, u64)>,
    /// The partition's count of running attempts (taken from the worker's `RunningCounts` at
    /// the first attempt), counted through without a lock.
    pub(super) running: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl Track {
    pub(super) fn new(epoch: u64, attempts: AttemptBook) -> Self {
        Track {
            epoch,
            offsets: OffsetTracker::default(),
            attempts,
            outputs: BTreeMap::new(),
            output_bytes: 0,
            done_changed: false,
            stored: None,
            running: None,
        }
    }

    /// What changes with every change of the offsets or the counts (not of the outputs, which
    /// are never stored).
    pub(super) fn signature(&self) -> (u64, u64) {
        (self.offsets.generation(), self.attempts.generation())
    }

    /// The job at `offset` finished (done, dead-lettered, moved, or named finished by a previous
    /// owner): its offset may be committed, and when an unfinished one stays before it, the
    /// finished ranges the next commit names changed.
    pub(super) fn finished(&mut self, offset: i64) {
        self.offsets.finished(offset);
        self.done_changed |= self.offsets.in_flight() > 0;
    }

    /// The jobs finished past the commit point, `[from, to)` in order: this owner's, then the
    /// ones a previous owner named that this one has not fetched yet.
    pub(super) fn done_ranges(&self) -> Vec<(i64, i64)> {
        let mut ranges: Vec<(i64, i64)> = self.offsets.finished_ranges().collect();
        let fetched_to = self.offsets.fetched_to().unwrap_or(i64::MIN);
        ranges.extend(self.attempts.inherited_done_from(fetched_to));
        ranges
    }

    /// Keeps a finished job's outputs until its offset commits.
    pub(super) fn stash(&mut self, offset: i64, records: Vec<(String, Record)>) {
        self.output_bytes += records.iter().map(|(_, r)| r.byte_len()).sum::<usize>();
        self.outputs.insert(offset, records);
    }

    /// Drops the outputs below `next_offset`: they committed (with the offset, or named as
    /// finished in its metadata).
    pub(super) fn committed_outputs(&mut self, next_offset: i64) {
        self.outputs = self.outputs.split_off(&next_offset);
        self.output_bytes = self
            .outputs
            .values()
            .flatten()
            .map(|(_, r)| r.byte_len())
            .sum();
    }
}

pub(super) enum TaskResult {
    /// Done or dead-lettered: the offset may be committed.
    Finished,
    /// Done in a transactional worker, with what it emitted: they commit with its offset.
    Emitted(Vec<(String, Record)>),
    /// Failed; run again after the delay.
    Retry(Duration),
    /// Moved to a delay tier to retry after this delay: the offset may be committed, and the
    /// key stays held until the job comes back (with ordered retries).
    Parked(Duration),
    /// Could not be moved to a delay tier: it waits in memory instead.
    Unmovable,
    /// Not run (the unique-key ledger could not be read): the same attempt again after this.
    Again(Duration),
}

/// What happens to a job taken from the ready queue.
pub(super) enum Gate {
    Run,
    /// Finished without running, counted in this counter and, for a job of this group, in
    /// this outcome of its series; with the job's state for lookup (none: the job's state is
    /// not this copy's, e.g. a second copy of a move).
    Drop(
        fn(&WorkerStats) -> &AtomicU64,
        Option<fn(&JobSeries) -> &conveyor_metrics::Counter>,
        Option<crate::observation::job_states::StateKind>,
    ),
    /// Not due until this time (ms since the epoch), less than the shortest tier away (or it
    /// may not move): waits in memory.
    Hold(i64),
    /// Not due until this time (ms since the epoch): moved to a delay tier.
    Move(i64),
    /// Its deadline passed.
    Deadline,
    /// Its topic is paused for the group.
    Paused,
}

/// A key held by a job waiting in a delay tier for its retry.
pub(super) struct ParkedKey {
    /// The `dedup_key` of the move: the returning record carries it.
    pub(super) move_key: String,
    pub(super) message_id: String,
    pub(super) tp: TopicPartition,
    /// Released then even if the job has not come back (a lost or cancelled retry).
    pub(super) until: Instant,
}

/// How long after its due time a parked key waits for its job before letting the next ones go.
pub(super) const PARK_GRACE: Duration = Duration::from_secs(60);

/// The most bytes of parked keys a worker holds: 16 MiB (a key is any bytes a producer wrote,
/// so a count would not bound them). Beyond it a retrying job does not hold its key: later jobs
/// of that key go on meanwhile (its order is given up, with a warning), as with
/// `ordered_retries = false`; nothing is lost.
pub(super) const PARKED_MAX_BYTES: usize = 16 * 1024 * 1024;

impl ParkedKey {
    /// What it costs in memory with its lane: their strings and bytes, and 128 bytes of
    /// bookkeeping.
    pub(super) fn bytes(&self, lane: &LaneKey) -> usize {
        lane.0.len()
            + lane.1.len()
            + self.move_key.len()
            + self.message_id.len()
            + self.tp.topic.len()
            + 128
    }
}

/// Whether `key` may be parked for `lane` beside `parked` within `max` bytes.
pub(super) fn parks(
    parked: &HashMap<LaneKey, ParkedKey>,
    lane: &LaneKey,
    key: &ParkedKey,
    max: usize,
) -> bool {
    let held: usize = parked.iter().map(|(l, p)| p.bytes(l)).sum();
    held.saturating_add(key.bytes(lane)) <= max
}

/// What a job's `due_at` (ms since the epoch) says at `now`: run; wait in memory when less than
/// the `shortest` tier is left (or the job may not move); otherwise move to a tier.
pub(super) fn due_gate(due: Option<i64>, now: i64, shortest: Duration, movable: bool) -> Gate {
    match due {
        Some(due) if due > now => {
            let left = Duration::from_millis((due - now) as u64);
            if movable && left >= shortest {
                Gate::Move(due)
            } else {
                Gate::Hold(due)
            }
        }
        _ => Gate::Run,
    }
}

/// The job's `deadline`, in ms since the epoch.
pub(super) fn deadline_of(r: &ConsumedRecord) -> Option<i64> {
    r.headers
        .get_str(headers::DEADLINE)
        .and_then(headers::parse_time)
        .map(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parked keys are bounded by their bytes: a key of any size counts what it weighs.
    #[test]
    fn parked_keys_are_bounded_in_bytes() {
        let park = |key: &[u8]| {
            let lane: LaneKey = ("t".into(), Bytes::copy_from_slice(key));
            let p = ParkedKey {
                move_key: "t/0/1".into(),
                message_id: "m".repeat(36),
                tp: TopicPartition::new("t", 0),
                until: Instant::now(),
            };
            (lane, p)
        };
        let mut parked = HashMap::new();
        let max = 10_000;
        let mut refused = 0;
        for i in 0..20u8 {
            let (lane, p) = park(&[i; 1000]);
            match parks(&parked, &lane, &p, max) {
                true => {
                    parked.insert(lane, p);
                }
                false => refused += 1,
            }
            let held: usize = parked.iter().map(|(l, p)| p.bytes(l)).sum();
            assert!(held <= max, "{held} bytes parked");
        }
        assert_eq!(
            (parked.len(), refused),
            (8, 12),
            "8 keys of ~1.2 KB fit 10,000 bytes"
        );
        // small keys still fit beside them
        let (lane, p) = park(b"k");
        assert!(parks(&parked, &lane, &p, max));
    }

    /// The due-time decision at chosen clocks: never early, in memory below the shortest tier.
    #[test]
    pub(super) fn due_times_decide_run_hold_or_move_at_a_given_clock() {
        let five = Duration::from_secs(5);
        let now = 1_000_000;
        let is = |g: Gate| match g {
            Gate::Run => "run".to_owned(),
            Gate::Hold(at) => format!("hold {}", at - now),
            Gate::Move(at) => format!("move {}", at - now),
            _ => "other".to_owned(),
        };
        assert_eq!(is(due_gate(None, now, five, true)), "run");
        assert_eq!(is(due_gate(Some(now), now, five, true)), "run");
        assert_eq!(is(due_gate(Some(now - 60_000), now, five, true)), "run");
        assert_eq!(is(due_gate(Some(now + 1), now, five, true)), "hold 1");
        assert_eq!(
            is(due_gate(Some(now + 4_999), now, five, true)),
            "hold 4999"
        );
        assert_eq!(
            is(due_gate(Some(now + 5_000), now, five, true)),
            "move 5000"
        );
        assert_eq!(
            is(due_gate(Some(now + 3_600_000), now, five, false)),
            "hold 3600000"
        );
        // the latest time RFC 3339 can write still moves (through the longest tier, again and again)
        assert_eq!(
            is(due_gate(Some(253_402_300_799_999), now, five, true)),
            format!("move {}", 253_402_300_799_999i64 - now)
        );
    }
}
