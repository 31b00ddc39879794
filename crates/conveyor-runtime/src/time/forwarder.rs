//! The forwarder: moves records out of a topic's delay tiers ([`crate::time::tiers`]) when they are due.
//!
//! One consumer group per topic, `conveyor-forwarder.<topic>`, reads all its tier topics; every
//! worker of the topic runs one, so the tiers are served wherever a worker runs, and several
//! share the partitions. A tier record is let go at the earlier of its `due_at` and its write
//! time plus the tier's delay; those times grow with the offset, so the forwarder waits for a
//! partition's head only, and pauses the partition meanwhile (nothing piles up in memory). A
//! record let go goes to the next tier for what is left of its wait, or, once less than the
//! shortest tier is left, back to its topic at the partition named by `delay_partition`, where
//! the worker holds it for the rest. Cancelled jobs ([`crate::time::control`]) are dropped.
//!
//! Crashes: the forwarder commits a partition right after publishing what it let go, so a crash
//! between the two publishes that batch again (the *crash window*: at most one batch per
//! partition). A destination that fails keeps its records (and those behind them in their
//! partitions) for the next round; records already published are not published again. A record
//! that can never be written back (too large, a partition or topic gone) goes to the topic's
//! dead-letter topic instead of blocking its partition. Tier topics of the topic that are no
//! longer configured are still read, so changing `delay.tiers` strands nothing. A record's wait
//! counts from the earlier of its timestamp and when the forwarder first read it, so a producer's
//! clock far ahead cannot block a tier partition (the worker checks `due_at` anyway). The copies carry the same `dedup_key` and land in the same partition, and the
//! worker runs only the first one it sees (it remembers recent keys); a copy that reaches a
//! worker that restarted in between runs again (at-least-once, as every job).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conveyor_core::headers::{self, parse_time};
use conveyor_core::{
    Backend, CommitOffset, ConsumedRecord, Error, JobMeta, Poll, Record, Result, SubscribeOptions,
    Subscription, TopicPartition,
};

use crate::time::control::Control;
use crate::time::tiers::DelayTiers;

/// Counters of a running forwarder.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    /// Records moved to a shorter tier.
    pub hops: std::sync::atomic::AtomicU64,
    /// Records moved back to their topic.
    pub returned: std::sync::atomic::AtomicU64,
    /// Cancelled records dropped.
    pub cancelled: std::sync::atomic::AtomicU64,
}

/// Serves the delay tiers of one topic; see the [module docs](self).
#[derive(Debug)]
pub struct Forwarder {
    backend: Arc<dyn Backend>,
    topic: String,
    tiers: DelayTiers,
    control: Option<Control>,
    stats: Arc<ForwarderStats>,
    /// The dead-letter suffix of the topic's workers (records that cannot be forwarded).
    dlq_suffix: String,
    /// Job lookup: where the states of the cancelled jobs it drops go (the worker's).
    states: Option<Arc<crate::observation::job_states::Recorder>>,
}

/// The consumer group of the forwarders of `topic`.
pub fn forwarder_group(topic: &str) -> String {
    format!("conveyor-forwarder.{topic}")
}

/// The time as milliseconds since the epoch.
pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// When a record may run, in milliseconds since the epoch rounded up (a `due_at` with
/// microseconds must not run early): its `due_at`, or `None` without a readable one.
pub(crate) fn due_of(r: &ConsumedRecord) -> Option<i64> {
    let due = r.headers.get_str(headers::DUE_AT).and_then(parse_time)?;
    let since = due.duration_since(UNIX_EPOCH).unwrap_or_default();
    Some(since.as_nanos().div_ceil(1_000_000).min(i64::MAX as u128) as i64)
}

/// Where a job in a delay tier was before its move: the `<topic>/<partition>/<offset>` of its
/// `dedup_key`, or the tier record's own place when it has none.
fn moved_from(r: &ConsumedRecord) -> crate::observation::job_states::Place {
    let parsed = r.headers.get_str(headers::DEDUP_KEY).and_then(|k| {
        let mut parts = k.rsplitn(3, '/');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        Some((parts.next()?.to_owned(), partition, offset))
    });
    let (topic, partition, offset) =
        parsed.unwrap_or_else(|| (r.topic.clone(), r.partition, r.offset));
    crate::observation::job_states::Place {
        topic,
        partition,
        offset,
    }
}

impl Forwarder {
    /// A forwarder of `topic`'s tiers.
    pub fn new(backend: Arc<dyn Backend>, topic: impl Into<String>, tiers: DelayTiers) -> Self {
        Forwarder {
            backend,
            topic: topic.into(),
            tiers,
            control: None,
            stats: Arc::default(),
            dlq_suffix: ".dlq".into(),
            states: None,
        }
    }

    /// Dead-letters what cannot be forwarded to `<topic><suffix>` (default `.dlq`).
    pub fn with_dlq_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dlq_suffix = suffix.into();
        self
    }

    /// Drops jobs cancelled in this control log.
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    /// Writes a `cancelled` state for each cancelled job it drops (job lookup), through
    /// `recorder`, flushed before its commits.
    pub fn with_job_states(
        mut self,
        recorder: Arc<crate::observation::job_states::Recorder>,
    ) -> Self {
        self.states = Some(recorder);
        self
    }

    /// The same forwarder again, sharing its counters (to start it again after a failure).
    pub(crate) fn again(&self) -> Forwarder {
        Forwarder {
            backend: Arc::clone(&self.backend),
            topic: self.topic.clone(),
            tiers: self.tiers.clone(),
            control: self.control.clone(),
            stats: Arc::clone(&self.stats),
            dlq_suffix: self.dlq_suffix.clone(),
            states: self.states.clone(),
        }
    }

    /// The topic whose tiers it serves.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ForwarderStats> {
        Arc::clone(&self.stats)
    }

    /// Creates the tier topics when missing and forwards until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<()> {
        self.tiers.ensure_topics(&self.backend, &self.topic).await?;
        let partitions = self
            .backend
            .describe_topic(&self.topic)
            .await?
            .map_or(0, |i| i.partition_count());
        // the configured tiers, and any other tier topic of this topic (a tier removed from the
        // configuration is drained, not stranded)
        let mut tier_of: HashMap<String, Duration> =
            self.tiers.topics(&self.topic).into_iter().collect();
        let prefix = format!("{}.delay.", self.topic);
        for t in self.backend.list_topics().await? {
            if let Some(d) = t
                .name
                .strip_prefix(&prefix)
                .and_then(|label| humantime::parse_duration(label).ok())
            {
                tier_of.entry(t.name.clone()).or_insert(d);
            }
        }
        let sub = self
            .backend
            .subscribe(SubscribeOptions::new(
                forwarder_group(&self.topic),
                tier_of.keys().cloned().collect::<Vec<_>>(),
            ))
            .await?;
        let mut run = Run {
            f: &self,
            sub,
            tier_of,
            partitions,
            queues: HashMap::new(),
            paused: Default::default(),
            uncommitted: HashMap::new(),
        };
        tokio::pin!(shutdown);
        loop {
            let wait = run.forward_due().await;
            tokio::select! {
                () = &mut shutdown => break,
                polled = run.sub.poll(256, wait) => match polled {
                    Ok(p) => run.on_poll(p),
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %self.topic, "forwarder poll failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
        run.sub.leave(crate::LEAVE_TIMEOUT).await;
        Ok(())
    }
}

/// A tier record waiting to be let go.
struct Held {
    record: ConsumedRecord,
    /// When this forwarder first read it (ms since the epoch).
    seen: i64,
    /// Published (or dropped): only its commit is outstanding.
    done: bool,
}

struct Run<'a> {
    f: &'a Forwarder,
    sub: Box<dyn Subscription>,
    tier_of: HashMap<String, Duration>,
    /// Partitions of the topic, to check `delay_partition` against.
    partitions: i32,
    queues: HashMap<TopicPartition, VecDeque<Held>>,
    paused: std::collections::HashSet<TopicPartition>,
    /// Commits not made yet (a commit failed): tried again each round.
    uncommitted: HashMap<TopicPartition, i64>,
}

impl Run<'_> {
    fn on_poll(&mut self, poll: Poll) {
        match poll {
            Poll::Idle => {}
            Poll::Records(records) => {
                let seen = millis(SystemTime::now());
                for record in records {
                    self.queues.entry(record.tp()).or_default().push_back(Held {
                        record,
                        seen,
                        done: false,
                    });
                }
            }
            Poll::Rebalance { revoked, assigned } => {
                for tp in revoked {
                    // not committed: the next owner reads them again
                    self.queues.remove(&tp);
                    self.paused.remove(&tp);
                    self.uncommitted.remove(&tp);
                }
                for tp in assigned {
                    self.queues.entry(tp).or_default();
                }
            }
        }
    }

    /// When a held record is let go (ms since the epoch).
    fn release_of(&self, h: &Held) -> i64 {
        let r = &h.record;
        let tier = self.tier_of.get(&r.topic).copied().unwrap_or_default();
        release_at(r.timestamp, h.seen, tier, due_of(r))
    }

    /// Where a record let go at `now` goes: a shorter tier or the topic.
    fn destination(&self, r: &ConsumedRecord, now: i64) -> (String, Record) {
        let mut out = r.to_record();
        let remaining = due_of(r).map_or(0, |due| due - now);
        let tier = u64::try_from(remaining)
            .ok()
            .and_then(|ms| self.f.tiers.choose(Duration::from_millis(ms)));
        match tier {
            // any partition of the tier will do: the way back is `delay_partition`
            Some(tier) => (DelayTiers::topic(&self.f.topic, tier), out),
            None => {
                out.partition = r
                    .headers
                    .get_str(headers::DELAY_PARTITION)
                    .and_then(|p| p.parse::<i32>().ok())
                    .filter(|p| (0..self.partitions).contains(p));
                out.headers.remove(headers::DELAY_PARTITION);
                (self.f.topic.clone(), out)
            }
        }
    }

    fn is_cancelled(&self, r: &ConsumedRecord) -> bool {
        self.f.control.as_ref().is_some_and(|c| {
            r.headers
                .get_str(headers::MESSAGE_ID)
                .is_some_and(|id| c.is_cancelled(id))
        })
    }

    /// Publishes every due head record, commits, and pauses partitions whose head is not due.
    /// Returns how long to wait for the next due head (at most 500 ms).
    async fn forward_due(&mut self) -> Duration {
        let now = millis(SystemTime::now());
        if self.names_unknown_partition() {
            if let Ok(Some(info)) = self.f.backend.describe_topic(&self.f.topic).await {
                self.partitions = info.partition_count();
            }
        }
        let mut next_due = now + 500;
        // per destination: the records, with the partition and queue index each came from
        let mut out: BTreeMap<String, Vec<(Record, TopicPartition, usize)>> = BTreeMap::new();
        let mut cancelled = Vec::new();
        let mut due: HashMap<TopicPartition, usize> = HashMap::new();
        for (tp, q) in &self.queues {
            let mut n = 0;
            for (i, h) in q.iter().enumerate() {
                let release = self.release_of(h);
                if release > now {
                    next_due = next_due.min(release);
                    break;
                }
                n += 1;
                if h.done {
                    continue;
                }
                if self.is_cancelled(&h.record) {
                    cancelled.push((tp.clone(), i));
                    continue;
                }
                let (topic, record) = self.destination(&h.record, now);
                out.entry(topic).or_default().push((record, tp.clone(), i));
            }
            due.insert(tp.clone(), n);
        }
        for (tp, i) in cancelled {
            self.f.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            if let Some((states, h)) = self
                .f
                .states
                .as_ref()
                .zip(self.queues.get(&tp).and_then(|q| q.get(i)))
            {
                let attempts = conveyor_core::JobMeta::from_headers(&h.record.headers)
                    .attempt
                    .saturating_sub(1);
                let detail = crate::observation::job_states::Detail::default();
                let place = moved_from(&h.record);
                let cancelled = crate::observation::job_states::StateKind::Cancelled;
                states.note_at(&h.record, place, cancelled, attempts, detail);
            }
            self.mark_done(&tp, i);
        }
        let mut failed = false;
        for (topic, batch) in out {
            failed |= !self.publish(&topic, batch).await;
        }
        // each partition is committed up to its first record not done: a failed destination
        // keeps its records, and those behind them, for the next round
        for (tp, n) in due {
            let Some(q) = self.queues.get_mut(&tp) else {
                continue;
            };
            let prefix = q.iter().take(n).take_while(|h| h.done).count();
            if prefix > 0 {
                let next = q[prefix - 1].record.offset + 1;
                q.drain(..prefix);
                self.uncommitted.insert(tp, next);
            }
        }
        // a partition still holding records (not due yet, or due but not written) is paused
        // until they are gone: nothing piles up behind a head that waits or fails
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for (tp, q) in &self.queues {
            match (q.is_empty(), self.paused.contains(tp)) {
                (false, false) => pause.push(tp.clone()),
                (true, true) => resume.push(tp.clone()),
                _ => {}
            }
        }
        if !pause.is_empty() && self.sub.pause(&pause).is_ok() {
            self.paused.extend(pause);
        }
        if !resume.is_empty() && self.sub.resume(&resume).is_ok() {
            for tp in &resume {
                self.paused.remove(tp);
            }
        }
        if !self.uncommitted.is_empty() {
            // the cancelled jobs' states go to the writer as the commit forgets them
            if let Some(states) = &self.f.states {
                states.flush(&self.f.backend);
            }
            let commits: Vec<CommitOffset> = self
                .uncommitted
                .iter()
                .map(|(tp, o)| CommitOffset::new(tp.clone(), *o))
                .collect();
            match self.sub.commit(&commits).await {
                Ok(()) => self.uncommitted.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, "the forwarder's commit failed; trying again (a crash now would forward those again)")
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Duration::from_millis(1);
        }
        Duration::from_millis((next_due - now).clamp(1, 500) as u64)
    }

    fn mark_done(&mut self, tp: &TopicPartition, i: usize) {
        if let Some(h) = self.queues.get_mut(tp).and_then(|q| q.get_mut(i)) {
            h.done = true;
        }
    }

    /// Publishes one destination's records; returns false when some must be tried again. Records
    /// that can never be written go to the topic's dead-letter topic.
    async fn publish(&mut self, topic: &str, batch: Vec<(Record, TopicPartition, usize)>) -> bool {
        let back = topic == self.f.topic;
        let n = batch.len() as u64;
        let records: Vec<Record> = batch.iter().map(|(r, _, _)| r.clone()).collect();
        match self.f.backend.publish(topic, records).await {
            Ok(_) => {
                let counter = if back {
                    &self.f.stats.returned
                } else {
                    &self.f.stats.hops
                };
                counter.fetch_add(n, Ordering::Relaxed);
                for (_, tp, i) in &batch {
                    self.mark_done(tp, *i);
                }
                true
            }
            Err(e) if permanent(&e) => {
                let mut all = true;
                for (record, tp, i) in batch {
                    let result = self.f.backend.publish(topic, vec![record]).await;
                    let ok = match result {
                        Ok(_) => true,
                        Err(e) if permanent(&e) => self.dead_letter(&tp, i, &e).await,
                        Err(_) => false,
                    };
                    if ok {
                        self.mark_done(&tp, i);
                    }
                    all &= ok;
                }
                all
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "the forwarder cannot publish; trying again in 1 s");
                false
            }
        }
    }

    /// Writes a held record that can never be forwarded to the topic's dead-letter topic.
    async fn dead_letter(&mut self, tp: &TopicPartition, i: usize, e: &Error) -> bool {
        let Some(h) = self.queues.get(tp).and_then(|q| q.get(i)) else {
            return false;
        };
        let tier = &h.record;
        // the dead letter names the job's topic and partition, so a replay puts it back there;
        // where it waited is in `delay_tier_record`
        let mut r = tier.clone();
        r.topic = self.f.topic.clone();
        r.partition = tier
            .headers
            .get_str(headers::DELAY_PARTITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(tier.partition);
        r.headers.insert(
            "delay_tier_record",
            format!("{}/{}/{}", tier.topic, tier.partition, tier.offset),
        );
        let dlq = crate::worker::dead_letter::dead_letter_topic(&self.f.topic, &self.f.dlq_suffix);
        let error = format!("the delay forwarder cannot write it on: {e}");
        let mut record = crate::worker::dead_letter::dead_letter_record(
            &r,
            &forwarder_group(&self.f.topic),
            JobMeta::from_headers(&r.headers).attempt,
            crate::worker::dead_letter::DeadLetterReason::Failed,
            &error,
        );
        tracing::error!(topic = %tier.topic, partition = tier.partition, offset = tier.offset, %error, dlq, "dead-lettering a delayed job");
        loop {
            match self.f.backend.publish(&dlq, vec![record.clone()]).await {
                Ok(_) => return true,
                Err(e @ Error::RecordTooLarge { .. })
                    if record.headers.get(headers::dlq::TRIMMED).is_none() =>
                {
                    record = crate::worker::dead_letter::trimmed_dead_letter_record(
                        &record,
                        &e.to_string(),
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, dlq, "cannot dead-letter it either; it stays in its tier");
                    return false;
                }
            }
        }
    }

    /// Whether a held record names a partition the topic did not have when last described.
    fn names_unknown_partition(&self) -> bool {
        self.queues.values().flatten().any(|h| {
            h.record
                .headers
                .get_str(headers::DELAY_PARTITION)
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|p| p >= self.partitions)
        })
    }
}

/// When a tier record written at `timestamp` and first read at `seen` (ms) is let go from a
/// tier of `tier`: the tier's delay after the earlier of the two, or its `due` if sooner.
fn release_at(timestamp: i64, seen: i64, tier: Duration, due: Option<i64>) -> i64 {
    let tier_ms = i64::try_from(tier.as_millis()).unwrap_or(i64::MAX);
    let by_tier = timestamp.min(seen).saturating_add(tier_ms);
    due.map_or(by_tier, |due| due.min(by_tier))
}

/// Errors that publishing the same record again cannot cure.
fn permanent(e: &Error) -> bool {
    match e {
        // the batch stopped at a record: what stopped it decides
        Error::PartlyStored { cause, .. } => permanent(cause),
        Error::RecordTooLarge { .. }
        | Error::InvalidArgument(_)
        | Error::UnknownTopic(_)
        | Error::UnknownPartition { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_lets_a_record_go_after_its_delay_or_its_due_time_at_a_given_clock() {
        let tier = Duration::from_secs(60);
        // written at 1000, read at 1005: let go a minute after it was written
        assert_eq!(release_at(1_000, 1_005, tier, None), 61_000);
        assert_eq!(release_at(1_000, 1_005, tier, Some(90_000)), 61_000);
        // due sooner than the tier (the last hop): at its due time
        assert_eq!(release_at(1_000, 1_005, tier, Some(30_000)), 30_000);
        // a producer clock a day ahead cannot hold the partition: counted from when it was read
        let ahead = 86_400_000 + 1_000;
        assert_eq!(release_at(ahead, 1_005, tier, None), 61_005);
        // a timestamp at the end of time does not overflow
        assert_eq!(release_at(i64::MAX, i64::MAX, tier, None), i64::MAX);
        assert!(permanent(&Error::PartlyStored {
            stored: 1,
            total: 2,
            cause: Box::new(Error::RecordTooLarge { size: 2, max: 1 })
        }));
        assert!(!permanent(&Error::Broker("down".into())));
    }
}
