//! The forwarder: moves records out of a topic's delay tiers ([`crate::tiers`]) when they are due.
//!
//! One consumer group per topic, `conveyor-forwarder.<topic>`, reads all its tier topics; every
//! worker of the topic runs one, so the tiers are served wherever a worker runs, and several
//! share the partitions. A tier record is let go at the earlier of its `due_at` and its write
//! time plus the tier's delay; those times grow with the offset, so the forwarder waits for a
//! partition's head only, and pauses the partition meanwhile (nothing piles up in memory). A
//! record let go goes to the next tier for what is left of its wait, or, once less than the
//! shortest tier is left, back to its topic at the partition named by `delay_partition`, where
//! the worker holds it for the rest. Cancelled jobs ([`crate::control`]) are dropped.
//!
//! Crashes: the forwarder commits a partition right after publishing what it let go, so a crash
//! between the two publishes that batch again (the *crash window*: at most one batch per
//! partition). The copies carry the same `dedup_key` and land in the same partition, and the
//! worker runs only the first one it sees (it remembers recent keys); a copy that reaches a
//! worker that restarted in between runs again (at-least-once, as every job).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conveyor_core::headers::{self, parse_time};
use conveyor_core::{
    Backend, CommitOffset, ConsumedRecord, Poll, Record, Result, SubscribeOptions, Subscription,
    TopicPartition,
};

use crate::control::Control;
use crate::tiers::DelayTiers;

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

/// When a record may run: its `due_at`, or `None` without a readable one.
pub(crate) fn due_of(r: &ConsumedRecord) -> Option<i64> {
    r.headers
        .get_str(headers::DUE_AT)
        .and_then(parse_time)
        .map(millis)
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
        }
    }

    /// Drops jobs cancelled in this control log.
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    /// Its backend, topic, tiers and control log (to build it again after a failure).
    pub(crate) fn parts(&self) -> (Arc<dyn Backend>, String, DelayTiers, Option<Control>) {
        (
            Arc::clone(&self.backend),
            self.topic.clone(),
            self.tiers.clone(),
            self.control.clone(),
        )
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
        let tier_of: HashMap<String, Duration> =
            self.tiers.topics(&self.topic).into_iter().collect();
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
        Ok(())
    }
}

struct Run<'a> {
    f: &'a Forwarder,
    sub: Box<dyn Subscription>,
    tier_of: HashMap<String, Duration>,
    /// Partitions of the topic, to check `delay_partition` against.
    partitions: i32,
    queues: HashMap<TopicPartition, VecDeque<ConsumedRecord>>,
    paused: std::collections::HashSet<TopicPartition>,
}

impl Run<'_> {
    fn on_poll(&mut self, poll: Poll) {
        match poll {
            Poll::Idle => {}
            Poll::Records(records) => {
                for r in records {
                    self.queues.entry(r.tp()).or_default().push_back(r);
                }
            }
            Poll::Rebalance { revoked, assigned } => {
                for tp in revoked {
                    // not committed: the next owner reads them again
                    self.queues.remove(&tp);
                    self.paused.remove(&tp);
                }
                for tp in assigned {
                    self.queues.entry(tp).or_default();
                }
            }
        }
    }

    /// When the record at a tier partition's head is let go (ms since the epoch).
    fn release_of(&self, r: &ConsumedRecord) -> i64 {
        let tier = self.tier_of.get(&r.topic).copied().unwrap_or_default();
        let by_tier = r.timestamp.saturating_add(tier.as_millis() as i64);
        due_of(r).map_or(by_tier, |due| due.min(by_tier))
    }

    /// Where a record let go at `now` goes: a shorter tier or the topic.
    fn destination(&self, r: &ConsumedRecord, now: i64) -> (String, Record) {
        let mut out = r.to_record();
        let remaining = due_of(r).map_or(0, |due| due - now);
        let tier = u64::try_from(remaining)
            .ok()
            .and_then(|ms| self.f.tiers.choose(Duration::from_millis(ms)));
        match tier {
            Some(tier) => {
                out.partition = Some(r.partition);
                (DelayTiers::topic(&self.f.topic, tier), out)
            }
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

    /// Publishes every due head record, commits, and pauses partitions whose head is not due.
    /// Returns how long to wait for the next due head (at most 500 ms).
    async fn forward_due(&mut self) -> Duration {
        let now = millis(SystemTime::now());
        let mut out: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        let mut taken: Vec<(TopicPartition, usize, i64)> = Vec::new();
        let mut next_due = now + 500;
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for (tp, q) in &self.queues {
            let mut n = 0;
            for r in q.iter() {
                let release = self.release_of(r);
                if release > now {
                    next_due = next_due.min(release);
                    break;
                }
                n += 1;
                let cancelled = self.f.control.as_ref().is_some_and(|c| {
                    r.headers
                        .get_str(headers::MESSAGE_ID)
                        .is_some_and(|id| c.is_cancelled(id))
                });
                if cancelled {
                    self.f
                        .stats
                        .cancelled
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let (topic, record) = self.destination(r, now);
                out.entry(topic).or_default().push(record);
            }
            if n > 0 {
                taken.push((tp.clone(), n, q[n - 1].offset));
            }
            let waiting = q.len() > n;
            match (waiting, self.paused.contains(tp)) {
                (true, false) => pause.push(tp.clone()),
                (false, true) => resume.push(tp.clone()),
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
        if taken.is_empty() {
            return Duration::from_millis((next_due - now).clamp(1, 500) as u64);
        }
        for (topic, records) in out {
            let n = records.len() as u64;
            let back = topic == self.f.topic;
            if let Err(e) = self.f.backend.publish(&topic, records).await {
                tracing::warn!(error = %e, topic, "the forwarder cannot publish; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                // nothing popped, nothing committed: all of it is tried again
                return Duration::from_millis(1);
            }
            let counter = if back {
                &self.f.stats.returned
            } else {
                &self.f.stats.hops
            };
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        let mut commits = Vec::new();
        for (tp, n, last) in taken {
            if let Some(q) = self.queues.get_mut(&tp) {
                q.drain(..n.min(q.len()));
            }
            commits.push(CommitOffset::new(tp, last + 1));
        }
        if let Err(e) = self.sub.commit(&commits).await {
            tracing::debug!(error = %e, "the forwarder's commit failed; a crash now would forward those again");
        }
        Duration::from_millis(1)
    }
}
