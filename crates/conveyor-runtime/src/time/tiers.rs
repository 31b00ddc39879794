//! Delay tiers: the topics where delayed jobs and long retries wait, and which one a wait uses.
//!
//! A topic `jobs` has one tier topic per configured delay, `jobs.delay.5s`, `jobs.delay.1m`,
//! `jobs.delay.10m`, `jobs.delay.1h` by default, with as many partitions as `jobs`. Every
//! record in a tier waits the tier's fixed delay from the moment it was written, so the records
//! of a tier partition become due in the order they were written: the forwarder
//! ([`crate::time::forwarder`]) only ever waits for a partition's head, and pauses the partition until
//! then. A job with `remaining` time to wait goes to the longest tier not longer than
//! `remaining`; when the tier lets it go it goes to the next tier for what is left, or back to
//! its topic once less than the shortest tier is left, where the worker holds it for that last
//! part (at most the shortest tier) in memory. A wait longer than the longest tier passes
//! through it again.

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::{Backend, Error, Result, TopicSpec};

/// The configured tiers, shortest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayTiers {
    tiers: Vec<Duration>,
}

impl Default for DelayTiers {
    /// 5 s, 1 min, 10 min, 1 h.
    fn default() -> Self {
        DelayTiers::new(vec![
            Duration::from_secs(5),
            Duration::from_secs(60),
            Duration::from_secs(600),
            Duration::from_secs(3600),
        ])
        .expect("the default tiers are valid")
    }
}

impl DelayTiers {
    /// Tiers of these delays (any order; each a whole number of seconds, at least 1 s, distinct).
    pub fn new(mut tiers: Vec<Duration>) -> Result<Self> {
        tiers.sort();
        tiers.dedup();
        if tiers.is_empty() {
            return Err(Error::InvalidArgument(
                "at least one delay tier is needed".into(),
            ));
        }
        if let Some(t) = tiers
            .iter()
            .find(|t| t.subsec_nanos() != 0 || t.as_secs() == 0)
        {
            return Err(Error::InvalidArgument(format!(
                "delay tier {t:?} is not a whole number of seconds (at least 1 s)"
            )));
        }
        Ok(DelayTiers { tiers })
    }

    /// Parses tiers written as `5s`, `1m`, `10m`, `1h`, `1d`.
    pub fn parse(labels: &[String]) -> Result<Self> {
        let tiers = labels
            .iter()
            .map(|l| {
                humantime::parse_duration(l).map_err(|e| {
                    Error::InvalidArgument(format!("delay tier `{l}` is not a duration: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(tiers)
    }

    /// The tiers, shortest first.
    pub fn all(&self) -> &[Duration] {
        &self.tiers
    }

    /// The shortest tier: waits below it are held by the worker in memory.
    pub fn shortest(&self) -> Duration {
        self.tiers[0]
    }

    /// The longest tier not longer than `remaining`, or `None` when `remaining` is shorter than
    /// every tier.
    pub fn choose(&self, remaining: Duration) -> Option<Duration> {
        self.tiers.iter().rev().find(|t| **t <= remaining).copied()
    }

    /// The tier topic of `topic` for `tier`: `<topic>.delay.<label>`.
    pub fn topic(topic: &str, tier: Duration) -> String {
        format!("{topic}.delay.{}", label(tier))
    }

    /// Every tier topic of `topic`, with its tier.
    pub fn topics(&self, topic: &str) -> Vec<(String, Duration)> {
        self.tiers
            .iter()
            .map(|t| (Self::topic(topic, *t), *t))
            .collect()
    }

    /// Creates the tier topics of `topic` where missing: as many partitions as it has, its
    /// replication (a move is as durable as the job), and a retention of at least twice the
    /// tier and 7 days (a job waits in a tier at most the tier's delay).
    pub async fn ensure_topics(&self, backend: &Arc<dyn Backend>, topic: &str) -> Result<()> {
        let info = backend
            .describe_topic(topic)
            .await?
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        // a backend that cannot describe settings (librdkafka's mock cluster) gets the defaults
        let shape = backend.topic_spec(topic).await.ok().flatten();
        for (name, tier) in self.topics(topic) {
            conveyor_core::topic::validate_name(&name)?;
            let mut spec = TopicSpec::new(name, info.partition_count());
            let week = 7 * 24 * 3600 * 1000;
            let tier_ms = i64::try_from(tier.as_millis()).unwrap_or(i64::MAX);
            spec.retention_ms = Some(tier_ms.saturating_mul(2).max(week));
            if let Some(shape) = &shape {
                spec.replication_factor = shape.replication_factor;
                spec.min_insync_replicas = shape.min_insync_replicas;
            }
            match backend.create_topic(&spec).await {
                Ok(_) | Err(Error::TopicConflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `5s`, `90s`, `1m`, `10m`, `1h`, `1d`: the largest unit that divides the delay.
pub fn label(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_takes_the_longest_tier_that_fits() {
        let t = DelayTiers::default();
        assert_eq!(t.choose(Duration::from_secs(4)), None);
        assert_eq!(
            t.choose(Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            t.choose(Duration::from_secs(59)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            t.choose(Duration::from_secs(7200)),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            DelayTiers::topic("jobs", Duration::from_secs(600)),
            "jobs.delay.10m"
        );
        assert_eq!(label(Duration::from_secs(90)), "90s");
        assert_eq!(label(Duration::from_secs(86_400)), "1d");
    }

    #[test]
    fn tiers_are_parsed_sorted_and_checked() {
        let t = DelayTiers::parse(&["1m".into(), "5s".into()]).unwrap();
        assert_eq!(t.shortest(), Duration::from_secs(5));
        assert!(DelayTiers::parse(&["1500ms".into()]).is_err());
        assert!(DelayTiers::parse(&[]).is_err());
        assert!(DelayTiers::parse(&["soon".into()]).is_err());
    }
}
