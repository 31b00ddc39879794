//! Attempt counts that outlive the process: [`AttemptBook`], kept per partition in the
//! metadata of the group's commits, so `max_attempts` holds across crashes, restarts and
//! rebalances (a job that kills its process is dead-lettered instead of looping forever).
//!
//! # What is persisted
//! Each commit of a partition carries `conveyor.attempts.v1 l=<lease> a=<offset>:<n>,...`:
//! - `a`: for every unfinished job at or past the committed offset that has started at least one
//!   attempt, how many attempts started, up to
//!   [`MAX_COMMIT_METADATA`](conveyor_core::MAX_COMMIT_METADATA) bytes (some 300 jobs): the jobs
//!   running now first (a crash can only interrupt those), then those waiting to retry, each in
//!   offset order;
//! - `l`, the lease: the owner may have started jobs below it. It is written (synchronously)
//!   *before* any job at or past it is admitted, [`LEASE_AHEAD`] offsets at a time, so one
//!   commit covers thousands of jobs.
//! - `d`: the jobs past the committed offset that already finished: `d=<committed>:` and
//!   ranges `<gap>+<length>` (the gap counted from the end of the range before, the first from
//!   the committed offset), after the counts and as many as fit; believed only with the offset
//!   it names (a tool that moves the offset and keeps the metadata does not skip jobs). A job waiting in memory (a delayed
//!   job due soon, a retry, a job behind its key) holds the commit point back while the jobs
//!   behind it finish; without `d` a clean stop, a rebalance or a crash would run all of those
//!   again. A transactional worker commits the outputs of every job `d` names in the same
//!   transaction.
//!
//! # How the next owner uses it
//! A job of the range `[committed, lease)` may have been running when its owner stopped: it is
//! a *suspect*. Before a suspect's attempt runs, its attempt count (`a` + 1) is committed
//! synchronously, so if it kills the process again the next owner counts one more. A job whose
//! count already reached its `max_attempts` is dead-lettered with reason `exhausted` without
//! running. A job `d` names is finished without running. Jobs past the lease run as usual,
//! with no extra commit. A worker that stops cleanly
//! (shutdown, after its running jobs finished) cuts the lease back to the commit point, so a
//! restart after a clean stop has no suspects but the jobs with counts.
//!
//! Counts never exceed the attempts that started. They can fall short: the first run of a job
//! that kills its process before any commit mentions it is not known (so such a job runs at
//! most `max_attempts + 1` times), and an attempt started since the last commit of a partition
//! that then moves is not counted.

use std::collections::BTreeMap;

/// How far past the newest admitted offset a lease reaches: one synchronous commit per this many
/// jobs of a partition, and at most this many suspects (plus the unfinished ones) after a crash.
pub const LEASE_AHEAD: i64 = 1024;

/// Inherited counts and leases are believed only this far: a foreign or damaged entry cannot
/// make a job exhaust its attempts silently or every later job a suspect.
const MAX_COUNT: u32 = 1_000_000;
const MAX_LEASE_AHEAD_OF_COMMIT: i64 = 1_000_000;

/// Finished ranges are believed only this many: a commit's metadata holds fewer.
const MAX_DONE_RANGES: usize = 4096;

const PREFIX: &str = "conveyor.attempts.v1";

/// One partition's attempt counts: this owner's and what the previous owner left.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttemptBook {
    /// Unfinished jobs -> attempts started (by any owner).
    started: BTreeMap<i64, u32>,
    /// Of those, the ones running now.
    running: std::collections::BTreeSet<i64>,
    /// This owner may have started jobs below it; persisted before they are admitted.
    lease: i64,
    /// The previous owner's lease: unfinished jobs below it are suspects.
    inherited_lease: i64,
    /// Jobs past the committed offset the previous owner finished: `[from, to)`, in order,
    /// not overlapping.
    inherited_done: Vec<(i64, i64)>,
    /// Changed since last persisted.
    changed: bool,
    /// Bumped by every change: what was stored can be told from what changed since.
    generation: u64,
}

/// What the book says about a job as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Attempts that started before (by a previous owner or process).
    pub attempts_before: u32,
    /// It may have been running when its previous owner stopped: its attempt must be persisted
    /// before it runs.
    pub suspect: bool,
    /// A previous owner finished it past its commit point: it is not run again.
    pub done: bool,
}

impl AttemptBook {
    /// The book a new owner starts from, given the partition's committed offset and metadata
    /// (anything not written by conveyor, or malformed, counts as nothing).
    pub fn inherit(committed: Option<i64>, metadata: &str) -> Self {
        let from = committed.unwrap_or(0);
        let mut book = Self::parse(metadata, from).unwrap_or_default();
        let bound = from.saturating_add(MAX_LEASE_AHEAD_OF_COMMIT);
        book.inherited_lease = book.inherited_lease.min(bound);
        book.lease = book.inherited_lease;
        book.started.retain(|_, n| *n <= MAX_COUNT);
        // within reach of the commit only: a damaged entry cannot make the rest of the
        // partition look finished
        for range in &mut book.inherited_done {
            range.1 = range.1.min(bound);
        }
        book.inherited_done.retain(|(a, b)| a < b);
        book
    }

    fn parse(metadata: &str, committed: i64) -> Option<Self> {
        let mut parts = metadata.split(' ');
        if parts.next()? != PREFIX {
            return None;
        }
        let mut book = AttemptBook::default();
        for part in parts {
            if let Some(l) = part.strip_prefix("l=") {
                book.inherited_lease = l.parse().ok()?;
            } else if let Some(a) = part.strip_prefix("a=") {
                for entry in a.split(',').filter(|e| !e.is_empty()) {
                    let (o, n) = entry.split_once(':')?;
                    book.started.insert(o.parse().ok()?, n.parse().ok()?);
                }
            } else if let Some(d) = part.strip_prefix("d=") {
                book.inherited_done = parse_done(d, committed)?;
            }
        }
        book.lease = book.inherited_lease;
        Some(book)
    }

    /// A job at `offset` was fetched.
    pub fn arrive(&mut self, offset: i64) -> Arrival {
        self.generation += 1;
        let attempts_before = self.started.get(&offset).copied().unwrap_or(0);
        // ranges before this offset are behind the fetch position now: forgotten
        let passed = self.inherited_done.partition_point(|&(_, to)| to <= offset);
        self.inherited_done.drain(..passed);
        Arrival {
            attempts_before,
            suspect: attempts_before > 0 || offset < self.inherited_lease,
            done: self
                .inherited_done
                .first()
                .is_some_and(|&(from, _)| from <= offset),
        }
    }

    /// Extends the lease to cover `offset`; returns whether it moved (and must be persisted
    /// before the job is admitted).
    pub fn cover(&mut self, offset: i64) -> bool {
        self.generation += 1;
        if offset < self.lease {
            return false;
        }
        self.lease = offset + LEASE_AHEAD;
        self.changed = true;
        true
    }

    /// Attempt `attempt` of the job at `offset` is starting.
    pub fn start(&mut self, offset: i64, attempt: u32) {
        self.generation += 1;
        self.started.insert(offset, attempt);
        self.running.insert(offset);
        self.changed = true;
    }

    /// Attempts started of the job at `offset`, if any.
    pub fn count(&self, offset: i64) -> Option<u32> {
        self.started.get(&offset).copied()
    }

    /// Undoes a [`AttemptBook::start`] that could not be persisted: the count goes back to
    /// `previous` and the job is not running.
    pub fn restore(&mut self, offset: i64, previous: Option<u32>) {
        self.generation += 1;
        self.running.remove(&offset);
        match previous {
            Some(n) => self.started.insert(offset, n),
            None => self.started.remove(&offset),
        };
    }

    /// The attempt of the job at `offset` failed; the job waits to retry.
    pub fn returned(&mut self, offset: i64) {
        self.generation += 1;
        self.running.remove(&offset);
    }

    /// The job at `offset` finished (done or dead-lettered).
    pub fn finish(&mut self, offset: i64) {
        self.generation += 1;
        self.running.remove(&offset);
        if self.started.remove(&offset).is_some() {
            self.changed = true;
        }
    }

    /// The worker stops cleanly: nothing runs any more that the counts do not name, so the
    /// lease goes back to the commit point.
    pub fn release(&mut self) {
        self.generation += 1;
        self.lease = 0;
        self.inherited_lease = 0;
        self.changed = true;
    }

    /// A number every change moves on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether there is something to persist.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Everything changed so far was committed.
    pub fn persisted(&mut self) {
        self.generation += 1;
        self.changed = false;
    }

    /// The finished ranges a previous owner named that this owner has not fetched yet (at or
    /// past `fetched_to`), so a commit before it reaches them still names them.
    pub fn inherited_done_from(&self, fetched_to: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.inherited_done
            .iter()
            .filter(move |&&(_, to)| to > fetched_to)
            .map(move |&(from, to)| (from.max(fetched_to), to))
    }

    /// The metadata to commit with `committed` (entries below it are finished and dropped),
    /// at most `limit` bytes: the counts and the finished ranges `done` (`[from, to)`, in
    /// order, not overlapping), each as far as it fits; the ranges first when `ranges_first`
    /// (a transactional worker: the outputs of the jobs a commit names are published with it,
    /// so a later commit must never name fewer, and counts can be cut where ranges cannot).
    /// Ranges reach at most 1,000,000 offsets past `committed`, as far as
    /// [`AttemptBook::inherit`] believes them. Returns it with the end of the last range it
    /// names (`committed` when none): every finished job below that end is named.
    pub fn encode(
        &self,
        committed: i64,
        done: &[(i64, i64)],
        ranges_first: bool,
        limit: usize,
    ) -> (String, i64) {
        let mut out = format!("{PREFIX} l={}", self.lease.max(committed));
        let named_to = if ranges_first {
            let named_to = encode_done(&mut out, committed, done, limit);
            self.encode_counts(&mut out, committed, limit);
            named_to
        } else {
            self.encode_counts(&mut out, committed, limit);
            encode_done(&mut out, committed, done, limit)
        };
        (out, named_to)
    }

    /// Appends ` a=` with the counts at or past `committed` that fit in `limit`: the running
    /// jobs' first.
    fn encode_counts(&self, out: &mut String, committed: i64, limit: usize) {
        // the running ones (a subset of the started ones) first, then the others
        let running = self
            .running
            .range(committed..)
            .filter_map(|o| self.started.get_key_value(o));
        let waiting = self
            .started
            .range(committed..)
            .filter(|(o, _)| !self.running.contains(o));
        let mut first = true;
        for (o, n) in running.chain(waiting) {
            let mark = out.len();
            out.push_str(if first { " a=" } else { "," });
            push_int(out, *o);
            out.push(':');
            push_int(out, i64::from(*n));
            if out.len() > limit {
                out.truncate(mark);
                break;
            }
            first = false;
        }
    }
}

/// Appends `v` in decimal, without `write!`'s formatting machinery (the counts of every running
/// job are written at each start of attempts).
fn push_int(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends ` d=` with the finished ranges of `done` that fit in `limit`; returns the end of the
/// last one appended (`committed` when none).
fn encode_done(out: &mut String, committed: i64, done: &[(i64, i64)], limit: usize) -> i64 {
    let bound = committed.saturating_add(MAX_LEASE_AHEAD_OF_COMMIT);
    let mut named_to = committed;
    let mut entry = String::new();
    let mut first = true;
    for &(from, to) in done {
        let (from, to) = (from.max(named_to), to.min(bound));
        if to <= from {
            if to == bound {
                break;
            }
            continue;
        }
        entry.clear();
        if first {
            entry.push_str(" d=");
            push_int(&mut entry, committed);
            entry.push(':');
        } else {
            entry.push(',');
        }
        push_int(&mut entry, from - named_to);
        entry.push('+');
        push_int(&mut entry, to - from);
        if out.len() + entry.len() > limit {
            break;
        }
        out.push_str(&entry);
        named_to = to;
        first = false;
    }
    named_to
}

/// The finished ranges of a `d=` entry, made absolute from `committed`. The entry names the
/// offset it was committed with: written with another one (the group's offset was moved by a
/// tool that kept the metadata), it names nothing.
fn parse_done(d: &str, committed: i64) -> Option<Vec<(i64, i64)>> {
    let (base, d) = d.split_once(':')?;
    if base.parse::<i64>().ok()? != committed {
        return Some(Vec::new());
    }
    let mut ranges = Vec::new();
    let mut at = committed;
    for entry in d.split(',').filter(|e| !e.is_empty()).take(MAX_DONE_RANGES) {
        let (gap, len) = entry.split_once('+')?;
        let (gap, len): (u32, u32) = (gap.parse().ok()?, len.parse().ok()?);
        let from = at.checked_add(gap.into())?;
        let to = from.checked_add(len.into())?;
        if len > 0 {
            ranges.push((from, to));
        }
        at = to;
    }
    Some(ranges)
}

/// The finished ranges named by metadata [`AttemptBook::encode`] wrote with `committed`
/// (none for anything else): what a transactional commit must publish the outputs of.
/// Exactly what the next owner believes ([`AttemptBook::inherit`]).
pub fn done_ranges(metadata: &str, committed: i64) -> Vec<(i64, i64)> {
    AttemptBook::inherit(Some(committed), metadata).inherited_done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_written_as_write_does() {
        for v in [
            0,
            1,
            9,
            10,
            -1,
            -10,
            1_234_567,
            i64::MAX,
            i64::MIN,
            i64::from(u32::MAX),
        ] {
            let mut s = String::new();
            push_int(&mut s, v);
            assert_eq!(s, v.to_string());
        }
    }

    #[test]
    fn a_new_owner_continues_the_count_and_suspects_the_lease() {
        let mut a = AttemptBook::default();
        assert!(a.cover(10), "the first job needs a lease");
        assert!(!a.cover(11), "jobs under the lease need none");
        a.start(10, 1);
        a.start(11, 3);
        a.start(12, 1);
        a.finish(12);
        let (meta, _) = a.encode(10, &[], false, 4000);
        assert_eq!(
            meta,
            format!("conveyor.attempts.v1 l={} a=10:1,11:3", 10 + LEASE_AHEAD)
        );
        a.persisted();
        assert!(!a.changed());

        let mut b = AttemptBook::inherit(Some(10), &meta);
        assert_eq!(
            b.arrive(11),
            Arrival {
                attempts_before: 3,
                suspect: true,
                done: false
            }
        );
        assert_eq!(
            b.arrive(12),
            Arrival {
                attempts_before: 0,
                suspect: true,
                done: false
            }
        );
        assert_eq!(
            b.arrive(10 + LEASE_AHEAD),
            Arrival {
                attempts_before: 0,
                suspect: false,
                done: false
            }
        );
        assert!(!b.cover(13), "the inherited lease still covers it");
        assert!(b.cover(10 + LEASE_AHEAD));
    }

    #[test]
    fn foreign_or_broken_metadata_counts_as_nothing_and_the_limit_holds() {
        for m in [
            "",
            "hello",
            "conveyor.attempts.v1 l=x",
            "conveyor.attempts.v1 a=1:y",
        ] {
            assert_eq!(AttemptBook::inherit(None, m), AttemptBook::default(), "{m}");
        }
        let hostile = AttemptBook::inherit(
            Some(5),
            "conveyor.attempts.v1 l=9223372036854775807 a=5:4294967295,6:2",
        );
        assert_eq!(hostile.inherited_lease, 5 + MAX_LEASE_AHEAD_OF_COMMIT);
        assert_eq!(hostile.started.len(), 1, "an absurd count is dropped");
        let mut a = AttemptBook::default();
        for o in 0..1000 {
            a.start(1_000_000 + o, 7);
            a.returned(1_000_000 + o);
        }
        a.start(1_000_999, 8);
        let (meta, _) = a.encode(1_000_000, &[], false, 4000);
        assert!(meta.len() <= 4000, "{}", meta.len());
        let b = AttemptBook::inherit(Some(1_000_000), &meta);
        assert!(b.started.len() > 300, "{}", b.started.len());
        assert_eq!(
            b.started.get(&1_000_999),
            Some(&8),
            "a running job is kept first"
        );
        assert_eq!(b.started.keys().next(), Some(&1_000_000), "then the oldest");
        let (entries, _) = a.encode(1_000_500, &[], false, 4000);
        assert!(
            !entries.contains("1000499:"),
            "finished entries below the commit go"
        );
    }

    #[test]
    fn a_clean_stop_leaves_no_suspects_but_the_counted() {
        let mut a = AttemptBook::default();
        a.cover(0);
        a.start(0, 2);
        a.returned(0);
        a.release();
        let mut b = AttemptBook::inherit(Some(0), &a.encode(0, &[], false, 4000).0);
        assert_eq!(
            b.arrive(0),
            Arrival {
                attempts_before: 2,
                suspect: true,
                done: false
            }
        );
        assert_eq!(
            b.arrive(1),
            Arrival {
                attempts_before: 0,
                suspect: false,
                done: false
            }
        );
    }

    /// Jobs finished past a commit point that a waiting job holds back are named, and the next
    /// owner skips exactly those (a clean stop once ran all of them again).
    #[test]
    fn finished_jobs_past_the_commit_are_named_and_skipped() {
        let mut a = AttemptBook::default();
        a.start(10, 1);
        a.returned(10);
        let (meta, named_to) = a.encode(10, &[(11, 60), (61, 70)], false, 4000);
        assert_eq!(meta, "conveyor.attempts.v1 l=10 a=10:1 d=10:1+49,1+9");
        assert_eq!(named_to, 70);
        assert_eq!(done_ranges(&meta, 10), vec![(11, 60), (61, 70)]);
        let mut b = AttemptBook::inherit(Some(10), &meta);
        let done: Vec<i64> = (10..75).filter(|&o| b.arrive(o).done).collect();
        let expected: Vec<i64> = (11..60).chain(61..70).collect();
        assert_eq!(done, expected);

        // with the offset moved and the metadata kept, they name nothing
        let mut moved = AttemptBook::inherit(Some(5), &meta);
        assert!((5..75).all(|o| !moved.arrive(o).done));
        assert_eq!(done_ranges(&meta, 5), vec![]);

        // a commit before the new owner fetched them still names the ones ahead of it
        let b = AttemptBook::inherit(Some(10), &meta);
        let ahead: Vec<_> = b.inherited_done_from(30).collect();
        assert_eq!(ahead, vec![(30, 60), (61, 70)]);

        // the limit: ranges stop where they no longer fit, and say how far they named
        let many: Vec<(i64, i64)> = (0..2000).map(|i| (100 + 3 * i, 102 + 3 * i)).collect();
        let (meta, named_to) = AttemptBook::default().encode(100, &many, false, 400);
        assert!(meta.len() <= 400, "{}", meta.len());
        let parsed = done_ranges(&meta, 100);
        assert_eq!(parsed.last().map(|r| r.1), Some(named_to));
        assert_eq!(parsed, many[..parsed.len()].to_vec());
    }

    #[test]
    fn hostile_finished_ranges_are_bounded() {
        for m in [
            "conveyor.attempts.v1 d=x",
            "conveyor.attempts.v1 d=0:1-2",
            "conveyor.attempts.v1 d=0:-1+5",
            "conveyor.attempts.v1 d=0:99999999999+1",
            "conveyor.attempts.v1 d=1+1",
        ] {
            assert_eq!(
                AttemptBook::inherit(Some(0), m),
                AttemptBook::default(),
                "{m}"
            );
        }
        let mut b = AttemptBook::inherit(Some(0), "conveyor.attempts.v1 d=0:0+4294967295");
        assert!(b.arrive(MAX_LEASE_AHEAD_OF_COMMIT - 1).done);
        assert!(
            !b.arrive(MAX_LEASE_AHEAD_OF_COMMIT).done,
            "believed only within reach of the commit"
        );
    }

    /// What a commit publishes the outputs of is what the next owner believes: ranges past the
    /// 1,000,000 offsets it trusts are not named (they were, and their outputs published, while
    /// the next owner ran them again).
    #[test]
    fn named_ranges_are_the_ones_the_next_owner_believes() {
        let a = AttemptBook::default();
        let far = [(5, 10), (20, 6_000_000), (6_000_001, 6_200_001)];
        let (meta, named_to) = a.encode(5_000_000, &far, true, 4000);
        assert_eq!(named_to, 5_000_000 + MAX_LEASE_AHEAD_OF_COMMIT);
        let believed = AttemptBook::inherit(Some(5_000_000), &meta).inherited_done;
        assert_eq!(believed.last().map(|r| r.1), Some(named_to));
        assert_eq!(done_ranges(&meta, 5_000_000), believed);
    }

    /// A transactional worker's commits never name fewer finished jobs than before, however many
    /// counts come to share the metadata (the outputs of the named ones were published).
    #[test]
    fn ranges_first_never_name_fewer_as_counts_grow() {
        let fragmented: Vec<(i64, i64)> = (0..1000)
            .map(|i| (1_000_001 + 2 * i, 1_000_002 + 2 * i))
            .collect();
        let mut a = AttemptBook::default();
        let (_, before) = a.encode(1_000_000, &fragmented, true, 4000);
        for o in 0..300 {
            a.start(2_000_000 + o, 1);
        }
        let (meta, after) = a.encode(1_000_000, &fragmented, true, 4000);
        assert!(meta.len() <= 4000);
        assert!(after >= before, "named to {before}, then to {after}");
        // counts first (a worker that is not transactional) cuts the ranges instead
        let (_, cut) = a.encode(1_000_000, &fragmented, false, 4000);
        assert!(cut < before);
    }
}
